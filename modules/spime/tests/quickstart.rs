//! The README quickstart: the block itself, taken out of README.md and pasted into `bash`
//! in a network namespace where a server runs on its embedded default (ports 5222…, the
//! generated certificate); then command by command with every option, against a real
//! server on the embedded default's OpenSpime network, and the bad inputs that must each
//! give one clear line and a non-zero exit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Output, Stdio};

struct Net {
    /// The server: a real `openspimed` process (this test binary re-executed as it).
    server: Option<std::process::Child>,
    /// Data and profiles.
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT` of the STARTTLS listener.
    addr: String,
    /// The CA certificate the client trusts.
    ca: std::path::PathBuf,
}

const AS_SERVER: &str = "OPENSPIMED_TEST_AS_SERVER";

fn start() -> Net {
    let dir = tempfile::tempdir().unwrap();
    let ca = openspimed_certs::DevCa::new("quickstart CA").unwrap();
    let (cert, key) = ca
        .issue(&[
            "localhost",
            "cert.localhost",
            "pubsub.localhost",
            "scopenode.localhost",
        ])
        .unwrap();
    std::fs::write(dir.path().join("c.pem"), cert).unwrap();
    std::fs::write(dir.path().join("k.pem"), key).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &ca.cert_pem).unwrap();
    // The embedded default's OpenSpime network, on a free port and a temporary directory.
    let config = dir.path().join("openspimed.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[listeners]\nc2s = [\"127.0.0.1:0\"]\nc2s_direct_tls = []\n\
             [hosts.localhost]\ncertificate = \"c.pem\"\nkey = \"k.pem\"\nallow_registration = true\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(AS_SERVER, "1")
        .args(["--config", config.to_str().unwrap(), "run"]);
    let (child, addr) = openspimed_tests::spawn_server(cmd);
    Net {
        addr: addr.to_string(),
        server: Some(child),
        ca: dir.path().join("ca.pem"),
        dir,
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // A failed assertion must not leave the server running.
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

fn spime(net: &Net, profile: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spime"));
    c.env("SPIME_PROFILE", net.dir.path().join(profile))
        .env("SPIME_TIMEOUT", "10")
        .env_remove("SPIME_PASSWORD")
        .args(args);
    c
}

async fn run(net: &Net, profile: &str, args: &[&str]) -> Output {
    let mut c = spime(net, profile, args);
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn one_error_line(o: &Output) -> String {
    assert!(!o.status.success(), "must fail: {}", out(o));
    let err = String::from_utf8_lossy(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    lines[0].to_owned()
}

async fn register(net: &Net, profile: &str, jid: &str) {
    let o = run(
        net,
        profile,
        &[
            "register",
            jid,
            "--password",
            "pw",
            "--server",
            &net.addr,
            "--ca",
            net.ca.to_str().unwrap(),
        ],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out(&o).contains("key published at cert.localhost"),
        "{}",
        out(&o)
    );
}

fn main() -> std::process::ExitCode {
    if std::env::var_os(AS_SERVER).is_some() {
        return openspimed::cli::main();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(readme_quickstart_pasted_as_one_block());
    println!("test readme_quickstart_pasted_as_one_block ... ok");
    rt.block_on(quickstart_commands_and_their_outputs());
    println!("test quickstart_commands_and_their_outputs ... ok");
    println!("2 passed, 0 failed");
    std::process::ExitCode::SUCCESS
}

/// The first ```sh block after the README's "## Quickstart" heading.
fn readme_quickstart() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = &readme[readme
        .find("\n## Quickstart")
        .expect("a Quickstart section")..];
    let start = section.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let len = section[start..].find("```\n").expect("the block ends");
    section[start..start + len].to_owned()
}

async fn readme_quickstart_pasted_as_one_block() {
    let block = readme_quickstart();
    // What the README says each command prints: its `#   ` lines.
    let expected: String = block
        .lines()
        .filter_map(|l| l.strip_prefix("#   "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(expected.lines().count() >= 7, "{block}");
    // The lines as written; only the alias points at the client this test built instead of
    // `cargo run` (which would build it again).
    let mut script = String::from("set -e\nshopt -s expand_aliases\n");
    let mut aliased = false;
    for line in block.lines() {
        if line.starts_with("alias spime=") {
            script.push_str(&format!("alias spime='{}'\n", env!("CARGO_BIN_EXE_spime")));
            aliased = true;
        } else {
            script.push_str(line);
            script.push('\n');
        }
    }
    assert!(aliased, "the block defines the spime alias: {block}");

    let ns = openspimed_tests::NetNs::new("quickstart").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut server = ns.command(std::env::current_exe().unwrap());
    server
        .arg("run")
        .env(AS_SERVER, "1")
        .env_remove("RUST_LOG")
        .current_dir(dir.path());
    let (mut server, addr, _log) = openspimed_tests::spawn_server_logged(server);
    assert_eq!(addr.port(), 5222, "the embedded default's c2s port");
    let mut paste = ns.command("bash");
    paste
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SPIME_") {
            paste.env_remove(k);
        }
    }
    // Output to files, not pipes: a command left running in the background (as `serve &`
    // was) would hold a pipe open after bash exits.
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    paste
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let mut bash = paste.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = bash.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = bash.kill();
            break None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let left: Vec<u32> = ns
        .pids()
        .into_iter()
        .filter(|p| *p != server.id())
        .collect();
    server.kill().unwrap();
    server.wait().unwrap();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "the pasted quickstart failed ({status:?}):\n{stdout}{stderr}"
    );
    assert_eq!(stdout, expected);
    // `serve --stop` ended the background serve.
    assert!(left.is_empty(), "processes left running: {left:?}");
    assert!(!dir.path().join("device/serve.pid").exists());
}

async fn quickstart_commands_and_their_outputs() {
    let mut net = start();
    // 1. A device and its owner register (XEP-0077) and publish their keys.
    register(&net, "device", "sensor1@localhost/spime").await;
    register(&net, "owner", "alice@localhost/laptop").await;

    // 2. The device reports, signed and encrypted to the ScopeNode.
    let o = run(
        &net,
        "device",
        &[
            "report",
            "--to",
            "demo@scopenode.localhost/co2",
            "--field",
            "date=2026-11-21T10:00:00Z",
            "--field",
            "ppm=412.5",
            "--field",
            "exposure=outdoor",
            "--field",
            "ele:m=120.0",
            "--sign",
            "--encrypt",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        out(&o),
        "reported 1 entry to demo@scopenode.localhost/co2\n"
    );
    // The key it found is kept in the profile, with where it came from.
    let keys_toml = net.dir.path().join("device/keys.toml");
    let cached: toml::Table =
        toml::from_str(&std::fs::read_to_string(&keys_toml).unwrap()).unwrap();
    let entry = &cached["keys"].as_array().unwrap()[0];
    assert_eq!(entry["to"].as_str(), Some("demo@scopenode.localhost/co2"));
    assert_eq!(
        entry["source"].as_str(),
        Some("cert.localhost (demo@scopenode.localhost/co2)")
    );
    let node_pem = entry["pem"].as_str().unwrap().to_owned();
    // A cached key the ScopeNode cannot decrypt with (here: someone else's) is looked up
    // again once, and the report goes through.
    let other = openspime::crypto::private_key_from_pem(
        &std::fs::read_to_string(net.dir.path().join("owner/key.pem")).unwrap(),
    )
    .unwrap();
    let wrong_pem = openspime::crypto::public_key_to_pem(&other.to_public_key()).unwrap();
    std::fs::write(
        &keys_toml,
        std::fs::read_to_string(&keys_toml)
            .unwrap()
            .replace(&node_pem, &wrong_pem),
    )
    .unwrap();
    let o = run(
        &net,
        "device",
        &[
            "report",
            "--to",
            "demo@scopenode.localhost/co2",
            "--field",
            "date=2026-11-21T09:00:00Z",
            "--field",
            "ppm=400.0",
            "--sign",
            "--encrypt",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        std::fs::read_to_string(&keys_toml)
            .unwrap()
            .contains(&node_pem)
    );
    // A batch from a CSV file.
    let csv = net.dir.path().join("batch.csv");
    std::fs::write(
        &csv,
        "date,ppm\n2026-11-21T11:00:00Z,415.0\n2026-11-21T12:00:00Z,418.25\n",
    )
    .unwrap();
    let o = run(
        &net,
        "device",
        &[
            "report",
            "--to",
            "demo@scopenode.localhost/co2",
            "--file",
            csv.to_str().unwrap(),
            "--sign",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        out(&o),
        "reported 2 entries to demo@scopenode.localhost/co2\n"
    );

    // 3. The owner claims the device while the device serves claims.
    let mut serve = spime(
        &net,
        "device",
        &[
            "serve",
            "--allow",
            "alice@localhost",
            "--for",
            "30",
            // A periodic report from a command's output: one right away, then every 60 s.
            "--every",
            "60",
            "--to",
            "demo@scopenode.localhost/co2",
            "--sign",
            "--command",
            "printf 'date=2026-11-21T13:00:00Z\\nppm=420.0\\n'",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = std::io::BufReader::new(serve.stdout.take().unwrap()).lines();
    let first = tokio::task::spawn_blocking(move || {
        let l = lines.next().unwrap().unwrap();
        (l, lines)
    })
    .await
    .unwrap();
    assert_eq!(first.0, "serving claims as sensor1@localhost/spime");
    let o = run(&net, "owner", &["claim", "sensor1@localhost/spime"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The claim key names the full JID that asked (seed §1.2.1); --allow matched its bare JID.
    assert_eq!(
        out(&o),
        "claimed sensor1@localhost/spime: it authorizes alice@localhost/laptop\n"
    );
    serve.kill().unwrap();
    serve.wait().unwrap();

    // 4. The owner seeks the device's data, encrypted to the owner's key.
    let o = run(
        &net,
        "owner",
        &[
            "seek",
            "sensor1@localhost/spime",
            "--encrypted",
            "--wait",
            "3",
            "--json",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    let ppms: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ppm"].as_str().unwrap())
        .collect();
    assert_eq!(
        ppms,
        ["420.0", "418.25", "415.0", "412.5", "400.0"],
        "newest first"
    );
    assert_eq!(rows[0]["from"], "demo@scopenode.localhost/co2");
    // Twice within a second from the same profile: each request gets its own id, so the
    // second is answered too (the same id twice is dropped as a replay). The first one
    // does not wait for its answers; the second prints CSV.
    let first = run(
        &net,
        "owner",
        &["seek", "sensor1@localhost/spime", "--wait", "0"],
    )
    .await;
    assert!(one_error_line(&first).contains("no answer within 0 s"));
    let o = run(
        &net,
        "owner",
        &["seek", "sensor1@localhost/spime", "--wait", "2", "--csv"],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv_out = out(&o);
    let mut csv_lines = csv_out.lines();
    assert_eq!(csv_lines.next(), Some("from,date,ppm,exposure,ele"));
    assert_eq!(
        csv_lines.next(),
        Some("demo@scopenode.localhost/co2,2026-11-21T13:00:00Z,420.0,,")
    );
    assert_eq!(csv_out.lines().count(), 6, "{csv_out}");
    // 5. The device seeks itself (table).
    let o = run(
        &net,
        "device",
        &["seek", "sensor1@localhost/spime", "--wait", "3"],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = out(&o);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    // Every column starts where its header does.
    for header in ["date", "ppm", "exposure", "ele"] {
        let at = lines[0].find(header).unwrap();
        assert!(at > 0 && lines[0][..at].ends_with("  "), "{table}");
        for row in lines[1..].iter().filter(|r| r.len() > at) {
            assert!(row[..at].ends_with("  "), "{header} in {row:?}:\n{table}");
        }
    }
    assert!(lines[1].starts_with("demo@scopenode.localhost/co2  2026-11-21T13:00:00Z  420.0"));

    // keygen writes a key once and refuses to overwrite it without --force.
    let o = run(&net, "spare", &["keygen", "--bits", "1024"]).await;
    assert!(
        out(&o).starts_with("wrote a 1024-bit key to "),
        "{}",
        out(&o)
    );
    let line = one_error_line(&run(&net, "spare", &["keygen"]).await);
    assert!(line.contains("use --force"), "{line}");

    // Bad input: one line and a non-zero exit each.
    let line = one_error_line(
        &run(
            &net,
            "device",
            &[
                "report",
                "--to",
                "demo@scopenode.localhost/co2",
                "--field",
                "date=2026-11-21T10:00:00Z",
                "--field",
                "temperature=20",
            ],
        )
        .await,
    );
    assert!(line.contains("inconsistent-data-with-scope"), "{line}");
    let line = one_error_line(
        &run(
            &net,
            "device",
            &[
                "report",
                "--to",
                "nobody@scopenode.localhost/co2",
                "--field",
                "ppm=1",
            ],
        )
        .await,
    );
    assert!(line.contains("item-not-found"), "{line}");
    let line = one_error_line(
        &run(
            &net,
            "device",
            &["seek", "other@localhost/spime", "--wait", "1"],
        )
        .await,
    );
    assert!(line.contains("no answer within 1 s"), "{line}");
    assert!(
        line.contains("you hold no claim key for other@localhost/spime"),
        "{line}"
    );
    // --stop with nothing in the background, then a background serve that cannot log in:
    // one line each, and nothing left behind.
    let line = one_error_line(&run(&net, "device", &["serve", "--stop"]).await);
    assert!(line.contains("not serving in the background"), "{line}");
    // Wrong password.
    let acct = net.dir.path().join("device/account.toml");
    let good = std::fs::read_to_string(&acct).unwrap();
    std::fs::write(
        &acct,
        good.replace("password = \"pw\"", "password = \"wrong\""),
    )
    .unwrap();
    let line = one_error_line(&run(&net, "device", &["seek", "sensor1@localhost/spime"]).await);
    assert!(line.contains("wrong username or password"), "{line}");
    let line = one_error_line(&run(&net, "device", &["serve", "--daemon"]).await);
    assert!(line.contains("wrong username or password"), "{line}");
    assert!(!net.dir.path().join("device/serve.pid").exists());
    // An untrusted certification service.
    std::fs::write(
        &acct,
        good.replace(
            "cert = \"cert.localhost\"",
            "cert = \"cert.untrusted.example\"",
        ),
    )
    .unwrap();
    let line = one_error_line(
        &run(
            &net,
            "device",
            &[
                "report",
                "--to",
                "demo@scopenode.localhost/co2",
                "--field",
                "date=2026-11-21T10:00:00Z",
                "--field",
                "ppm=1",
                "--sign",
            ],
        )
        .await,
    );
    assert!(line.contains("signature-error-invalid-cert-auth"), "{line}");
    std::fs::write(&acct, good).unwrap();

    // Server down.
    if let Some(mut s) = net.server.take() {
        s.kill().unwrap();
        s.wait().unwrap();
    }
    let line = one_error_line(&run(&net, "device", &["seek", "sensor1@localhost/spime"]).await);
    assert!(line.contains("cannot reach the server"), "{line}");
    assert!(Path::new(&net.ca).exists());
}
