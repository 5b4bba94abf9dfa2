//! `openspimed data`: export of the collected sensor entries.

use std::process::ExitCode;

use clap::Subcommand;
use openspimed_config::Config;

use super::fail;
use super::open_store;

/// `openspimed data …`
#[derive(Subcommand, Debug)]
pub enum DataAction {
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
pub enum ExportFormat {
    /// One row per entry, one column per field.
    Csv,
    /// One JSON object per entry, in an array.
    Json,
}

pub(super) async fn data(config: &Config, action: DataAction) -> ExitCode {
    use openspimed_module_api::SensorStore;
    let DataAction::Export {
        spime,
        node,
        since,
        format,
    } = action;
    let since = match since.map(|s| openspime::date::parse(&s)) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => return fail(e),
    };
    let spime = match openspimed_module_api::jid::Jid::new(&spime) {
        Ok(j) => j.to_string(),
        Err(e) => return fail(format!("{spime:?} is not a JID: {e}")),
    };
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let rows = match store
        .export_entries(node.as_deref(), Some(&spime), since)
        .await
    {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    // Each stored entry is an OpenSpime <entry/>: read its fields back.
    let parsed: Vec<(openspimed_module_api::SensorEntry, Vec<(String, String)>)> = rows
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
                Err(e) => return fail(e),
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
    ExitCode::SUCCESS
}
