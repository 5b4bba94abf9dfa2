//! The presence subscription state machine of RFC 6121 Appendix A (with the
//! pre-approval of §3.4), as a pure function: state and event in, new state and what to do
//! out. Sans-IO; the tables are tested row by row.

use openspimed_module_api::PresenceType;

/// The subscription state of one roster item, as the user's server keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SubState {
    /// The user receives the contact's presence (`to`).
    pub to: bool,
    /// The contact receives the user's presence (`from`).
    pub from: bool,
    /// The user asked the contact and awaits an answer ("Pending Out", `ask='subscribe'`).
    pub pending_out: bool,
    /// The contact asked the user and awaits an answer ("Pending In").
    pub pending_in: bool,
    /// The user approved a subscription request before it came (RFC 6121 §3.4).
    pub preapproved: bool,
}

impl SubState {
    /// The `subscription` attribute of the roster item (RFC 6121 §2.1.2.5).
    pub fn subscription(&self) -> &'static str {
        match (self.to, self.from) {
            (true, true) => "both",
            (true, false) => "to",
            (false, true) => "from",
            (false, false) => "none",
        }
    }

    /// The RFC 6121 Appendix A name of the state, e.g. "None + Pending Out/In".
    pub fn name(&self) -> &'static str {
        match (self.to, self.from, self.pending_out, self.pending_in) {
            (false, false, false, false) => "None",
            (false, false, true, false) => "None + Pending Out",
            (false, false, false, true) => "None + Pending In",
            (false, false, true, true) => "None + Pending Out/In",
            (true, false, _, false) => "To",
            (true, false, _, true) => "To + Pending In",
            (false, true, false, _) => "From",
            (false, true, true, _) => "From + Pending Out",
            (true, true, _, _) => "Both",
        }
    }
}

/// The four subscription-related presence types (RFC 6121 §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `subscribe`: a request.
    Subscribe,
    /// `subscribed`: an approval.
    Subscribed,
    /// `unsubscribe`: the sender gives up its subscription.
    Unsubscribe,
    /// `unsubscribed`: the sender denies or cancels the other's subscription.
    Unsubscribed,
}

impl Kind {
    /// The subscription kind of a presence type; `None` for the other types.
    pub fn of(t: PresenceType) -> Option<Kind> {
        Some(match t {
            PresenceType::Subscribe => Kind::Subscribe,
            PresenceType::Subscribed => Kind::Subscribed,
            PresenceType::Unsubscribe => Kind::Unsubscribe,
            PresenceType::Unsubscribed => Kind::Unsubscribed,
            _ => return None,
        })
    }

    /// The presence `type` attribute.
    pub fn as_type(self) -> &'static str {
        match self {
            Kind::Subscribe => "subscribe",
            Kind::Subscribed => "subscribed",
            Kind::Unsubscribe => "unsubscribe",
            Kind::Unsubscribed => "unsubscribed",
        }
    }
}

/// What the server does after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// The state afterwards.
    pub state: SubState,
    /// Outbound: route the stanza to the contact. Inbound: deliver it to the user.
    pub forward: bool,
    /// Inbound only: answer the contact on the user's behalf with this type (a request from
    /// an already-subscribed or pre-approved contact is approved at once, §3.1.3).
    pub auto_reply: Option<Kind>,
}

/// The user sent `kind` to the contact (RFC 6121 A.2; §3.1.2, §3.2.2, §3.3.2, §3.4).
pub fn outbound(s: SubState, kind: Kind) -> Step {
    let mut n = s;
    let forward = match kind {
        // A.2.1: a request is always routed (the contact's server may have lost it).
        Kind::Subscribe => {
            if !s.to {
                n.pending_out = true;
            }
            true
        }
        // A.2.3: an approval of a pending request; otherwise a pre-approval (§3.4).
        Kind::Subscribed => {
            if s.pending_in {
                n.pending_in = false;
                n.from = true;
                n.preapproved = false;
                true
            } else {
                if !s.from {
                    n.preapproved = true;
                }
                false
            }
        }
        // A.2.2: the user gives up its subscription or its request.
        Kind::Unsubscribe => {
            let had = s.to || s.pending_out;
            n.to = false;
            n.pending_out = false;
            had
        }
        // A.2.4: the user denies a request or cancels the contact's subscription; also
        // cancels a pre-approval.
        Kind::Unsubscribed => {
            let had = s.from || s.pending_in;
            n.from = false;
            n.pending_in = false;
            n.preapproved = false;
            had
        }
    };
    Step {
        state: n,
        forward,
        auto_reply: None,
    }
}

/// The contact sent `kind` to the user (RFC 6121 A.3; §3.1.3, §3.1.6, §3.2.3, §3.3.3).
pub fn inbound(s: SubState, kind: Kind) -> Step {
    let mut n = s;
    let mut auto_reply = None;
    let forward = match kind {
        // A.3.1: already subscribed → approve again without bothering the user; pre-approved
        // → approve and subscribe; already pending → nothing new.
        Kind::Subscribe => {
            if s.from {
                auto_reply = Some(Kind::Subscribed);
                false
            } else if s.preapproved {
                n.from = true;
                n.preapproved = false;
                auto_reply = Some(Kind::Subscribed);
                false
            } else if s.pending_in {
                false
            } else {
                n.pending_in = true;
                true
            }
        }
        // A.3.3: only an answer to the user's own request counts.
        Kind::Subscribed => {
            if s.pending_out && !s.to {
                n.pending_out = false;
                n.to = true;
                true
            } else {
                false
            }
        }
        // A.3.2: the contact gives up its subscription to the user (or its request).
        Kind::Unsubscribe => {
            let had = s.from || s.pending_in;
            n.from = false;
            n.pending_in = false;
            had
        }
        // A.3.4: the contact denies the user's request or cancels the user's subscription.
        Kind::Unsubscribed => {
            let had = s.to || s.pending_out;
            n.to = false;
            n.pending_out = false;
            had
        }
    };
    Step {
        state: n,
        forward,
        auto_reply,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nine states of RFC 6121 Appendix A, by name.
    fn state(name: &str) -> SubState {
        let (to, from, pending_out, pending_in) = match name {
            "None" => (false, false, false, false),
            "None + Pending Out" => (false, false, true, false),
            "None + Pending In" => (false, false, false, true),
            "None + Pending Out/In" => (false, false, true, true),
            "To" => (true, false, false, false),
            "To + Pending In" => (true, false, false, true),
            "From" => (false, true, false, false),
            "From + Pending Out" => (false, true, true, false),
            "Both" => (true, true, false, false),
            other => panic!("no state {other}"),
        };
        SubState {
            to,
            from,
            pending_out,
            pending_in,
            preapproved: false,
        }
    }

    /// One table: (existing state, forward?, new state or "" for no change).
    fn check(table: &str, f: fn(SubState, Kind) -> Step, kind: Kind, rows: &[(&str, bool, &str)]) {
        assert_eq!(rows.len(), 9, "{table}: every state has a row");
        for (from, forward, to) in rows {
            let s = state(from);
            let step = f(s, kind);
            let want = if to.is_empty() { *from } else { to };
            assert_eq!(step.state.name(), want, "{table}: from {from}");
            assert!(!step.state.preapproved, "{table}: from {from}");
            assert_eq!(step.forward, *forward, "{table}: forward from {from}");
            assert_eq!(
                state(want),
                SubState {
                    preapproved: false,
                    ..step.state
                },
                "{table}: {from}"
            );
        }
    }

    #[test]
    fn a_2_1_outbound_subscribe() {
        check(
            "A.2.1",
            outbound,
            Kind::Subscribe,
            &[
                ("None", true, "None + Pending Out"),
                ("None + Pending Out", true, ""),
                ("None + Pending In", true, "None + Pending Out/In"),
                ("None + Pending Out/In", true, ""),
                ("To", true, ""),
                ("To + Pending In", true, ""),
                ("From", true, "From + Pending Out"),
                ("From + Pending Out", true, ""),
                ("Both", true, ""),
            ],
        );
    }

    #[test]
    fn a_2_2_outbound_unsubscribe() {
        check(
            "A.2.2",
            outbound,
            Kind::Unsubscribe,
            &[
                ("None", false, ""),
                ("None + Pending Out", true, "None"),
                ("None + Pending In", false, ""),
                ("None + Pending Out/In", true, "None + Pending In"),
                ("To", true, "None"),
                ("To + Pending In", true, "None + Pending In"),
                ("From", false, ""),
                ("From + Pending Out", true, "From"),
                ("Both", true, "From"),
            ],
        );
    }

    #[test]
    fn a_2_3_outbound_subscribed() {
        // Rows that do not route make a pre-approval where the contact is not subscribed yet
        // (checked separately below).
        for (from, forward, to) in [
            ("None", false, ""),
            ("None + Pending Out", false, ""),
            ("None + Pending In", true, "From"),
            ("None + Pending Out/In", true, "From + Pending Out"),
            ("To", false, ""),
            ("To + Pending In", true, "Both"),
            ("From", false, ""),
            ("From + Pending Out", false, ""),
            ("Both", false, ""),
        ] {
            let step = outbound(state(from), Kind::Subscribed);
            let want = if to.is_empty() { from } else { to };
            assert_eq!(step.state.name(), want, "A.2.3 from {from}");
            assert_eq!(step.forward, forward, "A.2.3 forward from {from}");
            let s = state(from);
            assert_eq!(
                step.state.preapproved,
                !s.from && !s.pending_in,
                "pre-approval from {from}"
            );
        }
    }

    #[test]
    fn a_2_4_outbound_unsubscribed() {
        check(
            "A.2.4",
            outbound,
            Kind::Unsubscribed,
            &[
                ("None", false, ""),
                ("None + Pending Out", false, ""),
                ("None + Pending In", true, "None"),
                ("None + Pending Out/In", true, "None + Pending Out"),
                ("To", false, ""),
                ("To + Pending In", true, "To"),
                ("From", true, "None"),
                ("From + Pending Out", true, "None + Pending Out"),
                ("Both", true, "To"),
            ],
        );
    }

    #[test]
    fn a_3_1_inbound_subscribe() {
        check(
            "A.3.1",
            inbound,
            Kind::Subscribe,
            &[
                ("None", true, "None + Pending In"),
                ("None + Pending Out", true, "None + Pending Out/In"),
                ("None + Pending In", false, ""),
                ("None + Pending Out/In", false, ""),
                ("To", true, "To + Pending In"),
                ("To + Pending In", false, ""),
                ("From", false, ""),
                ("From + Pending Out", false, ""),
                ("Both", false, ""),
            ],
        );
        // Already subscribed: approved again on the user's behalf.
        for s in ["From", "From + Pending Out", "Both"] {
            assert_eq!(
                inbound(state(s), Kind::Subscribe).auto_reply,
                Some(Kind::Subscribed)
            );
        }
    }

    #[test]
    fn a_3_2_inbound_unsubscribe() {
        check(
            "A.3.2",
            inbound,
            Kind::Unsubscribe,
            &[
                ("None", false, ""),
                ("None + Pending Out", false, ""),
                ("None + Pending In", true, "None"),
                ("None + Pending Out/In", true, "None + Pending Out"),
                ("To", false, ""),
                ("To + Pending In", true, "To"),
                ("From", true, "None"),
                ("From + Pending Out", true, "None + Pending Out"),
                ("Both", true, "To"),
            ],
        );
    }

    #[test]
    fn a_3_3_inbound_subscribed() {
        check(
            "A.3.3",
            inbound,
            Kind::Subscribed,
            &[
                ("None", false, ""),
                ("None + Pending Out", true, "To"),
                ("None + Pending In", false, ""),
                ("None + Pending Out/In", true, "To + Pending In"),
                ("To", false, ""),
                ("To + Pending In", false, ""),
                ("From", false, ""),
                ("From + Pending Out", true, "Both"),
                ("Both", false, ""),
            ],
        );
    }

    #[test]
    fn a_3_4_inbound_unsubscribed() {
        check(
            "A.3.4",
            inbound,
            Kind::Unsubscribed,
            &[
                ("None", false, ""),
                ("None + Pending Out", true, "None"),
                ("None + Pending In", false, ""),
                ("None + Pending Out/In", true, "None + Pending In"),
                ("To", true, "None"),
                ("To + Pending In", true, "None + Pending In"),
                ("From", false, ""),
                ("From + Pending Out", true, "From"),
                ("Both", true, "From"),
            ],
        );
    }

    #[test]
    fn pre_approval_subscribes_the_contact_at_its_request() {
        let pre = outbound(state("None"), Kind::Subscribed).state;
        assert!(pre.preapproved);
        let step = inbound(pre, Kind::Subscribe);
        assert_eq!(step.state.name(), "From");
        assert!(!step.forward);
        assert_eq!(step.auto_reply, Some(Kind::Subscribed));
        // Cancelled by an outbound unsubscribed.
        assert!(!outbound(pre, Kind::Unsubscribed).state.preapproved);
    }
}
