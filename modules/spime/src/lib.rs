//! The OpenSpime client library: what a device (spime) or its owner does on the network.
//!
//! [`Spime::connect`] logs in over STARTTLS; then [`Spime::publish_key`],
//! [`Spime::fetch_key`] (XEP-0189), [`Spime::report`] (seed §1.0), [`Spime::claim`] and
//! [`Spime::answer_claims`] (seed §1.1), [`Spime::seek`] (seed §1.2). [`register`] creates an
//! account in-band (XEP-0077). Errors are [`ClientError`]s that read as one line.

pub mod conn;

use std::time::{Duration, Instant};

use openspime::keyinfo::{self, KeyForm};
use openspime::{
    Claim, ClaimKeyRef, Container, Data, Entry, RsaPrivateKey, RsaPublicKey, SeekRequest, SpimeSeek,
};
use openspimed_stanza::{Element, ns};

use conn::Conn;
pub use conn::{ClientError, ConnectOptions};

const PUBSUB: &str = "http://jabber.org/protocol/pubsub";

/// Creates `user@domain` in-band (XEP-0077) when the server allows it.
pub async fn register(
    opts: &ConnectOptions,
    user: &str,
    domain: &str,
    password: &str,
) -> Result<(), ClientError> {
    let (mut conn, features) = Conn::secure(opts, domain).await?;
    if features
        .get_child("register", "http://jabber.org/features/iq-register")
        .is_none()
    {
        return Err(ClientError::Refused(format!(
            "{domain} does not allow in-band registration (ask its operator: openspimed adduser)"
        )));
    }
    let iq = Element::new("iq", ns::CLIENT)
        .with_attr("type", "set")
        .with_attr("id", "reg")
        .with_child(
            Element::new("query", "jabber:iq:register")
                .with_child(Element::new("username", "jabber:iq:register").with_text(user))
                .with_child(Element::new("password", "jabber:iq:register").with_text(password)),
        );
    let answer = conn.iq(iq).await?;
    match answer.attr("type") {
        Some("result") => Ok(()),
        _ => Err(ClientError::Refused(format!(
            "registration refused: {}",
            error_text(&answer)
        ))),
    }
}

/// The condition (and text) of an error stanza, for messages.
pub fn error_text(stanza: &Element) -> String {
    let (conditions, text) = error_parts(stanza);
    conn::describe_conditions(&conditions, text.as_deref())
}

/// The condition names and the text of an error stanza.
fn error_parts(stanza: &Element) -> (Vec<String>, Option<String>) {
    let err = stanza.children().find(|c| c.name() == "error");
    let conditions = err
        .into_iter()
        .flat_map(|e| e.children())
        .filter(|c| c.name() != "text")
        .map(|c| c.name().to_owned())
        .collect();
    let text = err
        .and_then(|e| e.children().find(|c| c.name() == "text"))
        .map(|t| t.text());
    (conditions, text)
}

/// The error stanza `stanza` from `from`, as a [`ClientError::Answered`].
fn answered(from: &str, stanza: &Element) -> ClientError {
    let (conditions, text) = error_parts(stanza);
    ClientError::Answered {
        from: from.to_owned(),
        conditions,
        text,
    }
}

/// The bare JID of `jid` (everything before the resource).
pub fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

/// Where a ScopeNode's public key was found (wire profile §4, in the order it is tried).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// A certification service answered for the JID asked (the full JID, or its bare JID).
    Certified {
        /// The certification service.
        service: String,
        /// The JID whose key it returned.
        jid: String,
    },
    /// The entity itself answered a XEP-0189 request (an uncertified key, as the 2008
    /// ScopeNodes serve theirs).
    Itself(String),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Certified { service, jid } => write!(f, "{service} ({jid})"),
            KeySource::Itself(jid) => write!(f, "{jid} itself"),
        }
    }
}

/// Whom the claim keys a spime issues authorize (wire profile §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authorize {
    /// The requester's full JID, as in seed §1.2.1 (`spimeowner@mydomain.com/web`): only
    /// the resource that claimed may seek.
    Resource,
    /// The requester's bare JID: every resource of the account may seek.
    Account,
}

/// A logged-in OpenSpime entity.
pub struct Spime {
    /// The connection.
    conn: Conn,
    /// Our full JID.
    pub jid: String,
    /// Source of iq ids.
    next_id: u64,
}

impl Spime {
    /// Logs in as `user@domain/resource`.
    pub async fn connect(
        opts: &ConnectOptions,
        user: &str,
        domain: &str,
        password: &str,
        resource: &str,
    ) -> Result<Spime, ClientError> {
        let (conn, features) = Conn::secure(opts, domain).await?;
        let (conn, jid) = conn
            .login(&features, domain, user, password, resource)
            .await?;
        Ok(Spime {
            conn,
            jid,
            next_id: 0,
        })
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        format!("spime{}", self.next_id)
    }

    async fn request(
        &mut self,
        kind: &str,
        to: &str,
        payload: Element,
    ) -> Result<Element, ClientError> {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", kind)
            .with_attr("id", self.id())
            .with_attr("to", to)
            .with_child(payload);
        let answer = self.conn.iq(iq).await?;
        if answer.attr("type") == Some("result") {
            Ok(answer)
        } else {
            Err(answered(to, &answer))
        }
    }

    /// Publishes our public key at a certification service.
    pub async fn publish_key(
        &mut self,
        service: &str,
        key: &RsaPublicKey,
    ) -> Result<(), ClientError> {
        let jid = self.jid.clone();
        self.request(
            "set",
            service,
            keyinfo::pubkeys(&jid, key, KeyForm::Standard),
        )
        .await
        .map(|_| ())
    }

    /// The key of `jid` according to a certification service.
    pub async fn fetch_key(
        &mut self,
        service: &str,
        jid: &str,
    ) -> Result<RsaPublicKey, ClientError> {
        let answer = self
            .request(
                "get",
                service,
                Element::new("pubkeys", openspime::ns::PUBKEY).with_attr("jid", jid),
            )
            .await?;
        let payload = answer
            .first_child()
            .ok_or_else(|| ClientError::Protocol("empty key answer".into()))?;
        keyinfo::parse_pubkeys(payload)
            .map(|(_, k)| k)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// The key to encrypt to `to` (a ScopeNode scope `node@domain/scope`), looked up as the
    /// wire profile (§4) orders it: `service` for the full JID, `service` for the bare JID,
    /// then a XEP-0189 request to `to` itself. The 2008 ScopeNodes publish their key under
    /// their full JID, or only answer for themselves.
    pub async fn recipient_key(
        &mut self,
        service: &str,
        to: &str,
    ) -> Result<(RsaPublicKey, KeySource), ClientError> {
        let bare = bare(to).to_owned();
        let mut tried = Vec::new();
        let mut asks = vec![(service.to_owned(), to.to_owned())];
        if bare != to {
            asks.push((service.to_owned(), bare));
        }
        asks.push((to.to_owned(), to.to_owned()));
        for (at, jid) in asks {
            match self.fetch_key(&at, &jid).await {
                Ok(key) if at == to => return Ok((key, KeySource::Itself(jid))),
                Ok(key) => return Ok((key, KeySource::Certified { service: at, jid })),
                Err(e @ (ClientError::Answered { .. } | ClientError::Protocol(_))) => {
                    tried.push(e.to_string())
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Refused(format!(
            "no key to encrypt to {to}: {}",
            tried.join("; ")
        )))
    }

    /// Reports entries to a ScopeNode scope (`node@domain/scope`) and waits for the result.
    /// Signs with `signer` (key, certification service) and encrypts to `recipient` (the
    /// ScopeNode's key, see [`Spime::recipient_key`]) when given.
    pub async fn report(
        &mut self,
        to: &str,
        entries: Vec<Entry>,
        signer: Option<(&RsaPrivateKey, &str)>,
        recipient: Option<&RsaPublicKey>,
    ) -> Result<(), ClientError> {
        let jid = self.jid.clone();
        let container = Container::seal(
            Data { entries }.to_element(),
            signer.map(|(k, cert)| (k, cert, Some(jid.as_str()))),
            None,
            recipient,
        )
        .map_err(|e| ClientError::Local(e.to_string()))?;
        self.request("set", to, container.to_element())
            .await
            .map(|_| ())
    }

    /// Asks a spime for a claim key (seed §1.1.0); returns it as the spime issued it.
    pub async fn claim(&mut self, spime: &str) -> Result<(String, String), ClientError> {
        let request = Container::seal(
            Claim::Request {
                claims: spime.to_owned(),
            }
            .to_element(),
            None,
            None,
            None,
        )
        .map_err(|e| ClientError::Local(e.to_string()))?;
        let answer = self.request("set", spime, request.to_element()).await?;
        let c = Container::find(&answer)
            .ok_or_else(|| ClientError::Protocol("the claim answer has no container".into()))?;
        let (payload, _) = Container::parse(c)
            .and_then(|c| c.open(None))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        match Claim::parse(&payload).map_err(|e| ClientError::Protocol(e.to_string()))? {
            Claim::Response {
                authorizes,
                claimkey,
            } => Ok((authorizes, claimkey)),
            Claim::Request { .. } => Err(ClientError::Protocol(
                "the spime answered with a request".into(),
            )),
        }
    }

    /// Device side: answers claim requests for `duration`, issuing claim keys valid for
    /// `validity` to requesters `allow` accepts (given the requester's full JID), for the
    /// JID `authorize` says; refuses the others.
    pub async fn answer_claims(
        &mut self,
        key: &RsaPrivateKey,
        allow: &dyn Fn(&str) -> bool,
        authorize: Authorize,
        validity: Duration,
        duration: Duration,
    ) -> Result<u32, ClientError> {
        let until = Instant::now() + duration;
        let mut answered = 0;
        while Instant::now() < until {
            let el = match tokio::time::timeout(until - Instant::now(), self.conn.next()).await {
                Ok(Ok(el)) => el,
                Ok(Err(ClientError::Timeout(_))) | Err(_) => break,
                Ok(Err(e)) => return Err(e),
            };
            if el.name() != "iq" || el.attr("type") != Some("set") {
                continue;
            }
            let Some(c) = Container::find(&el) else {
                continue;
            };
            let Ok((payload, _)) = Container::parse(c).and_then(|c| c.open(None)) else {
                continue;
            };
            let Ok(Claim::Request { .. }) = Claim::parse(&payload) else {
                continue;
            };
            let from = el.attr("from").unwrap_or("").to_owned();
            let authorized = match authorize {
                Authorize::Resource => from.clone(),
                Authorize::Account => bare(&from).to_owned(),
            };
            let mut reply = openspimed_stanza::iq_result(&el);
            reply.remove_attr("from");
            if allow(&from) {
                let exp =
                    openspime::date::format(openspime::date::now() + validity.as_secs() as i64, 0);
                let blob = openspime::crypto::issue_claim_key(&authorized, &exp, key)
                    .map_err(|e| ClientError::Local(e.to_string()))?;
                let answer = Container::seal(
                    Claim::Response {
                        authorizes: authorized,
                        claimkey: blob,
                    }
                    .to_element(),
                    None,
                    None,
                    None,
                )
                .map_err(|e| ClientError::Local(e.to_string()))?;
                reply.push_child(answer.to_element());
                answered += 1;
            } else {
                reply =
                    openspimed_stanza::StanzaError::new(openspimed_stanza::Condition::Forbidden)
                        .reply_to(&el)
                        .unwrap_or(reply);
                reply.remove_attr("from");
            }
            self.conn.send(&reply).await?;
        }
        Ok(answered)
    }

    /// Publishes a signed SpimeSeek request for `spime` to `service`/`node` and collects the
    /// ScopeNodes' answers for `wait`, decrypting them with `key` when encrypted.
    #[allow(clippy::too_many_arguments)]
    pub async fn seek(
        &mut self,
        service: &str,
        node: &str,
        spime: &str,
        key: &RsaPrivateKey,
        cert: &str,
        claimkey: Option<ClaimKeyRef>,
        encrypted: bool,
        wait: Duration,
    ) -> Result<Vec<(String, Entry)>, ClientError> {
        // Random, 128 bits: two seeks from one profile in the same second must differ, or
        // the ScopeNodes drop the second as a replay (seed §1.2: id and osid identify it).
        let id = format!("{:032x}", rand::random::<u128>());
        let req = SpimeSeek::Request(SeekRequest {
            id: id.clone(),
            spimeid: spime.to_owned(),
            expdate: openspime::date::format(
                openspime::date::now() + wait.as_secs() as i64 + 60,
                0,
            ),
            encrequired: encrypted,
        });
        let jid = self.jid.clone();
        let container = Container::seal(
            req.to_element(),
            Some((key, cert, Some(jid.as_str()))),
            claimkey,
            None,
        )
        .map_err(|e| ClientError::Local(e.to_string()))?;
        let publish = Element::new("pubsub", PUBSUB).with_child(
            Element::new("publish", PUBSUB)
                .with_attr("node", node)
                .with_child(
                    Element::new("item", PUBSUB)
                        .with_attr("id", id.clone())
                        .with_child(container.to_element()),
                ),
        );
        self.request("set", service, publish).await?;
        let until = Instant::now() + wait;
        let mut found = Vec::new();
        while Instant::now() < until {
            let el = match tokio::time::timeout(until - Instant::now(), self.conn.next()).await {
                Ok(Ok(el)) => el,
                Ok(Err(ClientError::Timeout(_))) | Err(_) => break,
                Ok(Err(e)) => return Err(e),
            };
            if el.name() != "message" {
                continue;
            }
            let from = el.attr("from").unwrap_or("").to_owned();
            let Some(c) = Container::find(&el) else {
                continue;
            };
            let Ok((payload, _)) = Container::parse(c).and_then(|c| c.open(Some(key))) else {
                continue;
            };
            if let Ok(SpimeSeek::Response { id: rid, entries }) = SpimeSeek::parse(&payload)
                && rid == id
            {
                found.extend(entries.into_iter().map(|e| (from.clone(), e)));
            }
        }
        Ok(found)
    }
}
