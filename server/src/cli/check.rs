//! `openspimed check`: configuration, modules, certificates, federation notes, listener addresses.

use std::process::ExitCode;

use openspimed_config::Config;

use super::fail;

/// `openspimed check`: configuration, modules and certificates, like `prosodyctl check`.
/// Every module is built with its options exactly as `run` builds it; each problem is one
/// line naming the file and the key.
pub(super) fn check(config: &Config, file: Option<&std::path::Path>) -> ExitCode {
    let mut errors = config.problems(&crate::server::builtin_module_names());
    errors.extend(crate::core::mount::problems(
        &config.hosts,
        &config.modules,
        &crate::server::builtin_modules(),
    ));
    if config.s2s.dialback_secret.as_deref() == Some(openspimed_config::EXAMPLE_DIALBACK_SECRET) {
        errors.push(
            "s2s.dialback_secret is the example's placeholder: set a long random string, or leave it out".to_owned(),
        );
    }
    let mut notes = Vec::new();
    let provider = crate::tls::provider();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    for (domain, host) in &config.hosts {
        if host.certificate.is_some() != host.key.is_some() {
            continue; // already reported by problems()
        }
        let (cert, key) = crate::tls::certificate_paths(config, domain, host);
        if host.certificate.is_none() && !cert.exists() {
            notes.push(format!(
                "hosts.\"{domain}\": no certificate configured; a self-signed one will be generated in {}",
                cert.display()
            ));
            continue;
        }
        if let Err(e) = openspimed_certs::load_pair(&cert, &key, &provider) {
            errors.push(format!("hosts.\"{domain}\": {e}"));
            continue;
        }
        match openspimed_certs::inspect(&cert) {
            Ok(info) => {
                if !info.covers(domain) {
                    errors.push(format!(
                        "hosts.\"{domain}\": certificate {} is not valid for {domain} (it names: {})",
                        cert.display(),
                        info.dns_names.join(", ")
                    ));
                }
                let days = (info.not_after_unix - now) / 86_400;
                if info.not_after_unix <= now {
                    errors.push(format!(
                        "hosts.\"{domain}\": certificate {} has expired",
                        cert.display()
                    ));
                } else if days < 14 {
                    notes.push(format!(
                        "hosts.\"{domain}\": certificate expires in {days} days"
                    ));
                }
            }
            Err(e) => errors.push(format!("hosts.\"{domain}\": {e}")),
        }
    }
    notes.extend(busy_ports(config));
    notes.extend(s2s_notes(config, &provider));
    for n in &notes {
        println!("note: {n}");
    }
    if errors.is_empty() {
        println!(
            "configuration OK: {} host(s): {}",
            config.hosts.len(),
            config.hosts.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        ExitCode::SUCCESS
    } else {
        let file = file
            .map(|f| f.display().to_string())
            .unwrap_or_else(|| "embedded default".to_owned());
        fail(
            errors
                .iter()
                .map(|e| format!("{file}: {e}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }
}

/// Federation: trust anchors, and (when listening for servers and DNS answers) the SRV
/// records remote servers will use to find each host.
pub(super) fn s2s_notes(config: &Config, provider: &rustls::crypto::CryptoProvider) -> Vec<String> {
    let mut notes = Vec::new();
    let (peers, problems) =
        openspimed_certs::peer::PeerVerifier::from_files(&config.s2s.ca_files, provider);
    for p in problems {
        notes.push(format!(
            "s2s.ca_files: {p}; remote certificates cannot be checked against it"
        ));
    }
    if peers.root_count() == 0 && !config.s2s.dialback {
        notes.push(
            "s2s: no trusted CA and dialback off: no remote server can authenticate".to_owned(),
        );
    }
    let listening = !config.listeners.s2s.is_empty() || !config.listeners.s2s_direct_tls.is_empty();
    if !listening {
        return notes;
    }
    let ports: Vec<(bool, u16)> = config
        .listeners
        .s2s
        .iter()
        .map(|a| (false, a.port()))
        .chain(
            config
                .listeners
                .s2s_direct_tls
                .iter()
                .map(|a| (true, a.port())),
        )
        .collect();
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return notes;
    };
    for domain in config.hosts.keys().filter(|d| d.contains('.')) {
        let lookup = rt.block_on(async {
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                crate::s2s::resolve::srv_records(domain),
            )
            .await
        });
        let records = match lookup {
            Ok(Ok(r)) => r,
            Ok(Err(_)) | Err(_) => {
                notes.push("DNS not reachable: SRV records not checked (offline?)".to_owned());
                break;
            }
        };
        if records.is_empty() {
            let default_port = ports.iter().any(|(direct, p)| !direct && *p == 5269);
            notes.push(format!(
                "hosts.\"{domain}\": no _xmpp-server._tcp SRV record; remote servers will connect to {domain}:5269{}",
                if default_port { "" } else { ", where no s2s listener is configured" }
            ));
        }
        for r in records {
            let ours = ports
                .iter()
                .any(|(d, p)| *d == r.direct_tls && *p == r.port);
            let kind = if r.direct_tls {
                "_xmpps-server"
            } else {
                "_xmpp-server"
            };
            notes.push(format!(
                "hosts.\"{domain}\": {kind}._tcp SRV → {}:{}{}",
                r.target,
                r.port,
                if ours {
                    ""
                } else {
                    " (no matching listener here)"
                }
            ));
        }
    }
    notes
}

/// Listener addresses something else already listens on (possibly this server, running).
pub(super) fn busy_ports(config: &Config) -> Vec<String> {
    let metrics = config
        .metrics
        .enabled
        .then_some(("metrics.listen", config.metrics.listen));
    config
        .listeners
        .c2s
        .iter()
        .map(|a| ("listeners.c2s", *a))
        .chain(
            config
                .listeners
                .c2s_direct_tls
                .iter()
                .map(|a| ("listeners.c2s_direct_tls", *a)),
        )
        .chain(config.listeners.s2s.iter().map(|a| ("listeners.s2s", *a)))
        .chain(
            config
                .listeners
                .s2s_direct_tls
                .iter()
                .map(|a| ("listeners.s2s_direct_tls", *a)),
        )
        .chain(metrics)
        .filter(|(_, addr)| addr.port() != 0)
        .filter_map(|(name, addr)| match std::net::TcpListener::bind(addr) {
            Ok(_) => None,
            Err(e) => Some(format!(
                "{name}: cannot listen on {addr} now ({e}); fine if openspimed is running there"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn check_names_listener_addresses_in_use() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let mut config = Config::default();
        config.metrics.enabled = false;
        config.listeners.c2s = vec![addr];
        config.listeners.c2s_direct_tls = vec![];
        let busy = busy_ports(&config);
        assert_eq!(busy.len(), 1, "{busy:?}");
        assert!(busy[0].starts_with(&format!("listeners.c2s: cannot listen on {addr}")));
        drop(taken);
        assert_eq!(busy_ports(&config), Vec::<String>::new());
    }
}
