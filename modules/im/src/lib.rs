//! IM as a module: the RFC 6121 roster (§2), presence subscriptions with the Appendix A
//! state machine (§3), presence broadcast, probes and directed presence (§4), offline
//! messages (XEP-0160), blocking (XEP-0191), vCards (XEP-0054) and in-band registration
//! (XEP-0077), written against the
//! module API alone. Everything is a hook handler ([`hooks`]): the server routes and
//! delivers, this crate decides what a roster, a subscription or a block means. A host
//! without it is a bare RFC 6120 router.
//!
//! Its data is in stores of its own ([`store`]), per host, under each account's bare JID.
//! `[modules.im]` sets the sizes that keep one account from exhausting them.

pub mod blocking;
pub mod hooks;
pub mod offline;
pub mod presence;
pub mod register;
pub mod roster;
pub mod store;
pub mod subscription;
pub mod vcard;

use std::sync::Arc;

use dashmap::DashMap;
use openspimed_module_api::{
    Condition, Context, Element, ErrorType, Hooks, Module, ModuleError, ModuleFactory, Outcome,
    Route, StanzaError, async_trait, options, toml,
};
use serde::{Deserialize, Serialize};

use store::ImData;

/// The name operators enable it under.
pub const NAME: &str = "im";

/// `[modules.im]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// Offline messages kept per account (XEP-0160); more bounce with
    /// `resource-constraint`.
    pub offline_messages: usize,
    /// Roster items per account; more are refused with `not-allowed`.
    pub roster_items: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            offline_messages: 1000,
            roster_items: 1000,
        }
    }
}

/// What IM's handlers share.
pub struct Im {
    /// IM's stores.
    pub data: ImData,
    /// Blocklists (XEP-0191) of accounts stanzas were routed to, loaded on first use and
    /// replaced when changed: checked for every stanza, so kept out of the store's path.
    pub blocklists: DashMap<String, Arc<Vec<String>>>,
    /// The sizes of `[modules.im]`.
    pub limits: Options,
}

impl Im {
    /// IM on the stores of `storage`, with `limits`.
    pub fn new(storage: Arc<dyn openspimed_module_api::ModuleStorage>, limits: Options) -> Arc<Im> {
        Arc::new(Im {
            data: ImData::new(storage),
            blocklists: DashMap::new(),
            limits,
        })
    }
}

/// Registers the `im` module.
pub struct Factory;

impl ModuleFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }
    fn build(&self, _host: &str, table: &toml::Table) -> Result<Arc<dyn Module>, ModuleError> {
        let options: Options = options::parse(NAME, table)?;
        Ok(Arc::new(ImModule { options }))
    }
    fn option_keys(&self) -> Vec<String> {
        options::keys(&Options::default())
    }
}

/// The module instance of one host.
pub struct ImModule {
    /// Its configuration.
    options: Options,
}

#[async_trait]
impl Module for ImModule {
    fn name(&self) -> &'static str {
        NAME
    }
    fn routes(&self) -> Vec<Route> {
        Vec::new()
    }
    fn features(&self) -> Vec<String> {
        vec![
            blocking::NS.to_owned(),
            vcard::NS.to_owned(),
            // XEP-0160: offline messages are stored.
            "msgoffline".to_owned(),
        ]
    }
    fn hooks(self: Arc<Self>, cx: &Context, hooks: &dyn Hooks) {
        let im = Im::new(cx.storage.clone(), self.options);
        hooks::install(cx.server.clone(), im, hooks);
        register::install(cx.server.clone(), hooks);
    }
    async fn handle(&self, _cx: &Context, _stanza: Element) -> Result<Outcome, ModuleError> {
        // No routes: everything comes through the hooks.
        Ok(Outcome::Error(Condition::ServiceUnavailable.into()))
    }
}

/// What the sender of a stanza learns when IM's storage fails: to try again later; the
/// details go to the log only.
pub(crate) fn storage_failure(context: &str, err: &dyn std::fmt::Display) -> StanzaError {
    tracing::error!(%err, "storage failure while {context}");
    StanzaError::new(Condition::InternalServerError).with_type(ErrorType::Wait)
}
