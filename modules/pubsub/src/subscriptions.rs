//! Subscriber use cases (XEP-0060 §6): subscribe, unsubscribe, options, and a JID's own
//! subscriptions and affiliations.

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{Condition, Element, ModuleError, Outcome, iq_result};

use crate::config::AccessModel;
use crate::store::{PubSubData, SubscriptionRecord};
use crate::suboptions::SubOptions;
use crate::{Request, domain_allowed, internal, pns, ps_error, random_id};
use openspimed_module_api::form::Form;

impl Request<'_> {
    pub(crate) async fn subscribe(
        &self,
        op: &Element,
        payload: &Element,
    ) -> Result<Outcome, ModuleError> {
        let Some(name) = op.attr("node") else {
            return Ok(ps_error(Condition::BadRequest, Some("nodeid-required")));
        };
        // XEP-0060 §6.1.3.1: the JID must be the sender's (bare or full).
        let jid = match op.attr("jid").map(Jid::new) {
            Some(Ok(j)) if j.to_bare() == self.from.to_bare() => j,
            _ => return Ok(ps_error(Condition::BadRequest, Some("invalid-jid"))),
        };
        let Some(node) = self.node(name).await else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        let bare = self.bare();
        let aff = node.affiliation(&bare);
        if aff == "outcast" {
            return Ok(Outcome::Error(Condition::Forbidden.into()));
        }
        let privileged = matches!(aff, "owner" | "publisher" | "member");
        if !privileged && !domain_allowed(&node.config.subscribe_domains, &jid) {
            return Ok(ps_error(Condition::NotAllowed, Some("closed-node")));
        }
        let state = match node.config.access_model {
            _ if privileged => "subscribed",
            AccessModel::Open => "subscribed",
            AccessModel::Authorize => "pending",
            AccessModel::Whitelist => {
                return Ok(ps_error(Condition::NotAllowed, Some("closed-node")));
            }
            AccessModel::Presence if self.receives_owner_presence(&node).await => "subscribed",
            AccessModel::Presence => {
                return Ok(ps_error(
                    Condition::NotAuthorized,
                    Some("presence-subscription-required"),
                ));
            }
        };
        // §6.3.7: options may come with the subscription, without a node or JID of
        // their own.
        let submitted = match payload.get_child("options", pns::PUBSUB) {
            None => None,
            Some(o) if o.attr("node").is_some() || o.attr("jid").is_some() => {
                return Ok(Outcome::Error(Condition::BadRequest.into()));
            }
            Some(o) => match Form::find(o) {
                Some(f) => Some(f),
                None => return Ok(ps_error(Condition::BadRequest, Some("invalid-options"))),
            },
        };
        let jid_str = jid.to_string();
        let existing = node
            .subscriptions
            .iter()
            .find(|s| s.jid == jid_str)
            .cloned();
        let current = SubOptions {
            deliver: existing.as_ref().is_none_or(|s| s.deliver),
        };
        let options = match submitted.as_ref().map(|f| current.apply(f)) {
            None => current,
            Some(Ok(o)) => o,
            Some(Err(_)) => return Ok(ps_error(Condition::BadRequest, Some("invalid-options"))),
        };
        let rec = match existing {
            Some(e) if e.deliver == options.deliver => e,
            other => {
                let rec = SubscriptionRecord {
                    node: name.to_owned(),
                    jid: jid_str.clone(),
                    subid: other.as_ref().map_or_else(random_id, |e| e.subid.clone()),
                    state: other.map_or_else(|| state.to_owned(), |e| e.state),
                    deliver: options.deliver,
                };
                self.put_subscription(&rec).await?;
                if rec.state == "pending" {
                    self.ask_owners(&node, &rec);
                }
                rec
            }
        };
        let mut reply = Element::new("pubsub", pns::PUBSUB).with_child(
            Element::new("subscription", pns::PUBSUB)
                .with_attr("node", name)
                .with_attr("jid", rec.jid)
                .with_attr("subid", rec.subid)
                .with_attr("subscription", rec.state),
        );
        if submitted.is_some() {
            reply.push_child(
                Element::new("options", pns::PUBSUB).with_child(options.to_form("result")),
            );
        }
        Ok(Outcome::Reply(iq_result(self.stanza).with_child(reply)))
    }

    /// Stores a subscription and puts it in the node (replacing the one with its subid).
    pub(crate) async fn put_subscription(
        &self,
        rec: &SubscriptionRecord,
    ) -> Result<(), ModuleError> {
        PubSubData::new(self.cx.storage.clone())
            .put_subscription(&self.svc.jid, rec)
            .await
            .map_err(internal)?;
        let r = rec.clone();
        self.update_node(&rec.node, |n| {
            n.subscriptions.retain(|s| s.subid != r.subid);
            n.subscriptions.push(r);
        })
        .await;
        Ok(())
    }

    /// Subscription options: the form (get) or a submitted one (set), XEP-0060 §6.3.
    pub(crate) async fn options(&self, op: &Element, get: bool) -> Result<Outcome, ModuleError> {
        let Some(name) = op.attr("node") else {
            return Ok(ps_error(Condition::BadRequest, Some("nodeid-required")));
        };
        let Some(jid) = op.attr("jid") else {
            return Ok(ps_error(Condition::BadRequest, Some("jid-required")));
        };
        let Ok(jid) = Jid::new(jid) else {
            return Ok(Outcome::Error(Condition::JidMalformed.into()));
        };
        if jid.to_bare() != self.from.to_bare() {
            return Ok(Outcome::Error(Condition::Forbidden.into()));
        }
        let Some(node) = self.node(name).await else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        let jid = jid.to_string();
        let mine: Vec<&SubscriptionRecord> =
            node.subscriptions.iter().filter(|s| s.jid == jid).collect();
        if mine.is_empty() {
            return Ok(ps_error(
                Condition::UnexpectedRequest,
                Some("not-subscribed"),
            ));
        }
        let target = match op.attr("subid") {
            Some(id) => match mine.iter().find(|s| s.subid == id) {
                Some(s) => (*s).clone(),
                None => return Ok(ps_error(Condition::NotAcceptable, Some("invalid-subid"))),
            },
            None if mine.len() > 1 => {
                return Ok(ps_error(Condition::BadRequest, Some("subid-required")));
            }
            None => mine[0].clone(),
        };
        let current = SubOptions {
            deliver: target.deliver,
        };
        if get {
            return Ok(self.reply(
                pns::PUBSUB,
                Some(
                    Element::new("options", pns::PUBSUB)
                        .with_attr("node", name)
                        .with_attr("jid", jid)
                        .with_attr("subid", target.subid.clone())
                        .with_child(current.to_form("form")),
                ),
            ));
        }
        let Some(options) = Form::find(op).and_then(|f| current.apply(&f).ok()) else {
            return Ok(ps_error(Condition::BadRequest, Some("invalid-options")));
        };
        if options != current {
            let rec = SubscriptionRecord {
                deliver: options.deliver,
                ..target
            };
            self.put_subscription(&rec).await?;
        }
        Ok(self.reply(pns::PUBSUB, None))
    }

    pub(crate) async fn unsubscribe(&self, op: &Element) -> Result<Outcome, ModuleError> {
        let Some(name) = op.attr("node") else {
            return Ok(ps_error(Condition::BadRequest, Some("nodeid-required")));
        };
        let jid = match op.attr("jid").map(Jid::new) {
            Some(Ok(j)) if j.to_bare() == self.from.to_bare() => j.to_string(),
            _ => return Ok(ps_error(Condition::BadRequest, Some("invalid-jid"))),
        };
        let Some(node) = self.node(name).await else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        let mine: Vec<&SubscriptionRecord> =
            node.subscriptions.iter().filter(|s| s.jid == jid).collect();
        let target = match op.attr("subid") {
            Some(id) => mine.iter().find(|s| s.subid == id).copied(),
            None if mine.len() > 1 => {
                return Ok(ps_error(Condition::BadRequest, Some("subid-required")));
            }
            None => mine.first().copied(),
        };
        let Some(target) = target else {
            return Ok(ps_error(
                Condition::UnexpectedRequest,
                Some("not-subscribed"),
            ));
        };
        PubSubData::new(self.cx.storage.clone())
            .remove_subscription(&self.svc.jid, name, &target.jid, &target.subid)
            .await
            .map_err(internal)?;
        let subid = target.subid.clone();
        self.update_node(name, |n| n.subscriptions.retain(|s| s.subid != subid))
            .await;
        Ok(self.reply(pns::PUBSUB, None))
    }

    pub(crate) async fn own_subscriptions(&self, op: &Element) -> Result<Outcome, ModuleError> {
        let only = op.attr("node");
        let bare = self.bare();
        let mut out = Element::new("subscriptions", pns::PUBSUB);
        if let Some(n) = only {
            out.set_attr("node", n);
        }
        let nodes = self.svc.nodes.read().await;
        let mut names: Vec<&String> = nodes
            .keys()
            .filter(|n| only.is_none_or(|o| o == *n))
            .collect();
        names.sort();
        for name in names {
            for s in &nodes[name].subscriptions {
                if Jid::new(&s.jid).is_ok_and(|j| j.to_bare().to_string() == bare) {
                    out.push_child(
                        Element::new("subscription", pns::PUBSUB)
                            .with_attr("node", name.clone())
                            .with_attr("jid", s.jid.clone())
                            .with_attr("subscription", s.state.clone())
                            .with_attr("subid", s.subid.clone()),
                    );
                }
            }
        }
        Ok(self.reply(pns::PUBSUB, Some(out)))
    }

    pub(crate) async fn own_affiliations(&self, op: &Element) -> Result<Outcome, ModuleError> {
        let only = op.attr("node");
        let bare = self.bare();
        let mut out = Element::new("affiliations", pns::PUBSUB);
        let nodes = self.svc.nodes.read().await;
        let mut names: Vec<&String> = nodes
            .keys()
            .filter(|n| only.is_none_or(|o| o == *n))
            .collect();
        names.sort();
        for name in names {
            let a = nodes[name].affiliation(&bare);
            if a != "none" {
                out.push_child(
                    Element::new("affiliation", pns::PUBSUB)
                        .with_attr("node", name.clone())
                        .with_attr("affiliation", a),
                );
            }
        }
        Ok(self.reply(pns::PUBSUB, Some(out)))
    }
}
