//! End-to-end encryption support: key publication and claims ([`keys`]) and to-device
//! messaging ([`to_device`]). The server never sees plaintext; it stores and hands out the
//! JSON that clients upload, byte for byte, because clients verify signatures over it.

pub mod announce;
pub mod cross_signing;
pub mod device_lists;
pub mod keys;
pub mod msc4081;
pub mod remote;
pub mod remote_lists;
pub mod served;
pub mod to_device;
pub mod upload_rules;

/// The one-time-key algorithm that clients use today; always reported, even at zero, because
/// clients read a missing count as "unknown" and some then never upload keys.
pub const SIGNED_CURVE25519: &str = "signed_curve25519";
