//! The in-memory store's keys, to-device inboxes and sync reads.

use std::collections::BTreeMap;

use async_trait::async_trait;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::value::RawValue;

use super::{MemoryStore, State, raw};
use crate::store::*;

fn key(algorithm: &str, key_id: &str, json: &str) -> UploadedKey {
    UploadedKey {
        algorithm: algorithm.to_owned(),
        key_id: key_id.to_owned(),
        key: raw(json),
    }
}

/// Unclaimed one-time keys of a device, per algorithm.
fn otk_counts(state: &State, user_id: &UserId, device_id: &DeviceId) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for (u, d, alg, _) in state.one_time_keys.keys() {
        if u == user_id && d == device_id {
            *counts.entry(alg.clone()).or_insert(0) += 1;
        }
    }
    counts
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn device_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> StoreResult<Option<Box<RawValue>>> {
        Ok(self
            .state()
            .device_keys
            .get(&(user_id.to_owned(), device_id.to_owned()))
            .map(|s| raw(s)))
    }

    async fn fallback_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> StoreResult<Vec<StoredFallbackKey>> {
        let state = self.state();
        Ok(state
            .fallback_keys
            .iter()
            .filter(|((u, d, _), _)| u == user_id && d == device_id)
            .map(|((_, _, alg), (id, json, used))| StoredFallbackKey {
                key: key(alg, id, json),
                used: *used,
            })
            .collect())
    }

    async fn write_keys(
        &self,
        write: &KeyWrite,
    ) -> StoreResult<Result<BTreeMap<String, u64>, OneTimeKeyRefusal>> {
        let mut state = self.state();
        let counts = otk_counts(&state, &write.user_id, &write.device_id);
        let device = (write.user_id.clone(), write.device_id.clone());
        let existing = state
            .one_time_keys
            .iter()
            .filter(|((u, d, alg, _), (id, _))| {
                (u, d) == (&device.0, &device.1)
                    && write
                        .one_time_keys
                        .iter()
                        .any(|k| &k.algorithm == alg && &k.key_id == id)
            })
            .map(|((_, _, alg, _), (id, json))| key(alg, id, json))
            .collect();
        let new = match write.new_one_time_keys(&OneTimeKeysHeld { existing, counts }) {
            Ok(new) => new,
            Err(refusal) => return Ok(Err(refusal)),
        };
        if let Some(keys) = &write.device_keys {
            state
                .device_keys
                .insert(device.clone(), keys.get().to_owned());
            state.device_list_changed(&write.user_id, &[write.device_id.as_str()]);
        } else if write.owes_update {
            state.owe_update(&write.user_id, write.device_id.as_str());
        }
        for k in new.keys {
            state.next_otk += 1;
            let seq = state.next_otk;
            state.one_time_keys.insert(
                (device.0.clone(), device.1.clone(), k.algorithm.clone(), seq),
                (k.key_id.clone(), k.key.get().to_owned()),
            );
        }
        for k in &write.fallback_keys {
            state.fallback_keys.insert(
                (device.0.clone(), device.1.clone(), k.algorithm.clone()),
                (k.key_id.clone(), k.key.get().to_owned(), false),
            );
        }
        if let Some(eager) = write.eager_share_fallback_keys {
            state.eager.insert(device, eager);
        }
        Ok(Ok(new.counts))
    }

    async fn one_time_key_counts(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> StoreResult<BTreeMap<String, u64>> {
        Ok(otk_counts(&self.state(), user_id, device_id))
    }

    async fn claim_keys(&self, claims: &[KeyClaim]) -> StoreResult<Vec<Option<UploadedKey>>> {
        let mut state = self.state();
        let mut out = Vec::with_capacity(claims.len());
        for c in claims {
            let oldest = state
                .one_time_keys
                .keys()
                .find(|(u, d, alg, _)| *u == c.user_id && *d == c.device_id && *alg == c.algorithm)
                .cloned();
            if let Some(k) = oldest {
                let (id, json) = state.one_time_keys.remove(&k).expect("key just found");
                out.push(Some(key(&c.algorithm, &id, &json)));
                continue;
            }
            let fallback = state.fallback_keys.get_mut(&(
                c.user_id.clone(),
                c.device_id.clone(),
                c.algorithm.clone(),
            ));
            out.push(fallback.map(|(id, json, used)| {
                *used = true;
                key(&c.algorithm, id, json)
            }));
        }
        Ok(out)
    }

    async fn query_device_keys(
        &self,
        user_id: &UserId,
        device_ids: &[OwnedDeviceId],
    ) -> StoreResult<Vec<DeviceKeysRecord>> {
        let state = self.state();
        Ok(state
            .device_keys
            .iter()
            .filter(|((u, d), _)| u == user_id && (device_ids.is_empty() || device_ids.contains(d)))
            .map(|((u, d), json)| DeviceKeysRecord {
                device_id: d.clone(),
                keys: raw(json),
                display_name: state
                    .devices
                    .get(&(u.clone(), d.clone()))
                    .and_then(|r| r.display_name.clone()),
            })
            .collect())
    }

    async fn eager_share_fallback_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> StoreResult<Option<bool>> {
        Ok(self
            .state()
            .eager
            .get(&(user_id.to_owned(), device_id.to_owned()))
            .copied())
    }
}

#[async_trait]
impl ToDeviceStore for MemoryStore {
    async fn send_to_device(&self, batch: &ToDeviceBatch) -> StoreResult<bool> {
        let mut state = self.state();
        let txn = (
            batch.sender.clone(),
            batch.sender_device.clone(),
            batch.txn_id.clone(),
        );
        if !state.txns.insert(txn) {
            return Ok(false);
        }
        let pos = state.advance(None);
        state.federation.enqueue(&batch.outbound);
        for (user, device, content) in &batch.messages {
            state.inbox.insert(
                (user.clone(), device.clone(), pos),
                (
                    batch.sender.clone(),
                    batch.event_type.clone(),
                    content.get().to_owned(),
                ),
            );
        }
        Ok(true)
    }

    async fn to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        after: u64,
        limit: usize,
    ) -> StoreResult<Vec<ToDeviceRecord>> {
        let state = self.state();
        Ok(state
            .inbox
            .iter()
            .filter(|((u, d, pos), _)| u == user_id && d == device_id && *pos > after)
            .take(limit)
            .map(
                |((_, _, pos), (sender, event_type, content))| ToDeviceRecord {
                    pos: *pos,
                    sender: sender.clone(),
                    event_type: event_type.clone(),
                    content: raw(content),
                },
            )
            .collect())
    }

    async fn delete_to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        up_to: u64,
    ) -> StoreResult<()> {
        self.state()
            .inbox
            .retain(|(u, d, pos), _| u != user_id || d != device_id || *pos > up_to);
        Ok(())
    }
}

#[async_trait]
impl SyncStore for MemoryStore {
    async fn current_position(&self) -> StoreResult<u64> {
        Ok(self.state().pos)
    }

    async fn mark_device_list_changed(&self, user_id: &UserId) -> StoreResult<u64> {
        Ok(self.state().advance(Some(user_id)))
    }

    async fn device_list_changes(
        &self,
        user_id: &UserId,
        after: u64,
        up_to: u64,
    ) -> StoreResult<Vec<OwnedUserId>> {
        let mates = self.room_mates(user_id).await?;
        let state = self.state();
        let mut users: Vec<OwnedUserId> = state
            .device_list_changes
            .iter()
            .filter(|(pos, u)| *pos > after && *pos <= up_to && mates.contains(u))
            .map(|(_, u)| u.clone())
            .collect();
        users.sort();
        users.dedup();
        Ok(users)
    }

    async fn account_data_changes(
        &self,
        user_id: &UserId,
        after: u64,
        up_to: u64,
    ) -> StoreResult<Vec<(String, Box<RawValue>)>> {
        let state = self.state();
        Ok(state
            .account_data
            .iter()
            .filter(|((u, _), (_, pos))| u == user_id && *pos > after && *pos <= up_to)
            .map(|((_, t), (json, _))| (t.clone(), raw(json)))
            .collect())
    }
}

#[async_trait]
impl CrossSigningStore for MemoryStore {
    async fn cross_signing_keys(
        &self,
        user_id: &UserId,
    ) -> StoreResult<Vec<(KeyUsage, Box<RawValue>)>> {
        let state = self.state();
        Ok(state
            .cross_signing
            .iter()
            .filter(|((u, _), _)| u == user_id)
            .map(|((_, usage), json)| (*usage, raw(json)))
            .collect())
    }

    async fn set_cross_signing_keys(
        &self,
        user_id: &UserId,
        keys: &[(KeyUsage, Box<RawValue>)],
    ) -> StoreResult<()> {
        let mut state = self.state();
        for (usage, key) in keys {
            state
                .cross_signing
                .insert((user_id.to_owned(), *usage), key.get().to_owned());
        }
        state.device_list_changed(user_id, &[CROSS_SIGNING_KEYS]);
        Ok(())
    }

    async fn add_key_signatures(&self, signatures: &[KeySignature]) -> StoreResult<()> {
        let mut state = self.state();
        for sig in signatures {
            state.key_signatures.retain(|s| {
                !(s.target_user == sig.target_user
                    && s.target_key == sig.target_key
                    && s.signer_user == sig.signer_user
                    && s.signer_key_id == sig.signer_key_id)
            });
            state.key_signatures.push(sig.clone());
            // Other servers hear of signatures on a user's own keys: on a device's keys as a
            // device-list update, on the master key as a cross-signing update.
            let own = sig.signer_user == sig.target_user;
            let device = ruma::OwnedDeviceId::from(sig.target_key.as_str());
            let announce = if !own {
                ""
            } else if state
                .devices
                .contains_key(&(sig.target_user.clone(), device))
            {
                sig.target_key.as_str()
            } else {
                CROSS_SIGNING_KEYS
            };
            let announce: &[&str] = if own { &[announce] } else { &[] };
            state.device_list_changed(&sig.target_user, announce);
        }
        Ok(())
    }

    async fn key_signatures(&self, target_user: &UserId) -> StoreResult<Vec<KeySignature>> {
        Ok(self
            .state()
            .key_signatures
            .iter()
            .filter(|s| s.target_user == target_user)
            .cloned()
            .collect())
    }
}
