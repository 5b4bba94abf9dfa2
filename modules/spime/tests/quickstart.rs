//! The README quickstart, command by command, against a real server on its embedded
//! default configuration (localhost hosts the OpenSpime network; registration is open),
//! and the bad inputs that must each give one clear line and a non-zero exit.

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
    rt.block_on(quickstart_commands_and_their_outputs());
    println!("test quickstart_commands_and_their_outputs ... ok");
    println!("1 passed, 0 failed");
    std::process::ExitCode::SUCCESS
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
    assert_eq!(
        out(&o),
        "claimed sensor1@localhost/spime: it authorizes alice@localhost\n"
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
    assert_eq!(ppms, ["420.0", "418.25", "415.0", "412.5"], "newest first");
    assert_eq!(rows[0]["from"], "demo@scopenode.localhost/co2");
    // 5. The device seeks itself (table).
    let o = run(
        &net,
        "device",
        &["seek", "sensor1@localhost/spime", "--wait", "3"],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = out(&o);
    assert!(table.starts_with("from\tdate\tppm"), "{table}");
    assert_eq!(table.lines().count(), 5, "{table}");

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
