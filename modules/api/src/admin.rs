//! Admin subcommands a module supplies to the `openspimed` command line, as the
//! certification service supplies `openspimed keys` and the ScopeNodes `openspimed
//! scopenode` and `openspimed data` (ejabberd's modules register `ejabberdctl` commands
//! the same way). They run in the admin's process against the server's storage (SQLite
//! lets them beside a running server), never through the network.

use std::sync::Arc;

use crate::future::BoxFuture;
use crate::storage::ModuleStorage;

/// What an admin subcommand runs against.
pub struct AdminContext {
    /// The hosts that enable the module, in configuration order.
    pub hosts: Vec<String>,
    /// `[modules.NAME]` (empty when absent).
    pub options: toml::Table,
    /// The server's storage.
    pub storage: Arc<dyn ModuleStorage>,
}

/// One `openspimed NAME …` subcommand.
pub trait AdminCommand: Send + Sync {
    /// The subcommand (`keys`).
    fn name(&self) -> &'static str;
    /// One line for `openspimed --help`.
    fn about(&self) -> &'static str;
    /// Runs `openspimed NAME ARGS…` (`args` without the name) and prints what it has to
    /// say; `Err` is the error, one line per problem, printed by the caller, which then
    /// exits with a failure.
    fn run(&self, args: Vec<String>, cx: AdminContext) -> BoxFuture<'static, Result<(), String>>;
}
