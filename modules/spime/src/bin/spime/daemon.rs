//! `spime serve --daemon` and `spime serve --stop`.
//!
//! `--daemon` starts the same command again as a background process (its own process
//! group, so the terminal's Ctrl-C does not reach it; output to `serve.log` in the profile,
//! its pid in `serve.pid`) and returns only once that process has logged in and serves
//! claims, or has failed: the next command of a pasted block can rely on it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::profile::Profile;

/// Set in the background process's environment: it serves instead of starting another.
const CHILD_ENV: &str = "SPIME_SERVE_BACKGROUND";

/// The line `serve` prints once it is logged in and answers claims.
pub const READY: &str = "serving claims as ";

/// Whether this process is the background one a `--daemon` started.
pub fn is_background() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Starts this very command line again in the background and waits (at most `wait`) until
/// it serves; returns its ready line, or the error it failed with.
pub fn start(profile: &Profile, wait: Duration) -> Result<String, String> {
    if let Some(pid) = running(profile) {
        return Err(format!(
            "already serving from {} (pid {pid}; `spime serve --stop` ends it)",
            profile.dir.display()
        ));
    }
    std::fs::create_dir_all(&profile.dir)
        .map_err(|e| format!("cannot create {}: {e}", profile.dir.display()))?;
    let log_path = profile.log_path();
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
    let out = log
        .try_clone()
        .map_err(|e| format!("cannot write {}: {e}", log_path.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the background serve: {e}"))?;
    std::fs::write(profile.pid_path(), format!("{}\n", child.id()))
        .map_err(|e| format!("cannot write {}: {e}", profile.pid_path().display()))?;
    let deadline = Instant::now() + wait;
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.starts_with(READY)) {
            return Ok(line.to_owned());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let _ = std::fs::remove_file(profile.pid_path());
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(last_error(&text)
                .unwrap_or_else(|| format!("the background serve exited ({status})")));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(profile.pid_path());
            return Err(format!(
                "the background serve did not log in within {} s (see {})",
                wait.as_secs(),
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The message of the last `spime: error:` line of a log.
fn last_error(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix("spime: error: "))
        .map(str::to_owned)
}

/// Ends the background serve of this profile; returns its pid.
pub fn stop(profile: &Profile) -> Result<u32, String> {
    let not_serving = || {
        format!(
            "not serving in the background from {}",
            profile.dir.display()
        )
    };
    let pid = running(profile).ok_or_else(not_serving)?;
    let killed = Command::new("kill")
        .arg(pid.to_string())
        .status()
        .map_err(|e| format!("cannot run kill: {e}"))?;
    if !killed.success() {
        return Err(format!("could not end pid {pid}"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_ours(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(profile.pid_path());
    Ok(pid)
}

/// Called by the background serve when it ends by itself (`--for`).
pub fn finished(profile: &Profile) {
    if is_background() && running(profile) == Some(std::process::id()) {
        let _ = std::fs::remove_file(profile.pid_path());
    }
}

/// The pid in `serve.pid`, if that process is still a background serve (a stale file from
/// a machine restart, whose pid now names another program, does not count).
fn running(profile: &Profile) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(profile.pid_path())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_ours(pid).then_some(pid)
}

/// Whether `pid` is alive and, where `/proc` tells, a background serve.
fn is_ours(pid: u32) -> bool {
    let proc_dir = Path::new("/proc");
    if proc_dir.join("self").exists() {
        let Ok(environ) = std::fs::read(proc_dir.join(pid.to_string()).join("environ")) else {
            return false;
        };
        let is_zombie = std::fs::read_to_string(proc_dir.join(pid.to_string()).join("stat"))
            .is_ok_and(|s| {
                s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            });
        let marker = format!("{CHILD_ENV}=1");
        return !is_zombie && environ.split(|b| *b == 0).any(|v| v == marker.as_bytes());
    }
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
