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
pub mod federation;
pub mod ids;
pub mod inbound;
pub mod memory_store;
pub mod notify;
pub mod rooms;
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
pub use rooms::pdu::EventSigner;
pub use store::Store;

/// The outside world the rules use, behind traits.
#[derive(Clone)]
pub struct Services {
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Wakes waiting syncs.
    pub notifier: Arc<dyn Notifier>,
    /// Signs the server's events.
    pub signer: Arc<dyn EventSigner>,
    /// Talks to other servers.
    pub federation: Arc<dyn federation::Federation>,
}

/// The homeserver: configuration plus the [`Services`] it needs.
///
/// Cheap to clone; every request handler holds one.
#[derive(Clone)]
pub struct Homeserver {
    config: Arc<CoreConfig>,
    services: Services,
}

impl Homeserver {
    /// Builds a homeserver.
    pub fn new(config: CoreConfig, services: Services) -> Self {
        Self {
            config: Arc::new(config),
            services,
        }
    }

    /// The notifier that wakes long-polling syncs.
    pub fn notifier(&self) -> &Arc<dyn Notifier> {
        &self.services.notifier
    }

    /// The transport to other servers.
    pub fn federation(&self) -> &Arc<dyn federation::Federation> {
        &self.services.federation
    }

    /// The server's event signer.
    pub fn signer(&self) -> &Arc<dyn EventSigner> {
        &self.services.signer
    }

    /// The configuration this homeserver runs with.
    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// The store, for the few callers (the CLI, the key server) that read it directly.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.services.store
    }

    /// Milliseconds since the Unix epoch, from the injected clock.
    pub fn now_ms(&self) -> u64 {
        self.services.clock.now_ms()
    }
}
