//! Offline messages (XEP-0160): stored with their delay (XEP-0203) for an account with no
//! available resource, handed to its next available resource.

use openspimed_module_api::{Condition, Element, ServerHandle, StanzaError, datetime};

use crate::Im;
use crate::storage_failure;

/// XEP-0203: delayed delivery, stamped on offline messages.
pub const NS_DELAY: &str = "urn:xmpp:delay";

/// Hands the stored messages to a resource that just became available, oldest first, and
/// forgets them (XEP-0160 §3).
pub(crate) async fn deliver_offline(server: &dyn ServerHandle, im: &Im, bare: &str, full: &str) {
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
                if !server.deliver(full, el) {
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
pub async fn store_offline(im: &Im, bare: &str, stanza: &Element) -> Result<(), StanzaError> {
    let domain = bare.rsplit_once('@').map_or(bare, |(_, d)| d);
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
        .store_offline(bare, &xml, im.limits.offline_messages)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err(StanzaError::new(Condition::ResourceConstraint)
            .with_text("the recipient's offline storage is full")),
        Err(e) => Err(storage_failure("storing an offline message", &e)),
    }
}
