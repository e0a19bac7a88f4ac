//! MSC4081, eager sharing of fallback keys with other servers (decisions in docs/msc4081.md).
//!
//! Owner's side: an opted-in device's current fallback keys ride on every
//! `m.device_list_update` about it and on `GET /user/devices`; a new fallback key, an opt-in and
//! an opt-out each owe the device's servers an update. Receiver's side: fallback keys from the
//! user's own server are checked (key ID, one per algorithm, `fallback: true`, size, signature
//! by the device's ed25519 key) and cached with the device, replaced and removed in stream
//! order with it; a claim whose server cannot answer is answered from that cache.

use std::collections::BTreeMap;

use rand::RngExt;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, ServerName, UserId};
use serde_json::value::to_raw_value;
use serde_json::{Map, Value};

use super::cross_signing::signed_by;
use super::keys::ClaimedKey;
use crate::Homeserver;
use crate::error::Result;
use crate::store::{Backoff, KeyWrite};

/// The unstable field name, read always and written unless `stable_names` is set.
pub const UNSTABLE_FIELD: &str = "org.matrix.msc4081.fallback_keys";
/// The field name once the MSC is merged.
pub const STABLE_FIELD: &str = "fallback_keys";
/// Where a cached device object keeps when each of its fallback keys was last received from
/// the owner's server, in an update or a fetched list (Cairn's own field; never sent
/// anywhere). A key the owner's server still sends is still the device's current one, so the
/// age limit counts from then (see docs/msc4081.md, decision 16).
pub const RECEIVED_FIELD: &str = "cairn.fallback_keys_received_ms";
/// The largest fallback key object accepted, serialised.
const MAX_KEY_BYTES: usize = 2048;

/// Cached fallback keys found for a claim.
#[derive(Default)]
pub(crate) struct CachedClaims {
    /// The keys, one per device that has one.
    pub(crate) keys: Vec<ClaimedKey>,
    /// How long ago each was received, in the same order.
    pub(crate) ages_ms: Vec<u64>,
    /// Whether every device asked got one.
    pub(crate) complete: bool,
}

impl CachedClaims {
    /// Counts the keys as served from the cache for `reason` (metrics).
    pub(crate) fn record(&self, reason: &'static str) {
        metrics::counter!("cairn_msc4081_claims_from_cache_total", "reason" => reason)
            .increment(self.keys.len() as u64);
        for age in &self.ages_ms {
            metrics::histogram!("cairn_msc4081_served_key_age_seconds")
                .record(*age as f64 / 1000.0);
        }
    }
}

/// Why a fallback key from another server was not cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The key ID is not `<algorithm>:<id>`.
    KeyId,
    /// A second key for one algorithm.
    Duplicate,
    /// Not an object with `fallback: true`.
    Shape,
    /// Larger than the cap.
    Size,
    /// Not signed by the device's ed25519 key (or the device's key is unknown).
    Signature,
}

/// The fallback keys of `raw` (a `{"<alg>:<id>": key}` object from `user_id`'s server about
/// `device_id`) that pass every check, and the refusals of the rest. `device_keys` are the
/// device's published keys, whose `ed25519:<device_id>` must have signed each fallback key.
pub fn checked_fallback_keys(
    raw: &Value,
    user_id: &UserId,
    device_id: &str,
    device_keys: Option<&Value>,
) -> (Map<String, Value>, Vec<Refusal>) {
    let mut kept = Map::new();
    let mut refused = Vec::new();
    let Some(entries) = raw.as_object() else {
        return (kept, vec![Refusal::Shape]);
    };
    let signing_key = device_keys
        .and_then(|k| k["keys"][format!("ed25519:{device_id}")].as_str())
        .map(str::to_owned);
    let mut algorithms: Vec<&str> = Vec::new();
    for (key_id, key) in entries {
        let refusal = match key_id.split_once(':') {
            None => Some(Refusal::KeyId),
            Some((algorithm, id)) if algorithm.is_empty() || id.is_empty() => Some(Refusal::KeyId),
            Some((algorithm, _)) if algorithms.contains(&algorithm) => Some(Refusal::Duplicate),
            Some((algorithm, _)) => {
                algorithms.push(algorithm);
                if key.get("fallback") != Some(&Value::Bool(true)) {
                    Some(Refusal::Shape)
                } else if key.to_string().len() > MAX_KEY_BYTES {
                    Some(Refusal::Size)
                } else if !signing_key
                    .as_deref()
                    .is_some_and(|public| signed_by(key, user_id, device_id, public))
                {
                    Some(Refusal::Signature)
                } else {
                    None
                }
            }
        };
        match refusal {
            Some(refusal) => refused.push(refusal),
            None => {
                kept.insert(key_id.clone(), key.clone());
            }
        }
    }
    (kept, refused)
}

/// Replaces the fallback keys a remote device object carries (under either name) with those
/// that pass the checks, stamped with `now_ms`: the owner's server says they are current.
/// `device_keys` fall back to those of `previous`, the cached object.
pub fn cache_fallback_keys(
    device: &mut Map<String, Value>,
    user_id: &UserId,
    device_id: &str,
    previous: Option<&Value>,
    now_ms: u64,
) -> Vec<Refusal> {
    let raw = device
        .remove(UNSTABLE_FIELD)
        .or_else(|| device.remove(STABLE_FIELD));
    device.remove(RECEIVED_FIELD);
    let Some(raw) = raw else {
        return Vec::new();
    };
    let device_keys = device
        .get("keys")
        .or_else(|| previous.and_then(|p| p.get("keys")))
        .cloned();
    let (kept, refused) = checked_fallback_keys(&raw, user_id, device_id, device_keys.as_ref());
    if kept.is_empty() {
        return refused;
    }
    let received: Map<String, Value> = kept
        .keys()
        .map(|key_id| (key_id.clone(), now_ms.into()))
        .collect();
    device.insert(UNSTABLE_FIELD.into(), Value::Object(kept));
    device.insert(RECEIVED_FIELD.into(), Value::Object(received));
    refused
}

impl Refusal {
    /// The check's name, as a metric label.
    fn check(self) -> &'static str {
        match self {
            Refusal::KeyId => "key_id",
            Refusal::Duplicate => "duplicate",
            Refusal::Shape => "shape",
            Refusal::Size => "size",
            Refusal::Signature => "signature",
        }
    }
}

/// Counts fallback keys refused at receipt, by check (metrics).
pub(crate) fn record_refusals(refused: &[Refusal]) {
    for refusal in refused {
        metrics::counter!("cairn_msc4081_keys_refused_total", "check" => refusal.check())
            .increment(1);
    }
}

impl Homeserver {
    /// The fallback keys cached for the requested devices (`user -> device -> algorithm`), of
    /// the algorithm asked and younger than the age limit.
    pub(crate) async fn cached_claims(
        &self,
        users: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, String>>,
        now_ms: u64,
    ) -> CachedClaims {
        let max_age = self.config().msc4081.max_cached_key_age_ms;
        let mut found = CachedClaims {
            complete: true,
            ..CachedClaims::default()
        };
        for (user_id, devices) in users {
            let list = self
                .store()
                .remote_device_list(user_id)
                .await
                .ok()
                .flatten();
            let objects: Vec<Value> = list
                .iter()
                .flat_map(|l| &l.devices)
                .filter_map(|d| serde_json::from_str(d.get()).ok())
                .collect();
            for (device_id, algorithm) in devices {
                let key = objects
                    .iter()
                    .find(|o| o["device_id"].as_str() == Some(device_id.as_str()))
                    .and_then(|o| {
                        let (key_id, key) =
                            o[UNSTABLE_FIELD].as_object()?.iter().find(|(id, _)| {
                                id.split_once(':').is_some_and(|(alg, _)| alg == algorithm)
                            })?;
                        let age = now_ms.saturating_sub(o[RECEIVED_FIELD][key_id].as_u64()?);
                        (age <= max_age)
                            .then(|| Some((key_id.clone(), to_raw_value(key).ok()?, age)))?
                    });
                match key {
                    Some((key_id, key, age)) => {
                        found
                            .keys
                            .push((user_id.clone(), device_id.clone(), key_id, key));
                        found.ages_ms.push(age);
                    }
                    None => found.complete = false,
                }
            }
        }
        found
    }

    /// `server` answered: its backoff, if any, ends.
    pub(crate) async fn remote_answered(&self, server: &ServerName) {
        let store = self.store();
        if store
            .backoff(server)
            .await
            .is_ok_and(|b| b != Backoff::default())
            && let Err(err) = store.set_backoff(server, Backoff::default()).await
        {
            tracing::warn!(%server, %err, "cannot clear a backoff");
        }
    }

    /// `server` could not answer: it is backed off (as the sender does); returns how long
    /// until it is tried again.
    pub(crate) async fn remote_failed(&self, server: &ServerName) -> u64 {
        let now = self.now_ms();
        let store = self.store();
        let previous = store.backoff(server).await.unwrap_or_default();
        if previous.retry_after_ms > now {
            return previous.retry_after_ms - now;
        }
        let jitter = rand::rng().random_range(0.8..1.4);
        let next = self.config().backoff.after_failure(previous, now, jitter);
        if let Err(err) = store.set_backoff(server, next).await {
            tracing::warn!(%server, %err, "cannot record a backoff");
        }
        next.retry_after_ms.saturating_sub(now)
    }

    /// The field name fallback keys are sent under.
    pub(crate) fn fallback_field(&self) -> &'static str {
        if self.config().msc4081.stable_names {
            STABLE_FIELD
        } else {
            UNSTABLE_FIELD
        }
    }

    /// The device's fallback keys as other servers are told them, `{"<alg>:<id>": key}`; `None`
    /// when the device does not share them (or has none).
    pub(crate) async fn shared_fallback_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<Option<Value>> {
        let shared = self.config().msc4081.share_for_all_devices
            || self
                .store()
                .eager_share_fallback_keys(user_id, device_id)
                .await?
                == Some(true);
        if !shared {
            return Ok(None);
        }
        let keys: BTreeMap<String, Value> = self
            .store()
            .fallback_keys(user_id, device_id)
            .await?
            .into_iter()
            .filter_map(|k| {
                let key = serde_json::from_str(k.key.key.get()).ok()?;
                Some((format!("{}:{}", k.key.algorithm, k.key.key_id), key))
            })
            .collect();
        Ok((!keys.is_empty()).then(|| serde_json::to_value(keys).unwrap_or_default()))
    }

    /// Whether an upload owes other servers an update of the device though its device keys
    /// did not change (decision 4): a new fallback key of a sharing device, or a change of
    /// whether it shares. Identical re-uploads change nothing and owe nothing.
    pub(crate) async fn upload_owes_update(&self, write: &KeyWrite) -> Result<bool> {
        if write.fallback_keys.is_empty() && write.eager_share_fallback_keys.is_none() {
            return Ok(false);
        }
        let for_all = self.config().msc4081.share_for_all_devices;
        let stored = self
            .store()
            .eager_share_fallback_keys(&write.user_id, &write.device_id)
            .await?;
        let before = for_all || stored == Some(true);
        let after = for_all || write.eager_share_fallback_keys.or(stored) == Some(true);
        Ok((after && !write.fallback_keys.is_empty()) || before != after)
    }
}

#[cfg(test)]
mod tests;
