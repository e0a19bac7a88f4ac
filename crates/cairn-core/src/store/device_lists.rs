//! Device lists across servers: the announcements this server owes other servers about its
//! users' devices, and the cache of other servers' users' device lists.
//!
//! Outbound: every change of a local user's device (new, new keys, new signatures, deleted) or
//! cross-signing keys is recorded, in the transaction that makes it, as an announcement owed to
//! each server then sharing a room with the user, at a new stream position (the `stream_id` of
//! the EDU). Announcements coalesce per (destination, user, device): a destination that was away
//! gets each device's latest state once, in stream order. What a destination acknowledged per
//! user becomes the `prev_id` of the next announcement.
//!
//! Inbound: a remote user's list is cached from `GET /user/devices` and kept current by
//! `m.device_list_update` EDUs; `stale` marks a list that must be fetched again.

use async_trait::async_trait;
use ruma::{OwnedServerName, OwnedUserId, ServerName, UserId};
use serde_json::value::RawValue;

use super::StoreResult;

/// The device ID under which announcements of a user's cross-signing keys are recorded (they go
/// out as `m.signing_key_update`). No device has an empty ID.
pub const CROSS_SIGNING_KEYS: &str = "";

/// An announcement owed to a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceUpdate {
    /// Whose device changed.
    pub user_id: OwnedUserId,
    /// Which device, or [`CROSS_SIGNING_KEYS`].
    pub device_id: String,
    /// The change's stream position: unique and increasing per user.
    pub stream_id: u64,
    /// The newest `stream_id` of this user that the destination acknowledged, if any.
    pub prev_sent: Option<u64>,
}

/// A remote user's cached device list, as a whole.
#[derive(Debug, Clone)]
pub struct RemoteDeviceList {
    /// The user.
    pub user_id: OwnedUserId,
    /// The stream_id the list is at.
    pub stream_id: u64,
    /// Whether it must be fetched again before it is trusted.
    pub stale: bool,
    /// Each device object as the user's server sent it (`device_id`, `keys`, ...).
    pub devices: Vec<Box<RawValue>>,
    /// The user's master key, as published.
    pub master_key: Option<Box<RawValue>>,
    /// The user's self-signing key, as published.
    pub self_signing_key: Option<Box<RawValue>>,
}

/// Device lists across servers.
#[async_trait]
pub trait DeviceListStore: Send + Sync {
    /// Announcements owed to `destination`, oldest first, at most `limit`.
    async fn pending_device_updates(
        &self,
        destination: &ServerName,
        limit: usize,
    ) -> StoreResult<Vec<DeviceUpdate>>;

    /// Records that `destination` acknowledged these announcements: each is removed unless a
    /// newer change replaced it meanwhile, and each user's newest acknowledged `stream_id` of a
    /// device (not of cross-signing keys) is remembered as the next `prev_id`.
    async fn device_updates_delivered(
        &self,
        destination: &ServerName,
        delivered: &[DeviceUpdate],
    ) -> StoreResult<()>;

    /// Servers other than `user_id`'s own with a member joined to a room that `user_id` is
    /// joined to, not counting `except_room`.
    async fn servers_sharing_rooms(
        &self,
        user_id: &UserId,
        except_room: &ruma::RoomId,
    ) -> StoreResult<Vec<OwnedServerName>>;

    /// Whether a user of `server` is joined to a room `user_id` is joined to.
    async fn shares_room_with_server(
        &self,
        user_id: &UserId,
        server: &ServerName,
    ) -> StoreResult<bool>;

    /// The cached list of a remote user, if any.
    async fn remote_device_list(&self, user_id: &UserId) -> StoreResult<Option<RemoteDeviceList>>;

    /// Applies one device's change to a remote user's cached list (creating the list if there
    /// is none): `content` replaces the device object, `None` deletes the device. The list moves
    /// to `stream_id` and is marked `stale` as given. Records a device-list change for local
    /// users at a new position, which is returned.
    async fn apply_remote_device_update(
        &self,
        user_id: &UserId,
        device_id: &str,
        content: Option<&RawValue>,
        stream_id: u64,
        stale: bool,
    ) -> StoreResult<u64>;

    /// Replaces a remote user's cached list with a fetched one (not stale); records a
    /// device-list change at a new position, which is returned. A list cached in order (not
    /// stale) at a later `stream_id`, from an update applied while the fetch was under way, is
    /// kept: nothing is written and `None` returned. A stale list always takes the fetched one.
    async fn replace_remote_device_list(&self, list: &RemoteDeviceList)
    -> StoreResult<Option<u64>>;

    /// Replaces a cached remote user's cross-signing keys; records a device-list change at a
    /// new position, which is returned. Does nothing (and returns `None`) for an uncached user.
    async fn set_remote_cross_signing_keys(
        &self,
        user_id: &UserId,
        master_key: Option<&RawValue>,
        self_signing_key: Option<&RawValue>,
    ) -> StoreResult<Option<u64>>;

    /// Marks a remote user's list as needing a fetch (creating an empty one if none is cached).
    async fn mark_remote_device_list_stale(&self, user_id: &UserId) -> StoreResult<()>;

    /// How many cached remote devices hold shared fallback keys (MSC4081).
    async fn devices_with_cached_fallback_keys(&self) -> StoreResult<u64>;

    /// Remote users whose lists are stale.
    async fn stale_remote_device_lists(&self) -> StoreResult<Vec<OwnedUserId>>;

    /// Marks the cached lists of `user_ids` to be fetched again once their server answers
    /// (their fallback keys answered a claim while it could not; MSC4081 decision 19). Users
    /// without a cached list are skipped.
    async fn mark_remote_device_lists_for_recheck(
        &self,
        user_ids: &[OwnedUserId],
    ) -> StoreResult<()>;

    /// Remote users whose lists are marked for a recheck.
    async fn remote_device_lists_to_recheck(&self) -> StoreResult<Vec<OwnedUserId>>;

    /// Clears a user's recheck mark (their list was fetched again).
    async fn remote_device_list_rechecked(&self, user_id: &UserId) -> StoreResult<()>;

    /// Records that a user's whole list was fetched at `at_ms`.
    async fn remote_device_list_fetched(&self, user_id: &UserId, at_ms: u64) -> StoreResult<()>;

    /// Up to `limit` remote users whose lists hold shared fallback keys and were last fetched
    /// whole before `before_ms` (never, for lists built from updates alone), oldest first.
    async fn remote_device_lists_to_refresh(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<OwnedUserId>>;

    /// Drops a remote user's cached list (no local user shares a room with them any more).
    async fn forget_remote_device_list(&self, user_id: &UserId) -> StoreResult<()>;
}
