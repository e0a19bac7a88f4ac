//! Accounts, devices, access tokens and UIA sessions.

use async_trait::async_trait;
use cairn_core::store::*;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::{SqlStore, backend_err, from_ms, ms, record_device_list_change};

/// Tables holding per-device state, all emptied when a device is deleted.
const DEVICE_TABLES: [&str; 7] = [
    "access_tokens",
    "device_keys",
    "one_time_keys",
    "one_time_key_counts",
    "fallback_keys",
    "to_device_inbox",
    "devices",
];

fn user_id(row: &AnyRow, column: &str) -> StoreResult<OwnedUserId> {
    let raw: String = row.try_get(column).map_err(backend_err)?;
    UserId::parse(raw).map_err(|e| StoreError::Backend(format!("bad stored user ID: {e}")))
}

fn device_record(row: &AnyRow) -> StoreResult<DeviceRecord> {
    Ok(DeviceRecord {
        device_id: row
            .try_get::<String, _>("device_id")
            .map_err(backend_err)?
            .into(),
        display_name: row.try_get("display_name").map_err(backend_err)?,
        last_seen_ms: row
            .try_get::<Option<i64>, _>("last_seen_ms")
            .map_err(backend_err)?
            .map(from_ms),
        last_seen_ip: row.try_get("last_seen_ip").map_err(backend_err)?,
    })
}

/// Creates the device unless it exists (a device-list change), then adds the token, inside `tx`.
async fn add_device_token(
    tx: &mut Transaction<'static, Any>,
    device: &NewDevice,
) -> StoreResult<()> {
    let created = sqlx::query(
        "INSERT INTO devices (user_id, device_id, display_name, created_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id, device_id) DO NOTHING",
    )
    .bind(device.user_id.as_str())
    .bind(device.device_id.as_str())
    .bind(device.display_name.as_deref())
    .bind(ms(device.created_ms))
    .execute(&mut **tx)
    .await
    .map_err(backend_err)?;
    if created.rows_affected() > 0 {
        record_device_list_change(tx, device.user_id.as_str(), &[device.device_id.as_str()])
            .await?;
    }
    sqlx::query(
        "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(&device.token_hash)
    .bind(device.user_id.as_str())
    .bind(device.device_id.as_str())
    .bind(ms(device.created_ms))
    .execute(&mut **tx)
    .await
    .map_err(backend_err)?;
    Ok(())
}

#[async_trait]
impl AccountStore for SqlStore {
    async fn create_user(&self, user: &NewUser, device: Option<&NewDevice>) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO users (user_id, password_hash, displayname, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user.user_id.as_str())
        .bind(user.password_hash.as_deref())
        .bind(user.displayname.as_deref())
        .bind(ms(user.created_ms))
        .execute(&mut *tx)
        .await
        .map_err(backend_err)?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::Conflict(user.user_id.to_string()));
        }
        if let Some(device) = device {
            add_device_token(&mut tx, device).await?;
        }
        tx.commit().await.map_err(backend_err)
    }

    async fn user(&self, user_id: &UserId) -> StoreResult<Option<UserRecord>> {
        let row =
            sqlx::query("SELECT user_id, password_hash, created_ms FROM users WHERE user_id = $1")
                .bind(user_id.as_str())
                .fetch_optional(&self.read)
                .await
                .map_err(backend_err)?;
        row.map(|row| {
            Ok(UserRecord {
                user_id: crate::accounts::user_id(&row, "user_id")?,
                password_hash: row.try_get("password_hash").map_err(backend_err)?,
                created_ms: from_ms(row.try_get("created_ms").map_err(backend_err)?),
            })
        })
        .transpose()
    }

    async fn set_password_hash(&self, user_id: &UserId, hash: &str) -> StoreResult<()> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE user_id = $2")
            .bind(hash)
            .bind(user_id.as_str())
            .execute(&self.write)
            .await
            .map_err(backend_err)?;
        Ok(())
    }
}

#[async_trait]
impl DeviceStore for SqlStore {
    async fn add_device_token(&self, device: &NewDevice) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        add_device_token(&mut tx, device).await?;
        tx.commit().await.map_err(backend_err)
    }

    async fn token_owner(&self, token_hash: &str) -> StoreResult<Option<TokenOwner>> {
        let generation = match self.tokens.as_ref().map(|cache| cache.get(token_hash)) {
            Some(Ok(owner)) => return Ok(Some(owner)),
            Some(Err(generation)) => Some(generation),
            None => None,
        };
        let row = sqlx::query(
            "SELECT t.user_id, t.device_id, d.last_seen_ms FROM access_tokens t \
             JOIN devices d ON d.user_id = t.user_id AND d.device_id = t.device_id \
             WHERE t.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?;
        row.map(|row| {
            Ok(TokenOwner {
                user_id: user_id(&row, "user_id")?,
                device_id: row
                    .try_get::<String, _>("device_id")
                    .map_err(backend_err)?
                    .into(),
                last_seen_ms: row
                    .try_get::<Option<i64>, _>("last_seen_ms")
                    .map_err(backend_err)?
                    .map(from_ms),
            })
        })
        .transpose()
        .inspect(|owner| {
            if let (Some(cache), Some(generation), Some(owner)) = (&self.tokens, generation, owner)
            {
                cache.keep(generation, token_hash, owner);
            }
        })
    }

    async fn touch_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        now_ms: u64,
        ip: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE devices SET last_seen_ms = $1, last_seen_ip = $2 WHERE user_id = $3 AND device_id = $4")
            .bind(ms(now_ms))
            .bind(ip)
            .bind(user_id.as_str())
            .bind(device_id.as_str())
            .execute(&self.write)
            .await
            .map_err(backend_err)?;
        if let Some(cache) = &self.tokens {
            cache.seen(user_id, device_id, now_ms);
        }
        Ok(())
    }

    async fn devices(&self, user_id: &UserId) -> StoreResult<Vec<DeviceRecord>> {
        let rows = sqlx::query(
            "SELECT device_id, display_name, last_seen_ms, last_seen_ip FROM devices \
             WHERE user_id = $1 ORDER BY device_id",
        )
        .bind(user_id.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        rows.iter().map(device_record).collect()
    }

    async fn device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> StoreResult<Option<DeviceRecord>> {
        let row = sqlx::query(
            "SELECT device_id, display_name, last_seen_ms, last_seen_ip FROM devices \
             WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?;
        row.as_ref().map(device_record).transpose()
    }

    async fn set_device_display_name(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<&str>,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE devices SET display_name = $1 WHERE user_id = $2 AND device_id = $3",
        )
        .bind(display_name)
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend_err)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        // Names are not shown to other servers (Synapse's default), so they are owed nothing.
        record_device_list_change(&mut tx, user_id.as_str(), &[]).await?;
        tx.commit().await.map_err(backend_err)?;
        Ok(true)
    }

    async fn delete_devices(
        &self,
        user_id: &UserId,
        device_ids: &[OwnedDeviceId],
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let mut removed: Vec<&str> = Vec::new();
        for device_id in device_ids {
            for table in DEVICE_TABLES {
                let done = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE user_id = $1 AND device_id = $2"
                )))
                .bind(user_id.as_str())
                .bind(device_id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(backend_err)?;
                if table == "devices" && done.rows_affected() > 0 {
                    removed.push(device_id.as_str());
                }
            }
        }
        if !removed.is_empty() {
            record_device_list_change(&mut tx, user_id.as_str(), &removed).await?;
        }
        tx.commit().await.map_err(backend_err)?;
        if let Some(cache) = &self.tokens {
            let ids: Vec<&DeviceId> = device_ids.iter().map(|d| d.as_ref()).collect();
            cache.forget(user_id, Some(&ids));
        }
        Ok(())
    }

    async fn delete_all_devices(&self, user_id: &UserId) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let removed: Vec<String> =
            sqlx::query_scalar("SELECT device_id FROM devices WHERE user_id = $1")
                .bind(user_id.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(backend_err)?;
        for table in DEVICE_TABLES {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE user_id = $1"
            )))
            .bind(user_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
        }
        if !removed.is_empty() {
            let removed: Vec<&str> = removed.iter().map(String::as_str).collect();
            record_device_list_change(&mut tx, user_id.as_str(), &removed).await?;
        }
        tx.commit().await.map_err(backend_err)?;
        if let Some(cache) = &self.tokens {
            cache.forget(user_id, None);
        }
        Ok(())
    }
}

#[async_trait]
impl UiaStore for SqlStore {
    async fn create_uia_session(
        &self,
        session: &UiaSessionRecord,
        expire_before_ms: u64,
    ) -> StoreResult<()> {
        let completed = serde_json::to_string(&session.completed)
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM uia_sessions WHERE created_ms < $1")
            .bind(ms(expire_before_ms))
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
        sqlx::query(
            "INSERT INTO uia_sessions (session_id, operation, user_id, completed, created_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&session.session_id)
        .bind(&session.operation)
        .bind(session.user_id.as_ref().map(|u| u.as_str()))
        .bind(completed)
        .bind(ms(session.created_ms))
        .execute(&mut *tx)
        .await
        .map_err(backend_err)?;
        tx.commit().await.map_err(backend_err)
    }

    async fn uia_session(&self, session_id: &str) -> StoreResult<Option<UiaSessionRecord>> {
        let row = sqlx::query(
            "SELECT session_id, operation, user_id, completed, created_ms FROM uia_sessions WHERE session_id = $1",
        )
        .bind(session_id)
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?;
        row.map(|row| {
            let completed: String = row.try_get("completed").map_err(backend_err)?;
            Ok(UiaSessionRecord {
                session_id: row.try_get("session_id").map_err(backend_err)?,
                operation: row.try_get("operation").map_err(backend_err)?,
                user_id: match row
                    .try_get::<Option<String>, _>("user_id")
                    .map_err(backend_err)?
                {
                    Some(_) => Some(user_id(&row, "user_id")?),
                    None => None,
                },
                completed: serde_json::from_str(&completed)
                    .map_err(|e| StoreError::Backend(e.to_string()))?,
                created_ms: from_ms(row.try_get("created_ms").map_err(backend_err)?),
            })
        })
        .transpose()
    }

    async fn delete_uia_session(&self, session_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM uia_sessions WHERE session_id = $1")
            .bind(session_id)
            .execute(&self.write)
            .await
            .map_err(backend_err)?;
        Ok(())
    }
}
