//! Virtual hosts and the module instances mounted on them, built from `[hosts]` and
//! `[modules]` at start and rebuilt on reload.
//!
//! A reload keeps every module instance whose host, name and options did not change (so a
//! module never runs `start` twice for the same configuration) and replaces the others the
//! way Prosody reloads a module: the new routing table is swapped in with the new instances
//! gated shut, each replaced instance finishes the calls it is in and is closed, then each
//! new instance runs `start` (reading the state its predecessor left in storage) and opens.
//! Stanzas that reach a closed instance are routed again and find its successor, so nothing
//! a client sent during the switch is lost.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use openspimed_config::{Config, HostConfig};
use openspimed_module_api::{
    Context, Module, ModuleError, ModuleFactory, ModuleStorage, Route, ServerHandle, toml,
};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::core::hooks::{HookLists, HookTable};

/// Permits of an open gate: far more calls than can be in one module at once.
const GATE_PERMITS: u32 = u32::MAX >> 4;

/// One module instance as the router calls it.
pub struct Mounted {
    /// The instance.
    pub module: Arc<dyn Module>,
    /// The `[modules.NAME]` table it was built from, to tell on reload whether it stays.
    options: toml::Table,
    /// Each call holds a permit while it is in the module. Shut (no permits) until `start`
    /// has run; on replacement every permit is taken back (the calls in progress finish)
    /// and the gate closes, which sends waiting callers back to the routing table.
    gate: Semaphore,
    /// The hook handlers the instance registered when it was built: merged into its host's
    /// lists, and gone with the instance.
    hooks: HookLists,
}

impl Mounted {
    /// A new instance with the hook handlers it registered, shut until [`Mounted::open`].
    fn new(module: Arc<dyn Module>, options: toml::Table, hooks: HookLists) -> Arc<Mounted> {
        Arc::new(Mounted {
            module,
            options,
            gate: Semaphore::new(0),
            hooks,
        })
    }

    /// A freshly built instance for the host of `cx`: it registers its hook handlers.
    fn built(module: Arc<dyn Module>, options: toml::Table, cx: &Context) -> Arc<Mounted> {
        let table = HookTable::default();
        module.clone().hooks(cx, &table);
        Mounted::new(module, options, table.lists())
    }

    /// Waits until calls may enter; `None` when the instance has been replaced or removed
    /// (the caller routes the stanza again).
    pub async fn enter(&self) -> Option<SemaphorePermit<'_>> {
        self.gate.acquire().await.ok()
    }

    /// Lets calls in (after `start`).
    fn open(&self) {
        self.gate.add_permits(GATE_PERMITS as usize);
    }

    /// Closes an instance that never opened (its `start` failed): no call is inside, and
    /// the callers waiting at the gate go back to the routing table, which must no longer
    /// name it. (`retire` would wait for permits that were never given.)
    fn turn_away(&self) {
        self.gate.close();
    }

    /// Waits for the calls in progress, then closes for good. Only for opened instances
    /// already out of the routing table, so that callers turned away find something else.
    async fn retire(&self) {
        if let Ok(all) = self.gate.acquire_many(GATE_PERMITS).await {
            all.forget();
        }
        self.gate.close();
    }
}

/// A virtual host and its modules.
pub struct Host {
    /// The domain.
    pub domain: String,
    /// Enabled modules, in configuration order.
    pub modules: Vec<Arc<Mounted>>,
    /// Payload namespace → module, for iqs to the host itself.
    pub iq_handlers: HashMap<&'static str, Arc<Mounted>>,
    /// Payload namespace → module, for iqs to an account's bare JID (PEP).
    pub account_iq: HashMap<&'static str, Arc<Mounted>>,
    /// Modules that see the accounts' initial presences (PEP's last items).
    pub presence_watchers: Vec<Arc<Mounted>>,
    /// SASL mechanisms offered on this host, in order.
    pub mechanisms: Vec<String>,
    /// Whether new accounts may register in-band (XEP-0077).
    pub allow_registration: bool,
    /// The context handed to this host's modules.
    pub cx: Context,
    /// The hook handlers fired for this host's accounts and sessions: the server's own and
    /// its modules', by priority.
    pub hooks: HookLists,
    /// The server's own handlers alone, to merge again when the host's modules change.
    base_hooks: Arc<HookLists>,
}

impl Host {
    /// A host with these modules; the iq handlers, presence watchers and hook lists are
    /// derived from the modules (the hooks merged onto the server's own, `base_hooks`).
    pub fn new(
        domain: String,
        modules: Vec<Arc<Mounted>>,
        mechanisms: Vec<String>,
        allow_registration: bool,
        cx: Context,
        base_hooks: Arc<HookLists>,
    ) -> Host {
        let hooks = modules
            .iter()
            .fold(HookLists::clone(&base_hooks), |h, m| h.merged(&m.hooks));
        Host {
            domain,
            iq_handlers: iq_handlers(&modules, false),
            account_iq: iq_handlers(&modules, true),
            presence_watchers: presence_watchers(&modules),
            modules,
            mechanisms,
            allow_registration,
            cx,
            hooks,
            base_hooks,
        }
    }
}

/// A module that owns an address, with the host it belongs to.
pub type ModuleRoute = (Arc<Host>, Arc<Mounted>);

/// Everything the router looks up per stanza, replaced as a whole on reload.
#[derive(Default)]
pub struct Tables {
    /// Virtual hosts by domain.
    pub hosts: HashMap<String, Arc<Host>>,
    /// Exact-JID module routes (`services@example.org/cert`).
    pub jid_routes: HashMap<String, ModuleRoute>,
    /// Whole-domain module routes (`pubsub.example.org`).
    pub domain_routes: HashMap<String, ModuleRoute>,
    /// Host used for streams whose header names none: the first configured domain.
    pub default_host: String,
}

impl Tables {
    /// Derives the routing tables from the hosts (the first is the default host).
    pub fn new(hosts: Vec<Host>) -> Tables {
        let mut t = Tables {
            default_host: hosts.first().map(|h| h.domain.clone()).unwrap_or_default(),
            ..Tables::default()
        };
        for host in hosts {
            let host = Arc::new(host);
            for m in &host.modules {
                for r in m.module.routes() {
                    match r {
                        Route::Jid(j) => {
                            t.jid_routes.insert(j, (host.clone(), m.clone()));
                        }
                        Route::Domain(d) => {
                            t.domain_routes
                                .insert(d.to_ascii_lowercase(), (host.clone(), m.clone()));
                        }
                        Route::ServerIq(_) | Route::AccountIq(_) | Route::InitialPresence => {}
                    }
                }
            }
            t.hosts.insert(host.domain.clone(), host);
        }
        t
    }

    /// Every mounted instance, once each.
    fn mounted(&self) -> Vec<Arc<Mounted>> {
        let mut out: Vec<Arc<Mounted>> = Vec::new();
        for h in self.hosts.values() {
            for m in &h.modules {
                if !out.iter().any(|o| Arc::ptr_eq(o, m)) {
                    out.push(m.clone());
                }
            }
        }
        out
    }

    /// The same tables with `old` swapped for `new` (`None`: dropped) on `domain`.
    fn replacing(&self, domain: &str, old: &Arc<Mounted>, new: Option<&Arc<Mounted>>) -> Tables {
        let hosts = self
            .hosts
            .values()
            .map(|h| {
                let modules = h
                    .modules
                    .iter()
                    .filter_map(|m| {
                        if h.domain == domain && Arc::ptr_eq(m, old) {
                            new.cloned()
                        } else {
                            Some(m.clone())
                        }
                    })
                    .collect();
                Host::new(
                    h.domain.clone(),
                    modules,
                    h.mechanisms.clone(),
                    h.allow_registration,
                    h.cx.clone(),
                    h.base_hooks.clone(),
                )
            })
            .collect();
        Tables::new(ordered(hosts, &self.default_host))
    }
}

/// Puts the default host first again.
fn ordered(mut hosts: Vec<Host>, default: &str) -> Vec<Host> {
    hosts.sort_by_key(|h| h.domain != default);
    hosts
}

/// Payload namespace → module for iqs to the host (`account: false`) or to an account's
/// bare JID (`account: true`).
fn iq_handlers(modules: &[Arc<Mounted>], account: bool) -> HashMap<&'static str, Arc<Mounted>> {
    let mut out = HashMap::new();
    for m in modules {
        for r in m.module.routes() {
            match r {
                Route::ServerIq(ns) if !account => {
                    out.insert(ns, m.clone());
                }
                Route::AccountIq(ns) if account => {
                    out.insert(ns, m.clone());
                }
                _ => {}
            }
        }
    }
    out
}

/// The modules that asked for the accounts' initial presences.
fn presence_watchers(modules: &[Arc<Mounted>]) -> Vec<Arc<Mounted>> {
    modules
        .iter()
        .filter(|m| m.module.routes().contains(&Route::InitialPresence))
        .cloned()
        .collect()
}

/// Hosts built from a configuration, reusing what can stay of `previous`.
pub struct Built {
    /// The new hosts, default first.
    pub hosts: Vec<Host>,
    /// Instances built now: they need `start` (with their host's context) before opening.
    pub fresh: Vec<(Arc<Mounted>, Context)>,
}

/// What building hosts needs besides their configuration: the factories, what the
/// module contexts hold, and the server's own hook handlers.
pub struct Parts<'a> {
    /// The compiled-in modules.
    pub factories: &'a [Box<dyn ModuleFactory>],
    /// The server as modules reach it.
    pub server: &'a Arc<dyn ServerHandle>,
    /// The storage modules reach.
    pub storage: &'a Arc<dyn ModuleStorage>,
    /// The server's own hook handlers (IM, registration), fired on every host.
    pub base_hooks: &'a Arc<HookLists>,
}

/// Builds the hosts of `hosts`/`modules`. Instances of `previous` with the same host,
/// name and options are kept as they are.
pub fn build(
    hosts: &BTreeMap<String, HostConfig>,
    modules: &BTreeMap<String, toml::Table>,
    parts: &Parts<'_>,
    previous: &Tables,
) -> Result<Built, ModuleError> {
    let Parts {
        factories,
        server,
        storage,
        base_hooks,
    } = parts;
    let empty = toml::Table::new();
    let mut built = Built {
        hosts: Vec::new(),
        fresh: Vec::new(),
    };
    for (domain, hc) in hosts {
        let cx = match previous.hosts.get(domain) {
            Some(h) => h.cx.clone(),
            None => Context {
                host: Arc::from(domain.as_str()),
                server: Arc::clone(server),
                storage: Arc::clone(storage),
            },
        };
        let mut mounted = Vec::new();
        for name in hc.enabled_modules() {
            let Some(f) = factories.iter().find(|f| f.name() == name) else {
                continue;
            };
            let options = modules.get(name).unwrap_or(&empty);
            let kept = previous.hosts.get(domain).and_then(|h| {
                h.modules
                    .iter()
                    .find(|m| m.module.name() == f.name() && &m.options == options)
            });
            if let Some(m) = kept {
                mounted.push(m.clone());
                continue;
            }
            let m = Mounted::built(f.build(domain, options)?, options.clone(), &cx);
            built.fresh.push((m.clone(), cx.clone()));
            mounted.push(m);
        }
        built.hosts.push(Host::new(
            domain.clone(),
            mounted,
            hc.sasl_mechanisms.clone(),
            hc.allow_registration,
            cx,
            Arc::clone(base_hooks),
        ));
    }
    Ok(built)
}

/// Everything building the modules of `hosts` from `modules` would refuse, as [`build`]
/// meets it at start: each module of each host is built by its factory with its options
/// (one line per problem, the same problem of several hosts once). `[modules.NAME]` tables
/// of modules that do not exist are problems too; those of modules no host enables are
/// checked against the first host, so a mistake shows before the day they are enabled.
pub fn problems(
    hosts: &BTreeMap<String, HostConfig>,
    modules: &BTreeMap<String, toml::Table>,
    factories: &[Box<dyn ModuleFactory>],
) -> Vec<String> {
    let empty = toml::Table::new();
    let mut out: Vec<String> = Vec::new();
    let mut push = |line: String| {
        if !out.contains(&line) {
            out.push(line);
        }
    };
    for (domain, hc) in hosts {
        for name in hc.enabled_modules() {
            if let Some(f) = factories.iter().find(|f| f.name() == name)
                && let Err(e) = f.build(domain, modules.get(name).unwrap_or(&empty))
            {
                push(e.to_string());
            }
        }
    }
    let first_host = hosts
        .keys()
        .next()
        .map(String::as_str)
        .unwrap_or("localhost");
    for (name, options) in modules {
        match factories.iter().find(|f| f.name() == name) {
            None => push(format!(
                "modules.{name}: no such module (available: {})",
                factories
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(f)
                if !hosts
                    .values()
                    .any(|h| h.enabled_modules().contains(&name.as_str())) =>
            {
                if let Err(e) = f.build(first_host, options) {
                    push(format!("{e} (the module is enabled on no host)"));
                }
            }
            Some(_) => {}
        }
    }
    out
}

/// What [`switch`] did, for the reload report.
#[derive(Debug, Default)]
pub struct Switched {
    /// Instances started, as `module on host`.
    pub started: Vec<String>,
    /// Instances retired, as `module on host`.
    pub retired: Vec<String>,
    /// Instances whose `start` failed; the previous instance (if any) was put back.
    pub failed: Vec<String>,
}

/// Where the router keeps its tables; [`switch`] replaces them.
pub trait TableSlot: Sync {
    /// The tables in force.
    fn tables(&self) -> Arc<Tables>;
    /// Puts new tables in force.
    fn set_tables(&self, tables: Tables);
}

/// Puts `built` in force on `slot`: swaps the tables, retires the instances no longer in
/// them, then starts and opens the new ones. An instance whose `start` fails is taken out
/// again and the instance it replaced, if any, is put back in its place.
pub async fn switch(slot: &dyn TableSlot, built: Built) -> Switched {
    let before = slot.tables();
    let previous_of = |domain: &str, m: &Arc<Mounted>| {
        before.hosts.get(domain).and_then(|h| {
            h.modules
                .iter()
                .find(|o| o.module.name() == m.module.name())
                .cloned()
        })
    };
    let fresh = built.fresh;
    slot.set_tables(Tables::new(built.hosts));
    let now = slot.tables().mounted();
    let mut report = Switched::default();
    for (domain, h) in &before.hosts {
        for m in &h.modules {
            if !now.iter().any(|n| Arc::ptr_eq(n, m)) {
                m.retire().await;
                report
                    .retired
                    .push(format!("{} on {domain}", m.module.name()));
            }
        }
    }
    for (m, cx, started) in start_all(fresh).await {
        let what = format!("{} on {}", m.module.name(), cx.host);
        match started {
            Ok(()) => report.started.push(what),
            Err(e) => {
                tracing::warn!(error = %e, module = %what, "module did not start");
                let back = previous_of(&cx.host, &m).map(|p| {
                    // The predecessor's gate is closed: it goes back under a new one.
                    let again = Mounted::new(p.module.clone(), p.options.clone(), p.hooks.clone());
                    again.open();
                    again
                });
                slot.set_tables(slot.tables().replacing(&cx.host, &m, back.as_ref()));
                m.turn_away();
                report.failed.push(format!("{what}: {e}"));
            }
        }
    }
    report
}

/// Builds and starts the hosts of a configuration on an empty slot (server start): any
/// module that fails to start fails the start.
pub async fn install(
    slot: &dyn TableSlot,
    config: &Config,
    parts: &Parts<'_>,
) -> Result<(), ModuleError> {
    let built = build(&config.hosts, &config.modules, parts, &Tables::default())?;
    slot.set_tables(Tables::new(built.hosts));
    for (_, _, started) in start_all(built.fresh).await {
        started?;
    }
    Ok(())
}

/// Runs every new instance's `start` at once and opens each that succeeds. At once,
/// because one module's start may ask another (a ScopeNode subscribes to PubSub and
/// registers its key with the certification service) whose gate opens only when its own
/// start is done.
async fn start_all(
    fresh: Vec<(Arc<Mounted>, Context)>,
) -> Vec<(Arc<Mounted>, Context, Result<(), ModuleError>)> {
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (m, cx)) in fresh.iter().enumerate() {
        let (m, cx) = (m.clone(), cx.clone());
        tasks.spawn(async move {
            let started = m.module.start(&cx).await;
            if started.is_ok() {
                m.open();
            }
            (i, started)
        });
    }
    let mut results: Vec<Option<Result<(), ModuleError>>> = fresh.iter().map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((i, started)) => results[i] = Some(started),
            Err(e) => tracing::error!(error = %e, "a module's start panicked"),
        }
    }
    fresh
        .into_iter()
        .zip(results)
        .map(|((m, cx), r)| {
            let r = r.unwrap_or_else(|| Err(ModuleError::Internal("start panicked".into())));
            (m, cx, r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use openspimed_module_api::{Element, Outcome};

    /// A module named `quiet` that handles nothing; `Quiet(true)` refuses to start.
    struct Quiet(bool);

    #[async_trait::async_trait]
    impl Module for Quiet {
        fn name(&self) -> &'static str {
            "quiet"
        }
        fn routes(&self) -> Vec<Route> {
            Vec::new()
        }
        async fn handle(&self, _cx: &Context, _s: Element) -> Result<Outcome, ModuleError> {
            Ok(Outcome::Handled)
        }
        async fn start(&self, _cx: &Context) -> Result<(), ModuleError> {
            if self.0 {
                return Err(ModuleError::Internal("refuses to start".into()));
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn gate_holds_calls_until_start_and_drains_before_closing() {
        let m = Mounted::new(
            Arc::new(Quiet(false)),
            toml::Table::new(),
            HookLists::default(),
        );
        // Shut until opened: a caller waits.
        let waiting = waiter(&m);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        m.open();
        assert!(waiting.await.unwrap());

        // A call in progress holds retirement back until it finishes.
        let inside = m.enter().await.unwrap();
        let retiring = {
            let m = m.clone();
            tokio::spawn(async move { m.retire().await })
        };
        tokio::task::yield_now().await;
        assert!(!retiring.is_finished());
        // Callers arriving now queue behind the retirement and are turned away.
        let late = waiter(&m);
        tokio::task::yield_now().await;
        drop(inside);
        retiring.await.unwrap();
        assert!(!late.await.unwrap());
        assert!(m.enter().await.is_none());
    }

    fn host(cx: &Context, m: &Arc<Mounted>) -> Host {
        Host::new(
            "example.test".into(),
            vec![m.clone()],
            Vec::new(),
            false,
            cx.clone(),
            Arc::default(),
        )
    }

    /// A caller waiting at `m`'s gate: `true` once let in, `false` when turned away.
    fn waiter(m: &Arc<Mounted>) -> tokio::task::JoinHandle<bool> {
        let m = m.clone();
        tokio::spawn(async move { m.enter().await.is_some() })
    }

    #[tokio::test]
    async fn a_replacement_that_fails_to_start_gives_way_to_its_predecessor() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            crate::storage::sqlite::SqliteStore::open(&dir.path().join("s.sqlite")).unwrap(),
        );
        let router = crate::core::router::Router::new(
            store.clone(),
            crate::core::router::AccountSettings {
                scram_iterations: 4096,
                registrations_per_ip_per_hour: 0,
            },
        );
        let storage: Arc<dyn ModuleStorage> = store;
        let cx = Context {
            host: Arc::from("example.test"),
            server: router.handle(),
            storage,
        };
        let first = Mounted::new(
            Arc::new(Quiet(false)),
            toml::Table::new(),
            HookLists::default(),
        );
        first.open();
        router.set_tables(Tables::new(vec![host(&cx, &first)]));

        let broken = Mounted::new(
            Arc::new(Quiet(true)),
            toml::Table::new(),
            HookLists::default(),
        );
        let built = Built {
            hosts: vec![host(&cx, &broken)],
            fresh: vec![(broken.clone(), cx.clone())],
        };
        let report = switch(router.as_ref(), built).await;
        assert_eq!(report.failed.len(), 1, "{report:?}");
        assert!(report.started.is_empty(), "{report:?}");
        // The predecessor's module serves again, under an open gate; the broken one is shut.
        let tables = router.tables();
        let now = &tables.hosts["example.test"].modules[0];
        assert!(Arc::ptr_eq(&now.module, &first.module));
        assert!(now.enter().await.is_some());
        assert!(broken.enter().await.is_none());
    }

    #[tokio::test]
    async fn an_instance_that_never_opened_turns_its_waiting_callers_away() {
        let m = Mounted::new(
            Arc::new(Quiet(false)),
            toml::Table::new(),
            HookLists::default(),
        );
        let waiting = waiter(&m);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        m.turn_away();
        assert!(!waiting.await.unwrap());
    }
}
