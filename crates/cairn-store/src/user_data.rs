//! Profiles, global account data and filters.

use async_trait::async_trait;
use cairn_core::store::*;
use ruma::UserId;
use serde_json::value::RawValue;
use sqlx::Row;

use crate::{SqlStore, backend_err, ms, next_position};

fn raw_json(text: String) -> StoreResult<Box<RawValue>> {
    RawValue::from_string(text).map_err(|e| StoreError::Backend(format!("bad stored JSON: {e}")))
}

impl SqlStore {
    async fn set_profile_field(
        &self,
        column: &'static str,
        user_id: &UserId,
        value: Option<&str>,
    ) -> StoreResult<bool> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE users SET {column} = $1 WHERE user_id = $2"
        )))
        .bind(value)
        .bind(user_id.as_str())
        .execute(&self.write)
        .await
        .map_err(backend_err)?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl UserDataStore for SqlStore {
    async fn profile(&self, user_id: &UserId) -> StoreResult<Option<Profile>> {
        let row = sqlx::query("SELECT displayname, avatar_url FROM users WHERE user_id = $1")
            .bind(user_id.as_str())
            .fetch_optional(&self.read)
            .await
            .map_err(backend_err)?;
        row.map(|row| {
            Ok(Profile {
                displayname: row.try_get("displayname").map_err(backend_err)?,
                avatar_url: row.try_get("avatar_url").map_err(backend_err)?,
            })
        })
        .transpose()
    }

    async fn set_displayname(
        &self,
        user_id: &UserId,
        displayname: Option<&str>,
    ) -> StoreResult<bool> {
        self.set_profile_field("displayname", user_id, displayname)
            .await
    }

    async fn set_avatar_url(&self, user_id: &UserId, url: Option<&str>) -> StoreResult<bool> {
        self.set_profile_field("avatar_url", user_id, url).await
    }

    async fn account_data(
        &self,
        user_id: &UserId,
        data_type: &str,
    ) -> StoreResult<Option<Box<RawValue>>> {
        let content: Option<String> = sqlx::query_scalar(
            "SELECT content FROM account_data WHERE user_id = $1 AND room_id = '' AND data_type = $2",
        )
        .bind(user_id.as_str())
        .bind(data_type)
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?;
        content.map(raw_json).transpose()
    }

    async fn put_account_data(
        &self,
        user_id: &UserId,
        data_type: &str,
        content: &RawValue,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let pos = next_position(&mut tx).await?;
        sqlx::query(
            "INSERT INTO account_data (user_id, room_id, data_type, content, stream_pos) VALUES ($1, '', $2, $3, $4) \
             ON CONFLICT (user_id, room_id, data_type) DO UPDATE SET content = excluded.content, stream_pos = excluded.stream_pos",
        )
        .bind(user_id.as_str())
        .bind(data_type)
        .bind(content.get())
        .bind(ms(pos))
        .execute(&mut *tx)
        .await
        .map_err(backend_err)?;
        tx.commit().await.map_err(backend_err)
    }

    async fn create_filter(&self, user_id: &UserId, filter: &RawValue) -> StoreResult<String> {
        let row = sqlx::query(
            "INSERT INTO filters (user_id, filter_json) VALUES ($1, $2) RETURNING filter_id",
        )
        .bind(user_id.as_str())
        .bind(filter.get())
        .fetch_one(&self.write)
        .await
        .map_err(backend_err)?;
        let id: i64 = row.try_get("filter_id").map_err(backend_err)?;
        Ok(id.to_string())
    }

    async fn filter(
        &self,
        user_id: &UserId,
        filter_id: &str,
    ) -> StoreResult<Option<Box<RawValue>>> {
        let Ok(id) = filter_id.parse::<i64>() else {
            return Ok(None);
        };
        let json: Option<String> = sqlx::query_scalar(
            "SELECT filter_json FROM filters WHERE filter_id = $1 AND user_id = $2",
        )
        .bind(id)
        .bind(user_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?;
        json.map(raw_json).transpose()
    }
}
