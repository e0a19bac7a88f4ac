//! The federation queue, destinations' backoff and leases, and inbound transactions.

use async_trait::async_trait;
use cairn_core::store::*;
use ruma::{OwnedServerName, ServerName};
use serde_json::value::RawValue;
use sqlx::Row;

use crate::{SqlStore, backend_err, from_ms, ms};

/// Queues `items` with `conn`, inside the caller's transaction.
pub(crate) async fn enqueue(conn: &mut sqlx::AnyConnection, items: &[Outbound]) -> StoreResult<()> {
    for item in items {
        sqlx::query(
            "INSERT INTO federation_queue (destination, kind, item_json, queued_ms) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(item.destination.as_str())
        .bind(item.kind.as_str())
        .bind(item.json.get())
        .bind(ms(cairn_core::Clock::now_ms(
            &cairn_core::clock::SystemClock,
        )))
        .execute(&mut *conn)
        .await
        .map_err(backend_err)?;
    }
    Ok(())
}

fn server(raw: String) -> StoreResult<OwnedServerName> {
    ServerName::parse(raw).map_err(|e| StoreError::Backend(format!("bad stored server name: {e}")))
}

#[async_trait]
impl FederationStore for SqlStore {
    async fn destinations_with_items(&self) -> StoreResult<Vec<(OwnedServerName, Backoff)>> {
        let rows = sqlx::query(
            "SELECT q.destination, COALESCE(MAX(d.retry_after_ms), 0) AS retry_after_ms, \
             COALESCE(MAX(d.interval_ms), 0) AS interval_ms FROM \
             (SELECT destination FROM federation_queue UNION SELECT destination FROM device_list_outbox) q \
             LEFT JOIN federation_destinations d ON d.destination = q.destination \
             GROUP BY q.destination ORDER BY q.destination",
        )
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        rows.iter()
            .map(|row| {
                Ok((
                    server(row.try_get("destination").map_err(backend_err)?)?,
                    Backoff {
                        retry_after_ms: from_ms(
                            row.try_get("retry_after_ms").map_err(backend_err)?,
                        ),
                        interval_ms: from_ms(row.try_get("interval_ms").map_err(backend_err)?),
                    },
                ))
            })
            .collect()
    }

    async fn lease_destination(
        &self,
        destination: &ServerName,
        holder: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO federation_destinations (destination) VALUES ($1) ON CONFLICT DO NOTHING",
        )
        .bind(destination.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend_err)?;
        let taken = sqlx::query(
            "UPDATE federation_destinations SET leased_by = $1, leased_until_ms = $2 \
             WHERE destination = $3 AND (leased_by = $4 OR leased_until_ms <= $5)",
        )
        .bind(holder)
        .bind(ms(until_ms))
        .bind(destination.as_str())
        .bind(holder)
        .bind(ms(now_ms))
        .execute(&mut *tx)
        .await
        .map_err(backend_err)?
        .rows_affected()
            == 1;
        tx.commit().await.map_err(backend_err)?;
        Ok(taken)
    }

    async fn release_destination(&self, destination: &ServerName, holder: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE federation_destinations SET leased_by = '', leased_until_ms = 0 \
             WHERE destination = $1 AND leased_by = $2",
        )
        .bind(destination.as_str())
        .bind(holder)
        .execute(&self.write)
        .await
        .map_err(backend_err)?;
        Ok(())
    }

    async fn forget_stale_leases(&self) -> StoreResult<()> {
        if self.backend == crate::Backend::Sqlite {
            sqlx::query("UPDATE federation_destinations SET leased_by = '', leased_until_ms = 0")
                .execute(&self.write)
                .await
                .map_err(backend_err)?;
        }
        Ok(())
    }

    async fn queued(&self, destination: &ServerName, limit: usize) -> StoreResult<Vec<QueuedItem>> {
        let rows = sqlx::query(
            "SELECT seq, kind, item_json, queued_ms FROM federation_queue WHERE destination = $1 ORDER BY seq LIMIT $2",
        )
        .bind(destination.as_str())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        rows.iter()
            .map(|row| {
                let json: String = row.try_get("item_json").map_err(backend_err)?;
                let kind: String = row.try_get("kind").map_err(backend_err)?;
                Ok(QueuedItem {
                    seq: from_ms(row.try_get("seq").map_err(backend_err)?),
                    queued_ms: from_ms(row.try_get("queued_ms").map_err(backend_err)?),
                    kind: ItemKind::parse(&kind).ok_or_else(|| {
                        StoreError::Backend(format!("bad queue item kind {kind}"))
                    })?,
                    json: RawValue::from_string(json)
                        .map_err(|e| StoreError::Backend(e.to_string()))?,
                })
            })
            .collect()
    }

    async fn dequeue(&self, destination: &ServerName, seqs: &[u64]) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        for seq in seqs {
            sqlx::query("DELETE FROM federation_queue WHERE destination = $1 AND seq = $2")
                .bind(destination.as_str())
                .bind(ms(*seq))
                .execute(&mut *tx)
                .await
                .map_err(backend_err)?;
        }
        tx.commit().await.map_err(backend_err)
    }

    async fn backoff(&self, destination: &ServerName) -> StoreResult<Backoff> {
        let row = sqlx::query(
            "SELECT retry_after_ms, interval_ms FROM federation_destinations WHERE destination = $1",
        )
        .bind(destination.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?;
        row.map_or(Ok(Backoff::default()), |row| {
            Ok(Backoff {
                retry_after_ms: from_ms(row.try_get("retry_after_ms").map_err(backend_err)?),
                interval_ms: from_ms(row.try_get("interval_ms").map_err(backend_err)?),
            })
        })
    }

    async fn set_backoff(&self, destination: &ServerName, backoff: Backoff) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO federation_destinations (destination, retry_after_ms, interval_ms) \
             VALUES ($1, $2, $3) ON CONFLICT (destination) DO UPDATE SET \
             retry_after_ms = excluded.retry_after_ms, interval_ms = excluded.interval_ms",
        )
        .bind(destination.as_str())
        .bind(ms(backoff.retry_after_ms))
        .bind(ms(backoff.interval_ms))
        .execute(&self.write)
        .await
        .map_err(backend_err)?;
        Ok(())
    }

    async fn inbound_transaction(
        &self,
        origin: &ServerName,
        txn_id: &str,
    ) -> StoreResult<Option<String>> {
        let row = sqlx::query(
            "SELECT response FROM federation_inbound_transactions WHERE origin = $1 AND txn_id = $2",
        )
        .bind(origin.as_str())
        .bind(txn_id)
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?;
        row.map(|row| row.try_get("response").map_err(backend_err))
            .transpose()
    }

    async fn record_inbound_transaction(
        &self,
        origin: &ServerName,
        txn_id: &str,
        response: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO federation_inbound_transactions (origin, txn_id, response, received_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(origin.as_str())
        .bind(txn_id)
        .bind(response)
        .bind(ms(cairn_core::Clock::now_ms(
            &cairn_core::clock::SystemClock,
        )))
        .execute(&self.write)
        .await
        .map_err(backend_err)?;
        Ok(())
    }
}
