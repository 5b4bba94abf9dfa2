//! The message archive's stores: items in the archive `archive` (Prosody's store name)
//! under each account's bare JID, `with` the peer's bare JID, named by their stanza ids;
//! preferences in the key-value store `archive_prefs`.

use std::sync::Arc;

use dashmap::DashMap;

use openspimed_module_api::{
    ArchiveQuery, ArchiveStore, ArchivedItem, Condition, Element, KvStore, StanzaError,
    StorageFailure, rsm,
};

use crate::prefs::{self, Prefs};
use crate::query::Query;

/// The archive's name in the module storage.
pub const ARCHIVE: &str = "archive";
/// The preferences' store.
pub const PREFS: &str = "archive_prefs";

/// One page of an answer.
#[derive(Debug, Default)]
pub struct Page {
    /// The page's items, oldest first (newest first when the client flipped the page).
    pub items: Vec<ArchivedItem>,
    /// The ids of the page's oldest and newest items: its XEP-0059 `<first/>` and
    /// `<last/>`, what the next page is asked after or before, flipped or not.
    pub bounds: Option<(String, String)>,
    /// Whether no item matching the query lies beyond the page, in the direction paged.
    pub complete: bool,
    /// How many items the query matches in all, when counted.
    pub count: Option<u64>,
}

/// Why a query found no page.
#[derive(Debug)]
pub enum PageError {
    /// An id it names (`after`, `before`) is not in the archive (XEP-0313 §4.3.1).
    UnknownId,
    /// The store failed.
    Storage(StorageFailure),
}

impl From<StorageFailure> for PageError {
    fn from(e: StorageFailure) -> PageError {
        PageError::Storage(e)
    }
}

/// Runs `query` on the items of `owner` in `archive`, counting the whole result set when
/// it holds at most `count_up_to` items (0: never). What a user's archive and a room's
/// archive both answer with.
pub async fn page(
    archive: &dyn ArchiveStore,
    owner: &str,
    query: &Query,
    count_up_to: u64,
) -> Result<Page, PageError> {
    let mut items = if query.max == 0 {
        Vec::new()
    } else {
        archive.find(owner, &query.page_query()).await?
    };
    if items.is_empty() && !query.named_ids().is_empty() {
        let ids = query.named_ids().into_iter().map(str::to_owned).collect();
        let known = ArchiveQuery {
            ids: Some(ids),
            named_only: true,
            ..ArchiveQuery::default()
        };
        if archive.count(owner, &known).await? < query.named_ids().len() as u64 {
            return Err(PageError::UnknownId);
        }
    }
    let complete = items.len() as u64 <= query.max;
    items.truncate(query.max as usize);
    if query.backwards {
        items.reverse();
    }
    let bounds = match (items.first(), items.last()) {
        (Some(a), Some(b)) => Some((a.id.clone(), b.id.clone())),
        _ => None,
    };
    if query.flip {
        items.reverse();
    }
    let count = if count_up_to > 0 {
        archive
            .count_at_most(owner, &query.filter, count_up_to)
            .await?
    } else {
        None
    };
    Ok(Page {
        items,
        bounds,
        complete,
        count,
    })
}

/// The page sizes and the count limit an archive answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// The page when a client asks none.
    pub default_page: u64,
    /// The most one page holds.
    pub max_page: u64,
    /// Result sets up to this many are counted (0: none).
    pub count_up_to: u64,
}

impl Default for Sizes {
    /// Prosody's: 20 a page unless asked, 50 at most; counts up to 10,000.
    fn default() -> Self {
        Sizes {
            default_page: 20,
            max_page: 50,
            count_up_to: 10_000,
        }
    }
}

/// What a query of an archive is answered with: the result messages, in the order they
/// go out, then the `<fin/>` for the iq result.
#[derive(Debug)]
pub struct Answer {
    /// `<message><result/></message>`s, addressed.
    pub results: Vec<Element>,
    /// The `<fin/>`.
    pub fin: Element,
}

/// Why a query got no answer.
#[derive(Debug)]
pub enum AnswerError {
    /// The query is refused with this error (bad form, unknown id).
    Refused(StanzaError),
    /// The store failed.
    Storage(StorageFailure),
}

/// XEP-0313 §4: the answer to the `<query/>` `payload` of the archive of `owner`, for
/// `to` (the asking session), the results `from` the archive's JID when it was
/// addressed: what an account's archive and a room's both send.
pub async fn answer(
    archive: &dyn ArchiveStore,
    owner: &str,
    payload: &Element,
    sizes: Sizes,
    to: &str,
    from: Option<&str>,
) -> Result<Answer, AnswerError> {
    let default = sizes.default_page.min(sizes.max_page);
    let query = Query::parse(payload, default, sizes.max_page).map_err(AnswerError::Refused)?;
    let found = match page(archive, owner, &query, sizes.count_up_to).await {
        Ok(p) => p,
        Err(PageError::UnknownId) => {
            return Err(AnswerError::Refused(
                StanzaError::new(Condition::ItemNotFound)
                    .with_text("no message in the archive has that id"),
            ));
        }
        Err(PageError::Storage(e)) => return Err(AnswerError::Storage(e)),
    };
    let queryid = query.queryid.as_deref();
    let mut results = Vec::with_capacity(found.items.len());
    for item in found.items {
        let Ok(stanza) = std::str::from_utf8(&item.value)
            .map_err(|_| ())
            .and_then(|s| Element::parse(s).map_err(|_| ()))
        else {
            tracing::warn!(id = %item.id, "an archived message does not parse; left out");
            continue;
        };
        results.push(crate::query::result_message(
            queryid, to, from, &item.id, item.at_ms, stanza,
        ));
    }
    let set = rsm::Page {
        first: found.bounds.as_ref().map(|(f, _)| (f.clone(), None)),
        last: found.bounds.map(|(_, l)| l),
        count: found.count,
    };
    Ok(Answer {
        results,
        fin: crate::query::fin(found.complete, &set),
    })
}

/// The stores of one host's message archives.
#[derive(Clone)]
pub struct MessageArchive {
    /// The messages.
    items: Arc<dyn ArchiveStore>,
    /// The preferences.
    prefs: Arc<dyn KvStore>,
    /// The preference of an account that set none (`[modules.mam] default`).
    default: prefs::Default,
    /// Preferences read so far, by account: every message asks them on both sides, and
    /// a read through the store per message costs more than the archiving itself. Only
    /// this module writes them, through [`MessageArchive::set_prefs`], which updates it.
    cache: Arc<DashMap<String, Arc<Prefs>>>,
}

impl MessageArchive {
    /// The stores `items` and `prefs`, with `default` for accounts without preferences.
    pub fn new(
        items: Arc<dyn ArchiveStore>,
        prefs: Arc<dyn KvStore>,
        default: prefs::Default,
    ) -> MessageArchive {
        MessageArchive {
            items,
            prefs,
            default,
            cache: Arc::default(),
        }
    }

    /// The archive itself.
    pub fn items(&self) -> &dyn ArchiveStore {
        self.items.as_ref()
    }

    /// Archives `message` for `owner`, with `with`, and returns its new id.
    pub async fn append(
        &self,
        owner: &str,
        with: &str,
        message: &Element,
    ) -> Result<String, StorageFailure> {
        let id = crate::archivable::new_id();
        let item = ArchivedItem {
            id: id.clone(),
            at_ms: openspimed_module_api::datetime::now_ms(),
            with: with.to_owned(),
            value: crate::archivable::for_storage(message).to_bytes(),
        };
        self.items.append(owner, &item).await?;
        Ok(id)
    }

    /// The preferences of `owner`.
    pub async fn prefs(&self, owner: &str) -> Result<Arc<Prefs>, StorageFailure> {
        if let Some(p) = self.cache.get(owner) {
            return Ok(p.clone());
        }
        let stored = self.prefs.get(owner, "").await?;
        let prefs = Arc::new(
            stored
                .and_then(|v| serde_json::from_slice(&v).ok())
                .unwrap_or_else(|| Prefs::with_default(self.default)),
        );
        self.cache.insert(owner.to_owned(), prefs.clone());
        Ok(prefs)
    }

    /// Replaces the preferences of `owner`.
    pub async fn set_prefs(&self, owner: &str, prefs: &Prefs) -> Result<(), StorageFailure> {
        let json = serde_json::to_vec(prefs).map_err(|e| StorageFailure(e.to_string()))?;
        self.prefs.set(owner, "", &json).await?;
        self.cache.insert(owner.to_owned(), Arc::new(prefs.clone()));
        Ok(())
    }

    /// Forgets what is cached of `owner` (an account that was deleted).
    pub fn forget(&self, owner: &str) {
        self.cache.remove(owner);
    }

    /// Deletes every account's messages archived before `before_ms`; returns how many.
    pub async fn expire(&self, before_ms: i64) -> Result<u64, StorageFailure> {
        let q = ArchiveQuery {
            end_ms: Some(before_ms - 1),
            ..ArchiveQuery::default()
        };
        self.items.delete_everywhere(&q).await
    }
}
