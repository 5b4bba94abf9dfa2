//! MAM's handlers: messages an account receives (to-account) and sends (from-client) are
//! archived and stamped with their stanza id; the account's own queries and preferences
//! are answered from its session.

use std::sync::Arc;

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{
    AccountHook, AccountTarget, ClientSession, Condition, Element, ErrorType, Flow, FromClientHook,
    Hooks, IqType, Kinds, ServerHandle, StanzaError, StanzaKind, ToAccountHook, async_trait,
    iq_result,
};

use crate::archivable::{add_id, archivable, strip_ids_by};
use crate::prefs::{Decision, Prefs};
use crate::query;
use crate::store::{AnswerError, MessageArchive, Sizes, answer};
use crate::{NS, Options};

/// From-client priorities: archiving a sent message runs after IM's blocking (100) and
/// its own-account iqs (50), and before carbons copy it (`openspimed-mod-carbons`, 0) so
/// the copies carry the stanza id, as Prosody's `mod_mam` (0) runs before its
/// `mod_carbons` (-0.5); the account's own stanza ids leave it again last of all.
pub const SENT: i32 = 20;
/// Queries and preferences, beside IM's own-account iqs.
pub const OWN_IQS: i32 = 45;
/// Removing the sender's own stanza ids before a message leaves (Prosody's
/// `strip_stanza_id_after_other_events`, -1).
pub const STRIP: i32 = -100;
/// To-account priority: after IM's blocking (100), presence (50) and vCards (0), before
/// carbons (-20), so what is delivered and copied carries the id.
pub const RECEIVED: i32 = -10;

/// What MAM's handlers share.
pub struct Mam {
    /// The server: sessions, accounts, rosters.
    pub server: Arc<dyn ServerHandle>,
    /// The archive and preferences.
    pub archive: MessageArchive,
    /// `[modules.mam]`.
    pub options: Options,
}

/// Adds MAM's handlers to `hooks`.
pub fn install(mam: Arc<Mam>, hooks: &dyn Hooks) {
    hooks.on_to_account(RECEIVED, Kinds::MESSAGE, Arc::new(Received(mam.clone())));
    hooks.on_from_client(SENT, Kinds::MESSAGE, Arc::new(Sent(mam.clone())));
    hooks.on_from_client(STRIP, Kinds::MESSAGE, Arc::new(StripOwnIds));
    hooks.on_from_client(OWN_IQS, Kinds::IQ, Arc::new(OwnIqs(mam.clone())));
    hooks.on_account(Arc::new(Accounts(mam)));
    // XEP-0313 §7 and XEP-0359 §4: discovered at the account's bare JID.
    hooks.add_bare_jid_features(&[NS, crate::NS_EXTENDED, openspimed_module_api::ns::SID]);
}

impl Mam {
    /// Whether `owner`'s preferences archive a message with `peer` (a full or bare JID).
    async fn wants(&self, owner: &str, peer: &str) -> bool {
        let prefs = match self.archive.prefs(owner).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "archive preferences not readable");
                return false;
            }
        };
        match prefs.decide(peer) {
            Decision::Archive => true,
            Decision::Skip => false,
            Decision::IfInRoster => self.server.roster_contains(owner, &bare_of(peer)).await,
        }
    }

    /// Archives `message` for `owner` with `peer` and stamps its id on it; a message that
    /// cannot be archived is delivered all the same (its sender was told it was
    /// accepted), without an id.
    async fn archive(&self, owner: &str, peer: &str, message: &mut Element) {
        if !self.wants(owner, peer).await {
            return;
        }
        match self.archive.append(owner, &bare_of(peer), message).await {
            Ok(id) => add_id(message, owner, &id),
            Err(e) => tracing::error!(error = %e, "a message could not be archived"),
        }
    }

    /// Whether `bare` is an account here (a message to one that is not is bounced later
    /// and must leave nothing behind).
    async fn exists(&self, bare: &str) -> bool {
        if !self.server.sessions(bare).is_empty() {
            return true;
        }
        self.server.account_exists(bare).await.unwrap_or(false)
    }
}

/// The bare JID of `jid` (as given when it does not parse).
fn bare_of(jid: &str) -> String {
    match Jid::new(jid) {
        Ok(j) => j.to_bare().to_string(),
        Err(_) => jid.split_once('/').map_or(jid, |(b, _)| b).to_owned(),
    }
}

/// A deleted account's archive goes with it (the server removes every module's data of
/// an account); what is cached of it goes here.
struct Accounts(Arc<Mam>);

#[async_trait]
impl AccountHook for Accounts {
    async fn created(&self, bare: &str) {
        self.0.archive.forget(bare);
    }
    async fn deleted(&self, bare: &str) {
        self.0.archive.forget(bare);
    }
}

/// Messages an account receives.
struct Received(Arc<Mam>);

#[async_trait]
impl ToAccountHook for Received {
    async fn to_account(&self, to: AccountTarget<'_>, stanza: Element) -> Flow {
        let mut stanza = stanza;
        strip_ids_by(&mut stanza, to.bare);
        if !archivable(&stanza) {
            return Flow::Pass(stanza);
        }
        let Some(from) = stanza.attr("from").map(str::to_owned) else {
            return Flow::Pass(stanza);
        };
        if self.0.exists(to.bare).await {
            self.0.archive(to.bare, &from, &mut stanza).await;
        }
        Flow::Pass(stanza)
    }
}

/// Messages an account's client sends.
struct Sent(Arc<Mam>);

#[async_trait]
impl FromClientHook for Sent {
    async fn client_sent(&self, from: ClientSession<'_>, stanza: Element) -> Flow {
        let mut stanza = stanza;
        strip_ids_by(&mut stanza, from.bare);
        if !archivable(&stanza) {
            return Flow::Pass(stanza);
        }
        // Without `to`, a message is for the sender's own account (RFC 6120 §10.3.3).
        let peer = stanza.attr("to").unwrap_or(from.bare).to_owned();
        self.0.archive(from.bare, &peer, &mut stanza).await;
        Flow::Pass(stanza)
    }
}

/// The sender's own stanza ids stay on the server: the copies for its other sessions
/// (carbons) carry them, the message that leaves does not.
struct StripOwnIds;

#[async_trait]
impl FromClientHook for StripOwnIds {
    async fn client_sent(&self, from: ClientSession<'_>, stanza: Element) -> Flow {
        let mut stanza = stanza;
        strip_ids_by(&mut stanza, from.bare);
        Flow::Pass(stanza)
    }
}

/// The account's own queries (§4) and preferences (§6).
struct OwnIqs(Arc<Mam>);

#[async_trait]
impl FromClientHook for OwnIqs {
    async fn client_sent(&self, from: ClientSession<'_>, stanza: Element) -> Flow {
        let own = stanza
            .attr("to")
            .is_none_or(|t| t.eq_ignore_ascii_case(from.bare));
        let Some(StanzaKind::Iq(Some(kind))) = StanzaKind::of(&stanza) else {
            return Flow::Pass(stanza);
        };
        let Some(payload) = stanza.first_child().filter(|p| p.ns() == NS) else {
            return Flow::Pass(stanza);
        };
        if !own || !kind.is_request() {
            return Flow::Pass(stanza);
        }
        let mam = &self.0;
        let answer = match (payload.name(), kind) {
            ("prefs", IqType::Get) => match mam.archive.prefs(from.bare).await {
                Ok(p) => Ok(iq_result(&stanza).with_child(p.to_element())),
                Err(e) => Err(storage_failure(&e)),
            },
            ("prefs", _) => set_prefs(mam, from.bare, &stanza, payload).await,
            ("query", IqType::Get) => Ok(iq_result(&stanza).with_child(query::form())),
            ("query", _) => return answer_query(mam, from, &stanza, payload).await,
            _ => Err(StanzaError::new(Condition::FeatureNotImplemented)),
        };
        reply(answer, &stanza)
    }
}

/// The reply to an own-account iq: the result, or the error, from the address the iq
/// was sent to (none when it had no `to`: the user's own account).
fn reply(answer: Result<Element, StanzaError>, iq: &Element) -> Flow {
    match answer {
        Ok(r) => Flow::Reply(r),
        Err(err) => err.reply_to(iq).map_or(Flow::Done, Flow::Reply),
    }
}

/// What the user learns when storage fails: to try again later.
fn storage_failure(err: &dyn std::fmt::Display) -> StanzaError {
    tracing::error!(%err, "message archive storage failure");
    StanzaError::new(Condition::InternalServerError).with_type(ErrorType::Wait)
}

/// §6.1: new preferences, answered with what was stored.
async fn set_prefs(
    mam: &Mam,
    owner: &str,
    iq: &Element,
    payload: &Element,
) -> Result<Element, StanzaError> {
    let prefs = Prefs::from_element(payload)?;
    mam.archive
        .set_prefs(owner, &prefs)
        .await
        .map_err(|e| storage_failure(&e))?;
    Ok(iq_result(iq).with_child(prefs.to_element()))
}

/// §4: the results as messages to the querying session, then the `<fin/>`, all through
/// its queue so that they arrive in that order.
async fn answer_query(mam: &Mam, from: ClientSession<'_>, iq: &Element, payload: &Element) -> Flow {
    let opts = &mam.options;
    let sizes = Sizes {
        default_page: opts.default_page,
        max_page: opts.max_page,
        count_up_to: opts.count_up_to,
    };
    let archive_jid = iq.attr("to");
    let found = answer(
        mam.archive.items(),
        from.bare,
        payload,
        sizes,
        from.full,
        archive_jid,
    );
    let found = match found.await {
        Ok(a) => a,
        Err(AnswerError::Refused(e)) => return reply(Err(e), iq),
        Err(AnswerError::Storage(e)) => return reply(Err(storage_failure(&e)), iq),
    };
    for m in found.results {
        if !mam.server.deliver(from.full, m) {
            tracing::warn!(jid = %from.full, "a session's queue is full; archive answer cut");
            let err = StanzaError::new(Condition::ResourceConstraint).with_type(ErrorType::Wait);
            return reply(Err(err), iq);
        }
    }
    let fin = iq_result(iq).with_child(found.fin);
    if !mam.server.deliver(from.full, fin) {
        tracing::warn!(jid = %from.full, "a session's queue is full; archive answer lost");
    }
    Flow::Done
}
