//! PubSub nodes, affiliations, subscriptions and items (XEP-0060): the `PubSubStore` implementation.

use async_trait::async_trait;
use rusqlite::{Connection, params};

use openspimed_module_api::{
    AffiliationRecord, ItemRecord, NodeRecord, PubSubStore, StorageFailure, SubscriptionRecord,
};

use super::{SqliteStore, all, backend, own};

#[async_trait]
impl PubSubStore for SqliteStore {
    async fn create_node(
        &self,
        service: &str,
        node: &str,
        config: &str,
        owner: &str,
    ) -> Result<bool, StorageFailure> {
        let (service, node) = own(service, node);
        let (config, owner) = own(config, owner);
        Ok(self
            .write(move |c: &Connection| {
                let n = c
                    .execute(
                        "INSERT OR IGNORE INTO pubsub_nodes VALUES (?1, ?2, ?3)",
                        params![service, node, config],
                    )
                    .map_err(backend)?;
                if n == 1 && !owner.is_empty() {
                    c.execute(
                        "INSERT OR REPLACE INTO pubsub_affiliations VALUES (?1, ?2, ?3, 'owner')",
                        params![service, node, owner],
                    )
                    .map_err(backend)?;
                }
                Ok(n == 1)
            })
            .await?)
    }

    async fn set_node_config(
        &self,
        service: &str,
        node: &str,
        config: &str,
    ) -> Result<(), StorageFailure> {
        let (service, node) = own(service, node);
        let config = config.to_owned();
        Ok(self
            .write(move |c: &Connection| {
                c.execute(
                    "UPDATE pubsub_nodes SET config = ?3 WHERE service = ?1 AND node = ?2",
                    params![service, node, config],
                )
                .map_err(backend)?;
                Ok(())
            })
            .await?)
    }

    async fn delete_node(&self, service: &str, node: &str) -> Result<bool, StorageFailure> {
        let (service, node) = own(service, node);
        Ok(self
            .write(move |c: &Connection| {
                for table in [
                    "pubsub_items",
                    "pubsub_subscriptions",
                    "pubsub_affiliations",
                ] {
                    c.execute(
                        &format!("DELETE FROM {table} WHERE service = ?1 AND node = ?2"),
                        params![service, node],
                    )
                    .map_err(backend)?;
                }
                let n = c
                    .execute(
                        "DELETE FROM pubsub_nodes WHERE service = ?1 AND node = ?2",
                        params![service, node],
                    )
                    .map_err(backend)?;
                Ok(n == 1)
            })
            .await?)
    }

    async fn nodes(&self, service: &str) -> Result<Vec<NodeRecord>, StorageFailure> {
        let service = service.to_owned();
        Ok(self
            .read(move |c| {
                all(
                    c,
                    "SELECT node, config FROM pubsub_nodes WHERE service = ?1 ORDER BY node",
                    params![service],
                    |r| {
                        Ok(NodeRecord {
                            node: r.get(0)?,
                            config: r.get(1)?,
                        })
                    },
                )
            })
            .await?)
    }

    async fn set_affiliation(
        &self,
        service: &str,
        node: &str,
        jid: &str,
        affiliation: &str,
    ) -> Result<(), StorageFailure> {
        let (service, node) = own(service, node);
        let (jid, aff) = own(jid, affiliation);
        Ok(self
            .write(move |c: &Connection| {
                if aff == "none" {
                    c.execute(
                        "DELETE FROM pubsub_affiliations WHERE service = ?1 AND node = ?2 AND jid = ?3",
                        params![service, node, jid],
                    )
                } else {
                    c.execute(
                        "INSERT OR REPLACE INTO pubsub_affiliations VALUES (?1, ?2, ?3, ?4)",
                        params![service, node, jid, aff],
                    )
                }
                .map_err(backend)?;
                Ok(())
            })
            .await?)
    }

    async fn affiliations(&self, service: &str) -> Result<Vec<AffiliationRecord>, StorageFailure> {
        let service = service.to_owned();
        Ok(self
            .read(move |c| {
                all(
                    c,
                    "SELECT node, jid, affiliation FROM pubsub_affiliations WHERE service = ?1
                         ORDER BY node, jid",
                    params![service],
                    |r| {
                        Ok(AffiliationRecord {
                            node: r.get(0)?,
                            jid: r.get(1)?,
                            affiliation: r.get(2)?,
                        })
                    },
                )
            })
            .await?)
    }

    async fn put_subscription(
        &self,
        service: &str,
        sub: &SubscriptionRecord,
    ) -> Result<(), StorageFailure> {
        let service = service.to_owned();
        let sub = sub.clone();
        Ok(self
            .write(move |c: &Connection| {
                c.execute(
                    "INSERT OR REPLACE INTO pubsub_subscriptions VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        service,
                        sub.node,
                        sub.jid,
                        sub.subid,
                        sub.state,
                        sub.deliver
                    ],
                )
                .map_err(backend)?;
                Ok(())
            })
            .await?)
    }

    async fn remove_subscription(
        &self,
        service: &str,
        node: &str,
        jid: &str,
        subid: &str,
    ) -> Result<bool, StorageFailure> {
        let (service, node) = own(service, node);
        let (jid, subid) = own(jid, subid);
        Ok(self
            .write(move |c: &Connection| {
                let n = c
                    .execute(
                        "DELETE FROM pubsub_subscriptions
                         WHERE service = ?1 AND node = ?2 AND jid = ?3 AND subid = ?4",
                        params![service, node, jid, subid],
                    )
                    .map_err(backend)?;
                Ok(n == 1)
            })
            .await?)
    }

    async fn subscriptions(
        &self,
        service: &str,
    ) -> Result<Vec<SubscriptionRecord>, StorageFailure> {
        let service = service.to_owned();
        Ok(self
            .read(move |c| {
                all(
                    c,
                    "SELECT node, jid, subid, state, deliver FROM pubsub_subscriptions
                         WHERE service = ?1 ORDER BY node, jid, subid",
                    params![service],
                    |r| {
                        Ok(SubscriptionRecord {
                            node: r.get(0)?,
                            jid: r.get(1)?,
                            subid: r.get(2)?,
                            state: r.get(3)?,
                            deliver: r.get(4)?,
                        })
                    },
                )
            })
            .await?)
    }

    async fn publish_item(
        &self,
        service: &str,
        node: &str,
        item: &ItemRecord,
        max_items: Option<u64>,
    ) -> Result<(), StorageFailure> {
        let (service, node) = own(service, node);
        let item = item.clone();
        Ok(self
            .write(move |c: &Connection| {
                // Cached statements: publishing is the hot write of the PubSub service and
                // the writer thread does every write, so parsing the SQL again each time
                // showed in its profile.
                let seq: i64 = c
                    .prepare_cached(
                        "SELECT COALESCE(MAX(seq), 0) + 1 FROM pubsub_items WHERE service = ?1 AND node = ?2",
                    )
                    .and_then(|mut st| st.query_row(params![service, node], |r| r.get(0)))
                    .map_err(backend)?;
                c.prepare_cached("INSERT OR REPLACE INTO pubsub_items VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                    .and_then(|mut st| {
                        st.execute(params![service, node, item.id, item.publisher, item.payload, seq])
                    })
                    .map_err(backend)?;
                if let Some(max) = max_items {
                    c.prepare_cached(
                        "DELETE FROM pubsub_items WHERE service = ?1 AND node = ?2 AND seq <= ?3",
                    )
                    .and_then(|mut st| st.execute(params![service, node, seq - max as i64]))
                    .map_err(backend)?;
                }
                Ok(())
            })
            .await?)
    }

    async fn retract_item(
        &self,
        service: &str,
        node: &str,
        id: &str,
    ) -> Result<bool, StorageFailure> {
        let (service, node) = own(service, node);
        let id = id.to_owned();
        Ok(self
            .write(move |c: &Connection| {
                let n = c
                    .execute(
                        "DELETE FROM pubsub_items WHERE service = ?1 AND node = ?2 AND id = ?3",
                        params![service, node, id],
                    )
                    .map_err(backend)?;
                Ok(n == 1)
            })
            .await?)
    }

    async fn items(
        &self,
        service: &str,
        node: &str,
        ids: Option<&[String]>,
        max: Option<u64>,
    ) -> Result<Vec<ItemRecord>, StorageFailure> {
        let (service, node) = own(service, node);
        let ids = ids.map(<[String]>::to_vec);
        Ok(self
            .read(move |c| {
                let mut st = c
                    .prepare(
                        "SELECT id, publisher, payload FROM pubsub_items WHERE service = ?1 AND node = ?2
                         ORDER BY seq DESC LIMIT ?3",
                    )
                    .map_err(backend)?;
                let limit = max.map(|m| m as i64).unwrap_or(-1);
                let rows = st
                    .query_map(params![service, node, limit], |r| {
                        Ok(ItemRecord {
                            id: r.get(0)?,
                            publisher: r.get(1)?,
                            payload: r.get(2)?,
                        })
                    })
                    .map_err(backend)?;
                let all = rows.collect::<Result<Vec<_>, _>>().map_err(backend)?;
                Ok(match ids {
                    Some(ids) => all.into_iter().filter(|i| ids.contains(&i.id)).collect(),
                    None => all,
                })
            })
            .await?)
    }

    async fn purge_items(&self, service: &str, node: &str) -> Result<(), StorageFailure> {
        let (service, node) = own(service, node);
        Ok(self
            .write(move |c: &Connection| {
                c.execute(
                    "DELETE FROM pubsub_items WHERE service = ?1 AND node = ?2",
                    params![service, node],
                )
                .map_err(backend)?;
                Ok(())
            })
            .await?)
    }
}
