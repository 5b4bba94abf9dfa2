//! The hook table the router fires ([`openspimed_module_api::hooks`]): one list per point,
//! sorted by priority when a handler is added, read on every stanza.

use std::borrow::Cow;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use openspimed_module_api::{
    AccountTarget, ClientSession, Element, Flow, FromClientHook, Hooks, Kinds, PreAuthHook,
    PrivacyHook, SessionHook, ToAccountHook, ToOfflineHook, Unauthenticated,
};

/// `(priority, kinds wanted, handler)`.
type Entry<H> = (i32, Kinds, Arc<H>);

/// Handlers of one point, highest priority first.
struct Point<H: ?Sized> {
    /// The handlers added while the server starts, sorted.
    adding: Mutex<Vec<Entry<H>>>,
    /// The same list once the server serves ([`HookTable::freeze`]): read on every stanza
    /// without a lock or a reference count. (With a read lock and an `Arc` clone per
    /// firing, the shared counters they write cost 5–7% of message routing on two cores,
    /// measured side by side with `openspimed-bench messages`.)
    frozen: OnceLock<Vec<Entry<H>>>,
}

impl<H: ?Sized> Default for Point<H> {
    fn default() -> Self {
        Point {
            adding: Mutex::new(Vec::new()),
            frozen: OnceLock::new(),
        }
    }
}

impl<H: ?Sized> Point<H> {
    fn add(&self, priority: i32, kinds: Kinds, hook: Arc<H>) {
        if self.frozen.get().is_some() {
            // Handlers are added at start; module hooks on reload are the next step.
            tracing::error!("a hook handler was added after start; it is not called");
            return;
        }
        let mut list = match self.adding.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Stable: equal priorities keep the order they were added in.
        let at = list.partition_point(|(p, _, _)| *p >= priority);
        list.insert(at, (priority, kinds, hook));
    }

    fn freeze(&self) {
        let list = match self.adding.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let _ = self.frozen.set(list);
    }

    fn get(&self) -> Cow<'_, [Entry<H>]> {
        if let Some(list) = self.frozen.get() {
            return Cow::Borrowed(list);
        }
        match self.adding.lock() {
            Ok(g) => Cow::Owned(g.clone()),
            Err(poisoned) => Cow::Owned(poisoned.into_inner().clone()),
        }
    }
}

/// Every hook point's handlers.
#[derive(Default)]
pub struct HookTable {
    /// [`FromClientHook`]s.
    from_client: Point<dyn FromClientHook>,
    /// [`PreAuthHook`]s, in the order added.
    pre_auth: Point<dyn PreAuthHook>,
    /// [`SessionHook`]s, in the order added.
    session: Point<dyn SessionHook>,
    /// [`ToAccountHook`]s.
    to_account: Point<dyn ToAccountHook>,
    /// [`ToOfflineHook`]s.
    to_offline: Point<dyn ToOfflineHook>,
    /// [`PrivacyHook`]s (no order: any one that blocks decides).
    privacy: Point<dyn PrivacyHook>,
    /// Disco features the handlers implement for accounts.
    account_features: RwLock<Vec<String>>,
}

impl HookTable {
    /// Fixes the handlers in force: called once the server's own handlers are installed,
    /// before it serves.
    pub fn freeze(&self) {
        self.from_client.freeze();
        self.pre_auth.freeze();
        self.session.freeze();
        self.to_account.freeze();
        self.to_offline.freeze();
        self.privacy.freeze();
    }

    /// Runs the [`FromClientHook`]s: the first that does not pass decides.
    pub async fn client_sent(&self, from: ClientSession<'_>, stanza: Element) -> Flow {
        let handlers = self.from_client.get();
        let kind = Kinds::of(stanza.name());
        let mut stanza = stanza;
        for (_, _, h) in handlers.iter().filter(|(_, k, _)| k.contains(kind)) {
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
            .get()
            .iter()
            .flat_map(|(_, _, h)| h.features(host))
            .collect()
    }

    /// Runs the [`PreAuthHook`]s on a stanza before authentication.
    pub async fn pre_auth(&self, client: Unauthenticated<'_>, stanza: Element) -> Flow {
        let handlers = self.pre_auth.get();
        let mut stanza = stanza;
        for (_, _, h) in handlers.iter() {
            match h.stanza(client, stanza).await {
                Flow::Pass(s) => stanza = s,
                decided => return decided,
            }
        }
        Flow::Pass(stanza)
    }

    /// Tells every [`SessionHook`] that `session` was bound.
    pub async fn session_bound(&self, session: ClientSession<'_>) {
        for (_, _, h) in self.session.get().iter() {
            h.bound(session).await;
        }
    }

    /// Tells every [`SessionHook`] that `session` ended.
    pub async fn session_closed(&self, session: ClientSession<'_>) {
        for (_, _, h) in self.session.get().iter() {
            h.closed(session).await;
        }
    }

    /// Runs the [`ToAccountHook`]s: the first that does not pass decides.
    pub async fn to_account(&self, to: AccountTarget<'_>, stanza: Element) -> Flow {
        let handlers = self.to_account.get();
        let kind = Kinds::of(stanza.name());
        let mut stanza = stanza;
        for (_, _, h) in handlers.iter().filter(|(_, k, _)| k.contains(kind)) {
            match h.to_account(to, stanza).await {
                Flow::Pass(s) => stanza = s,
                decided => return decided,
            }
        }
        Flow::Pass(stanza)
    }

    /// Runs the [`ToOfflineHook`]s: the first that does not pass decides.
    pub async fn to_offline(&self, bare: &str, message: Element) -> Flow {
        let handlers = self.to_offline.get();
        let mut message = message;
        for (_, _, h) in handlers.iter() {
            match h.to_offline(bare, message).await {
                Flow::Pass(s) => message = s,
                decided => return decided,
            }
        }
        Flow::Pass(message)
    }

    /// Whether any [`PrivacyHook`] says `user` blocks `other`.
    pub async fn blocks(&self, user: &str, other: &str) -> bool {
        for (_, _, h) in self.privacy.get().iter() {
            if h.blocks(user, other).await {
                return true;
            }
        }
        false
    }

    /// The features added with [`Hooks::add_account_features`], in the order added.
    pub fn account_features(&self) -> Vec<String> {
        match self.account_features.read() {
            Ok(f) => f.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl Hooks for HookTable {
    fn on_from_client(&self, priority: i32, kinds: Kinds, hook: Arc<dyn FromClientHook>) {
        self.from_client.add(priority, kinds, hook);
    }

    fn on_pre_auth(&self, hook: Arc<dyn PreAuthHook>) {
        self.pre_auth.add(0, Kinds::ALL, hook);
    }

    fn on_session(&self, hook: Arc<dyn SessionHook>) {
        // Added last among equals: sessions hooks run in the order added.
        self.session.add(0, Kinds::ALL, hook);
    }

    fn on_to_account(&self, priority: i32, kinds: Kinds, hook: Arc<dyn ToAccountHook>) {
        self.to_account.add(priority, kinds, hook);
    }

    fn on_to_offline(&self, priority: i32, hook: Arc<dyn ToOfflineHook>) {
        self.to_offline.add(priority, Kinds::MESSAGE, hook);
    }

    fn on_privacy(&self, hook: Arc<dyn PrivacyHook>) {
        self.privacy.add(0, Kinds::ALL, hook);
    }

    fn add_account_features(&self, features: &[&str]) {
        let mut list = match self.account_features.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        for f in features {
            if !list.iter().any(|have| have == f) {
                list.push((*f).to_owned());
            }
        }
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
        match t.to_account(TO, message()).await {
            Flow::Pass(s) => assert_eq!(s.attr("seen"), None),
            other => panic!("{other:?}"),
        }
        t.on_to_account(0, Kinds::ALL, Arc::new(Tag("c", "pass")));
        t.on_to_account(10, Kinds::MESSAGE, Arc::new(Tag("a", "pass")));
        t.on_to_account(0, Kinds::ALL, Arc::new(Tag("d", "pass")));
        t.on_to_account(5, Kinds::ALL, Arc::new(Tag("b", "pass")));
        match t.to_account(TO, message()).await {
            Flow::Pass(s) => assert_eq!(s.attr("seen"), Some("abcd")),
            other => panic!("{other:?}"),
        }
        // A refusal at priority 1 stops the two at 0, and carries what it was given.
        t.on_to_account(1, Kinds::ALL, Arc::new(Tag("x", "refuse")));
        match t.to_account(TO, message()).await {
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
            matches!(t.to_account(TO, presence).await, Flow::Refuse(s, _) if s.attr("seen") == Some("bx"))
        );
        assert!(matches!(t.to_account(TO, message()).await, Flow::Done));
    }

    #[tokio::test]
    async fn frozen_tables_keep_what_was_added_before() {
        let t = HookTable::default();
        t.on_to_account(0, Kinds::ALL, Arc::new(Tag("a", "pass")));
        t.freeze();
        t.on_to_account(9, Kinds::ALL, Arc::new(Tag("late", "done")));
        match t.to_account(TO, message()).await {
            Flow::Pass(s) => assert_eq!(s.attr("seen"), Some("a")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn features_are_listed_once_in_the_order_added() {
        let t = HookTable::default();
        t.add_account_features(&["urn:xmpp:blocking", "vcard-temp"]);
        t.add_account_features(&["vcard-temp", "msgoffline"]);
        assert_eq!(
            t.account_features(),
            ["urn:xmpp:blocking", "vcard-temp", "msgoffline"]
        );
    }
}
