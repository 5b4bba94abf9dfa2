//! An example module, written against `openspimed-module-api` alone (this crate depends on
//! nothing else of the server): it counts the messages with a body each account of its
//! host receives, in a store of its own, and tells an account its count.
//!
//! - The to-account hook ([`ToAccountHook`]) sees every message to a local account before
//!   delivery, counts it and lets it pass.
//! - Its key-value store ([`Context::open_store`]) keeps the counts, per account.
//! - An iq `get` of `<count xmlns='urn:openspimed:example:counter'/>` without `to` (or to
//!   one's own bare JID) answers `<count xmlns='…'>N</count>`.
//!
//! `[modules.counter]` has one option, `store`: the name of the store the counts go to.

use std::sync::Arc;

use openspimed_module_api::hooks::{AccountTarget, Flow, Hooks, Kinds, ToAccountHook};
use openspimed_module_api::{
    Condition, Context, Element, KvStore, Module, ModuleError, ModuleFactory, Outcome, Route,
    StorageFailure, async_trait, iq_result, jid, options, toml,
};

/// The payload namespace of the count query (this example's own).
pub const NS: &str = "urn:openspimed:example:counter";

/// The key the count of an account is kept under.
const KEY: &str = "messages";

/// The hook's priority: below every handler of the server (blocking runs at 100), so that a
/// message that is refused or dropped is not counted.
const PRIORITY: i32 = -100;

/// `[modules.counter]`.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// The name of the key-value store the counts are kept in.
    pub store: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            store: "counter".into(),
        }
    }
}

/// Registers the `counter` module.
pub struct Factory;

impl ModuleFactory for Factory {
    fn name(&self) -> &'static str {
        "counter"
    }
    fn build(&self, _host: &str, table: &toml::Table) -> Result<Arc<dyn Module>, ModuleError> {
        let options: Options = options::parse("counter", table)?;
        Ok(Arc::new(Counter { options }))
    }
    fn option_keys(&self) -> Vec<String> {
        options::keys(&Options::default())
    }
}

/// The module instance of one host.
pub struct Counter {
    /// Its configuration.
    options: Options,
}

#[async_trait]
impl Module for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }
    fn routes(&self) -> Vec<Route> {
        vec![Route::AccountIq(NS)]
    }
    fn features(&self) -> Vec<String> {
        vec![NS.to_owned()]
    }
    fn hooks(self: Arc<Self>, cx: &Context, hooks: &dyn Hooks) {
        let counts = cx.open_store(&self.options.store);
        hooks.on_to_account(PRIORITY, Kinds::MESSAGE, Arc::new(Count { counts }));
    }
    async fn handle(&self, cx: &Context, iq: Element) -> Result<Outcome, ModuleError> {
        if iq.attr("type") != Some("get") {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        }
        let bare = |a: Option<&str>| a.and_then(|j| jid::Jid::new(j).ok()).map(|j| j.to_bare());
        let (Some(from), to) = (bare(iq.attr("from")), bare(iq.attr("to"))) else {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        };
        // An account's count is its own business.
        if to.as_ref().is_some_and(|to| to != &from) {
            return Ok(Outcome::Error(Condition::Forbidden.into()));
        }
        let counts = cx.open_store(&self.options.store);
        let n = count(counts.as_ref(), &from.to_string())
            .await
            .map_err(|e| ModuleError::Internal(e.to_string()))?;
        let mut reply = iq_result(&iq);
        reply.push_child(Element::new("count", NS).with_text(n.to_string()));
        Ok(Outcome::Reply(reply))
    }
}

/// The count kept for `owner`.
async fn count(store: &dyn KvStore, owner: &str) -> Result<u64, StorageFailure> {
    Ok(store
        .get(owner, KEY)
        .await?
        .and_then(|v| String::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(0))
}

/// The hook: one more for the account a message with a body is for.
struct Count {
    /// The store the counts are in.
    counts: Arc<dyn KvStore>,
}

#[async_trait]
impl ToAccountHook for Count {
    async fn to_account(&self, to: AccountTarget<'_>, stanza: Element) -> Flow {
        let counted =
            stanza.attr("type") != Some("error") && stanza.children().any(|c| c.name() == "body");
        if counted {
            // Messages to one account may arrive at once: compare and swap until this
            // one's increment lands.
            loop {
                let now = match self.counts.get(to.bare, KEY).await {
                    Ok(v) => v,
                    Err(_) => break,
                };
                let n: u64 = now
                    .as_deref()
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                    .unwrap_or(0);
                let next = (n + 1).to_string();
                match self
                    .counts
                    .swap(to.bare, KEY, now.as_deref(), Some(next.as_bytes()))
                    .await
                {
                    Ok(false) => continue,
                    // A store that fails loses a count, never the message.
                    Ok(true) | Err(_) => break,
                }
            }
        }
        Flow::Pass(stanza)
    }
}
