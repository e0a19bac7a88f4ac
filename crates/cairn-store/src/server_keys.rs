//! The server's signing key, shared by every process that uses the database.

use async_trait::async_trait;
use cairn_core::store::*;
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
}
