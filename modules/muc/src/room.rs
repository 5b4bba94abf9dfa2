//! One room's state and what each occupant action makes of it (XEP-0045 §7), sans I/O:
//! every operation returns the stanzas to send, addressed, in the order they must go out.

use std::collections::{BTreeMap, VecDeque};

use openspimed_module_api::{Condition, Element, StanzaError, datetime, ns};
use serde::{Deserialize, Serialize};

use crate::config::{RoomConfig, Whois};
use crate::{NS_MUC, NS_USER};

/// A long-lived relation to the room (§5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Affiliation {
    /// Banned.
    Outcast,
    /// No affiliation.
    None,
    /// A member (enters members-only rooms).
    Member,
    /// An admin (moderates, manages members).
    Admin,
    /// An owner (configures, destroys).
    Owner,
}

impl Affiliation {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }
}

/// A role while in the room (§5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// May only listen (in a moderated room).
    Visitor,
    /// May speak.
    Participant,
    /// May kick, give voice, change the subject.
    Moderator,
}

impl Role {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }
}

/// Someone in the room, under one nick, from one or more sessions of one account (as
/// Prosody and ejabberd let several clients of one user share a nick).
#[derive(Clone, Debug)]
pub struct Occupant {
    /// The nick (the resource of the occupant's room JID).
    pub nick: String,
    /// The account's bare JID.
    pub bare: String,
    /// Each joined session's full JID and the presence it last sent the room.
    pub sessions: Vec<(String, Element)>,
    /// Its role.
    pub role: Role,
}

/// The subject and who set it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct Subject {
    /// The nick that set it (the `from` resource of the subject message).
    pub by: String,
    /// The text.
    pub text: String,
}

/// A message of the discussion history (§7.2.15).
#[derive(Clone, Debug)]
pub struct Past {
    /// Its stanza id (the room archive's).
    pub id: String,
    /// When the room got it.
    pub at_ms: i64,
    /// The message as broadcast (from the occupant's room JID, without `to`).
    pub stanza: Element,
}

/// What the service stores of a room.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Stored {
    /// The configuration.
    pub config: RoomConfig,
    /// Affiliations by bare JID (those of `none` left out).
    pub affiliations: BTreeMap<String, Affiliation>,
    /// The subject.
    pub subject: Option<Subject>,
    /// What occupant ids (XEP-0421) are made from besides the room and the account: random
    /// per room, so that ids tell nothing across rooms, and kept, so that they stay.
    pub salt: String,
}

/// A room.
#[derive(Debug)]
pub struct Room {
    /// Its bare JID.
    pub jid: String,
    /// Configuration, affiliations, subject: what survives a restart.
    pub stored: Stored,
    /// Locked until its owner configures it (§10.1.2): nobody else enters.
    pub locked: bool,
    /// Who is in it, in the order they entered.
    pub occupants: Vec<Occupant>,
    /// The last messages, oldest first, for those who enter.
    pub history: VecDeque<Past>,
}

/// The limits a service puts on its rooms.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Occupants per room.
    pub max_occupants: usize,
    /// History messages kept per room.
    pub max_history: usize,
}

/// A session asking to enter (or, already in, sending the room a presence).
#[derive(Clone, Copy, Debug)]
pub struct Entering<'a> {
    /// The session's full JID.
    pub full: &'a str,
    /// Its account's bare JID.
    pub bare: &'a str,
    /// The nick it asks for.
    pub nick: &'a str,
    /// The presence it sent.
    pub presence: &'a Element,
    /// Whether this presence created the room (status 201).
    pub created: bool,
}

/// What an occupant's presence to the room came to.
#[derive(Debug)]
pub struct Outcome {
    /// The stanzas to send, in order.
    pub out: Vec<Element>,
    /// Whether the room's stored state changed (to be saved).
    pub changed: bool,
}

/// XEP-0421's namespace.
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";

fn status(code: u16) -> Element {
    Element::new("status", NS_USER).with_attr("code", code.to_string())
}

fn deny(condition: Condition, text: &str) -> StanzaError {
    StanzaError::new(condition).with_text(text)
}

impl Room {
    /// A room as stored, with no occupants; `locked` for one just created.
    pub fn new(jid: String, stored: Stored, locked: bool) -> Room {
        Room {
            jid,
            stored,
            locked,
            occupants: Vec::new(),
            history: VecDeque::new(),
        }
    }

    /// `bare`'s affiliation.
    pub fn affiliation(&self, bare: &str) -> Affiliation {
        self.stored
            .affiliations
            .get(&bare.to_lowercase())
            .copied()
            .unwrap_or(Affiliation::None)
    }

    /// The occupant a session is, by its full JID.
    pub fn occupant_of(&self, full: &str) -> Option<&Occupant> {
        self.occupants
            .iter()
            .find(|o| o.sessions.iter().any(|(f, _)| f == full))
    }

    /// The occupant under `nick`.
    pub fn by_nick(&self, nick: &str) -> Option<&Occupant> {
        self.occupants.iter().find(|o| o.nick == nick)
    }

    /// Whether nobody is in the room.
    pub fn is_empty(&self) -> bool {
        self.occupants.is_empty()
    }

    fn room_jid(&self, nick: &str) -> String {
        format!("{}/{nick}", self.jid)
    }

    /// XEP-0421: the occupant id of the account `bare` in this room, the same whatever
    /// its nick or client, unrelated to its id in any other room.
    pub fn occupant_id(&self, bare: &str) -> String {
        use base64::Engine;
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [
            self.stored.salt.as_str(),
            self.jid.as_str(),
            &bare.to_lowercase(),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        base64::engine::general_purpose::STANDARD.encode(&h.finalize()[..18])
    }

    /// `stanza` with the occupant id of `bare`, and none other (§4: the service removes
    /// those a client put in, or anyone could pass for another).
    fn with_occupant_id(&self, stanza: &mut Element, bare: &str) {
        stanza.retain_children(|e| !e.is("occupant-id", NS_OCCUPANT_ID));
        stanza.push_child(
            Element::new("occupant-id", NS_OCCUPANT_ID).with_attr("id", self.occupant_id(bare)),
        );
    }

    /// The occupant's presence as `viewer` (a role) sees it: its last presence, from its
    /// room JID, with the muc#user item (the real JID to moderators, or to all in a
    /// non-anonymous room).
    fn presence_of(&self, o: &Occupant, session: &Element, to: &str, see_jid: bool) -> Element {
        let mut p = session.clone();
        p.set_attr("from", self.room_jid(&o.nick));
        p.set_attr("to", to);
        p.remove_attr("id");
        strip_muc(&mut p);
        let mut item = Element::new("item", NS_USER)
            .with_attr("affiliation", self.affiliation(&o.bare).as_str())
            .with_attr("role", o.role.as_str());
        if see_jid && let Some((full, _)) = o.sessions.first() {
            item.set_attr("jid", full.clone());
        }
        p.push_child(Element::new("x", NS_USER).with_child(item));
        self.with_occupant_id(&mut p, &o.bare);
        p
    }

    /// Whether an occupant with `role` sees real JIDs.
    fn sees_jids(&self, role: Role) -> bool {
        self.stored.config.whois == Whois::Anyone || role == Role::Moderator
    }

    /// Every session of every occupant: (full JID, the occupant's role).
    fn sessions(&self) -> Vec<(String, Role)> {
        self.occupants
            .iter()
            .flat_map(|o| o.sessions.iter().map(move |(f, _)| (f.clone(), o.role)))
            .collect()
    }

    /// `occupant`'s (current) presence to everyone, with `self_codes` added for its own
    /// sessions (110 and whatever the occasion adds).
    fn broadcast_presence(&self, nick: &str, self_codes: &[u16], out: &mut Vec<Element>) {
        let Some(o) = self.by_nick(nick) else { return };
        let Some((_, session)) = o.sessions.last() else {
            return;
        };
        for (to, role) in self.sessions() {
            let mut p = self.presence_of(o, session, &to, self.sees_jids(role));
            if o.sessions.iter().any(|(f, _)| *f == to) {
                add_codes(&mut p, &[110]);
                add_codes(&mut p, self_codes);
            }
            out.push(p);
        }
    }

    /// §7.2: `full` (of `bare`) enters as `nick` with `presence`, or, already in, updates
    /// its presence (§7.7) or changes its nick (§7.6).
    pub fn enter(
        &mut self,
        who: Entering<'_>,
        now_ms: i64,
        limits: Limits,
    ) -> Result<Outcome, StanzaError> {
        let Entering {
            full,
            bare,
            nick,
            presence,
            created,
        } = who;
        if nick.is_empty() {
            return Err(deny(Condition::JidMalformed, "a nick is needed to enter"));
        }
        if let Some(current) = self.occupant_of(full).map(|o| o.nick.clone()) {
            if current == nick {
                return Ok(self.update(full, presence));
            }
            return self.change_nick(full, &current, nick, presence);
        }
        let affiliation = self.affiliation(bare);
        let c = &self.stored.config;
        if affiliation == Affiliation::Outcast {
            return Err(deny(Condition::Forbidden, "you are banned from this room"));
        }
        if self.locked && affiliation != Affiliation::Owner {
            // §10.1.2: a room not yet configured is not there for anyone else.
            return Err(deny(
                Condition::ItemNotFound,
                "the room is not configured yet",
            ));
        }
        if c.members_only && affiliation < Affiliation::Member {
            return Err(deny(
                Condition::RegistrationRequired,
                "the room is members-only",
            ));
        }
        let muc = presence.get_child("x", NS_MUC);
        if !c.password.is_empty() && affiliation < Affiliation::Admin {
            let given = muc
                .and_then(|x| x.get_child("password", NS_MUC))
                .map(Element::text);
            if given.as_deref() != Some(c.password.as_str()) {
                return Err(deny(Condition::NotAuthorized, "a password is needed"));
            }
        }
        match self.by_nick(nick) {
            Some(o) if !o.bare.eq_ignore_ascii_case(bare) => {
                return Err(deny(Condition::Conflict, "that nick is taken"));
            }
            Some(_) => {}
            None => {
                let max = match c.max_users as usize {
                    0 => limits.max_occupants,
                    n => n.min(limits.max_occupants),
                };
                if self.occupants.len() >= max && affiliation < Affiliation::Admin {
                    return Err(deny(Condition::ServiceUnavailable, "the room is full"));
                }
            }
        }
        let role = self.default_role(affiliation);
        let mut out = Vec::new();
        // 1. Who is there already, to the newcomer.
        for o in self.occupants.iter().filter(|o| o.nick != nick) {
            if let Some((_, session)) = o.sessions.last() {
                out.push(self.presence_of(o, session, full, self.sees_jids(role)));
            }
        }
        match self.occupants.iter_mut().find(|o| o.nick == nick) {
            // Another session of the same account, under its nick.
            Some(o) => o.sessions.push((full.to_owned(), presence.clone())),
            None => self.occupants.push(Occupant {
                nick: nick.to_owned(),
                bare: bare.to_lowercase(),
                sessions: vec![(full.to_owned(), presence.clone())],
                role,
            }),
        }
        // 2. The newcomer to everyone, itself with 110 and what the room tells it.
        let mut codes = Vec::new();
        if self.stored.config.whois == Whois::Anyone {
            codes.push(100);
        }
        if self.stored.config.archived {
            codes.push(170);
        }
        if created {
            codes.push(201);
        }
        self.broadcast_presence(nick, &codes, &mut out);
        // 3. History, as asked (§7.2.15), then 4. the subject, which ends the entering.
        out.extend(self.history_for(
            full,
            muc.and_then(|x| x.get_child("history", NS_MUC)),
            now_ms,
        ));
        let mut subject = Element::new("message", ns::CLIENT)
            .with_attr("type", "groupchat")
            .with_attr("to", full);
        match &self.stored.subject {
            Some(s) => {
                subject.set_attr("from", self.room_jid(&s.by));
                subject.push_child(Element::new("subject", ns::CLIENT).with_text(s.text.clone()));
            }
            None => {
                subject.set_attr("from", self.jid.clone());
                subject.push_child(Element::new("subject", ns::CLIENT));
            }
        }
        out.push(subject);
        Ok(Outcome {
            out,
            changed: false,
        })
    }

    /// The history a newcomer asked for: at most `maxstanzas` (and the room's length),
    /// none older than `seconds` or `since`.
    fn history_for(&self, to: &str, asked: Option<&Element>, now_ms: i64) -> Vec<Element> {
        let mut max = self.stored.config.history_length as usize;
        let mut oldest = i64::MIN;
        if let Some(h) = asked {
            if let Some(n) = h.attr("maxstanzas").and_then(|v| v.parse::<usize>().ok()) {
                max = max.min(n);
            }
            if let Some(s) = h.attr("seconds").and_then(|v| v.parse::<i64>().ok()) {
                oldest = oldest.max(now_ms - s.saturating_mul(1000));
            }
            if let Some(t) = h.attr("since").and_then(datetime::parse_ms) {
                oldest = oldest.max(t);
            }
        }
        let recent: Vec<&Past> = self.history.iter().filter(|p| p.at_ms >= oldest).collect();
        let skip = recent.len().saturating_sub(max);
        recent[skip..]
            .iter()
            .map(|p| {
                let mut m = p.stanza.clone();
                m.set_attr("to", to);
                m.push_child(
                    Element::new("delay", ns::DELAY)
                        .with_attr("from", self.jid.clone())
                        .with_attr("stamp", datetime::format_utc_ms(p.at_ms)),
                );
                m
            })
            .collect()
    }

    /// §7.7: a new presence of an occupant's session, to everyone.
    fn update(&mut self, full: &str, presence: &Element) -> Outcome {
        let mut nick = String::new();
        for o in &mut self.occupants {
            if let Some(s) = o.sessions.iter_mut().find(|(f, _)| f == full) {
                s.1 = presence.clone();
                // The latest presence is the one others see.
                let latest = s.clone();
                o.sessions.retain(|(f, _)| f != full);
                o.sessions.push(latest);
                nick = o.nick.clone();
            }
        }
        let mut out = Vec::new();
        self.broadcast_presence(&nick, &[], &mut out);
        Outcome {
            out,
            changed: false,
        }
    }

    /// §7.6: an occupant takes another nick: its old one goes (303, with the new nick),
    /// the new one comes.
    fn change_nick(
        &mut self,
        full: &str,
        old: &str,
        new: &str,
        presence: &Element,
    ) -> Result<Outcome, StanzaError> {
        if self.by_nick(new).is_some() {
            return Err(deny(Condition::Conflict, "that nick is taken"));
        }
        let Some(i) = self.occupants.iter().position(|o| o.nick == old) else {
            return Err(Condition::ItemNotFound.into());
        };
        if self.occupants[i].sessions.len() > 1 {
            return Err(deny(
                Condition::NotAcceptable,
                "another client of yours is in the room under this nick",
            ));
        }
        let mut out = Vec::new();
        let o = self.occupants[i].clone();
        for (to, role) in self.sessions() {
            let mut gone = Element::new("presence", ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_attr("from", self.room_jid(old))
                .with_attr("to", to.clone());
            let mut item = Element::new("item", NS_USER)
                .with_attr("affiliation", self.affiliation(&o.bare).as_str())
                .with_attr("role", o.role.as_str())
                .with_attr("nick", new);
            if self.sees_jids(role) {
                item.set_attr("jid", full);
            }
            let mut x = Element::new("x", NS_USER)
                .with_child(item)
                .with_child(status(303));
            if to == full {
                x.push_child(status(110));
            }
            gone.push_child(x);
            out.push(gone);
        }
        self.occupants[i].nick = new.to_owned();
        self.occupants[i].sessions[0].1 = presence.clone();
        self.broadcast_presence(new, &[], &mut out);
        Ok(Outcome {
            out,
            changed: false,
        })
    }

    /// §7.14: a session leaves (its unavailable presence, or its session ended). The
    /// occupant goes when its last session does.
    pub fn leave(&mut self, full: &str, presence: Option<&Element>) -> Outcome {
        let Some(i) = self
            .occupants
            .iter()
            .position(|o| o.sessions.iter().any(|(f, _)| f == full))
        else {
            return Outcome {
                out: Vec::new(),
                changed: false,
            };
        };
        let mut out = Vec::new();
        let o = self.occupants[i].clone();
        let mut gone = Element::new("presence", ns::CLIENT)
            .with_attr("type", "unavailable")
            .with_attr("from", self.room_jid(&o.nick));
        if let Some(s) = presence.and_then(|p| p.get_child("status", ns::CLIENT)) {
            gone.push_child(s.clone());
        }
        let affiliation = self.affiliation(&o.bare);
        let item = |see: bool| {
            let mut item = Element::new("item", NS_USER)
                .with_attr("affiliation", affiliation.as_str())
                .with_attr("role", "none");
            if see {
                item.set_attr("jid", full);
            }
            item
        };
        // The leaving session learns it (110); the others, only when the occupant goes.
        let mut own = gone.clone().with_attr("to", full);
        own.push_child(
            Element::new("x", NS_USER)
                .with_child(item(true))
                .with_child(status(110)),
        );
        out.push(own);
        self.occupants[i].sessions.retain(|(f, _)| f != full);
        if self.occupants[i].sessions.is_empty() {
            self.occupants.remove(i);
            for (to, role) in self.sessions() {
                let mut p = gone.clone().with_attr("to", to);
                p.push_child(Element::new("x", NS_USER).with_child(item(self.sees_jids(role))));
                out.push(p);
            }
        }
        Outcome {
            out,
            changed: false,
        }
    }

    /// §7.4 and §8.1: a groupchat message from `full`: a body to everyone (with the room's
    /// stanza id, kept for history), or a new subject. Returns what to send and, for a
    /// body, what the room archives.
    pub fn groupchat(
        &mut self,
        full: &str,
        message: &Element,
        id: &str,
        now_ms: i64,
        limits: Limits,
    ) -> Result<(Vec<Element>, Option<Past>, bool), StanzaError> {
        let Some(o) = self.occupant_of(full).cloned() else {
            return Err(deny(
                Condition::NotAcceptable,
                "only occupants speak in the room",
            ));
        };
        let body = message.get_child("body", ns::CLIENT).is_some();
        let subject = message.get_child("subject", ns::CLIENT);
        if o.role == Role::Visitor {
            return Err(deny(
                Condition::Forbidden,
                "visitors do not speak in a moderated room",
            ));
        }
        let mut changed = false;
        if let (Some(s), false) = (subject, body) {
            if !(o.role == Role::Moderator || self.stored.config.change_subject) {
                return Err(deny(
                    Condition::Forbidden,
                    "only moderators change the subject",
                ));
            }
            let text = s.text();
            self.stored.subject = (!text.is_empty()).then(|| Subject {
                by: o.nick.clone(),
                text,
            });
            changed = true;
        }
        let mut m = message.clone();
        m.remove_attr("to");
        m.set_attr("from", self.room_jid(&o.nick));
        crate::strip_ids_by(&mut m, &self.jid);
        self.with_occupant_id(&mut m, &o.bare);
        let archived = body.then(|| {
            m.push_child(
                Element::new("stanza-id", ns::SID)
                    .with_attr("by", self.jid.clone())
                    .with_attr("id", id),
            );
            Past {
                id: id.to_owned(),
                at_ms: now_ms,
                stanza: m.clone(),
            }
        });
        if let Some(p) = &archived {
            self.history.push_back(p.clone());
            while self.history.len() > limits.max_history {
                self.history.pop_front();
            }
        }
        let out = self
            .sessions()
            .into_iter()
            .map(|(to, _)| m.clone().with_attr("to", to))
            .collect();
        Ok((out, archived, changed))
    }

    /// §7.5: a private message from `full` to the occupant `nick`, to each of its sessions.
    pub fn private(
        &self,
        full: &str,
        nick: &str,
        message: &Element,
    ) -> Result<Vec<Element>, StanzaError> {
        let Some(from) = self.occupant_of(full) else {
            return Err(deny(
                Condition::NotAcceptable,
                "only occupants send private messages",
            ));
        };
        let Some(to) = self.by_nick(nick) else {
            return Err(deny(Condition::ItemNotFound, "nobody has that nick"));
        };
        let mut m = message.clone();
        m.set_attr("from", self.room_jid(&from.nick));
        self.with_occupant_id(&mut m, &from.bare);
        if m.get_child("x", NS_USER).is_none() {
            m.push_child(Element::new("x", NS_USER));
        }
        Ok(to
            .sessions
            .iter()
            .map(|(f, _)| m.clone().with_attr("to", f.clone()))
            .collect())
    }
}

/// What an admin iq changes (XEP-0045 §8–9): a role by nick, or an affiliation by JID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `<item nick='…' role='…'/>`; `None` is `role='none'`: a kick.
    Role {
        /// The occupant.
        nick: String,
        /// The new role.
        role: Option<Role>,
    },
    /// `<item jid='…' affiliation='…'/>`.
    Affiliation {
        /// The account (bare JID).
        jid: String,
        /// The new affiliation.
        affiliation: Affiliation,
    },
}

impl Room {
    /// The removal of every session of occupant `i`, with `codes` (307 kicked, 301
    /// banned, 321 no longer a member): its sessions learn it with 110 too.
    fn remove(&mut self, i: usize, codes: &[u16], reason: Option<&str>) -> Vec<Element> {
        let o = self.occupants.remove(i);
        let affiliation = self.affiliation(&o.bare);
        let mut out = Vec::new();
        let mut targets: Vec<(String, bool, bool)> = o
            .sessions
            .iter()
            .map(|(f, _)| (f.clone(), true, true))
            .collect();
        targets.extend(
            self.sessions()
                .into_iter()
                .map(|(f, role)| (f, false, self.sees_jids(role))),
        );
        for (to, own, see) in targets {
            let mut item = Element::new("item", NS_USER)
                .with_attr("affiliation", affiliation.as_str())
                .with_attr("role", "none");
            if see && let Some((full, _)) = o.sessions.first() {
                item.set_attr("jid", full.clone());
            }
            if let Some(r) = reason {
                item.push_child(Element::new("reason", NS_USER).with_text(r));
            }
            let mut x = Element::new("x", NS_USER).with_child(item);
            for c in codes {
                x.push_child(status(*c));
            }
            if own {
                x.push_child(status(110));
            }
            out.push(
                Element::new("presence", ns::CLIENT)
                    .with_attr("type", "unavailable")
                    .with_attr("from", self.room_jid(&o.nick))
                    .with_attr("to", to)
                    .with_child(x),
            );
        }
        out
    }

    /// The role an occupant of `affiliation` has by right.
    fn default_role(&self, affiliation: Affiliation) -> Role {
        if affiliation >= Affiliation::Admin {
            Role::Moderator
        } else if self.stored.config.moderated && affiliation < Affiliation::Member {
            Role::Visitor
        } else {
            Role::Participant
        }
    }

    /// §8–10: `actor` (a session in the room, or an account with an affiliation) changes
    /// a role or an affiliation. Returns what to send and whether the stored room changed.
    pub fn apply(
        &mut self,
        actor_full: &str,
        actor_bare: &str,
        change: &Change,
        reason: Option<&str>,
    ) -> Result<(Vec<Element>, bool), StanzaError> {
        let mine = self.affiliation(actor_bare);
        match change {
            Change::Role { nick, role } => {
                let moderator = self
                    .occupant_of(actor_full)
                    .is_some_and(|o| o.role == Role::Moderator);
                if !moderator {
                    return Err(deny(Condition::Forbidden, "only moderators change roles"));
                }
                let Some(i) = self.occupants.iter().position(|o| &o.nick == nick) else {
                    return Err(deny(Condition::ItemNotFound, "nobody has that nick"));
                };
                let theirs = self.affiliation(&self.occupants[i].bare);
                // §8.2, §8.6: nobody takes moderation or the room from an admin or owner;
                // only admins and owners make moderators.
                if theirs >= Affiliation::Admin && *role != Some(Role::Moderator) {
                    return Err(deny(
                        Condition::NotAllowed,
                        "admins and owners keep their role",
                    ));
                }
                if *role == Some(Role::Moderator) && mine < Affiliation::Admin {
                    return Err(deny(
                        Condition::Forbidden,
                        "only admins and owners make moderators",
                    ));
                }
                match role {
                    None => Ok((self.remove(i, &[307], reason), false)),
                    Some(r) => {
                        self.occupants[i].role = *r;
                        let nick = nick.clone();
                        let mut out = Vec::new();
                        self.broadcast_presence(&nick, &[], &mut out);
                        Ok((out, false))
                    }
                }
            }
            Change::Affiliation { jid, affiliation } => {
                let jid = jid.to_lowercase();
                let theirs = self.affiliation(&jid);
                let allowed = match mine {
                    Affiliation::Owner => true,
                    // §9: an admin manages members and outcasts below it.
                    Affiliation::Admin => {
                        theirs < Affiliation::Admin && *affiliation < Affiliation::Admin
                    }
                    _ => false,
                };
                if !allowed {
                    return Err(deny(
                        Condition::Forbidden,
                        "you may not change that affiliation",
                    ));
                }
                let owners = self
                    .stored
                    .affiliations
                    .values()
                    .filter(|a| **a == Affiliation::Owner)
                    .count();
                if theirs == Affiliation::Owner && *affiliation != Affiliation::Owner && owners == 1
                {
                    // §10.6: a room keeps an owner.
                    return Err(deny(Condition::Conflict, "the room needs an owner"));
                }
                if *affiliation == Affiliation::None {
                    self.stored.affiliations.remove(&jid);
                } else {
                    self.stored.affiliations.insert(jid.clone(), *affiliation);
                }
                let mut out = Vec::new();
                let present: Vec<usize> = self
                    .occupants
                    .iter()
                    .enumerate()
                    .filter(|(_, o)| o.bare == jid)
                    .map(|(i, _)| i)
                    .collect();
                for i in present.into_iter().rev() {
                    if *affiliation == Affiliation::Outcast {
                        out.extend(self.remove(i, &[301], reason));
                    } else if self.stored.config.members_only && *affiliation < Affiliation::Member
                    {
                        out.extend(self.remove(i, &[321], reason));
                    } else {
                        self.occupants[i].role = self.default_role(*affiliation);
                        let nick = self.occupants[i].nick.clone();
                        self.broadcast_presence(&nick, &[], &mut out);
                    }
                }
                Ok((out, true))
            }
        }
    }

    /// §9.5, §8.5: the list of those with `affiliation` (admins and owners ask), or the
    /// occupants with `role` (moderators ask), as admin items.
    pub fn list(
        &self,
        actor_full: &str,
        actor_bare: &str,
        affiliation: Option<Affiliation>,
        role: Option<Role>,
    ) -> Result<Vec<Element>, StanzaError> {
        if let Some(a) = affiliation {
            if self.affiliation(actor_bare) < Affiliation::Admin {
                return Err(deny(
                    Condition::Forbidden,
                    "admins and owners see the lists",
                ));
            }
            return Ok(self
                .stored
                .affiliations
                .iter()
                .filter(|(_, v)| **v == a)
                .map(|(jid, v)| {
                    Element::new("item", crate::NS_ADMIN)
                        .with_attr("affiliation", v.as_str())
                        .with_attr("jid", jid.clone())
                })
                .collect());
        }
        let moderator = self
            .occupant_of(actor_full)
            .is_some_and(|o| o.role == Role::Moderator);
        if !moderator {
            return Err(deny(Condition::Forbidden, "moderators see the roles"));
        }
        Ok(self
            .occupants
            .iter()
            .filter(|o| Some(o.role) == role)
            .map(|o| {
                let mut item = Element::new("item", crate::NS_ADMIN)
                    .with_attr("affiliation", self.affiliation(&o.bare).as_str())
                    .with_attr("role", o.role.as_str())
                    .with_attr("nick", o.nick.clone());
                if let Some((full, _)) = o.sessions.first() {
                    item.set_attr("jid", full.clone());
                }
                item
            })
            .collect())
    }
}

impl Room {
    /// §7.8.2: mediated invitations in `x` (a muc#user payload) from `actor`, to each
    /// invitee from the room; in a members-only room an admin's invitee becomes a member
    /// (as Prosody and ejabberd do). Declines (§7.8.3) go back to the inviter named.
    pub fn invite(
        &mut self,
        actor_full: &str,
        actor_bare: &str,
        x: &Element,
    ) -> Result<(Vec<Element>, bool), StanzaError> {
        let mine = self.affiliation(actor_bare);
        let mut out = Vec::new();
        let mut changed = false;
        for d in x.children().filter(|c| c.is("decline", NS_USER)) {
            let Some(to) = d.attr("to") else { continue };
            let mut decline = Element::new("decline", NS_USER).with_attr("from", actor_bare);
            if let Some(r) = d.get_child("reason", NS_USER) {
                decline.push_child(r.clone());
            }
            out.push(
                Element::new("message", ns::CLIENT)
                    .with_attr("from", self.jid.clone())
                    .with_attr("to", to)
                    .with_child(Element::new("x", NS_USER).with_child(decline)),
            );
        }
        let invites: Vec<&Element> = x.children().filter(|c| c.is("invite", NS_USER)).collect();
        if invites.is_empty() {
            return Ok((out, false));
        }
        if self.occupant_of(actor_full).is_none() {
            return Err(deny(Condition::NotAcceptable, "only occupants invite"));
        }
        let may = mine >= Affiliation::Admin
            || (self.stored.config.allow_invites
                && (!self.stored.config.members_only || mine >= Affiliation::Member));
        if !may {
            return Err(deny(
                Condition::Forbidden,
                "you may not invite to this room",
            ));
        }
        for inv in invites {
            let Some(to) = inv
                .attr("to")
                .and_then(|t| openspimed_module_api::jid::Jid::new(t).ok())
            else {
                return Err(deny(
                    Condition::JidMalformed,
                    "an invitation names whom it invites",
                ));
            };
            let invitee = to.to_bare().to_string();
            if self.stored.config.members_only
                && mine >= Affiliation::Admin
                && self.affiliation(&invitee) < Affiliation::Member
            {
                self.stored
                    .affiliations
                    .insert(invitee.to_lowercase(), Affiliation::Member);
                changed = true;
            }
            let mut invite = Element::new("invite", NS_USER).with_attr("from", actor_full);
            if let Some(r) = inv.get_child("reason", NS_USER) {
                invite.push_child(r.clone());
            }
            let mut payload = Element::new("x", NS_USER).with_child(invite);
            if !self.stored.config.password.is_empty() {
                payload.push_child(
                    Element::new("password", NS_USER)
                        .with_text(self.stored.config.password.clone()),
                );
            }
            out.push(
                Element::new("message", ns::CLIENT)
                    .with_attr("from", self.jid.clone())
                    .with_attr("to", to.to_string())
                    .with_child(payload),
            );
        }
        Ok((out, changed))
    }

    /// §10.2: a new configuration: occupants learn of it (104), and a room that became
    /// members-only sends those without membership away (322).
    pub fn reconfigured(&mut self, was_members_only: bool) -> Vec<Element> {
        let mut out = Vec::new();
        if self.stored.config.members_only && !was_members_only {
            while let Some(i) = self
                .occupants
                .iter()
                .position(|o| self.affiliation(&o.bare) < Affiliation::Member)
            {
                out.extend(self.remove(i, &[322], None));
            }
        }
        for (to, _) in self.sessions() {
            out.push(
                Element::new("message", ns::CLIENT)
                    .with_attr("type", "groupchat")
                    .with_attr("from", self.jid.clone())
                    .with_attr("to", to)
                    .with_child(Element::new("x", NS_USER).with_child(status(104))),
            );
        }
        out
    }

    /// The server stops: every occupant is out, with 332 (§9.8's system shutdown).
    pub fn shut_down(&mut self) -> Vec<Element> {
        let mut out = Vec::new();
        while !self.occupants.is_empty() {
            let o = self.occupants.remove(0);
            for (to, _) in &o.sessions {
                out.push(
                    Element::new("presence", ns::CLIENT)
                        .with_attr("type", "unavailable")
                        .with_attr("from", self.room_jid(&o.nick))
                        .with_attr("to", to.clone())
                        .with_child(
                            Element::new("x", NS_USER)
                                .with_child(
                                    Element::new("item", NS_USER)
                                        .with_attr(
                                            "affiliation",
                                            self.affiliation(&o.bare).as_str(),
                                        )
                                        .with_attr("role", "none"),
                                )
                                .with_child(status(332))
                                .with_child(status(110)),
                        ),
                );
            }
        }
        out
    }

    /// §6.5: the occupants' room JIDs, to an occupant (others learn nothing of them).
    pub fn occupant_items(&self, asker: &str) -> Vec<Element> {
        if self.occupant_of(asker).is_none() {
            return Vec::new();
        }
        self.occupants
            .iter()
            .map(|o| Element::new("item", ns::DISCO_ITEMS).with_attr("jid", self.room_jid(&o.nick)))
            .collect()
    }

    /// §10.9: the owner destroys the room; every occupant learns it (with the alternate
    /// venue and reason `destroy` carries) and leaves.
    pub fn destroy(&mut self, destroy: &Element) -> Vec<Element> {
        let mut out = Vec::new();
        let mut notice = Element::new("destroy", NS_USER);
        if let Some(j) = destroy.attr("jid") {
            notice.set_attr("jid", j);
        }
        for c in destroy
            .children()
            .filter(|c| c.name() == "reason" || c.name() == "password")
        {
            notice.push_child(Element::new(c.name(), NS_USER).with_text(c.text()));
        }
        for (to, _) in self.sessions() {
            let Some(o) = self.occupant_of(&to) else {
                continue;
            };
            let x = Element::new("x", NS_USER)
                .with_child(
                    Element::new("item", NS_USER)
                        .with_attr("affiliation", "none")
                        .with_attr("role", "none"),
                )
                .with_child(notice.clone());
            out.push(
                Element::new("presence", ns::CLIENT)
                    .with_attr("type", "unavailable")
                    .with_attr("from", self.room_jid(&o.nick))
                    .with_attr("to", to.clone())
                    .with_child(x),
            );
        }
        self.occupants.clear();
        out
    }
}

/// The affiliation named `s`.
pub fn affiliation_named(s: &str) -> Option<Affiliation> {
    Some(match s {
        "owner" => Affiliation::Owner,
        "admin" => Affiliation::Admin,
        "member" => Affiliation::Member,
        "none" => Affiliation::None,
        "outcast" => Affiliation::Outcast,
        _ => return None,
    })
}

/// The role named `s` (`none`: `Some(None)`).
pub fn role_named(s: &str) -> Option<Option<Role>> {
    Some(match s {
        "moderator" => Some(Role::Moderator),
        "participant" => Some(Role::Participant),
        "visitor" => Some(Role::Visitor),
        "none" => None,
        _ => return None,
    })
}

/// Adds status codes to the muc#user payload of `p`.
fn add_codes(p: &mut Element, codes: &[u16]) {
    for c in p.children_mut() {
        if c.is("x", NS_USER) {
            for code in codes {
                c.push_child(status(*code));
            }
            return;
        }
    }
}

/// Removes the client's `<x xmlns='http://jabber.org/protocol/muc'/>` (its password and
/// history wishes are nobody else's business).
fn strip_muc(p: &mut Element) {
    p.retain_children(|e| e.ns() != NS_MUC && e.ns() != NS_USER);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn past(id: &str, at_ms: i64) -> Past {
        Past {
            id: id.into(),
            at_ms,
            stanza: Element::new("message", ns::CLIENT)
                .with_attr("from", "r@muc.example/n")
                .with_child(Element::new("body", ns::CLIENT).with_text(id)),
        }
    }

    fn ids(out: Vec<Element>) -> Vec<String> {
        out.iter()
            .map(|m| m.get_child("body", ns::CLIENT).unwrap().text())
            .collect()
    }

    #[test]
    fn history_is_cut_by_count_age_and_date() {
        let mut r = Room::new("r@muc.example".into(), Stored::default(), false);
        for (i, at) in [1_000_000, 2_000_000, 3_000_000].into_iter().enumerate() {
            r.history.push_back(past(&format!("h{i}"), at));
        }
        let h = |xml: &str| Element::parse(xml).unwrap();
        let now = 3_000_500;
        assert_eq!(ids(r.history_for("me", None, now)), ["h0", "h1", "h2"]);
        let two = h("<history xmlns='http://jabber.org/protocol/muc' maxstanzas='2'/>");
        assert_eq!(ids(r.history_for("me", Some(&two), now)), ["h1", "h2"]);
        let recent = h("<history xmlns='http://jabber.org/protocol/muc' seconds='1500'/>");
        assert_eq!(ids(r.history_for("me", Some(&recent), now)), ["h1", "h2"]);
        let since = format!(
            "<history xmlns='http://jabber.org/protocol/muc' since='{}'/>",
            datetime::format_utc_ms(2_500_000)
        );
        assert_eq!(ids(r.history_for("me", Some(&h(&since)), now)), ["h2"]);
        let none = h("<history xmlns='http://jabber.org/protocol/muc' maxstanzas='0'/>");
        assert!(r.history_for("me", Some(&none), now).is_empty());
        // The room's own length bounds what anyone asks.
        r.stored.config.history_length = 1;
        assert_eq!(ids(r.history_for("me", None, now)), ["h2"]);
        let out = r.history_for("me", None, now);
        assert!(out[0].get_child("delay", ns::DELAY).is_some());
        assert_eq!(out[0].attr("to"), Some("me"));
    }
}
