//! `/keys/upload`, `/keys/query`, `/keys/claim` and `/keys/changes` for local users.
//!
//! Upload rules: device keys must name the uploading user and device; re-uploading identical
//! device keys changes nothing, different ones are a device-list change. One-time keys are
//! idempotent per ID, and a different key under a stored ID is refused. Fallback keys (one per
//! algorithm, kept apart from one-time keys because clients reuse IDs across the two) replace
//! the stored one unless identical, in which case its "used" mark stays. Signatures are not
//! verified here (clients verify); shapes are.

use std::collections::BTreeMap;

use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::SIGNED_CURVE25519;
use super::remote::PerServer;
pub use super::upload_rules::MAX_ONE_TIME_KEYS_PER_DEVICE;
use super::upload_rules::same_json;
use crate::Homeserver;
use crate::accounts::Requester;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{KeyClaim, KeyUsage, KeyWrite, OneTimeKeyRefusal, UploadedKey};
use crate::stream::SyncToken;

/// The body of `POST /keys/upload`.
#[derive(Debug, Default, Deserialize)]
pub struct UploadRequest {
    /// The device's identity keys.
    #[serde(default, deserialize_with = "present")]
    pub device_keys: Option<Option<Box<RawValue>>>,
    /// One-time keys, `<algorithm>:<key_id>` to key.
    #[serde(default)]
    pub one_time_keys: BTreeMap<String, Box<RawValue>>,
    /// Fallback keys, at most one per algorithm.
    #[serde(default)]
    pub fallback_keys: BTreeMap<String, Box<RawValue>>,
    /// MSC4081 opt-in, bare name.
    pub eager_share_fallback_keys: Option<bool>,
    /// MSC4081 opt-in, unstable name.
    #[serde(rename = "org.matrix.msc4081.eager_share_fallback_keys")]
    pub eager_share_fallback_keys_unstable: Option<bool>,
}

/// Distinguishes an explicit `null` from an absent field.
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<Box<RawValue>>>, D::Error> {
    let raw = Box::<RawValue>::deserialize(d)?;
    Ok(Some((raw.get() != "null").then_some(raw)))
}

/// The body of `POST /keys/query`.
#[derive(Debug, Deserialize)]
pub struct QueryRequest {
    /// Users and their devices (an empty list means all devices).
    pub device_keys: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    /// How long to wait for remote servers, in milliseconds.
    pub timeout: Option<u64>,
}

/// The body of `POST /keys/claim`.
#[derive(Debug, Deserialize)]
pub struct ClaimRequest {
    /// Per user and device, the algorithm of the key wanted.
    pub one_time_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
    /// How long to wait for remote servers, in milliseconds.
    pub timeout: Option<u64>,
}

/// Who is asking for keys: a local user, or another server on behalf of its users.
#[derive(Debug, Clone, Copy)]
pub enum Viewer<'a> {
    /// A user of this server.
    User(&'a UserId),
    /// Another server.
    Server,
}

/// Answer to `/keys/query`.
#[derive(Debug, Default, PartialEq)]
pub struct QueryResponse {
    /// `user -> device -> device keys with unsigned.device_display_name`.
    pub device_keys: BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, Value>>,
    /// Master keys, with the signatures the requester may see.
    pub master_keys: BTreeMap<OwnedUserId, Value>,
    /// Self-signing keys.
    pub self_signing_keys: BTreeMap<OwnedUserId, Value>,
    /// The requester's own user-signing key, if queried.
    pub user_signing_keys: BTreeMap<OwnedUserId, Value>,
    /// Servers that could not be asked, with the reason.
    pub failures: BTreeMap<String, Value>,
}

/// Answer to `/keys/claim`.
#[derive(Debug, Default)]
pub struct ClaimResponse {
    /// `user -> device -> {"<algorithm>:<key_id>": key}`.
    pub one_time_keys:
        BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, BTreeMap<String, Box<RawValue>>>>,
    /// Servers that could not be asked, with the reason.
    pub failures: BTreeMap<String, Value>,
    /// Servers answered from the fallback keys they shared (MSC4081), with why and when they
    /// will be tried again: `{"reason", "retry_after_ms"}`.
    pub cached: BTreeMap<String, Value>,
}

/// A key handed out for a device: `(user, device, "<algorithm>:<key_id>", key)`.
pub type ClaimedKey = (OwnedUserId, OwnedDeviceId, String, Box<RawValue>);

impl ClaimResponse {
    /// Adds keys that `server`'s users' devices shared, served because the server could not
    /// answer (`reason`; tried again in `retry_after_ms`).
    pub fn fold_cached(
        &mut self,
        server: &ruma::ServerName,
        reason: &str,
        retry_after_ms: u64,
        served: Vec<ClaimedKey>,
    ) {
        for (user_id, device_id, key_id, key) in served {
            self.one_time_keys
                .entry(user_id)
                .or_default()
                .entry(device_id)
                .or_default()
                .insert(key_id, key);
        }
        self.cached.insert(
            server.to_string(),
            serde_json::json!({ "reason": reason, "retry_after_ms": retry_after_ms }),
        );
    }
}

impl Homeserver {
    /// `POST /keys/upload`: validates, stores what changed in one transaction, and returns the
    /// device's one-time key counts.
    pub async fn upload_keys(
        &self,
        me: &Requester,
        req: UploadRequest,
    ) -> Result<BTreeMap<String, u64>> {
        let store = self.store();
        let device_keys = match req.device_keys {
            None => None,
            Some(None) => return Err(Error::bad_json("device_keys must be an object")),
            Some(Some(raw)) => {
                check_device_keys(&raw, me)?;
                let stored = store.device_keys(&me.user_id, &me.device_id).await?;
                (!stored.is_some_and(|s| same_json(&s, &raw, false))).then_some(raw)
            }
        };

        // Checked against what the device holds by the store, inside the write's transaction.
        let one_time_keys = split_key_ids(req.one_time_keys)?;

        let uploaded_fallbacks = split_key_ids(req.fallback_keys)?;
        for (i, key) in uploaded_fallbacks.iter().enumerate() {
            if uploaded_fallbacks[..i]
                .iter()
                .any(|k| k.algorithm == key.algorithm)
            {
                return Err(Error::bad_json(format!(
                    "More than one fallback key for {}",
                    key.algorithm
                )));
            }
        }
        let stored_fallbacks = if uploaded_fallbacks.is_empty() {
            Vec::new()
        } else {
            store.fallback_keys(&me.user_id, &me.device_id).await?
        };
        let fallback_keys: Vec<_> = uploaded_fallbacks
            .into_iter()
            .filter(|key| {
                !stored_fallbacks.iter().any(|s| {
                    s.key.algorithm == key.algorithm
                        && s.key.key_id == key.key_id
                        && same_json(&s.key.key, &key.key, false)
                })
            })
            .collect();

        let eager = req
            .eager_share_fallback_keys
            .or(req.eager_share_fallback_keys_unstable);
        let changed_device_keys = device_keys.is_some();
        let mut write = KeyWrite {
            user_id: me.user_id.clone(),
            device_id: me.device_id.clone(),
            device_keys,
            one_time_keys,
            fallback_keys,
            eager_share_fallback_keys: eager,
            owes_update: false,
        };
        write.owes_update = self.upload_owes_update(&write).await?;
        let mut counts = if write.device_keys.is_some()
            || !write.one_time_keys.is_empty()
            || !write.fallback_keys.is_empty()
            || write.eager_share_fallback_keys.is_some()
        {
            store.write_keys(&write).await?.map_err(refusal_error)?
        } else {
            store
                .one_time_key_counts(&me.user_id, &me.device_id)
                .await?
        };
        counts.entry(SIGNED_CURVE25519.to_owned()).or_insert(0);
        if changed_device_keys {
            self.notify_device_list_change(&me.user_id).await?;
        } else if write.owes_update {
            self.federation().wake_sender();
        }
        Ok(counts)
    }

    /// One-time key counts with `signed_curve25519` always present.
    pub async fn one_time_key_counts(
        &self,
        user_id: &UserId,
        device_id: &ruma::DeviceId,
    ) -> Result<BTreeMap<String, u64>> {
        let mut counts = self.store().one_time_key_counts(user_id, device_id).await?;
        counts.entry(SIGNED_CURVE25519.to_owned()).or_insert(0);
        Ok(counts)
    }

    /// `POST /keys/query`.
    pub async fn query_keys(&self, me: &UserId, req: QueryRequest) -> Result<QueryResponse> {
        let mut response = QueryResponse::default();
        let mut remote: PerServer<Vec<OwnedDeviceId>> = BTreeMap::new();
        let mut fetch = Vec::new();
        for (user_id, devices) in req.device_keys {
            if !self.is_local(&user_id) {
                if let Some(list) = self.usable_device_list(&user_id).await? {
                    add_cached_keys(&list, &devices, &mut response);
                    continue;
                }
                if self.tracked_locally(&user_id).await? {
                    // Fetch and cache the whole list, so that later queries and updates need
                    // no round trip; a query for some devices is answered from it too.
                    fetch.push((user_id, devices));
                    continue;
                }
                remote
                    .entry(user_id.server_name().to_owned())
                    .or_default()
                    .insert(user_id, devices);
                continue;
            }
            self.add_local_keys(Viewer::User(me), &user_id, &devices, &mut response)
                .await?;
        }
        let timeout = remote_timeout(req.timeout);
        let (fetched, ()) = tokio::join!(self.fetch_device_lists(&fetch, timeout), async {
            if !remote.is_empty() {
                self.query_remote_keys(remote, timeout, &mut response).await;
            }
        });
        for ((user_id, devices), outcome) in fetch.iter().zip(fetched) {
            match outcome {
                Ok(list) => add_cached_keys(&list, devices, &mut response),
                Err(err) => {
                    response
                        .failures
                        .insert(user_id.server_name().to_string(), err.to_failure());
                }
            }
        }
        Ok(response)
    }

    /// Adds `user_id`'s device keys (all, or those in `devices`) and cross-signing keys to
    /// `response`, as `viewer` may see them.
    pub(crate) async fn add_local_keys(
        &self,
        viewer: Viewer<'_>,
        user_id: &UserId,
        devices: &[OwnedDeviceId],
        response: &mut QueryResponse,
    ) -> Result<()> {
        // Over federation only the owner's own signatures are shown (others' signatures are
        // private to their signer), and no device names (Synapse's default).
        let (me, names) = match viewer {
            Viewer::User(me) => (me, true),
            Viewer::Server => (user_id, false),
        };
        let signatures = self.store().key_signatures(user_id).await?;
        let mut found = BTreeMap::new();
        for record in self.store().query_device_keys(user_id, devices).await? {
            let mut keys: Map<String, Value> =
                serde_json::from_str(record.keys.get()).map_err(|_| {
                    Error::new(ErrorKind::Internal, "stored device keys are not an object")
                })?;
            Self::merge_signatures(&mut keys, &signatures, record.device_id.as_str(), Some(me));
            if names {
                let unsigned = keys
                    .entry("unsigned")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let (Value::Object(unsigned), Some(name)) = (unsigned, record.display_name) {
                    unsigned.insert("device_display_name".into(), name.into());
                }
            }
            found.insert(record.device_id, Value::Object(keys));
        }
        response.device_keys.insert(user_id.to_owned(), found);
        for (usage, raw) in self.store().cross_signing_keys(user_id).await? {
            let Ok(Value::Object(mut key)) = serde_json::from_str::<Value>(raw.get()) else {
                continue;
            };
            let public = key
                .get("keys")
                .and_then(Value::as_object)
                .and_then(|k| k.keys().next())
                .and_then(|id| id.strip_prefix("ed25519:"))
                .map(ToOwned::to_owned)
                .unwrap_or_default();
            Self::merge_signatures(&mut key, &signatures, &public, Some(me));
            let target = match (usage, viewer) {
                (KeyUsage::Master, _) => &mut response.master_keys,
                (KeyUsage::SelfSigning, _) => &mut response.self_signing_keys,
                (KeyUsage::UserSigning, Viewer::User(me)) if user_id == me => {
                    &mut response.user_signing_keys
                }
                (KeyUsage::UserSigning, _) => continue,
            };
            target.insert(user_id.to_owned(), Value::Object(key));
        }
        Ok(())
    }

    /// `POST /keys/claim`: local keys from the store, remote ones from their servers.
    pub async fn claim_keys(&self, req: ClaimRequest) -> Result<ClaimResponse> {
        let mut response = ClaimResponse::default();
        let mut claims = Vec::new();
        let mut remote: PerServer<BTreeMap<OwnedDeviceId, String>> = BTreeMap::new();
        for (user_id, devices) in req.one_time_keys {
            if !self.is_local(&user_id) {
                remote
                    .entry(user_id.server_name().to_owned())
                    .or_default()
                    .insert(user_id, devices);
                continue;
            }
            for (device_id, algorithm) in devices {
                claims.push(KeyClaim {
                    user_id: user_id.clone(),
                    device_id,
                    algorithm,
                });
            }
        }
        let claimed = self.store().claim_keys(&claims).await?;
        for (claim, key) in claims.into_iter().zip(claimed) {
            if let Some(key) = key {
                response
                    .one_time_keys
                    .entry(claim.user_id)
                    .or_default()
                    .entry(claim.device_id)
                    .or_default()
                    .insert(format!("{}:{}", key.algorithm, key.key_id), key.key);
            }
        }
        if !remote.is_empty() {
            self.claim_remote_keys(remote, remote_timeout(req.timeout), &mut response)
                .await;
        }
        Ok(response)
    }

    /// `GET /keys/changes`: users whose device lists changed after `from` (and who share a room
    /// with the requester, or are the requester), and users no longer sharing any room.
    pub async fn key_changes(
        &self,
        me: &UserId,
        from: SyncToken,
    ) -> Result<super::device_lists::DeviceListDelta> {
        let now = self.store().current_position().await?;
        self.device_list_delta(me, from.pos, now).await
    }

    /// Wakes the syncs of everyone who hears about `user_id`'s device list.
    pub(crate) async fn notify_device_list_change(&self, user_id: &UserId) -> Result<()> {
        let mates = self.store().room_mates(user_id).await?;
        let refs: Vec<&UserId> = mates.iter().map(|u| u.as_ref()).collect();
        self.notifier().notify(&refs);
        if self.is_local(user_id) {
            // Other servers sharing a room are owed an announcement now.
            self.federation().wake_sender();
        }
        Ok(())
    }

    pub(crate) fn is_local(&self, user_id: &UserId) -> bool {
        user_id.server_name() == self.config().server_name
    }
}

/// The client's `timeout` for remote servers, else the default.
/// Adds a remote user's cached device keys (all, or those in `devices`) and cross-signing keys
/// to `response`, with each device's display name where its server gave one.
fn add_cached_keys(
    list: &crate::store::RemoteDeviceList,
    devices: &[OwnedDeviceId],
    response: &mut QueryResponse,
) {
    let mut found = BTreeMap::new();
    for device in &list.devices {
        let Ok(device) = serde_json::from_str::<Value>(device.get()) else {
            continue;
        };
        let (Some(device_id), Some(Value::Object(keys))) =
            (device["device_id"].as_str(), device.get("keys"))
        else {
            continue;
        };
        if !devices.is_empty() && !devices.iter().any(|d| d.as_str() == device_id) {
            continue;
        }
        let mut keys = keys.clone();
        if let Some(name) = device["device_display_name"].as_str() {
            let unsigned = keys
                .entry("unsigned")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(unsigned) = unsigned {
                unsigned.insert("device_display_name".into(), name.into());
            }
        }
        found.insert(OwnedDeviceId::from(device_id), Value::Object(keys));
    }
    response.device_keys.insert(list.user_id.clone(), found);
    for (key, target) in [
        (&list.master_key, &mut response.master_keys),
        (&list.self_signing_key, &mut response.self_signing_keys),
    ] {
        if let Some(key) = key
            .as_ref()
            .and_then(|k| serde_json::from_str(k.get()).ok())
        {
            target.insert(list.user_id.clone(), key);
        }
    }
}

fn remote_timeout(timeout_ms: Option<u64>) -> std::time::Duration {
    timeout_ms.map_or(
        super::remote::DEFAULT_REMOTE_TIMEOUT,
        std::time::Duration::from_millis,
    )
}

/// Device keys must be an object naming the uploader, with the required fields.
fn check_device_keys(raw: &RawValue, me: &Requester) -> Result<()> {
    let keys: Map<String, Value> = serde_json::from_str(raw.get())
        .map_err(|_| Error::bad_json("device_keys must be an object"))?;
    if keys.get("user_id").and_then(Value::as_str) != Some(me.user_id.as_str()) {
        return Err(Error::bad_json(
            "device_keys.user_id does not match the authenticated user",
        ));
    }
    if keys.get("device_id").and_then(Value::as_str) != Some(me.device_id.as_str()) {
        return Err(Error::bad_json(
            "device_keys.device_id does not match the authenticated device",
        ));
    }
    let shaped = keys
        .get("algorithms")
        .is_some_and(|a| a.as_array().is_some_and(|a| a.iter().all(Value::is_string)))
        && keys.get("keys").is_some_and(Value::is_object)
        && keys.get("signatures").is_some_and(Value::is_object);
    if !shaped {
        return Err(Error::bad_json(
            "device_keys needs algorithms, keys and signatures",
        ));
    }
    Ok(())
}

/// Splits `<algorithm>:<key_id>` names; keys must be strings or objects.
fn split_key_ids(keys: BTreeMap<String, Box<RawValue>>) -> Result<Vec<UploadedKey>> {
    keys.into_iter()
        .map(|(name, key)| {
            let (algorithm, key_id) = name
                .split_once(':')
                .filter(|(a, k)| !a.is_empty() && !k.is_empty())
                .ok_or_else(|| {
                    Error::bad_json(format!(
                        "Invalid key name {name:?}: expected <algorithm>:<key_id>"
                    ))
                })?;
            let first = key.get().trim_start().as_bytes().first().copied();
            if !matches!(first, Some(b'"' | b'{')) {
                return Err(Error::bad_json(format!(
                    "Key {name} must be a string or an object"
                )));
            }
            Ok(UploadedKey {
                algorithm: algorithm.to_owned(),
                key_id: key_id.to_owned(),
                key,
            })
        })
        .collect()
}

/// The Matrix error for a refused upload.
fn refusal_error(refusal: OneTimeKeyRefusal) -> Error {
    match refusal {
        // rust-sdk recognises this wording and recovers from the conflict.
        OneTimeKeyRefusal::Changed { old, new } => Error::new(
            ErrorKind::Unknown,
            format!(
                "One time key {}:{} already exists. Old key: {}; new key: {}",
                new.algorithm,
                new.key_id,
                old.key.get(),
                new.key.get()
            ),
        ),
        OneTimeKeyRefusal::TooMany => Error::new(
            ErrorKind::InvalidParam,
            format!(
                "A device may hold at most {MAX_ONE_TIME_KEYS_PER_DEVICE} unclaimed one-time keys"
            ),
        ),
    }
}

#[cfg(test)]
mod tests;
