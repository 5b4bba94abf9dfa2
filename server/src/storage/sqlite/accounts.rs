//! Accounts (credentials as SCRAM keys only): the `AccountStore` implementation.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, all, backend, now_unix};
use crate::storage::{AccountStore, Credentials, ScramKeys, StorageError};

fn keys_from_row(row: &rusqlite::Row<'_>, base: usize) -> rusqlite::Result<ScramKeys> {
    Ok(ScramKeys {
        salt: row.get(base)?,
        iterations: row.get(base + 1)?,
        stored_key: row.get(base + 2)?,
        server_key: row.get(base + 3)?,
    })
}

/// The parameters ?1..?10 shared by the account INSERT and UPDATE statements.
#[allow(clippy::ptr_arg, reason = "`&dyn ToSql` needs a sized String, not str")]
fn account_params<'a>(
    domain: &'a String,
    user: &'a String,
    c: &'a Credentials,
) -> [&'a dyn rusqlite::ToSql; 10] {
    [
        domain,
        user,
        &c.sha1.salt,
        &c.sha1.iterations,
        &c.sha1.stored_key,
        &c.sha1.server_key,
        &c.sha256.salt,
        &c.sha256.iterations,
        &c.sha256.stored_key,
        &c.sha256.server_key,
    ]
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(
        &self,
        user: &str,
        domain: &str,
        creds: &Credentials,
    ) -> Result<bool, StorageError> {
        let (user, domain, c) = (user.to_owned(), domain.to_owned(), creds.clone());
        self.write(move |conn: &Connection| {
            let now = now_unix();
            let n = conn
                .execute(
                    "INSERT OR IGNORE INTO accounts VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    account_params(&domain, &user, &c)
                        .iter()
                        .copied()
                        .chain([&now as &dyn rusqlite::ToSql])
                        .collect::<Vec<_>>()
                        .as_slice(),
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn set_credentials(
        &self,
        user: &str,
        domain: &str,
        creds: &Credentials,
    ) -> Result<bool, StorageError> {
        let (user, domain, c) = (user.to_owned(), domain.to_owned(), creds.clone());
        self.write(move |conn: &Connection| {
            let n = conn
                .execute(
                    "UPDATE accounts SET sha1_salt = ?3, sha1_iterations = ?4, sha1_stored_key = ?5,
                       sha1_server_key = ?6, sha256_salt = ?7, sha256_iterations = ?8,
                       sha256_stored_key = ?9, sha256_server_key = ?10
                     WHERE domain = ?1 AND username = ?2",
                    account_params(&domain, &user, &c).as_slice(),
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn credentials(
        &self,
        user: &str,
        domain: &str,
    ) -> Result<Option<Credentials>, StorageError> {
        let (user, domain) = (user.to_owned(), domain.to_owned());
        self.read(move |conn| {
            conn.query_row(
                "SELECT sha1_salt, sha1_iterations, sha1_stored_key, sha1_server_key,
                        sha256_salt, sha256_iterations, sha256_stored_key, sha256_server_key
                 FROM accounts WHERE domain = ?1 AND username = ?2",
                params![domain, user],
                |row| {
                    Ok(Credentials {
                        sha1: keys_from_row(row, 0)?,
                        sha256: keys_from_row(row, 4)?,
                    })
                },
            )
            .optional()
            .map_err(backend)
        })
        .await
    }

    async fn account_exists(&self, user: &str, domain: &str) -> Result<bool, StorageError> {
        let (user, domain) = (user.to_owned(), domain.to_owned());
        self.read(move |conn| {
            conn.query_row(
                "SELECT 1 FROM accounts WHERE domain = ?1 AND username = ?2",
                params![domain, user],
                |_| Ok(()),
            )
            .optional()
            .map(|o| o.is_some())
            .map_err(backend)
        })
        .await
    }

    async fn delete_account(&self, user: &str, domain: &str) -> Result<bool, StorageError> {
        let (user, domain) = (user.to_owned(), domain.to_owned());
        self.write(move |conn: &Connection| {
            let n = conn
                .execute(
                    "DELETE FROM accounts WHERE domain = ?1 AND username = ?2",
                    params![domain, user],
                )
                .map_err(backend)?;
            // What belonged to the account goes with it (XEP-0077 §3.2): what every
            // module keeps under the account's bare JID on its domain.
            let bare = format!("{user}@{domain}");
            for sql in [
                "DELETE FROM module_kv WHERE host = ?1 AND owner = ?2",
                // The owner rows stay (archive handles keep their ids; see `named.rs`).
                "DELETE FROM archive_items WHERE owner IN
                     (SELECT id FROM archive_owners WHERE host = ?1 AND owner = ?2)",
            ] {
                conn.execute(sql, params![domain, bare]).map_err(backend)?;
            }
            Ok(n == 1)
        })
        .await
    }

    async fn list_accounts(&self, domain: &str) -> Result<Vec<String>, StorageError> {
        let domain = domain.to_owned();
        self.read(move |conn| {
            all(
                conn,
                "SELECT username FROM accounts WHERE domain = ?1 ORDER BY username",
                params![domain],
                |r| r.get::<_, String>(0),
            )
        })
        .await
    }
}
