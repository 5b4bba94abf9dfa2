//! XEP-0313 Message Archive Management for the host's accounts, with XEP-0359 stanza ids:
//! every one-to-one message an account sends or receives is archived once, under the
//! account, and carries `<stanza-id by='account'/>`; the account's sessions query the
//! archive with XEP-0059 paging and set what is archived. Old messages expire
//! (`expires_after`); an account's archive goes with the account.
//!
//! Everything is a hook handler ([`hooks`]); the module routes nothing itself.

pub mod archivable;
pub mod hooks;
pub mod prefs;
pub mod query;
pub mod retention;
pub mod store;

use std::sync::{Arc, OnceLock};

use openspimed_module_api::{
    Condition, Context, Element, Hooks, Module, ModuleError, ModuleFactory, Outcome, Route,
    async_trait, options, toml,
};
use serde::{Deserialize, Serialize};

/// The name operators enable it under.
pub const NAME: &str = "mam";
/// XEP-0313's namespace.
pub const NS: &str = "urn:xmpp:mam:2";
/// XEP-0313 §7: the query fields `before-id`, `after-id` and `ids` are understood.
pub const NS_EXTENDED: &str = "urn:xmpp:mam:2#extended";

/// `[modules.mam]`, named and defaulted as Prosody's `mod_mam` options are.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// How long messages are kept: `"never"` (kept until the account goes), or a number
    /// with `d`, `w`, `m`, `y` (days, weeks, months, years) or none (seconds): Prosody's
    /// `archive_expires_after`, with its default of one week.
    pub expires_after: String,
    /// What is archived for an account that set no preferences: `always`, `roster` or
    /// `never` (Prosody's `default_archive_policy`, `true` = always).
    pub default: prefs::Default,
    /// The most results one query page holds, whatever a client asks (Prosody's
    /// `max_archive_query_results`).
    pub max_page: u64,
    /// The page size when a client asks none (Prosody's 20).
    pub default_page: u64,
    /// Answers say how many messages the query matches in all (XEP-0059 `<count/>`,
    /// Prosody's `mam_include_total`) when they are at most this many; counting more
    /// would cost a scan of them all on every page, so a larger set goes without. 0: no
    /// count.
    pub count_up_to: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            expires_after: "1w".into(),
            default: prefs::Default::Always,
            max_page: store::Sizes::default().max_page,
            default_page: store::Sizes::default().default_page,
            count_up_to: store::Sizes::default().count_up_to,
        }
    }
}

/// Registers the `mam` module.
pub struct Factory;

impl ModuleFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }
    fn build(&self, _host: &str, table: &toml::Table) -> Result<Arc<dyn Module>, ModuleError> {
        let options: Options = options::parse(NAME, table)?;
        let expiry =
            retention::parse(&options.expires_after).map_err(|reason| ModuleError::Config {
                module: NAME,
                key: "expires_after".into(),
                reason,
            })?;
        if options.max_page == 0 {
            return Err(ModuleError::Config {
                module: NAME,
                key: "max_page".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(Arc::new(MamModule {
            options,
            expiry,
            state: OnceLock::new(),
        }))
    }
    fn option_keys(&self) -> Vec<String> {
        options::keys(&Options::default())
    }
}

/// The module instance of one host.
pub struct MamModule {
    /// Its configuration.
    options: Options,
    /// `expires_after`, read: `None` keeps messages.
    expiry: Option<std::time::Duration>,
    /// What the handlers share, made when they are installed.
    state: OnceLock<Arc<hooks::Mam>>,
}

#[async_trait]
impl Module for MamModule {
    fn name(&self) -> &'static str {
        NAME
    }
    fn routes(&self) -> Vec<Route> {
        Vec::new()
    }
    fn hooks(self: Arc<Self>, cx: &Context, hooks: &dyn Hooks) {
        let archive = store::MessageArchive::new(
            cx.open_archive(store::ARCHIVE),
            cx.open_store(store::PREFS),
            self.options.default,
        );
        let mam = Arc::new(hooks::Mam {
            server: cx.server.clone(),
            archive,
            options: self.options.clone(),
        });
        let _ = self.state.set(mam.clone());
        hooks::install(mam, hooks);
    }
    async fn start(&self, _cx: &Context) -> Result<(), ModuleError> {
        if let (Some(expiry), Some(mam)) = (self.expiry, self.state.get()) {
            retention::spawn(Arc::downgrade(mam), expiry);
        }
        Ok(())
    }
    async fn handle(&self, _cx: &Context, _stanza: Element) -> Result<Outcome, ModuleError> {
        // No routes: everything comes through the hooks.
        Ok(Outcome::Error(Condition::ServiceUnavailable.into()))
    }
}
