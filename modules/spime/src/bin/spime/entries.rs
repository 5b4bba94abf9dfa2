//! Entries to report: from `--field name=value` arguments, a CSV or JSON file, or the
//! output of a command (`serve --command`).

use std::io::Read;
use std::path::Path;

use openspime::{Entry, Field};

fn err(msg: impl std::fmt::Display) -> String {
    msg.to_string()
}

/// One entry from `name=value` arguments (`ele:m=120` adds `unit='m'`).
pub fn parse_fields(fields: &[String]) -> Result<Entry, String> {
    let mut entry = Entry::default();
    for f in fields {
        let (name, value) = f
            .split_once('=')
            .ok_or(format!("--field {f:?}: expected name=value"))?;
        let (name, attrs) = match name.split_once(':') {
            // ele:m=120.0 → <ele unit='m'>120.0</ele>
            Some((n, unit)) => (n, vec![("unit".to_owned(), unit.to_owned())]),
            None => (name, vec![]),
        };
        entry.fields.push(Field {
            name: name.to_owned(),
            value: value.to_owned(),
            attrs,
        });
    }
    Ok(entry)
}

/// Entries from a CSV (header row = field names) or JSON (array of objects) file, or `-`
/// for stdin.
pub fn entries_from_file(path: &Path) -> Result<Vec<Entry>, String> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map_err(err)?;
    } else {
        text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    }
    if text.trim_start().starts_with('[') {
        let rows: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        return rows
            .into_iter()
            .map(|row| {
                parse_fields(
                    &row.into_iter()
                        .map(|(k, v)| {
                            format!(
                                "{k}={}",
                                v.as_str().map(str::to_owned).unwrap_or(v.to_string())
                            )
                        })
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
    }
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty CSV file")?
        .split(',')
        .map(str::trim)
        .collect();
    lines
        .map(|l| {
            let values: Vec<&str> = l.split(',').map(str::trim).collect();
            if values.len() != header.len() {
                return Err(format!("CSV row {l:?} does not match the header"));
            }
            parse_fields(
                &header
                    .iter()
                    .zip(values)
                    .map(|(h, v)| format!("{h}={v}"))
                    .collect::<Vec<_>>(),
            )
        })
        .collect()
}

/// One entry from a command's output: `name=value` per line.
pub fn entry_from_command(cmd: &str) -> Result<Entry, String> {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let fields: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    parse_fields(&fields)
}
