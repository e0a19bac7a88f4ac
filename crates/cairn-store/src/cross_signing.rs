//! Cross-signing keys and the signatures made with them.

use async_trait::async_trait;
use cairn_core::store::*;
use ruma::UserId;
use serde_json::value::RawValue;

use crate::e2ee::{get, parse_user, raw_json};
use crate::{SqlStore, backend_err, record_device_list_change};

fn usage_of(raw: &str) -> StoreResult<KeyUsage> {
    KeyUsage::ALL
        .into_iter()
        .find(|u| u.as_str() == raw)
        .ok_or_else(|| StoreError::Backend(format!("bad stored key usage {raw}")))
}

#[async_trait]
impl CrossSigningStore for SqlStore {
    async fn cross_signing_keys(
        &self,
        user_id: &UserId,
    ) -> StoreResult<Vec<(KeyUsage, Box<RawValue>)>> {
        let rows = sqlx::query(
            "SELECT usage, key_json FROM cross_signing_keys WHERE user_id = $1 ORDER BY usage",
        )
        .bind(user_id.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        rows.iter()
            .map(|row| {
                Ok((
                    usage_of(&get::<String>(row, "usage")?)?,
                    raw_json(get(row, "key_json")?)?,
                ))
            })
            .collect()
    }

    async fn set_cross_signing_keys(
        &self,
        user_id: &UserId,
        keys: &[(KeyUsage, Box<RawValue>)],
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        for (usage, key) in keys {
            sqlx::query(
                "INSERT INTO cross_signing_keys (user_id, usage, key_json) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id, usage) DO UPDATE SET key_json = excluded.key_json",
            )
            .bind(user_id.as_str())
            .bind(usage.as_str())
            .bind(key.get())
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
        }
        record_device_list_change(&mut tx, user_id.as_str(), &[CROSS_SIGNING_KEYS]).await?;
        tx.commit().await.map_err(backend_err)
    }

    async fn add_key_signatures(&self, signatures: &[KeySignature]) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        // Other servers hear of signatures on a user's own keys: on a device's keys as a
        // device-list update, on the master key as a cross-signing update.
        let mut targets: Vec<(&str, Vec<String>)> = Vec::new();
        for sig in signatures {
            sqlx::query(
                "INSERT INTO key_signatures (target_user, target_key, signer_user, signer_key_id, signature) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (target_user, target_key, signer_user, signer_key_id) \
                 DO UPDATE SET signature = excluded.signature",
            )
            .bind(sig.target_user.as_str())
            .bind(&sig.target_key)
            .bind(sig.signer_user.as_str())
            .bind(&sig.signer_key_id)
            .bind(&sig.signature)
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
            let announce = if sig.signer_user != sig.target_user {
                None
            } else if sqlx::query("SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2")
                .bind(sig.target_user.as_str())
                .bind(&sig.target_key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend_err)?
                .is_some()
            {
                Some(sig.target_key.clone())
            } else {
                Some(CROSS_SIGNING_KEYS.to_owned())
            };
            let user = sig.target_user.as_str();
            let at = match targets.iter().position(|(u, _)| *u == user) {
                Some(at) => at,
                None => {
                    targets.push((user, Vec::new()));
                    targets.len() - 1
                }
            };
            if let Some(key) = announce
                && !targets[at].1.contains(&key)
            {
                targets[at].1.push(key);
            }
        }
        for (user, announce) in targets {
            let announce: Vec<&str> = announce.iter().map(String::as_str).collect();
            record_device_list_change(&mut tx, user, &announce).await?;
        }
        tx.commit().await.map_err(backend_err)
    }

    async fn key_signatures(&self, target_user: &UserId) -> StoreResult<Vec<KeySignature>> {
        let rows = sqlx::query(
            "SELECT target_key, signer_user, signer_key_id, signature FROM key_signatures WHERE target_user = $1 \
             ORDER BY target_key, signer_user, signer_key_id",
        )
        .bind(target_user.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        rows.iter()
            .map(|row| {
                Ok(KeySignature {
                    target_user: target_user.to_owned(),
                    target_key: get(row, "target_key")?,
                    signer_user: parse_user(get(row, "signer_user")?)?,
                    signer_key_id: get(row, "signer_key_id")?,
                    signature: get(row, "signature")?,
                })
            })
            .collect()
    }
}
