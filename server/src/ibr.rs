//! XEP-0077 In-Band Registration: new accounts before authentication (when the host allows
//! it), password change and account removal after; on the pre-auth and from-client hooks.

use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use openspimed_module_api::{
    ClientSession, Condition, Element, Flow, FromClientHook, Hooks, Kinds, PreAuthHook,
    StanzaError, Unauthenticated, async_trait, iq_result,
};

use crate::core::router::{Outgoing, Router};
use crate::error::{StreamError, StreamErrorCondition, storage_failure};
use crate::storage::AccountStore;

/// `jabber:iq:register`
pub const NS: &str = "jabber:iq:register";
/// XEP-0077 §4: the stream feature advertising registration.
pub const NS_FEATURE: &str = "http://jabber.org/features/iq-register";

/// Adds registration to `router`'s hooks: accounts created with SCRAM keys of
/// `scram_iterations`, at most `per_hour` registrations per address and hour.
pub fn install(router: &Arc<Router>, scram_iterations: u32, per_hour: u32) {
    let handler = Arc::new(Registration {
        router: Arc::downgrade(router),
        accounts: router.accounts.clone(),
        scram_iterations,
        limit: RegistrationLimit::new(per_hour),
    });
    router.own_hooks.on_pre_auth(handler.clone());
    // Before IM's own-account handlers; the namespaces do not overlap.
    router.own_hooks.on_from_client(60, Kinds::IQ, handler);
}

/// The registration handlers.
struct Registration {
    /// For the hosts' `allow_registration` and the sessions of a removed account.
    router: Weak<Router>,
    /// Where accounts are created, changed and removed.
    accounts: Arc<dyn AccountStore>,
    /// SCRAM iterations of new credentials (`[auth] scram_iterations`).
    scram_iterations: u32,
    /// Registrations per client address.
    limit: RegistrationLimit,
}

impl Registration {
    fn allowed(&self, host: &str) -> bool {
        self.router
            .upgrade()
            .and_then(|r| r.host(host))
            .is_some_and(|h| h.allow_registration)
    }
}

#[async_trait]
impl PreAuthHook for Registration {
    fn features(&self, host: &str) -> Vec<Element> {
        if self.allowed(host) {
            vec![Element::new("register", NS_FEATURE)]
        } else {
            Vec::new()
        }
    }

    async fn stanza(&self, client: Unauthenticated<'_>, stanza: Element) -> Flow {
        if !is_register_iq(&stanza) {
            return Flow::Pass(stanza);
        }
        // XEP-0077 §3.1: registration happens on the secured stream, before SASL.
        Flow::Reply(register(self, client.host, client.ip, &stanza).await)
    }
}

#[async_trait]
impl FromClientHook for Registration {
    async fn client_sent(&self, from: ClientSession<'_>, stanza: Element) -> Flow {
        let (user, domain) = from.bare.split_once('@').unwrap_or(("", from.bare));
        let to_server = stanza
            .attr("to")
            .is_none_or(|t| t.eq_ignore_ascii_case(domain));
        if !to_server || !is_register_iq(&stanza) {
            return Flow::Pass(stanza);
        }
        match account_iq(self, user, domain, &stanza).await {
            AccountChange::Reply(r) => Flow::Reply(r),
            AccountChange::Removed(r) => {
                // XEP-0077 §3.2: every session of a removed account ends (this one after
                // the answer is written).
                if let Some(router) = self.router.upgrade() {
                    for tx in router.registry.sessions_of(from.bare) {
                        let _ = tx.try_send(Outgoing::Kick(Box::new(StreamError::with_text(
                            StreamErrorCondition::NotAuthorized,
                            "the account was removed",
                        ))));
                    }
                }
                Flow::Reply(r)
            }
        }
    }
}

/// Counts registrations per client address and hour.
struct RegistrationLimit {
    /// Window start and count per address.
    by_ip: DashMap<IpAddr, (Instant, u32)>,
    /// Registrations allowed per address and hour (0: no limit).
    per_hour: u32,
}

impl RegistrationLimit {
    /// A limiter with the configured rate.
    fn new(per_hour: u32) -> Self {
        RegistrationLimit {
            by_ip: DashMap::new(),
            per_hour,
        }
    }

    /// Whether the address has used up its registrations for this hour.
    fn exhausted(&self, ip: IpAddr) -> bool {
        let hour = Duration::from_secs(3600);
        self.per_hour != 0
            && self
                .by_ip
                .get(&ip)
                .is_some_and(|e| e.0.elapsed() < hour && e.1 >= self.per_hour)
    }

    /// Counts a successful registration.
    fn record(&self, ip: IpAddr) {
        let hour = Duration::from_secs(3600);
        if self.by_ip.len() > 100_000 {
            self.by_ip.retain(|_, e| e.0.elapsed() < hour);
        }
        let mut e = self.by_ip.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= hour {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }
}

/// Whether an iq is a registration request.
fn is_register_iq(el: &Element) -> bool {
    el.name() == "iq" && el.get_child("query", NS).is_some()
}

fn error(iq: &Element, err: StanzaError) -> Element {
    err.reply_to(iq)
        .unwrap_or_else(|| Element::new("iq", iq.ns_handle().clone()))
}

fn field(query: &Element, name: &str) -> Option<String> {
    query
        .get_child(name, NS)
        .map(|f| f.text().trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Registration before authentication (XEP-0077 §3.1). Returns the answer to send.
async fn register(r: &Registration, host: &str, ip: IpAddr, iq: &Element) -> Element {
    let registrations = &r.limit;
    let Some(query) = iq.get_child("query", NS) else {
        return error(iq, Condition::BadRequest.into());
    };
    if !r.allowed(host) {
        return error(iq, Condition::ServiceUnavailable.into());
    }
    match iq.attr("type") {
        Some("get") => iq_result(iq).with_child(
            Element::new("query", NS)
                .with_child(
                    Element::new("instructions", NS)
                        .with_text("Choose a username and password for use with this service."),
                )
                .with_child(Element::new("username", NS))
                .with_child(Element::new("password", NS)),
        ),
        Some("set") => {
            let (Some(user), Some(password)) = (field(query, "username"), field(query, "password"))
            else {
                return error(
                    iq,
                    StanzaError::new(Condition::NotAcceptable)
                        .with_text("username and password are required"),
                );
            };
            let node = crate::sasl::normalize_user(&user);
            if node.is_empty() {
                return error(
                    iq,
                    StanzaError::new(Condition::JidMalformed).with_text("not a valid username"),
                );
            }
            if registrations.exhausted(ip) {
                return error(
                    iq,
                    StanzaError::new(Condition::ResourceConstraint)
                        .with_text("too many registrations from this address; try later"),
                );
            }
            let creds = crate::sasl::derive_credentials(&password, r.scram_iterations);
            match r.accounts.create_account(&node, host, &creds).await {
                Ok(true) => {
                    registrations.record(ip);
                    let bare = format!("{node}@{host}");
                    tracing::info!(account = %bare, "registered in-band");
                    if let Some(h) = r.router.upgrade().and_then(|router| router.host(host)) {
                        h.hooks.account_created(&bare).await;
                    }
                    iq_result(iq)
                }
                Ok(false) => error(iq, Condition::Conflict.into()),
                Err(e) => error(iq, storage_failure("registering an account", &e)),
            }
        }
        _ => error(iq, Condition::BadRequest.into()),
    }
}

/// What an authenticated registration iq asks for.
enum AccountChange {
    /// Just answer.
    Reply(Element),
    /// Answer, then end every session of the account (it was removed).
    Removed(Element),
}

/// Registration requests of an authenticated account (XEP-0077 §3.2–3.3): its current
/// registration, password change, removal.
async fn account_iq(r: &Registration, user: &str, domain: &str, iq: &Element) -> AccountChange {
    let Some(query) = iq.get_child("query", NS) else {
        return AccountChange::Reply(error(iq, Condition::BadRequest.into()));
    };
    let reply = |el: Element| {
        let mut el = el;
        el.remove_attr("from");
        el
    };
    match iq.attr("type") {
        Some("get") => AccountChange::Reply(reply(
            iq_result(iq).with_child(
                Element::new("query", NS)
                    .with_child(Element::new("registered", NS))
                    .with_child(Element::new("username", NS).with_text(user))
                    .with_child(Element::new("password", NS)),
            ),
        )),
        Some("set") if query.get_child("remove", NS).is_some() => {
            match r.accounts.delete_account(user, domain).await {
                Ok(_) => {
                    let bare = format!("{user}@{domain}");
                    tracing::info!(account = %bare, "account removed in-band");
                    if let Some(h) = r.router.upgrade().and_then(|router| router.host(domain)) {
                        h.hooks.account_deleted(&bare).await;
                    }
                    AccountChange::Removed(reply(iq_result(iq)))
                }
                Err(e) => AccountChange::Reply(reply(error(
                    iq,
                    storage_failure("removing an account", &e),
                ))),
            }
        }
        Some("set") => {
            let (Some(name), Some(password)) = (field(query, "username"), field(query, "password"))
            else {
                return AccountChange::Reply(reply(error(iq, Condition::BadRequest.into())));
            };
            if crate::sasl::normalize_user(&name) != user {
                return AccountChange::Reply(reply(error(
                    iq,
                    StanzaError::new(Condition::NotAuthorized)
                        .with_text("you can only change your own password"),
                )));
            }
            let creds = crate::sasl::derive_credentials(&password, r.scram_iterations);
            match r.accounts.set_credentials(user, domain, &creds).await {
                Ok(_) => AccountChange::Reply(reply(iq_result(iq))),
                Err(e) => AccountChange::Reply(reply(error(
                    iq,
                    storage_failure("changing a password", &e),
                ))),
            }
        }
        _ => AccountChange::Reply(reply(error(iq, Condition::BadRequest.into()))),
    }
}
