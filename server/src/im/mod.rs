//! The IM core of RFC 6121: rosters (§2), presence subscriptions (§3, Appendix A),
//! presence broadcast and probes (§4), and offline messages (XEP-0160).
//!
//! The subscription rules are the pure state machine of [`subscription`]; this module
//! applies them to stored rosters ([`crate::storage::ImStore`]) and moves the stanzas
//! through the router. The c2s session calls in for what a client sends (roster iqs,
//! outbound subscriptions, broadcast presence); the router calls in for what arrives for a
//! local account (inbound subscriptions, probes, presence, messages for an unavailable
//! account).

pub mod blocking;
pub mod hooks;
pub mod store;
pub mod subscription;
pub mod vcard;

use std::sync::Arc;

use dashmap::DashMap;

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{Condition, Element, StanzaError, datetime, iq_result, ns};

use crate::core::router::{Outgoing, Router};
use crate::error::storage_failure;
use store::{ImData, RosterItem};
use subscription::{Kind, SubState};

/// `jabber:iq:roster` (RFC 6121 §2).
pub const NS_ROSTER: &str = "jabber:iq:roster";
/// XEP-0203: delayed delivery, stamped on offline messages.
pub const NS_DELAY: &str = "urn:xmpp:delay";

/// What IM's handlers share.
pub struct Im {
    /// IM's stores.
    pub data: ImData,
    /// Blocklists (XEP-0191) of accounts stanzas were routed to, loaded on first use and
    /// replaced when changed: checked for every stanza, so kept out of the store's path.
    pub blocklists: DashMap<String, Arc<Vec<String>>>,
}

impl Im {
    /// IM on the stores of `storage`.
    pub fn new(storage: Arc<dyn openspimed_module_api::ModuleStorage>) -> Arc<Im> {
        Arc::new(Im {
            data: ImData::new(storage),
            blocklists: DashMap::new(),
        })
    }
}

/// The bare JID of an address, lower-cased as stored.
fn bare_of(jid: &str) -> Option<String> {
    Jid::new(jid).ok().map(|j| j.to_bare().to_string())
}

fn split(bare: &str) -> (&str, &str) {
    bare.split_once('@').unwrap_or(("", bare))
}

/// A roster item as the client sees it (RFC 6121 §2.1.2); `None` for items the user has
/// not seen yet (only a pending request from the contact, §3.1.3).
fn item_element(item: &RosterItem) -> Element {
    let mut el = Element::new("item", NS_ROSTER)
        .with_attr("jid", item.jid.clone())
        .with_attr("subscription", item.state.subscription());
    if let Some(n) = &item.name {
        el.set_attr("name", n.clone());
    }
    if item.state.pending_out && !item.state.to {
        el.set_attr("ask", "subscribe");
    }
    // RFC 6121 §3.4.2: a pre-approval shows in the roster.
    if item.state.preapproved {
        el.set_attr("approved", "true");
    }
    for g in &item.groups {
        el.push_child(Element::new("group", NS_ROSTER).with_text(g.clone()));
    }
    el
}

/// Whether the user should see the item: not while it only records a request the user has
/// not answered and the user never added the contact (RFC 6121 §3.1.3).
fn visible(item: &RosterItem) -> bool {
    let s = item.state;
    s.to || s.from
        || s.pending_out
        || s.preapproved
        || item.name.is_some()
        || !item.groups.is_empty()
}

/// Pushes a changed item (or its removal) to every resource that asked for the roster.
async fn push(router: &Router, bare: &str, version: u64, item: Element) {
    for (resource, tx) in router
        .registry
        .interested(bare, crate::core::router::Interest::Roster)
    {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("push{version}"))
            .with_attr("to", format!("{bare}/{resource}"))
            .with_child(
                Element::new("query", NS_ROSTER)
                    .with_attr("ver", version.to_string())
                    .with_child(item.clone()),
            );
        let _ = tx.try_send(Outgoing::Stanza(Box::new(iq)));
    }
}

/// Stores an item and pushes it when visible.
async fn save(router: &Router, im: &Im, bare: &str, item: RosterItem) -> Result<(), StanzaError> {
    let show = visible(&item);
    let el = item_element(&item);
    let jid = item.jid.clone();
    let limits = router.im_limits();
    match im
        .data
        .put_roster_item(bare, &jid, Some(item), limits.roster_items)
        .await
    {
        Ok(Some(version)) => {
            if show {
                push(router, bare, version, el).await;
            }
            Ok(())
        }
        Ok(None) => Err(StanzaError::new(Condition::NotAllowed).with_text("the roster is full")),
        Err(e) => Err(storage_failure("storing a roster item", &e)),
    }
}

/// A roster get or set from one of the user's resources (RFC 6121 §2.2–2.5); returns the
/// answer.
pub async fn roster_iq(
    router: &Router,
    im: &Im,
    bare: &str,
    session_id: u64,
    iq: &Element,
) -> Element {
    match roster_iq_inner(router, im, bare, session_id, iq).await {
        Ok(reply) => reply,
        Err(err) => {
            let mut reply = err.reply_to(iq).unwrap_or_else(|| iq_result(iq));
            reply.remove_attr("from");
            reply
        }
    }
}

async fn roster_iq_inner(
    router: &Router,
    im: &Im,
    bare: &str,
    session_id: u64,
    iq: &Element,
) -> Result<Element, StanzaError> {
    let mut reply = iq_result(iq);
    reply.remove_attr("from");
    let query = iq
        .get_child("query", NS_ROSTER)
        .ok_or_else(|| StanzaError::new(Condition::BadRequest))?;
    if iq.attr("type") == Some("get") {
        router
            .registry
            .set_interest(bare, session_id, crate::core::router::Interest::Roster);
        let (version, items) = im
            .data
            .roster(bare)
            .await
            .map_err(|e| storage_failure("reading a roster", &e))?;
        // RFC 6121 §2.6.3: an unchanged roster is answered without items.
        if query.attr("ver") == Some(version.to_string().as_str()) {
            return Ok(reply);
        }
        let mut q = Element::new("query", NS_ROSTER).with_attr("ver", version.to_string());
        for item in items.iter().filter(|i| visible(i)) {
            q.push_child(item_element(item));
        }
        reply.push_child(q);
        return Ok(reply);
    }
    // RFC 6121 §2.3.3: exactly one item, with a valid JID.
    let mut items = query.children().filter(|c| c.is("item", NS_ROSTER));
    let (Some(item), None) = (items.next(), items.next()) else {
        return Err(
            StanzaError::new(Condition::BadRequest).with_text("a roster set holds one item")
        );
    };
    let contact = item
        .attr("jid")
        .and_then(|j| Jid::new(j).ok())
        .filter(|j| j.resource().is_none())
        .map(|j| j.to_string())
        .ok_or_else(|| StanzaError::new(Condition::BadRequest).with_text("not a valid bare JID"))?;
    let existing = im
        .data
        .roster_item(bare, &contact)
        .await
        .map_err(|e| storage_failure("reading a roster item", &e))?;
    if item.attr("subscription") == Some("remove") {
        let Some(old) = existing else {
            return Err(StanzaError::new(Condition::ItemNotFound));
        };
        // RFC 6121 §2.5.2: cancel both directions with the contact first.
        let s = old.state;
        if s.to || s.pending_out {
            route_subscription(router, bare, &contact, Kind::Unsubscribe).await;
        }
        if s.from || s.pending_in {
            route_subscription(router, bare, &contact, Kind::Unsubscribed).await;
        }
        let version = im
            .data
            .put_roster_item(bare, &contact, None, usize::MAX)
            .await
            .map_err(|e| storage_failure("removing a roster item", &e))?
            .unwrap_or(0);
        let removed = Element::new("item", NS_ROSTER)
            .with_attr("jid", contact)
            .with_attr("subscription", "remove");
        push(router, bare, version, removed).await;
        return Ok(reply);
    }
    let mut groups: Vec<String> = Vec::new();
    for g in item.children().filter(|c| c.is("group", NS_ROSTER)) {
        let name = g.text();
        if name.is_empty() {
            return Err(StanzaError::new(Condition::NotAcceptable).with_text("empty group name"));
        }
        if groups.contains(&name) {
            return Err(StanzaError::new(Condition::BadRequest).with_text("duplicate group"));
        }
        groups.push(name);
    }
    let updated = RosterItem {
        jid: contact.clone(),
        name: item
            .attr("name")
            .filter(|n| !n.is_empty())
            .map(str::to_owned),
        groups,
        state: existing.map(|e| e.state).unwrap_or_default(),
    };
    save(router, im, bare, updated).await?;
    Ok(reply)
}

/// Sends a subscription stanza from the user's bare JID to the contact.
async fn route_subscription(router: &Router, bare: &str, contact: &str, kind: Kind) {
    let p = Element::new("presence", ns::CLIENT)
        .with_attr("from", bare)
        .with_attr("to", contact)
        .with_attr("type", kind.as_type());
    Box::pin(router.route(p)).await;
}

/// Sends the current presence of each of the user's available resources to `to`; `false`
/// when none is available.
async fn send_presences(router: &Router, bare: &str, to: &str) -> bool {
    let presences = router.registry.presences(bare);
    let any = !presences.is_empty();
    for (resource, p) in presences {
        let mut p = (*p).clone();
        p.set_attr("from", format!("{bare}/{resource}"));
        p.set_attr("to", to);
        Box::pin(router.route(p)).await;
    }
    any
}

/// A subscription stanza the user sent (RFC 6121 §3, A.2); `stanza` has `from` stamped.
pub async fn outbound_subscription(
    router: &Router,
    im: &Im,
    bare: &str,
    mut stanza: Element,
    kind: Kind,
) {
    let Some(contact) = stanza.attr("to").and_then(bare_of) else {
        return router
            .bounce(&stanza, StanzaError::new(Condition::JidMalformed))
            .await;
    };
    if contact == bare {
        return;
    }
    let existing = match im.data.roster_item(bare, &contact).await {
        Ok(e) => e,
        Err(e) => {
            return router
                .bounce(&stanza, storage_failure("reading a roster item", &e))
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
        if let Err(err) = save(router, im, bare, item).await {
            return router.bounce(&stanza, err).await;
        }
    }
    if !step.forward {
        return;
    }
    // RFC 6121 §3.1.2: stamped with the bare JID, to the contact's bare JID.
    stanza.set_attr("from", bare);
    stanza.set_attr("to", contact.clone());
    Box::pin(router.route(stanza)).await;
    match kind {
        // §3.1.5: the new subscriber gets the user's current presence.
        Kind::Subscribed => {
            send_presences(router, bare, &contact).await;
        }
        // §3.2.2: a cancelled subscriber sees the user go unavailable.
        Kind::Unsubscribed if before.from => {
            for (resource, _) in router.registry.presences(bare) {
                let p = Element::new("presence", ns::CLIENT)
                    .with_attr("from", format!("{bare}/{resource}"))
                    .with_attr("to", contact.clone())
                    .with_attr("type", "unavailable");
                Box::pin(router.route(p)).await;
            }
        }
        _ => {}
    }
}

/// A subscription stanza for a local account (RFC 6121 §3, A.3).
pub async fn inbound_subscription(
    router: &Router,
    im: &Im,
    bare: &str,
    mut stanza: Element,
    kind: Kind,
) {
    let Some(contact) = stanza.attr("from").and_then(bare_of) else {
        return;
    };
    let (user, domain) = split(bare);
    match router.accounts.account_exists(user, domain).await {
        Ok(true) => {}
        Ok(false) => {
            // RFC 6121 §3.1.3: a request to an account that does not exist is answered
            // with `unsubscribed`; anything else is dropped.
            if kind == Kind::Subscribe {
                route_subscription(router, bare, &contact, Kind::Unsubscribed).await;
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
        if let Err(err) = save(router, im, bare, item).await {
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
        deliver_to_available(router, bare, &stanza);
    }
    if let Some(reply) = step.auto_reply {
        route_subscription(router, bare, &contact, reply).await;
        if reply == Kind::Subscribed {
            send_presences(router, bare, &contact).await;
        }
    }
}

fn deliver_to_available(router: &Router, bare: &str, stanza: &Element) {
    for tx in router.registry.available(bare) {
        let _ = tx.try_send(Outgoing::Stanza(Box::new(stanza.clone())));
    }
}

/// Presence for a local account from elsewhere: probes are answered (§4.3.2), available
/// and unavailable presence goes to the resource named or to every available resource
/// (§8.5.2.1.2, §8.5.3.1); subscription stanzas go through [`inbound_subscription`].
pub async fn inbound_presence(
    router: &Router,
    im: &Im,
    bare: &str,
    resource: Option<&str>,
    stanza: Element,
) {
    match stanza.attr("type") {
        Some(t) if Kind::from_type(t).is_some() => {
            if let Some(kind) = Kind::from_type(t) {
                inbound_subscription(router, im, bare, stanza, kind).await;
            }
        }
        Some("probe") => probe(router, im, bare, &stanza).await,
        None | Some("unavailable") => match resource {
            Some(r) => {
                if let Some(tx) = router.registry.full(bare, r) {
                    let _ = tx.try_send(Outgoing::Stanza(Box::new(stanza)));
                }
            }
            None => deliver_to_available(router, bare, &stanza),
        },
        // Presence errors are for the resource they name, if any.
        _ => {
            if let Some(tx) = resource.and_then(|r| router.registry.full(bare, r)) {
                let _ = tx.try_send(Outgoing::Stanza(Box::new(stanza)));
            }
        }
    }
}

/// A probe: answered with the user's available presences if the prober is subscribed to
/// them (`from`), with unavailable presence when none is available.
async fn probe(router: &Router, im: &Im, bare: &str, stanza: &Element) {
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
    if !send_presences(router, bare, &from).await {
        let p = Element::new("presence", ns::CLIENT)
            .with_attr("from", bare)
            .with_attr("to", from)
            .with_attr("type", "unavailable");
        Box::pin(router.route(p)).await;
    }
}

/// A presence broadcast by one of the user's resources (no `to`; available or
/// unavailable), RFC 6121 §4.2–4.5. `full` is the resource's JID; `extra` are the
/// addresses it sent directed presence to (they also learn it went unavailable).
pub async fn broadcast(
    router: &Router,
    im: &Im,
    bare: &str,
    full: &str,
    session_id: u64,
    mut presence: Element,
    extra: &[String],
) {
    let available = presence.attr("type").is_none();
    presence.remove_attr("to");
    presence.set_attr("from", full);
    let stored = available.then(|| presence.clone());
    let was_available = router.registry.set_presence(bare, session_id, stored);
    if !available && !was_available {
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
        Box::pin(router.route(p)).await;
    }
    for (resource, _) in router.registry.presences(bare) {
        let other = format!("{bare}/{resource}");
        if other != full
            && let Some(tx) = router.registry.full(bare, &resource)
        {
            let mut p = presence.clone();
            p.set_attr("to", other);
            let _ = tx.try_send(Outgoing::Stanza(Box::new(p)));
        }
    }
    if !available || was_available {
        return;
    }
    // Initial presence (§4.2.2): probe the contacts the user is subscribed to, show the
    // other resources' presence, hand over pending requests and offline messages.
    let Some(me) = router
        .registry
        .full(bare, full.rsplit_once('/').map(|x| x.1).unwrap_or(""))
    else {
        return;
    };
    for item in roster.iter().filter(|i| i.state.to) {
        let probe = Element::new("presence", ns::CLIENT)
            .with_attr("from", bare)
            .with_attr("to", item.jid.clone())
            .with_attr("type", "probe");
        Box::pin(router.route(probe)).await;
    }
    Box::pin(router.initial_presence(bare, &presence)).await;
    for (resource, p) in router.registry.presences(bare) {
        let other = format!("{bare}/{resource}");
        if other != full {
            let mut p = (*p).clone();
            p.set_attr("from", other);
            p.set_attr("to", full);
            let _ = me.try_send(Outgoing::Stanza(Box::new(p)));
        }
    }
    for item in roster.iter().filter(|i| i.state.pending_in) {
        let p = Element::new("presence", ns::CLIENT)
            .with_attr("from", item.jid.clone())
            .with_attr("to", bare)
            .with_attr("type", "subscribe");
        let _ = me.try_send(Outgoing::Stanza(Box::new(p)));
    }
    deliver_offline(im, bare, full, &me).await;
}

/// Hands the stored messages to a resource that just became available, oldest first, and
/// forgets them (XEP-0160 §3).
async fn deliver_offline(
    im: &Im,
    bare: &str,
    full: &str,
    me: &tokio::sync::mpsc::Sender<Outgoing>,
) {
    let stored = match im.data.offline(bare).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(%e, "cannot read offline messages");
            return;
        }
    };
    let mut delivered = Vec::new();
    for m in stored {
        match Element::parse(&m.stanza) {
            Ok(mut el) => {
                el.set_attr("to", full);
                if me.try_send(Outgoing::Stanza(Box::new(el))).is_err() {
                    break;
                }
            }
            Err(e) => tracing::warn!(%e, id = %m.id, "dropping an unreadable offline message"),
        }
        delivered.push(m.id);
    }
    if !delivered.is_empty()
        && let Err(e) = im.data.delete_offline(bare, delivered).await
    {
        tracing::error!(%e, "cannot forget delivered offline messages");
    }
}

/// Stores a message for an account without an available resource (XEP-0160), stamped with
/// its delay (XEP-0203). `Err` is the error to bounce with.
pub async fn store_offline(
    router: &Router,
    im: &Im,
    bare: &str,
    stanza: &Element,
) -> Result<(), StanzaError> {
    let (_, domain) = split(bare);
    let mut copy = stanza.clone();
    let stamp = datetime::format_utc(datetime::now());
    copy.push_child(
        Element::new("delay", NS_DELAY)
            .with_attr("from", domain)
            .with_attr("stamp", stamp),
    );
    let xml = copy.to_string();
    match im
        .data
        .store_offline(bare, &xml, router.im_limits().offline_quota)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err(StanzaError::new(Condition::ResourceConstraint)
            .with_text("the recipient's offline storage is full")),
        Err(e) => Err(storage_failure("storing an offline message", &e)),
    }
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
