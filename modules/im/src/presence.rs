//! Presence (RFC 6121 §3–4): subscriptions with the Appendix A state machine of
//! [`crate::subscription`], broadcast, probes, directed presence, and what an initial
//! presence brings (the contacts' presence, pending requests, offline messages).

use std::sync::Arc;

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{Condition, Element, PresenceType, ServerHandle, StanzaError, ns};

use crate::Im;
use crate::offline::deliver_offline;
use crate::roster::{route_subscription, save};
use crate::storage_failure;
use crate::store::RosterItem;
use crate::subscription::{self, Kind, SubState};

/// The last presence of each available resource of `bare`, by resource.
fn presences(server: &dyn ServerHandle, bare: &str) -> Vec<(String, Arc<Element>)> {
    server
        .sessions(bare)
        .into_iter()
        .filter_map(|s| Some((s.resource, s.presence?)))
        .collect()
}

/// The bare JID of an address, lower-cased as stored.
fn bare_of(jid: &str) -> Option<String> {
    Jid::new(jid).ok().map(|j| j.to_bare().to_string())
}

/// Sends the current presence of each of the user's available resources to `to`; `false`
/// when none is available.
async fn send_presences(server: &dyn ServerHandle, bare: &str, to: &str) -> bool {
    let presences = presences(server, bare);
    let any = !presences.is_empty();
    for (resource, p) in presences {
        let mut p = (*p).clone();
        p.set_attr("from", format!("{bare}/{resource}"));
        p.set_attr("to", to);
        server.route(p).await;
    }
    any
}

/// A subscription stanza the user sent (RFC 6121 §3, A.2); `stanza` has `from` stamped.
pub async fn outbound_subscription(
    server: &dyn ServerHandle,
    im: &Im,
    bare: &str,
    mut stanza: Element,
    kind: Kind,
) {
    let Some(contact) = stanza.attr("to").and_then(bare_of) else {
        return server
            .bounce(stanza, StanzaError::new(Condition::JidMalformed))
            .await;
    };
    if contact == bare {
        return;
    }
    let existing = match im.data.roster_item(bare, &contact).await {
        Ok(e) => e,
        Err(e) => {
            return server
                .bounce(stanza, storage_failure("reading a roster item", &e))
                .await;
        }
    };
    let before = existing.as_ref().map(|e| e.state).unwrap_or_default();
    let step = subscription::outbound(before, kind);
    if step.state != before
        && (existing.is_some() || matches!(kind, Kind::Subscribe | Kind::Subscribed))
    {
        let mut item = existing.unwrap_or(RosterItem {
            jid: contact.clone(),
            ..RosterItem::default()
        });
        item.state = step.state;
        if let Err(err) = save(server, im, bare, item).await {
            return server.bounce(stanza, err).await;
        }
    }
    if !step.forward {
        return;
    }
    // RFC 6121 §3.1.2: stamped with the bare JID, to the contact's bare JID.
    stanza.set_attr("from", bare);
    stanza.set_attr("to", contact.clone());
    server.route(stanza).await;
    match kind {
        // §3.1.5: the new subscriber gets the user's current presence.
        Kind::Subscribed => {
            send_presences(server, bare, &contact).await;
        }
        // §3.2.2: a cancelled subscriber sees the user go unavailable.
        Kind::Unsubscribed if before.from => {
            for (resource, _) in presences(server, bare) {
                let p = Element::new("presence", ns::CLIENT)
                    .with_attr("from", format!("{bare}/{resource}"))
                    .with_attr("to", contact.clone())
                    .with_attr("type", "unavailable");
                server.route(p).await;
            }
        }
        _ => {}
    }
}

/// A subscription stanza for a local account (RFC 6121 §3, A.3).
pub async fn inbound_subscription(
    server: &dyn ServerHandle,
    im: &Im,
    bare: &str,
    mut stanza: Element,
    kind: Kind,
) {
    let Some(contact) = stanza.attr("from").and_then(bare_of) else {
        return;
    };
    match server.account_exists(bare).await {
        Ok(true) => {}
        Ok(false) => {
            // RFC 6121 §3.1.3: a request to an account that does not exist is answered
            // with `unsubscribed`; anything else is dropped.
            if kind == Kind::Subscribe {
                route_subscription(server, bare, &contact, Kind::Unsubscribed).await;
            }
            return;
        }
        Err(e) => {
            tracing::error!(%e, "cannot check an account");
            return;
        }
    }
    let existing = match im.data.roster_item(bare, &contact).await {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(%e, "cannot read a roster item");
            return;
        }
    };
    let before = existing.as_ref().map(|e| e.state).unwrap_or_default();
    let step = subscription::inbound(before, kind);
    if step.state != before {
        let mut item = existing.unwrap_or(RosterItem {
            jid: contact.clone(),
            ..RosterItem::default()
        });
        item.state = step.state;
        if let Err(err) = save(server, im, bare, item).await {
            tracing::warn!(
                condition = err.condition.as_str(),
                "subscription state not stored"
            );
            return;
        }
    }
    if step.forward {
        // §3.1.3: delivered to every available resource; without one, the pending flag
        // makes it delivered at the next login.
        stanza.set_attr("from", contact.clone());
        stanza.set_attr("to", bare);
        deliver_to_available(server, bare, &stanza);
    }
    if let Some(reply) = step.auto_reply {
        route_subscription(server, bare, &contact, reply).await;
        if reply == Kind::Subscribed {
            send_presences(server, bare, &contact).await;
        }
    }
}

fn deliver_to_available(server: &dyn ServerHandle, bare: &str, stanza: &Element) {
    for (resource, _) in presences(server, bare) {
        server.deliver(&format!("{bare}/{resource}"), stanza.clone());
    }
}

/// Presence for a local account from elsewhere: probes are answered (§4.3.2), available
/// and unavailable presence goes to the resource named or to every available resource
/// (§8.5.2.1.2, §8.5.3.1); subscription stanzas go through [`inbound_subscription`].
pub async fn inbound_presence(
    server: &dyn ServerHandle,
    im: &Im,
    bare: &str,
    resource: Option<&str>,
    stanza: Element,
) {
    let Some(t) = PresenceType::of(&stanza) else {
        return;
    };
    if let Some(kind) = Kind::of(t) {
        return inbound_subscription(server, im, bare, stanza, kind).await;
    }
    match t {
        PresenceType::Probe => probe(server, im, bare, &stanza).await,
        PresenceType::Available | PresenceType::Unavailable => match resource {
            Some(r) => {
                server.deliver(&format!("{bare}/{r}"), stanza);
            }
            None => deliver_to_available(server, bare, &stanza),
        },
        // Presence errors are for the resource they name, if any.
        _ => {
            if let Some(r) = resource {
                server.deliver(&format!("{bare}/{r}"), stanza);
            }
        }
    }
}

/// A probe: answered with the user's available presences if the prober is subscribed to
/// them (`from`), with unavailable presence when none is available.
async fn probe(server: &dyn ServerHandle, im: &Im, bare: &str, stanza: &Element) {
    let Some(from) = stanza.attr("from").map(str::to_owned) else {
        return;
    };
    let Some(prober) = bare_of(&from) else {
        return;
    };
    let subscribed = matches!(
        im.data.roster_item(bare, &prober).await,
        Ok(Some(RosterItem {
            state: SubState { from: true, .. },
            ..
        }))
    );
    if !subscribed {
        return;
    }
    if !send_presences(server, bare, &from).await {
        let p = Element::new("presence", ns::CLIENT)
            .with_attr("from", bare)
            .with_attr("to", from)
            .with_attr("type", "unavailable");
        server.route(p).await;
    }
}

/// A presence broadcast by one of the user's resources (no `to`; available or
/// unavailable), RFC 6121 §4.2–4.5. `full` is the resource's JID; `extra` are the
/// addresses it sent directed presence to (they also learn it went unavailable).
pub async fn broadcast(
    server: &dyn ServerHandle,
    im: &Im,
    bare: &str,
    full: &str,
    session_id: u64,
    mut presence: Element,
    extra: &[String],
) {
    let available = PresenceType::of(&presence) == Some(PresenceType::Available);
    presence.remove_attr("to");
    presence.set_attr("from", full);
    let stored = available.then(|| presence.clone());
    let was_available = server.set_presence(bare, session_id, stored);
    if !available && !was_available {
        // Directed presence sent while unavailable (a client that enters a room without a
        // broadcast presence first, as bots do) ends with it all the same (§4.6.3): or the
        // room keeps an occupant that is gone.
        for t in extra {
            let mut p = presence.clone();
            p.set_attr("to", t.clone());
            server.route(p).await;
        }
        return;
    }
    let roster = match im.data.roster(bare).await {
        Ok((_, items)) => items,
        Err(e) => {
            tracing::error!(%e, "cannot read a roster for a presence broadcast");
            Vec::new()
        }
    };
    // To every contact subscribed to the user, and to the user's other resources.
    let mut targets: Vec<String> = roster
        .iter()
        .filter(|i| i.state.from)
        .map(|i| i.jid.clone())
        .collect();
    if !available {
        targets.extend(extra.iter().cloned());
    }
    for t in targets {
        let mut p = presence.clone();
        p.set_attr("to", t);
        server.route(p).await;
    }
    for (resource, _) in presences(server, bare) {
        let other = format!("{bare}/{resource}");
        if other != full {
            let mut p = presence.clone();
            p.set_attr("to", other.clone());
            server.deliver(&other, p);
        }
    }
    if !available || was_available {
        return;
    }
    // Initial presence (§4.2.2): probe the contacts the user is subscribed to, show the
    // other resources' presence, hand over pending requests and offline messages.
    let resource = full.rsplit_once('/').map(|x| x.1).unwrap_or("");
    if !server.sessions(bare).iter().any(|s| s.resource == resource) {
        return;
    }
    for item in roster.iter().filter(|i| i.state.to) {
        let probe = Element::new("presence", ns::CLIENT)
            .with_attr("from", bare)
            .with_attr("to", item.jid.clone())
            .with_attr("type", "probe");
        server.route(probe).await;
    }
    server.initial_presence(bare, presence.clone()).await;
    for (resource, p) in presences(server, bare) {
        let other = format!("{bare}/{resource}");
        if other != full {
            let mut p = (*p).clone();
            p.set_attr("from", other);
            p.set_attr("to", full);
            server.deliver(full, p);
        }
    }
    for item in roster.iter().filter(|i| i.state.pending_in) {
        let p = Element::new("presence", ns::CLIENT)
            .with_attr("from", item.jid.clone())
            .with_attr("to", bare)
            .with_attr("type", "subscribe");
        server.deliver(full, p);
    }
    deliver_offline(server, im, bare, full).await;
}

/// Everything the session tracks for the IM core.
#[derive(Debug, Default)]
pub struct SessionIm {
    /// Addresses the resource sent directed presence to while available (§4.6); they get
    /// its unavailable presence when it goes.
    pub directed: Vec<String>,
}

impl SessionIm {
    /// Remembers a directed presence's recipient (bounded).
    pub fn directed_to(&mut self, to: &str) {
        if !self.directed.iter().any(|d| d == to) && self.directed.len() < 1000 {
            self.directed.push(to.to_owned());
        }
    }
}
