//! Module options: the `[modules.NAME]` table read into the module's own option struct.
//!
//! A module declares its options as a serde struct (`deny_unknown_fields`, defaults in its
//! `Default`), the single source of truth for what it reads; [`parse`] reads the table into
//! it and names the key of the first problem (`nodes[0].scopes[0].fields[2].type`), so that
//! `openspimed check` can say which key of the file is wrong. [`keys`] lists the keys of a
//! sample, which a test holds against the documented example configuration.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::module::ModuleError;

/// Reads a module's options table into `T`.
pub fn parse<T: DeserializeOwned>(
    module: &'static str,
    table: &toml::Table,
) -> Result<T, ModuleError> {
    serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
        let key = e.path().to_string();
        ModuleError::Config {
            module,
            key: if key == "." { String::new() } else { key },
            // toml adds a line "in `a.b`" without the indices; the key above has them.
            reason: e
                .into_inner()
                .to_string()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("in `"))
                .collect::<Vec<_>>()
                .join(" "),
        }
    })
}

/// Every key of `sample` serialized, as dotted paths; array elements are written `[]`
/// (`nodes[].scopes[].fields[].type`). Keys under a map the operator names (a table of
/// hosts, say) are the map's own.
pub fn keys<T: Serialize>(sample: &T) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(v) = toml::Value::try_from(sample) {
        walk("", &v, &mut out);
    }
    out
}

fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, child) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(path.clone());
                walk(&path, child, out);
            }
        }
        toml::Value::Array(items) => {
            for item in items.iter().filter(|i| i.is_table()) {
                walk(&format!("{prefix}[]"), item, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Serialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Opts {
        size: u32,
        items: Vec<Item>,
    }

    #[derive(serde::Deserialize, Serialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Item {
        name: String,
        #[serde(default)]
        kind: Kind,
    }

    #[derive(serde::Deserialize, Serialize, Default)]
    #[serde(rename_all = "kebab-case")]
    enum Kind {
        #[default]
        Plain,
        DateTime,
    }

    #[test]
    fn problems_name_their_key() {
        let t: toml::Table =
            toml::from_str("items = [{ name = 'a' }, { name = 'b', kind = 'datetime' }]").unwrap();
        let e = parse::<Opts>("m", &t).err().unwrap();
        let ModuleError::Config {
            module,
            key,
            reason,
        } = &e
        else {
            panic!("{e}")
        };
        assert_eq!((*module, key.as_str()), ("m", "items[1].kind"));
        assert!(reason.contains("unknown variant `datetime`"), "{reason}");
        assert!(e.to_string().contains("modules.m.items[1].kind"), "{e}");
        let t: toml::Table = toml::from_str("sise = 3").unwrap();
        let e = parse::<Opts>("m", &t).err().unwrap();
        assert!(e.to_string().contains("unknown field `sise`"), "{e}");
        let ok: Opts = parse("m", &toml::from_str("size = 3").unwrap()).unwrap();
        assert_eq!(ok.size, 3);
    }

    #[test]
    fn keys_walk_tables_and_arrays_of_tables() {
        let sample = Opts {
            size: 1,
            items: vec![Item {
                name: "x".into(),
                kind: Kind::DateTime,
            }],
        };
        let mut got = keys(&sample);
        got.sort();
        assert_eq!(got, ["items", "items[].kind", "items[].name", "size"]);
    }
}
