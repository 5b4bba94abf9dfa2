//! SASL (RFC 6120 §6) on top of rsasl: SCRAM-SHA-256/-1 with and without channel binding
//! (`tls-exporter`, RFC 9266), and PLAIN for old clients over TLS.
//!
//! Accounts hold only SCRAM-derived keys. Because rsasl's callbacks are synchronous, the
//! username is read from the client's first message and the account's keys are fetched
//! *before* rsasl runs; the per-exchange callback then only hands them over.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use dashmap::DashMap;
use rand::RngCore;
use rsasl::callback::{Context as SaslContext, Request, SessionCallback, SessionData};
use rsasl::mechanisms::scram::properties::ScramStoredPassword;
use rsasl::prelude::{
    ChannelBindingCallback, Mechanism, Mechname, Registry, SASLConfig, SASLServer, Session,
    SessionError, State, Validation,
};
use rsasl::property::{AuthId, AuthzId, Password};
use rsasl::validate::{Validate, ValidationError};
use sha1::Sha1;
use sha2::{Digest, Sha256};

use crate::storage::{Credentials, ScramKeys};

/// Mechanisms when channel binding is available (TLS 1.3), strongest first.
static WITH_PLUS: &[Mechanism] = &[
    rsasl::mechanisms::scram::SCRAM_SHA256_PLUS,
    rsasl::mechanisms::scram::SCRAM_SHA256,
    rsasl::mechanisms::scram::SCRAM_SHA1_PLUS,
    rsasl::mechanisms::scram::SCRAM_SHA1,
    rsasl::mechanisms::plain::PLAIN,
];
/// Mechanisms when it is not.
static WITHOUT_PLUS: &[Mechanism] = &[
    rsasl::mechanisms::scram::SCRAM_SHA256,
    rsasl::mechanisms::scram::SCRAM_SHA1,
    rsasl::mechanisms::plain::PLAIN,
];

/// Derives storable SCRAM keys for both hashes from a password, with fresh salts.
pub fn derive_credentials(password: &str, iterations: u32) -> Credentials {
    Credentials {
        sha1: derive_keys::<Sha1>(password, &random_salt(), iterations),
        sha256: derive_keys::<Sha256>(password, &random_salt(), iterations),
    }
}

fn random_salt() -> Vec<u8> {
    let mut salt = vec![0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    salt
}

fn derive_keys<D>(password: &str, salt: &[u8], iterations: u32) -> ScramKeys
where
    D: Digest
        + sha2::digest::core_api::BlockSizeUser
        + sha2::digest::FixedOutputReset
        + Clone
        + Sync
        + Send,
{
    let mut salted = sha2::digest::Output::<D>::default();
    rsasl::mechanisms::scram::tools::hash_password::<D>(
        password.as_bytes(),
        iterations,
        salt,
        &mut salted,
    );
    let (client_key, server_key) = rsasl::mechanisms::scram::tools::derive_keys::<D>(&salted);
    ScramKeys {
        salt: salt.to_vec(),
        iterations,
        stored_key: D::digest(client_key).to_vec(),
        server_key: server_key.to_vec(),
    }
}

/// Checks a PLAIN password against the stored SHA-256 keys, in constant time.
fn verify_password(password: &[u8], keys: &ScramKeys) -> bool {
    let Ok(password) = std::str::from_utf8(password) else {
        return false;
    };
    let candidate = derive_keys::<Sha256>(password, &keys.salt, keys.iterations);
    constant_time_eq(&candidate.stored_key, &keys.stored_key)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Decodes SASL base64 (RFC 6120 §6.4.2): `=` is an empty response; line breaks and other
/// whitespace are skipped, because old clients fold the base64 every 76 characters.
pub fn decode_b64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if compact == "=" {
        return Ok(Vec::new());
    }
    B64.decode(compact)
}

/// Why an authentication failed, mapped to the RFC 6120 §6.5 condition by the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// Wrong credentials, unknown user, or a broken exchange.
    NotAuthorized,
    /// The authzid names someone else.
    InvalidAuthzid,
    /// The response was not well-formed.
    MalformedRequest,
    /// Too many failures recently; try later.
    Temporary,
}

impl AuthFailure {
    /// The `<failure/>` child element name.
    pub fn condition(self) -> &'static str {
        match self {
            AuthFailure::NotAuthorized => "not-authorized",
            AuthFailure::InvalidAuthzid => "invalid-authzid",
            AuthFailure::MalformedRequest => "malformed-request",
            AuthFailure::Temporary => "temporary-auth-failure",
        }
    }
}

/// What an exchange produced after a step.
pub enum Step {
    /// Send this `<challenge/>` and wait for a `<response/>`.
    Challenge(Vec<u8>),
    /// Authenticated as this (normalized) username; send `<success/>` with the data.
    Success {
        /// Localpart of the authenticated account.
        user: String,
        /// Additional data with success (SCRAM's server signature).
        data: Vec<u8>,
    },
    /// Failed; send `<failure/>` with this condition.
    Failure(AuthFailure),
}

/// Validation result handed from rsasl's callback back to us.
struct AuthValidation;
impl Validation for AuthValidation {
    type Value = Result<String, AuthFailure>;
}

/// Per-exchange callback: holds the prefetched keys for the one user this exchange is for.
struct ExchangeCallback {
    /// Normalized localpart named in the client's first message.
    user: String,
    /// The virtual host the stream is for.
    domain: String,
    /// That account's credentials, if it exists.
    creds: Option<Credentials>,
}

impl ExchangeCallback {
    fn authzid_ok(&self, authzid: Option<&str>) -> bool {
        // The 2008 client always sends its own bare JID as authzid: accept that.
        match authzid {
            None | Some("") => true,
            Some(z) => {
                z.eq_ignore_ascii_case(&format!("{}@{}", self.user, self.domain))
                    || z.eq_ignore_ascii_case(&self.user)
            }
        }
    }
}

impl SessionCallback for ExchangeCallback {
    fn callback(
        &self,
        session_data: &SessionData,
        context: &SaslContext,
        request: &mut Request,
    ) -> Result<(), SessionError> {
        let Some(creds) = &self.creds else {
            return Ok(());
        };
        if context.get_ref::<AuthId>().map(normalize_user).as_deref() != Some(&self.user) {
            return Ok(());
        }
        let mech = session_data.mechanism().mechanism.as_str();
        let keys = if mech.starts_with("SCRAM-SHA-256") {
            &creds.sha256
        } else if mech.starts_with("SCRAM-SHA-1") {
            &creds.sha1
        } else {
            return Ok(());
        };
        request.satisfy::<ScramStoredPassword>(&ScramStoredPassword::new(
            keys.iterations,
            &keys.salt,
            &keys.stored_key,
            &keys.server_key,
        ))?;
        Ok(())
    }

    fn validate(
        &self,
        session_data: &SessionData,
        context: &SaslContext,
        validate: &mut Validate<'_>,
    ) -> Result<(), ValidationError> {
        let mech = session_data.mechanism().mechanism.as_str();
        let authid = context.get_ref::<AuthId>().map(normalize_user);
        let result = match (&self.creds, authid) {
            (Some(creds), Some(authid)) if authid == self.user => {
                let credentials_ok = if mech == "PLAIN" {
                    context
                        .get_ref::<Password>()
                        .is_some_and(|p| verify_password(p, &creds.sha256))
                } else {
                    // SCRAM calls validate only after the client proof checked out.
                    true
                };
                if !credentials_ok {
                    Err(AuthFailure::NotAuthorized)
                } else if !self.authzid_ok(context.get_ref::<AuthzId>()) {
                    Err(AuthFailure::InvalidAuthzid)
                } else {
                    Ok(self.user.clone())
                }
            }
            _ => Err(AuthFailure::NotAuthorized),
        };
        validate.with::<AuthValidation, _>(|| Ok(result))?;
        Ok(())
    }
}

/// Normalizes a SASL username to a JID localpart (RFC 7622 §3.3, via the jid crate).
pub fn normalize_user(user: &str) -> String {
    match openspimed_module_api::jid::BareJid::new(&format!("{user}@x.invalid")) {
        Ok(j) => j.node().map(|n| n.as_str().to_owned()).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Reads the username from a client's first message, before rsasl runs.
pub fn username_from_initial(mechanism: &str, initial: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(initial).ok()?;
    if mechanism == "PLAIN" {
        let mut parts = text.split('\0');
        let _authzid = parts.next()?;
        let authcid = parts.next()?;
        parts.next()?;
        return Some(authcid.to_owned());
    }
    // SCRAM client-first: gs2-header "cbflag,[a=authzid]," then "n=user,r=nonce".
    let mut it = text.splitn(3, ',');
    let _cb = it.next()?;
    let _authz = it.next()?;
    let bare = it.next()?;
    let user = bare.split(',').find_map(|f| f.strip_prefix("n="))?;
    Some(user.replace("=2C", ",").replace("=3D", "="))
}

/// Channel-binding data of this TLS connection.
struct TlsExporter(Option<Vec<u8>>);

impl ChannelBindingCallback for TlsExporter {
    fn get_cb_data(&self, cbname: &str) -> Option<&[u8]> {
        match (cbname, &self.0) {
            ("tls-exporter", Some(data)) => Some(data),
            _ => None,
        }
    }
}

/// One authentication exchange on one stream.
pub struct Exchange {
    /// rsasl's state machine for the chosen mechanism.
    session: Session<AuthValidation, TlsExporter>,
}

impl Exchange {
    /// Starts an exchange for `mechanism` with the prefetched credentials of `user`.
    /// `cb_data` is the connection's `tls-exporter` value (TLS 1.3 only); `plus_offered`
    /// says whether a `-PLUS` mechanism was advertised, which decides how SCRAM treats a
    /// client's "y" flag (RFC 5802 §6: a downgrade only if we offered channel binding).
    pub fn start(
        mechanism: &str,
        user: &str,
        domain: &str,
        creds: Option<Credentials>,
        cb_data: Option<Vec<u8>>,
        plus_offered: bool,
    ) -> Result<Exchange, AuthFailure> {
        let registry = if plus_offered && cb_data.is_some() {
            Registry::with_mechanisms(WITH_PLUS)
        } else {
            Registry::with_mechanisms(WITHOUT_PLUS)
        };
        let config: Arc<SASLConfig> = SASLConfig::builder()
            .with_registry(registry)
            .with_callback(ExchangeCallback {
                user: user.to_owned(),
                domain: domain.to_owned(),
                creds,
            })
            .map_err(|_| AuthFailure::NotAuthorized)?;
        let server = SASLServer::<AuthValidation, _>::with_cb(config, TlsExporter(cb_data));
        let name = Mechname::parse(mechanism.as_bytes()).map_err(|_| AuthFailure::NotAuthorized)?;
        let session = server
            .start_suggested(name)
            .map_err(|_| AuthFailure::NotAuthorized)?;
        Ok(Exchange { session })
    }

    /// Feeds the client's data (decoded) and says what to answer.
    pub fn step(&mut self, input: &[u8]) -> Step {
        let mut out = Vec::new();
        match self.session.step(Some(input), &mut out) {
            Ok(State::Running) => Step::Challenge(out),
            Ok(State::Finished(_)) => match self.session.validation() {
                Some(Ok(user)) => Step::Success { user, data: out },
                Some(Err(f)) => Step::Failure(f),
                None => Step::Failure(AuthFailure::NotAuthorized),
            },
            Err(e) if e.is_mechanism_error() => {
                // A well-formed exchange never reaches this; a broken one is the client's.
                Step::Failure(AuthFailure::MalformedRequest)
            }
            Err(_) => Step::Failure(AuthFailure::NotAuthorized),
        }
    }
}

/// Counts failed authentications per client address and per account and refuses further
/// attempts for the rest of the window once either passes the limit.
pub struct AuthThrottle {
    /// Failures by client IP: (first failure in window, count).
    by_ip: DashMap<IpAddr, (Instant, u32)>,
    /// Failures by `user@domain`.
    by_account: DashMap<String, (Instant, u32)>,
    /// Failures tolerated within the window.
    max_failures: u32,
    /// Window length.
    window: Duration,
}

impl AuthThrottle {
    /// A throttle with the configured limits.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        AuthThrottle {
            by_ip: DashMap::new(),
            by_account: DashMap::new(),
            max_failures,
            window,
        }
    }

    fn over<K: std::hash::Hash + Eq>(&self, map: &DashMap<K, (Instant, u32)>, key: &K) -> bool {
        match map.get(key) {
            Some(e) => e.0.elapsed() < self.window && e.1 >= self.max_failures,
            None => false,
        }
    }

    /// Whether attempts from this address or for this account are refused right now.
    pub fn is_blocked(&self, ip: IpAddr, account: &str) -> bool {
        self.over(&self.by_ip, &ip) || self.over(&self.by_account, &account.to_owned())
    }

    /// Records a failure.
    pub fn failed(&self, ip: IpAddr, account: &str) {
        let bump = |e: &mut (Instant, u32)| {
            if e.0.elapsed() >= self.window {
                *e = (Instant::now(), 0);
            }
            e.1 += 1;
        };
        bump(&mut self.by_ip.entry(ip).or_insert((Instant::now(), 0)));
        bump(
            &mut self
                .by_account
                .entry(account.to_owned())
                .or_insert((Instant::now(), 0)),
        );
        // Keep the maps from growing without bound under a spray of addresses.
        if self.by_ip.len() > 100_000 {
            self.by_ip.retain(|_, e| e.0.elapsed() < self.window);
        }
        if self.by_account.len() > 100_000 {
            self.by_account.retain(|_, e| e.0.elapsed() < self.window);
        }
    }

    /// Clears an account's failures after a success.
    pub fn succeeded(&self, account: &str) {
        self.by_account.remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_exchange(mech: &str, user: &str, pass: &str, authzid: Option<&str>) -> Step {
        let creds = derive_credentials("secret", 4096);
        let client_cfg = rsasl::prelude::SASLConfig::with_credentials(
            authzid.map(str::to_owned),
            user.to_owned(),
            pass.to_owned(),
        )
        .unwrap();
        let client = rsasl::prelude::SASLClient::new(client_cfg);
        let name = Mechname::parse(mech.as_bytes()).unwrap();
        let mut c = client.start_suggested(&[name]).unwrap();
        let mut out = Vec::new();
        c.step(None, &mut out).unwrap();
        let who = username_from_initial(mech, &out).unwrap();
        let who = normalize_user(&who);
        let creds = (who == "alice").then_some(creds);
        let mut ex = Exchange::start(mech, &who, "localhost", creds, None, false).unwrap();
        let mut input = out;
        loop {
            match ex.step(&input) {
                Step::Challenge(ch) => {
                    let mut next = Vec::new();
                    c.step(Some(&ch), &mut next).unwrap();
                    input = next;
                }
                other => return other,
            }
        }
    }

    #[test]
    fn scram_and_plain_accept_right_and_refuse_wrong_passwords() {
        for mech in ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN"] {
            match client_exchange(mech, "Alice", "secret", None) {
                Step::Success { user, .. } => assert_eq!(user, "alice", "{mech}"),
                _ => panic!("{mech}: right password refused"),
            }
            assert!(
                matches!(
                    client_exchange(mech, "alice", "wrong", None),
                    Step::Failure(AuthFailure::NotAuthorized)
                ),
                "{mech}: wrong password accepted"
            );
            assert!(
                matches!(
                    client_exchange(mech, "mallory", "secret", None),
                    Step::Failure(AuthFailure::NotAuthorized)
                ),
                "{mech}: unknown user accepted"
            );
        }
    }

    #[test]
    fn plain_authzid_of_own_bare_jid_is_accepted_others_refused() {
        assert!(matches!(
            client_exchange("PLAIN", "alice", "secret", Some("alice@localhost")),
            Step::Success { .. }
        ));
        assert!(matches!(
            client_exchange("PLAIN", "alice", "secret", Some("bob@localhost")),
            Step::Failure(AuthFailure::InvalidAuthzid)
        ));
    }

    #[test]
    fn folded_base64_with_line_feeds_decodes() {
        let raw = "\0alice\0secret-with-a-long-password-that-makes-the-base64-fold-over-the-line";
        let enc = B64.encode(raw);
        let folded: String = enc
            .as_bytes()
            .chunks(76)
            .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
            .collect();
        assert_eq!(decode_b64(&folded).unwrap(), raw.as_bytes());
        assert_eq!(decode_b64("=").unwrap(), b"");
        assert!(decode_b64("not base64!").is_err());
    }

    #[test]
    fn throttle_blocks_after_the_limit_and_success_clears_the_account() {
        let t = AuthThrottle::new(2, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(!t.is_blocked(ip, "a@x"));
        t.failed(ip, "a@x");
        assert!(!t.is_blocked(ip, "a@x"));
        t.failed(ip, "a@x");
        assert!(t.is_blocked(ip, "a@x"));
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(
            t.is_blocked(other, "a@x"),
            "the account is throttled from anywhere"
        );
        t.succeeded("a@x");
        assert!(!t.is_blocked(other, "a@x"));
    }
}
