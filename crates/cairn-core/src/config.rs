//! The part of the configuration that the rules read.

use ruma::OwnedServerName;

/// Settings that change what the homeserver decides (not where it listens or stores).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The server name in user IDs (`@alice:<server_name>`).
    pub server_name: OwnedServerName,
    /// Whether anyone may register an account through the client API.
    pub registration_open: bool,
}

impl CoreConfig {
    /// A configuration for `server_name` with registration closed.
    pub fn new(server_name: OwnedServerName) -> Self {
        Self {
            server_name,
            registration_open: false,
        }
    }
}
