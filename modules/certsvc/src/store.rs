//! The keys of the certification services hosted here, in the module's named key-value
//! store `cert_keys` of each service's domain (as Prosody keeps a component's data under
//! the component's host): owner = the service JID, key = the JID the key belongs to,
//! value = [`Record`] as JSON.

use std::sync::Arc;

use openspimed_module_api::jid::Jid;
use openspimed_module_api::{KvStore, ModuleStorage, StorageFailure};
use serde::{Deserialize, Serialize};

/// The store's name.
const STORE: &str = "cert_keys";

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

/// One stored value.
#[derive(Serialize, Deserialize)]
struct Record {
    /// The key's DER SubjectPublicKeyInfo, in hexadecimal (what SQLite's `hex()` wrote
    /// when the keys moved here from their own table).
    spki: String,
    /// When it was stored (seconds since the epoch).
    created: i64,
    /// When it was revoked, if it was.
    revoked: Option<i64>,
}

/// The keys of every service hosted here.
#[derive(Clone)]
pub struct Keys {
    /// Where the stores are opened: one per service domain.
    storage: Arc<dyn ModuleStorage>,
}

fn corrupt(service: &str, jid: &str, why: impl std::fmt::Display) -> StorageFailure {
    StorageFailure(format!(
        "stored key of {jid} at {service} unreadable: {why}"
    ))
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect()
}

impl Keys {
    /// The keys kept in `storage`.
    pub fn new(storage: Arc<dyn ModuleStorage>) -> Keys {
        Keys { storage }
    }

    /// The store of `service`'s domain.
    fn store(&self, service: &str) -> Arc<dyn KvStore> {
        let domain = Jid::new(service)
            .map(|j| j.domain().to_string())
            .unwrap_or_else(|_| service.to_owned());
        self.storage.kv(&domain, STORE)
    }

    fn read(service: &str, jid: &str, value: &[u8]) -> Result<StoredKey, StorageFailure> {
        let r: Record = serde_json::from_slice(value).map_err(|e| corrupt(service, jid, e))?;
        Ok(StoredKey {
            service: service.to_owned(),
            jid: jid.to_owned(),
            spki_der: from_hex(&r.spki).ok_or_else(|| corrupt(service, jid, "not hex"))?,
            created_unix: r.created,
            revoked_unix: r.revoked,
        })
    }

    fn write(service: &str, jid: &str, r: &Record) -> Result<Vec<u8>, StorageFailure> {
        serde_json::to_vec(r).map_err(|e| corrupt(service, jid, e))
    }

    /// Stores (or replaces, clearing any revocation) a key.
    pub async fn put_key(
        &self,
        service: &str,
        jid: &str,
        spki_der: &[u8],
    ) -> Result<(), StorageFailure> {
        let r = Record {
            spki: to_hex(spki_der),
            created: now_unix(),
            revoked: None,
        };
        self.store(service)
            .set(service, jid, &Self::write(service, jid, &r)?)
            .await
    }

    /// The key of `jid` at `service`, revoked or not.
    pub async fn key(&self, service: &str, jid: &str) -> Result<Option<StoredKey>, StorageFailure> {
        match self.store(service).get(service, jid).await? {
            Some(v) => Self::read(service, jid, &v).map(Some),
            None => Ok(None),
        }
    }

    /// Marks a key revoked; `false` if there is none (or it already was).
    pub async fn revoke_key(&self, service: &str, jid: &str) -> Result<bool, StorageFailure> {
        let store = self.store(service);
        loop {
            let Some(old) = store.get(service, jid).await? else {
                return Ok(false);
            };
            let k = Self::read(service, jid, &old)?;
            if k.revoked_unix.is_some() {
                return Ok(false);
            }
            let r = Record {
                spki: to_hex(&k.spki_der),
                created: k.created_unix,
                revoked: Some(now_unix()),
            };
            let new = Self::write(service, jid, &r)?;
            // Someone else changed it in between: read again.
            if store.swap(service, jid, Some(&old), Some(&new)).await? {
                return Ok(true);
            }
        }
    }

    /// All keys of a service, sorted by JID.
    pub async fn list_keys(&self, service: &str) -> Result<Vec<StoredKey>, StorageFailure> {
        self.store(service)
            .entries(service)
            .await?
            .into_iter()
            .map(|(jid, v)| Self::read(service, &jid, &v))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{from_hex, to_hex};

    #[test]
    fn hex_round_trips_and_reads_sqlite_uppercase() {
        assert_eq!(to_hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(from_hex("00AB10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(from_hex("0"), None);
        assert_eq!(from_hex("zz"), None);
    }
}
