//! Node configuration (XEP-0060 §16.4 `pubsub#node_config`), its data form, and its stored
//! form.

use openspimed_module_api::Element;

use openspimed_module_api::form::{self as forms, Form};

/// Who may subscribe and retrieve items (XEP-0060 §4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessModel {
    /// Anyone (within `subscribe_domains`, if set).
    Open,
    /// Subscriptions wait for an owner's approval.
    Authorize,
    /// Only affiliated entities.
    Whitelist,
    /// Entities with a presence subscription to an owner.
    Presence,
}

/// Who may publish (XEP-0060 §16.4 `pubsub#publish_model`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishModel {
    /// Owners and publishers.
    Publishers,
    /// Also subscribers.
    Subscribers,
    /// Anyone (within `publish_domains`, if set).
    Open,
}

/// When the node's last item is sent without being asked (XEP-0060 §16.4
/// `pubsub#send_last_published_item`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendLast {
    /// Never: bookmarks (XEP-0402 §3) publish with it.
    Never,
    /// When an entity subscribes.
    OnSub,
    /// When it subscribes, and to a PEP contact's resource that comes online (XEP-0163
    /// §4.3.4; PEP's default).
    OnSubAndPresence,
}

fn send_last_str(s: SendLast) -> &'static str {
    match s {
        SendLast::Never => "never",
        SendLast::OnSub => "on_sub",
        SendLast::OnSubAndPresence => "on_sub_and_presence",
    }
}

/// A node's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Human-readable title.
    pub title: String,
    /// Send the item payload with notifications.
    pub deliver_payloads: bool,
    /// Notify subscribers when an item is retracted.
    pub notify_retract: bool,
    /// Notify subscribers when the node is deleted.
    pub notify_delete: bool,
    /// Store published items.
    pub persist_items: bool,
    /// Items kept (newest); `None` for no limit.
    pub max_items: Option<u64>,
    /// Subscription and retrieval policy.
    pub access_model: AccessModel,
    /// Publishing policy.
    pub publish_model: PublishModel,
    /// When the last item goes out unasked.
    pub send_last: SendLast,
    /// If not empty, only entities of these domains may publish (openspimed extension, set
    /// from the configuration file; the `spimeseek` node uses it).
    pub publish_domains: Vec<String>,
    /// If not empty, only entities of these domains may subscribe (openspimed extension).
    pub subscribe_domains: Vec<String>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            title: String::new(),
            deliver_payloads: true,
            notify_retract: true,
            notify_delete: true,
            persist_items: true,
            max_items: Some(256),
            access_model: AccessModel::Open,
            publish_model: PublishModel::Publishers,
            send_last: SendLast::OnSubAndPresence,
            publish_domains: Vec::new(),
            subscribe_domains: Vec::new(),
        }
    }
}

fn access_str(a: AccessModel) -> &'static str {
    match a {
        AccessModel::Open => "open",
        AccessModel::Authorize => "authorize",
        AccessModel::Whitelist => "whitelist",
        AccessModel::Presence => "presence",
    }
}

fn publish_str(p: PublishModel) -> &'static str {
    match p {
        PublishModel::Publishers => "publishers",
        PublishModel::Subscribers => "subscribers",
        PublishModel::Open => "open",
    }
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "true" => Ok(true),
        "0" | "false" => Ok(false),
        other => Err(format!("{other:?} is not a boolean")),
    }
}

impl NodeConfig {
    /// Applies one `pubsub#…` field; unknown fields and bad values are errors
    /// (answered `not-acceptable`).
    pub fn set(&mut self, var: &str, values: &[String]) -> Result<(), String> {
        let one = values.first().map(String::as_str).unwrap_or("");
        match var {
            "FORM_TYPE" => {}
            "pubsub#title" => self.title = one.to_owned(),
            "pubsub#deliver_payloads" => self.deliver_payloads = parse_bool(one)?,
            "pubsub#notify_retract" => self.notify_retract = parse_bool(one)?,
            "pubsub#notify_delete" => self.notify_delete = parse_bool(one)?,
            "pubsub#persist_items" => self.persist_items = parse_bool(one)?,
            "pubsub#max_items" => {
                self.max_items = match one {
                    "max" => None,
                    n => Some(
                        n.parse::<u64>()
                            .map_err(|_| format!("pubsub#max_items {n:?} is not a number"))?,
                    ),
                }
            }
            "pubsub#access_model" => {
                self.access_model = match one {
                    "open" => AccessModel::Open,
                    "authorize" => AccessModel::Authorize,
                    "whitelist" => AccessModel::Whitelist,
                    "presence" => AccessModel::Presence,
                    other => return Err(format!("access model {other:?} is not supported")),
                }
            }
            "pubsub#publish_model" => {
                self.publish_model = match one {
                    "publishers" => PublishModel::Publishers,
                    "subscribers" => PublishModel::Subscribers,
                    "open" => PublishModel::Open,
                    other => return Err(format!("publish model {other:?} is not supported")),
                }
            }
            "pubsub#send_last_published_item" => {
                self.send_last = match one {
                    "never" => SendLast::Never,
                    "on_sub" => SendLast::OnSub,
                    "on_sub_and_presence" => SendLast::OnSubAndPresence,
                    other => return Err(format!("send_last_published_item {other:?} is not one")),
                }
            }
            other => return Err(format!("{other} is not a supported node option")),
        }
        Ok(())
    }

    /// The current value of a field, as a form would carry it.
    pub fn get(&self, var: &str) -> Option<String> {
        Some(match var {
            "pubsub#title" => self.title.clone(),
            "pubsub#deliver_payloads" => b(self.deliver_payloads),
            "pubsub#notify_retract" => b(self.notify_retract),
            "pubsub#notify_delete" => b(self.notify_delete),
            "pubsub#persist_items" => b(self.persist_items),
            "pubsub#max_items" => self
                .max_items
                .map(|m| m.to_string())
                .unwrap_or_else(|| "max".into()),
            "pubsub#access_model" => access_str(self.access_model).into(),
            "pubsub#publish_model" => publish_str(self.publish_model).into(),
            "pubsub#send_last_published_item" => send_last_str(self.send_last).into(),
            _ => return None,
        })
    }

    /// Applies a submitted form.
    pub fn apply_form(&mut self, form: &Form) -> Result<(), String> {
        let mut next = self.clone();
        for (var, values) in &form.fields {
            next.set(var, values)?;
        }
        *self = next;
        Ok(())
    }

    /// The configuration as a `form` data form (XEP-0060 §8.2.1).
    pub fn to_form(&self) -> Element {
        let mut f = forms::form("form", "http://jabber.org/protocol/pubsub#node_config");
        let fields: [(&str, &str, &[&str]); 9] = [
            ("pubsub#title", "text-single", &[]),
            ("pubsub#deliver_payloads", "boolean", &[]),
            ("pubsub#notify_retract", "boolean", &[]),
            ("pubsub#notify_delete", "boolean", &[]),
            ("pubsub#persist_items", "boolean", &[]),
            ("pubsub#max_items", "text-single", &[]),
            (
                "pubsub#access_model",
                "list-single",
                &["open", "authorize", "whitelist", "presence"],
            ),
            (
                "pubsub#publish_model",
                "list-single",
                &["publishers", "subscribers", "open"],
            ),
            (
                "pubsub#send_last_published_item",
                "list-single",
                &["never", "on_sub", "on_sub_and_presence"],
            ),
        ];
        for (var, kind, options) in fields {
            f.push_child(forms::field(
                var,
                kind,
                &self.get(var).unwrap_or_default(),
                options,
            ));
        }
        f
    }

    /// Stored form: one `key=value` per line.
    pub fn serialize(&self) -> String {
        let mut out = String::new();
        for var in [
            "pubsub#title",
            "pubsub#deliver_payloads",
            "pubsub#notify_retract",
            "pubsub#notify_delete",
            "pubsub#persist_items",
            "pubsub#max_items",
            "pubsub#access_model",
            "pubsub#publish_model",
            "pubsub#send_last_published_item",
        ] {
            out.push_str(&format!(
                "{var}={}\n",
                self.get(var).unwrap_or_default().replace('\n', " ")
            ));
        }
        out.push_str(&format!(
            "publish_domains={}\n",
            self.publish_domains.join(",")
        ));
        out.push_str(&format!(
            "subscribe_domains={}\n",
            self.subscribe_domains.join(",")
        ));
        out
    }

    /// Reads the stored form; unknown or bad lines keep their defaults.
    pub fn deserialize(text: &str) -> NodeConfig {
        let mut c = NodeConfig::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let list = || {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            };
            match k {
                "publish_domains" => c.publish_domains = list(),
                "subscribe_domains" => c.subscribe_domains = list(),
                _ => {
                    let _ = c.set(k, &[v.to_owned()]);
                }
            }
        }
        c
    }
}

fn b(v: bool) -> String {
    if v { "1".into() } else { "0".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_round_trips_and_bad_values_are_refused() {
        let mut c = NodeConfig {
            title: "Seeks".into(),
            max_items: None,
            access_model: AccessModel::Whitelist,
            publish_model: PublishModel::Open,
            send_last: SendLast::Never,
            publish_domains: vec!["a.example".into(), "b.example".into()],
            ..NodeConfig::default()
        };
        assert_eq!(NodeConfig::deserialize(&c.serialize()), c);
        assert!(c.set("pubsub#max_items", &["lots".into()]).is_err());
        assert!(
            c.set("pubsub#access_model", &["roster-ish".into()])
                .is_err()
        );
        assert!(c.set("pubsub#deliver_payloads", &["maybe".into()]).is_err());
        c.set("pubsub#deliver_payloads", &["false".into()]).unwrap();
        assert!(!c.deliver_payloads);
    }
}
