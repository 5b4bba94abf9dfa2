//! The `openspimed` command line, one file per command group: `serve.rs` (`run`,
//! `reload`), `check.rs`, `accounts.rs` (`adduser`, `passwd`, `deluser`, `listusers`),
//! `admin.rs` (the subcommands modules supply: certsvc's `keys`, the ScopeNodes'
//! `scopenode` and `data`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use openspimed_config::Config;

mod accounts;
mod admin;
mod check;
mod serve;

use accounts::{deluser, listusers, set_password};
use check::check;
use serve::{reload, run};

/// openspimed: an XMPP server that hosts the OpenSpime network.
#[derive(Parser, Debug)]
#[command(name = "openspimed", version, about)]
pub struct Cli {
    /// Configuration file. Without it, the embedded default serves `localhost` with data in
    /// ./data and a generated self-signed certificate.
    #[arg(long, short, global = true, env = "OPENSPIMED_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server until SIGTERM or SIGINT.
    Run,
    /// Check the configuration and certificates and say what is wrong.
    Check,
    /// Ask the running server (through its control socket in the data directory) to reload
    /// certificates, the log level and the limits, and print what it reloaded and what needs
    /// a restart.
    /// Same as sending it SIGHUP, with the answer.
    Reload,
    /// Create an account.
    Adduser {
        /// The account's JID (user@domain).
        jid: String,
        /// The password; prompted for (or read from standard input) when absent.
        #[arg(long, env = "OPENSPIMED_PASSWORD")]
        password: Option<String>,
    },
    /// Change an account's password.
    Passwd {
        /// The account's JID (user@domain).
        jid: String,
        /// The new password; prompted for when absent.
        #[arg(long, env = "OPENSPIMED_PASSWORD")]
        password: Option<String>,
    },
    /// Delete an account.
    Deluser {
        /// The account's JID (user@domain).
        jid: String,
    },
    /// List the accounts of a domain.
    Listusers {
        /// The domain.
        domain: String,
    },
    /// A subcommand a module supplies (listed under the commands in `--help`).
    #[command(external_subcommand)]
    Module(Vec<String>),
}

/// The database of `config`, for the admin commands (SQLite allows them beside a running
/// server).
fn open_store(config: &Config) -> Result<crate::storage::sqlite::SqliteStore, ExitCode> {
    crate::storage::sqlite::SqliteStore::open(&config.data_dir.join("openspimed.sqlite"))
        .map_err(fail)
}

pub(crate) fn fail(msg: impl std::fmt::Display) -> ExitCode {
    for line in msg.to_string().lines() {
        eprintln!("openspimed: error: {line}");
    }
    ExitCode::FAILURE
}

fn load(cli: &Cli) -> Result<Config, ExitCode> {
    match &cli.config {
        None => Ok(Config::default()),
        Some(p) => Config::load(p).map_err(fail),
    }
}

/// Runs the command line; the binary's `main` is just this.
pub fn main() -> ExitCode {
    let factories = crate::server::builtin_modules();
    let cli = match admin::parse_with_module_commands(&factories) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let config = match load(&cli) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    match cli.command {
        Command::Run => rt.block_on(run(config, cli.config)),
        Command::Reload => rt.block_on(reload(&config)),
        Command::Check => check(&config, cli.config.as_deref()),
        Command::Adduser { jid, password } => {
            rt.block_on(set_password(&config, &jid, password, true))
        }
        Command::Passwd { jid, password } => {
            rt.block_on(set_password(&config, &jid, password, false))
        }
        Command::Deluser { jid } => rt.block_on(deluser(&config, &jid)),
        Command::Listusers { domain } => rt.block_on(listusers(&config, &domain)),
        Command::Module(args) => rt.block_on(admin::run(&config, &factories, args)),
    }
}
