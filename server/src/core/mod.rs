//! The routing core: what every session and module stands on, and nothing that knows a
//! session loop, IM or the composition root.
//!
//! - [`router`]: where a stanza goes (modules, the registry's sessions, federation through
//!   the [`router::Remote`] trait, errors) and the session registry;
//! - [`mount`]: building module instances per host and switching the routing tables;
//! - [`shared`]: the state the sessions share (configuration in force, accounts, TLS,
//!   the router), and the reload of hosts and certificates.

pub mod hooks;
pub mod mount;
pub mod router;
pub mod shared;
