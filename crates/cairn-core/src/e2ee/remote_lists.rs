//! Other servers' users' device lists, cached while a local user shares a room with them.
//!
//! A list is fetched whole with `GET /user/devices/{userId}` and then kept current by the
//! `m.device_list_update` EDUs its server sends, applied in `stream_id` order. An EDU whose
//! `prev_id` names a change this server never saw (a gap), or names none, makes the list stale:
//! the EDU is still applied, so the newest state of that device is kept, and the whole list is
//! fetched again at once, then every [`RESYNC_INTERVAL`] while the fetch fails (skipping servers
//! in backoff). Queries for a user whose list is cached and not stale are answered from the
//! cache; local users sharing a room see every change in `device_lists.changed`.

use std::time::Duration;

use ruma::{OwnedUserId, ServerName, UserId};
use serde::Deserialize;
use serde_json::value::{RawValue, to_raw_value};
use serde_json::{Map, Value};

use super::msc4081::cache_fallback_keys;
use crate::Homeserver;
use crate::error::{Error, ErrorKind, Result};
use crate::federation::RemoteError;
use crate::store::RemoteDeviceList;

/// How often stale lists are fetched again.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Lists holding shared fallback keys are fetched whole again when older than this, so that a
/// key its device still holds (an offline device does not rotate) stays within the age limit.
const REFRESH_AFTER_MS: u64 = 24 * 60 * 60 * 1000;
/// Most lists refreshed in one pass (the rest wait for the next).
const REFRESH_PER_PASS: usize = 100;
/// A fetched list with more devices than this is refused (Synapse's guard against abuse).
const MAX_REMOTE_DEVICES: usize = 1000;

/// The fields of `m.device_list_update` that order it; the rest is the device object.
#[derive(Deserialize)]
struct UpdateHead {
    user_id: OwnedUserId,
    device_id: String,
    stream_id: u64,
    #[serde(default)]
    prev_id: Vec<u64>,
    #[serde(default)]
    deleted: bool,
}

/// `m.signing_key_update`.
#[derive(Deserialize)]
struct SigningKeyUpdate {
    user_id: OwnedUserId,
    #[serde(default)]
    master_key: Option<Box<RawValue>>,
    #[serde(default)]
    self_signing_key: Option<Box<RawValue>>,
}

/// Whether `keys` is an object that names `user_id` and, when given, `device_id`.
pub(crate) fn names(keys: &Value, user_id: &str, device_id: Option<&str>) -> bool {
    keys.get("user_id").and_then(Value::as_str) == Some(user_id)
        && device_id.is_none_or(|d| keys.get("device_id").and_then(Value::as_str) == Some(d))
}

/// Whether `keys` names a user or device other than the one it is published for. Keys that
/// name nobody are kept as sent (the receiving clients check them); keys naming someone else
/// are a server lying about its users.
fn names_another(keys: &Value, user_id: &str, device_id: &str) -> bool {
    let differs =
        |field: &str, want: &str| keys.get(field).is_some_and(|v| v.as_str() != Some(want));
    differs("user_id", user_id) || differs("device_id", device_id)
}

fn bad(message: impl Into<String>) -> Error {
    Error::bad_json(message)
}

impl Homeserver {
    /// Whether some local user shares a room with `user_id` (the condition for caching).
    pub(crate) async fn tracked_locally(&self, user_id: &UserId) -> Result<bool> {
        Ok(self
            .store()
            .shares_room_with_server(user_id, &self.config().server_name)
            .await?)
    }

    /// Applies an `m.device_list_update` from `origin` (already authenticated).
    pub(crate) async fn receive_device_list_update(
        &self,
        origin: &ServerName,
        content: &RawValue,
    ) -> Result<()> {
        let mut device: Map<String, Value> =
            serde_json::from_str(content.get()).map_err(|e| bad(e.to_string()))?;
        let head: UpdateHead = serde_json::from_value(Value::Object(device.clone()))
            .map_err(|e| bad(format!("Bad m.device_list_update: {e}")))?;
        let user = &head.user_id;
        if user.server_name() != origin {
            tracing::warn!(%origin, %user, "device-list update for another server's user; ignored");
            return Ok(());
        }
        if !self.tracked_locally(user).await? {
            self.store().forget_remote_device_list(user).await?;
            return Ok(());
        }
        if let Some(keys) = device.get("keys")
            && names_another(keys, user.as_str(), &head.device_id)
        {
            return Err(bad("The device keys name another user or device"));
        }
        for field in ["user_id", "stream_id", "prev_id", "deleted"] {
            device.remove(field);
        }
        let cached = self.store().remote_device_list(user).await?;
        let previous = cached
            .as_ref()
            .and_then(|list| cached_device(list, &head.device_id));
        let refused = cache_fallback_keys(
            &mut device,
            user,
            &head.device_id,
            previous.as_ref(),
            self.now_ms(),
        );
        if !refused.is_empty() {
            super::msc4081::record_refusals(&refused);
            tracing::warn!(%origin, %user, device = %head.device_id, ?refused, "fallback keys not cached");
        }
        let (apply, in_order) = match &cached {
            None => (true, false),
            Some(list) => (
                head.stream_id > list.stream_id,
                !list.stale
                    && !head.prev_id.is_empty()
                    && head.prev_id.iter().all(|p| *p <= list.stream_id),
            ),
        };
        if apply {
            let content = (!head.deleted)
                .then(|| to_raw_value(&device))
                .transpose()
                .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
            self.store()
                .apply_remote_device_update(
                    user,
                    &head.device_id,
                    content.as_deref(),
                    head.stream_id,
                    !in_order,
                )
                .await?;
            self.notify_device_list_change(user).await?;
        }
        if !in_order {
            self.resync_soon(user.clone());
        }
        Ok(())
    }

    /// Applies an `m.signing_key_update` from `origin` (already authenticated).
    pub(crate) async fn receive_signing_key_update(
        &self,
        origin: &ServerName,
        content: &RawValue,
    ) -> Result<()> {
        let update: SigningKeyUpdate =
            serde_json::from_str(content.get()).map_err(|e| bad(e.to_string()))?;
        let user = &update.user_id;
        if user.server_name() != origin {
            tracing::warn!(%origin, %user, "cross-signing update for another server's user; ignored");
            return Ok(());
        }
        if !self.tracked_locally(user).await? {
            return Ok(());
        }
        for key in [&update.master_key, &update.self_signing_key]
            .into_iter()
            .flatten()
        {
            let key: Value = serde_json::from_str(key.get()).map_err(|e| bad(e.to_string()))?;
            if !names(&key, user.as_str(), None) {
                return Err(bad("The cross-signing key names another user"));
            }
        }
        let stored = self
            .store()
            .set_remote_cross_signing_keys(
                user,
                update.master_key.as_deref(),
                update.self_signing_key.as_deref(),
            )
            .await?;
        if stored.is_none() {
            // Not cached: local users still learn that they should query again.
            self.store().mark_device_list_changed(user).await?;
        }
        self.notify_device_list_change(user).await
    }

    /// Fetches, one after another in the background, the lists of those of `users` (remote
    /// users who just started sharing a room with a local user) that are not cached. Their
    /// servers' announcements may have arrived before this server knew it shared the room, and
    /// were then dropped.
    pub(crate) fn fetch_device_lists_soon(&self, users: Vec<OwnedUserId>) {
        let users: Vec<OwnedUserId> = users.into_iter().filter(|u| !self.is_local(u)).collect();
        if users.is_empty() {
            return;
        }
        let hs = self.clone();
        tokio::spawn(async move {
            for user_id in users {
                let cached = hs.store().remote_device_list(&user_id).await;
                if matches!(cached, Ok(Some(ref list)) if !list.stale) {
                    continue;
                }
                log_failed_fetch(&user_id, hs.resync_device_list(&user_id).await);
            }
        });
    }

    /// Fetches the lists of `users` (with what was asked of each) at once, waiting at most
    /// `timeout`; the outcome per user, in order. A fetch still running at the deadline goes on
    /// in the background and is cached when it ends.
    pub(crate) async fn fetch_device_lists<T>(
        &self,
        users: &[(OwnedUserId, T)],
        timeout: Duration,
    ) -> Vec<std::result::Result<RemoteDeviceList, RemoteError>> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (user_id, _)) in users.iter().enumerate() {
            let (hs, user_id) = (self.clone(), user_id.clone());
            tasks.spawn(async move {
                let outcome = hs.resync_device_list(&user_id).await;
                (
                    i,
                    outcome.unwrap_or_else(|e| Err(RemoteError::Unreachable(e.to_string()))),
                )
            });
        }
        let mut outcomes: Vec<_> = users.iter().map(|_| Err(RemoteError::TimedOut)).collect();
        let deadline = tokio::time::Instant::now() + timeout;
        while let Ok(Some(done)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
            if let Ok((i, outcome)) = done {
                outcomes[i] = outcome;
            }
        }
        tasks.detach_all();
        outcomes
    }

    /// Fetches `user_id`'s list in the background.
    pub(crate) fn resync_soon(&self, user_id: OwnedUserId) {
        let hs = self.clone();
        tokio::spawn(async move {
            log_failed_fetch(&user_id, hs.resync_device_list(&user_id).await);
        });
    }

    /// Fetches a remote user's whole device list and replaces the cached one; on failure the
    /// list is left stale, to be fetched again. The outer error is this server's own.
    pub async fn resync_device_list(
        &self,
        user_id: &UserId,
    ) -> Result<std::result::Result<RemoteDeviceList, RemoteError>> {
        let list = self.fetch_device_list(user_id).await?;
        // A list is fetched only when absent or stale; if it is whole now, a fetch that ran
        // alongside this one (a join's and a gap's, say) made it so, and it stays usable.
        if list.is_err()
            && !matches!(self.store().remote_device_list(user_id).await?, Some(l) if !l.stale)
        {
            self.store().mark_remote_device_list_stale(user_id).await?;
        }
        Ok(list)
    }

    /// Fetches a remote user's whole device list and replaces the cached one; a failed fetch
    /// changes nothing. The outer error is this server's own.
    async fn fetch_device_list(
        &self,
        user_id: &UserId,
    ) -> Result<std::result::Result<RemoteDeviceList, RemoteError>> {
        let answer = self
            .federation()
            .user_devices(user_id.server_name(), user_id)
            .await;
        let previous = self.store().remote_device_list(user_id).await?;
        let now = self.now_ms();
        let list = answer.and_then(|answer| {
            parse_device_list(user_id, &answer, previous.as_ref(), now)
                .map_err(|e| RemoteError::Invalid(e.to_string()))
        });
        match &list {
            // A fetch that ends after the last shared room was left caches nothing.
            Ok(_) if !self.tracked_locally(user_id).await? => {
                self.store().forget_remote_device_list(user_id).await?;
            }
            Ok(list) => {
                if self
                    .store()
                    .replace_remote_device_list(list)
                    .await?
                    .is_some()
                {
                    self.notify_device_list_change(user_id).await?;
                }
                self.store()
                    .remote_device_list_fetched(user_id, now)
                    .await?;
            }
            Err(_) => {}
        }
        Ok(list)
    }

    /// MSC4081 decision 19: the users whose cached fallback keys were just served are fetched
    /// again once their server answers ([`Self::retry_stale_device_lists`]). Only a hint: a
    /// failure to record it does not fail the claim.
    pub(crate) async fn recheck_when_back(&self, served: &[super::keys::ClaimedKey]) {
        let mut users: Vec<OwnedUserId> = served.iter().map(|k| k.0.clone()).collect();
        users.dedup();
        if let Err(err) = self
            .store()
            .mark_remote_device_lists_for_recheck(&users)
            .await
        {
            tracing::warn!(%err, "cannot mark device lists for a recheck");
        }
    }

    /// Fetches the list of a user whose cached keys answered claims while their server could
    /// not, and tells local users sharing a room that it changed, even if the fetch found
    /// nothing new: their clients query again and can replace a session set up on an old key.
    async fn recheck_device_list(&self, user_id: &UserId) -> Result<()> {
        match self.fetch_device_list(user_id).await? {
            Ok(_) => {
                self.store().remote_device_list_rechecked(user_id).await?;
                self.store().mark_device_list_changed(user_id).await?;
                self.notify_device_list_change(user_id).await
            }
            Err(err) => {
                tracing::info!(%user_id, %err, "device list recheck failed; will retry");
                self.back_off_if_unreachable(user_id, &err).await;
                Ok(())
            }
        }
    }

    /// Backs off the server of `user_id` after a fetch that found it unreachable, so that
    /// the next passes skip it until the backoff ends instead of asking every 30 s.
    async fn back_off_if_unreachable(&self, user_id: &UserId, err: &RemoteError) {
        if err.unreachable_reason().is_some() {
            self.remote_failed(user_id.server_name()).await;
        }
    }

    /// Fetches again, except from servers in backoff: every stale list, every list marked for
    /// a recheck, and lists holding shared fallback keys that were not fetched whole for a day.
    /// Drops lists no local user needs any more. Run every [`RESYNC_INTERVAL`].
    pub async fn retry_stale_device_lists(&self) -> Result<()> {
        let held = self.store().devices_with_cached_fallback_keys().await?;
        metrics::gauge!("cairn_msc4081_cached_devices").set(held as f64);
        let now = self.now_ms();
        let store = self.store();
        let stale = store.stale_remote_device_lists().await?;
        let recheck = store.remote_device_lists_to_recheck().await?;
        let refresh = store
            .remote_device_lists_to_refresh(now.saturating_sub(REFRESH_AFTER_MS), REFRESH_PER_PASS)
            .await?;
        let due = (stale.iter().map(|u| (u, Due::Stale)))
            .chain(recheck.iter().map(|u| (u, Due::Recheck)))
            .chain(refresh.iter().map(|u| (u, Due::Refresh)));
        for (user_id, why) in due {
            if !self.tracked_locally(user_id).await? {
                store.forget_remote_device_list(user_id).await?;
                continue;
            }
            let backoff = store.backoff(user_id.server_name()).await?;
            if backoff.retry_after_ms > now {
                continue;
            }
            match why {
                Due::Stale => log_failed_fetch(user_id, self.resync_device_list(user_id).await),
                Due::Recheck => self.recheck_device_list(user_id).await?,
                // A failed refresh leaves the list as it was, usable, for a later pass.
                Due::Refresh => {
                    let outcome = self.fetch_device_list(user_id).await;
                    if let Ok(Err(err)) = &outcome {
                        self.back_off_if_unreachable(user_id, err).await;
                    }
                    log_failed_fetch(user_id, outcome);
                }
            }
        }
        Ok(())
    }

    /// The cached list of `user_id` if it can answer a query: cached, not stale, and still
    /// shared with a local user (a list nobody shares a room with any more is dropped).
    pub(crate) async fn usable_device_list(
        &self,
        user_id: &UserId,
    ) -> Result<Option<RemoteDeviceList>> {
        let Some(list) = self.store().remote_device_list(user_id).await? else {
            return Ok(None);
        };
        if !self.tracked_locally(user_id).await? {
            self.store().forget_remote_device_list(user_id).await?;
            return Ok(None);
        }
        Ok((!list.stale).then_some(list))
    }
}

/// Why a list is fetched again in the periodic pass.
#[derive(Clone, Copy)]
enum Due {
    /// A gap or a failed fetch: the list cannot answer queries until fetched.
    Stale,
    /// Its cached fallback keys answered claims while its server could not (decision 19).
    Recheck,
    /// Holds shared fallback keys not confirmed by a whole fetch for a day.
    Refresh,
}

fn log_failed_fetch(
    user_id: &UserId,
    outcome: Result<std::result::Result<RemoteDeviceList, RemoteError>>,
) {
    match outcome {
        Ok(Ok(_)) => {}
        Ok(Err(err)) => tracing::info!(%user_id, %err, "device list fetch failed; will retry"),
        Err(err) => tracing::warn!(%user_id, %err, "cannot store a fetched device list"),
    }
}

/// The cached object of one device of a list.
fn cached_device(list: &RemoteDeviceList, device_id: &str) -> Option<Value> {
    list.devices.iter().find_map(|d| {
        let device: Value = serde_json::from_str(d.get()).ok()?;
        (device["device_id"].as_str() == Some(device_id)).then_some(device)
    })
}

/// Checks a `GET /user/devices` answer: it is about `user_id`, each device's keys name the user
/// and the device, and the cross-signing keys name the user (those that do not are left out).
/// Fallback keys are checked and cached as from an update (`previous`: the list held).
fn parse_device_list(
    user_id: &UserId,
    answer: &Value,
    previous: Option<&RemoteDeviceList>,
    now_ms: u64,
) -> Result<RemoteDeviceList> {
    if answer["user_id"].as_str() != Some(user_id.as_str()) {
        return Err(bad("The device list is about another user"));
    }
    let stream_id = answer["stream_id"]
        .as_u64()
        .ok_or_else(|| bad("The device list has no stream_id"))?;
    let devices = answer["devices"]
        .as_array()
        .ok_or_else(|| bad("The device list has no devices"))?;
    if devices.len() > MAX_REMOTE_DEVICES {
        return Err(bad("The device list is too long"));
    }
    let raw =
        |v: &Value| to_raw_value(v).map_err(|e| Error::new(ErrorKind::Internal, e.to_string()));
    let mut kept = Vec::with_capacity(devices.len());
    for device in devices {
        let Some(device_id) = device["device_id"].as_str() else {
            continue;
        };
        if device
            .get("keys")
            .is_some_and(|keys| names_another(keys, user_id.as_str(), device_id))
        {
            continue;
        }
        let Some(mut object) = device.as_object().cloned() else {
            continue;
        };
        let before = previous.and_then(|list| cached_device(list, device_id));
        let refused = cache_fallback_keys(&mut object, user_id, device_id, before.as_ref(), now_ms);
        super::msc4081::record_refusals(&refused);
        kept.push(raw(&Value::Object(object))?);
    }
    let key = |field: &str| -> Result<Option<Box<RawValue>>> {
        let key = &answer[field];
        if names(key, user_id.as_str(), None) {
            Ok(Some(raw(key)?))
        } else {
            Ok(None)
        }
    };
    Ok(RemoteDeviceList {
        user_id: user_id.to_owned(),
        stream_id,
        stale: false,
        devices: kept,
        master_key: key("master_key")?,
        self_signing_key: key("self_signing_key")?,
    })
}
