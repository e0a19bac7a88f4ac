//! The server's signing key, shared by every process that uses the database, and the cache of
//! other servers' verify keys.

use async_trait::async_trait;
use cairn_core::store::*;
use ruma::ServerName;
use sqlx::Row;

use crate::{SqlStore, backend_err, from_ms, ms};

#[async_trait]
impl ServerKeyStore for SqlStore {
    async fn signing_key_or_insert(
        &self,
        candidate: &SigningKeyRecord,
    ) -> StoreResult<SigningKeyRecord> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO server_signing_key (slot, key_version, pkcs8, created_ms) VALUES (1, $1, $2, $3) \
             ON CONFLICT (slot) DO NOTHING",
        )
        .bind(&candidate.version)
        .bind(candidate.pkcs8.clone())
        .bind(ms(candidate.created_ms))
        .execute(&mut *tx)
        .await
        .map_err(backend_err)?;
        let row = sqlx::query(
            "SELECT key_version, pkcs8, created_ms FROM server_signing_key WHERE slot = 1",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(backend_err)?;
        let record = SigningKeyRecord {
            version: row.try_get("key_version").map_err(backend_err)?,
            pkcs8: row.try_get("pkcs8").map_err(backend_err)?,
            created_ms: from_ms(row.try_get("created_ms").map_err(backend_err)?),
        };
        tx.commit().await.map_err(backend_err)?;
        Ok(record)
    }

    async fn store_remote_keys(&self, server: &ServerName, keys: &[RemoteKey]) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        for key in keys {
            sqlx::query(
                "INSERT INTO remote_server_keys (server_name, key_id, key_base64, valid_until_ms, expired_ms) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (server_name, key_id) DO UPDATE SET \
                 key_base64 = excluded.key_base64, valid_until_ms = excluded.valid_until_ms, \
                 expired_ms = excluded.expired_ms",
            )
            .bind(server.as_str())
            .bind(&key.key_id)
            .bind(&key.key)
            .bind(ms(key.valid_until_ms))
            .bind(key.expired_ms.map(ms))
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
        }
        tx.commit().await.map_err(backend_err)
    }

    async fn remote_key(
        &self,
        server: &ServerName,
        key_id: &str,
    ) -> StoreResult<Option<RemoteKey>> {
        let row = sqlx::query(
            "SELECT key_base64, valid_until_ms, expired_ms FROM remote_server_keys \
             WHERE server_name = $1 AND key_id = $2",
        )
        .bind(server.as_str())
        .bind(key_id)
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?;
        row.map(|row| {
            Ok(RemoteKey {
                key_id: key_id.to_owned(),
                key: row.try_get("key_base64").map_err(backend_err)?,
                valid_until_ms: from_ms(row.try_get("valid_until_ms").map_err(backend_err)?),
                expired_ms: row
                    .try_get::<Option<i64>, _>("expired_ms")
                    .map_err(backend_err)?
                    .map(from_ms),
            })
        })
        .transpose()
    }
}
