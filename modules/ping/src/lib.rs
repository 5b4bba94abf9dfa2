//! XEP-0199 XMPP Ping: the server answers `<ping xmlns='urn:xmpp:ping'/>` with an empty result.
//!
//! This is the template every module copies: a factory, a module that declares its routes
//! and features, and a handler that stays a few lines long.

use std::sync::Arc;

use openspimed_module_api::{
    Context, Element, Module, ModuleError, ModuleFactory, Outcome, Route, async_trait, iq_result,
    ns, toml,
};

/// Registers the `ping` module.
pub struct Factory;

impl ModuleFactory for Factory {
    fn name(&self) -> &'static str {
        "ping"
    }
    fn build(&self, _host: &str, _options: &toml::Table) -> Result<Arc<dyn Module>, ModuleError> {
        Ok(Arc::new(Ping))
    }
}

/// The module instance (stateless).
pub struct Ping;

#[async_trait]
impl Module for Ping {
    fn name(&self) -> &'static str {
        "ping"
    }
    fn routes(&self) -> Vec<Route> {
        vec![Route::ServerIq(ns::PING)]
    }
    fn features(&self) -> Vec<String> {
        vec![ns::PING.to_owned()]
    }
    async fn handle(&self, _cx: &Context, iq: Element) -> Result<Outcome, ModuleError> {
        // XEP-0199 §4: only `get` is defined; a `set` is not understood.
        Ok(match iq.attr("type") {
            Some("get") => Outcome::Reply(iq_result(&iq)),
            _ => Outcome::Error(openspimed_module_api::Condition::BadRequest.into()),
        })
    }
}
