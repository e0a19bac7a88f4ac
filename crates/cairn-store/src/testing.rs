//! Test helpers: throw-away PostgreSQL databases on the local server.
//!
//! Tests reach PostgreSQL at `CAIRN_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`, trust auth). Each [`TempDatabase`] is a database of
//! its own, created empty and dropped when the value is dropped, so tests never see each other.

use rand::RngExt;
use sqlx::any::AnyConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, Executor};
use std::str::FromStr;

/// Where the test PostgreSQL server is.
pub fn postgres_admin_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A PostgreSQL database that exists for the lifetime of this value.
pub struct TempDatabase {
    name: String,
    url: String,
}

impl TempDatabase {
    /// Creates a fresh, empty database. Panics (this is test code) if PostgreSQL is not running.
    pub async fn create() -> Self {
        sqlx::any::install_default_drivers();
        let name = format!("cairn_test_{:016x}", rand::rng().random::<u64>());
        let admin = postgres_admin_url();
        let mut conn = connect(&admin).await;
        conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let url = match admin.rfind('/') {
            Some(slash) => format!("{}/{name}", &admin[..slash]),
            None => panic!("CAIRN_TEST_POSTGRES_URL must name a database"),
        };
        Self { name, url }
    }

    /// The URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }
}

async fn connect(url: &str) -> sqlx::AnyConnection {
    let options = AnyConnectOptions::from_str(url).expect("valid PostgreSQL URL");
    options.connect().await.unwrap_or_else(|e| {
        panic!("PostgreSQL is not reachable at {url} ({e}); start it (see README, Testing)")
    })
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime; use a runtime of our own on another thread.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    let mut conn = connect(&postgres_admin_url()).await;
                    let _ = conn
                        .execute(AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                });
            }
        })
        .join();
    }
}
