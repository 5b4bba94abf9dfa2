//! Rosters (RFC 6121 §2): the roster get and set of a user's resources, the items as
//! clients see them, and the pushes of each change to the resources that asked.

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{
    Condition, Element, Interest, IqType, ServerHandle, StanzaError, iq_result, ns,
};

use crate::Im;
use crate::storage_failure;
use crate::store::RosterItem;
use crate::subscription::Kind;

/// `jabber:iq:roster` (RFC 6121 §2).
pub const NS_ROSTER: &str = "jabber:iq:roster";

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
async fn push(server: &dyn ServerHandle, bare: &str, version: u64, item: Element) {
    for session in server
        .sessions(bare)
        .iter()
        .filter(|s| s.wants(Interest::Roster))
    {
        let to = format!("{bare}/{}", session.resource);
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("push{version}"))
            .with_attr("to", to.clone())
            .with_child(
                Element::new("query", NS_ROSTER)
                    .with_attr("ver", version.to_string())
                    .with_child(item.clone()),
            );
        server.deliver(&to, iq);
    }
}

/// Stores an item and pushes it when visible.
pub(crate) async fn save(
    server: &dyn ServerHandle,
    im: &Im,
    bare: &str,
    item: RosterItem,
) -> Result<(), StanzaError> {
    let show = visible(&item);
    let el = item_element(&item);
    let jid = item.jid.clone();
    let limits = im.limits;
    match im
        .data
        .put_roster_item(bare, &jid, Some(item), limits.roster_items)
        .await
    {
        Ok(Some(version)) => {
            if show {
                push(server, bare, version, el).await;
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
    server: &dyn ServerHandle,
    im: &Im,
    bare: &str,
    session_id: u64,
    iq: &Element,
) -> Element {
    match roster_iq_inner(server, im, bare, session_id, iq).await {
        Ok(reply) => reply,
        Err(err) => {
            let mut reply = err.reply_to(iq).unwrap_or_else(|| iq_result(iq));
            reply.remove_attr("from");
            reply
        }
    }
}

async fn roster_iq_inner(
    server: &dyn ServerHandle,
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
    if IqType::of(iq) == Some(IqType::Get) {
        server.set_interest(bare, session_id, Interest::Roster);
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
            route_subscription(server, bare, &contact, Kind::Unsubscribe).await;
        }
        if s.from || s.pending_in {
            route_subscription(server, bare, &contact, Kind::Unsubscribed).await;
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
        push(server, bare, version, removed).await;
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
    save(server, im, bare, updated).await?;
    Ok(reply)
}

/// Sends a subscription stanza from the user's bare JID to the contact.
pub(crate) async fn route_subscription(
    server: &dyn ServerHandle,
    bare: &str,
    contact: &str,
    kind: Kind,
) {
    let p = Element::new("presence", ns::CLIENT)
        .with_attr("from", bare)
        .with_attr("to", contact)
        .with_attr("type", kind.as_type());
    server.route(p).await;
}
