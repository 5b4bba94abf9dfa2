//! The XMPP stanza tree: what the server, its modules, the OpenSpime library and the
//! `spime` client all speak, and nothing that needs a server.
//!
//! [`Element`] trees (parsed with rxml, written escaped), the namespace constants named
//! after their specifications ([`ns`]), stanza errors as values ([`StanzaError`]), reply
//! helpers ([`iq_result`], [`reply_skeleton`]), the stanza kinds as types ([`kind`]), JIDs ([`jid`], RFC 7622) and XEP-0082 dates
//! ([`datetime`]). Nothing here touches sockets.

pub mod datetime;
pub mod element;
pub mod error;
pub mod form;
pub mod kind;
pub mod ns;
pub mod rsm;
pub mod sid;
pub mod stanza;

pub use element::{Element, Node, Ns, ParseError, TreeBuilder};
pub use error::{Condition, ErrorType, StanzaError};
pub use jid;
pub use kind::{IqType, MessageType, PresenceType, StanzaKind};
pub use stanza::{iq_payload, iq_result, reply_skeleton};
