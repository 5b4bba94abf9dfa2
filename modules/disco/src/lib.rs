//! XEP-0030 Service Discovery for a virtual host.
//!
//! disco#info of the host lists the `server/im` identity and every feature the host's
//! modules declare; disco#items lists the services hosted under it. Nothing is configured
//! here: the answer is fed by what the other modules declare.

use std::sync::Arc;

use openspimed_module_api::{
    Condition, Context, Element, Module, ModuleError, ModuleFactory, Outcome, Route, async_trait,
    iq_result, ns, toml,
};

/// Registers the `disco` module.
pub struct Factory;

impl ModuleFactory for Factory {
    fn name(&self) -> &'static str {
        "disco"
    }
    fn build(&self, _host: &str, _options: &toml::Table) -> Result<Arc<dyn Module>, ModuleError> {
        Ok(Arc::new(Disco))
    }
}

/// The module instance (stateless: it asks the server on each request).
pub struct Disco;

#[async_trait]
impl Module for Disco {
    fn name(&self) -> &'static str {
        "disco"
    }
    fn routes(&self) -> Vec<Route> {
        vec![
            Route::ServerIq(ns::DISCO_INFO),
            Route::ServerIq(ns::DISCO_ITEMS),
        ]
    }
    fn features(&self) -> Vec<String> {
        vec![ns::DISCO_INFO.to_owned(), ns::DISCO_ITEMS.to_owned()]
    }
    async fn handle(&self, cx: &Context, iq: Element) -> Result<Outcome, ModuleError> {
        let Some(query) = iq.first_child() else {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        };
        if iq.attr("type") != Some("get") {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        }
        // Nodes are not served on the host itself (XEP-0030 §3.2: item-not-found).
        if query.attr("node").is_some() {
            return Ok(Outcome::Error(Condition::ItemNotFound.into()));
        }
        let ns = query.ns();
        let mut answer = Element::new("query", ns.to_owned());
        if ns == ns::DISCO_INFO {
            for id in cx.server.host_identities(&cx.host) {
                let mut el = Element::new("identity", ns::DISCO_INFO)
                    .with_attr("category", id.category)
                    .with_attr("type", id.kind);
                if let Some(name) = id.name {
                    el.set_attr("name", name);
                }
                answer.push_child(el);
            }
            let mut features = cx.server.host_features(&cx.host);
            features.sort();
            features.dedup();
            for f in features {
                answer.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
            }
        } else {
            for jid in cx.server.host_items(&cx.host) {
                answer.push_child(Element::new("item", ns::DISCO_ITEMS).with_attr("jid", jid));
            }
        }
        Ok(Outcome::Reply(iq_result(&iq).with_child(answer)))
    }
}
