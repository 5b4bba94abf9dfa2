//! Live reload, triggered by `SIGHUP` or by `openspimed reload` through the local control
//! socket (`DATA_DIR/control.sock`, mode 0600): certificates are re-read, the log level,
//! `[limits]`, `[s2s.remote]`, `[hosts]` and `[modules]` are re-applied (hosts and module
//! instances as [`crate::core::mount`] describes); every other configuration change is named as
//! needing a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use openspimed_config::Config;
use openspimed_module_api::ModuleFactory;

use crate::core::shared::Shared;

/// Applies a new log filter (`[log] level` syntax); set up with the logger.
pub type SetLogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// One line of a reload report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadLine {
    /// Something was reloaded.
    Done(String),
    /// Something changed in the file but only takes effect on restart.
    NeedsRestart(String),
    /// Something could not be reloaded; the running state stays.
    Failed(String),
}

impl std::fmt::Display for ReloadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadLine::Done(s) => write!(f, "reloaded: {s}"),
            ReloadLine::NeedsRestart(s) => write!(f, "needs a restart: {s}"),
            ReloadLine::Failed(s) => write!(f, "error: {s}"),
        }
    }
}

/// Performs reloads for one running server.
pub struct Reloader {
    /// The running server, whose certificate resolver is swapped.
    shared: Arc<Shared>,
    /// Federation, whose static remote addresses are replaced.
    s2s: Arc<crate::s2s::S2s>,
    /// The modules the server runs with, that `[modules]` is built from.
    factories: Arc<[Box<dyn ModuleFactory>]>,
    /// The configuration file to re-read; `None` for the embedded default.
    path: Option<PathBuf>,
    /// The configuration as last applied, to tell what changed in the file; held for the
    /// whole of a reload, so that two reloads never interleave.
    applied: tokio::sync::Mutex<Config>,
    /// Re-applies the log level, when the logger supports it.
    set_log_filter: Option<SetLogFilter>,
}

impl Reloader {
    /// A reloader for `server`, started from the file at `path`.
    pub fn new(
        server: &crate::server::RunningServer,
        path: Option<PathBuf>,
        set_log_filter: Option<SetLogFilter>,
    ) -> Self {
        let shared = server.shared.clone();
        let applied = tokio::sync::Mutex::new(shared.config.clone());
        Reloader {
            shared,
            s2s: server.s2s.clone(),
            factories: server.factories.clone(),
            path,
            applied,
            set_log_filter,
        }
    }

    /// Reloads what can change live and reports, line by line, what happened.
    pub async fn reload(&self) -> Vec<ReloadLine> {
        let mut applied = self.applied.lock().await;
        let mut report = Vec::new();
        let new = match &self.path {
            None => None,
            Some(path) => {
                let path = path.clone();
                match tokio::task::spawn_blocking(move || Config::load(&path)).await {
                    Ok(Ok(new)) => Some(new),
                    Ok(Err(e)) => {
                        report.push(ReloadLine::Failed(format!(
                            "{e} (the running configuration stays)"
                        )));
                        None
                    }
                    Err(_) => {
                        report.push(ReloadLine::Failed(
                            "the configuration file could not be read".into(),
                        ));
                        None
                    }
                }
            }
        };
        let hosts_changed = new
            .as_ref()
            .is_some_and(|n| n.hosts != applied.hosts || n.modules != applied.modules);
        // A new host set brings its own certificates; otherwise (or when it could not be
        // applied) the current hosts' files are read again.
        let mut certificates_loaded = false;
        if let Some(new) = new.as_ref().filter(|_| hosts_changed) {
            certificates_loaded = self.apply_hosts(new, &mut applied, &mut report).await;
        }
        if !certificates_loaded {
            match self.shared.reload_certificates() {
                Ok(hosts) => {
                    report.push(ReloadLine::Done(format!("certificates of {hosts} host(s)")))
                }
                Err(problems) => report.extend(problems.into_iter().map(|p| {
                    ReloadLine::Failed(format!("{p} (the current certificates stay in use)"))
                })),
            }
        }
        if let Some(new) = new {
            self.apply_config(new, &mut applied, &mut report);
        }
        for line in &report {
            match line {
                ReloadLine::Failed(_) => tracing::warn!("reload {line}"),
                _ => tracing::info!("{line}"),
            }
        }
        report
    }

    /// `[hosts]` and `[modules]`: certificates of the new host set, then the module
    /// instances that changed. Nothing changes when the new set has a problem. Returns
    /// whether the certificates were loaded.
    async fn apply_hosts(
        &self,
        new: &Config,
        applied: &mut Config,
        report: &mut Vec<ReloadLine>,
    ) -> bool {
        let names: Vec<&str> = self.factories.iter().map(|f| f.name()).collect();
        let problems = new.problems(&names);
        if !problems.is_empty() {
            report.extend(
                problems.into_iter().map(|p| {
                    ReloadLine::Failed(format!("{p} (hosts and modules stay as they are)"))
                }),
            );
            return false;
        }
        match self
            .shared
            .set_hosts(&new.hosts, &new.modules, &self.factories)
            .await
        {
            Err(problems) => {
                report.extend(problems.into_iter().map(|p| {
                    ReloadLine::Failed(format!("{p} (hosts and modules stay as they are)"))
                }));
                false
            }
            Ok(done) => {
                report.push(ReloadLine::Done(format!(
                    "certificates of {} host(s)",
                    done.certificates
                )));
                let mut say = |what: &str, list: &[String]| {
                    if !list.is_empty() {
                        report.push(ReloadLine::Done(format!("{what}: {}", list.join(", "))));
                    }
                };
                say("hosts added", &done.added);
                say(
                    "hosts removed (their sessions ended with host-gone)",
                    &done.removed,
                );
                say("modules started", &done.modules.started);
                say("modules stopped", &done.modules.retired);
                for f in &done.modules.failed {
                    report.push(ReloadLine::Failed(format!(
                        "module {f} (the instance it was to replace, if any, stays)"
                    )));
                }
                applied.hosts = new.hosts.clone();
                applied.modules = new.modules.clone();
                true
            }
        }
    }

    fn apply_config(&self, new: Config, applied: &mut Config, report: &mut Vec<ReloadLine>) {
        if new.log.level != applied.log.level {
            match &self.set_log_filter {
                Some(set) => match set(&new.log.level) {
                    Ok(()) => {
                        report.push(ReloadLine::Done(format!("log level {:?}", new.log.level)));
                        applied.log.level = new.log.level.clone();
                    }
                    Err(e) => report.push(ReloadLine::Failed(format!(
                        "log level {:?}: {e}",
                        new.log.level
                    ))),
                },
                None => report.push(ReloadLine::NeedsRestart("log.level".into())),
            }
        }
        if new.limits != applied.limits {
            self.shared.set_limits(new.limits.clone());
            report.push(ReloadLine::Done(
                "limits (for connections opened from now on)".into(),
            ));
            applied.limits = new.limits.clone();
        }
        if new.s2s.remote != applied.s2s.remote {
            self.s2s.set_remotes(new.s2s.remote.clone());
            report.push(ReloadLine::Done(
                "s2s.remote (for server-to-server connections set up from now on)".into(),
            ));
            applied.s2s.remote = new.s2s.remote.clone();
        }
        let changed = changed_sections(applied, &new);
        if !changed.is_empty() {
            report.push(ReloadLine::NeedsRestart(changed.join(", ")));
        }
    }
}

/// The configuration sections that differ; the ones reloaded live were updated in `old`
/// before.
fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("data_dir", old.data_dir != new.data_dir);
    check("log.format", old.log.format != new.log.format);
    check("listeners", old.listeners != new.listeners);
    check("limits", old.limits != new.limits);
    check("auth", old.auth != new.auth);
    check("metrics", old.metrics != new.metrics);
    check("tls", old.tls != new.tls);
    check("s2s", old.s2s != new.s2s);
    check("hosts", old.hosts != new.hosts);
    check("modules", old.modules != new.modules);
    changed
}

/// Where the control socket of a server with this configuration lives.
pub fn socket_path(config: &Config) -> PathBuf {
    config.data_dir.join("control.sock")
}

/// Serves the control socket until shutdown: each connection sends one command line
/// (`reload`) and receives the report, one line each, then the connection closes.
#[cfg(unix)]
pub async fn serve(path: &Path, reloader: Arc<Reloader>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{} is served by another running server", path.display()),
        ));
    }
    // A socket left behind by a server that did not stop cleanly.
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let shutdown = reloader.shared.shutdown.clone();
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    continue;
                }
            },
        };
        let reloader = reloader.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut read = BufReader::new(read).take(256);
            if read.read_line(&mut line).await.is_err() {
                return;
            }
            let answer = match line.trim() {
                "reload" => {
                    let report = reloader.reload().await;
                    report.iter().map(|l| format!("{l}\n")).collect()
                }
                other => format!("error: unknown command {other:?}; known: reload\n"),
            };
            let _ = write.write_all(answer.as_bytes()).await;
            let _ = write.shutdown().await;
        });
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Sends `command` to the server whose control socket is at `path`; returns its answer.
#[cfg(unix)]
pub async fn request(path: &Path, command: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(path).await?;
    s.write_all(format!("{command}\n").as_bytes()).await?;
    s.shutdown().await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    Ok(answer)
}
