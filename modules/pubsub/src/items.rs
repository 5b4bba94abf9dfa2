//! Publisher and retrieval use cases (XEP-0060 §6.5, §7): publish, retract, items.

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{Condition, Element, ModuleError, Outcome};

use crate::config::{AccessModel, PublishModel};
use crate::store::{ItemRecord, PubSubData};
use crate::{Node, Request, domain_allowed, internal, pns, ps_error, publishes, random_id};
use openspimed_module_api::form::Form;

impl Request<'_> {
    pub(crate) fn may_publish(&self, node: &Node) -> bool {
        let aff = node.affiliation(&self.bare());
        if matches!(aff, "owner" | "publisher" | "publish-only") {
            return true;
        }
        if aff == "outcast" {
            return false;
        }
        match node.config.publish_model {
            PublishModel::Publishers => false,
            PublishModel::Subscribers => node.subscribed(&self.from),
            PublishModel::Open => domain_allowed(&node.config.publish_domains, &self.from),
        }
    }

    pub(crate) async fn publish(
        &self,
        op: &Element,
        payload: &Element,
    ) -> Result<Outcome, ModuleError> {
        let Some(name) = op.attr("node") else {
            return Ok(ps_error(Condition::BadRequest, Some("nodeid-required")));
        };
        let options = payload
            .get_child("publish-options", pns::PUBSUB)
            .and_then(Form::find);
        let node = match self.node(name).await {
            Some(n) => n,
            // XEP-0163 §3: the account's first publish creates the node ("auto-create"),
            // configured by the publish-options it carries.
            None if self.svc.pep && self.may_create() => {
                let mut config = self.default_config();
                if let Some(Err(_)) = options.as_ref().map(|f| config.apply_form(f)) {
                    return Ok(ps_error(Condition::Conflict, Some("precondition-not-met")));
                }
                match self.create_node(name, config).await? {
                    Some(n) => n,
                    None => match self.node(name).await {
                        Some(n) => n,
                        None => return Ok(Outcome::Error(Condition::ItemNotFound.into())),
                    },
                }
            }
            None => return Ok(Outcome::Error(Condition::ItemNotFound.into())),
        };
        if !self.may_publish(&node) {
            return Ok(Outcome::Error(Condition::Forbidden.into()));
        }
        // XEP-0060 §7.1.5: publish-options are preconditions on the node configuration.
        if let Some(form) = &options {
            for (var, values) in &form.fields {
                if var == "FORM_TYPE" {
                    continue;
                }
                if node.config.get(var).as_deref() != values.first().map(String::as_str) {
                    let ok_bool = matches!(
                        (
                            node.config.get(var).as_deref(),
                            values.first().map(String::as_str)
                        ),
                        (Some("1"), Some("true")) | (Some("0"), Some("false"))
                    );
                    if !ok_bool {
                        return Ok(ps_error(Condition::Conflict, Some("precondition-not-met")));
                    }
                }
            }
        }
        let items: Vec<&Element> = op.children().filter(|c| c.name() == "item").collect();
        if items.len() > 1 {
            return Ok(ps_error(Condition::BadRequest, Some("invalid-payload")));
        }
        let Some(item) = items.first() else {
            return Ok(ps_error(Condition::BadRequest, Some("item-required")));
        };
        let payloads: Vec<&Element> = item.children().collect();
        let item_payload = match payloads.as_slice() {
            [] => return Ok(ps_error(Condition::BadRequest, Some("payload-required"))),
            [one] => *one,
            _ => return Ok(ps_error(Condition::BadRequest, Some("invalid-payload"))),
        };
        let given = item.attr("id").filter(|i| !i.is_empty()).map(str::to_owned);
        let generated = given.is_none();
        let id = given.unwrap_or_else(random_id);
        if node.config.persist_items {
            let mut xml = Vec::new();
            item_payload.write_to(&mut xml, "");
            let rec = ItemRecord {
                id: id.clone(),
                publisher: self.from.to_string(),
                payload: String::from_utf8_lossy(&xml).into_owned(),
            };
            // Answered only once the item is durable.
            PubSubData::new(self.cx.storage.clone())
                .publish_item(&self.svc.jid, name, &rec, node.config.max_items)
                .await
                .map_err(internal)?;
        }
        publishes().increment(1);
        let mut ev_item = Element::new("item", pns::EVENT).with_attr("id", id.clone());
        if node.config.deliver_payloads {
            ev_item.push_child(item_payload.clone());
        }
        self.notify(
            &node,
            Element::new("items", pns::EVENT)
                .with_attr("node", name)
                .with_child(ev_item),
        )
        .await;
        // XEP-0060 §7.1.2: the generated id is returned; a given one needs no echo (the
        // seed's SpimeSeek publish is answered with an empty result).
        Ok(if generated {
            self.reply(
                pns::PUBSUB,
                Some(
                    Element::new("publish", pns::PUBSUB)
                        .with_attr("node", name)
                        .with_child(Element::new("item", pns::PUBSUB).with_attr("id", id)),
                ),
            )
        } else {
            self.reply(pns::PUBSUB, None)
        })
    }

    pub(crate) async fn retract(&self, op: &Element) -> Result<Outcome, ModuleError> {
        let Some(name) = op.attr("node") else {
            return Ok(ps_error(Condition::BadRequest, Some("nodeid-required")));
        };
        let Some(id) = op.get_child("item", pns::PUBSUB).and_then(|i| i.attr("id")) else {
            return Ok(ps_error(Condition::BadRequest, Some("item-required")));
        };
        let Some(node) = self.node(name).await else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        let store = PubSubData::new(self.cx.storage.clone());
        let existing = store
            .items(&self.svc.jid, name, Some(&[id.to_owned()]), None)
            .await
            .map_err(internal)?;
        let Some(item) = existing.first() else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        let own_item = Jid::new(&item.publisher).is_ok_and(|p| p.to_bare() == self.from.to_bare());
        let aff = node.affiliation(&self.bare());
        if !(own_item || matches!(aff, "owner" | "publisher")) {
            return Ok(Outcome::Error(Condition::Forbidden.into()));
        }
        store
            .retract_item(&self.svc.jid, name, id)
            .await
            .map_err(internal)?;
        let notify = matches!(op.attr("notify"), Some("true" | "1")) || node.config.notify_retract;
        if notify {
            self.notify(
                &node,
                Element::new("items", pns::EVENT)
                    .with_attr("node", name)
                    .with_child(Element::new("retract", pns::EVENT).with_attr("id", id)),
            )
            .await;
        }
        Ok(self.reply(pns::PUBSUB, None))
    }

    /// Whether the requester receives the presence of one of the node's owners: the
    /// `presence` access model (XEP-0060 §4.5), answered from the owners' rosters.
    pub(crate) async fn receives_owner_presence(&self, node: &Node) -> bool {
        let me = self.bare();
        for (owner, aff) in &node.affiliations {
            if aff == "owner" && self.cx.server.receives_presence(owner, &me).await {
                return true;
            }
        }
        false
    }

    /// Why the requester may not retrieve items (XEP-0060 §6.5.9), if it may not.
    pub(crate) async fn retrieve_denied(&self, node: &Node) -> Option<Outcome> {
        let aff = node.affiliation(&self.bare());
        if aff == "outcast" {
            return Some(Outcome::Error(Condition::Forbidden.into()));
        }
        if matches!(aff, "owner" | "publisher" | "member") {
            return None;
        }
        let allowed = match node.config.access_model {
            AccessModel::Open => true,
            AccessModel::Authorize => node.subscribed(&self.from),
            AccessModel::Whitelist => false,
            AccessModel::Presence => {
                return (!self.receives_owner_presence(node).await).then(|| {
                    ps_error(
                        Condition::NotAuthorized,
                        Some("presence-subscription-required"),
                    )
                });
            }
        };
        (!allowed).then(|| ps_error(Condition::NotAllowed, Some("closed-node")))
    }

    pub(crate) async fn items(&self, op: &Element) -> Result<Outcome, ModuleError> {
        let Some(name) = op.attr("node") else {
            return Ok(ps_error(Condition::BadRequest, Some("nodeid-required")));
        };
        let Some(node) = self.node(name).await else {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        };
        if let Some(denied) = self.retrieve_denied(&node).await {
            return Ok(denied);
        }
        let ids: Vec<String> = op
            .children()
            .filter(|c| c.name() == "item")
            .filter_map(|c| c.attr("id").map(str::to_owned))
            .collect();
        let max = match op.attr("max_items").map(str::parse::<u64>) {
            None => None,
            Some(Ok(m)) => Some(m),
            Some(Err(_)) => return Ok(Outcome::Error(Condition::BadRequest.into())),
        };
        let mut items = PubSubData::new(self.cx.storage.clone())
            .items(
                &self.svc.jid,
                name,
                (!ids.is_empty()).then_some(ids.as_slice()),
                max,
            )
            .await
            .map_err(internal)?;
        // Oldest first among those returned.
        items.reverse();
        let mut out = Element::new("items", pns::PUBSUB).with_attr("node", name);
        for it in items {
            let mut item = Element::new("item", pns::PUBSUB).with_attr("id", it.id);
            if let Ok(p) = Element::parse(&it.payload) {
                item.push_child(p);
            }
            out.push_child(item);
        }
        Ok(self.reply(pns::PUBSUB, Some(out)))
    }
}
