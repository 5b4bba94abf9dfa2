//! The admin subcommands modules supply (`openspimed keys`, `openspimed scopenode`,
//! `openspimed data`): listed in `--help`, run against the storage of the configuration.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches};
use openspimed_config::Config;
use openspimed_module_api::{AdminContext, ModuleFactory, ModuleStorage};

use super::{Cli, fail, open_store};

/// Parses the command line, with the modules' subcommands named in `--help`.
pub(super) fn parse_with_module_commands(
    factories: &[Box<dyn ModuleFactory>],
) -> Result<Cli, clap::Error> {
    let mut listed = String::from("Commands of the modules:\n");
    for f in factories {
        for c in f.admin_commands() {
            listed.push_str(&format!(
                "  {:<10} {} ({})\n",
                c.name(),
                c.about(),
                f.name()
            ));
        }
    }
    let matches = Cli::command().after_help(listed).try_get_matches()?;
    Cli::from_arg_matches(&matches)
}

/// Runs `openspimed NAME ARGS…` of the module that supplies `NAME`.
pub(super) async fn run(
    config: &Config,
    factories: &[Box<dyn ModuleFactory>],
    args: Vec<String>,
) -> ExitCode {
    let Some((name, rest)) = args.split_first() else {
        return fail("no command (see --help)");
    };
    let found = factories.iter().find_map(|f| {
        f.admin_commands()
            .into_iter()
            .find(|c| c.name() == name)
            .map(|c| (f, c))
    });
    let Some((factory, command)) = found else {
        return fail(format!("unknown command {name:?} (see --help)"));
    };
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let storage: Arc<dyn ModuleStorage> = Arc::new(store);
    let hosts = config
        .hosts
        .iter()
        .filter(|(_, h)| h.enabled_modules().contains(&factory.name()))
        .map(|(d, _)| d.clone())
        .collect();
    let cx = AdminContext {
        hosts,
        options: config
            .modules
            .get(factory.name())
            .cloned()
            .unwrap_or_default(),
        storage,
    };
    match command.run(rest.to_vec(), cx).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
