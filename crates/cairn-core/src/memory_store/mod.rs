//! An in-memory [`Store`](crate::Store) for the rules' unit tests.
//!
//! It keeps the same contract as the SQL stores (each call atomic, conflicts reported as
//! [`StoreError::Conflict`]) under one mutex. It is not durable and not for production.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, ServerName, UserId};
use serde_json::value::RawValue;

use crate::store::*;

mod device_lists;
mod e2ee;
mod federation;
mod rooms;

#[derive(Default)]
struct State {
    pos: u64,
    device_keys: BTreeMap<(OwnedUserId, OwnedDeviceId), String>,
    one_time_keys: BTreeMap<(OwnedUserId, OwnedDeviceId, String, u64), (String, String)>,
    next_otk: u64,
    fallback_keys: BTreeMap<(OwnedUserId, OwnedDeviceId, String), (String, String, bool)>,
    eager: BTreeMap<(OwnedUserId, OwnedDeviceId), bool>,
    device_list_changes: Vec<(u64, OwnedUserId)>,
    inbox: BTreeMap<(OwnedUserId, OwnedDeviceId, u64), (OwnedUserId, String, String)>,
    txns: std::collections::BTreeSet<(OwnedUserId, OwnedDeviceId, String)>,
    rooms: rooms::Rooms,
    cross_signing: BTreeMap<(OwnedUserId, KeyUsage), String>,
    key_signatures: Vec<KeySignature>,
    users: BTreeMap<OwnedUserId, (UserRecord, Profile)>,
    devices: BTreeMap<(OwnedUserId, OwnedDeviceId), DeviceRecord>,
    tokens: BTreeMap<String, (OwnedUserId, OwnedDeviceId)>,
    uia: BTreeMap<String, UiaSessionRecord>,
    account_data: BTreeMap<(OwnedUserId, String), (String, u64)>,
    filters: BTreeMap<(OwnedUserId, String), String>,
    next_filter: u64,
    signing_key: Option<SigningKeyRecord>,
    remote_keys: BTreeMap<(String, String), RemoteKey>,
    pub(crate) federation: federation::FederationState,
    device_lists: device_lists::DeviceListState,
}

/// The in-memory store.
#[derive(Default)]
pub struct MemoryStore(Mutex<State>);

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock can only come from a bug in a test; keep going.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// The next stream position, recording a device-list change of `user_id` at it if given.
    fn advance(&mut self, changed_user: Option<&UserId>) -> u64 {
        self.pos += 1;
        if let Some(user) = changed_user {
            self.device_list_changes.push((self.pos, user.to_owned()));
        }
        self.pos
    }

    fn remove_device(&mut self, user_id: &UserId, device_id: &DeviceId) -> bool {
        let key = (user_id.to_owned(), device_id.to_owned());
        let existed = self.devices.remove(&key).is_some();
        self.device_keys.remove(&key);
        self.eager.remove(&key);
        self.one_time_keys
            .retain(|(u, d, _, _), _| u != user_id || d != device_id);
        self.fallback_keys
            .retain(|(u, d, _), _| u != user_id || d != device_id);
        self.inbox
            .retain(|(u, d, _), _| u != user_id || d != device_id);
        self.tokens
            .retain(|_, (u, d)| u != user_id || d != device_id);
        existed
    }
}

fn add_device(state: &mut State, device: &NewDevice) {
    let key = (device.user_id.clone(), device.device_id.clone());
    if let std::collections::btree_map::Entry::Vacant(slot) = state.devices.entry(key) {
        slot.insert(DeviceRecord {
            device_id: device.device_id.clone(),
            display_name: device.display_name.clone(),
            last_seen_ms: None,
            last_seen_ip: None,
        });
        state.device_list_changed(&device.user_id, &[device.device_id.as_str()]);
    }
    state.tokens.insert(
        device.token_hash.clone(),
        (device.user_id.clone(), device.device_id.clone()),
    );
}

fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).expect("stored JSON is valid")
}

#[async_trait]
impl AccountStore for MemoryStore {
    async fn create_user(&self, user: &NewUser, device: Option<&NewDevice>) -> StoreResult<()> {
        let mut state = self.state();
        if state.users.contains_key(&user.user_id) {
            return Err(StoreError::Conflict(user.user_id.to_string()));
        }
        let record = UserRecord {
            user_id: user.user_id.clone(),
            password_hash: user.password_hash.clone(),
            created_ms: user.created_ms,
        };
        let profile = Profile {
            displayname: user.displayname.clone(),
            avatar_url: None,
        };
        state.users.insert(user.user_id.clone(), (record, profile));
        if let Some(device) = device {
            add_device(&mut state, device);
        }
        Ok(())
    }

    async fn user(&self, user_id: &UserId) -> StoreResult<Option<UserRecord>> {
        Ok(self.state().users.get(user_id).map(|(u, _)| u.clone()))
    }

    async fn set_password_hash(&self, user_id: &UserId, hash: &str) -> StoreResult<()> {
        if let Some((user, _)) = self.state().users.get_mut(user_id) {
            user.password_hash = Some(hash.to_owned());
        }
        Ok(())
    }
}

#[async_trait]
impl DeviceStore for MemoryStore {
    async fn add_device_token(&self, device: &NewDevice) -> StoreResult<()> {
        add_device(&mut self.state(), device);
        Ok(())
    }

    async fn token_owner(&self, token_hash: &str) -> StoreResult<Option<TokenOwner>> {
        let state = self.state();
        Ok(state
            .tokens
            .get(token_hash)
            .map(|(user_id, device_id)| TokenOwner {
                user_id: user_id.clone(),
                device_id: device_id.clone(),
                last_seen_ms: state
                    .devices
                    .get(&(user_id.clone(), device_id.clone()))
                    .and_then(|d| d.last_seen_ms),
            }))
    }

    async fn touch_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        now_ms: u64,
        ip: Option<&str>,
    ) -> StoreResult<()> {
        if let Some(d) = self
            .state()
            .devices
            .get_mut(&(user_id.to_owned(), device_id.to_owned()))
        {
            d.last_seen_ms = Some(now_ms);
            d.last_seen_ip = ip.map(ToOwned::to_owned);
        }
        Ok(())
    }

    async fn devices(&self, user_id: &UserId) -> StoreResult<Vec<DeviceRecord>> {
        let state = self.state();
        Ok(state
            .devices
            .iter()
            .filter(|((u, _), _)| u == user_id)
            .map(|(_, d)| d.clone())
            .collect())
    }

    async fn device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> StoreResult<Option<DeviceRecord>> {
        Ok(self
            .state()
            .devices
            .get(&(user_id.to_owned(), device_id.to_owned()))
            .cloned())
    }

    async fn set_device_display_name(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        display_name: Option<&str>,
    ) -> StoreResult<bool> {
        let mut state = self.state();
        let Some(d) = state
            .devices
            .get_mut(&(user_id.to_owned(), device_id.to_owned()))
        else {
            return Ok(false);
        };
        d.display_name = display_name.map(ToOwned::to_owned);
        state.advance(Some(user_id));
        Ok(true)
    }

    async fn delete_devices(
        &self,
        user_id: &UserId,
        device_ids: &[OwnedDeviceId],
    ) -> StoreResult<()> {
        let mut state = self.state();
        let mut removed = false;
        for device_id in device_ids {
            removed |= state.remove_device(user_id, device_id);
        }
        if removed {
            let ids: Vec<&str> = device_ids.iter().map(|d| d.as_str()).collect();
            state.device_list_changed(user_id, &ids);
        }
        Ok(())
    }

    async fn delete_all_devices(&self, user_id: &UserId) -> StoreResult<()> {
        let devices: Vec<OwnedDeviceId> = self
            .state()
            .devices
            .keys()
            .filter(|(u, _)| u == user_id)
            .map(|(_, d)| d.clone())
            .collect();
        self.delete_devices(user_id, &devices).await
    }
}

#[async_trait]
impl UiaStore for MemoryStore {
    async fn create_uia_session(
        &self,
        session: &UiaSessionRecord,
        expire_before_ms: u64,
    ) -> StoreResult<()> {
        let mut state = self.state();
        state.uia.retain(|_, s| s.created_ms >= expire_before_ms);
        state
            .uia
            .insert(session.session_id.clone(), session.clone());
        Ok(())
    }

    async fn uia_session(&self, session_id: &str) -> StoreResult<Option<UiaSessionRecord>> {
        Ok(self.state().uia.get(session_id).cloned())
    }

    async fn delete_uia_session(&self, session_id: &str) -> StoreResult<()> {
        self.state().uia.remove(session_id);
        Ok(())
    }
}

#[async_trait]
impl UserDataStore for MemoryStore {
    async fn profile(&self, user_id: &UserId) -> StoreResult<Option<Profile>> {
        Ok(self.state().users.get(user_id).map(|(_, p)| p.clone()))
    }

    async fn set_displayname(
        &self,
        user_id: &UserId,
        displayname: Option<&str>,
    ) -> StoreResult<bool> {
        let mut state = self.state();
        let Some((_, profile)) = state.users.get_mut(user_id) else {
            return Ok(false);
        };
        profile.displayname = displayname.map(ToOwned::to_owned);
        Ok(true)
    }

    async fn set_avatar_url(&self, user_id: &UserId, url: Option<&str>) -> StoreResult<bool> {
        let mut state = self.state();
        let Some((_, profile)) = state.users.get_mut(user_id) else {
            return Ok(false);
        };
        profile.avatar_url = url.map(ToOwned::to_owned);
        Ok(true)
    }

    async fn account_data(
        &self,
        user_id: &UserId,
        data_type: &str,
    ) -> StoreResult<Option<Box<RawValue>>> {
        Ok(self
            .state()
            .account_data
            .get(&(user_id.to_owned(), data_type.to_owned()))
            .map(|(s, _)| raw(s)))
    }

    async fn put_account_data(
        &self,
        user_id: &UserId,
        data_type: &str,
        content: &RawValue,
    ) -> StoreResult<()> {
        let mut state = self.state();
        let pos = state.advance(None);
        state.account_data.insert(
            (user_id.to_owned(), data_type.to_owned()),
            (content.get().to_owned(), pos),
        );
        Ok(())
    }

    async fn create_filter(&self, user_id: &UserId, filter: &RawValue) -> StoreResult<String> {
        let mut state = self.state();
        state.next_filter += 1;
        let id = state.next_filter.to_string();
        state
            .filters
            .insert((user_id.to_owned(), id.clone()), filter.get().to_owned());
        Ok(id)
    }

    async fn filter(
        &self,
        user_id: &UserId,
        filter_id: &str,
    ) -> StoreResult<Option<Box<RawValue>>> {
        Ok(self
            .state()
            .filters
            .get(&(user_id.to_owned(), filter_id.to_owned()))
            .map(|s| raw(s)))
    }
}

#[async_trait]
impl ServerKeyStore for MemoryStore {
    async fn signing_key_or_insert(
        &self,
        candidate: &SigningKeyRecord,
    ) -> StoreResult<SigningKeyRecord> {
        Ok(self
            .state()
            .signing_key
            .get_or_insert_with(|| candidate.clone())
            .clone())
    }

    async fn store_remote_keys(&self, server: &ServerName, keys: &[RemoteKey]) -> StoreResult<()> {
        let mut state = self.state();
        for key in keys {
            state
                .remote_keys
                .insert((server.to_string(), key.key_id.clone()), key.clone());
        }
        Ok(())
    }

    async fn remote_key(
        &self,
        server: &ServerName,
        key_id: &str,
    ) -> StoreResult<Option<RemoteKey>> {
        Ok(self
            .state()
            .remote_keys
            .get(&(server.to_string(), key_id.to_owned()))
            .cloned())
    }
}
