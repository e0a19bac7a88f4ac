//! Storage for end-to-end encryption and sync: device and one-time keys, fallback keys, the
//! device-list change stream, to-device messages, and the stream position that orders them.
//!
//! Stream positions: every write that a `/sync` must see takes the next position of one global
//! counter inside its transaction. The counter row stays locked until commit, so positions
//! become visible in order: once position N is readable, everything at or below N is committed.

use std::collections::BTreeMap;

use async_trait::async_trait;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::value::RawValue;

use super::StoreResult;

/// A one-time or fallback key as uploaded: `<algorithm>:<key_id>` and the key JSON.
#[derive(Debug, Clone)]
pub struct UploadedKey {
    /// The algorithm, such as `signed_curve25519`.
    pub algorithm: String,
    /// The key ID within the algorithm.
    pub key_id: String,
    /// The key (a string or a signed key object), byte for byte.
    pub key: Box<RawValue>,
}

/// What a device holds of the one-time keys an upload names, read inside the upload's
/// transaction (see [`KeyWrite::new_one_time_keys`]).
#[derive(Debug, Clone, Default)]
pub struct OneTimeKeysHeld {
    /// Those of the named keys (by algorithm and key ID) that are stored.
    pub existing: Vec<UploadedKey>,
    /// Unclaimed one-time keys of the device, counted per algorithm (absent when zero).
    pub counts: BTreeMap<String, u64>,
}

/// A stored fallback key.
#[derive(Debug, Clone)]
pub struct StoredFallbackKey {
    /// The key.
    pub key: UploadedKey,
    /// Whether a claim has handed it out since it was uploaded.
    pub used: bool,
}

/// What a `/keys/upload` writes: device and fallback keys after the rules decided what changed,
/// one-time keys as uploaded (decided inside the write, see [`KeyWrite::new_one_time_keys`]).
#[derive(Debug, Clone)]
pub struct KeyWrite {
    /// The uploading user.
    pub user_id: OwnedUserId,
    /// The uploading device.
    pub device_id: OwnedDeviceId,
    /// New or changed device keys (a device-list change).
    pub device_keys: Option<Box<RawValue>>,
    /// One-time keys as uploaded; the store adds those that
    /// [`KeyWrite::new_one_time_keys`] finds new.
    pub one_time_keys: Vec<UploadedKey>,
    /// Fallback keys that replace the stored one of their algorithm (stored unused).
    pub fallback_keys: Vec<UploadedKey>,
    /// The device's MSC4081 opt-in, when the upload said it explicitly.
    pub eager_share_fallback_keys: Option<bool>,
    /// Other servers are owed an update of the device although its device keys did not change
    /// (its shared fallback keys did). Such an update is not a local device-list change.
    pub owes_update: bool,
}

/// Why an upload was refused; nothing of it was written.
#[derive(Debug, Clone)]
pub enum OneTimeKeyRefusal {
    /// The device holds a different key under one of the uploaded key IDs.
    Changed {
        /// The key held.
        old: Box<UploadedKey>,
        /// The key uploaded under its ID.
        new: Box<UploadedKey>,
    },
    /// The device would hold more one-time keys than allowed.
    TooMany,
}

/// One key claim: a device and the algorithm wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyClaim {
    /// The owner.
    pub user_id: OwnedUserId,
    /// The device.
    pub device_id: OwnedDeviceId,
    /// The algorithm.
    pub algorithm: String,
}

/// A device's published keys, for `/keys/query`.
#[derive(Debug, Clone)]
pub struct DeviceKeysRecord {
    /// The device.
    pub device_id: OwnedDeviceId,
    /// Its device keys, byte for byte.
    pub keys: Box<RawValue>,
    /// Its display name.
    pub display_name: Option<String>,
}

/// A to-device message waiting in a device's inbox.
#[derive(Debug, Clone)]
pub struct ToDeviceRecord {
    /// Its stream position (unique within the inbox).
    pub pos: u64,
    /// The sender.
    pub sender: OwnedUserId,
    /// The event type.
    pub event_type: String,
    /// The content, byte for byte.
    pub content: Box<RawValue>,
}

/// A `PUT /sendToDevice` request, after `*` was expanded.
#[derive(Debug, Clone)]
pub struct ToDeviceBatch {
    /// The sender.
    pub sender: OwnedUserId,
    /// The sending device (transaction IDs are scoped to it).
    pub sender_device: OwnedDeviceId,
    /// The client's transaction ID.
    pub txn_id: String,
    /// The event type.
    pub event_type: String,
    /// One message per recipient device.
    pub messages: Vec<(OwnedUserId, OwnedDeviceId, Box<RawValue>)>,
    /// `m.direct_to_device` EDUs for recipients on other servers, queued with the rest.
    pub outbound: Vec<super::Outbound>,
}

/// End-to-end encryption keys.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// The device's stored device keys.
    async fn device_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> StoreResult<Option<Box<RawValue>>>;
    /// The device's fallback keys, one per algorithm.
    async fn fallback_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> StoreResult<Vec<StoredFallbackKey>>;
    /// Writes an upload in one transaction; new device keys record a device-list change. Inside
    /// that transaction it reads what the device holds of the uploaded one-time keys and adds
    /// those [`KeyWrite::new_one_time_keys`] finds new; if that refuses them, nothing is
    /// written. Returns the device's one-time key counts after the write (absent when zero).
    async fn write_keys(
        &self,
        write: &KeyWrite,
    ) -> StoreResult<Result<BTreeMap<String, u64>, OneTimeKeyRefusal>>;
    /// Unclaimed one-time keys of the device, counted per algorithm (absent when zero).
    async fn one_time_key_counts(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> StoreResult<BTreeMap<String, u64>>;
    /// Claims one key per request, atomically: the oldest one-time key of the algorithm, which is
    /// deleted, else the fallback key, which is marked used and stays. No one-time key is ever
    /// handed out twice, however many claims run at once.
    async fn claim_keys(&self, claims: &[KeyClaim]) -> StoreResult<Vec<Option<UploadedKey>>>;
    /// Device keys of a user's devices (all devices if `device_ids` is empty).
    async fn query_device_keys(
        &self,
        user_id: &UserId,
        device_ids: &[OwnedDeviceId],
    ) -> StoreResult<Vec<DeviceKeysRecord>>;
    /// The device's MSC4081 opt-in, if it ever stated one.
    async fn eager_share_fallback_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> StoreResult<Option<bool>>;
}

/// To-device messages.
#[async_trait]
pub trait ToDeviceStore: Send + Sync {
    /// Queues the batch, unless its transaction ID was used by the sending device before.
    /// Returns `false` for such a repeat (nothing is written).
    async fn send_to_device(&self, batch: &ToDeviceBatch) -> StoreResult<bool>;
    /// Messages in the device's inbox after position `after`, oldest first, at most `limit`.
    async fn to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<ToDeviceRecord>>;
    /// Deletes the device's messages up to and including position `up_to` (acknowledged).
    async fn delete_to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        up_to: u64,
    ) -> StoreResult<()>;
}

/// Reads that assemble `/sync`.
#[async_trait]
pub trait SyncStore: Send + Sync {
    /// The newest stream position; everything at or below it is committed.
    async fn current_position(&self) -> StoreResult<u64>;
    /// Records that `user_id`'s device list changed (a user of another server, as its server
    /// announced), at a new stream position, which is returned.
    async fn mark_device_list_changed(&self, user_id: &UserId) -> StoreResult<u64>;
    /// Users whose device lists changed in `(after, up_to]` and whom `user_id` should hear about:
    /// itself and the users it shares a room with.
    async fn device_list_changes(
        &self,
        user_id: &UserId,
        after: u64,
        up_to: u64,
    ) -> StoreResult<Vec<OwnedUserId>>;
    /// Global account data written in `(after, up_to]`, as `(type, content)`.
    async fn account_data_changes(
        &self,
        user_id: &UserId,
        after: u64,
        up_to: u64,
    ) -> StoreResult<Vec<(String, Box<RawValue>)>>;
}
