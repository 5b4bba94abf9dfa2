//! openspimed: an XMPP server that hosts the OpenSpime network.
//!
//! # Layout
//! - [`xml`]: sans-IO stream parsing (rxml), restricted XML and limits;
//! - [`c2s`]: client connections: STARTTLS or direct TLS, SASL, binding, the session loop;
//! - [`tls`]: rustls configurations, certificate per virtual host by SNI;
//! - [`ibr`]: XEP-0077 in-band registration, password change and account removal;
//! - [`sasl`]: SCRAM (with `tls-exporter` channel binding) and PLAIN over rsasl,
//!   credentials as SCRAM keys only, failure throttling;
//! - [`core`]: the routing core: [`core::router`] (where a stanza goes: modules, the
//!   session registry, federation behind [`core::router::Remote`], errors),
//!   [`core::mount`] (module instances per host) and [`core::shared`] (what every session
//!   shares); it imports no session loop and not the composition root;
//! - [`s2s`]: server-to-server streams, SASL EXTERNAL and dialback, the outgoing links;
//! - [`im`]: RFC 6121 (rosters, subscriptions, presence, offline), blocking, vCards;
//! - [`storage`]: narrow storage traits and their SQLite implementation;
//! - [`error`]: the one place internal failures become stream or stanza errors;
//! - [`telemetry`]: Prometheus metrics and the `/metrics` endpoint;
//! - [`server`]: start-up (storage, certificates, modules, listeners) and shutdown;
//! - [`cli`]: the command line (`run`, `check`, account administration).
//!
//! # The path of a stanza
//! socket → [`c2s`] `Conn` → [`xml::StreamParser`] → element → `c2s::inbound` (checks,
//! `from` stamped) → [`core::router::Router::route`] → module handler, IM, a local
//! session's outbox, or [`core::router::Remote`] (s2s) → that session's `Conn` → socket.

pub mod c2s;
pub mod cli;
pub mod control;
pub mod core;
pub mod error;
pub mod ibr;
pub mod im;
pub mod s2s;
pub mod sasl;
pub mod server;
pub mod sm;
pub mod storage;
mod stream;
pub mod telemetry;
pub mod tls;
pub mod xml;

pub use server::{RunningServer, StartError, start};
