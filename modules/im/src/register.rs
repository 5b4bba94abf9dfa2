//! XEP-0077 In-Band Registration: new accounts before authentication (when the host allows
//! it), password change and account removal after; on the pre-auth and from-client hooks.
//! The server makes, changes and removes the accounts ([`ServerHandle::create_account`]):
//! the credentials are its business, the protocol this module's.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use openspimed_module_api::{
    ClientSession, Condition, Created, Element, Flow, FromClientHook, Hooks, IqType, Kinds,
    PreAuthHook, ServerHandle, StanzaError, Unauthenticated, async_trait, iq_result,
};

use crate::storage_failure;

/// `jabber:iq:register`
pub const NS: &str = "jabber:iq:register";
/// XEP-0077 §4: the stream feature advertising registration.
pub const NS_FEATURE: &str = "http://jabber.org/features/iq-register";

/// Adds registration to `hooks`; accounts are made through `server`.
pub fn install(server: Arc<dyn ServerHandle>, hooks: &dyn Hooks) {
    let handler = Arc::new(Registration {
        server,
        limit: RegistrationLimit::default(),
    });
    hooks.on_pre_auth(handler.clone());
    // Before the own-account handlers; the namespaces do not overlap.
    hooks.on_from_client(60, Kinds::IQ, handler);
}

/// The registration handlers.
struct Registration {
    /// Where accounts are made, changed and removed, and which hosts allow registration.
    server: Arc<dyn ServerHandle>,
    /// Registrations per client address.
    limit: RegistrationLimit,
}

#[async_trait]
impl PreAuthHook for Registration {
    fn features(&self, host: &str) -> Vec<Element> {
        if self.server.registration_limit(host).is_some() {
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
        Flow::Reply(account_iq(self, user, from.bare, &stanza).await)
    }
}

/// Counts registrations per client address and hour.
#[derive(Default)]
struct RegistrationLimit {
    /// Window start and count per address.
    by_ip: DashMap<IpAddr, (Instant, u32)>,
}

impl RegistrationLimit {
    /// Whether the address has used up its `per_hour` registrations (0: no limit).
    fn exhausted(&self, ip: IpAddr, per_hour: u32) -> bool {
        let hour = Duration::from_secs(3600);
        per_hour != 0
            && self
                .by_ip
                .get(&ip)
                .is_some_and(|e| e.0.elapsed() < hour && e.1 >= per_hour)
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
    let Some(per_hour) = r.server.registration_limit(host) else {
        return error(iq, Condition::ServiceUnavailable.into());
    };
    match IqType::of(iq) {
        Some(IqType::Get) => iq_result(iq).with_child(
            Element::new("query", NS)
                .with_child(
                    Element::new("instructions", NS)
                        .with_text("Choose a username and password for use with this service."),
                )
                .with_child(Element::new("username", NS))
                .with_child(Element::new("password", NS)),
        ),
        Some(IqType::Set) => {
            let (Some(user), Some(password)) = (field(query, "username"), field(query, "password"))
            else {
                return error(
                    iq,
                    StanzaError::new(Condition::NotAcceptable)
                        .with_text("username and password are required"),
                );
            };
            if registrations.exhausted(ip, per_hour) {
                return error(
                    iq,
                    StanzaError::new(Condition::ResourceConstraint)
                        .with_text("too many registrations from this address; try later"),
                );
            }
            match r.server.create_account(&user, host, &password).await {
                Ok(Created::Account(bare)) => {
                    registrations.record(ip);
                    tracing::info!(account = %bare, "registered in-band");
                    iq_result(iq)
                }
                Ok(Created::Invalid) => error(
                    iq,
                    StanzaError::new(Condition::JidMalformed).with_text("not a valid username"),
                ),
                Ok(Created::Taken) => error(iq, Condition::Conflict.into()),
                Err(e) => error(iq, storage_failure("registering an account", &e)),
            }
        }
        _ => error(iq, Condition::BadRequest.into()),
    }
}

/// Registration requests of an authenticated account (XEP-0077 §3.2–3.3): its current
/// registration, password change, removal. Returns the answer.
async fn account_iq(r: &Registration, user: &str, bare: &str, iq: &Element) -> Element {
    let mut reply = account_answer(r, user, bare, iq).await;
    reply.remove_attr("from");
    reply
}

async fn account_answer(r: &Registration, user: &str, bare: &str, iq: &Element) -> Element {
    let Some(query) = iq.get_child("query", NS) else {
        return error(iq, Condition::BadRequest.into());
    };
    match IqType::of(iq) {
        Some(IqType::Get) => iq_result(iq).with_child(
            Element::new("query", NS)
                .with_child(Element::new("registered", NS))
                .with_child(Element::new("username", NS).with_text(user))
                .with_child(Element::new("password", NS)),
        ),
        Some(IqType::Set) if query.get_child("remove", NS).is_some() => {
            // The server ends every session of the account after this answer.
            match r.server.delete_account(bare).await {
                Ok(_) => {
                    tracing::info!(account = %bare, "account removed in-band");
                    iq_result(iq)
                }
                Err(e) => error(iq, storage_failure("removing an account", &e)),
            }
        }
        Some(IqType::Set) => {
            let (Some(name), Some(password)) = (field(query, "username"), field(query, "password"))
            else {
                return error(iq, Condition::BadRequest.into());
            };
            if r.server.account_name(&name) != user {
                return error(
                    iq,
                    StanzaError::new(Condition::NotAuthorized)
                        .with_text("you can only change your own password"),
                );
            }
            match r.server.set_password(bare, &password).await {
                Ok(_) => iq_result(iq),
                Err(e) => error(iq, storage_failure("changing a password", &e)),
            }
        }
        _ => error(iq, Condition::BadRequest.into()),
    }
}
