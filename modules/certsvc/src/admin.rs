//! `openspimed keys`: the public keys of the hosted certification services (XEP-0189),
//! the admin subcommand this module supplies.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use openspimed_module_api::{AdminCommand, AdminContext, BoxFuture};

use crate::{services_for_host, store_key};

/// `openspimed keys`.
pub struct Keys;

impl AdminCommand for Keys {
    fn name(&self) -> &'static str {
        "keys"
    }
    fn about(&self) -> &'static str {
        "Manage the keys of the hosted certification services (XEP-0189)"
    }
    fn run(&self, args: Vec<String>, cx: AdminContext) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async move {
            match parse::<KeysCli>("keys", args)? {
                Some(cli) => keys(cx, cli.action, cli.service).await,
                None => Ok(()),
            }
        })
    }
}

/// Manage the keys of the hosted certification services (XEP-0189).
#[derive(Parser, Debug)]
struct KeysCli {
    /// What to do with keys.
    #[command(subcommand)]
    action: KeysAction,
    /// The certification service (needed when more than one is hosted).
    #[arg(long, global = true)]
    service: Option<String>,
}

/// Parses an admin subcommand's arguments: `None` when clap printed help or the version.
/// (The ScopeNodes' subcommands use it too.)
pub fn parse<T: Parser>(name: &str, args: Vec<String>) -> Result<Option<T>, String> {
    use clap::error::ErrorKind;
    match T::try_parse_from(std::iter::once(format!("openspimed {name}")).chain(args)) {
        Ok(t) => Ok(Some(t)),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            print!("{e}");
            Ok(None)
        }
        // clap's own message, as it prints it (the caller adds nothing to an empty error).
        Err(e) => {
            let _ = e.print();
            Err(String::new())
        }
    }
}

/// `openspimed keys …`
#[derive(Subcommand, Debug)]
enum KeysAction {
    /// Store a public key (PEM: SPKI, PKCS#1, or a private key whose public half is used).
    Add {
        /// The JID the key belongs to.
        jid: String,
        /// The PEM file.
        pemfile: PathBuf,
    },
    /// List stored keys.
    List,
    /// Show one key (PEM and status).
    Show {
        /// The JID.
        jid: String,
    },
    /// Revoke a key: lookups answer item-not-found from now on.
    Revoke {
        /// The JID.
        jid: String,
    },
}

/// The certification services the hosts that enable certsvc serve.
fn hosted_cert_services(cx: &AdminContext) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for domain in &cx.hosts {
        for s in services_for_host(domain, &cx.options).map_err(|e| e.to_string())? {
            out.push(s.jid);
        }
    }
    Ok(out)
}

async fn keys(cx: AdminContext, action: KeysAction, service: Option<String>) -> Result<(), String> {
    let hosted = hosted_cert_services(&cx)?;
    let service = match (service, hosted.as_slice()) {
        (Some(s), _) => {
            let norm = openspimed_module_api::jid::Jid::new(&s)
                .map(|j| j.to_string())
                .unwrap_or(s);
            if !hosted.contains(&norm) {
                return Err(format!(
                    "{norm} is not a certification service hosted here (hosted: {})",
                    hosted.join(", ")
                ));
            }
            norm
        }
        (None, [only]) => only.clone(),
        (None, []) => {
            return Err("no certification service is hosted (enable the certsvc module)".into());
        }
        (None, many) => {
            return Err(format!(
                "several certification services are hosted; pick one with --service ({})",
                many.join(", ")
            ));
        }
    };
    let keys = &crate::Keys::new(cx.storage.clone());
    match action {
        KeysAction::Add { jid, pemfile } => {
            let pem = match std::fs::read_to_string(&pemfile) {
                Ok(p) => p,
                Err(e) => return Err(format!("cannot read {}: {e}", pemfile.display())),
            };
            let key = match openspime::crypto::public_key_from_pem(&pem).or_else(|_| {
                openspime::crypto::private_key_from_pem(&pem).map(|k| k.to_public_key())
            }) {
                Ok(k) => k,
                Err(e) => return Err(format!("{}: {e}", pemfile.display())),
            };
            match store_key(keys, &service, &jid, &key).await {
                Ok(stored) => {
                    println!("stored key for {stored} at {service}");
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        KeysAction::List => match keys.list_keys(&service).await {
            Ok(list) => {
                for k in list {
                    let status = if k.revoked_unix.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!("{}\t{status}", k.jid);
                }
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        },
        KeysAction::Show { jid } => {
            let norm = openspimed_module_api::jid::Jid::new(&jid)
                .map(|j| j.to_string())
                .unwrap_or(jid.clone());
            match keys.key(&service, &norm).await {
                Ok(Some(k)) => {
                    use openspime::rsa_reexport::DecodePublicKey;
                    let status = if k.revoked_unix.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!("jid: {}\nservice: {service}\nstatus: {status}", k.jid);
                    match openspime::RsaPublicKey::from_public_key_der(&k.spki_der)
                        .map_err(|e| e.to_string())
                        .and_then(|pk| {
                            openspime::crypto::public_key_to_pem(&pk).map_err(|e| e.to_string())
                        }) {
                        Ok(pem) => print!("{pem}"),
                        Err(e) => return Err(format!("stored key unreadable: {e}")),
                    }
                    Ok(())
                }
                Ok(None) => Err(format!("no key for {norm} at {service}")),
                Err(e) => Err(e.to_string()),
            }
        }
        KeysAction::Revoke { jid } => {
            let norm = openspimed_module_api::jid::Jid::new(&jid)
                .map(|j| j.to_string())
                .unwrap_or(jid.clone().to_string());
            match keys.revoke_key(&service, &norm).await {
                Ok(true) => {
                    println!("revoked the key of {norm} at {service}");
                    Ok(())
                }
                Ok(false) => Err(format!("no active key for {norm} at {service}")),
                Err(e) => Err(e.to_string()),
            }
        }
    }
}
