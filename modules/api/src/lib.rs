//! The contract between openspimed and its modules.
//!
//! A module ([`Module`]) declares what it handles ([`Route`]), gets stanzas as [`Element`]
//! trees with authenticated addresses, and answers with an [`Outcome`]. It reaches the
//! server only through [`Context`]. Nothing here touches sockets.

pub mod element;
pub mod error;
pub mod module;
pub mod ns;
pub mod options;
pub mod stanza;
pub mod storage;

pub use async_trait::async_trait;
pub use element::{Element, Node, Ns, ParseError, TreeBuilder};
pub use error::{Condition, ErrorType, StanzaError};
pub use jid;
pub use module::{
    BoxFuture, Context, Identity, IqError, Module, ModuleError, ModuleFactory, Outcome, Route,
    ServerHandle,
};
pub use stanza::{iq_payload, iq_result, reply_skeleton};
pub use storage::{
    AffiliationRecord, ItemRecord, KeyStore, ModuleStorage, NodeRecord, PubSubStore, SensorEntry,
    SensorStore, StorageFailure, StoredKey, SubscriptionRecord,
};
pub use toml;
