//! Cairn's [`Store`](cairn_core::Store) on SQLite (embedded, the default) and PostgreSQL.
//!
//! One implementation serves both databases through `sqlx::Any`: the SQL is portable (`$N`
//! placeholders, `ON CONFLICT`, `RETURNING`), and only the schema files and transaction start
//! differ per backend. Each trait method is one transaction, committed before it returns.
//!
//! SQLite runs in WAL mode with `synchronous = FULL`, so an acknowledged write survives a crash
//! of the process and of the machine. Writes go through a single connection (SQLite allows one
//! writer at a time; queueing in the pool is cheaper than lock retries) and start with
//! `BEGIN IMMEDIATE`, so another process writing the same file (`cairn user add`) waits on the
//! busy timeout instead of failing. Key claims and uploads are group-committed on a connection
//! of their own, which holds the write connection while it writes (see `group_commit`). Reads
//! use a pool of their own. On PostgreSQL one pool
//! serves both, and several Cairn processes may share the database.

mod accounts;
mod cross_signing;
mod device_lists;
mod e2ee;
mod federation;
mod group_commit;
mod key_sql;
mod migrate;
mod params;
mod rooms;
mod server_keys;
mod token_cache;
mod user_data;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use cairn_core::store::{StoreError, StoreResult};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

/// How long SQLite waits for another process's write lock before giving up.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite://PATH` or `postgres://...`.
    pub url: String,
    /// Size of the (read) connection pool.
    pub max_connections: u32,
}

/// The SQL store.
#[derive(Clone)]
pub struct SqlStore {
    backend: Backend,
    read: AnyPool,
    write: AnyPool,
    /// Group commit for key claims and uploads (SQLite only).
    writes: Option<group_commit::WriteBatcher>,
    /// Access tokens resolved before (SQLite only: one process owns the database).
    tokens: Option<std::sync::Arc<token_cache::TokenCache>>,
}

impl SqlStore {
    /// Opens (creating if needed) the database at `options.url` and applies pending migrations.
    pub async fn open(options: &StoreOptions) -> StoreResult<Self> {
        sqlx::any::install_default_drivers();
        let backend = backend_of(&options.url)?;
        let url = match backend {
            Backend::Sqlite if !options.url.contains("mode=") => {
                let sep = if options.url.contains('?') { '&' } else { '?' };
                format!("{}{sep}mode=rwc", options.url)
            }
            _ => options.url.clone(),
        };
        let connect = AnyConnectOptions::from_str(&url).map_err(backend_err)?;
        let store = match backend {
            Backend::Sqlite => {
                let pool = |size: u32| {
                    AnyPoolOptions::new()
                        .max_connections(size)
                        .acquire_timeout(Duration::from_secs(30))
                        // An embedded database never drops a connection; a ping per acquire
                        // would be one more hop to the connection's thread on every statement.
                        .test_before_acquire(false)
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                                    "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; \
                                     PRAGMA synchronous = FULL;"
                                ))))
                                .await?;
                                Ok(())
                            })
                        })
                        .connect_with(connect.clone())
                };
                let write = pool(1).await.map_err(backend_err)?;
                // WAL is a property of the file; set it once, before readers open it.
                write
                    .execute("PRAGMA journal_mode = WAL")
                    .await
                    .map_err(backend_err)?;
                let read = pool(options.max_connections.max(1))
                    .await
                    .map_err(backend_err)?;
                let file: String =
                    sqlx::query("SELECT file FROM pragma_database_list WHERE name = 'main'")
                        .fetch_one(&write)
                        .await
                        .and_then(|row| row.try_get("file"))
                        .map_err(backend_err)?;
                // An in-memory database (empty file name) cannot be opened a second time.
                let writes = match file.is_empty() {
                    true => None,
                    false => Some(group_commit::WriteBatcher::start(
                        write.clone(),
                        Path::new(&file),
                    )?),
                };
                Self {
                    backend,
                    read,
                    write,
                    writes,
                    tokens: Some(Default::default()),
                }
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(options.max_connections.max(2))
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(connect)
                    .await
                    .map_err(backend_err)?;
                Self {
                    backend,
                    read: pool.clone(),
                    write: pool,
                    writes: None,
                    tokens: None,
                }
            }
        };
        migrate::run(&store).await?;
        Ok(store)
    }

    /// The database this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection (on shutdown), after in-flight work finished.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE` on SQLite, see the crate docs).
    async fn begin(&self) -> StoreResult<Transaction<'static, Any>> {
        match self.backend {
            Backend::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.write.begin().await,
        }
        .map_err(backend_err)
    }
}

/// Takes the next stream position inside `tx`. The counter row stays locked until `tx` ends,
/// so positions commit in order (see `cairn_core::store::e2ee`).
async fn next_position(tx: &mut sqlx::AnyConnection) -> StoreResult<u64> {
    let pos: i64 =
        sqlx::query_scalar("UPDATE stream_position SET pos = pos + 1 WHERE id = 1 RETURNING pos")
            .fetch_one(&mut *tx)
            .await
            .map_err(backend_err)?;
    Ok(from_ms(pos))
}

/// Records, at a new stream position, that `user_id`'s device list changed and, for each of
/// `announce` (device IDs, or `CROSS_SIGNING_KEYS`), an announcement at a position of its own
/// owed to every other server sharing a room with the user (see
/// `cairn_core::store::device_lists`). Returns the first position.
async fn record_device_list_change(
    tx: &mut sqlx::AnyConnection,
    user_id: &str,
    announce: &[&str],
) -> StoreResult<u64> {
    let pos = next_position(tx).await?;
    sqlx::query("INSERT INTO device_list_changes (stream_pos, user_id) VALUES ($1, $2)")
        .bind(ms(pos))
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(backend_err)?;
    for (i, device_id) in announce.iter().enumerate() {
        let stream_id = if i == 0 {
            pos
        } else {
            next_position(tx).await?
        };
        device_lists::owe_announcement(tx, None, user_id, device_id, stream_id).await?;
    }
    Ok(pos)
}

/// Which backend a database URL names.
pub fn backend_of(url: &str) -> StoreResult<Backend> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        Err(StoreError::Backend(format!(
            "unsupported database URL (expected sqlite:// or postgres://): {url}"
        )))
    }
}

fn backend_err(err: sqlx::Error) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// Milliseconds as stored (BIGINT).
fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Milliseconds as read back.
fn from_ms(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(feature = "testing")]
pub mod testing;
