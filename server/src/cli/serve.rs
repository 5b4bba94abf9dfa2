//! `openspimed run` and `openspimed reload`: logging, the running server, signals and the control socket.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use openspimed_config::{Config, LogFormat};

use super::fail;

/// Sets up logging; returns how to change the filter later (for reloads).
pub(super) fn init_logging(config: &Config) -> Option<crate::control::SetLogFilter> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    fn setter<L, S: 'static>(
        handle: tracing_subscriber::reload::Handle<L, S>,
    ) -> crate::control::SetLogFilter
    where
        L: From<EnvFilter> + Send + Sync + 'static,
    {
        Box::new(move |level: &str| {
            let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
            handle.reload(filter).map_err(|e| e.to_string())
        })
    }
    match config.log.format {
        LogFormat::Json => {
            let b = builder.json().with_filter_reloading();
            let handle = b.reload_handle();
            b.try_init().ok().map(|()| setter(handle))
        }
        LogFormat::Text => {
            let b = builder.with_filter_reloading();
            let handle = b.reload_handle();
            b.try_init().ok().map(|()| setter(handle))
        }
    }
}

pub(super) async fn run(config: Config, path: Option<PathBuf>) -> ExitCode {
    let set_log_filter = init_logging(&config);
    // Signal handlers go in before anything listens: a SIGTERM right after the "listening"
    // log line must stop the server gracefully, not kill it.
    #[cfg(unix)]
    let (term, int, hup) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::hangup()).ok(),
        )
    };
    let server = match crate::server::start(config).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let reloader =
        std::sync::Arc::new(crate::control::Reloader::new(&server, path, set_log_filter));
    #[cfg(unix)]
    {
        let socket = crate::control::socket_path(&server.shared.config);
        let r = reloader.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::control::serve(&socket, r).await {
                tracing::warn!(socket = %socket.display(), error = %e, "no control socket; `openspimed reload` will not reach this server (SIGHUP still works)");
            }
        });
        let r = reloader.clone();
        let token = server.shutdown_token();
        tokio::spawn(async move {
            let Some(mut hup) = hup else {
                tracing::warn!("cannot listen for SIGHUP");
                return;
            };
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    got = hup.recv() => if got.is_none() { return },
                }
                r.reload().await;
            }
        });
    }
    #[cfg(not(unix))]
    drop(reloader);
    let token = server.shutdown_token();
    let router = server.shared.router.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        wait_for_signal(term, int).await;
        #[cfg(not(unix))]
        wait_for_signal().await;
        tracing::info!("shutting down");
        // The modules first (rooms tell their occupants), while sessions still write.
        router.stop_modules().await;
        token.cancel();
    });
    server.wait(Duration::from_secs(5)).await;
    ExitCode::SUCCESS
}

/// `openspimed reload`: asks the running server to reload and prints its report.
pub(super) async fn reload(config: &Config) -> ExitCode {
    #[cfg(unix)]
    {
        let socket = crate::control::socket_path(config);
        match crate::control::request(&socket, "reload").await {
            Ok(answer) => {
                print!("{answer}");
                if answer.lines().any(|l| l.starts_with("error:")) {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => fail(format!(
                "cannot reach the server at {}: {e} (is it running with this configuration?)",
                socket.display()
            )),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = config;
        fail("reload needs a Unix control socket; restart the server instead")
    }
}

/// Waits for SIGTERM or SIGINT (handlers registered by the caller before listening).
#[cfg(unix)]
pub(super) async fn wait_for_signal(
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
) {
    match (term, int) {
        (Some(mut term), Some(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Waits for Ctrl-C.
#[cfg(not(unix))]
pub(super) async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
