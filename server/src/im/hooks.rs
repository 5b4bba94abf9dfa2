//! IM's handlers on the router's hooks: what reaches an account goes through blocking
//! (XEP-0191), presence and subscriptions (RFC 6121 §3–4) and vCards (XEP-0054); what
//! finds no resource is stored offline (XEP-0160). The composition root installs them.

use std::sync::{Arc, Weak};

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{
    AccountTarget, Condition, Element, Flow, Hooks, PrivacyHook, StanzaError, ToAccountHook,
    ToOfflineHook, async_trait,
};

use crate::core::router::Router;

/// Priorities on the to-account hook: blocking before anything else sees the stanza,
/// then presence, then vCards (Prosody runs mod_blocklist's handlers at priority 1 and
/// mod_presence's at the default 0, in the same order).
const BLOCKING: i32 = 100;
const PRESENCE: i32 = 50;
const VCARD: i32 = 0;

/// Adds IM's handlers to `router`'s hooks.
pub fn install(router: &Arc<Router>) {
    let weak = Arc::downgrade(router);
    let blocking = Arc::new(Blocking(weak.clone()));
    router.hooks.on_to_account(BLOCKING, blocking.clone());
    router.hooks.on_privacy(blocking);
    router
        .hooks
        .on_to_account(PRESENCE, Arc::new(Presence(weak.clone())));
    router
        .hooks
        .on_to_account(VCARD, Arc::new(VCard(weak.clone())));
    router.hooks.on_to_offline(0, Arc::new(Offline(weak)));
    router.hooks.add_account_features(&[
        super::blocking::NS,
        super::vcard::NS,
        // XEP-0160: offline messages are stored.
        "msgoffline",
    ]);
}

/// XEP-0191 §3.4: nothing from a blocked JID arrives.
struct Blocking(Weak<Router>);

#[async_trait]
impl ToAccountHook for Blocking {
    async fn to_account(&self, to: AccountTarget<'_>, stanza: Element) -> Flow {
        let Some(router) = self.0.upgrade() else {
            return Flow::Pass(stanza);
        };
        let blocked = match stanza.attr("from") {
            Some(from) => super::blocking::blocks(&router, to.bare, from).await,
            None => false,
        };
        if !blocked {
            return Flow::Pass(stanza);
        }
        // Messages and requests learn it as if the account were not there; presence and
        // the rest are dropped.
        let request = stanza.name() == "iq" && matches!(stanza.attr("type"), Some("get" | "set"));
        if stanza.name() == "message" || request {
            Flow::Refuse(stanza, StanzaError::new(Condition::ServiceUnavailable))
        } else {
            Flow::Done
        }
    }
}

#[async_trait]
impl PrivacyHook for Blocking {
    async fn blocks(&self, user: &str, other: &str) -> bool {
        match self.0.upgrade() {
            Some(router) => super::blocking::blocks(&router, user, other).await,
            None => false,
        }
    }
}

/// Presence to an account: subscriptions, probes, directed presence (RFC 6121 §3–4).
struct Presence(Weak<Router>);

#[async_trait]
impl ToAccountHook for Presence {
    async fn to_account(&self, to: AccountTarget<'_>, stanza: Element) -> Flow {
        if stanza.name() != "presence" {
            return Flow::Pass(stanza);
        }
        if let Some(router) = self.0.upgrade() {
            super::inbound_presence(&router, to.bare, to.resource, stanza).await;
        }
        Flow::Done
    }
}

/// vCard iqs to an account's bare JID, answered on its behalf (RFC 6121 §8.5.2.1.3).
struct VCard(Weak<Router>);

#[async_trait]
impl ToAccountHook for VCard {
    async fn to_account(&self, to: AccountTarget<'_>, stanza: Element) -> Flow {
        let request = stanza.name() == "iq" && matches!(stanza.attr("type"), Some("get" | "set"));
        if !request
            || to.resource.is_some()
            || stanza.get_child("vCard", super::vcard::NS).is_none()
        {
            return Flow::Pass(stanza);
        }
        let Some(router) = self.0.upgrade() else {
            return Flow::Pass(stanza);
        };
        let own = stanza
            .attr("from")
            .and_then(|f| Jid::new(f).ok())
            .is_some_and(|f| f.to_bare().to_string() == to.bare);
        let reply = super::vcard::iq(&router, to.bare, &stanza, own).await;
        router.route(reply).await;
        Flow::Done
    }
}

/// XEP-0160: messages for an account with no available resource wait for its next
/// session.
struct Offline(Weak<Router>);

#[async_trait]
impl ToOfflineHook for Offline {
    async fn to_offline(&self, bare: &str, message: Element) -> Flow {
        let Some(router) = self.0.upgrade() else {
            return Flow::Pass(message);
        };
        match super::store_offline(&router, bare, &message).await {
            Ok(()) => Flow::Done,
            Err(err) => Flow::Refuse(message, err),
        }
    }
}
