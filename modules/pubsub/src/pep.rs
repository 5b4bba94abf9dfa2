//! PEP (XEP-0163): a service at each account's bare JID, its default node configuration,
//! the last items sent to a resource that comes online, and notifications filtered by
//! entity capabilities.

use std::sync::Arc;

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{Context, Element, ModuleError, ns};
use tokio::sync::RwLock;

use crate::config::{AccessModel, NodeConfig, PublishModel};
use crate::store::PubSubData;
use crate::{PepServices, Service, caps, load_nodes, pns, random_id, send_event};

/// The PEP service of a local account, loaded on first use.
/// A service without nodes is kept only when its own account asks (`by_owner`): anyone
/// may address any bare JID, and keeping an empty service for each would let strangers
/// grow the map without bound. Nothing can change in an empty service but through its
/// owner, whose request keeps it.
pub(crate) async fn pep_service(
    pep: &PepServices,
    cx: &Context,
    bare: &str,
    by_owner: bool,
) -> Result<Arc<Service>, ModuleError> {
    let mut services = pep.lock().await;
    if let Some(svc) = services.get(bare) {
        return Ok(svc.clone());
    }
    let nodes = load_nodes(cx, bare).await?;
    let keep = by_owner || !nodes.is_empty();
    let svc = Arc::new(Service {
        jid: bare.to_owned(),
        pep: true,
        nodes: RwLock::new(nodes),
    });
    if keep {
        services.insert(bare.to_owned(), svc.clone());
    }
    Ok(svc)
}

/// XEP-0163 §4.3.4: a resource that just became available gets the last item of each node
/// it wants (`NODE+notify`) of its own account's PEP service and of the local accounts
/// whose presence it receives.
pub(crate) async fn send_last_items(
    cx: Context,
    caps: Arc<caps::CapsCache>,
    pep: PepServices,
    host: String,
    presence: Element,
) {
    let Some(full) = presence.attr("from").map(str::to_owned) else {
        return;
    };
    let Some(bare) = Jid::new(&full).ok().map(|j| j.to_bare().to_string()) else {
        return;
    };
    let mut sources = vec![bare.clone()];
    sources.extend(cx.server.presence_sources(&bare).await);
    for source in sources {
        if source.rsplit_once('@').map(|(_, d)| d) != Some(host.as_str())
            || cx.server.blocks(&source, &bare).await
        {
            continue;
        }
        let Ok(svc) = pep_service(&pep, &cx, &source, false).await else {
            continue;
        };
        for (name, node) in svc.snapshot().await {
            if node.config.send_last != crate::config::SendLast::OnSubAndPresence {
                continue;
            }
            let visible = source == bare
                || matches!(
                    node.config.access_model,
                    AccessModel::Presence | AccessModel::Open
                );
            if !visible
                || !wants(
                    &cx,
                    &caps,
                    &source,
                    &full,
                    &presence,
                    &format!("{name}+notify"),
                )
                .await
            {
                continue;
            }
            let Ok(last) = PubSubData::new(cx.storage.clone())
                .items(&source, &name, None, Some(1))
                .await
            else {
                continue;
            };
            for it in last {
                let mut item = Element::new("item", pns::EVENT).with_attr("id", it.id);
                if node.config.deliver_payloads
                    && let Ok(p) = Element::parse(&it.payload)
                {
                    item.push_child(p);
                }
                let event = Element::new("event", pns::EVENT).with_child(
                    Element::new("items", pns::EVENT)
                        .with_attr("node", name.clone())
                        .with_child(item),
                );
                send_event(&cx, &source, &full, &event, true);
            }
        }
    }
}

/// Whether a resource's entity capabilities include `feature`: from the cache, else by
/// asking the resource from `asker` (XEP-0115 §6.2) and keeping the answer when its hash
/// checks.
pub(crate) async fn wants(
    cx: &Context,
    caps: &caps::CapsCache,
    asker: &str,
    full: &str,
    presence: &Element,
    feature: &str,
) -> bool {
    let Some(c) = caps::caps_of(presence) else {
        return false;
    };
    if let Some(features) = caps.get(&c.ver) {
        return features.iter().any(|f| f == feature);
    }
    let ask = Element::new("iq", ns::CLIENT)
        .with_attr("type", "get")
        .with_attr("from", asker.to_owned())
        .with_attr("to", full.to_owned())
        .with_attr("id", random_id())
        .with_child(
            Element::new("query", ns::DISCO_INFO)
                .with_attr("node", format!("{}#{}", c.node, c.ver)),
        );
    let answer = match cx
        .server
        .send_iq(ask, std::time::Duration::from_secs(10))
        .await
    {
        Ok(a) if a.attr("type") == Some("result") => a,
        _ => return false,
    };
    let Some(query) = answer.get_child("query", ns::DISCO_INFO) else {
        return false;
    };
    let features = Arc::new(caps::features_of(query));
    if c.hash == "sha-1" && caps::ver_of(query) == c.ver {
        caps.put(&c.ver, features.clone());
    }
    features.iter().any(|f| f == feature)
}

/// XEP-0163 §5: the configuration of a PEP node created by a publish.
pub(crate) fn pep_defaults() -> NodeConfig {
    NodeConfig {
        deliver_payloads: true,
        persist_items: true,
        max_items: Some(1),
        access_model: AccessModel::Presence,
        publish_model: PublishModel::Publishers,
        ..NodeConfig::default()
    }
}

/// A PEP event on its way to the resources that want it: the account's own and those of the
/// contacts chosen at publish time — each when its entity capabilities include
/// `NODE+notify` (XEP-0163 §4). Only resources on this server are known.
pub(crate) struct PepNotice {
    /// To reach the server.
    pub(crate) cx: Context,
    /// Verified capabilities.
    pub(crate) caps: Arc<caps::CapsCache>,
    /// The account (the PEP service's JID, the notifications' `from`).
    pub(crate) owner: String,
    /// The account and the contacts that may receive it (not blocked, and seeing the node
    /// under its access model).
    pub(crate) accounts: Vec<String>,
    /// Explicit subscribers, already notified.
    pub(crate) already: Vec<String>,
    /// The `<event/>` to send.
    pub(crate) event: Element,
}

impl PepNotice {
    pub(crate) async fn send(self) {
        let Some(name) = self.event.first_child().and_then(|c| c.attr("node")) else {
            return;
        };
        let wanted = format!("{name}+notify");
        for account in &self.accounts {
            for (full, presence) in self.cx.server.available_presences(account) {
                if !self.already.contains(&full)
                    && wants(&self.cx, &self.caps, &self.owner, &full, &presence, &wanted).await
                {
                    send_event(&self.cx, &self.owner, &full, &self.event, true);
                }
            }
        }
    }
}
