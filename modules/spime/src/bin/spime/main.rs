//! `spime`: the OpenSpime command line for devices and their owners.
//!
//! Credentials and keys live in a profile directory (`--profile`, `$SPIME_PROFILE`,
//! default `~/.spime`; see [`profile`]). Every option can also be set through the
//! environment variable shown in `--help`.

mod daemon;
mod entries;
mod profile;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use openspime::{ClaimKeyRef, Entry, RsaPublicKey};
use profile::{Account, HeldClaim, Profile};
use spime::{Authorize, ClientError, ConnectOptions, Spime};

/// The OpenSpime command line for devices (spimes) and their owners.
#[derive(Parser, Debug)]
#[command(name = "spime", version, about)]
struct Cli {
    /// Profile directory (account, key, claims).
    #[arg(long, global = true, env = "SPIME_PROFILE")]
    profile: Option<PathBuf>,
    /// Seconds to wait for any answer from the server.
    #[arg(long, global = true, env = "SPIME_TIMEOUT", default_value_t = 15)]
    timeout: u64,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create an RSA key pair in the profile.
    Keygen {
        /// Key size.
        #[arg(long, env = "SPIME_BITS", default_value_t = 2048)]
        bits: usize,
        /// Replace an existing key.
        #[arg(long, env = "SPIME_FORCE")]
        force: bool,
    },
    /// Create the account in-band, then publish the profile's key.
    Register {
        /// The JID (user@domain/resource; resource defaults to "spime").
        jid: String,
        /// The password.
        #[arg(long, env = "SPIME_PASSWORD")]
        password: String,
        /// The server's STARTTLS address (default: DOMAIN:5222).
        #[arg(long, env = "SPIME_SERVER")]
        server: Option<String>,
        /// PEM with the certificate or CA to trust (default: system roots).
        #[arg(long, env = "SPIME_CA")]
        ca: Option<PathBuf>,
        /// Certification service holding the key (default: cert.DOMAIN).
        #[arg(long, env = "SPIME_CERT")]
        cert: Option<String>,
        /// PubSub service of the spimeseek node (default: pubsub.DOMAIN).
        #[arg(long, env = "SPIME_PUBSUB")]
        pubsub: Option<String>,
    },
    /// Report entries to a ScopeNode scope.
    Report {
        /// The scope's JID (node@scopenode-domain/scope).
        #[arg(long, env = "SPIME_TO")]
        to: String,
        /// A field of the entry, name=value (repeat; `ele:m=120` adds unit='m').
        #[arg(long = "field", env = "SPIME_FIELD")]
        fields: Vec<String>,
        /// Entries from a CSV (header row = field names) or JSON (array of objects) file, or - for stdin.
        #[arg(long, env = "SPIME_FILE")]
        file: Option<PathBuf>,
        /// Sign with the profile's key.
        #[arg(long, env = "SPIME_SIGN")]
        sign: bool,
        /// Encrypt to the ScopeNode's key.
        #[arg(long, env = "SPIME_ENCRYPT")]
        encrypt: bool,
    },
    /// Ask a spime for a claim key and keep it in the profile.
    Claim {
        /// The spime's full JID.
        spime: String,
    },
    /// Device loop: answer claim requests from allowed owners, and report periodically
    /// what a command prints (`name=value` per line) when --every, --to and --command are set.
    /// With --daemon it returns once logged in and serving, and goes on in the background
    /// until `spime serve --stop`.
    Serve {
        /// JIDs allowed to claim this spime: a bare JID allows every resource of the
        /// account, a full JID that resource only (repeat, or comma-separated).
        #[arg(long = "allow", env = "SPIME_ALLOW", value_delimiter = ',')]
        allow: Vec<String>,
        /// Ask on the terminal for claimers not in --allow.
        #[arg(long, env = "SPIME_INTERACTIVE", conflicts_with = "daemon")]
        interactive: bool,
        /// Issue claim keys for the claimer's bare JID, so that every resource of the
        /// account may seek (default: the full JID that asked, as in seed §1.2.1).
        #[arg(long, env = "SPIME_CLAIM_BARE")]
        claim_bare: bool,
        /// Go to the background once logged in and serving (output in serve.log of the
        /// profile); the command returns only then, so the next one can rely on it.
        #[arg(long, env = "SPIME_DAEMON")]
        daemon: bool,
        /// End the background serve of this profile.
        #[arg(long, conflicts_with_all = ["daemon", "interactive"])]
        stop: bool,
        /// Seconds between periodic reports.
        #[arg(long, env = "SPIME_EVERY")]
        every: Option<u64>,
        /// The scope to report to.
        #[arg(long, env = "SPIME_TO")]
        to: Option<String>,
        /// Shell command whose output (name=value lines) is one entry.
        #[arg(long, env = "SPIME_COMMAND")]
        command: Option<String>,
        /// Sign the periodic reports.
        #[arg(long, env = "SPIME_SIGN")]
        sign: bool,
        /// Days a claim key stays valid.
        #[arg(long, env = "SPIME_CLAIM_DAYS", default_value_t = 365)]
        days: u64,
        /// Stop after this many seconds (default: run until killed).
        #[arg(long = "for", env = "SPIME_FOR")]
        duration: Option<u64>,
    },
    /// Seek a spime's entries at the ScopeNodes and print them.
    Seek {
        /// The sought spime's full JID.
        spime: String,
        /// Ask for answers encrypted to the profile's key.
        #[arg(long, env = "SPIME_ENCRYPTED")]
        encrypted: bool,
        /// Seconds to collect answers.
        #[arg(long, env = "SPIME_WAIT", default_value_t = 5)]
        wait: u64,
        /// Print JSON instead of a table.
        #[arg(long, env = "SPIME_JSON", conflicts_with = "csv")]
        json: bool,
        /// Print CSV (a header row, then one row per entry) instead of a table.
        #[arg(long, env = "SPIME_CSV")]
        csv: bool,
    },
}

fn err(msg: impl std::fmt::Display) -> String {
    msg.to_string()
}

/// Splits `user@domain/resource`.
fn split_jid(jid: &str) -> Result<(String, String, String), String> {
    let j =
        openspimed_stanza::jid::Jid::new(jid).map_err(|e| format!("{jid:?} is not a JID: {e}"))?;
    let user = j
        .node()
        .map(|n| n.to_string())
        .ok_or(format!("{jid:?} has no user part"))?;
    let resource = j
        .resource()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "spime".into());
    Ok((user, j.domain().to_string(), resource))
}

fn options(account: &Account, timeout: u64) -> ConnectOptions {
    ConnectOptions {
        server: account.server.clone(),
        ca: account.ca.clone(),
        timeout: Duration::from_secs(timeout),
    }
}

async fn login(account: &Account, timeout: u64) -> Result<Spime, String> {
    let (user, domain, resource) = split_jid(&account.jid)?;
    Spime::connect(
        &options(account, timeout),
        &user,
        &domain,
        &account.password,
        &resource,
    )
    .await
    .map_err(describe)
}

fn describe(e: ClientError) -> String {
    e.to_string()
}

async fn keygen(profile: &Profile, bits: usize, force: bool) -> Result<(), String> {
    if profile.key_path().exists() && !force {
        return Err(format!(
            "{} exists (use --force to replace it)",
            profile.key_path().display()
        ));
    }
    profile.save_key(&openspime::crypto::generate_key(bits).map_err(err)?)?;
    println!("wrote a {bits}-bit key to {}", profile.key_path().display());
    Ok(())
}

async fn register(profile: &Profile, timeout: u64, account: Account) -> Result<(), String> {
    let (user, domain, _) = split_jid(&account.jid)?;
    spime::register(
        &options(&account, timeout),
        &user,
        &domain,
        &account.password,
    )
    .await
    .map_err(describe)?;
    let key = match profile.key() {
        Ok(k) => k,
        Err(_) => {
            let k = openspime::crypto::generate_key(2048).map_err(err)?;
            profile.save_key(&k)?;
            k
        }
    };
    let mut s = login(&account, timeout).await?;
    s.publish_key(&account.cert, &key.to_public_key())
        .await
        .map_err(describe)?;
    profile.save("account.toml", &account)?;
    println!("registered {}; key published at {}", s.jid, account.cert);
    Ok(())
}

/// The ScopeNode key for `to`: from the profile's cache while it is fresh, else looked up
/// (certification service for the full JID, for the bare JID, then the node itself) and
/// cached.
async fn recipient_key(
    s: &mut Spime,
    profile: &Profile,
    cert: &str,
    to: &str,
    use_cache: bool,
) -> Result<(RsaPublicKey, bool), String> {
    let now = openspime::date::now();
    if use_cache && let Some(key) = profile.cached_key(to, now) {
        return Ok((key, true));
    }
    let (key, source) = s.recipient_key(cert, to).await.map_err(describe)?;
    profile.cache_key(to, &key, &source, now)?;
    Ok((key, false))
}

async fn report(
    profile: &Profile,
    timeout: u64,
    to: String,
    entries: Vec<Entry>,
    sign: bool,
    encrypt: bool,
) -> Result<(), String> {
    let account = profile.account()?;
    if entries.is_empty() {
        return Err("nothing to report: give --field name=value or --file".into());
    }
    let key = if sign { Some(profile.key()?) } else { None };
    let signer = key.as_ref().map(|k| (k, account.cert.as_str()));
    let mut s = login(&account, timeout).await?;
    let mut recipient = match encrypt {
        true => Some(recipient_key(&mut s, profile, &account.cert, &to, true).await?),
        false => None,
    };
    let n = entries.len();
    // Batches go one entry per report so that each is answered (and counted) alone.
    for (i, e) in entries.into_iter().enumerate() {
        let mut sent = s
            .report(
                &to,
                vec![e.clone()],
                signer,
                recipient.as_ref().map(|r| &r.0),
            )
            .await;
        // A cached key the ScopeNode can no longer decrypt with (it has a new one): look
        // it up again, once.
        if let (Err(failure), Some((_, true))) = (&sent, &recipient)
            && failure.has_condition("decryption-error")
        {
            recipient = Some(recipient_key(&mut s, profile, &account.cert, &to, false).await?);
            sent = s
                .report(&to, vec![e], signer, recipient.as_ref().map(|r| &r.0))
                .await;
        }
        sent.map_err(|e| format!("{to} refused the report: {e}"))?;
        if n > 1 {
            eprint!("\rreported {}/{n}", i + 1);
        }
    }
    if n > 1 {
        eprintln!();
    }
    println!(
        "reported {n} entr{} to {to}",
        if n == 1 { "y" } else { "ies" }
    );
    Ok(())
}

async fn claim(profile: &Profile, timeout: u64, target: String) -> Result<(), String> {
    let account = profile.account()?;
    let mut s = login(&account, timeout).await?;
    let (authorizes, claimkey) = s.claim(&target).await.map_err(describe)?;
    let mut claims = profile.claims();
    claims.claims.retain(|c| c.spime != target);
    claims.claims.push(HeldClaim {
        spime: target.clone(),
        authorizes: authorizes.clone(),
        claimkey,
        cert: account.cert.clone(),
    });
    profile.save("claims.toml", &claims)?;
    println!("claimed {target}: it authorizes {authorizes}");
    Ok(())
}

/// What `spime serve` was asked to do.
struct ServeArgs {
    /// JIDs (bare or full) allowed to claim.
    allow: Vec<String>,
    /// Ask on the terminal for the others.
    interactive: bool,
    /// Whom claim keys authorize.
    authorize: Authorize,
    /// Periodic reports: every, scope, command.
    periodic: Option<(Duration, String, String)>,
    /// Sign the periodic reports.
    sign: bool,
    /// Validity of issued claim keys.
    validity: Duration,
    /// Stop after this long.
    duration: Option<Duration>,
}

/// Whether `jid` (a claimer's full JID) is in `allow`, by full or by bare JID.
fn allowed_by(allow: &[String], jid: &str) -> bool {
    let bare = spime::bare(jid);
    allow.iter().any(|a| a == jid || a == bare)
}

async fn serve(profile: &Profile, timeout: u64, args: ServeArgs) -> Result<(), String> {
    let account = profile.account()?;
    let key = profile.key()?;
    let mut s = login(&account, timeout).await?;
    let signer = args.sign.then_some((&key, account.cert.as_str()));
    if let Some((_, to, cmd)) = &args.periodic {
        s.report(to, vec![entries::entry_from_command(cmd)?], signer, None)
            .await
            .map_err(|e| format!("{to} refused the report: {e}"))?;
    }
    println!("{}{}", daemon::READY, s.jid);
    let allowed = |jid: &str| {
        if allowed_by(&args.allow, jid) {
            return true;
        }
        if !args.interactive {
            return false;
        }
        // Interactive policy: the device's operator decides on the terminal.
        eprint!("{jid} asks to claim this spime. Allow? [y/N] ");
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer).is_ok()
            && matches!(answer.trim(), "y" | "Y" | "yes")
    };
    // Without --for: until killed (`serve --stop`), in slices of an hour.
    let until = args
        .duration
        .and_then(|d| std::time::Instant::now().checked_add(d));
    let mut answered = 0;
    loop {
        let left = match until {
            Some(u) => u.saturating_duration_since(std::time::Instant::now()),
            None => Duration::from_secs(3600),
        };
        if left.is_zero() {
            break;
        }
        let slice = args
            .periodic
            .as_ref()
            .map(|(e, _, _)| (*e).min(left))
            .unwrap_or(left);
        answered += s
            .answer_claims(&key, &allowed, args.authorize, args.validity, slice)
            .await
            .map_err(describe)?;
        if let Some((_, to, cmd)) = &args.periodic
            && until.is_none_or(|u| std::time::Instant::now() < u)
        {
            s.report(to, vec![entries::entry_from_command(cmd)?], signer, None)
                .await
                .map_err(|e| format!("{to} refused the report: {e}"))?;
        }
    }
    println!("answered {answered} claim(s)");
    Ok(())
}

async fn seek(
    profile: &Profile,
    timeout: u64,
    target: String,
    encrypted: bool,
    wait: u64,
    format: table::Format,
) -> Result<(), String> {
    let account = profile.account()?;
    let key = profile.key()?;
    let held = profile
        .claims()
        .claims
        .into_iter()
        .find(|c| c.spime == target);
    let claim = held.as_ref().map(|c| ClaimKeyRef {
        cert: c.cert.clone(),
        claims: c.spime.clone(),
        blob: c.claimkey.clone(),
    });
    let mut s = login(&account, timeout).await?;
    let found = s
        .seek(
            &account.pubsub,
            "spimeseek",
            &target,
            &key,
            &account.cert,
            claim,
            encrypted,
            Duration::from_secs(wait),
        )
        .await
        .map_err(describe)?;
    if found.is_empty() {
        return Err(no_answer(&s.jid, &target, wait, held.as_ref()));
    }
    print!("{}", table::render(&found, format)?);
    Ok(())
}

/// Why a seek may have found nothing, as far as the client can tell: ScopeNodes answer
/// only when they hold entries and the seeker may see them, and silently drop a request
/// they saw before or that expired (seed §1.2).
fn no_answer(me: &str, target: &str, wait: u64, held: Option<&HeldClaim>) -> String {
    let why = if me == target {
        "no ScopeNode holds entries of it".to_owned()
    } else {
        match held {
            None => format!(
                "you hold no claim key for {target}, so ScopeNodes ignore the request \
                 (run `spime claim {target}`)"
            ),
            Some(c) if c.authorizes != me && c.authorizes != spime::bare(me) => format!(
                "the claim key held authorizes {}, not {me}, so ScopeNodes ignore the request",
                c.authorizes
            ),
            Some(_) => "no ScopeNode holds entries of it, or the claim key held has expired \
                        or was not accepted"
                .to_owned(),
        }
    };
    format!(
        "no answer within {wait} s from any ScopeNode for {target}: {why} (a ScopeNode also \
         ignores a request id it saw before and a request that expired on the way)"
    )
}

async fn run(cli: Cli) -> Result<(), String> {
    let profile = Profile::at(cli.profile);
    let timeout = cli.timeout;
    match cli.command {
        Command::Keygen { bits, force } => keygen(&profile, bits, force).await,
        Command::Register {
            jid,
            password,
            server,
            ca,
            cert,
            pubsub,
        } => {
            let (user, domain, resource) = split_jid(&jid)?;
            let account = Account {
                jid: format!("{user}@{domain}/{resource}"),
                password,
                server: server.unwrap_or_else(|| format!("{domain}:5222")),
                ca,
                cert: cert.unwrap_or_else(|| format!("cert.{domain}")),
                pubsub: pubsub.unwrap_or_else(|| format!("pubsub.{domain}")),
            };
            register(&profile, timeout, account).await
        }
        Command::Report {
            to,
            fields,
            file,
            sign,
            encrypt,
        } => {
            let mut entries = match &file {
                Some(f) => entries::entries_from_file(f)?,
                None => Vec::new(),
            };
            if !fields.is_empty() {
                entries.push(entries::parse_fields(&fields)?);
            }
            report(&profile, timeout, to, entries, sign, encrypt).await
        }
        Command::Claim { spime: target } => claim(&profile, timeout, target).await,
        Command::Serve { stop: true, .. } => {
            let pid = daemon::stop(&profile)?;
            match profile.account() {
                Ok(a) => println!("stopped serving claims as {}", a.jid),
                Err(_) => println!("stopped the background serve (pid {pid})"),
            }
            Ok(())
        }
        Command::Serve {
            daemon: true,
            stop: false,
            ..
        } if !daemon::is_background() => {
            // Fail here rather than in the background on what can be checked at once.
            profile.account()?;
            profile.key()?;
            let line = daemon::start(&profile, Duration::from_secs(timeout + 5))?;
            println!("{line} (in the background: `spime serve --stop` ends it)");
            Ok(())
        }
        Command::Serve {
            allow,
            interactive,
            claim_bare,
            every,
            to,
            command,
            sign,
            days,
            duration,
            ..
        } => {
            let periodic = match (every, to, command) {
                (Some(e), Some(t), Some(c)) => Some((Duration::from_secs(e.max(1)), t, c)),
                (None, _, None) => None,
                _ => {
                    return Err("periodic reports need --every, --to and --command together".into());
                }
            };
            let args = ServeArgs {
                allow,
                interactive,
                authorize: if claim_bare {
                    Authorize::Account
                } else {
                    Authorize::Resource
                },
                periodic,
                sign,
                validity: Duration::from_secs(days * 86_400),
                duration: duration.map(Duration::from_secs),
            };
            let served = serve(&profile, timeout, args).await;
            daemon::finished(&profile);
            served
        }
        Command::Seek {
            spime: target,
            encrypted,
            wait,
            json,
            csv,
        } => {
            let format = match (json, csv) {
                (true, _) => table::Format::Json,
                (_, true) => table::Format::Csv,
                _ => table::Format::Table,
            };
            seek(&profile, timeout, target, encrypted, wait, format).await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spime: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spime: error: {}", e.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::allowed_by;

    #[test]
    fn allow_matches_a_claimer_by_full_or_by_bare_jid() {
        let allow = vec![
            "alice@localhost".to_owned(),
            "bob@localhost/phone".to_owned(),
        ];
        assert!(allowed_by(&allow, "alice@localhost/laptop"));
        assert!(allowed_by(&allow, "bob@localhost/phone"));
        assert!(!allowed_by(&allow, "bob@localhost/laptop"));
        assert!(!allowed_by(&allow, "mallory@localhost/alice@localhost"));
    }
}
