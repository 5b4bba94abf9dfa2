//! XEP-0049 Private XML Storage: an account stores XML fragments on its server, one per
//! root element name and namespace, and reads them back; nobody else reaches them. Kept in
//! the key-value store `private` under the account's bare JID, keyed `name:namespace` as
//! Prosody's `mod_private` keys them.

use std::sync::Arc;

use openspimed_module_api::{
    AccountTarget, ClientSession, Condition, Context, Element, ErrorType, Flow, FromClientHook,
    Hooks, IqType, Kinds, KvStore, Module, ModuleError, ModuleFactory, Outcome, Route, StanzaError,
    StanzaKind, ToAccountHook, async_trait, iq_result, options, toml,
};

/// The name operators enable it under.
pub const NAME: &str = "private";
/// XEP-0049's namespace.
pub const NS: &str = "jabber:iq:private";
/// The key-value store the fragments are kept in.
pub const STORE: &str = "private";

/// `[modules.private]`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Options {
    /// The largest fragment one account may store, in bytes of XML: private storage is
    /// for preferences and bookmarks, not files.
    pub max_fragment_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_fragment_bytes: 64 * 1024,
        }
    }
}

/// Registers the `private` module.
pub struct Factory;

impl ModuleFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }
    fn build(&self, _host: &str, table: &toml::Table) -> Result<Arc<dyn Module>, ModuleError> {
        let options: Options = options::parse(NAME, table)?;
        Ok(Arc::new(Private { options }))
    }
    fn option_keys(&self) -> Vec<String> {
        options::keys(&Options::default())
    }
}

/// The module instance of one host.
pub struct Private {
    /// Its configuration.
    options: Options,
}

#[async_trait]
impl Module for Private {
    fn name(&self) -> &'static str {
        NAME
    }
    fn routes(&self) -> Vec<Route> {
        Vec::new()
    }
    fn features(&self) -> Vec<String> {
        // Prosody's mod_private and ejabberd's mod_private list it at the server.
        vec![NS.to_owned()]
    }
    fn hooks(self: Arc<Self>, cx: &Context, hooks: &dyn Hooks) {
        let own = Own {
            store: cx.open_store(STORE),
            max: self.options.max_fragment_bytes,
        };
        // Beside IM's own-account iqs (50).
        hooks.on_from_client(45, Kinds::IQ, Arc::new(own));
        hooks.on_to_account(0, Kinds::IQ, Arc::new(Others));
    }
    async fn handle(&self, _cx: &Context, _stanza: Element) -> Result<Outcome, ModuleError> {
        Ok(Outcome::Error(Condition::ServiceUnavailable.into()))
    }
}

/// The key of a fragment: its root's name and namespace.
fn key(fragment: &Element) -> String {
    format!("{}:{}", fragment.name(), fragment.ns())
}

/// Why a fragment cannot be kept: none, or one in no namespace of its own (§2.3).
fn check(fragment: &Element) -> Result<(), StanzaError> {
    let ns = fragment.ns();
    if ns.is_empty() || ns == openspimed_module_api::ns::CLIENT || ns == NS {
        return Err(StanzaError::new(Condition::NotAcceptable)
            .with_text("private data needs a namespace of its own"));
    }
    Ok(())
}

/// The account's own requests.
struct Own {
    /// The fragments.
    store: Arc<dyn KvStore>,
    /// `max_fragment_bytes`.
    max: usize,
}

impl Own {
    async fn answer(
        &self,
        owner: &str,
        iq: &Element,
        kind: IqType,
    ) -> Result<Element, StanzaError> {
        let Some(query) = iq.get_child("query", NS) else {
            return Err(Condition::BadRequest.into());
        };
        let fragments: Vec<&Element> = query.children().collect();
        if fragments.is_empty() {
            // §2.3: "Not Acceptable" (Prosody and ejabberd answer the same).
            return Err(StanzaError::new(Condition::NotAcceptable)
                .with_text("name the fragment to get or set"));
        }
        for f in &fragments {
            check(f)?;
        }
        let failure = |e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "private storage failure");
            StanzaError::new(Condition::InternalServerError).with_type(ErrorType::Wait)
        };
        match kind {
            IqType::Get => {
                if fragments.len() > 1 {
                    // §2.3: a client MUST NOT ask for more than one namespace at once.
                    return Err(
                        StanzaError::new(Condition::BadRequest).with_text("one fragment per get")
                    );
                }
                let asked = fragments[0];
                let stored = self
                    .store
                    .get(owner, &key(asked))
                    .await
                    .map_err(|e| failure(&e))?;
                let found = stored
                    .and_then(|v| String::from_utf8(v).ok())
                    .and_then(|x| Element::parse(&x).ok())
                    // Nothing stored: the empty element as asked (§2.3, Example 2's shape).
                    .unwrap_or_else(|| Element::new(asked.name(), asked.ns().to_owned()));
                Ok(iq_result(iq).with_child(Element::new("query", NS).with_child(found)))
            }
            _ => {
                for f in &fragments {
                    let xml = f.to_bytes();
                    if xml.len() > self.max {
                        return Err(StanzaError::new(Condition::NotAcceptable)
                            .with_text(format!("a fragment may hold {} bytes", self.max)));
                    }
                }
                for f in fragments {
                    self.store
                        .set(owner, &key(f), &f.to_bytes())
                        .await
                        .map_err(|e| failure(&e))?;
                }
                Ok(iq_result(iq))
            }
        }
    }
}

#[async_trait]
impl FromClientHook for Own {
    async fn client_sent(&self, from: ClientSession<'_>, stanza: Element) -> Flow {
        let Some(StanzaKind::Iq(Some(kind))) = StanzaKind::of(&stanza) else {
            return Flow::Pass(stanza);
        };
        if !kind.is_request() || stanza.get_child("query", NS).is_none() {
            return Flow::Pass(stanza);
        }
        let own = stanza
            .attr("to")
            .is_none_or(|t| t.eq_ignore_ascii_case(from.bare));
        if !own {
            // To someone else: their account refuses it (below).
            return Flow::Pass(stanza);
        }
        match self.answer(from.bare, &stanza, kind).await {
            Ok(r) => Flow::Reply(r),
            Err(e) => e.reply_to(&stanza).map_or(Flow::Done, Flow::Reply),
        }
    }
}

/// §2.3: another entity's request for an account's private data is refused.
struct Others;

#[async_trait]
impl ToAccountHook for Others {
    async fn to_account(&self, _to: AccountTarget<'_>, stanza: Element) -> Flow {
        let request = StanzaKind::of(&stanza).is_some_and(StanzaKind::is_request);
        if request && stanza.get_child("query", NS).is_some() {
            return Flow::Refuse(stanza, StanzaError::new(Condition::Forbidden));
        }
        Flow::Pass(stanza)
    }
}
