//! Device lists across servers: the announcement outbox and the remote device-list cache (see
//! `cairn_core::store::device_lists`).

use async_trait::async_trait;
use cairn_core::store::*;
use ruma::{OwnedServerName, OwnedUserId, RoomId, ServerName, UserId};
use serde_json::value::RawValue;
use sqlx::Row;

use crate::{SqlStore, backend_err, from_ms, ms, next_position, record_device_list_change};

/// The server part of a user ID.
fn server_of(user_id: &str) -> &str {
    user_id.split_once(':').map_or("", |(_, server)| server)
}

fn json(text: String) -> StoreResult<Box<RawValue>> {
    RawValue::from_string(text).map_err(|e| StoreError::Backend(format!("bad stored JSON: {e}")))
}

/// Owes an announcement of `user_id`'s `device_id` at `stream_id` to `destination`, or, without
/// one, to every other server with a member joined to a room the user is joined to. A newer
/// announcement of the same device replaces one not yet delivered.
pub(crate) async fn owe_announcement(
    conn: &mut sqlx::AnyConnection,
    destination: Option<&str>,
    user_id: &str,
    device_id: &str,
    stream_id: u64,
) -> StoreResult<()> {
    const UPSERT: &str = "ON CONFLICT (destination, user_id, device_id) \
                          DO UPDATE SET stream_id = excluded.stream_id";
    let query = match destination {
        Some(destination) => sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO device_list_outbox (destination, user_id, device_id, stream_id) \
             VALUES ($1, $2, $3, $4) {UPSERT}"
        )))
        .bind(destination),
        None => sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO device_list_outbox (destination, user_id, device_id, stream_id) \
             SELECT DISTINCT o.server_name, CAST($2 AS TEXT), CAST($3 AS TEXT), CAST($4 AS BIGINT) \
             FROM memberships m JOIN memberships o ON o.room_id = m.room_id \
             WHERE m.user_id = $2 AND m.membership = 'join' AND o.membership = 'join' \
             AND o.server_name <> $1 {UPSERT}"
        )))
        .bind(server_of(user_id)),
    };
    query
        .bind(user_id)
        .bind(device_id)
        .bind(ms(stream_id))
        .execute(&mut *conn)
        .await
        .map_err(backend_err)?;
    Ok(())
}

/// Owes each `(destination, user)` an announcement of every device and the cross-signing keys
/// of the user, each device at a new position.
pub(crate) async fn announce_all(
    conn: &mut sqlx::AnyConnection,
    pairs: &[(OwnedServerName, OwnedUserId)],
) -> StoreResult<()> {
    for (destination, user_id) in pairs {
        let mut owed: Vec<String> = sqlx::query_scalar(
            "SELECT device_id FROM devices WHERE user_id = $1 \
             UNION SELECT '' FROM cross_signing_keys WHERE user_id = $1 AND usage = 'master'",
        )
        .bind(user_id.as_str())
        .fetch_all(&mut *conn)
        .await
        .map_err(backend_err)?;
        owed.sort();
        for device_id in owed {
            let stream_id = next_position(conn).await?;
            owe_announcement(
                conn,
                Some(destination.as_str()),
                user_id.as_str(),
                &device_id,
                stream_id,
            )
            .await?;
        }
    }
    Ok(())
}

#[async_trait]
impl DeviceListStore for SqlStore {
    async fn pending_device_updates(
        &self,
        destination: &ServerName,
        limit: usize,
    ) -> StoreResult<Vec<DeviceUpdate>> {
        let rows = sqlx::query(
            "SELECT o.user_id, o.device_id, o.stream_id, s.stream_id AS prev_sent \
             FROM device_list_outbox o LEFT JOIN device_list_sent s \
             ON s.destination = o.destination AND s.user_id = o.user_id \
             WHERE o.destination = $1 ORDER BY o.stream_id LIMIT $2",
        )
        .bind(destination.as_str())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        rows.iter()
            .map(|row| {
                let user: String = row.try_get("user_id").map_err(backend_err)?;
                Ok(DeviceUpdate {
                    user_id: UserId::parse(user)
                        .map_err(|e| StoreError::Backend(format!("bad stored user ID: {e}")))?,
                    device_id: row.try_get("device_id").map_err(backend_err)?,
                    stream_id: from_ms(row.try_get("stream_id").map_err(backend_err)?),
                    prev_sent: row
                        .try_get::<Option<i64>, _>("prev_sent")
                        .map_err(backend_err)?
                        .map(from_ms),
                })
            })
            .collect()
    }

    async fn device_updates_delivered(
        &self,
        destination: &ServerName,
        delivered: &[DeviceUpdate],
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        for update in delivered {
            sqlx::query(
                "DELETE FROM device_list_outbox WHERE destination = $1 AND user_id = $2 \
                 AND device_id = $3 AND stream_id = $4",
            )
            .bind(destination.as_str())
            .bind(update.user_id.as_str())
            .bind(&update.device_id)
            .bind(ms(update.stream_id))
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
            if update.device_id != CROSS_SIGNING_KEYS {
                sqlx::query(
                    "INSERT INTO device_list_sent (destination, user_id, stream_id) VALUES ($1, $2, $3) \
                     ON CONFLICT (destination, user_id) DO UPDATE SET stream_id = CASE \
                     WHEN excluded.stream_id > device_list_sent.stream_id THEN excluded.stream_id \
                     ELSE device_list_sent.stream_id END",
                )
                .bind(destination.as_str())
                .bind(update.user_id.as_str())
                .bind(ms(update.stream_id))
                .execute(&mut *tx)
                .await
                .map_err(backend_err)?;
            }
        }
        tx.commit().await.map_err(backend_err)
    }

    async fn servers_sharing_rooms(
        &self,
        user_id: &UserId,
        except_room: &RoomId,
    ) -> StoreResult<Vec<OwnedServerName>> {
        let servers: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT o.server_name FROM memberships m \
             JOIN memberships o ON o.room_id = m.room_id \
             WHERE m.user_id = $1 AND m.membership = 'join' AND m.room_id <> $2 \
             AND o.membership = 'join' AND o.server_name <> $3 ORDER BY o.server_name",
        )
        .bind(user_id.as_str())
        .bind(except_room.as_str())
        .bind(user_id.server_name().as_str())
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        servers
            .into_iter()
            .map(|s| {
                ServerName::parse(s)
                    .map_err(|e| StoreError::Backend(format!("bad stored server name: {e}")))
            })
            .collect()
    }

    async fn shares_room_with_server(
        &self,
        user_id: &UserId,
        server: &ServerName,
    ) -> StoreResult<bool> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT m.room_id FROM memberships m JOIN memberships o ON o.room_id = m.room_id \
             WHERE m.user_id = $1 AND m.membership = 'join' AND o.membership = 'join' \
             AND o.server_name = $2 LIMIT 1",
        )
        .bind(user_id.as_str())
        .bind(server.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?;
        Ok(found.is_some())
    }

    async fn remote_device_list(&self, user_id: &UserId) -> StoreResult<Option<RemoteDeviceList>> {
        let Some(row) = sqlx::query(
            "SELECT stream_id, stale, master_key, self_signing_key FROM remote_device_lists \
             WHERE user_id = $1",
        )
        .bind(user_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?
        else {
            return Ok(None);
        };
        let devices: Vec<String> = sqlx::query_scalar(
            "SELECT content FROM remote_devices WHERE user_id = $1 ORDER BY device_id",
        )
        .bind(user_id.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        let key = |column: &str| -> StoreResult<Option<Box<RawValue>>> {
            row.try_get::<Option<String>, _>(column)
                .map_err(backend_err)?
                .map(json)
                .transpose()
        };
        Ok(Some(RemoteDeviceList {
            user_id: user_id.to_owned(),
            stream_id: from_ms(row.try_get("stream_id").map_err(backend_err)?),
            stale: row.try_get::<i64, _>("stale").map_err(backend_err)? != 0,
            devices: devices.into_iter().map(json).collect::<StoreResult<_>>()?,
            master_key: key("master_key")?,
            self_signing_key: key("self_signing_key")?,
        }))
    }

    async fn apply_remote_device_update(
        &self,
        user_id: &UserId,
        device_id: &str,
        content: Option<&RawValue>,
        stream_id: u64,
        stale: bool,
    ) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO remote_device_lists (user_id, stream_id, stale) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET stream_id = excluded.stream_id, stale = excluded.stale",
        )
        .bind(user_id.as_str())
        .bind(ms(stream_id))
        .bind(i64::from(stale))
        .execute(&mut *tx)
        .await
        .map_err(backend_err)?;
        let write = match content {
            Some(content) => sqlx::query(
                "INSERT INTO remote_devices (user_id, device_id, content) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id, device_id) DO UPDATE SET content = excluded.content",
            )
            .bind(user_id.as_str())
            .bind(device_id)
            .bind(content.get()),
            None => sqlx::query("DELETE FROM remote_devices WHERE user_id = $1 AND device_id = $2")
                .bind(user_id.as_str())
                .bind(device_id),
        };
        write.execute(&mut *tx).await.map_err(backend_err)?;
        let pos = record_device_list_change(&mut tx, user_id.as_str(), &[]).await?;
        tx.commit().await.map_err(backend_err)?;
        Ok(pos)
    }

    async fn replace_remote_device_list(
        &self,
        list: &RemoteDeviceList,
    ) -> StoreResult<Option<u64>> {
        let user = list.user_id.as_str();
        let mut tx = self.begin().await?;
        // Read inside the write transaction, so that an update applied meanwhile is seen.
        let cached =
            sqlx::query("SELECT stream_id, stale FROM remote_device_lists WHERE user_id = $1")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend_err)?;
        if let Some(row) = cached {
            let at: i64 = row.try_get("stream_id").map_err(backend_err)?;
            let stale: i64 = row.try_get("stale").map_err(backend_err)?;
            if stale == 0 && from_ms(at) > list.stream_id {
                return Ok(None);
            }
        }
        sqlx::query("DELETE FROM remote_devices WHERE user_id = $1")
            .bind(user)
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
        for device in &list.devices {
            let device_id = serde_json::from_str::<serde_json::Value>(device.get())
                .ok()
                .and_then(|d| d["device_id"].as_str().map(ToOwned::to_owned));
            let Some(device_id) = device_id else { continue };
            sqlx::query(
                "INSERT INTO remote_devices (user_id, device_id, content) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id, device_id) DO UPDATE SET content = excluded.content",
            )
            .bind(user)
            .bind(device_id)
            .bind(device.get())
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
        }
        sqlx::query(
            "INSERT INTO remote_device_lists (user_id, stream_id, stale, master_key, self_signing_key) \
             VALUES ($1, $2, 0, $3, $4) ON CONFLICT (user_id) DO UPDATE SET \
             stream_id = excluded.stream_id, stale = 0, master_key = excluded.master_key, \
             self_signing_key = excluded.self_signing_key",
        )
        .bind(user)
        .bind(ms(list.stream_id))
        .bind(list.master_key.as_ref().map(|k| k.get()))
        .bind(list.self_signing_key.as_ref().map(|k| k.get()))
        .execute(&mut *tx)
        .await
        .map_err(backend_err)?;
        let pos = record_device_list_change(&mut tx, user, &[]).await?;
        tx.commit().await.map_err(backend_err)?;
        Ok(Some(pos))
    }

    async fn set_remote_cross_signing_keys(
        &self,
        user_id: &UserId,
        master_key: Option<&RawValue>,
        self_signing_key: Option<&RawValue>,
    ) -> StoreResult<Option<u64>> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE remote_device_lists SET master_key = $2, self_signing_key = $3 WHERE user_id = $1",
        )
        .bind(user_id.as_str())
        .bind(master_key.map(RawValue::get))
        .bind(self_signing_key.map(RawValue::get))
        .execute(&mut *tx)
        .await
        .map_err(backend_err)?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let pos = record_device_list_change(&mut tx, user_id.as_str(), &[]).await?;
        tx.commit().await.map_err(backend_err)?;
        Ok(Some(pos))
    }

    async fn mark_remote_device_list_stale(&self, user_id: &UserId) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO remote_device_lists (user_id, stream_id, stale) VALUES ($1, 0, 1) \
             ON CONFLICT (user_id) DO UPDATE SET stale = 1",
        )
        .bind(user_id.as_str())
        .execute(&self.write)
        .await
        .map_err(backend_err)?;
        Ok(())
    }

    async fn devices_with_cached_fallback_keys(&self) -> StoreResult<u64> {
        // Receivers keep fallback keys under the unstable name only (see cairn-core's msc4081).
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM remote_devices WHERE content LIKE '%\"org.matrix.msc4081.fallback_keys\"%'",
        )
        .fetch_one(&self.read)
        .await
        .map_err(backend_err)?;
        Ok(from_ms(count))
    }

    async fn stale_remote_device_lists(&self) -> StoreResult<Vec<OwnedUserId>> {
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM remote_device_lists WHERE stale = 1 ORDER BY user_id",
        )
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        user_ids(users)
    }

    async fn mark_remote_device_lists_for_recheck(
        &self,
        user_ids: &[OwnedUserId],
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        for user_id in user_ids {
            sqlx::query("UPDATE remote_device_lists SET recheck = 1 WHERE user_id = $1")
                .bind(user_id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(backend_err)?;
        }
        tx.commit().await.map_err(backend_err)
    }

    async fn remote_device_lists_to_recheck(&self) -> StoreResult<Vec<OwnedUserId>> {
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM remote_device_lists WHERE recheck = 1 ORDER BY user_id",
        )
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        user_ids(users)
    }

    async fn remote_device_list_rechecked(&self, user_id: &UserId) -> StoreResult<()> {
        sqlx::query("UPDATE remote_device_lists SET recheck = 0 WHERE user_id = $1")
            .bind(user_id.as_str())
            .execute(&self.write)
            .await
            .map_err(backend_err)?;
        Ok(())
    }

    async fn remote_device_list_fetched(&self, user_id: &UserId, at_ms: u64) -> StoreResult<()> {
        sqlx::query("UPDATE remote_device_lists SET fetched_ms = $1 WHERE user_id = $2")
            .bind(ms(at_ms))
            .bind(user_id.as_str())
            .execute(&self.write)
            .await
            .map_err(backend_err)?;
        Ok(())
    }

    async fn remote_device_lists_to_refresh(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<OwnedUserId>> {
        // Receivers keep fallback keys under the unstable name only (see cairn-core's msc4081).
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT l.user_id FROM remote_device_lists l WHERE l.fetched_ms < $1 AND EXISTS \
             (SELECT 1 FROM remote_devices d WHERE d.user_id = l.user_id \
              AND d.content LIKE '%\"org.matrix.msc4081.fallback_keys\"%') \
             ORDER BY l.fetched_ms, l.user_id LIMIT $2",
        )
        .bind(ms(before_ms))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        user_ids(users)
    }

    async fn forget_remote_device_list(&self, user_id: &UserId) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        for table in ["remote_devices", "remote_device_lists"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE user_id = $1"
            )))
            .bind(user_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
        }
        tx.commit().await.map_err(backend_err)
    }
}

/// Parses user IDs read from the database.
fn user_ids(raw: Vec<String>) -> StoreResult<Vec<OwnedUserId>> {
    raw.into_iter()
        .map(|u| {
            UserId::parse(u).map_err(|e| StoreError::Backend(format!("bad stored user ID: {e}")))
        })
        .collect()
}
