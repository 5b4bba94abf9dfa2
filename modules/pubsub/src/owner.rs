//! Owner use cases (XEP-0060 §8): configure, delete, purge, subscriptions and affiliations
//! management, subscription approval.

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{Condition, Element, ModuleError, Outcome, StanzaError, ns};

use crate::config::NodeConfig;
use crate::store::{PubSubData, SubscriptionRecord};
use crate::{AUTHORIZATION, Node, Request, event_message, internal, pns, ps_error, random_id};
use openspimed_module_api::form::{self as forms, Form};

impl Request<'_> {
    pub(crate) async fn owner(&self, payload: &Element, get: bool) -> Result<Outcome, ModuleError> {
        let Some(op) = payload.first_child() else {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        };
        if op.name() == "default" && get {
            return Ok(self.reply(
                pns::OWNER,
                Some(
                    Element::new("default", pns::OWNER).with_child(NodeConfig::default().to_form()),
                ),
            ));
        }
        let Some(name) = op.attr("node") else {
            return Ok(ps_error(Condition::BadRequest, Some("nodeid-required")));
        };
        let Some(node) = self.node(name).await else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        if !node.is_owner(&self.bare()) {
            return Ok(Outcome::Error(Condition::Forbidden.into()));
        }
        let store = PubSubData::new(self.cx.storage.clone());
        match (op.name(), get) {
            ("configure", true) => Ok(self.reply(
                pns::OWNER,
                Some(
                    Element::new("configure", pns::OWNER)
                        .with_attr("node", name)
                        .with_child(node.config.to_form()),
                ),
            )),
            ("configure", false) => {
                let Some(form) = Form::find(op) else {
                    return Ok(ps_error(Condition::BadRequest, None));
                };
                let mut config = node.config.clone();
                if let Err(why) = config.apply_form(&form) {
                    return Ok(Outcome::Error(
                        StanzaError::new(Condition::NotAcceptable).with_text(why),
                    ));
                }
                store
                    .set_node_config(&self.svc.jid, name, &config.serialize())
                    .await
                    .map_err(internal)?;
                self.update_node(name, |n| n.config = config).await;
                Ok(self.reply(pns::OWNER, None))
            }
            ("delete", false) => {
                store
                    .delete_node(&self.svc.jid, name)
                    .await
                    .map_err(internal)?;
                self.svc.nodes.write().await.remove(name);
                if node.config.notify_delete {
                    self.notify(
                        &node,
                        Element::new("delete", pns::EVENT).with_attr("node", name),
                    )
                    .await;
                }
                Ok(self.reply(pns::OWNER, None))
            }
            ("purge", false) => {
                store
                    .purge_items(&self.svc.jid, name)
                    .await
                    .map_err(internal)?;
                self.notify(
                    &node,
                    Element::new("purge", pns::EVENT).with_attr("node", name),
                )
                .await;
                Ok(self.reply(pns::OWNER, None))
            }
            ("subscriptions", true) => {
                let mut list = Element::new("subscriptions", pns::OWNER).with_attr("node", name);
                for s in &node.subscriptions {
                    list.push_child(
                        Element::new("subscription", pns::OWNER)
                            .with_attr("jid", s.jid.clone())
                            .with_attr("subscription", s.state.clone())
                            .with_attr("subid", s.subid.clone()),
                    );
                }
                Ok(self.reply(pns::OWNER, Some(list)))
            }
            ("subscriptions", false) => {
                for entry in op.children().filter(|c| c.name() == "subscription") {
                    let (Some(jid), Some(state)) = (entry.attr("jid"), entry.attr("subscription"))
                    else {
                        return Ok(Outcome::Error(Condition::BadRequest.into()));
                    };
                    let Ok(jid) = Jid::new(jid) else {
                        return Ok(Outcome::Error(Condition::JidMalformed.into()));
                    };
                    let jid = jid.to_string();
                    let existing: Vec<SubscriptionRecord> = node
                        .subscriptions
                        .iter()
                        .filter(|s| s.jid == jid)
                        .cloned()
                        .collect();
                    match state {
                        "none" => {
                            for s in &existing {
                                store
                                    .remove_subscription(&self.svc.jid, name, &s.jid, &s.subid)
                                    .await
                                    .map_err(internal)?;
                            }
                            self.update_node(name, |n| n.subscriptions.retain(|s| s.jid != jid))
                                .await;
                        }
                        "subscribed" | "pending" => {
                            let rec = SubscriptionRecord {
                                node: name.to_owned(),
                                jid: jid.clone(),
                                subid: existing
                                    .first()
                                    .map(|s| s.subid.clone())
                                    .unwrap_or_else(random_id),
                                state: state.to_owned(),
                                deliver: existing.first().is_none_or(|s| s.deliver),
                            };
                            store
                                .put_subscription(&self.svc.jid, &rec)
                                .await
                                .map_err(internal)?;
                            self.update_node(name, |n| {
                                n.subscriptions.retain(|s| s.jid != jid);
                                n.subscriptions.push(rec);
                            })
                            .await;
                        }
                        _ => return Ok(Outcome::Error(Condition::BadRequest.into())),
                    }
                }
                Ok(self.reply(pns::OWNER, None))
            }
            ("affiliations", true) => {
                let mut list = Element::new("affiliations", pns::OWNER).with_attr("node", name);
                let mut affs: Vec<_> = node.affiliations.iter().collect();
                affs.sort();
                for (jid, a) in affs {
                    list.push_child(
                        Element::new("affiliation", pns::OWNER)
                            .with_attr("jid", jid.clone())
                            .with_attr("affiliation", a.clone()),
                    );
                }
                Ok(self.reply(pns::OWNER, Some(list)))
            }
            ("affiliations", false) => {
                for entry in op.children().filter(|c| c.name() == "affiliation") {
                    let (Some(jid), Some(aff)) = (entry.attr("jid"), entry.attr("affiliation"))
                    else {
                        return Ok(Outcome::Error(Condition::BadRequest.into()));
                    };
                    if !matches!(
                        aff,
                        "owner" | "publisher" | "publish-only" | "member" | "outcast" | "none"
                    ) {
                        return Ok(Outcome::Error(Condition::BadRequest.into()));
                    }
                    let Ok(jid) = Jid::new(jid) else {
                        return Ok(Outcome::Error(Condition::JidMalformed.into()));
                    };
                    let bare = jid.to_bare().to_string();
                    store
                        .set_affiliation(&self.svc.jid, name, &bare, aff)
                        .await
                        .map_err(internal)?;
                    let aff = aff.to_owned();
                    self.update_node(name, |n| {
                        if aff == "none" {
                            n.affiliations.remove(&bare);
                        } else {
                            n.affiliations.insert(bare, aff);
                        }
                    })
                    .await;
                }
                Ok(self.reply(pns::OWNER, None))
            }
            _ => Ok(Outcome::Error(Condition::FeatureNotImplemented.into())),
        }
    }

    /// Sends each owner of the node a subscription approval request (XEP-0060 §8.6) for a
    /// pending subscription.
    pub(crate) fn ask_owners(&self, node: &Node, rec: &SubscriptionRecord) {
        for (owner, aff) in &node.affiliations {
            if aff != "owner" {
                continue;
            }
            let form = forms::form("form", AUTHORIZATION)
                .with_child(forms::field("pubsub#subid", "hidden", &rec.subid, &[]))
                .with_child(forms::field("pubsub#node", "text-single", &rec.node, &[]))
                .with_child(forms::field(
                    "pubsub#subscriber_jid",
                    "jid-single",
                    &rec.jid,
                    &[],
                ))
                .with_child(forms::field("pubsub#allow", "boolean", "false", &[]));
            self.cx.server.send(
                Element::new("message", ns::CLIENT)
                    .with_attr("from", self.svc.jid.clone())
                    .with_attr("to", owner.clone())
                    .with_attr("id", random_id())
                    .with_child(form),
            );
        }
    }

    /// An owner's answer to an approval request (XEP-0060 §8.6): `pubsub#allow` true makes
    /// the pending subscription `subscribed`, false removes it; either way the subscriber
    /// is told (§12.6). A cancelled form leaves it pending.
    pub(crate) async fn approval(&self) -> Result<Outcome, ModuleError> {
        let Some(x) = self.stanza.get_child("x", openspimed_module_api::ns::DATA) else {
            return Ok(Outcome::Handled);
        };
        let Some(form) = Form::find(self.stanza) else {
            return Ok(Outcome::Handled);
        };
        if form.form_type.as_deref() != Some(AUTHORIZATION) || x.attr("type") == Some("cancel") {
            return Ok(Outcome::Handled);
        }
        let value = |var: &str| {
            form.fields
                .iter()
                .find(|(v, _)| v == var)
                .and_then(|(_, vals)| vals.first().cloned())
        };
        let (Some(name), Some(subscriber), Some(allow)) = (
            value("pubsub#node"),
            value("pubsub#subscriber_jid"),
            value("pubsub#allow"),
        ) else {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        };
        let allow = match allow.as_str() {
            "1" | "true" => true,
            "0" | "false" => false,
            _ => return Ok(Outcome::Error(Condition::BadRequest.into())),
        };
        let Some(node) = self.node(&name).await else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        if !node.is_owner(&self.bare()) {
            return Ok(Outcome::Error(Condition::Forbidden.into()));
        }
        let subid = value("pubsub#subid");
        let Some(pending) = node
            .subscriptions
            .iter()
            .find(|s| {
                s.jid == subscriber
                    && s.state == "pending"
                    && subid.as_ref().is_none_or(|id| *id == s.subid)
            })
            .cloned()
        else {
            // Already decided (another owner, or an earlier answer): nothing to do.
            return Ok(Outcome::Handled);
        };
        let state = if allow {
            let rec = SubscriptionRecord {
                state: "subscribed".into(),
                ..pending.clone()
            };
            self.put_subscription(&rec).await?;
            "subscribed"
        } else {
            PubSubData::new(self.cx.storage.clone())
                .remove_subscription(&self.svc.jid, &name, &pending.jid, &pending.subid)
                .await
                .map_err(internal)?;
            let subid = pending.subid.clone();
            self.update_node(&name, |n| n.subscriptions.retain(|s| s.subid != subid))
                .await;
            "none"
        };
        let event = Element::new("event", pns::EVENT).with_child(
            Element::new("subscription", pns::EVENT)
                .with_attr("node", name)
                .with_attr("jid", pending.jid.clone())
                .with_attr("subid", pending.subid)
                .with_attr("subscription", state),
        );
        self.cx
            .server
            .send(event_message(&self.svc.jid, &pending.jid, event, false));
        Ok(Outcome::Handled)
    }
}
