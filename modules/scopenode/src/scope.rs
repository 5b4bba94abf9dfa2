//! Scopes: what a ScopeNode collects, field by field, and the check of an entry against it.

use openspime::Entry;

use crate::options::{FieldKind, ScopeOptions};

/// The type of a field's value.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldType {
    /// A decimal number, optionally bounded.
    Number {
        /// Smallest value allowed.
        min: Option<f64>,
        /// Largest value allowed.
        max: Option<f64>,
    },
    /// Free text.
    Text,
    /// An OpenSpime date (profile §6).
    DateTime,
    /// One of a list of words.
    Enum(Vec<String>),
}

/// One field a scope knows.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldDef {
    /// Element name in the entry.
    pub name: String,
    /// Whether every entry must carry it.
    pub required: bool,
    /// Value type.
    pub kind: FieldType,
    /// The `unit` attribute the value must carry, if any (`ele unit='m'`).
    pub unit: Option<String>,
}

/// A scope: a reason for collecting data (seed §0.7), the ScopeNode's resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Scope {
    /// Name (the resource: `node@domain/NAME`).
    pub name: String,
    /// Fields entries may carry.
    pub fields: Vec<FieldDef>,
    /// Reports must be signed.
    pub require_signature: bool,
    /// Reports must be encrypted.
    pub require_encryption: bool,
    /// Days entries are kept (0: forever).
    pub retention_days: u64,
}

impl Scope {
    /// The seed's CO2 scope: date, exposure, lat, lon, ele, ppm.
    pub fn co2() -> Scope {
        let num = |name: &str, required, min, max, unit: Option<&str>| FieldDef {
            name: name.into(),
            required,
            kind: FieldType::Number { min, max },
            unit: unit.map(str::to_owned),
        };
        Scope {
            name: "co2".into(),
            fields: vec![
                FieldDef {
                    name: "date".into(),
                    required: true,
                    kind: FieldType::DateTime,
                    unit: None,
                },
                FieldDef {
                    name: "exposure".into(),
                    required: false,
                    kind: FieldType::Enum(vec!["indoor".into(), "outdoor".into()]),
                    unit: None,
                },
                num("lat", false, Some(-90.0), Some(90.0), None),
                num("lon", false, Some(-180.0), Some(180.0), None),
                num("ele", false, None, None, Some("m")),
                num("ppm", true, Some(0.0), Some(1_000_000.0), None),
            ],
            require_signature: false,
            require_encryption: false,
            retention_days: 0,
        }
    }

    /// The scope an operator configured. `Err` holds the key (below the scope) that is
    /// wrong and why.
    pub fn from_options(o: &ScopeOptions) -> Result<Scope, (String, String)> {
        let mut fields = Vec::new();
        for (i, f) in o.fields.iter().enumerate() {
            let kind = match f.kind {
                FieldKind::Number => FieldType::Number {
                    min: f.min,
                    max: f.max,
                },
                FieldKind::Text => FieldType::Text,
                FieldKind::DateTime => FieldType::DateTime,
                FieldKind::Enum if f.values.is_empty() => {
                    return Err((
                        format!("fields[{i}].values"),
                        format!("enum field {} needs values", f.name),
                    ));
                }
                FieldKind::Enum => FieldType::Enum(f.values.clone()),
            };
            if f.kind != FieldKind::Number && (f.min.is_some() || f.max.is_some()) {
                return Err((
                    format!("fields[{i}]"),
                    format!("min and max are for number fields; {} is not one", f.name),
                ));
            }
            fields.push(FieldDef {
                name: f.name.clone(),
                required: f.required,
                kind,
                unit: f.unit.clone(),
            });
        }
        Ok(Scope {
            name: o.name.clone(),
            fields,
            require_signature: o.require_signature,
            require_encryption: o.require_encryption,
            retention_days: o.retention_days,
        })
    }

    /// Checks an entry; `Err` says what is inconsistent with the scope.
    pub fn check(&self, entry: &Entry) -> Result<(), String> {
        for def in self.fields.iter().filter(|d| d.required) {
            if entry.get(&def.name).is_none() {
                return Err(format!("missing required field {}", def.name));
            }
        }
        for f in &entry.fields {
            let Some(def) = self.fields.iter().find(|d| d.name == f.name) else {
                return Err(format!(
                    "field {} is not part of scope {}",
                    f.name, self.name
                ));
            };
            if let Some(unit) = &def.unit {
                let given = f.attrs.iter().find(|(k, _)| k == "unit").map(|(_, v)| v);
                if given.is_some_and(|g| g != unit) {
                    return Err(format!("field {} must be in {unit}", f.name));
                }
            }
            match &def.kind {
                FieldType::Number { min, max } => {
                    let v: f64 =
                        f.value.trim().parse().map_err(|_| {
                            format!("field {} is not a number: {:?}", f.name, f.value)
                        })?;
                    if !v.is_finite() || min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m) {
                        let bound = |b: &Option<f64>| b.map(|x| x.to_string()).unwrap_or_default();
                        return Err(format!(
                            "field {} is {}, out of its range [{}, {}]",
                            f.name,
                            f.value.trim(),
                            bound(min),
                            bound(max)
                        ));
                    }
                }
                FieldType::Text => {}
                FieldType::DateTime => {
                    openspime::date::parse(&f.value).map_err(|_| {
                        format!("field {} is not a date (RFC 3339): {:?}", f.name, f.value)
                    })?;
                }
                FieldType::Enum(values) => {
                    if !values.contains(&f.value) {
                        return Err(format!(
                            "field {} must be one of {}",
                            f.name,
                            values.join(", ")
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openspime::Field;

    fn entry(fields: &[(&str, &str)]) -> Entry {
        Entry {
            fields: fields
                .iter()
                .map(|(n, v)| Field {
                    name: (*n).into(),
                    value: (*v).into(),
                    attrs: if *n == "ele" {
                        vec![("unit".into(), "m".into())]
                    } else {
                        vec![]
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn the_seed_entry_fits_co2_and_broken_ones_do_not() {
        let s = Scope::co2();
        let ok = [
            ("date", "2008-04-02T17:54:22+01:00"),
            ("exposure", "outdoor"),
            ("lat", "45.475841199050905"),
            ("lon", "9.172725677490234"),
            ("ele", "120.0"),
            ("ppm", "176.4"),
        ];
        s.check(&entry(&ok)).unwrap();
        assert!(s.check(&entry(&ok[..5])).is_err(), "ppm is required");
        let mut bad = ok;
        bad[5] = ("ppm", "lots");
        assert!(s.check(&entry(&bad)).is_err());
        bad = ok;
        bad[1] = ("exposure", "space");
        assert!(s.check(&entry(&bad)).is_err());
        bad = ok;
        bad[2] = ("lat", "91");
        assert!(s.check(&entry(&bad)).is_err());
        let mut extra = ok.to_vec();
        extra.push(("temperature", "20"));
        assert!(s.check(&entry(&extra)).is_err());
    }

    #[test]
    fn scopes_read_from_configuration() {
        let t: openspimed_module_api::toml::Table = openspimed_module_api::toml::from_str(
            "name = 'noise'\nrequire_signature = true\nretention_days = 30\n\
             [[fields]]\nname = 'db'\ntype = 'number'\nmin = 0\nrequired = true\n\
             [[fields]]\nname = 'where'\ntype = 'enum'\nvalues = ['street', 'park']",
        )
        .unwrap();
        let o: ScopeOptions = openspimed_module_api::options::parse("scopenode", &t).unwrap();
        let s = Scope::from_options(&o).unwrap();
        assert!(s.require_signature && s.retention_days == 30);
        s.check(&entry(&[("db", "55"), ("where", "park")])).unwrap();
        assert!(s.check(&entry(&[("db", "-1")])).is_err());
        let no_values: openspimed_module_api::toml::Table = openspimed_module_api::toml::from_str(
            "name = 'x'\n[[fields]]\nname = 'a'\ntype = 'enum'",
        )
        .unwrap();
        let o: ScopeOptions =
            openspimed_module_api::options::parse("scopenode", &no_values).unwrap();
        assert_eq!(Scope::from_options(&o).unwrap_err().0, "fields[0].values");
    }
}
