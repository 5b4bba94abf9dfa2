//! The contract between openspimed and its modules.
//!
//! A module ([`Module`]) declares what it handles ([`Route`]), gets stanzas as [`Element`]
//! trees with authenticated addresses, and answers with an [`Outcome`]. It reaches the
//! server only through [`Context`]. Nothing here touches sockets.

pub mod admin;
pub mod future;
pub mod hooks;
pub mod module;
pub mod options;
pub mod storage;

pub use async_trait::async_trait;
// The stanza tree is its own crate (shared with the OpenSpime library and the spime
// client); modules reach it through here as before.
pub use admin::{AdminCommand, AdminContext};
pub use future::BoxFuture;
pub use hooks::{
    AccountHook, AccountTarget, ClientSession, Flow, FromClientHook, Hooks, Kinds, PreAuthHook,
    PrivacyHook, RosterHook, SessionHook, StreamFeaturesHook, ToAccountHook, ToOfflineHook,
    ToSessionHook, Unauthenticated,
};
pub use module::{
    BoundSession, Context, Created, Identity, Interest, IqError, Module, ModuleError,
    ModuleFactory, Outcome, Route, ServerHandle,
};
pub use openspimed_stanza::{
    Condition, Element, ErrorType, IqType, MessageType, Node, Ns, ParseError, PresenceType,
    StanzaError, StanzaKind, TreeBuilder, datetime, element, error, form, jid, kind, ns, rsm, sid,
    stanza,
};
pub use openspimed_stanza::{iq_payload, iq_result, reply_skeleton};
pub use storage::{
    ArchiveQuery, ArchiveStore, ArchivedItem, KvStore, ModuleStorage, StorageFailure,
};
pub use toml;
