//! Cairn's server identity and federation transport.
//!
//! Today: the server's Ed25519 signing key ([`identity`]) with the signed key document served at
//! `/_matrix/key/v2/server`, X-Matrix request signing and verification ([`xmatrix`]), and the
//! self-signed TLS certificate for the federation listener ([`tls`]). Server discovery and the
//! durable outbound sender join this crate with federation proper.

pub mod client;
pub mod discovery;
pub mod identity;
pub mod sender;
pub mod server_keys;
pub mod tls;
pub mod transport;
pub mod xmatrix;

pub use client::{ClientSettings, FederationClient};
pub use identity::ServerIdentity;
pub use server_keys::KeyRing;
pub use transport::Transport;
pub use xmatrix::{XMatrix, XMatrixError};
