//! Storage for cross-signing keys and the signatures users upload for keys.

use async_trait::async_trait;
use ruma::{OwnedUserId, UserId};
use serde_json::value::RawValue;

use super::StoreResult;

/// Which cross-signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyUsage {
    /// The master key.
    Master,
    /// Signs the user's devices.
    SelfSigning,
    /// Signs other users' master keys.
    UserSigning,
}

impl KeyUsage {
    /// The `usage` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Master => "master",
            Self::SelfSigning => "self_signing",
            Self::UserSigning => "user_signing",
        }
    }

    /// All three, in upload order.
    pub const ALL: [KeyUsage; 3] = [Self::Master, Self::SelfSigning, Self::UserSigning];
}

/// A signature of one key by another, as uploaded with `/keys/signatures/upload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySignature {
    /// Owner of the signed key.
    pub target_user: OwnedUserId,
    /// The signed key: a device ID or a cross-signing public key.
    pub target_key: String,
    /// Who signed.
    pub signer_user: OwnedUserId,
    /// The signing key's ID, `ed25519:<device or public key>`.
    pub signer_key_id: String,
    /// The signature.
    pub signature: String,
}

/// Cross-signing storage.
#[async_trait]
pub trait CrossSigningStore: Send + Sync {
    /// The user's stored cross-signing keys.
    async fn cross_signing_keys(
        &self,
        user_id: &UserId,
    ) -> StoreResult<Vec<(KeyUsage, Box<RawValue>)>>;
    /// Replaces the given keys (one transaction), recording a device-list change.
    async fn set_cross_signing_keys(
        &self,
        user_id: &UserId,
        keys: &[(KeyUsage, Box<RawValue>)],
    ) -> StoreResult<()>;
    /// Stores signatures (replacing any by the same signer key), recording a device-list
    /// change for each target user.
    async fn add_key_signatures(&self, signatures: &[KeySignature]) -> StoreResult<()>;
    /// Signatures on the user's keys.
    async fn key_signatures(&self, target_user: &UserId) -> StoreResult<Vec<KeySignature>>;
}
