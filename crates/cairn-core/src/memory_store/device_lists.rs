//! The in-memory device-list outbox and remote device-list cache.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use ruma::{OwnedServerName, OwnedUserId, RoomId, ServerName, UserId};
use serde_json::value::RawValue;

use super::{MemoryStore, State, raw};
use crate::store::*;

#[derive(Default)]
pub(super) struct DeviceListState {
    /// `(destination, user, device)` → stream_id.
    outbox: BTreeMap<(OwnedServerName, OwnedUserId, String), u64>,
    sent: BTreeMap<(OwnedServerName, OwnedUserId), u64>,
    /// user → (stream_id, stale, devices by ID, master key, self-signing key).
    remote: BTreeMap<OwnedUserId, RemoteEntry>,
}

#[derive(Clone, Default)]
struct RemoteEntry {
    stream_id: u64,
    stale: bool,
    recheck: bool,
    fetched_ms: u64,
    devices: BTreeMap<String, String>,
    master_key: Option<String>,
    self_signing_key: Option<String>,
}

impl State {
    /// Records a device-list change of `user_id` at a new position and, for each of
    /// `announce` (device IDs or [`CROSS_SIGNING_KEYS`]), an announcement at a position of its
    /// own to every other server sharing a room with the user.
    pub(super) fn device_list_changed(&mut self, user_id: &UserId, announce: &[&str]) -> u64 {
        let pos = self.advance(Some(user_id));
        let servers = self.rooms.servers_sharing(user_id, None);
        for (i, device) in announce.iter().enumerate() {
            let stream_id = if i == 0 { pos } else { self.advance(None) };
            for server in &servers {
                self.device_lists.outbox.insert(
                    (server.clone(), user_id.to_owned(), (*device).to_owned()),
                    stream_id,
                );
            }
        }
        pos
    }

    /// Owes every server sharing a room with `user_id` an update of `device_id`, without a local
    /// device-list change.
    pub(super) fn owe_update(&mut self, user_id: &UserId, device_id: &str) {
        let stream_id = self.advance(None);
        for server in self.rooms.servers_sharing(user_id, None) {
            self.device_lists.outbox.insert(
                (server, user_id.to_owned(), device_id.to_owned()),
                stream_id,
            );
        }
    }

    /// Owes `destination` an announcement of every device and the cross-signing keys of
    /// `user_id`.
    pub(super) fn announce_all(&mut self, destination: &ServerName, user_id: &UserId) {
        let mut devices: Vec<String> = self
            .devices
            .keys()
            .filter(|(u, _)| u == user_id)
            .map(|(_, d)| d.to_string())
            .collect();
        if self
            .cross_signing
            .contains_key(&(user_id.to_owned(), KeyUsage::Master))
        {
            devices.push(CROSS_SIGNING_KEYS.to_owned());
        }
        for device in devices {
            let stream_id = self.advance(None);
            self.device_lists.outbox.insert(
                (destination.to_owned(), user_id.to_owned(), device),
                stream_id,
            );
        }
    }

    pub(super) fn device_list_destinations(&self) -> BTreeSet<OwnedServerName> {
        self.device_lists
            .outbox
            .keys()
            .map(|(d, _, _)| d.clone())
            .collect()
    }
}

#[async_trait]
impl DeviceListStore for MemoryStore {
    async fn pending_device_updates(
        &self,
        destination: &ServerName,
        limit: usize,
    ) -> StoreResult<Vec<DeviceUpdate>> {
        let state = self.state();
        let lists = &state.device_lists;
        let mut updates: Vec<DeviceUpdate> = lists
            .outbox
            .iter()
            .filter(|((d, _, _), _)| d == destination)
            .map(|((d, user, device), stream_id)| DeviceUpdate {
                user_id: user.clone(),
                device_id: device.clone(),
                stream_id: *stream_id,
                prev_sent: lists.sent.get(&(d.clone(), user.clone())).copied(),
            })
            .collect();
        updates.sort_by_key(|u| u.stream_id);
        updates.truncate(limit);
        Ok(updates)
    }

    async fn device_updates_delivered(
        &self,
        destination: &ServerName,
        delivered: &[DeviceUpdate],
    ) -> StoreResult<()> {
        let mut state = self.state();
        let lists = &mut state.device_lists;
        for update in delivered {
            let key = (
                destination.to_owned(),
                update.user_id.clone(),
                update.device_id.clone(),
            );
            if lists.outbox.get(&key) == Some(&update.stream_id) {
                lists.outbox.remove(&key);
            }
            if update.device_id != CROSS_SIGNING_KEYS {
                let sent = lists
                    .sent
                    .entry((destination.to_owned(), update.user_id.clone()))
                    .or_default();
                *sent = (*sent).max(update.stream_id);
            }
        }
        Ok(())
    }

    async fn servers_sharing_rooms(
        &self,
        user_id: &UserId,
        except_room: &RoomId,
    ) -> StoreResult<Vec<OwnedServerName>> {
        let state = self.state();
        Ok(state
            .rooms
            .servers_sharing(user_id, Some(except_room))
            .into_iter()
            .collect())
    }

    async fn shares_room_with_server(
        &self,
        user_id: &UserId,
        server: &ServerName,
    ) -> StoreResult<bool> {
        let state = self.state();
        let rooms = &state.rooms;
        Ok(rooms
            .members_of_rooms_of(user_id)
            .any(|u| u.server_name() == server))
    }

    async fn remote_device_list(&self, user_id: &UserId) -> StoreResult<Option<RemoteDeviceList>> {
        let state = self.state();
        Ok(state
            .device_lists
            .remote
            .get(user_id)
            .map(|e| RemoteDeviceList {
                user_id: user_id.to_owned(),
                stream_id: e.stream_id,
                stale: e.stale,
                devices: e.devices.values().map(|d| raw(d)).collect(),
                master_key: e.master_key.as_deref().map(raw),
                self_signing_key: e.self_signing_key.as_deref().map(raw),
            }))
    }

    async fn apply_remote_device_update(
        &self,
        user_id: &UserId,
        device_id: &str,
        content: Option<&RawValue>,
        stream_id: u64,
        stale: bool,
    ) -> StoreResult<u64> {
        let mut state = self.state();
        let entry = state
            .device_lists
            .remote
            .entry(user_id.to_owned())
            .or_default();
        match content {
            Some(content) => {
                entry
                    .devices
                    .insert(device_id.to_owned(), content.get().to_owned());
            }
            None => {
                entry.devices.remove(device_id);
            }
        }
        entry.stream_id = stream_id;
        entry.stale = stale;
        Ok(state.advance(Some(user_id)))
    }

    async fn replace_remote_device_list(
        &self,
        list: &RemoteDeviceList,
    ) -> StoreResult<Option<u64>> {
        let mut state = self.state();
        if let Some(cached) = state.device_lists.remote.get(&list.user_id)
            && !cached.stale
            && cached.stream_id > list.stream_id
        {
            return Ok(None);
        }
        let devices = list
            .devices
            .iter()
            .filter_map(|d| {
                let id = serde_json::from_str::<serde_json::Value>(d.get()).ok()?["device_id"]
                    .as_str()?
                    .to_owned();
                Some((id, d.get().to_owned()))
            })
            .collect();
        let (recheck, fetched_ms) = state
            .device_lists
            .remote
            .get(&list.user_id)
            .map_or((false, 0), |e| (e.recheck, e.fetched_ms));
        state.device_lists.remote.insert(
            list.user_id.clone(),
            RemoteEntry {
                stream_id: list.stream_id,
                stale: false,
                recheck,
                fetched_ms,
                devices,
                master_key: list.master_key.as_ref().map(|k| k.get().to_owned()),
                self_signing_key: list.self_signing_key.as_ref().map(|k| k.get().to_owned()),
            },
        );
        Ok(Some(state.advance(Some(&list.user_id))))
    }

    async fn set_remote_cross_signing_keys(
        &self,
        user_id: &UserId,
        master_key: Option<&RawValue>,
        self_signing_key: Option<&RawValue>,
    ) -> StoreResult<Option<u64>> {
        let mut state = self.state();
        let Some(entry) = state.device_lists.remote.get_mut(user_id) else {
            return Ok(None);
        };
        entry.master_key = master_key.map(|k| k.get().to_owned());
        entry.self_signing_key = self_signing_key.map(|k| k.get().to_owned());
        Ok(Some(state.advance(Some(user_id))))
    }

    async fn mark_remote_device_list_stale(&self, user_id: &UserId) -> StoreResult<()> {
        let mut state = self.state();
        state
            .device_lists
            .remote
            .entry(user_id.to_owned())
            .or_default()
            .stale = true;
        Ok(())
    }

    async fn devices_with_cached_fallback_keys(&self) -> StoreResult<u64> {
        let state = self.state();
        Ok(state
            .device_lists
            .remote
            .values()
            .flat_map(|e| e.devices.values())
            .filter(|d| d.contains(crate::e2ee::msc4081::UNSTABLE_FIELD))
            .count() as u64)
    }

    async fn stale_remote_device_lists(&self) -> StoreResult<Vec<OwnedUserId>> {
        let state = self.state();
        Ok(state
            .device_lists
            .remote
            .iter()
            .filter(|(_, e)| e.stale)
            .map(|(u, _)| u.clone())
            .collect())
    }

    async fn mark_remote_device_lists_for_recheck(
        &self,
        user_ids: &[OwnedUserId],
    ) -> StoreResult<()> {
        let mut state = self.state();
        for user_id in user_ids {
            if let Some(entry) = state.device_lists.remote.get_mut(user_id) {
                entry.recheck = true;
            }
        }
        Ok(())
    }

    async fn remote_device_lists_to_recheck(&self) -> StoreResult<Vec<OwnedUserId>> {
        let state = self.state();
        Ok(state
            .device_lists
            .remote
            .iter()
            .filter(|(_, e)| e.recheck)
            .map(|(u, _)| u.clone())
            .collect())
    }

    async fn remote_device_list_rechecked(&self, user_id: &UserId) -> StoreResult<()> {
        if let Some(entry) = self.state().device_lists.remote.get_mut(user_id) {
            entry.recheck = false;
        }
        Ok(())
    }

    async fn remote_device_list_fetched(&self, user_id: &UserId, at_ms: u64) -> StoreResult<()> {
        if let Some(entry) = self.state().device_lists.remote.get_mut(user_id) {
            entry.fetched_ms = at_ms;
        }
        Ok(())
    }

    async fn remote_device_lists_to_refresh(
        &self,
        before_ms: u64,
        limit: usize,
    ) -> StoreResult<Vec<OwnedUserId>> {
        let state = self.state();
        let mut due: Vec<(u64, OwnedUserId)> = state
            .device_lists
            .remote
            .iter()
            .filter(|(_, e)| {
                e.fetched_ms < before_ms
                    && e.devices
                        .values()
                        .any(|d| d.contains(crate::e2ee::msc4081::UNSTABLE_FIELD))
            })
            .map(|(u, e)| (e.fetched_ms, u.clone()))
            .collect();
        due.sort();
        Ok(due.into_iter().take(limit).map(|(_, u)| u).collect())
    }

    async fn forget_remote_device_list(&self, user_id: &UserId) -> StoreResult<()> {
        self.state().device_lists.remote.remove(user_id);
        Ok(())
    }
}
