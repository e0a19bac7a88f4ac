//! What the rules need from storage, as domain operations (never tables).
//!
//! Each method is one transaction: it either happens completely or not at all, and once it has
//! returned `Ok` the change is durable. `cairn-store` implements these traits for SQLite and
//! PostgreSQL; [`crate::memory_store::MemoryStore`] implements them for unit tests.

use async_trait::async_trait;
use ruma::{OwnedDeviceId, OwnedUserId, ServerName};
use serde_json::value::RawValue;

/// Result of a store operation.
pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A row that must be unique already exists (for example, a taken user ID).
    #[error("unique constraint violated: {0}")]
    Conflict(String),
    /// The database failed (I/O, connection, corruption); nothing was written.
    #[error("database error: {0}")]
    Backend(String),
}

/// A local account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The full user ID.
    pub user_id: OwnedUserId,
    /// The argon2 PHC string, or `None` for an account that cannot log in with a password.
    pub password_hash: Option<String>,
    /// When the account was created.
    pub created_ms: u64,
}

/// A new account to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// The full user ID.
    pub user_id: OwnedUserId,
    /// The argon2 PHC string, if the account has a password.
    pub password_hash: Option<String>,
    /// The initial display name (the localpart, as Synapse does).
    pub displayname: Option<String>,
    /// Creation time.
    pub created_ms: u64,
}

/// A device and the access token that a login issues for it.
#[derive(Debug, Clone)]
pub struct NewDevice {
    /// The owner.
    pub user_id: OwnedUserId,
    /// The device ID (chosen by the client or generated).
    pub device_id: OwnedDeviceId,
    /// A display name for a device that does not exist yet; an existing device keeps its own.
    pub display_name: Option<String>,
    /// SHA-256 of the access token, hex-encoded; the token itself is never stored.
    pub token_hash: String,
    /// Creation time of the token (and of the device if it is new).
    pub created_ms: u64,
}

/// A device as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device ID.
    pub device_id: OwnedDeviceId,
    /// Its display name.
    pub display_name: Option<String>,
    /// When it last made an authenticated request (coarse).
    pub last_seen_ms: Option<u64>,
    /// The address it was last seen from.
    pub last_seen_ip: Option<String>,
}

/// Who an access token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenOwner {
    /// The user.
    pub user_id: OwnedUserId,
    /// The device that the token was issued to.
    pub device_id: OwnedDeviceId,
    /// When the device last made a request, to throttle updates of that value.
    pub last_seen_ms: Option<u64>,
}

/// A user-interactive authentication session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiaSessionRecord {
    /// The opaque session ID given to the client.
    pub session_id: String,
    /// The operation it authorises (for example `register` or `delete_devices`).
    pub operation: String,
    /// The user performing it, if authenticated.
    pub user_id: Option<OwnedUserId>,
    /// The stages completed so far.
    pub completed: Vec<String>,
    /// Creation time; sessions expire.
    pub created_ms: u64,
}

/// The server's Ed25519 signing key as stored (one per server name, shared by all processes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// The key version, `a_XXXX` (the key ID is `ed25519:<version>`).
    pub version: String,
    /// The PKCS#8 document of the key pair.
    pub pkcs8: Vec<u8>,
    /// Creation time.
    pub created_ms: u64,
}

/// A verify key another server published, as cached after its key document was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteKey {
    /// The key ID, `ed25519:<version>`.
    pub key_id: String,
    /// The public key, unpadded base64.
    pub key: String,
    /// Until when requests and events signed with it are accepted without fetching again.
    pub valid_until_ms: u64,
    /// For an old key (`old_verify_keys`): when it stopped being used. Such a key verifies only
    /// events signed before then, never requests.
    pub expired_ms: Option<u64>,
}

/// A user's profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// Display name.
    pub displayname: Option<String>,
    /// Avatar `mxc://` URI.
    pub avatar_url: Option<String>,
}

/// Accounts and their credentials.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates a user and, if given, its first device and token, in one transaction.
    /// Fails with [`StoreError::Conflict`] if the user ID is taken.
    async fn create_user(&self, user: &NewUser, device: Option<&NewDevice>) -> StoreResult<()>;
    /// The account with this ID, if any.
    async fn user(&self, user_id: &ruma::UserId) -> StoreResult<Option<UserRecord>>;
    /// Replaces the password hash.
    async fn set_password_hash(&self, user_id: &ruma::UserId, hash: &str) -> StoreResult<()>;
}

/// Devices and access tokens.
#[async_trait]
pub trait DeviceStore: Send + Sync {
    /// Creates the device if it does not exist and adds an access token for it. A new device is
    /// a device-list change of its user.
    async fn add_device_token(&self, device: &NewDevice) -> StoreResult<()>;
    /// The owner of the token with this hash, if the token is valid.
    async fn token_owner(&self, token_hash: &str) -> StoreResult<Option<TokenOwner>>;
    /// Records that a device made a request.
    async fn touch_device(
        &self,
        user_id: &ruma::UserId,
        device_id: &ruma::DeviceId,
        now_ms: u64,
        ip: Option<&str>,
    ) -> StoreResult<()>;
    /// All devices of a user, ordered by device ID.
    async fn devices(&self, user_id: &ruma::UserId) -> StoreResult<Vec<DeviceRecord>>;
    /// One device.
    async fn device(
        &self,
        user_id: &ruma::UserId,
        device_id: &ruma::DeviceId,
    ) -> StoreResult<Option<DeviceRecord>>;
    /// Renames a device (a device-list change); `false` if it does not exist.
    async fn set_device_display_name(
        &self,
        user_id: &ruma::UserId,
        device_id: &ruma::DeviceId,
        display_name: Option<&str>,
    ) -> StoreResult<bool>;
    /// Deletes the devices with every access token, key and pending to-device message they
    /// have, recording a device-list change. Unknown IDs are ignored.
    async fn delete_devices(
        &self,
        user_id: &ruma::UserId,
        device_ids: &[OwnedDeviceId],
    ) -> StoreResult<()>;
    /// Deletes every device of the user, as [`DeviceStore::delete_devices`] does.
    async fn delete_all_devices(&self, user_id: &ruma::UserId) -> StoreResult<()>;
}

/// User-interactive authentication sessions.
#[async_trait]
pub trait UiaStore: Send + Sync {
    /// Stores a new session, deleting sessions created before `expire_before_ms`.
    async fn create_uia_session(
        &self,
        session: &UiaSessionRecord,
        expire_before_ms: u64,
    ) -> StoreResult<()>;
    /// Loads a session.
    async fn uia_session(&self, session_id: &str) -> StoreResult<Option<UiaSessionRecord>>;
    /// Deletes a session (once its operation has run).
    async fn delete_uia_session(&self, session_id: &str) -> StoreResult<()>;
}

/// Per-user data: profile, account data, filters.
#[async_trait]
pub trait UserDataStore: Send + Sync {
    /// The profile of a local user, `None` if there is no such user.
    async fn profile(&self, user_id: &ruma::UserId) -> StoreResult<Option<Profile>>;
    /// Sets the display name; `false` if there is no such user.
    async fn set_displayname(
        &self,
        user_id: &ruma::UserId,
        displayname: Option<&str>,
    ) -> StoreResult<bool>;
    /// Sets the avatar URL; `false` if there is no such user.
    async fn set_avatar_url(&self, user_id: &ruma::UserId, url: Option<&str>) -> StoreResult<bool>;
    /// Global account data of `data_type`, as stored JSON.
    async fn account_data(
        &self,
        user_id: &ruma::UserId,
        data_type: &str,
    ) -> StoreResult<Option<Box<RawValue>>>;
    /// Replaces global account data of `data_type` (a new stream position, for `/sync`).
    async fn put_account_data(
        &self,
        user_id: &ruma::UserId,
        data_type: &str,
        content: &RawValue,
    ) -> StoreResult<()>;
    /// Stores a filter and returns its new ID.
    async fn create_filter(&self, user_id: &ruma::UserId, filter: &RawValue)
    -> StoreResult<String>;
    /// A stored filter.
    async fn filter(
        &self,
        user_id: &ruma::UserId,
        filter_id: &str,
    ) -> StoreResult<Option<Box<RawValue>>>;
}

/// The server's own keys.
#[async_trait]
pub trait ServerKeyStore: Send + Sync {
    /// Returns the stored signing key, storing `candidate` first if there is none. Several
    /// processes racing here all end up with the same key.
    async fn signing_key_or_insert(
        &self,
        candidate: &SigningKeyRecord,
    ) -> StoreResult<SigningKeyRecord>;

    /// Caches verify keys of `server`, replacing what is stored under the same key IDs.
    async fn store_remote_keys(&self, server: &ServerName, keys: &[RemoteKey]) -> StoreResult<()>;

    /// The cached verify key `key_id` of `server`, whatever its validity.
    async fn remote_key(&self, server: &ServerName, key_id: &str)
    -> StoreResult<Option<RemoteKey>>;
}

/// Everything the homeserver stores.
pub trait Store:
    AccountStore
    + DeviceStore
    + UiaStore
    + UserDataStore
    + ServerKeyStore
    + KeyStore
    + ToDeviceStore
    + SyncStore
    + RoomStore
    + CrossSigningStore
    + FederationStore
    + DeviceListStore
{
}

impl<T> Store for T where
    T: AccountStore
        + DeviceStore
        + UiaStore
        + UserDataStore
        + ServerKeyStore
        + KeyStore
        + ToDeviceStore
        + SyncStore
        + RoomStore
        + CrossSigningStore
        + FederationStore
        + DeviceListStore
{
}

mod cross_signing;
mod device_lists;
mod e2ee;
mod federation;
mod rooms;
pub use cross_signing::*;
pub use device_lists::*;
pub use e2ee::*;
pub use federation::*;
pub use rooms::*;
