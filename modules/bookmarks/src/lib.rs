//! XEP-0402 PEP native bookmarks with `urn:xmpp:bookmarks:1#compat` (§5.3): the account's
//! `urn:xmpp:bookmarks:1` PEP node is where bookmarks live; a client that reads or writes
//! XEP-0048 bookmarks in private storage (XEP-0049) is answered from that node and writes
//! into it, so clients of either kind see the same rooms — as Prosody's `mod_bookmarks`
//! and ejabberd's `mod_private` do. Needs PEP (`pubsub` with `pep = true`); without it the
//! private storage module keeps XEP-0048 bookmarks as any other fragment.

pub mod convert;

use std::sync::Arc;
use std::time::Duration;

use convert::{Bookmark, NS, NS_LEGACY};
use openspimed_module_api::{
    ClientSession, Condition, Context, Element, ErrorType, Flow, FromClientHook, Hooks, IqType,
    Kinds, Module, ModuleError, ModuleFactory, Outcome, Route, ServerHandle, StanzaError,
    StanzaKind, async_trait, iq_result, options, toml,
};

/// The name operators enable it under.
pub const NAME: &str = "bookmarks";
/// What the account's disco lists (XEP-0402 §5.3).
pub const NS_COMPAT: &str = "urn:xmpp:bookmarks:1#compat";
const PRIVATE: &str = "jabber:iq:private";
const PUBSUB: &str = "http://jabber.org/protocol/pubsub";
/// How long a PEP request of the module may take.
const PEP_TIMEOUT: Duration = Duration::from_secs(5);

/// `[modules.bookmarks]`: nothing to set.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Options {}

/// Registers the `bookmarks` module.
pub struct Factory;

impl ModuleFactory for Factory {
    fn name(&self) -> &'static str {
        NAME
    }
    fn build(&self, _host: &str, table: &toml::Table) -> Result<Arc<dyn Module>, ModuleError> {
        let _: Options = options::parse(NAME, table)?;
        Ok(Arc::new(Bookmarks))
    }
}

/// The module instance of one host.
pub struct Bookmarks;

#[async_trait]
impl Module for Bookmarks {
    fn name(&self) -> &'static str {
        NAME
    }
    fn routes(&self) -> Vec<Route> {
        Vec::new()
    }
    fn hooks(self: Arc<Self>, cx: &Context, hooks: &dyn Hooks) {
        // Before the private storage module (45) takes the iq.
        hooks.on_from_client(48, Kinds::IQ, Arc::new(Compat(cx.server.clone())));
        hooks.add_bare_jid_features(&[NS_COMPAT]);
    }
    async fn handle(&self, _cx: &Context, _stanza: Element) -> Result<Outcome, ModuleError> {
        Ok(Outcome::Error(Condition::ServiceUnavailable.into()))
    }
}

/// Private-storage bookmarks, served from and written to PEP.
struct Compat(Arc<dyn ServerHandle>);

/// What asking the account's PEP node came to.
enum Pep {
    /// It answered.
    Answer(Element),
    /// There is no PEP here (or it failed): private storage keeps the bookmarks.
    Unavailable,
}

impl Compat {
    /// Sends a PEP request of `owner` to its own service.
    async fn pep(&self, owner: &str, kind: &str, payload: Element) -> Pep {
        let iq = Element::new("iq", openspimed_module_api::ns::CLIENT)
            .with_attr("type", kind)
            .with_attr("from", owner)
            .with_attr("to", owner)
            .with_attr("id", format!("bm{:016x}", rand::random::<u64>()))
            .with_child(payload);
        match self.0.send_iq(iq, PEP_TIMEOUT).await {
            Ok(answer) => Pep::Answer(answer),
            Err(e) => {
                tracing::warn!(error = %e, "bookmarks: PEP did not answer");
                Pep::Unavailable
            }
        }
    }

    /// The bookmarks in the account's node; `None` without PEP.
    async fn read(&self, owner: &str) -> Option<Result<Vec<Bookmark>, StanzaError>> {
        let q = Element::new("pubsub", PUBSUB)
            .with_child(Element::new("items", PUBSUB).with_attr("node", NS));
        let Pep::Answer(a) = self.pep(owner, "get", q).await else {
            return None;
        };
        match a.attr("type") {
            Some("result") => {}
            _ => {
                let missing = a.to_string().contains("item-not-found");
                if missing {
                    return Some(Ok(Vec::new()));
                }
                if a.to_string().contains("service-unavailable") {
                    return None;
                }
                return Some(Err(internal()));
            }
        }
        let items = a
            .get_child("pubsub", PUBSUB)
            .and_then(|p| p.get_child("items", PUBSUB))
            .map(|items| {
                items
                    .children()
                    .filter(|i| i.is("item", PUBSUB))
                    .filter_map(|i| {
                        let conf = i.get_child("conference", NS)?;
                        Some(convert::from_item(i.attr("id")?, conf))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Ok(items))
    }

    /// Makes the account's node hold exactly `marks`: each published (with the
    /// publish-options of XEP-0402 §3), the others retracted. `None` without PEP.
    async fn write(&self, owner: &str, marks: &[Bookmark]) -> Option<Result<(), StanzaError>> {
        let done = self.write_native(owner, marks).await;
        if matches!(done, Some(Ok(()))) {
            self.publish_legacy(owner, marks).await;
        }
        done
    }

    /// [`Compat::write`] without the legacy node.
    async fn write_native(
        &self,
        owner: &str,
        marks: &[Bookmark],
    ) -> Option<Result<(), StanzaError>> {
        let before = match self.read(owner).await? {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        for m in marks {
            let publish = Element::new("pubsub", PUBSUB)
                .with_child(
                    Element::new("publish", PUBSUB)
                        .with_attr("node", NS)
                        .with_child(
                            Element::new("item", PUBSUB)
                                .with_attr("id", m.jid.clone())
                                .with_child(convert::to_item(m)),
                        ),
                )
                .with_child(publish_options());
            match self.pep(owner, "set", publish).await {
                Pep::Answer(a) if a.attr("type") == Some("result") => {}
                Pep::Answer(a) => {
                    tracing::warn!(answer = %a, "bookmarks: a publish was refused");
                    return Some(Err(internal()));
                }
                Pep::Unavailable => return Some(Err(internal())),
            }
        }
        for gone in before
            .iter()
            .filter(|b| !marks.iter().any(|m| m.jid == b.jid))
        {
            let retract = Element::new("pubsub", PUBSUB).with_child(
                Element::new("retract", PUBSUB)
                    .with_attr("node", NS)
                    .with_attr("notify", "true")
                    .with_child(Element::new("item", PUBSUB).with_attr("id", gone.jid.clone())),
            );
            if let Pep::Answer(a) = self.pep(owner, "set", retract).await
                && a.attr("type") != Some("result")
            {
                tracing::warn!(answer = %a, "bookmarks: a retraction was refused");
            }
        }
        Some(Ok(()))
    }

    /// XEP-0048 §3.3 in PEP (XEP-0223): the `storage:bookmarks` node holds the same list
    /// as one `<storage/>`, for clients that read bookmarks there.
    async fn publish_legacy(&self, owner: &str, marks: &[Bookmark]) {
        let mut options = publish_options();
        // The legacy node holds one item, the whole list.
        for f in options.children_mut().flat_map(|x| x.children_mut()) {
            if f.attr("var") == Some("pubsub#max_items") {
                f.clear_children();
                f.push_child(Element::new("value", openspimed_module_api::ns::DATA).with_text("1"));
            }
        }
        let publish = Element::new("pubsub", PUBSUB)
            .with_child(
                Element::new("publish", PUBSUB)
                    .with_attr("node", NS_LEGACY)
                    .with_child(
                        Element::new("item", PUBSUB)
                            .with_attr("id", "current")
                            .with_child(convert::to_storage(marks)),
                    ),
            )
            .with_child(options);
        match self.pep(owner, "set", publish).await {
            Pep::Answer(a) if a.attr("type") == Some("result") => {}
            Pep::Answer(a) => tracing::warn!(answer = %a, "bookmarks: the legacy node refused"),
            Pep::Unavailable => {}
        }
    }

    /// A client's publish or retraction on its own `urn:xmpp:bookmarks:1` node, passed to
    /// PEP as its own and answered with PEP's answer; when it took, the legacy node is
    /// brought in line.
    async fn native_change(&self, from: ClientSession<'_>, iq: &Element) -> Option<Flow> {
        let answer = self.0.send_iq(iq.clone(), PEP_TIMEOUT).await.ok()?;
        if answer.attr("type") == Some("result")
            && let Some(Ok(marks)) = self.read(from.bare).await
        {
            self.publish_legacy(from.bare, &marks).await;
        }
        Some(Flow::Reply(answer))
    }
}

/// The node a pubsub publish or retract of `iq` is on, with the operation.
fn pep_change(iq: &Element) -> Option<(&str, &Element)> {
    let pubsub = iq.get_child("pubsub", PUBSUB)?;
    let op = pubsub
        .children()
        .find(|c| c.is("publish", PUBSUB) || c.is("retract", PUBSUB))?;
    Some((op.attr("node")?, op))
}

/// `iq` with the bookmarks taken out of its private-storage query.
fn without_storage(mut iq: Element) -> Element {
    for q in iq.children_mut() {
        if q.is("query", PRIVATE) {
            q.retain_children(|e| !e.is("storage", NS_LEGACY));
        }
    }
    iq
}

/// XEP-0402 §3: the node's configuration, as publish-options.
fn publish_options() -> Element {
    let mut x = openspimed_module_api::form::form(
        "submit",
        "http://jabber.org/protocol/pubsub#publish-options",
    );
    for (var, value) in [
        ("pubsub#persist_items", "true"),
        ("pubsub#max_items", "max"),
        ("pubsub#send_last_published_item", "never"),
        ("pubsub#access_model", "whitelist"),
    ] {
        x.push_child(openspimed_module_api::form::field(
            var,
            "text-single",
            value,
            &[],
        ));
    }
    Element::new("publish-options", PUBSUB).with_child(x)
}

fn internal() -> StanzaError {
    StanzaError::new(Condition::InternalServerError).with_type(ErrorType::Wait)
}

#[async_trait]
impl FromClientHook for Compat {
    async fn client_sent(&self, from: ClientSession<'_>, stanza: Element) -> Flow {
        let Some(StanzaKind::Iq(Some(kind))) = StanzaKind::of(&stanza) else {
            return Flow::Pass(stanza);
        };
        let own = stanza
            .attr("to")
            .is_none_or(|t| t.eq_ignore_ascii_case(from.bare));
        if own && kind == IqType::Set {
            match pep_change(&stanza) {
                // A XEP-0402 client changed the list: the legacy node follows.
                Some((NS, _)) => {
                    if let Some(flow) = self.native_change(from, &stanza).await {
                        return flow;
                    }
                    return Flow::Pass(stanza);
                }
                // A XEP-0048 client published the whole list to the legacy node: the
                // native node takes it (the publish itself goes on to PEP).
                Some((NS_LEGACY, op)) if op.is("publish", PUBSUB) => {
                    let storage = op
                        .get_child("item", PUBSUB)
                        .and_then(|i| i.get_child("storage", NS_LEGACY));
                    if let Some(storage) = storage {
                        let marks = convert::from_storage(storage);
                        let _ = self.write_native(from.bare, &marks).await;
                    }
                    return Flow::Pass(stanza);
                }
                _ => {}
            }
        }
        let Some(query) = stanza.get_child("query", PRIVATE) else {
            return Flow::Pass(stanza);
        };
        let storage = query.get_child("storage", NS_LEGACY).cloned();
        let others = query
            .children()
            .filter(|c| !c.is("storage", NS_LEGACY))
            .count();
        let (Some(storage), true, true) = (storage, own, kind.is_request()) else {
            return Flow::Pass(stanza);
        };
        let answer = if kind == IqType::Get {
            if others > 0 {
                // One namespace per get (XEP-0049 §2.3): private storage refuses it.
                return Flow::Pass(stanza);
            }
            match self.read(from.bare).await {
                None => return Flow::Pass(stanza),
                Some(Ok(marks)) => Ok(iq_result(&stanza).with_child(
                    Element::new("query", PRIVATE).with_child(convert::to_storage(&marks)),
                )),
                Some(Err(e)) => Err(e),
            }
        } else {
            match self
                .write(from.bare, &convert::from_storage(&storage))
                .await
            {
                None => return Flow::Pass(stanza),
                // Stored with other fragments: the bookmarks are in PEP now, the rest is
                // private storage's, which answers.
                Some(Ok(())) if others > 0 => return Flow::Pass(without_storage(stanza)),
                Some(Ok(())) => Ok(iq_result(&stanza)),
                Some(Err(e)) => Err(e),
            }
        };
        match answer {
            Ok(r) => Flow::Reply(r),
            Err(e) => e.reply_to(&stanza).map_or(Flow::Done, Flow::Reply),
        }
    }
}
