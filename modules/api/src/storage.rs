//! Storage traits modules reach through [`crate::Context`]: narrow, async, in domain words.
//! The server implements them (SQLite now, PostgreSQL later); every method is one
//! transaction and returns only once it is durable.

use async_trait::async_trait;

/// A storage backend failed; the message is for logs only.
#[derive(Debug, thiserror::Error)]
#[error("storage failure: {0}")]
pub struct StorageFailure(pub String);

/// A public key published to a certification service (XEP-0189).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    /// The certification service JID it was published to.
    pub service: String,
    /// The JID the key belongs to, as published.
    pub jid: String,
    /// The key as DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    /// When it was stored (seconds since the epoch).
    pub created_unix: i64,
    /// When it was revoked, if it was.
    pub revoked_unix: Option<i64>,
}

/// Keys of the certification services hosted here.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores (or replaces, clearing any revocation) a key.
    async fn put_key(
        &self,
        service: &str,
        jid: &str,
        spki_der: &[u8],
    ) -> Result<(), StorageFailure>;
    /// The key of `jid` at `service`, revoked or not.
    async fn key(&self, service: &str, jid: &str) -> Result<Option<StoredKey>, StorageFailure>;
    /// Marks a key revoked; `false` if there is none.
    async fn revoke_key(&self, service: &str, jid: &str) -> Result<bool, StorageFailure>;
    /// All keys of a service (or of every service when `None`), sorted by service and JID.
    async fn list_keys(&self, service: Option<&str>) -> Result<Vec<StoredKey>, StorageFailure>;
}

/// Every storage trait a module may use.
pub trait ModuleStorage: Send + Sync {
    /// Certification-service keys.
    fn keys(&self) -> &dyn KeyStore;
}
