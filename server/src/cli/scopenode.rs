//! `openspimed scopenode`: the hosted ScopeNodes and what they collected.

use std::process::ExitCode;

use clap::Subcommand;
use openspimed_config::Config;

use super::fail;
use super::open_store;

/// `openspimed scopenode …`
#[derive(Subcommand, Debug)]
pub enum ScopenodeAction {
    /// List the configured ScopeNodes with their scopes and entry counts.
    List,
    /// Show one ScopeNode: key, scopes and their fields, entry counts.
    Show {
        /// The ScopeNode's JID (node@domain).
        jid: String,
    },
}

/// The ScopeNodes this configuration serves.
pub(super) fn configured_scopenodes(
    config: &Config,
) -> Result<Vec<openspimed_mod_scopenode::NodeDef>, String> {
    let empty = openspimed_module_api::toml::Table::new();
    let options = config.modules.get("scopenode").unwrap_or(&empty);
    let mut out = Vec::new();
    for (domain, host) in &config.hosts {
        if host.modules.iter().any(|m| m == "scopenode") {
            out.extend(
                openspimed_mod_scopenode::configured_nodes(domain, options)
                    .map_err(|e| e.to_string())?,
            );
        }
    }
    Ok(out)
}

pub(super) async fn scopenode(config: &Config, action: ScopenodeAction) -> ExitCode {
    use openspimed_module_api::SensorStore;
    let nodes = match configured_scopenodes(config) {
        Ok(n) => n,
        Err(e) => return fail(e),
    };
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let counts = match store.entry_counts().await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let count = |node: &str, scope: &str| {
        counts
            .iter()
            .find(|(n, s, _)| n == node && s == scope)
            .map(|c| c.2)
            .unwrap_or(0)
    };
    match action {
        ScopenodeAction::List => {
            for n in &nodes {
                let scopes: Vec<String> = n
                    .scopes
                    .iter()
                    .map(|s| format!("{} ({})", s.name, entries(count(&n.jid, &s.name))))
                    .collect();
                println!("{}\t{}", n.jid, scopes.join(", "));
            }
            ExitCode::SUCCESS
        }
        ScopenodeAction::Show { jid } => {
            let jid = openspimed_module_api::jid::Jid::new(&jid)
                .map(|j| j.to_bare().to_string())
                .unwrap_or(jid);
            let Some(n) = nodes.iter().find(|n| n.jid == jid) else {
                return fail(format!(
                    "{jid} is not a ScopeNode of this server (see `openspimed scopenode list`)"
                ));
            };
            println!("jid: {}", n.jid);
            let key = match &n.key_file {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| e.to_string())
                    .and_then(|pem| {
                        openspime::crypto::private_key_from_pem(&pem).map_err(|e| e.to_string())
                    })
                    .map(Some),
                None => match store.node_key(&n.jid).await {
                    Ok(Some(der)) => {
                        use openspime::rsa_reexport::DecodePrivateKey;
                        openspime::RsaPrivateKey::from_pkcs8_der(&der)
                            .map(Some)
                            .map_err(|e| e.to_string())
                    }
                    Ok(None) => Ok(None),
                    Err(e) => Err(e.to_string()),
                },
            };
            match key {
                Ok(Some(k)) => match openspime::crypto::public_key_to_pem(&k.to_public_key()) {
                    Ok(pem) => print!("key:\n{pem}"),
                    Err(e) => return fail(e),
                },
                Ok(None) => println!("key: (generated at first start)"),
                Err(e) => return fail(format!("key of {}: {e}", n.jid)),
            }
            for s in &n.scopes {
                println!(
                    "scope {}: {}, signature {}, encryption {}, retention {}",
                    s.name,
                    entries(count(&n.jid, &s.name)),
                    if s.require_signature {
                        "required"
                    } else {
                        "optional"
                    },
                    if s.require_encryption {
                        "required"
                    } else {
                        "optional"
                    },
                    if s.retention_days == 0 {
                        "forever".to_owned()
                    } else {
                        format!("{} days", s.retention_days)
                    }
                );
                for f in &s.fields {
                    println!(
                        "  {}: {:?}{}{}",
                        f.name,
                        f.kind,
                        if f.required { ", required" } else { "" },
                        f.unit
                            .as_ref()
                            .map(|u| format!(", unit {u}"))
                            .unwrap_or_default()
                    );
                }
            }
            ExitCode::SUCCESS
        }
    }
}

/// `1 entry`, `2 entries`.
pub(super) fn entries(n: u64) -> String {
    if n == 1 {
        "1 entry".to_owned()
    } else {
        format!("{n} entries")
    }
}
