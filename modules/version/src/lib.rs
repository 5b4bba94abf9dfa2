//! XEP-0092 Software Version: tells who asks the server's name and version.
//!
//! The operating system is left out unless `show_os = true` (`[modules.version]`), as Prosody
//! does, because it helps attackers more than users.

use std::sync::Arc;

use openspimed_module_api::{
    Condition, Context, Element, Module, ModuleError, ModuleFactory, Outcome, Route, async_trait,
    iq_result, ns, options, toml,
};
use serde::{Deserialize, Serialize};

/// Registers the `version` module.
pub struct Factory;

/// `[modules.version]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Disclose the operating system in `<os/>` (off: it helps attackers more than users).
    pub show_os: bool,
}

impl ModuleFactory for Factory {
    fn name(&self) -> &'static str {
        "version"
    }
    fn build(&self, _host: &str, options: &toml::Table) -> Result<Arc<dyn Module>, ModuleError> {
        let o: Options = options::parse("version", options)?;
        Ok(Arc::new(Version { show_os: o.show_os }))
    }
    fn option_keys(&self) -> Vec<String> {
        options::keys(&Options { show_os: true })
    }
}

/// The module instance.
pub struct Version {
    /// Whether to disclose the operating system in `<os/>`.
    show_os: bool,
}

#[async_trait]
impl Module for Version {
    fn name(&self) -> &'static str {
        "version"
    }
    fn routes(&self) -> Vec<Route> {
        vec![Route::ServerIq(ns::VERSION)]
    }
    fn features(&self) -> Vec<String> {
        vec![ns::VERSION.to_owned()]
    }
    async fn handle(&self, cx: &Context, iq: Element) -> Result<Outcome, ModuleError> {
        if iq.attr("type") != Some("get") {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        }
        let (name, version) = cx.server.software();
        let mut query = Element::new("query", ns::VERSION)
            .with_child(Element::new("name", ns::VERSION).with_text(name))
            .with_child(Element::new("version", ns::VERSION).with_text(version));
        if self.show_os {
            query.push_child(Element::new("os", ns::VERSION).with_text(std::env::consts::OS));
        }
        Ok(Outcome::Reply(iq_result(&iq).with_child(query)))
    }
}
