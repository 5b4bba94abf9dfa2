//! openspimed: an XMPP server that hosts the OpenSpime network.
//!
//! # Layout
//! - [`xml`]: sans-IO stream parsing (rxml), restricted XML and limits;
//! - [`c2s`]: client connections: STARTTLS or direct TLS, SASL, binding, the session loop;
//! - [`tls`]: rustls configurations, certificate per virtual host by SNI;
//! - [`sasl`]: SCRAM (with `tls-exporter` channel binding) and PLAIN over rsasl,
//!   credentials as SCRAM keys only, failure throttling;
//! - [`core`]: the routing core: [`core::router`] (where a stanza goes: modules, the
//!   session registry, federation behind [`core::router::Remote`], errors),
//!   [`core::hooks`] (the hook lists of `openspimed_module_api::hooks`: the server's own
//!   merged with each host's modules'), [`core::mount`] (module instances per host, their
//!   routes and hooks, swapped as a whole on reload) and [`core::shared`] (what every
//!   session shares); it imports no session loop, no module and not the composition
//!   root (IM is the module `openspimed-mod-im`, on every host unless a host disables
//!   it);
//! - [`s2s`]: server-to-server streams, SASL EXTERNAL and dialback, the outgoing links;
//! - [`storage`]: the accounts' store and the named key-value stores and archives modules
//!   open for themselves (each module keeps its own data in them: IM's rosters, the
//!   certification keys, PubSub, sensor readings), implemented for SQLite;
//! - [`error`]: the one place internal failures become stream or stanza errors;
//! - [`telemetry`]: Prometheus metrics and the `/metrics` endpoint;
//! - [`server`]: start-up (storage, certificates, modules, listeners) and shutdown;
//! - [`cli`]: the command line (`run`, `check`, account administration).
//!
//! # The path of a stanza
//! socket → [`c2s`] `Conn` → [`xml::StreamParser`] → element → `c2s::inbound` (stream
//! management, checks, `from` stamped) → the from-client hooks of the session's host (IM:
//! blocking, the user's roster/blocklist/vCard iqs, presence; registration; the host's
//! modules') → [`core::router::Router::route`] → a module's handler (by route), or
//! [`core::router::Remote`] (another domain: s2s), or, for a local account, the
//! to-account hooks of its host (IM: blocking, presence, vCard; modules') → a session's
//! outbox (or, with no resource available, the to-offline hook: IM stores it) → that
//! session's `Conn` → socket. Stanzas from other servers enter at `s2s::incoming` and join
//! at `route`.

pub mod c2s;
pub mod cli;
pub mod control;
pub mod core;
pub mod error;
pub mod s2s;
pub mod sasl;
pub mod server;
pub mod sm;
pub mod storage;
mod stream;
pub mod telemetry;
pub mod tls;
pub mod xml;

pub use server::{RunningServer, StartError, start, start_with_modules};
