//! The admin subcommands this module supplies: `openspimed scopenode` (the hosted
//! ScopeNodes and what they collected) and `openspimed data` (export of the collected
//! sensor entries).

use clap::{Parser, Subcommand};
use openspimed_module_api::{AdminCommand, AdminContext, BoxFuture};

use openspimed_mod_certsvc::admin::parse;

use crate::store::{SensorData, SensorEntry};
use crate::{NodeDef, configured_nodes};

/// `openspimed scopenode`.
pub struct Scopenode;

impl AdminCommand for Scopenode {
    fn name(&self) -> &'static str {
        "scopenode"
    }
    fn about(&self) -> &'static str {
        "Inspect the ScopeNodes"
    }
    fn run(&self, args: Vec<String>, cx: AdminContext) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async move {
            match parse::<ScopenodeCli>("scopenode", args)? {
                Some(cli) => scopenode(cx, cli.action).await,
                None => Ok(()),
            }
        })
    }
}

/// `openspimed data`.
pub struct DataExport;

impl AdminCommand for DataExport {
    fn name(&self) -> &'static str {
        "data"
    }
    fn about(&self) -> &'static str {
        "Export stored sensor data"
    }
    fn run(&self, args: Vec<String>, cx: AdminContext) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async move {
            match parse::<DataCli>("data", args)? {
                Some(cli) => data(cx, cli.action).await,
                None => Ok(()),
            }
        })
    }
}

/// Inspect the ScopeNodes.
#[derive(Parser, Debug)]
struct ScopenodeCli {
    /// What to show.
    #[command(subcommand)]
    action: ScopenodeAction,
}

/// Export stored sensor data.
#[derive(Parser, Debug)]
struct DataCli {
    /// What to do.
    #[command(subcommand)]
    action: DataAction,
}

/// `openspimed scopenode …`
#[derive(Subcommand, Debug)]
enum ScopenodeAction {
    /// List the configured ScopeNodes with their scopes and entry counts.
    List,
    /// Show one ScopeNode: key, scopes and their fields, entry counts.
    Show {
        /// The ScopeNode's JID (node@domain).
        jid: String,
    },
}

/// The ScopeNodes the hosts that enable the module serve.
fn configured_scopenodes(cx: &AdminContext) -> Result<Vec<NodeDef>, String> {
    let mut out = Vec::new();
    for domain in &cx.hosts {
        out.extend(configured_nodes(domain, &cx.options).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

async fn scopenode(cx: AdminContext, action: ScopenodeAction) -> Result<(), String> {
    let nodes = configured_scopenodes(&cx)?;
    let store = SensorData::new(cx.storage.clone());
    let mut counts = Vec::new();
    for n in &nodes {
        for (scope, c) in store
            .entry_counts(&n.jid)
            .await
            .map_err(|e| e.to_string())?
        {
            counts.push((n.jid.clone(), scope, c));
        }
    }
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
            Ok(())
        }
        ScopenodeAction::Show { jid } => {
            let jid = openspimed_module_api::jid::Jid::new(&jid)
                .map(|j| j.to_bare().to_string())
                .unwrap_or(jid);
            let Some(n) = nodes.iter().find(|n| n.jid == jid) else {
                return Err(format!(
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
                    Err(e) => return Err(e.to_string()),
                },
                Ok(None) => println!("key: (generated at first start)"),
                Err(e) => return Err(format!("key of {}: {e}", n.jid)),
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
            Ok(())
        }
    }
}

/// `1 entry`, `2 entries`.
fn entries(n: u64) -> String {
    if n == 1 {
        "1 entry".to_owned()
    } else {
        format!("{n} entries")
    }
}

/// `openspimed data …`
#[derive(Subcommand, Debug)]
enum DataAction {
    /// Export the entries a spime reported.
    Export {
        /// The spime (full JID, as it reported).
        #[arg(long)]
        spime: String,
        /// Only entries collected by this ScopeNode.
        #[arg(long)]
        node: Option<String>,
        /// Only entries measured at or after this date (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "csv")]
        format: ExportFormat,
    },
}

/// Export formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ExportFormat {
    /// One row per entry, one column per field.
    Csv,
    /// One JSON object per entry, in an array.
    Json,
}

async fn data(cx: AdminContext, action: DataAction) -> Result<(), String> {
    let DataAction::Export {
        spime,
        node,
        since,
        format,
    } = action;
    let since = match since.map(|s| openspime::date::parse(&s)) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return Err(e.to_string()),
    };
    let spime = match openspimed_module_api::jid::Jid::new(&spime) {
        Ok(j) => j.to_string(),
        Err(e) => return Err(format!("{spime:?} is not a JID: {e}")),
    };
    let store = SensorData::new(cx.storage.clone());
    let nodes: Vec<String> = match node {
        Some(n) => vec![n],
        None => configured_scopenodes(&cx)?
            .into_iter()
            .map(|n| n.jid)
            .collect(),
    };
    let mut rows = Vec::new();
    for n in &nodes {
        rows.extend(
            store
                .export_entries(n, Some(&spime), since)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    // Each node's oldest first; merged by time.
    rows.sort_by_key(|r| r.at_unix);
    // Each stored entry is an OpenSpime <entry/>: read its fields back.
    let parsed: Vec<(SensorEntry, Vec<(String, String)>)> = rows
        .into_iter()
        .map(|r| {
            let fields = openspimed_module_api::Element::parse(&format!(
                "<data xmlns='{}'>{}</data>",
                openspime::ns::DATA,
                r.xml
            ))
            .ok()
            .and_then(|d| openspime::Data::parse(&d).ok())
            .and_then(|d| d.entries.into_iter().next())
            .map(|e| e.fields.into_iter().map(|f| (f.name, f.value)).collect())
            .unwrap_or_default();
            (r, fields)
        })
        .collect();
    match format {
        ExportFormat::Json => {
            let arr: Vec<serde_json::Value> = parsed
                .iter()
                .map(|(r, fields)| {
                    let mut f = serde_json::Map::new();
                    for (k, v) in fields {
                        f.insert(k.clone(), serde_json::Value::String(v.clone()));
                    }
                    serde_json::json!({
                        "node": r.node, "scope": r.scope, "spime": r.spime,
                        "time": openspime::date::format(r.at_unix, 0), "fields": f,
                    })
                })
                .collect();
            match serde_json::to_string_pretty(&arr) {
                Ok(s) => println!("{s}"),
                Err(e) => return Err(e.to_string()),
            }
        }
        ExportFormat::Csv => {
            let mut columns: Vec<String> = parsed
                .iter()
                .flat_map(|(_, f)| f.iter().map(|(k, _)| k.clone()))
                .collect();
            columns.sort();
            columns.dedup();
            let esc = |v: &str| {
                if v.contains([',', '"', '\n']) {
                    format!("\"{}\"", v.replace('"', "\"\""))
                } else {
                    v.to_owned()
                }
            };
            println!(
                "node,scope,spime,time{}",
                columns
                    .iter()
                    .map(|c| format!(",{}", esc(c)))
                    .collect::<String>()
            );
            for (r, fields) in &parsed {
                let mut line = format!(
                    "{},{},{},{}",
                    esc(&r.node),
                    esc(&r.scope),
                    esc(&r.spime),
                    openspime::date::format(r.at_unix, 0)
                );
                for c in &columns {
                    line.push(',');
                    if let Some((_, v)) = fields.iter().find(|(k, _)| k == c) {
                        line.push_str(&esc(v));
                    }
                }
                println!("{line}");
            }
        }
    }
    Ok(())
}
