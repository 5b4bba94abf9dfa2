//! Storage behind narrow async traits, one per concern, in domain words.
//!
//! Each method is one transaction and returns only after it is durable. SQLite
//! ([`sqlite::SqliteStore`]) is the embedded default; a PostgreSQL backend implements the
//! same traits and runs the same conformance tests.

use async_trait::async_trait;

pub mod sqlite;

/// A storage backend failed. The message is for logs, never for the wire.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database reported an error.
    #[error("database error: {0}")]
    Backend(String),
    /// The stored data is not what this version expects.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// SCRAM-derived keys for one hash function (RFC 5802 §3); the password is never stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramKeys {
    /// Random salt given to the client.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count given to the client.
    pub iterations: u32,
    /// H(ClientKey): lets the server verify the client proof.
    pub stored_key: Vec<u8>,
    /// HMAC(SaltedPassword, "Server Key"): lets the server prove itself.
    pub server_key: Vec<u8>,
}

/// An account's credentials: keys for each SCRAM hash offered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    /// For SCRAM-SHA-1(-PLUS).
    pub sha1: ScramKeys,
    /// For SCRAM-SHA-256(-PLUS) and for checking PLAIN passwords.
    pub sha256: ScramKeys,
}

/// Accounts of the hosted domains.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates an account; `false` if it already exists (nothing changed).
    async fn create_account(
        &self,
        user: &str,
        domain: &str,
        creds: &Credentials,
    ) -> Result<bool, StorageError>;
    /// Replaces an account's credentials; `false` if there is no such account.
    async fn set_credentials(
        &self,
        user: &str,
        domain: &str,
        creds: &Credentials,
    ) -> Result<bool, StorageError>;
    /// The credentials of an account, if it exists.
    async fn credentials(
        &self,
        user: &str,
        domain: &str,
    ) -> Result<Option<Credentials>, StorageError>;
    /// Whether an account exists.
    async fn account_exists(&self, user: &str, domain: &str) -> Result<bool, StorageError>;
    /// Deletes an account; `false` if there was none.
    async fn delete_account(&self, user: &str, domain: &str) -> Result<bool, StorageError>;
    /// Usernames of a domain, sorted.
    async fn list_accounts(&self, domain: &str) -> Result<Vec<String>, StorageError>;
}

/// One roster item (RFC 6121 §2.1.2) with the subscription state behind it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact's bare JID.
    pub jid: String,
    /// The handle the user gave the contact.
    pub name: Option<String>,
    /// Groups the user put the contact in.
    pub groups: Vec<String>,
    /// Subscriptions both ways, pending requests, pre-approval.
    pub state: SubState,
}

/// The subscription state of one roster item, as the user's server keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SubState {
    /// The user receives the contact's presence (`to`).
    pub to: bool,
    /// The contact receives the user's presence (`from`).
    pub from: bool,
    /// The user asked the contact and awaits an answer ("Pending Out", `ask='subscribe'`).
    pub pending_out: bool,
    /// The contact asked the user and awaits an answer ("Pending In").
    pub pending_in: bool,
    /// The user approved a subscription request before it came (RFC 6121 §3.4).
    pub preapproved: bool,
}

impl SubState {
    /// The `subscription` attribute of the roster item (RFC 6121 §2.1.2.5).
    pub fn subscription(&self) -> &'static str {
        match (self.to, self.from) {
            (true, true) => "both",
            (true, false) => "to",
            (false, true) => "from",
            (false, false) => "none",
        }
    }

    /// The RFC 6121 Appendix A name of the state, e.g. "None + Pending Out/In".
    pub fn name(&self) -> &'static str {
        match (self.to, self.from, self.pending_out, self.pending_in) {
            (false, false, false, false) => "None",
            (false, false, true, false) => "None + Pending Out",
            (false, false, false, true) => "None + Pending In",
            (false, false, true, true) => "None + Pending Out/In",
            (true, false, _, false) => "To",
            (true, false, _, true) => "To + Pending In",
            (false, true, false, _) => "From",
            (false, true, true, _) => "From + Pending Out",
            (true, true, _, _) => "Both",
        }
    }
}

/// A stored offline message, oldest first by `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfflineMessage {
    /// Storage order; delivery removes messages up to it.
    pub seq: i64,
    /// The stanza as XML.
    pub stanza: String,
}

/// Rosters and offline messages of local accounts (RFC 6121, XEP-0160).
#[async_trait]
pub trait ImStore: Send + Sync {
    /// An account's roster and its version (RFC 6121 §2.6).
    async fn roster(
        &self,
        user: &str,
        domain: &str,
    ) -> Result<(u64, Vec<RosterItem>), StorageError>;
    /// One item of a roster.
    async fn roster_item(
        &self,
        user: &str,
        domain: &str,
        contact: &str,
    ) -> Result<Option<RosterItem>, StorageError>;
    /// Stores an item (replacing the contact's) or, with `None`, removes the contact;
    /// returns the roster's new version. Refused with `Ok(None)` when a new item would
    /// exceed `max_items`.
    async fn put_roster_item(
        &self,
        user: &str,
        domain: &str,
        contact: &str,
        item: Option<RosterItem>,
        max_items: usize,
    ) -> Result<Option<u64>, StorageError>;
    /// Stores a message for an unavailable account; `false` (nothing stored) when the
    /// account already holds `quota` messages.
    async fn store_offline(
        &self,
        user: &str,
        domain: &str,
        stanza: &str,
        quota: usize,
    ) -> Result<bool, StorageError>;
    /// The account's offline messages, oldest first.
    async fn offline(&self, user: &str, domain: &str) -> Result<Vec<OfflineMessage>, StorageError>;
    /// Removes offline messages up to `seq` (they were delivered).
    async fn delete_offline(&self, user: &str, domain: &str, seq: i64) -> Result<(), StorageError>;
    /// The JIDs an account blocks (XEP-0191), sorted.
    async fn blocklist(&self, user: &str, domain: &str) -> Result<Vec<String>, StorageError>;
    /// Blocks (`true`) or unblocks JIDs; unblocking an empty list unblocks everything.
    async fn set_blocked(
        &self,
        user: &str,
        domain: &str,
        jids: &[String],
        blocked: bool,
    ) -> Result<(), StorageError>;
    /// An account's vCard (XEP-0054), as XML.
    async fn vcard(&self, user: &str, domain: &str) -> Result<Option<String>, StorageError>;
    /// Replaces an account's vCard.
    async fn set_vcard(&self, user: &str, domain: &str, xml: &str) -> Result<(), StorageError>;
}
