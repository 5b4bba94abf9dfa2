//! Certification-service keys (XEP-0189): the `KeyStore` implementation.

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use openspimed_module_api::{KeyStore, StorageFailure, StoredKey};

use super::{SqliteStore, all, backend, now_unix};

fn stored_key(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredKey> {
    Ok(StoredKey {
        service: row.get(0)?,
        jid: row.get(1)?,
        spki_der: row.get(2)?,
        created_unix: row.get(3)?,
        revoked_unix: row.get(4)?,
    })
}

#[async_trait]
impl KeyStore for SqliteStore {
    async fn put_key(
        &self,
        service: &str,
        jid: &str,
        spki_der: &[u8],
    ) -> Result<(), StorageFailure> {
        let (service, jid, der) = (service.to_owned(), jid.to_owned(), spki_der.to_vec());
        self.write(move |conn: &Connection| {
            conn.execute(
                "INSERT INTO cert_keys VALUES (?1, ?2, ?3, ?4, NULL)
                 ON CONFLICT (service, jid) DO UPDATE
                 SET spki_der = excluded.spki_der, created_unix = excluded.created_unix,
                     revoked_unix = NULL",
                params![service, jid, der, now_unix()],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
        .map_err(Into::into)
    }

    async fn key(&self, service: &str, jid: &str) -> Result<Option<StoredKey>, StorageFailure> {
        let (service, jid) = (service.to_owned(), jid.to_owned());
        self.read(move |conn| {
            conn.query_row(
                "SELECT service, jid, spki_der, created_unix, revoked_unix FROM cert_keys
                 WHERE service = ?1 AND jid = ?2",
                params![service, jid],
                stored_key,
            )
            .optional()
            .map_err(backend)
        })
        .await
        .map_err(Into::into)
    }

    async fn revoke_key(&self, service: &str, jid: &str) -> Result<bool, StorageFailure> {
        let (service, jid) = (service.to_owned(), jid.to_owned());
        self.write(move |conn: &Connection| {
            let n = conn
                .execute(
                    "UPDATE cert_keys SET revoked_unix = ?3
                     WHERE service = ?1 AND jid = ?2 AND revoked_unix IS NULL",
                    params![service, jid, now_unix()],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
        .map_err(Into::into)
    }

    async fn list_keys(&self, service: Option<&str>) -> Result<Vec<StoredKey>, StorageFailure> {
        let service = service.map(str::to_owned);
        self.read(move |conn| {
            all(
                conn,
                "SELECT service, jid, spki_der, created_unix, revoked_unix FROM cert_keys
                     WHERE ?1 IS NULL OR service = ?1 ORDER BY service, jid",
                params![service],
                stored_key,
            )
        })
        .await
        .map_err(Into::into)
    }
}
