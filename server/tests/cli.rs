//! The `openspimed` binary as an operator uses it: `check`, `run`, account commands.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_openspimed"));
    c.env_remove("OPENSPIMED_CONFIG").env_remove("RUST_LOG");
    c
}

fn run(args: &[&str], dir: &Path) -> Output {
    bin().args(args).current_dir(dir).output().expect("runs")
}

fn stderr_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_config(dir: &Path, host_extra: &str) -> std::path::PathBuf {
    let path = dir.join("openspimed.toml");
    std::fs::write(
        &path,
        format!(
            "data_dir = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[listeners]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = [\"127.0.0.1:0\"]\n\
             [hosts.\"example.test\"]\n{host_extra}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn missing_certificate_is_one_line_from_check_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "certificate = \"missing.crt\"\nkey = \"missing.key\"",
    );
    let cfg = cfg.to_str().unwrap();
    for cmd in ["check", "run"] {
        let o = run(&["--config", cfg, cmd], dir.path());
        assert!(!o.status.success(), "{cmd} must fail");
        let lines = stderr_lines(&o);
        assert_eq!(lines.len(), 1, "{cmd}: one line: {lines:?}");
        assert!(lines[0].contains("missing.crt"), "{cmd}: {lines:?}");
        assert!(lines[0].contains("example.test"), "{cmd}: {lines:?}");
    }
}

#[test]
fn bad_config_lines_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[limits]\nstanza_size = 10\n").unwrap();
    let o = run(&["--config", path.to_str().unwrap(), "check"], dir.path());
    assert!(!o.status.success());
    let lines = stderr_lines(&o);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("stanza_size"), "{lines:?}");

    let cfg = write_config(dir.path(), "modules = [\"ping\", \"nosuchmodule\"]");
    let o = run(&["--config", cfg.to_str().unwrap(), "check"], dir.path());
    assert!(!o.status.success());
    let lines = stderr_lines(&o);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("nosuchmodule"), "{lines:?}");

    let o = run(&["--config", "/nonexistent/x.toml", "check"], dir.path());
    assert!(!o.status.success());
    assert!(stderr_lines(&o)[0].contains("/nonexistent/x.toml"));
}

/// Module options `run` refuses, `check` reports, every one, with the file and the key.
/// Before, `check` never built the modules and said "configuration OK".
#[test]
fn check_builds_every_module_as_run_does() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openspimed_certs::self_signed_pem("example.test").unwrap();
    std::fs::write(dir.path().join("c.pem"), cert).unwrap();
    std::fs::write(dir.path().join("k.pem"), key).unwrap();
    let cfg = write_config(
        dir.path(),
        "certificate = \"c.pem\"\nkey = \"k.pem\"\nmodules = [\"certsvc\", \"scopenode\"]\n\
         [modules.certsvc]\nservices = [{ jid = \"cert.example.test\", form = \"bogus\" }]\n\
         [[modules.scopenode.nodes]]\nname = \"n\"\n[[modules.scopenode.nodes.scopes]]\nname = \"co2\"\n\
         fields = [{ name = \"date\", type = \"datetime\" }]\n\
         [modules.version]\nshow_os = \"yes\"\n",
    );
    let path = cfg.to_str().unwrap();
    let o = run(&["--config", path, "check"], dir.path());
    assert!(
        !o.status.success(),
        "{:?}",
        String::from_utf8_lossy(&o.stdout)
    );
    let lines = stderr_lines(&o);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let has = |key: &str, what: &str| {
        lines
            .iter()
            .any(|l| l.contains(path) && l.contains(key) && l.contains(what))
    };
    assert!(
        has("modules.certsvc.services[0].form", "bogus"),
        "{lines:?}"
    );
    assert!(
        has(
            "modules.scopenode.nodes[0].scopes[0].fields[0].type",
            "datetime"
        ),
        "{lines:?}"
    );
    assert!(
        has("modules.version.show_os", "enabled on no host"),
        "{lines:?}"
    );
    // run refuses the same configuration.
    let o = run(&["--config", path, "run"], dir.path());
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("modules.certsvc.services[0].form"),
        "{:?}",
        stderr_lines(&o)
    );
}

#[test]
fn certificate_for_another_domain_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = openspimed_certs::self_signed_pem("other.test").unwrap();
    std::fs::write(dir.path().join("c.pem"), cert).unwrap();
    std::fs::write(dir.path().join("k.pem"), key).unwrap();
    let cfg = write_config(dir.path(), "certificate = \"c.pem\"\nkey = \"k.pem\"");
    let o = run(&["--config", cfg.to_str().unwrap(), "check"], dir.path());
    assert!(!o.status.success());
    let lines = stderr_lines(&o);
    assert!(lines[0].contains("not valid for example.test"), "{lines:?}");
}

#[test]
fn account_commands_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let cfg = cfg.to_str().unwrap();
    let o = run(&["--config", cfg, "check"], dir.path());
    assert!(o.status.success(), "{:?}", stderr_lines(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("configuration OK"));

    let o = run(
        &[
            "--config",
            cfg,
            "adduser",
            "Alice@example.test",
            "--password",
            "pw",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{:?}", stderr_lines(&o));
    // The password can come from standard input instead of the command line.
    let mut child = bin()
        .args(["--config", cfg, "adduser", "bob@example.test"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    assert!(child.wait_with_output().unwrap().status.success());

    let o = run(
        &[
            "--config",
            cfg,
            "adduser",
            "alice@example.test",
            "--password",
            "x",
        ],
        dir.path(),
    );
    assert!(!o.status.success(), "duplicate account must fail");
    assert!(stderr_lines(&o)[0].contains("already exists"));
    let o = run(
        &[
            "--config",
            cfg,
            "adduser",
            "carol@elsewhere.test",
            "--password",
            "x",
        ],
        dir.path(),
    );
    assert!(!o.status.success());
    assert!(stderr_lines(&o)[0].contains("not a host"));

    let o = run(&["--config", cfg, "listusers", "example.test"], dir.path());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "alice@example.test\nbob@example.test\n"
    );
    let o = run(
        &[
            "--config",
            cfg,
            "passwd",
            "alice@example.test",
            "--password",
            "new",
        ],
        dir.path(),
    );
    assert!(o.status.success());
    let o = run(
        &[
            "--config",
            cfg,
            "passwd",
            "nobody@example.test",
            "--password",
            "new",
        ],
        dir.path(),
    );
    assert!(!o.status.success());
    let o = run(
        &["--config", cfg, "deluser", "bob@example.test"],
        dir.path(),
    );
    assert!(o.status.success());
    let o = run(
        &["--config", cfg, "deluser", "bob@example.test"],
        dir.path(),
    );
    assert!(!o.status.success());
    let o = run(&["--config", cfg, "listusers", "example.test"], dir.path());
    assert_eq!(String::from_utf8_lossy(&o.stdout), "alice@example.test\n");
}

/// Reads the server's log until both listeners are reported; returns their addresses.
fn bound_addresses(stderr: &mut impl BufRead) -> Vec<SocketAddr> {
    let mut addrs = Vec::new();
    let mut line = String::new();
    while addrs.len() < 2 {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            panic!("server exited before listening");
        }
        if line.contains("listening") {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .expect("addr in log line");
            addrs.push(addr.parse().unwrap());
        }
    }
    addrs
}

#[test]
fn run_logs_bound_ports_serves_tls_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let mut child = bin()
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .current_dir(dir.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addrs = bound_addresses(&mut stderr);
    // The generated self-signed certificate is kept for the next start.
    assert!(dir.path().join("data/certs/example.test.crt").exists());

    let mut s = TcpStream::connect(addrs[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
          xmlns:stream='http://etherx.jabber.org/streams' to='example.test' version='1.0'>",
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("</stream:features>") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "server closed early");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("<starttls"));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The open stream is told why it ends.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("system-shutdown"), "{rest}");
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
    let mut log = String::new();
    let _ = stderr.read_to_string(&mut log);
    assert!(log.contains("shutting down"), "{log}");
}

#[test]
fn keys_add_list_show_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let cfg = cfg.to_str().unwrap();
    let key = openspime::crypto::generate_key(1024).unwrap();
    let pem = dir.path().join("spime.pem");
    std::fs::write(
        &pem,
        openspime::crypto::public_key_to_pem(&key.to_public_key()).unwrap(),
    )
    .unwrap();
    let pem = pem.to_str().unwrap();

    let o = run(
        &[
            "--config",
            cfg,
            "keys",
            "add",
            "spime@example.test/spime",
            pem,
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{:?}", stderr_lines(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("cert.example.test"));
    let o = run(&["--config", cfg, "keys", "list"], dir.path());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "spime@example.test/spime\tactive\n"
    );
    let o = run(
        &["--config", cfg, "keys", "show", "spime@example.test/spime"],
        dir.path(),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("status: active") && out.contains("BEGIN PUBLIC KEY"),
        "{out}"
    );
    let shown = out[out.find("-----BEGIN").unwrap()..].to_owned();
    assert_eq!(
        openspime::crypto::public_key_from_pem(&shown).unwrap(),
        key.to_public_key()
    );

    let o = run(
        &[
            "--config",
            cfg,
            "keys",
            "revoke",
            "spime@example.test/spime",
        ],
        dir.path(),
    );
    assert!(o.status.success());
    let o = run(&["--config", cfg, "keys", "list"], dir.path());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "spime@example.test/spime\trevoked\n"
    );
    let o = run(
        &[
            "--config",
            cfg,
            "keys",
            "revoke",
            "spime@example.test/spime",
        ],
        dir.path(),
    );
    assert!(!o.status.success());

    // Bad input: one line each.
    let o = run(
        &["--config", cfg, "keys", "show", "nobody@example.test"],
        dir.path(),
    );
    assert!(!o.status.success());
    assert_eq!(stderr_lines(&o).len(), 1);
    let o = run(
        &[
            "--config",
            cfg,
            "keys",
            "add",
            "x@example.test",
            "/nonexistent.pem",
        ],
        dir.path(),
    );
    assert!(!o.status.success());
    assert!(stderr_lines(&o)[0].contains("/nonexistent.pem"));
    let o = run(
        &[
            "--config",
            cfg,
            "keys",
            "list",
            "--service",
            "cert.elsewhere.test",
        ],
        dir.path(),
    );
    assert!(!o.status.success());
    assert!(stderr_lines(&o)[0].contains("not a certification service hosted here"));
}

#[test]
fn scopenode_list_show_and_data_export() {
    use openspimed_mod_scopenode::store::{SensorData, SensorEntry};
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let cfg = cfg.to_str().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let entry = |ppm: &str, t: i64| SensorEntry {
        node: "demo@scopenode.example.test".into(),
        scope: "co2".into(),
        spime: "s@example.test/spime".into(),
        at_unix: t,
        xml: format!(
            "<entry xmlns='openspime:protocol:extension:data'><ppm>{ppm}</ppm><exposure>outdoor</exposure></entry>"
        ),
    };
    rt.block_on(async {
        let store = SensorData::new(std::sync::Arc::new(
            openspimed::storage::sqlite::SqliteStore::open(
                &dir.path().join("data/openspimed.sqlite"),
            )
            .unwrap(),
        ));
        store
            .append_entries(vec![entry("176.4", 1_207_155_262)])
            .await
            .unwrap();
    });
    let o = run(&["--config", cfg, "scopenode", "list"], dir.path());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "demo@scopenode.example.test\tco2 (1 entry)\n"
    );
    rt.block_on(async {
        let store = SensorData::new(std::sync::Arc::new(
            openspimed::storage::sqlite::SqliteStore::open(
                &dir.path().join("data/openspimed.sqlite"),
            )
            .unwrap(),
        ));
        store
            .append_entries(vec![entry("180,5", 1_207_155_300)])
            .await
            .unwrap();
    });
    let o = run(&["--config", cfg, "scopenode", "list"], dir.path());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "demo@scopenode.example.test\tco2 (2 entries)\n"
    );
    let o = run(
        &[
            "--config",
            cfg,
            "scopenode",
            "show",
            "demo@scopenode.example.test",
        ],
        dir.path(),
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("scope co2: 2 entries") && out.contains("ppm:"),
        "{out}"
    );
    let o = run(
        &[
            "--config",
            cfg,
            "scopenode",
            "show",
            "nobody@scopenode.example.test",
        ],
        dir.path(),
    );
    assert!(!o.status.success());

    let o = run(
        &[
            "--config",
            cfg,
            "data",
            "export",
            "--spime",
            "s@example.test/spime",
        ],
        dir.path(),
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "node,scope,spime,time,exposure,ppm\n\
         demo@scopenode.example.test,co2,s@example.test/spime,2008-04-02T16:54:22+00:00,outdoor,176.4\n\
         demo@scopenode.example.test,co2,s@example.test/spime,2008-04-02T16:55:00+00:00,outdoor,\"180,5\"\n"
    );
    let o = run(
        &[
            "--config",
            cfg,
            "data",
            "export",
            "--spime",
            "s@example.test/spime",
            "--format",
            "json",
            "--since",
            "2008-04-02T16:55:00Z",
        ],
        dir.path(),
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["fields"]["ppm"], "180,5");
}
