//! What `spime seek` prints: an aligned table for people, CSV or JSON for programs.

use openspime::Entry;

/// How to print the entries found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Columns padded to line up in a terminal.
    Table,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// The column names: `from`, then every field name in the order first seen.
fn columns(found: &[(String, Entry)]) -> Vec<String> {
    let mut cols = vec!["from".to_owned()];
    for f in found.iter().flat_map(|(_, e)| e.fields.iter()) {
        if !cols.contains(&f.name) {
            cols.push(f.name.clone());
        }
    }
    cols
}

/// One row per entry, in column order (a field the entry lacks is empty).
fn rows(found: &[(String, Entry)], cols: &[String]) -> Vec<Vec<String>> {
    found
        .iter()
        .map(|(from, e)| {
            std::iter::once(from.clone())
                .chain(cols[1..].iter().map(|c| e.get(c).unwrap_or("").to_owned()))
                .collect()
        })
        .collect()
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// The text to print for `found` (ends with a newline).
pub fn render(found: &[(String, Entry)], format: Format) -> Result<String, String> {
    let cols = columns(found);
    let rows = rows(found, &cols);
    let mut out = String::new();
    match format {
        Format::Json => {
            let objects: Vec<serde_json::Value> = rows
                .iter()
                .map(|row| {
                    serde_json::Value::Object(
                        cols.iter()
                            .zip(row)
                            .filter(|(c, v)| *c == "from" || !v.is_empty())
                            .map(|(c, v)| (c.clone(), v.clone().into()))
                            .collect(),
                    )
                })
                .collect();
            out = serde_json::to_string_pretty(&objects).map_err(|e| e.to_string())?;
            out.push('\n');
        }
        Format::Csv => {
            for row in std::iter::once(&cols).chain(&rows) {
                let cells: Vec<String> = row.iter().map(|c| csv_cell(c)).collect();
                out.push_str(&cells.join(","));
                out.push_str("\r\n");
            }
        }
        Format::Table => {
            let widths: Vec<usize> = (0..cols.len())
                .map(|i| {
                    std::iter::once(&cols)
                        .chain(&rows)
                        .map(|r| r[i].chars().count())
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            for row in std::iter::once(&cols).chain(&rows) {
                let mut line = String::new();
                for (i, cell) in row.iter().enumerate() {
                    line.push_str(cell);
                    if i + 1 < row.len() {
                        let pad = widths[i] - cell.chars().count() + 2;
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
                out.push_str(line.trim_end());
                out.push('\n');
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(fields: &[(&str, &str)]) -> Entry {
        let args: Vec<String> = fields.iter().map(|(n, v)| format!("{n}={v}")).collect();
        crate::entries::parse_fields(&args).unwrap()
    }

    fn found() -> Vec<(String, Entry)> {
        vec![
            (
                "demo@scopenode.localhost/co2".into(),
                entry(&[("date", "2026-11-21T10:00:00Z"), ("ppm", "412.5")]),
            ),
            (
                "n@s.example/t".into(),
                entry(&[("ppm", "1,5"), ("ele", "3")]),
            ),
        ]
    }

    #[test]
    fn the_table_lines_up_every_column() {
        let t = render(&found(), Format::Table).unwrap();
        assert_eq!(
            t,
            "from                          date                  ppm    ele\n\
             demo@scopenode.localhost/co2  2026-11-21T10:00:00Z  412.5\n\
             n@s.example/t                                       1,5    3\n"
        );
    }

    #[test]
    fn csv_quotes_what_needs_it_and_json_leaves_out_missing_fields() {
        let c = render(&found(), Format::Csv).unwrap();
        assert_eq!(
            c,
            "from,date,ppm,ele\r\ndemo@scopenode.localhost/co2,2026-11-21T10:00:00Z,412.5,\r\n\
             n@s.example/t,,\"1,5\",3\r\n"
        );
        let j: serde_json::Value =
            serde_json::from_str(&render(&found(), Format::Json).unwrap()).unwrap();
        assert_eq!(j[1]["ppm"], "1,5");
        assert!(j[0].get("ele").is_none());
    }
}
