//! Service discovery (XEP-0030) of the service and its nodes.

use crate::store::PubSubData;
use crate::{FEATURES, Request, internal, pns};
use openspimed_module_api::form as forms;
use openspimed_module_api::{Condition, Element, ModuleError, Outcome, iq_result, ns};

impl Request<'_> {
    pub(crate) async fn disco_info(&self, query: &Element) -> Result<Outcome, ModuleError> {
        let mut q = Element::new("query", ns::DISCO_INFO);
        match query.attr("node") {
            None => {
                if self.svc.pep {
                    // XEP-0163 §6.1: an account with PEP is a registered account and a
                    // pubsub/pep service.
                    for (category, kind) in [("account", "registered"), ("pubsub", "pep")] {
                        q.push_child(
                            Element::new("identity", ns::DISCO_INFO)
                                .with_attr("category", category)
                                .with_attr("type", kind),
                        );
                    }
                } else {
                    q.push_child(
                        Element::new("identity", ns::DISCO_INFO)
                            .with_attr("category", "pubsub")
                            .with_attr("type", "service")
                            .with_attr("name", "openspimed PubSub"),
                    );
                }
                q.push_child(
                    Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO),
                );
                q.push_child(
                    Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_ITEMS),
                );
                q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", pns::PUBSUB));
                for f in FEATURES {
                    q.push_child(
                        Element::new("feature", ns::DISCO_INFO)
                            .with_attr("var", format!("{}#{f}", pns::PUBSUB)),
                    );
                }
                if self.svc.pep {
                    // What other modules serve at the account's bare JID (MAM, XEP-0313 §7).
                    for f in self.cx.server.bare_jid_features(self.host) {
                        q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
                    }
                }
            }
            Some(name) => {
                let Some(node) = self.node(name).await else {
                    return Ok(Outcome::Error(Condition::ItemNotFound.into()));
                };
                q.set_attr("node", name);
                q.push_child(
                    Element::new("identity", ns::DISCO_INFO)
                        .with_attr("category", "pubsub")
                        .with_attr("type", "leaf"),
                );
                q.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", pns::PUBSUB));
                let mut meta = forms::form("result", "http://jabber.org/protocol/pubsub#meta-data");
                meta.push_child(forms::field(
                    "pubsub#title",
                    "text-single",
                    &node.config.title,
                    &[],
                ));
                q.push_child(meta);
            }
        }
        Ok(Outcome::Reply(iq_result(self.stanza).with_child(q)))
    }

    pub(crate) async fn disco_items(&self, query: &Element) -> Result<Outcome, ModuleError> {
        let mut q = Element::new("query", ns::DISCO_ITEMS);
        match query.attr("node") {
            None => {
                for (n, node) in self.svc.snapshot().await {
                    // What an account publishes is its own: a PEP service lists only the
                    // nodes the requester may read.
                    if self.svc.pep && self.retrieve_denied(&node).await.is_some() {
                        continue;
                    }
                    let mut item = Element::new("item", ns::DISCO_ITEMS)
                        .with_attr("jid", self.svc.jid.clone())
                        .with_attr("node", n);
                    if !node.config.title.is_empty() {
                        item.set_attr("name", node.config.title.clone());
                    }
                    q.push_child(item);
                }
            }
            Some(name) => {
                let Some(node) = self.node(name).await else {
                    return Ok(Outcome::Error(Condition::ItemNotFound.into()));
                };
                if self.retrieve_denied(&node).await.is_some() {
                    return Ok(Outcome::Error(Condition::Forbidden.into()));
                }
                q.set_attr("node", name);
                let items = PubSubData::new(self.cx.storage.clone())
                    .items(&self.svc.jid, name, None, None)
                    .await
                    .map_err(internal)?;
                for it in items {
                    q.push_child(
                        Element::new("item", ns::DISCO_ITEMS)
                            .with_attr("jid", self.svc.jid.clone())
                            .with_attr("name", it.id),
                    );
                }
            }
        }
        Ok(Outcome::Reply(iq_result(self.stanza).with_child(q)))
    }
}
