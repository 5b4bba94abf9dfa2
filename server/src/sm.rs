//! Stream management counters and the unacknowledged queue (XEP-0198). Sans-IO: the c2s
//! session feeds it what it receives and sends; it answers what to acknowledge and what to
//! retransmit after a resumption.

use std::collections::VecDeque;

use openspimed_module_api::Element;

/// `urn:xmpp:sm:3` (XEP-0198).
pub const NS: &str = "urn:xmpp:sm:3";

/// A client acknowledged more stanzas than it was sent (XEP-0198 §4:
/// `handled-count-too-high`).
#[derive(Debug, PartialEq, Eq)]
pub struct TooHigh {
    /// What the client said.
    pub h: u32,
    /// What was sent.
    pub sent: u32,
}

/// Stream management state of one session.
#[derive(Debug)]
pub struct Sm {
    /// Stanzas handled from the client (the `h` we report), modulo 2^32.
    pub inbound: u32,
    /// Stanzas sent to the client, modulo 2^32.
    sent: u32,
    /// The last `h` the client acknowledged.
    acked: u32,
    /// Sent and not yet acknowledged, oldest first: retransmitted after a resumption and
    /// re-routed (messages to offline storage) when the session is not resumed.
    unacked: VecDeque<Element>,
    /// The resumption id when the client asked for resumption.
    pub id: Option<String>,
    /// Whether an `<r/>` of ours awaits its `<a/>` (one at a time).
    pub requested: bool,
}

impl Sm {
    /// Counters at zero; `id` when resumption was enabled.
    pub fn new(id: Option<String>) -> Sm {
        Sm {
            inbound: 0,
            sent: 0,
            acked: 0,
            unacked: VecDeque::new(),
            id,
            requested: false,
        }
    }

    /// One stanza from the client handled.
    pub fn received(&mut self) {
        self.inbound = self.inbound.wrapping_add(1);
    }

    /// One stanza written to the client.
    pub fn sent(&mut self, el: &Element) {
        self.sent = self.sent.wrapping_add(1);
        self.unacked.push_back(el.clone());
    }

    /// The client handled stanzas up to `h`: forget them.
    pub fn ack(&mut self, h: u32) -> Result<(), TooHigh> {
        let n = h.wrapping_sub(self.acked) as usize;
        if n > self.unacked.len() {
            return Err(TooHigh { h, sent: self.sent });
        }
        self.unacked.drain(..n);
        self.acked = h;
        self.requested = false;
        Ok(())
    }

    /// Stanzas sent and not acknowledged, oldest first.
    pub fn unacked(&self) -> impl Iterator<Item = &Element> {
        self.unacked.iter()
    }

    /// How many stanzas await an acknowledgement.
    pub fn pending(&self) -> usize {
        self.unacked.len()
    }

    /// Takes the unacknowledged stanzas (the session ends without resumption).
    pub fn take_unacked(&mut self) -> Vec<Element> {
        self.unacked.drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(i: u32) -> Element {
        Element::new("message", "jabber:client").with_attr("id", i.to_string())
    }

    #[test]
    fn acknowledgements_drop_what_the_client_handled() {
        let mut sm = Sm::new(Some("x".into()));
        for i in 0..5 {
            sm.sent(&m(i));
        }
        assert_eq!(sm.ack(2), Ok(()));
        let ids: Vec<_> = sm.unacked().map(|e| e.attr("id").unwrap_or("")).collect();
        assert_eq!(ids, ["2", "3", "4"]);
        // Repeating an old h changes nothing; a higher one than sent is an error.
        assert_eq!(sm.ack(2), Ok(()));
        assert_eq!(sm.pending(), 3);
        assert_eq!(sm.ack(9), Err(TooHigh { h: 9, sent: 5 }));
        assert_eq!(sm.ack(5), Ok(()));
        assert_eq!(sm.pending(), 0);
    }

    #[test]
    fn counters_wrap_at_two_to_the_32() {
        let mut sm = Sm::new(None);
        sm.sent = u32::MAX - 1;
        sm.acked = u32::MAX - 1;
        sm.inbound = u32::MAX;
        sm.received();
        assert_eq!(sm.inbound, 0);
        for i in 0..3 {
            sm.sent(&m(i));
        }
        assert_eq!(sm.ack(0), Ok(()));
        assert_eq!(sm.pending(), 1);
        assert_eq!(sm.take_unacked().len(), 1);
    }
}
