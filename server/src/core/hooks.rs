//! The hook lists the router fires ([`openspimed_module_api::hooks`]): the server's own
//! handlers, registered once at start, merged with those of each host's module instances
//! into one [`HookLists`] per host, which lives in the routing tables and is replaced with
//! them on reload.

use std::sync::{Arc, Mutex};

use openspimed_module_api::{
    AccountHook, AccountTarget, ClientSession, Element, Flow, FromClientHook, Hooks, Kinds,
    PreAuthHook, PrivacyHook, RosterHook, SessionHook, StreamFeaturesHook, ToAccountHook,
    ToOfflineHook, ToSessionHook, Unauthenticated,
};

/// `(priority, kinds wanted, handler)`.
type Entry<H> = (i32, Kinds, Arc<H>);

/// Adds `(priority, kinds, hook)` to a list kept highest priority first; equal priorities
/// keep the order they were added in.
fn insert<H: ?Sized>(list: &mut Vec<Entry<H>>, priority: i32, kinds: Kinds, hook: Arc<H>) {
    let at = list.partition_point(|(p, _, _)| *p >= priority);
    list.insert(at, (priority, kinds, hook));
}

/// Adds every entry of `more` to `list`, after the entries of equal priority already there.
fn merge<H: ?Sized>(list: &mut Vec<Entry<H>>, more: &[Entry<H>]) {
    for (p, k, h) in more {
        insert(list, *p, *k, h.clone());
    }
}

/// Every point's handlers, highest priority first. Fixed once built: the router reads them
/// on every stanza from the host it already looked up, without a lock or a reference count
/// of their own. (With a read lock and an `Arc` clone per firing, the shared counters they
/// write cost 5–7% of message routing on two cores, measured side by side with
/// `openspimed-bench messages`.)
#[derive(Clone, Default)]
pub struct HookLists {
    /// [`FromClientHook`]s.
    from_client: Vec<Entry<dyn FromClientHook>>,
    /// [`PreAuthHook`]s, in the order added.
    pre_auth: Vec<Entry<dyn PreAuthHook>>,
    /// [`SessionHook`]s, in the order added.
    session: Vec<Entry<dyn SessionHook>>,
    /// [`ToAccountHook`]s.
    to_account: Vec<Entry<dyn ToAccountHook>>,
    /// [`ToOfflineHook`]s.
    to_offline: Vec<Entry<dyn ToOfflineHook>>,
    /// [`PrivacyHook`]s (no order: any one that blocks decides).
    privacy: Vec<Entry<dyn PrivacyHook>>,
    /// [`RosterHook`]s (the first answers).
    roster: Vec<Entry<dyn RosterHook>>,
    /// [`ToSessionHook`]s.
    to_session: Vec<Entry<dyn ToSessionHook>>,
    /// [`StreamFeaturesHook`]s, in the order added.
    stream_features: Vec<Entry<dyn StreamFeaturesHook>>,
    /// [`AccountHook`]s, in the order added.
    account: Vec<Entry<dyn AccountHook>>,
    /// Disco features the handlers implement for accounts, each once, in the order added.
    account_features: Vec<String>,
    /// Disco features of the accounts' bare JIDs, each once, in the order added.
    bare_jid_features: Vec<String>,
}

/// Where handlers register ([`Hooks`]): the server's own at start, and each module
/// instance's when it is built. [`HookTable::lists`] takes what was registered.
#[derive(Default)]
pub struct HookTable {
    /// What was registered so far.
    lists: Mutex<HookLists>,
}

impl HookTable {
    /// The handlers registered so far.
    pub fn lists(&self) -> HookLists {
        self.with(|l| l.clone())
    }

    fn with<T>(&self, f: impl FnOnce(&mut HookLists) -> T) -> T {
        match self.lists.lock() {
            Ok(mut g) => f(&mut g),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

impl HookLists {
    /// These handlers with `more`'s added (after those of equal priority already here).
    pub fn merged(&self, more: &HookLists) -> HookLists {
        let mut out = self.clone();
        merge(&mut out.from_client, &more.from_client);
        merge(&mut out.pre_auth, &more.pre_auth);
        merge(&mut out.session, &more.session);
        merge(&mut out.to_account, &more.to_account);
        merge(&mut out.to_offline, &more.to_offline);
        merge(&mut out.privacy, &more.privacy);
        merge(&mut out.roster, &more.roster);
        merge(&mut out.to_session, &more.to_session);
        merge(&mut out.stream_features, &more.stream_features);
        merge(&mut out.account, &more.account);
        for f in &more.account_features {
            add_once(&mut out.account_features, f);
        }
        for f in &more.bare_jid_features {
            add_once(&mut out.bare_jid_features, f);
        }
        out
    }

    /// Runs the [`FromClientHook`]s: the first that does not pass decides.
    pub async fn client_sent(&self, from: ClientSession<'_>, stanza: Element) -> Flow {
        let kind = Kinds::of(stanza.name());
        let mut stanza = stanza;
        for (_, _, h) in self.from_client.iter().filter(|(_, k, _)| k.contains(kind)) {
            match h.client_sent(from, stanza).await {
                Flow::Pass(s) => stanza = s,
                decided => return decided,
            }
        }
        Flow::Pass(stanza)
    }

    /// What the [`PreAuthHook`]s add to the features of a stream to `host`.
    pub fn pre_auth_features(&self, host: &str) -> Vec<Element> {
        self.pre_auth
            .iter()
            .flat_map(|(_, _, h)| h.features(host))
            .collect()
    }

    /// Runs the [`PreAuthHook`]s on a stanza before authentication.
    pub async fn pre_auth(&self, client: Unauthenticated<'_>, stanza: Element) -> Flow {
        let mut stanza = stanza;
        for (_, _, h) in &self.pre_auth {
            match h.stanza(client, stanza).await {
                Flow::Pass(s) => stanza = s,
                decided => return decided,
            }
        }
        Flow::Pass(stanza)
    }

    /// Tells every [`SessionHook`] that `session` was bound.
    pub async fn session_bound(&self, session: ClientSession<'_>) {
        for (_, _, h) in &self.session {
            h.bound(session).await;
        }
    }

    /// Tells every [`SessionHook`] that `session` ended.
    pub async fn session_closed(&self, session: ClientSession<'_>) {
        for (_, _, h) in &self.session {
            h.closed(session).await;
        }
    }

    /// Runs the [`ToAccountHook`]s: the first that does not pass decides.
    pub async fn to_account(&self, to: AccountTarget<'_>, stanza: Element) -> Flow {
        let kind = Kinds::of(stanza.name());
        let mut stanza = stanza;
        for (_, _, h) in self.to_account.iter().filter(|(_, k, _)| k.contains(kind)) {
            match h.to_account(to, stanza).await {
                Flow::Pass(s) => stanza = s,
                decided => return decided,
            }
        }
        Flow::Pass(stanza)
    }

    /// Runs the [`ToOfflineHook`]s: the first that does not pass decides.
    pub async fn to_offline(&self, bare: &str, message: Element) -> Flow {
        let mut message = message;
        for (_, _, h) in &self.to_offline {
            match h.to_offline(bare, message).await {
                Flow::Pass(s) => message = s,
                decided => return decided,
            }
        }
        Flow::Pass(message)
    }

    /// Whether any [`PrivacyHook`] says `user` blocks `other`.
    pub async fn blocks(&self, user: &str, other: &str) -> bool {
        for (_, _, h) in &self.privacy {
            if h.blocks(user, other).await {
                return true;
            }
        }
        false
    }

    /// Whether any [`ToSessionHook`] listens: the session loop asks before each write.
    pub fn filters_sessions(&self) -> bool {
        !self.to_session.is_empty()
    }

    /// Runs the [`ToSessionHook`]s: the first that does not pass decides.
    pub async fn to_session(&self, session: ClientSession<'_>, stanza: Element) -> Flow {
        let kind = Kinds::of(stanza.name());
        let mut stanza = stanza;
        for (_, _, h) in self.to_session.iter().filter(|(_, k, _)| k.contains(kind)) {
            match h.to_session(session, stanza).await {
                Flow::Pass(s) => stanza = s,
                decided => return decided,
            }
        }
        Flow::Pass(stanza)
    }

    /// What the [`StreamFeaturesHook`]s add to the features of an authenticated stream.
    pub fn stream_features(&self, host: &str) -> Vec<Element> {
        self.stream_features
            .iter()
            .flat_map(|(_, _, h)| h.features(host))
            .collect()
    }

    /// Tells every [`AccountHook`] that `bare` was created.
    pub async fn account_created(&self, bare: &str) {
        for (_, _, h) in &self.account {
            h.created(bare).await;
        }
    }

    /// Tells every [`AccountHook`] that `bare` was deleted.
    pub async fn account_deleted(&self, bare: &str) {
        for (_, _, h) in &self.account {
            h.deleted(bare).await;
        }
    }

    /// Who receives the presence of `owner` (the first [`RosterHook`]'s answer; nobody
    /// without one).
    pub async fn presence_subscribers(&self, owner: &str) -> Vec<String> {
        match self.roster.first() {
            Some((_, _, h)) => h.subscribers(owner).await,
            None => Vec::new(),
        }
    }

    /// Whose presence `user` receives (the first [`RosterHook`]'s answer).
    pub async fn presence_sources(&self, user: &str) -> Vec<String> {
        match self.roster.first() {
            Some((_, _, h)) => h.sources(user).await,
            None => Vec::new(),
        }
    }

    /// Whether `contact` is in the roster of `owner` (the first [`RosterHook`]'s answer).
    pub async fn roster_contains(&self, owner: &str, contact: &str) -> bool {
        match self.roster.first() {
            Some((_, _, h)) => h.contains(owner, contact).await,
            None => false,
        }
    }

    /// The features added with [`Hooks::add_account_features`], in the order added.
    pub fn account_features(&self) -> &[String] {
        &self.account_features
    }

    /// The features added with [`Hooks::add_bare_jid_features`], in the order added.
    pub fn bare_jid_features(&self) -> &[String] {
        &self.bare_jid_features
    }
}

/// Adds `feature` to `list` unless it is there.
fn add_once(list: &mut Vec<String>, feature: &str) {
    if !list.iter().any(|have| have == feature) {
        list.push(feature.to_owned());
    }
}

impl Hooks for HookTable {
    fn on_from_client(&self, priority: i32, kinds: Kinds, hook: Arc<dyn FromClientHook>) {
        self.with(|l| insert(&mut l.from_client, priority, kinds, hook));
    }

    fn on_pre_auth(&self, hook: Arc<dyn PreAuthHook>) {
        self.with(|l| insert(&mut l.pre_auth, 0, Kinds::ALL, hook));
    }

    fn on_session(&self, hook: Arc<dyn SessionHook>) {
        // Added last among equals: sessions hooks run in the order added.
        self.with(|l| insert(&mut l.session, 0, Kinds::ALL, hook));
    }

    fn on_to_account(&self, priority: i32, kinds: Kinds, hook: Arc<dyn ToAccountHook>) {
        self.with(|l| insert(&mut l.to_account, priority, kinds, hook));
    }

    fn on_to_offline(&self, priority: i32, hook: Arc<dyn ToOfflineHook>) {
        self.with(|l| insert(&mut l.to_offline, priority, Kinds::MESSAGE, hook));
    }

    fn on_privacy(&self, hook: Arc<dyn PrivacyHook>) {
        self.with(|l| insert(&mut l.privacy, 0, Kinds::ALL, hook));
    }

    fn on_roster(&self, hook: Arc<dyn RosterHook>) {
        self.with(|l| insert(&mut l.roster, 0, Kinds::ALL, hook));
    }

    fn on_to_session(&self, priority: i32, kinds: Kinds, hook: Arc<dyn ToSessionHook>) {
        self.with(|l| insert(&mut l.to_session, priority, kinds, hook));
    }

    fn on_stream_features(&self, hook: Arc<dyn StreamFeaturesHook>) {
        self.with(|l| insert(&mut l.stream_features, 0, Kinds::ALL, hook));
    }

    fn on_account(&self, hook: Arc<dyn AccountHook>) {
        self.with(|l| insert(&mut l.account, 0, Kinds::ALL, hook));
    }

    fn add_account_features(&self, features: &[&str]) {
        self.with(|l| {
            for f in features {
                add_once(&mut l.account_features, f);
            }
        });
    }

    fn add_bare_jid_features(&self, features: &[&str]) {
        self.with(|l| {
            for f in features {
                add_once(&mut l.bare_jid_features, f);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use openspimed_module_api::{Condition, StanzaError, async_trait};

    /// Tags the stanza with its name, then passes, takes or refuses it.
    struct Tag(&'static str, &'static str);

    #[async_trait]
    impl ToAccountHook for Tag {
        async fn to_account(&self, _to: AccountTarget<'_>, stanza: Element) -> Flow {
            let seen = stanza.attr("seen").unwrap_or("").to_owned();
            let stanza = stanza.with_attr("seen", format!("{seen}{}", self.0));
            match self.1 {
                "pass" => Flow::Pass(stanza),
                "done" => Flow::Done,
                _ => Flow::Refuse(stanza, StanzaError::new(Condition::NotAllowed)),
            }
        }
    }

    const TO: AccountTarget<'static> = AccountTarget {
        bare: "a@example",
        resource: None,
    };

    fn message() -> Element {
        Element::new("message", "jabber:client")
    }

    #[tokio::test]
    async fn higher_priority_first_equal_in_order_added_first_non_pass_decides() {
        let t = HookTable::default();
        // Nobody listens: the stanza passes untouched.
        match t.lists().to_account(TO, message()).await {
            Flow::Pass(s) => assert_eq!(s.attr("seen"), None),
            other => panic!("{other:?}"),
        }
        t.on_to_account(0, Kinds::ALL, Arc::new(Tag("c", "pass")));
        t.on_to_account(10, Kinds::MESSAGE, Arc::new(Tag("a", "pass")));
        t.on_to_account(0, Kinds::ALL, Arc::new(Tag("d", "pass")));
        t.on_to_account(5, Kinds::ALL, Arc::new(Tag("b", "pass")));
        match t.lists().to_account(TO, message()).await {
            Flow::Pass(s) => assert_eq!(s.attr("seen"), Some("abcd")),
            other => panic!("{other:?}"),
        }
        // A refusal at priority 1 stops the two at 0, and carries what it was given.
        t.on_to_account(1, Kinds::ALL, Arc::new(Tag("x", "refuse")));
        match t.lists().to_account(TO, message()).await {
            Flow::Refuse(s, e) => {
                assert_eq!(s.attr("seen"), Some("abx"));
                assert_eq!(e.condition, Condition::NotAllowed);
            }
            other => panic!("{other:?}"),
        }
        // Not for presence: a presence passes it by.
        t.on_to_account(7, Kinds::IQ | Kinds::MESSAGE, Arc::new(Tag("y", "done")));
        let presence = Element::new("presence", "jabber:client");
        assert!(
            matches!(t.lists().to_account(TO, presence).await, Flow::Refuse(s, _) if s.attr("seen") == Some("bx"))
        );
        assert!(matches!(
            t.lists().to_account(TO, message()).await,
            Flow::Done
        ));
    }

    #[tokio::test]
    async fn merged_lists_order_by_priority_the_base_first_among_equals() {
        let base = HookTable::default();
        base.on_to_account(0, Kinds::ALL, Arc::new(Tag("a", "pass")));
        base.on_to_account(10, Kinds::ALL, Arc::new(Tag("b", "pass")));
        base.add_account_features(&["vcard-temp"]);
        let module = HookTable::default();
        module.on_to_account(0, Kinds::ALL, Arc::new(Tag("m", "pass")));
        module.on_to_account(20, Kinds::ALL, Arc::new(Tag("n", "pass")));
        module.add_account_features(&["vcard-temp", "urn:example:counter"]);
        let merged = base.lists().merged(&module.lists());
        match merged.to_account(TO, message()).await {
            Flow::Pass(s) => assert_eq!(s.attr("seen"), Some("nbam")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            merged.account_features(),
            ["vcard-temp", "urn:example:counter"]
        );
        // The parts are unchanged: another host without the module sees only the base.
        match base.lists().to_account(TO, message()).await {
            Flow::Pass(s) => assert_eq!(s.attr("seen"), Some("ba")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn features_are_listed_once_in_the_order_added() {
        let t = HookTable::default();
        t.add_account_features(&["urn:xmpp:blocking", "vcard-temp"]);
        t.add_account_features(&["vcard-temp", "msgoffline"]);
        assert_eq!(
            t.lists().account_features(),
            ["urn:xmpp:blocking", "vcard-temp", "msgoffline"]
        );
    }
}
