//! The homeserver's rules, with no I/O.
//!
//! `cairn-core` decides; it never talks to a socket or a database itself. Time comes from a
//! [`Clock`], storage goes through the [`store`] traits, and the HTTP layer (`cairn-api`) only
//! parses requests, calls a [`Homeserver`] method and renders the result. Every rule here can
//! therefore be tested with a [`clock::FakeClock`] and the in-memory [`memory_store::MemoryStore`].
//!
//! Architecture invariant: this crate depends on no HTTP framework, no SQL driver and no network
//! API (`axum`, `sqlx`, `reqwest`, `tokio::net`). CPU-heavy work (password hashing) is moved off
//! the async executor with `tokio::task::spawn_blocking`, which is the only runtime service used.

pub mod accounts;
pub mod clock;
pub mod config;
pub mod error;
pub mod ids;
pub mod memory_store;
pub mod secrets;
pub mod store;
pub mod uia;
pub mod user_data;

use std::sync::Arc;

pub use clock::Clock;
pub use config::CoreConfig;
pub use error::{Error, ErrorKind, Result};
pub use store::Store;

/// The homeserver: configuration plus the outside world it needs, behind traits.
///
/// Cheap to clone; every request handler holds one.
#[derive(Clone)]
pub struct Homeserver {
    config: Arc<CoreConfig>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl Homeserver {
    /// Builds a homeserver over the given store and clock.
    pub fn new(config: CoreConfig, store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            config: Arc::new(config),
            store,
            clock,
        }
    }

    /// The configuration this homeserver runs with.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The store, for the few callers (the CLI, the key server) that read it directly.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Milliseconds since the Unix epoch, from the injected clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}
