//! `openspimed adduser`, `passwd`, `deluser`, `listusers`.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use openspimed_config::Config;
use openspimed_module_api::jid::BareJid;

use crate::storage::AccountStore;

use super::{fail, open_store};

pub(super) fn parse_account(config: &Config, jid: &str) -> Result<(String, String), String> {
    let bare = BareJid::new(jid).map_err(|e| format!("{jid:?} is not a valid JID: {e}"))?;
    let Some(node) = bare.node() else {
        return Err(format!("{jid:?} has no user part (expected user@domain)"));
    };
    let domain = bare.domain().as_str().to_owned();
    if !config.hosts.contains_key(&domain) {
        return Err(format!(
            "{domain} is not a host of this server (see [hosts] in the configuration)"
        ));
    }
    Ok((node.as_str().to_owned(), domain))
}

pub(super) fn read_password() -> Result<String, String> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let pw = line.trim_end_matches(['\r', '\n']).to_owned();
    if pw.is_empty() {
        return Err("the password must not be empty".into());
    }
    Ok(pw)
}

pub(super) async fn set_password(
    config: &Config,
    jid: &str,
    password: Option<String>,
    create: bool,
) -> ExitCode {
    let (user, domain) = match parse_account(config, jid) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let password = match password {
        Some(p) if !p.is_empty() => p,
        Some(_) => return fail("the password must not be empty"),
        None => match read_password() {
            Ok(p) => p,
            Err(e) => return fail(e),
        },
    };
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let creds = crate::sasl::derive_credentials(&password, config.auth.scram_iterations);
    let result = if create {
        store.create_account(&user, &domain, &creds).await
    } else {
        store.set_credentials(&user, &domain, &creds).await
    };
    match (result, create) {
        (Ok(true), true) => {
            println!("created {user}@{domain}");
            ExitCode::SUCCESS
        }
        (Ok(false), true) => fail(format!(
            "{user}@{domain} already exists (use passwd to change its password)"
        )),
        (Ok(true), false) => {
            println!("password changed for {user}@{domain}");
            ExitCode::SUCCESS
        }
        (Ok(false), false) => fail(format!("{user}@{domain} does not exist")),
        (Err(e), _) => fail(e),
    }
}

pub(super) async fn deluser(config: &Config, jid: &str) -> ExitCode {
    let (user, domain) = match parse_account(config, jid) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match store.delete_account(&user, &domain).await {
        Ok(true) => {
            println!("deleted {user}@{domain}");
            ExitCode::SUCCESS
        }
        Ok(false) => fail(format!("{user}@{domain} does not exist")),
        Err(e) => fail(e),
    }
}

pub(super) async fn listusers(config: &Config, domain: &str) -> ExitCode {
    let domain = domain.to_ascii_lowercase();
    if !config.hosts.contains_key(&domain) {
        return fail(format!("{domain} is not a host of this server"));
    }
    let store = match open_store(config) {
        Ok(s) => s,
        Err(code) => return code,
    };
    match store.list_accounts(&domain).await {
        Ok(users) => {
            for u in users {
                println!("{u}@{domain}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
