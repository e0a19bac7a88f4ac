//! Embedded schema migrations, applied in order at start-up, each in its own transaction.
//!
//! On PostgreSQL an advisory lock makes concurrent starting processes migrate one at a time.

use cairn_core::store::StoreResult;
use sqlx::{AssertSqlSafe, Executor, Row};

use crate::{Backend, SqlStore, backend_err};

/// `(version, SQLite script, PostgreSQL script)`, in order. Never edit a released entry.
/// Scripts valid on both databases live in `migrations/common` and are named twice.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        include_str!("../migrations/sqlite/0001_accounts.sql"),
        include_str!("../migrations/postgres/0001_accounts.sql"),
    ),
    (
        2,
        include_str!("../migrations/sqlite/0002_e2ee.sql"),
        include_str!("../migrations/postgres/0002_e2ee.sql"),
    ),
    (
        3,
        include_str!("../migrations/common/0003_rooms.sql"),
        include_str!("../migrations/common/0003_rooms.sql"),
    ),
    (
        4,
        include_str!("../migrations/common/0004_cross_signing.sql"),
        include_str!("../migrations/common/0004_cross_signing.sql"),
    ),
    (
        5,
        include_str!("../migrations/sqlite/0005_one_time_key_counts.sql"),
        include_str!("../migrations/postgres/0005_one_time_key_counts.sql"),
    ),
    (
        6,
        include_str!("../migrations/common/0006_remote_server_keys.sql"),
        include_str!("../migrations/common/0006_remote_server_keys.sql"),
    ),
    (
        7,
        include_str!("../migrations/sqlite/0007_federation_queue.sql"),
        include_str!("../migrations/postgres/0007_federation_queue.sql"),
    ),
    (
        8,
        include_str!("../migrations/common/0008_outliers.sql"),
        include_str!("../migrations/common/0008_outliers.sql"),
    ),
    (
        9,
        include_str!("../migrations/common/0009_remote_invites.sql"),
        include_str!("../migrations/common/0009_remote_invites.sql"),
    ),
    (
        10,
        include_str!("../migrations/sqlite/0010_device_lists.sql"),
        include_str!("../migrations/postgres/0010_device_lists.sql"),
    ),
    (
        11,
        include_str!("../migrations/common/0011_state_groups.sql"),
        include_str!("../migrations/common/0011_state_groups.sql"),
    ),
    (
        12,
        include_str!("../migrations/common/0012_device_list_recheck.sql"),
        include_str!("../migrations/common/0012_device_list_recheck.sql"),
    ),
];

/// Arbitrary constant naming Cairn's migration lock on PostgreSQL.
const PG_MIGRATION_LOCK: i64 = 0x0CA1_4E00;

pub(crate) async fn run(store: &SqlStore) -> StoreResult<()> {
    let mut conn = store.write.acquire().await.map_err(backend_err)?;
    if store.backend == Backend::Postgres {
        conn.execute(AssertSqlSafe(format!(
            "SELECT pg_advisory_lock({PG_MIGRATION_LOCK})"
        )))
        .await
        .map_err(backend_err)?;
    }
    let result = async {
        conn.execute(
            "CREATE TABLE IF NOT EXISTS cairn_schema (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
        )
        .await
        .map_err(backend_err)?;
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM cairn_schema")
            .fetch_one(&mut *conn)
            .await
            .map_err(backend_err)?;
        let current: i64 = row.try_get("v").map_err(backend_err)?;
        for &(version, sqlite, postgres) in MIGRATIONS.iter().filter(|m| m.0 > current) {
            let script = match store.backend {
                Backend::Sqlite => sqlite,
                Backend::Postgres => postgres,
            };
            let mut tx = sqlx::Connection::begin(&mut *conn).await.map_err(backend_err)?;
            tx.execute(sqlx::raw_sql(AssertSqlSafe(script))).await.map_err(backend_err)?;
            sqlx::query("INSERT INTO cairn_schema (version, applied_ms) VALUES ($1, $2)")
                .bind(version)
                .bind(crate::ms(cairn_core::clock::Clock::now_ms(&cairn_core::clock::SystemClock)))
                .execute(&mut *tx)
                .await
                .map_err(backend_err)?;
            tx.commit().await.map_err(backend_err)?;
            tracing::info!(version, "applied database migration");
        }
        Ok(())
    }
    .await;
    if store.backend == Backend::Postgres {
        conn.execute(AssertSqlSafe(format!(
            "SELECT pg_advisory_unlock({PG_MIGRATION_LOCK})"
        )))
        .await
        .map_err(backend_err)?;
    }
    result
}
