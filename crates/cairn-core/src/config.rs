//! The homeserver's settings that the rules read.

use ruma::OwnedServerName;

use crate::federation::BackoffPolicy;

/// Settings for the rules.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The server name in user IDs (`@alice:<server_name>`).
    pub server_name: OwnedServerName,
    /// Whether anyone may register an account through the client API.
    pub registration_open: bool,
    /// How long a key claim waits for another server at most, whatever the client's `timeout`
    /// (MSC4081 decision 15: below clients' usual 10 s, so a cached answer still arrives).
    pub claim_timeout_ms: u64,
    /// The backoff schedule for other servers that fail.
    pub backoff: BackoffPolicy,
    /// Eager fallback-key sharing (MSC4081).
    pub msc4081: Msc4081Config,
}

/// MSC4081 settings (see `docs/msc4081.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msc4081Config {
    /// Share every device's fallback key, whether or not its client opted in.
    pub share_for_all_devices: bool,
    /// A cached fallback key that its owner's server last sent longer ago than this is not
    /// handed out.
    pub max_cached_key_age_ms: u64,
    /// Emit the bare field name `fallback_keys` instead of the unstable
    /// `org.matrix.msc4081.fallback_keys` (once the MSC is merged).
    pub stable_names: bool,
}

impl Default for Msc4081Config {
    fn default() -> Self {
        Self {
            share_for_all_devices: false,
            max_cached_key_age_ms: 14 * 24 * 60 * 60 * 1000,
            stable_names: false,
        }
    }
}

impl CoreConfig {
    /// A configuration for `server_name` with registration closed and default settings.
    pub fn new(server_name: OwnedServerName) -> Self {
        Self {
            server_name,
            registration_open: false,
            claim_timeout_ms: 5_000,
            backoff: BackoffPolicy::default(),
            msc4081: Msc4081Config::default(),
        }
    }
}
