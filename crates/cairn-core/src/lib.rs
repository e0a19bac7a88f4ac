//! The homeserver's rules, with no I/O.
//!
//! `cairn-core` decides; it never talks to a socket or a database itself. Time comes from a
//! [`Clock`], storage goes through the [`store`] traits, and the HTTP layer (`cairn-api`) only
//! parses requests, calls a [`Homeserver`] method and renders the result. Every rule here can
//! therefore be tested with a [`clock::FakeClock`] and the in-memory [`memory_store::MemoryStore`].
//!
//! Architecture invariant: this crate depends on no HTTP framework, no SQL driver and no network
//! API (`axum`, `sqlx`, `reqwest`, `tokio::net`). CPU-heavy work (password hashing) is moved off
//! the async executor with `tokio::task::spawn_blocking`; the in-process [`notify::LocalNotifier`]
//! uses tokio's channels and timer to end long-polls. Those are the only runtime services used.

pub mod accounts;
pub mod clock;
pub mod config;
pub mod e2ee;
pub mod error;
pub mod ids;
pub mod memory_store;
pub mod notify;
pub mod secrets;
pub mod store;
pub mod stream;
pub mod sync;
#[cfg(test)]
mod testing;
pub mod uia;
pub mod user_data;

use std::sync::Arc;

pub use clock::Clock;
pub use config::CoreConfig;
pub use error::{Error, ErrorKind, Result};
pub use notify::Notifier;
pub use store::Store;

/// The homeserver: configuration plus the outside world it needs, behind traits.
///
/// Cheap to clone; every request handler holds one.
#[derive(Clone)]
pub struct Homeserver {
    config: Arc<CoreConfig>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    notifier: Arc<dyn Notifier>,
}

impl Homeserver {
    /// Builds a homeserver over the given store, clock and notifier.
    pub fn new(
        config: CoreConfig,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        notifier: Arc<dyn Notifier>,
    ) -> Self {
        Self {
            config: Arc::new(config),
            store,
            clock,
            notifier,
        }
    }

    /// The notifier that wakes long-polling syncs.
    pub fn notifier(&self) -> &Arc<dyn Notifier> {
        &self.notifier
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
