//! XEP-0045 Multi-User Chat on a conference service (`conference.HOST` by default), as
//! Prosody's `muc` component and ejabberd's `mod_muc` serve it: rooms are made by entering
//! them, locked until their owner configures them (an instant room with an empty form),
//! persistent ones kept with their configuration, affiliations and subject; entering sends
//! who is there, the newcomer with its status codes, the history asked for and the subject;
//! nick changes, leaving, group messages with the room's XEP-0359 stanza ids, private
//! messages between occupants, and service discovery of the service and its rooms.
//!
//! The room logic is sans I/O ([`room`]): it returns the stanzas to send, which the module
//! routes in order while it holds the room, so every occupant sees one order.

pub mod config;
pub mod room;
pub mod store;

use std::sync::Arc;

use dashmap::DashMap;
use openspimed_module_api::form::Form;
use openspimed_module_api::jid::Jid;
use openspimed_module_api::{
    Condition, Context, Element, Identity, IqType, MessageType, Module, ModuleError, ModuleFactory,
    Outcome, PresenceType, Route, StanzaError, StanzaKind, async_trait, datetime, iq_result, ns,
    options, toml,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use room::{Affiliation, Limits, Room};
use store::RoomStore;

pub use openspimed_module_api::sid::strip_by as strip_ids_by;

/// The name operators enable it under.
pub const NAME: &str = "muc";
/// XEP-0045's base namespace (the client's `<x/>` when entering, the feature).
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
/// `muc#user`: what occupants are told.
pub const NS_USER: &str = "http://jabber.org/protocol/muc#user";
/// `muc#owner`: room configuration.
pub const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// XEP-0410: the room answers a ping to one's own occupant JID itself.
pub const NS_SELF_PING: &str = "http://jabber.org/protocol/muc#self-ping-optimization";
/// `muc#admin`: roles and affiliations.
pub const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";

/// `[modules.muc]`, named after Prosody's and ejabberd's options where they have one.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// The service's address; `{host}` is the virtual host's name.
    pub service: String,
    /// Rooms one account may own (ejabberd's `max_rooms_per_user`... 0: no limit).
    pub max_rooms_per_user: usize,
    /// Occupants per room (ejabberd's `max_users`).
    pub max_occupants: usize,
    /// Messages of history a room keeps for those who enter (Prosody's
    /// `max_history_messages`).
    pub max_history: usize,
    /// Only accounts of the virtual host create rooms (Prosody's `restrict_room_creation
    /// = "local"`); others may still enter.
    pub local_creators_only: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            service: "conference.{host}".into(),
            max_rooms_per_user: 100,
            max_occupants: 1000,
            max_history: 50,
            local_creators_only: true,
        }
    }
}

/// Registers the `muc` module.
pub struct Factory;

impl ModuleFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }
    fn build(&self, host: &str, table: &toml::Table) -> Result<Arc<dyn Module>, ModuleError> {
        let options: Options = options::parse(NAME, table)?;
        let service = options.service.replace("{host}", host).to_lowercase();
        if Jid::new(&service)
            .map(|j| j.node().is_some() || j.resource().is_some())
            .unwrap_or(true)
        {
            return Err(ModuleError::Config {
                module: NAME,
                key: "service".into(),
                reason: format!("{service:?} is not a domain"),
            });
        }
        Ok(Arc::new(Muc {
            host: host.to_owned(),
            service,
            limits: Limits {
                max_occupants: options.max_occupants.max(1),
                max_history: options.max_history,
            },
            options,
            rooms: DashMap::new(),
            relayed: DashMap::new(),
            outbox: std::sync::OnceLock::new(),
        }))
    }
    fn option_keys(&self) -> Vec<String> {
        options::keys(&Options::default())
    }
}

/// The conference service of one host.
pub struct Muc {
    /// The virtual host.
    host: String,
    /// The service's domain.
    service: String,
    /// `[modules.muc]`.
    options: Options,
    /// The limits rooms get.
    limits: Limits,
    /// Rooms in memory (with occupants, or loaded), by their bare JID.
    rooms: DashMap<String, Arc<Mutex<Room>>>,
    /// Iqs relayed between occupants and not answered yet, by the id the room gave them:
    /// (the asker's full JID, its id, the room JID the answer comes to).
    relayed: DashMap<String, (String, String, String)>,
    /// The outgoing queue ([`Muc::outbox`]).
    outbox: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Out>>,
}

/// Relayed iqs waiting for their answer at most; more are refused (an occupant that
/// never answers must not grow the table without bound).
const MAX_RELAYED: usize = 10_000;

#[async_trait]
impl Module for Muc {
    fn name(&self) -> &'static str {
        NAME
    }
    fn routes(&self) -> Vec<Route> {
        vec![Route::Domain(self.service.clone())]
    }
    fn identities(&self) -> Vec<Identity> {
        Vec::new()
    }
    async fn stop(&self, cx: &Context) {
        let rooms: Vec<Arc<Mutex<Room>>> = self.rooms.iter().map(|e| e.value().clone()).collect();
        for room in rooms {
            let out = room.lock().await.shut_down();
            self.send_all(cx, out).await;
        }
        // The sessions close after this returns: the 332s must be on their way.
        self.flush(cx).await;
    }
    async fn handle(&self, cx: &Context, stanza: Element) -> Result<Outcome, ModuleError> {
        let to = stanza.attr("to").and_then(|t| Jid::new(t).ok());
        let Some(to) = to else {
            return Ok(Outcome::Error(Condition::JidMalformed.into()));
        };
        let Some(from) = stanza.attr("from").map(str::to_owned) else {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        };
        let store = RoomStore::new(cx, &self.service);
        let envelope = stanza.clone();
        let outcome = match to.node() {
            None => self.service_stanza(&store, &stanza).await?,
            Some(node) => {
                let room_jid = format!("{}@{}", node.as_str().to_lowercase(), self.service);
                let nick = to.resource().map(|r| r.as_str().to_owned());
                self.room_stanza(cx, &store, &room_jid, nick, &from, stanza)
                    .await?
            }
        };
        // Answers and errors queue behind what the room sent before them (a query's
        // results before its <fin/>, a configuration's 104 before its result).
        let answer = match outcome {
            Outcome::Reply(r) => Some(r),
            Outcome::Error(e) => e.reply_to(&envelope),
            Outcome::Handled => None,
        };
        if let Some(a) = answer {
            self.send_all(cx, vec![a]).await;
        }
        Ok(Outcome::Handled)
    }
}

fn internal(e: impl std::fmt::Display) -> ModuleError {
    ModuleError::Internal(e.to_string())
}

impl Muc {
    /// Stanzas to the service itself: its disco (XEP-0045 §6.1, §6.3).
    async fn service_stanza(
        &self,
        store: &RoomStore,
        stanza: &Element,
    ) -> Result<Outcome, ModuleError> {
        let Some(StanzaKind::Iq(Some(IqType::Get))) = StanzaKind::of(stanza) else {
            return Ok(match StanzaKind::of(stanza) {
                Some(k) if k.is_request() => Outcome::Error(Condition::ServiceUnavailable.into()),
                _ => Outcome::Handled,
            });
        };
        let Some(q) = stanza.first_child() else {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        };
        if q.is("query", ns::DISCO_INFO) && q.attr("node").is_none() {
            let mut info = Element::new("query", ns::DISCO_INFO).with_child(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("category", "conference")
                    .with_attr("type", "text")
                    .with_attr("name", "Chatrooms"),
            );
            for f in [
                ns::DISCO_INFO,
                ns::DISCO_ITEMS,
                NS_MUC,
                openspimed_module_api::ns::SID,
                room::NS_OCCUPANT_ID,
                NS_SELF_PING,
            ] {
                info.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
            }
            return Ok(Outcome::Reply(iq_result(stanza).with_child(info)));
        }
        if q.is("query", ns::DISCO_ITEMS) && q.attr("node").is_none() {
            // §6.3: the public rooms; hidden ones are not listed.
            let mut items = Element::new("query", ns::DISCO_ITEMS);
            for (jid, stored) in store.all().await.map_err(internal)? {
                if stored.config.public {
                    let mut item =
                        Element::new("item", ns::DISCO_ITEMS).with_attr("jid", jid.clone());
                    if !stored.config.name.is_empty() {
                        item.set_attr("name", stored.config.name.clone());
                    }
                    items.push_child(item);
                }
            }
            for entry in self.rooms.iter() {
                let room = entry.value().lock().await;
                if !room.stored.config.persistent && room.stored.config.public && !room.locked {
                    items.push_child(
                        Element::new("item", ns::DISCO_ITEMS).with_attr("jid", room.jid.clone()),
                    );
                }
            }
            return Ok(Outcome::Reply(iq_result(stanza).with_child(items)));
        }
        Ok(Outcome::Error(Condition::FeatureNotImplemented.into()))
    }

    /// The room `jid` in memory, loaded from the store if it is kept there; `None` if it
    /// does not exist.
    async fn room(
        &self,
        store: &RoomStore,
        jid: &str,
    ) -> Result<Option<Arc<Mutex<Room>>>, ModuleError> {
        if let Some(r) = self.rooms.get(jid) {
            return Ok(Some(r.clone()));
        }
        let Some(stored) = store.get(jid).await.map_err(internal)? else {
            return Ok(None);
        };
        let mut room = Room::new(jid.to_owned(), stored, false);
        room.history = store
            .history(jid, self.limits.max_history)
            .await
            .map_err(internal)?;
        let room = Arc::new(Mutex::new(room));
        Ok(Some(
            self.rooms.entry(jid.to_owned()).or_insert(room).clone(),
        ))
    }

    async fn room_stanza(
        &self,
        cx: &Context,
        store: &RoomStore,
        room_jid: &str,
        nick: Option<String>,
        from: &str,
        stanza: Element,
    ) -> Result<Outcome, ModuleError> {
        let kind = StanzaKind::of(&stanza);
        let from_bare = Jid::new(from)
            .map(|j| j.to_bare().to_string())
            .unwrap_or_default();
        let now = datetime::now_ms();
        let existing = self.room(store, room_jid).await?;
        // Entering a room that does not exist creates it (§10.1.1).
        let entering = matches!(
            kind,
            Some(StanzaKind::Presence(Some(PresenceType::Available)))
        ) && nick.is_some();
        let (room, created) = match existing {
            Some(r) => (r, false),
            None if entering => {
                if let Some(err) = self.may_create(store, &from_bare).await? {
                    return Ok(Outcome::Error(err));
                }
                let mut stored = room::Stored {
                    salt: format!("{:032x}", rand::random::<u128>()),
                    ..room::Stored::default()
                };
                stored
                    .affiliations
                    .insert(from_bare.to_lowercase(), Affiliation::Owner);
                let room = Arc::new(Mutex::new(Room::new(room_jid.to_owned(), stored, true)));
                (
                    self.rooms
                        .entry(room_jid.to_owned())
                        .or_insert(room)
                        .clone(),
                    true,
                )
            }
            None => {
                return Ok(match kind {
                    Some(k) if k.is_request() || matches!(k, StanzaKind::Message(_)) => {
                        Outcome::Error(
                            StanzaError::new(Condition::ItemNotFound).with_text("no such room"),
                        )
                    }
                    _ => Outcome::Handled,
                });
            }
        };
        let mut r = room.lock().await;
        let outcome = match (kind, nick) {
            (Some(StanzaKind::Presence(Some(PresenceType::Available))), Some(nick)) => {
                let who = room::Entering {
                    full: from,
                    bare: &from_bare,
                    nick: &nick,
                    presence: &stanza,
                    created,
                };
                match r.enter(who, now, self.limits) {
                    Ok(o) => {
                        self.send_all(cx, o.out).await;
                        Outcome::Handled
                    }
                    Err(e) => {
                        if created {
                            self.rooms.remove(room_jid);
                        }
                        Outcome::Error(e)
                    }
                }
            }
            (Some(StanzaKind::Presence(Some(PresenceType::Unavailable))), _) => {
                let o = r.leave(from, Some(&stanza));
                self.send_all(cx, o.out).await;
                Outcome::Handled
            }
            (Some(StanzaKind::Presence(_)), _) => Outcome::Handled,
            (Some(StanzaKind::Message(MessageType::Groupchat)), None) => {
                let id = openspimed_mod_mam::archivable::new_id();
                match r.groupchat(from, &stanza, &id, now, self.limits) {
                    Ok((out, archived, changed)) => {
                        if let Some(past) = archived
                            && r.stored.config.archived
                        {
                            // Durable before anyone is told (what an acknowledged message
                            // needs to survive a crash).
                            store.archive(room_jid, &past).await.map_err(internal)?;
                        }
                        if changed && r.stored.config.persistent {
                            store.put(room_jid, &r.stored).await.map_err(internal)?;
                        }
                        self.send_all(cx, out).await;
                        Outcome::Handled
                    }
                    Err(e) => Outcome::Error(e),
                }
            }
            (Some(StanzaKind::Message(MessageType::Groupchat)), Some(_)) => {
                // §7.5: group messages go to the room, not to an occupant.
                Outcome::Error(
                    StanzaError::new(Condition::BadRequest)
                        .with_text("send group messages to the room"),
                )
            }
            (Some(StanzaKind::Message(MessageType::Error)), _) => Outcome::Handled,
            (Some(StanzaKind::Message(_)), Some(nick)) => match r.private(from, &nick, &stanza) {
                Ok(out) => {
                    self.send_all(cx, out).await;
                    Outcome::Handled
                }
                Err(e) => Outcome::Error(e),
            },
            (Some(StanzaKind::Message(_)), None) => match stanza.get_child("x", NS_USER) {
                Some(x) => match r.invite(from, &from_bare, x) {
                    Ok((out, changed)) => {
                        if changed && r.stored.config.persistent {
                            store.put(room_jid, &r.stored).await.map_err(internal)?;
                        }
                        self.send_all(cx, out).await;
                        Outcome::Handled
                    }
                    Err(e) => Outcome::Error(e),
                },
                None => Outcome::Error(
                    StanzaError::new(Condition::BadRequest)
                        .with_text("to the room: group messages, invitations, declines"),
                ),
            },
            (Some(StanzaKind::Iq(Some(t))), None) if t.is_request() => {
                self.room_iq(cx, &mut r, store, from, &from_bare, &stanza, t)
                    .await?
            }
            (Some(StanzaKind::Iq(Some(t))), Some(nick)) if t.is_request() => {
                let ping = stanza
                    .get_child("ping", openspimed_module_api::ns::PING)
                    .is_some();
                let own = r.occupant_of(from).is_some_and(|o| o.nick == nick);
                if ping && (own || r.occupant_of(from).is_none()) {
                    self_ping(&r, from, &nick, &stanza)
                } else {
                    match self.relay(&r, from, &nick, stanza) {
                        Ok(out) => {
                            self.send_all(cx, vec![out]).await;
                            Outcome::Handled
                        }
                        Err(e) => Outcome::Error(e),
                    }
                }
            }
            (Some(StanzaKind::Iq(Some(_))), Some(nick)) => {
                // An answer to a relayed iq: back to the asker, from the answerer's nick.
                if let Some(answer) = self.relay_back(&r, &nick, from, stanza) {
                    self.send_all(cx, vec![answer]).await;
                }
                Outcome::Handled
            }
            _ => Outcome::Handled,
        };
        // A temporary room goes with its last occupant (§10.9's implicit destruction).
        if r.is_empty() && !r.stored.config.persistent && !created {
            drop(r);
            self.rooms.remove(room_jid);
        }
        Ok(outcome)
    }

    /// Iqs to the room: its disco (§6.4) and its configuration (§10.1–10.2).
    #[allow(clippy::too_many_arguments)]
    async fn room_iq(
        &self,
        cx: &Context,
        r: &mut Room,
        store: &RoomStore,
        from: &str,
        from_bare: &str,
        iq: &Element,
        kind: IqType,
    ) -> Result<Outcome, ModuleError> {
        let Some(q) = iq.first_child() else {
            return Ok(Outcome::Error(Condition::BadRequest.into()));
        };
        let owner = r.affiliation(from_bare) == Affiliation::Owner;
        if q.is("query", ns::DISCO_INFO) && kind == IqType::Get {
            if r.locked && !owner {
                return Ok(Outcome::Error(Condition::ItemNotFound.into()));
            }
            let c = &r.stored.config;
            let mut info = Element::new("query", ns::DISCO_INFO).with_child(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("category", "conference")
                    .with_attr("type", "text")
                    .with_attr(
                        "name",
                        if c.name.is_empty() {
                            r.jid.clone()
                        } else {
                            c.name.clone()
                        },
                    ),
            );
            let mut features = c.features();
            features.extend([
                openspimed_module_api::ns::SID,
                room::NS_OCCUPANT_ID,
                NS_SELF_PING,
            ]);
            if c.archived {
                // XEP-0313 §5.1.2: the room's archive answers queries.
                features.extend([openspimed_mod_mam::NS, openspimed_mod_mam::NS_EXTENDED]);
            }
            for f in features {
                info.push_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", f));
            }
            return Ok(Outcome::Reply(iq_result(iq).with_child(info)));
        }
        if q.is("query", ns::DISCO_ITEMS) && kind == IqType::Get {
            // §6.5: occupants see who is in; those outside do not (the room may be
            // anonymous).
            let mut items = Element::new("query", ns::DISCO_ITEMS);
            for i in r.occupant_items(from) {
                items.push_child(i);
            }
            return Ok(Outcome::Reply(iq_result(iq).with_child(items)));
        }
        if q.is("query", NS_ADMIN) {
            return self.admin(cx, r, store, from, from_bare, iq, q, kind).await;
        }
        if q.is("query", openspimed_mod_mam::NS) {
            return self
                .archive_query(cx, r, store, from, from_bare, iq, q, kind)
                .await;
        }
        if q.is("query", NS_OWNER) {
            if !owner {
                return Ok(Outcome::Error(
                    StanzaError::new(Condition::Forbidden).with_text("owners only"),
                ));
            }
            if kind == IqType::Get {
                let form = r.stored.config.to_form();
                return Ok(Outcome::Reply(
                    iq_result(iq).with_child(Element::new("query", NS_OWNER).with_child(form)),
                ));
            }
            if let Some(d) = q.get_child("destroy", NS_OWNER) {
                let out = r.destroy(d);
                self.send_all(cx, out).await;
                self.rooms.remove(&r.jid);
                store.remove(&r.jid).await.map_err(internal)?;
                store.forget_log(&r.jid).await.map_err(internal)?;
                return Ok(Outcome::Reply(iq_result(iq)));
            }
            let Some(f) = Form::find(q) else {
                return Ok(Outcome::Error(
                    StanzaError::new(Condition::BadRequest).with_text("a form or a destroy"),
                ));
            };
            if f.kind == "cancel" {
                // §10.1.3: a cancelled initial configuration destroys the new room.
                if r.locked {
                    r.occupants.clear();
                }
                return Ok(Outcome::Reply(iq_result(iq)));
            }
            if f.form_type
                .as_deref()
                .is_some_and(|t| t != config::FORM_TYPE)
            {
                return Ok(Outcome::Error(
                    StanzaError::new(Condition::BadRequest)
                        .with_text("not a room configuration form"),
                ));
            }
            match r.stored.config.with_form(&f) {
                Ok(c) => {
                    let was_persistent = r.stored.config.persistent;
                    let was_members_only = r.stored.config.members_only;
                    let first = r.locked;
                    r.stored.config = c;
                    r.locked = false;
                    if !first {
                        let out = r.reconfigured(was_members_only);
                        self.send_all(cx, out).await;
                    }
                    if r.stored.config.persistent {
                        store.put(&r.jid, &r.stored).await.map_err(internal)?;
                    } else if was_persistent {
                        store.remove(&r.jid).await.map_err(internal)?;
                    }
                    let _ = from;
                    return Ok(Outcome::Reply(iq_result(iq)));
                }
                Err(e) => {
                    return Ok(Outcome::Error(
                        StanzaError::new(Condition::NotAcceptable).with_text(e),
                    ));
                }
            }
        }
        Ok(Outcome::Error(Condition::FeatureNotImplemented.into()))
    }

    /// XEP-0313 §5.1.2: a query of the room's archive, answered like an account's: the
    /// results from the room's JID to the asking session, then the `<fin/>`. Anyone may
    /// read the archive of an open room; a members-only room's is its members' (Prosody's
    /// `mod_muc_mam` rule), never an outcast's.
    #[allow(clippy::too_many_arguments)]
    async fn archive_query(
        &self,
        cx: &Context,
        r: &Room,
        store: &RoomStore,
        from: &str,
        from_bare: &str,
        iq: &Element,
        query: &Element,
        kind: IqType,
    ) -> Result<Outcome, ModuleError> {
        use openspimed_mod_mam::{query as mq, store as ms};
        let affiliation = r.affiliation(from_bare);
        let member = affiliation >= Affiliation::Member || r.occupant_of(from).is_some();
        if affiliation == Affiliation::Outcast || (r.stored.config.members_only && !member) {
            return Ok(Outcome::Error(
                StanzaError::new(Condition::Forbidden).with_text("the archive is the members'"),
            ));
        }
        if !r.stored.config.archived {
            return Ok(Outcome::Error(
                StanzaError::new(Condition::ServiceUnavailable)
                    .with_text("the room keeps no archive"),
            ));
        }
        if kind == IqType::Get {
            return Ok(Outcome::Reply(iq_result(iq).with_child(mq::form())));
        }
        let sizes = ms::Sizes::default();
        let found = ms::answer(store.log(), &r.jid, query, sizes, from, Some(&r.jid)).await;
        let found = match found {
            Ok(a) => a,
            Err(ms::AnswerError::Refused(e)) => return Ok(Outcome::Error(e)),
            Err(ms::AnswerError::Storage(e)) => return Err(internal(e)),
        };
        self.send_all(cx, found.results).await;
        Ok(Outcome::Reply(iq_result(iq).with_child(found.fin)))
    }

    /// §8–9: the admin iqs: a set changes roles or affiliations (each item in turn; the
    /// first refused one stops the rest), a get lists them.
    #[allow(clippy::too_many_arguments)]
    async fn admin(
        &self,
        cx: &Context,
        r: &mut Room,
        store: &RoomStore,
        from: &str,
        from_bare: &str,
        iq: &Element,
        query: &Element,
        kind: IqType,
    ) -> Result<Outcome, ModuleError> {
        let items: Vec<&Element> = query
            .children()
            .filter(|c| c.is("item", NS_ADMIN))
            .collect();
        let bad = |t: &str| {
            Ok(Outcome::Error(
                StanzaError::new(Condition::BadRequest).with_text(t.to_owned()),
            ))
        };
        if items.is_empty() {
            return bad("an item is needed");
        }
        if kind == IqType::Get {
            let item = items[0];
            let affiliation = item.attr("affiliation").and_then(room::affiliation_named);
            let role = item.attr("role").and_then(room::role_named).flatten();
            if affiliation.is_none() && role.is_none() {
                return bad("ask for an affiliation or a role");
            }
            return Ok(match r.list(from, from_bare, affiliation, role) {
                Ok(list) => {
                    let mut q = Element::new("query", NS_ADMIN);
                    for i in list {
                        q.push_child(i);
                    }
                    Outcome::Reply(iq_result(iq).with_child(q))
                }
                Err(e) => Outcome::Error(e),
            });
        }
        let mut changed = false;
        for item in items {
            let reason = item.get_child("reason", NS_ADMIN).map(Element::text);
            let change = match (item.attr("role"), item.attr("affiliation")) {
                (Some(role), None) => match (room::role_named(role), item.attr("nick")) {
                    (Some(role), Some(nick)) => room::Change::Role {
                        nick: nick.to_owned(),
                        role,
                    },
                    _ => return bad("a role change names a nick and a role"),
                },
                (None, Some(a)) => {
                    let jid = item
                        .attr("jid")
                        .and_then(|j| Jid::new(j).ok())
                        .map(|j| j.to_bare().to_string());
                    match (room::affiliation_named(a), jid) {
                        (Some(affiliation), Some(jid)) => {
                            room::Change::Affiliation { jid, affiliation }
                        }
                        _ => return bad("an affiliation change names a JID and an affiliation"),
                    }
                }
                _ => return bad("an item changes a role or an affiliation"),
            };
            match r.apply(from, from_bare, &change, reason.as_deref()) {
                Ok((out, c)) => {
                    changed |= c;
                    self.send_all(cx, out).await;
                }
                Err(e) => return Ok(Outcome::Error(e)),
            }
        }
        if changed && r.stored.config.persistent {
            store.put(&r.jid, &r.stored).await.map_err(internal)?;
        }
        Ok(Outcome::Reply(iq_result(iq)))
    }

    /// Why `bare` may not create a room here, if it may not.
    async fn may_create(
        &self,
        store: &RoomStore,
        bare: &str,
    ) -> Result<Option<StanzaError>, ModuleError> {
        let local = bare
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(&self.host));
        if self.options.local_creators_only && !local {
            return Ok(Some(
                StanzaError::new(Condition::NotAllowed)
                    .with_text("only local accounts create rooms here"),
            ));
        }
        if self.options.max_rooms_per_user > 0 {
            // Persistent rooms from the store, temporary ones from memory: both count.
            let me = bare.to_lowercase();
            let mut owned: std::collections::BTreeSet<String> = store
                .all()
                .await
                .map_err(internal)?
                .into_iter()
                .filter(|(_, s)| s.affiliations.get(&me) == Some(&Affiliation::Owner))
                .map(|(jid, _)| jid)
                .collect();
            let loaded: Vec<Arc<Mutex<Room>>> =
                self.rooms.iter().map(|e| e.value().clone()).collect();
            for room in loaded {
                let r = room.lock().await;
                if r.affiliation(&me) == Affiliation::Owner {
                    owned.insert(r.jid.clone());
                }
            }
            if owned.len() >= self.options.max_rooms_per_user {
                return Ok(Some(
                    StanzaError::new(Condition::NotAllowed)
                        .with_text("you own as many rooms as you may"),
                ));
            }
        }
        Ok(None)
    }

    /// Routes `out` in order.
    async fn send_all(&self, cx: &Context, out: Vec<Element>) {
        let tx = self.outbox(cx);
        for s in out {
            let _ = tx.send(Out::Stanza(s));
        }
    }

    /// The service's outgoing queue, made on first use. Everything the service sends goes
    /// through it, in the order it was queued, routed by a task of its own: a room is
    /// never held while its stanzas are routed, so one that comes straight back to it (a
    /// bounce from an occupant who blocked the room, a vCard answered by an occupant's
    /// server) cannot wait for the room that is waiting for it.
    fn outbox(&self, cx: &Context) -> tokio::sync::mpsc::UnboundedSender<Out> {
        self.outbox
            .get_or_init(|| {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Out>();
                let server = cx.server.clone();
                tokio::spawn(async move {
                    while let Some(out) = rx.recv().await {
                        match out {
                            Out::Stanza(s) => server.route(s).await,
                            Out::Flush(done) => {
                                let _ = done.send(());
                            }
                        }
                    }
                });
                tx
            })
            .clone()
    }

    /// Waits until everything queued so far was routed.
    async fn flush(&self, cx: &Context) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.outbox(cx).send(Out::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// What the service's outgoing queue carries.
enum Out {
    /// A stanza to route.
    Stanza(Element),
    /// Answered once what was queued before has been routed.
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Muc {
    /// §7.x private iqs: an occupant's iq to another occupant's room JID, relayed from the
    /// asker's room JID under an id of the room's; a vCard request goes to the occupant's
    /// account (its server answers for it, as Prosody relays them), the rest to its
    /// session.
    fn relay(&self, r: &Room, from: &str, nick: &str, iq: Element) -> Result<Element, StanzaError> {
        let Some(asker) = r.occupant_of(from) else {
            return Err(
                StanzaError::new(Condition::NotAcceptable).with_text("you are not in the room")
            );
        };
        let Some(target) = r.by_nick(nick) else {
            return Err(StanzaError::new(Condition::ItemNotFound).with_text("nobody has that nick"));
        };
        if self.relayed.len() >= MAX_RELAYED {
            return Err(StanzaError::new(Condition::ResourceConstraint)
                .with_type(openspimed_module_api::ErrorType::Wait));
        }
        let vcard = iq.get_child("vCard", "vcard-temp").is_some();
        let to = if vcard {
            target.bare.clone()
        } else {
            match target.sessions.first() {
                Some((full, _)) => full.clone(),
                None => return Err(Condition::ItemNotFound.into()),
            }
        };
        let id = format!("muc{:016x}", rand::random::<u64>());
        let original = iq.attr("id").unwrap_or("").to_owned();
        let back_to = format!("{}/{}", r.jid, asker.nick);
        self.relayed
            .insert(id.clone(), (from.to_owned(), original, back_to.clone()));
        let mut out = iq;
        out.set_attr("from", back_to);
        out.set_attr("to", to);
        out.set_attr("id", id);
        Ok(out)
    }

    /// The answer `iq` to a relayed iq, addressed to the asker's room JID `nick`: back to
    /// the asker with its own id, from the answerer's room JID. `None` for an answer the
    /// room did not ask for.
    fn relay_back(&self, r: &Room, nick: &str, from: &str, iq: Element) -> Option<Element> {
        let id = iq.attr("id")?.to_owned();
        let (_, (asker, original, back_to)) = self.relayed.remove(&id)?;
        if back_to != format!("{}/{nick}", r.jid) {
            return None;
        }
        // From the answerer's nick: its session, or its account for a vCard.
        let from_bare = Jid::new(from)
            .map(|j| j.to_bare().to_string())
            .unwrap_or_default();
        let answerer = r.occupant_of(from).or_else(|| {
            r.occupants
                .iter()
                .find(|o| o.bare.eq_ignore_ascii_case(&from_bare))
        })?;
        let mut out = iq;
        out.set_attr("from", format!("{}/{}", r.jid, answerer.nick));
        out.set_attr("to", asker);
        out.set_attr("id", original);
        Some(out)
    }
}

/// XEP-0410: a ping to one's own occupant JID is answered by the room: a result while
/// the session is in under that nick, `not-acceptable` when it is not. Iqs to other
/// occupants are not relayed.
fn self_ping(r: &Room, from: &str, nick: &str, iq: &Element) -> Outcome {
    let ping = iq
        .get_child("ping", openspimed_module_api::ns::PING)
        .is_some();
    let me = r.occupant_of(from);
    match (ping, me) {
        (true, Some(o)) if o.nick == nick => Outcome::Reply(iq_result(iq)),
        (true, None) => Outcome::Error(
            StanzaError::new(Condition::NotAcceptable).with_text("you are not in the room"),
        ),
        _ => Outcome::Error(
            StanzaError::new(Condition::FeatureNotImplemented)
                .with_text("iqs to occupants are not relayed"),
        ),
    }
}
