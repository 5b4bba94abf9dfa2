//! A network namespace of a test's own (`ip netns`, needs root): only its loopback, up, so
//! a server can take the standard ports (5222, 5269…) and a test can run what a person
//! types, addresses and all, without meeting anything else on the machine.

use std::ffi::OsStr;
use std::process::{Command, Stdio};

/// A network namespace, deleted on drop with every process still in it.
pub struct NetNs {
    /// Its name (`ip netns exec NAME …`): the tag and this process's id, so that parallel
    /// test binaries and a crashed earlier run never collide.
    pub name: String,
}

fn ip(args: &[&str]) -> Result<std::process::Output, String> {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))
}

impl NetNs {
    /// Creates `osd-TAG-PID` with its loopback up.
    pub fn new(tag: &str) -> Result<NetNs, String> {
        let name = format!("osd-{tag}-{}", std::process::id());
        remove_stale();
        let made = ip(&["netns", "add", &name])?;
        if !made.status.success() {
            return Err(format!(
                "ip netns add {name} failed (this test needs root): {}",
                String::from_utf8_lossy(&made.stderr).trim()
            ));
        }
        let ns = NetNs { name };
        let up = ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        if !up.status.success() {
            return Err(format!(
                "cannot bring lo up in {}: {}",
                ns.name,
                String::from_utf8_lossy(&up.stderr).trim()
            ));
        }
        Ok(ns)
    }

    /// `program` run inside the namespace (`ip netns exec NAME program`); the child's pid is
    /// the program's own.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// The pids of the processes in the namespace.
    pub fn pids(&self) -> Vec<u32> {
        ip(&["netns", "pids", &self.name])
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Removes the namespaces of test processes that died without dropping theirs (killed by
/// a timeout or a signal): `osd-TAG-PID` whose PID no longer runs.
fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let owner = name
            .strip_prefix("osd-")
            .and_then(|rest| rest.rsplit_once('-'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok());
        if let Some(pid) = owner
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            drop(NetNs {
                name: name.to_owned(),
            });
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}
