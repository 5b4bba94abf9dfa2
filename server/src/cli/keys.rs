//! `openspimed keys`: the public keys of the hosted certification services (XEP-0189).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use openspimed_config::Config;

use super::fail;
use super::open_store;

/// `openspimed keys …`
#[derive(Subcommand, Debug)]
pub enum KeysAction {
    /// Store a public key (PEM: SPKI, PKCS#1, or a private key whose public half is used).
    Add {
        /// The JID the key belongs to.
        jid: String,
        /// The PEM file.
        pemfile: PathBuf,
    },
    /// List stored keys.
    List,
    /// Show one key (PEM and status).
    Show {
        /// The JID.
        jid: String,
    },
    /// Revoke a key: lookups answer item-not-found from now on.
    Revoke {
        /// The JID.
        jid: String,
    },
}

/// The certification services this configuration hosts.
pub(super) fn hosted_cert_services(config: &Config) -> Result<Vec<String>, String> {
    let empty = openspimed_module_api::toml::Table::new();
    let options = config.modules.get("certsvc").unwrap_or(&empty);
    let mut out = Vec::new();
    for (domain, host) in &config.hosts {
        if host.modules.iter().any(|m| m == "certsvc") {
            for s in openspimed_mod_certsvc::services_for_host(domain, options)
                .map_err(|e| e.to_string())?
            {
                out.push(s.jid);
            }
        }
    }
    Ok(out)
}

pub(super) async fn keys(config: &Config, action: KeysAction, service: Option<String>) -> ExitCode {
    let hosted = match hosted_cert_services(config) {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    let service = match (service, hosted.as_slice()) {
        (Some(s), _) => {
            let norm = openspimed_module_api::jid::Jid::new(&s)
                .map(|j| j.to_string())
                .unwrap_or(s);
            if !hosted.contains(&norm) {
                return fail(format!(
                    "{norm} is not a certification service hosted here (hosted: {})",
                    hosted.join(", ")
                ));
            }
            norm
        }
        (None, [only]) => only.clone(),
        (None, []) => {
            return fail("no certification service is hosted (enable the certsvc module)");
        }
        (None, many) => {
            return fail(format!(
                "several certification services are hosted; pick one with --service ({})",
                many.join(", ")
            ));
        }
    };
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let keys: &dyn openspimed_module_api::KeyStore = &store;
    match action {
        KeysAction::Add { jid, pemfile } => {
            let pem = match std::fs::read_to_string(&pemfile) {
                Ok(p) => p,
                Err(e) => return fail(format!("cannot read {}: {e}", pemfile.display())),
            };
            let key = match openspime::crypto::public_key_from_pem(&pem).or_else(|_| {
                openspime::crypto::private_key_from_pem(&pem).map(|k| k.to_public_key())
            }) {
                Ok(k) => k,
                Err(e) => return fail(format!("{}: {e}", pemfile.display())),
            };
            match openspimed_mod_certsvc::store_key(keys, &service, &jid, &key).await {
                Ok(stored) => {
                    println!("stored key for {stored} at {service}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        KeysAction::List => match keys.list_keys(Some(&service)).await {
            Ok(list) => {
                for k in list {
                    let status = if k.revoked_unix.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!("{}\t{status}", k.jid);
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        KeysAction::Show { jid } => {
            let norm = openspimed_module_api::jid::Jid::new(&jid)
                .map(|j| j.to_string())
                .unwrap_or(jid.clone());
            match keys.key(&service, &norm).await {
                Ok(Some(k)) => {
                    use openspime::rsa_reexport::DecodePublicKey;
                    let status = if k.revoked_unix.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!("jid: {}\nservice: {service}\nstatus: {status}", k.jid);
                    match openspime::RsaPublicKey::from_public_key_der(&k.spki_der)
                        .map_err(|e| e.to_string())
                        .and_then(|pk| {
                            openspime::crypto::public_key_to_pem(&pk).map_err(|e| e.to_string())
                        }) {
                        Ok(pem) => print!("{pem}"),
                        Err(e) => return fail(format!("stored key unreadable: {e}")),
                    }
                    ExitCode::SUCCESS
                }
                Ok(None) => fail(format!("no key for {norm} at {service}")),
                Err(e) => fail(e),
            }
        }
        KeysAction::Revoke { jid } => {
            let norm = openspimed_module_api::jid::Jid::new(&jid)
                .map(|j| j.to_string())
                .unwrap_or(jid.clone());
            match keys.revoke_key(&service, &norm).await {
                Ok(true) => {
                    println!("revoked the key of {norm} at {service}");
                    ExitCode::SUCCESS
                }
                Ok(false) => fail(format!("no active key for {norm} at {service}")),
                Err(e) => fail(e),
            }
        }
    }
}
