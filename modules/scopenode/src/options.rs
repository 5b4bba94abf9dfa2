//! `[modules.scopenode]`: what an operator writes, as serde reads it (unknown keys refused,
//! each problem named by its key), and its sample with every key set, which the example
//! configuration must document.

use std::path::PathBuf;

use openspimed_mod_certsvc::FormOption;
use serde::{Deserialize, Serialize};

/// `[modules.scopenode]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// The domain whose local parts are ScopeNodes. Absent: `scopenode.HOST`.
    pub domain: Option<String>,
    /// The certification service the nodes publish their keys to. Absent: `cert.HOST`.
    pub cert_service: Option<String>,
    /// Certification services whose keys are believed (exact JIDs, the "list published on
    /// openspime.org"). Absent: `cert_service` alone.
    pub trusted_cert_services: Option<Vec<String>>,
    /// PubSub nodes whose SpimeSeek requests the nodes answer. Absent: `pubsub.HOST`'s
    /// `spimeseek`.
    pub seek_nodes: Option<Vec<PubSubNodeOptions>>,
    /// PubSub nodes a SpimeSeek request is published to again (seed §1.2.0).
    pub propagate_to: Vec<PubSubNodeOptions>,
    /// Entries in one SpimeSeek answer, newest first (1 to 10,000).
    pub max_entries_per_response: u64,
    /// How a node answers requests for its own key (2008 spimes ask the ScopeNode itself).
    pub key_form: FormOption,
    /// The ScopeNodes. Absent: one node `demo` with the seed's `co2` scope.
    pub nodes: Option<Vec<NodeOptions>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            domain: None,
            cert_service: None,
            trusted_cert_services: None,
            seek_nodes: None,
            propagate_to: Vec::new(),
            max_entries_per_response: 100,
            key_form: FormOption::Auto,
            nodes: None,
        }
    }
}

/// A PubSub node: `{ service = "pubsub.example.org", node = "spimeseek" }`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PubSubNodeOptions {
    /// The PubSub service's JID.
    pub service: String,
    /// The node's name.
    #[serde(default = "spimeseek")]
    pub node: String,
}

fn spimeseek() -> String {
    "spimeseek".into()
}

/// `[[modules.scopenode.nodes]]`: one ScopeNode.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeOptions {
    /// Its local part: the node is `NAME@domain`.
    pub name: String,
    /// A PEM private key to use; absent: one is generated at first start and kept in
    /// storage.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Its scopes (its resources).
    #[serde(default)]
    pub scopes: Vec<ScopeOptions>,
}

/// `[[modules.scopenode.nodes.scopes]]`: one scope.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeOptions {
    /// Its name: the resource of `node@domain/NAME`.
    pub name: String,
    /// Only signed reports are accepted.
    #[serde(default)]
    pub require_signature: bool,
    /// Only encrypted reports are accepted.
    #[serde(default)]
    pub require_encryption: bool,
    /// Days entries are kept; 0 keeps them forever.
    #[serde(default)]
    pub retention_days: u64,
    /// The fields an entry may carry.
    pub fields: Vec<FieldOptions>,
}

/// One field of a scope: `{ name = "ppm", type = "number", min = 0, required = true }`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FieldOptions {
    /// The element name in an entry.
    pub name: String,
    /// The value's type.
    #[serde(rename = "type", default)]
    pub kind: FieldKind,
    /// Smallest value of a `number`.
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest value of a `number`.
    #[serde(default)]
    pub max: Option<f64>,
    /// The words an `enum` allows.
    #[serde(default)]
    pub values: Vec<String>,
    /// Every entry must carry it.
    #[serde(default)]
    pub required: bool,
    /// The `unit` attribute the value must carry (`ele unit='m'`).
    #[serde(default)]
    pub unit: Option<String>,
}

/// A field's type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FieldKind {
    /// A decimal number, bounded by `min` and `max` when given.
    Number,
    /// Free text.
    #[default]
    Text,
    /// An OpenSpime date (wire profile §6).
    DateTime,
    /// One of `values`.
    Enum,
}

impl Options {
    /// Every key set, for the documentation check.
    pub fn sample() -> Options {
        let pubsub = || PubSubNodeOptions {
            service: "pubsub.example.org".into(),
            node: "spimeseek".into(),
        };
        Options {
            domain: Some("scopenode.example.org".into()),
            cert_service: Some("cert.example.org".into()),
            trusted_cert_services: Some(vec!["cert.example.org".into()]),
            seek_nodes: Some(vec![pubsub()]),
            propagate_to: vec![pubsub()],
            nodes: Some(vec![NodeOptions {
                name: "demo".into(),
                key_file: Some("demo.pem".into()),
                scopes: vec![ScopeOptions {
                    name: "co2".into(),
                    require_signature: true,
                    require_encryption: true,
                    retention_days: 1,
                    fields: vec![FieldOptions {
                        name: "ppm".into(),
                        kind: FieldKind::Enum,
                        min: Some(0.0),
                        max: Some(1.0),
                        values: vec!["a".into()],
                        required: true,
                        unit: Some("m".into()),
                    }],
                }],
            }]),
            ..Options::default()
        }
    }
}
