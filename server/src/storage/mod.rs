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
