//! Device keys, one-time and fallback keys, to-device inboxes and the reads of `/sync`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use cairn_core::store::*;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::value::RawValue;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::key_sql::{
    ADD_ONE_TIME_KEY_COUNT, ONE_TIME_KEY_COUNTS, PUT_FALLBACK_KEY, SET_EAGER_SHARE,
    TAKE_FALLBACK_KEY, TAKE_ONE_TIME_KEY, TAKE_ONE_TIME_KEY_SKIP_LOCKED, held_from_rows,
    held_one_time_keys_query, insert_one_time_keys_sql, one_time_key_chunks,
};
use crate::params::Params;
use crate::{
    Backend, SqlStore, backend_err, from_ms, ms, next_position, record_device_list_change,
};

pub(crate) fn raw_json(text: String) -> StoreResult<Box<RawValue>> {
    RawValue::from_string(text).map_err(|e| StoreError::Backend(format!("bad stored JSON: {e}")))
}

pub(crate) fn get<T>(row: &AnyRow, column: &str) -> StoreResult<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    row.try_get(column).map_err(backend_err)
}

fn uploaded_key(row: &AnyRow) -> StoreResult<UploadedKey> {
    Ok(UploadedKey {
        algorithm: get(row, "algorithm")?,
        key_id: get(row, "key_id")?,
        key: raw_json(get(row, "key_json")?)?,
    })
}

pub(crate) fn parse_user(raw: String) -> StoreResult<OwnedUserId> {
    UserId::parse(raw).map_err(|e| StoreError::Backend(format!("bad stored user ID: {e}")))
}

#[async_trait]
impl KeyStore for SqlStore {
    async fn device_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> StoreResult<Option<Box<RawValue>>> {
        let json: Option<String> = sqlx::query_scalar(
            "SELECT key_json FROM device_keys WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?;
        json.map(raw_json).transpose()
    }

    async fn fallback_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> StoreResult<Vec<StoredFallbackKey>> {
        let rows = sqlx::query(
            "SELECT algorithm, key_id, key_json, used FROM fallback_keys WHERE user_id = $1 AND device_id = $2 \
             ORDER BY algorithm",
        )
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        rows.iter()
            .map(|row| {
                Ok(StoredFallbackKey {
                    key: uploaded_key(row)?,
                    used: get::<i64>(row, "used")? != 0,
                })
            })
            .collect()
    }

    async fn write_keys(
        &self,
        write: &KeyWrite,
    ) -> StoreResult<Result<BTreeMap<String, u64>, OneTimeKeyRefusal>> {
        match &self.writes {
            // SQLite: group commit with other uploads and claims (see `group_commit`), unless
            // the upload changes the device list or owes an announcement, which are rare.
            Some(batcher) if write.device_keys.is_none() && !write.owes_update => {
                batcher.write_keys(write.clone()).await
            }
            _ => {
                let mut tx = self.begin().await?;
                let written = write_keys_in(&mut tx, write, self.backend).await?;
                tx.commit().await.map_err(backend_err)?;
                Ok(written)
            }
        }
    }

    async fn one_time_key_counts(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> StoreResult<BTreeMap<String, u64>> {
        let rows = sqlx::query(ONE_TIME_KEY_COUNTS)
            .bind(user_id.as_str())
            .bind(device_id.as_str())
            .fetch_all(&self.read)
            .await
            .map_err(backend_err)?;
        rows.iter()
            .map(|row| Ok((get(row, "algorithm")?, from_ms(get(row, "n")?))))
            .collect()
    }

    async fn claim_keys(&self, claims: &[KeyClaim]) -> StoreResult<Vec<Option<UploadedKey>>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        match (&self.writes, self.backend) {
            // SQLite: group commit (see `group_commit`).
            (Some(batcher), _) => batcher.claim(claims.to_vec()).await,
            // Otherwise each claim is one self-contained statement, atomic on its own.
            _ => {
                let mut conn = self.write.acquire().await.map_err(backend_err)?;
                let mut out = Vec::with_capacity(claims.len());
                for claim in claims {
                    out.push(claim_one(&mut conn, claim, self.backend).await?);
                }
                Ok(out)
            }
        }
    }

    async fn query_device_keys(
        &self,
        user_id: &UserId,
        device_ids: &[OwnedDeviceId],
    ) -> StoreResult<Vec<DeviceKeysRecord>> {
        let mut p = Params::new(self.backend);
        let base = format!(
            "SELECT k.device_id, k.key_json, d.display_name FROM device_keys k \
             JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id WHERE k.user_id = {}",
            p.one()
        );
        let sql = if device_ids.is_empty() {
            format!("{base} ORDER BY k.device_id")
        } else {
            format!(
                "{base} AND k.device_id IN ({}) ORDER BY k.device_id",
                p.many(device_ids.len())
            )
        };
        let mut query = sqlx::query(AssertSqlSafe(sql)).bind(user_id.as_str());
        for device_id in device_ids {
            query = query.bind(device_id.as_str());
        }
        let rows = query.fetch_all(&self.read).await.map_err(backend_err)?;
        rows.iter()
            .map(|row| {
                Ok(DeviceKeysRecord {
                    device_id: get::<String>(row, "device_id")?.into(),
                    keys: raw_json(get(row, "key_json")?)?,
                    display_name: get(row, "display_name")?,
                })
            })
            .collect()
    }

    async fn eager_share_fallback_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> StoreResult<Option<bool>> {
        let flag: Option<Option<i64>> = sqlx::query_scalar(
            "SELECT eager_share_fallback_keys FROM devices WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?;
        Ok(flag.flatten().map(|f| f != 0))
    }
}

#[async_trait]
impl ToDeviceStore for SqlStore {
    async fn send_to_device(&self, batch: &ToDeviceBatch) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let fresh = sqlx::query(
            "INSERT INTO client_transactions (user_id, device_id, scope, txn_id, created_ms) \
             VALUES ($1, $2, 'sendToDevice', $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(batch.sender.as_str())
        .bind(batch.sender_device.as_str())
        .bind(&batch.txn_id)
        .bind(ms(cairn_core::Clock::now_ms(
            &cairn_core::clock::SystemClock,
        )))
        .execute(&mut *tx)
        .await
        .map_err(backend_err)?;
        if fresh.rows_affected() == 0 {
            return Ok(false);
        }
        let pos = next_position(&mut tx).await?;
        crate::federation::enqueue(&mut tx, &batch.outbound).await?;
        for (user, device, content) in &batch.messages {
            sqlx::query(
                "INSERT INTO to_device_inbox (user_id, device_id, stream_pos, sender, event_type, content) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(user.as_str())
            .bind(device.as_str())
            .bind(ms(pos))
            .bind(batch.sender.as_str())
            .bind(&batch.event_type)
            .bind(content.get())
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
        }
        tx.commit().await.map_err(backend_err)?;
        Ok(true)
    }

    async fn to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<ToDeviceRecord>> {
        let rows = sqlx::query(
            "SELECT stream_pos, sender, event_type, content FROM to_device_inbox \
             WHERE user_id = $1 AND device_id = $2 AND stream_pos > $3 ORDER BY stream_pos LIMIT $4",
        )
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .bind(ms(after))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        rows.iter()
            .map(|row| {
                Ok(ToDeviceRecord {
                    pos: from_ms(get(row, "stream_pos")?),
                    sender: parse_user(get(row, "sender")?)?,
                    event_type: get(row, "event_type")?,
                    content: raw_json(get(row, "content")?)?,
                })
            })
            .collect()
    }

    async fn delete_to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        up_to: u64,
    ) -> StoreResult<()> {
        sqlx::query("DELETE FROM to_device_inbox WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $3")
            .bind(user_id.as_str())
            .bind(device_id.as_str())
            .bind(ms(up_to))
            .execute(&self.write)
            .await
            .map_err(backend_err)?;
        Ok(())
    }
}

#[async_trait]
impl SyncStore for SqlStore {
    async fn current_position(&self) -> StoreResult<u64> {
        let pos: i64 = sqlx::query_scalar("SELECT pos FROM stream_position WHERE id = 1")
            .fetch_one(&self.read)
            .await
            .map_err(backend_err)?;
        Ok(from_ms(pos))
    }

    async fn mark_device_list_changed(&self, user_id: &UserId) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        let pos = record_device_list_change(&mut tx, user_id.as_str(), &[]).await?;
        tx.commit().await.map_err(backend_err)?;
        Ok(pos)
    }

    async fn device_list_changes(
        &self,
        user_id: &UserId,
        after: u64,
        up_to: u64,
    ) -> StoreResult<Vec<OwnedUserId>> {
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT c.user_id FROM device_list_changes c WHERE c.stream_pos > $2 AND c.stream_pos <= $3 \
             AND (c.user_id = $1 OR c.user_id IN (SELECT o.user_id FROM memberships me \
             JOIN memberships o ON o.room_id = me.room_id \
             WHERE me.user_id = $1 AND me.membership = 'join' AND o.membership = 'join')) ORDER BY c.user_id",
        )
        .bind(user_id.as_str())
        .bind(ms(after))
        .bind(ms(up_to))
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        users.into_iter().map(parse_user).collect()
    }

    async fn account_data_changes(
        &self,
        user_id: &UserId,
        after: u64,
        up_to: u64,
    ) -> StoreResult<Vec<(String, Box<RawValue>)>> {
        let rows = sqlx::query(
            "SELECT data_type, content FROM account_data WHERE user_id = $1 AND room_id = '' \
             AND stream_pos > $2 AND stream_pos <= $3 ORDER BY data_type",
        )
        .bind(user_id.as_str())
        .bind(ms(after))
        .bind(ms(up_to))
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        rows.iter()
            .map(|row| Ok((get(row, "data_type")?, raw_json(get(row, "content")?)?)))
            .collect()
    }
}

/// Takes the oldest one-time key of the claim, else marks the fallback key used and returns it.
async fn claim_one(
    conn: &mut sqlx::AnyConnection,
    claim: &KeyClaim,
    backend: Backend,
) -> StoreResult<Option<UploadedKey>> {
    let take_one_time_key = match backend {
        Backend::Sqlite => TAKE_ONE_TIME_KEY,
        Backend::Postgres => TAKE_ONE_TIME_KEY_SKIP_LOCKED,
    };
    for sql in [take_one_time_key, TAKE_FALLBACK_KEY] {
        let row = sqlx::query(sql)
            .bind(claim.user_id.as_str())
            .bind(claim.device_id.as_str())
            .bind(&claim.algorithm)
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend_err)?;
        if let Some(row) = row {
            return uploaded_key(&row).map(Some);
        }
    }
    Ok(None)
}

/// Writes a key upload with `conn`, inside a transaction the caller commits.
async fn write_keys_in(
    conn: &mut sqlx::AnyConnection,
    write: &KeyWrite,
    backend: Backend,
) -> StoreResult<Result<BTreeMap<String, u64>, OneTimeKeyRefusal>> {
    let (user, device) = (write.user_id.as_str(), write.device_id.as_str());
    if backend == Backend::Postgres {
        // Uploads of one device take turns, so that what they read below stays true until
        // they commit (SQLite's writes take turns already).
        sqlx::query("SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2 FOR UPDATE")
            .bind(user)
            .bind(device)
            .execute(&mut *conn)
            .await
            .map_err(backend_err)?;
    }
    let (sql, params) = held_one_time_keys_query(backend, write);
    let mut query = sqlx::query(AssertSqlSafe(sql));
    for param in params {
        query = query.bind(param);
    }
    let rows = query.fetch_all(&mut *conn).await.map_err(backend_err)?;
    let rows = rows
        .iter()
        .map(|row| {
            Ok((
                get(row, "algorithm")?,
                get(row, "key_id")?,
                get(row, "key_json")?,
                get(row, "n")?,
            ))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let new = match write.new_one_time_keys(&held_from_rows(rows)?) {
        Ok(new) => new,
        Err(refusal) => return Ok(Err(refusal)),
    };
    if let Some(keys) = &write.device_keys {
        sqlx::query(
            "INSERT INTO device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
        )
        .bind(user)
        .bind(device)
        .bind(keys.get())
        .execute(&mut *conn)
        .await
        .map_err(backend_err)?;
        record_device_list_change(conn, user, &[device]).await?;
    } else if write.owes_update {
        let stream_id = next_position(conn).await?;
        crate::device_lists::owe_announcement(conn, None, user, device, stream_id).await?;
    }
    // The count grows by the rows actually inserted; a trigger does the same for deletions,
    // which come from several places (claims, device deletion).
    let mut inserted: BTreeMap<&str, u64> = BTreeMap::new();
    for (algorithm, chunk) in one_time_key_chunks(&new.keys) {
        let sql = insert_one_time_keys_sql(backend, chunk.len());
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for key in chunk {
            query = query
                .bind(user)
                .bind(device)
                .bind(algorithm)
                .bind(key.key_id.as_str())
                .bind(key.key.get());
        }
        *inserted.entry(algorithm).or_default() += query
            .execute(&mut *conn)
            .await
            .map_err(backend_err)?
            .rows_affected();
    }
    for (algorithm, n) in inserted.into_iter().filter(|&(_, n)| n > 0) {
        sqlx::query(ADD_ONE_TIME_KEY_COUNT)
            .bind(user)
            .bind(device)
            .bind(algorithm)
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .execute(&mut *conn)
            .await
            .map_err(backend_err)?;
    }
    for key in &write.fallback_keys {
        sqlx::query(PUT_FALLBACK_KEY)
            .bind(user)
            .bind(device)
            .bind(&key.algorithm)
            .bind(&key.key_id)
            .bind(key.key.get())
            .execute(&mut *conn)
            .await
            .map_err(backend_err)?;
    }
    if let Some(eager) = write.eager_share_fallback_keys {
        sqlx::query(SET_EAGER_SHARE)
            .bind(i64::from(eager))
            .bind(user)
            .bind(device)
            .execute(&mut *conn)
            .await
            .map_err(backend_err)?;
    }
    Ok(Ok(new.counts))
}
