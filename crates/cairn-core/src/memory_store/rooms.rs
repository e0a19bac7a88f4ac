//! The in-memory store's rooms.

use std::collections::BTreeMap;

use async_trait::async_trait;
use ruma::{
    DeviceId, EventId, OwnedDeviceId, OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedUserId,
    RoomAliasId, RoomId, RoomVersionId, UserId,
};

use super::MemoryStore;
use crate::rooms::pdu::Pdu;
use crate::store::*;

#[derive(Default)]
pub(super) struct Rooms {
    versions: BTreeMap<OwnedRoomId, RoomVersionId>,
    events: BTreeMap<u64, Pdu>,
    by_id: BTreeMap<OwnedEventId, u64>,
    state: BTreeMap<(OwnedRoomId, String, String), u64>,
    memberships: BTreeMap<(OwnedRoomId, OwnedUserId), (String, u64)>,
    extremities: BTreeMap<OwnedRoomId, Vec<OwnedEventId>>,
    txns: BTreeMap<(OwnedUserId, OwnedDeviceId, String), OwnedEventId>,
    aliases: BTreeMap<OwnedRoomAliasId, (OwnedRoomId, OwnedUserId)>,
    /// Positions of events kept out of timelines.
    outliers: std::collections::BTreeSet<u64>,
    invite_state: BTreeMap<(OwnedRoomId, OwnedUserId), String>,
    /// State groups, whole.
    groups: BTreeMap<u64, BTreeMap<(String, String), OwnedEventId>>,
    event_groups: BTreeMap<OwnedEventId, u64>,
}

impl Rooms {
    fn insert(&mut self, pdu: &Pdu, pos: u64) {
        self.events.insert(pos, pdu.clone());
        self.by_id.insert(pdu.event_id.clone(), pos);
    }

    fn make_current(&mut self, pdu: &Pdu, pos: u64) {
        if let Some(key) = &pdu.state_key {
            self.state
                .insert((pdu.room_id.clone(), pdu.kind_str(), key.clone()), pos);
            if let (Some(membership), Ok(user)) = (pdu.membership(), UserId::parse(key.as_str())) {
                self.memberships
                    .insert((pdu.room_id.clone(), user), (membership, pos));
            }
        }
    }

    /// Records the state after the event stored at `pos`.
    fn record_state(&mut self, pdu: &Pdu, pos: u64, after: &StateAfter) {
        let group = match after {
            StateAfter::Group(group) => *group,
            StateAfter::New { parent, changes } => {
                let mut map = parent
                    .and_then(|p| self.groups.get(&p).cloned())
                    .unwrap_or_default();
                for (kind, key, id) in changes {
                    map.insert((kind.clone(), key.clone()), id.clone());
                }
                self.groups.insert(pos, map);
                pos
            }
        };
        self.event_groups.insert(pdu.event_id.clone(), group);
    }

    fn stream_event(&self, pos: u64) -> StreamEvent {
        StreamEvent {
            pos,
            pdu: self.events[&pos].clone(),
        }
    }

    fn joined(&self, room_id: &RoomId, user_id: &UserId) -> bool {
        self.memberships
            .get(&(room_id.to_owned(), user_id.to_owned()))
            .is_some_and(|(m, _)| m == "join")
    }

    /// Servers other than `user_id`'s with a member joined to a room `user_id` is joined to.
    pub(super) fn servers_sharing(
        &self,
        user_id: &UserId,
        except: Option<&RoomId>,
    ) -> std::collections::BTreeSet<ruma::OwnedServerName> {
        let rooms: Vec<OwnedRoomId> = self
            .rooms_of(user_id)
            .into_iter()
            .filter(|r| Some(r.as_ref()) != except)
            .collect();
        self.memberships
            .iter()
            .filter(|((r, u), (m, _))| {
                m == "join" && u.server_name() != user_id.server_name() && rooms.contains(r)
            })
            .map(|((_, u), _)| u.server_name().to_owned())
            .collect()
    }

    /// Users joined to a room `user_id` is joined to (`user_id` included).
    pub(super) fn members_of_rooms_of<'a>(
        &'a self,
        user_id: &UserId,
    ) -> impl Iterator<Item = &'a OwnedUserId> + 'a {
        let rooms = self.rooms_of(user_id);
        self.memberships
            .iter()
            .filter(move |((r, _), (m, _))| m == "join" && rooms.contains(r))
            .map(|((_, u), _)| u)
    }

    fn rooms_of(&self, user_id: &UserId) -> Vec<OwnedRoomId> {
        self.memberships
            .iter()
            .filter(|((_, u), (m, _))| u == user_id && m == "join")
            .map(|((r, _), _)| r.clone())
            .collect()
    }
}

#[async_trait]
impl RoomStore for MemoryStore {
    async fn state_group_of(&self, event_id: &ruma::EventId) -> StoreResult<Option<u64>> {
        Ok(self.state().rooms.event_groups.get(event_id).copied())
    }

    async fn state_group(&self, group: u64) -> StoreResult<Vec<StateEntry>> {
        let state = self.state();
        Ok(state
            .rooms
            .groups
            .get(&group)
            .into_iter()
            .flatten()
            .map(|((kind, key), id)| (kind.clone(), key.clone(), id.clone()))
            .collect())
    }

    async fn room_version(&self, room_id: &RoomId) -> StoreResult<Option<RoomVersionId>> {
        Ok(self.state().rooms.versions.get(room_id).cloned())
    }

    async fn forward_extremities(&self, room_id: &RoomId) -> StoreResult<(Vec<OwnedEventId>, u64)> {
        let state = self.state();
        let ids = state
            .rooms
            .extremities
            .get(room_id)
            .cloned()
            .unwrap_or_default();
        let depth = ids
            .iter()
            .filter_map(|id| state.rooms.by_id.get(id))
            .map(|p| state.rooms.events[p].depth)
            .max()
            .unwrap_or(0);
        Ok((ids, depth))
    }

    async fn state_events(
        &self,
        room_id: &RoomId,
        keys: &[(String, String)],
    ) -> StoreResult<Vec<Pdu>> {
        let state = self.state();
        Ok(keys
            .iter()
            .filter_map(|(t, k)| {
                state
                    .rooms
                    .state
                    .get(&(room_id.to_owned(), t.clone(), k.clone()))
            })
            .map(|pos| state.rooms.events[pos].clone())
            .collect())
    }

    async fn current_state(&self, room_id: &RoomId) -> StoreResult<Vec<StreamEvent>> {
        let state = self.state();
        Ok(state
            .rooms
            .state
            .iter()
            .filter(|((r, _, _), _)| r == room_id)
            .map(|(_, pos)| state.rooms.stream_event(*pos))
            .collect())
    }

    async fn append_event(&self, event: &NewEvent) -> StoreResult<AppendOutcome> {
        let mut state = self.state();
        let pdu = &event.pdu;
        if let Some(txn) = &event.txn
            && let Some(id) = state.rooms.txns.get(txn)
        {
            return Ok(AppendOutcome::DuplicateTxn(id.clone()));
        }
        match &event.creates_room {
            Some(version) => {
                if state.rooms.versions.contains_key(&pdu.room_id) {
                    return Ok(AppendOutcome::ExtremitiesMoved);
                }
                state
                    .rooms
                    .versions
                    .insert(pdu.room_id.clone(), version.clone());
            }
            None => {
                let current = state
                    .rooms
                    .extremities
                    .get(&pdu.room_id)
                    .cloned()
                    .unwrap_or_default();
                if current != event.expected_extremities {
                    return Ok(AppendOutcome::ExtremitiesMoved);
                }
            }
        }
        let pos = state.advance(None);
        state.federation.enqueue(&event.outbound);
        for (server, user) in &event.announce {
            state.announce_all(server, user);
        }
        let rooms = &mut state.rooms;
        rooms.insert(pdu, pos);
        rooms.record_state(pdu, pos, &event.state_after);
        for id in &event.make_current {
            if let Some(at) = rooms.by_id.get(id).copied() {
                let current = rooms.events[&at].clone();
                rooms.make_current(&current, at);
            }
        }
        let tips = rooms.extremities.entry(pdu.room_id.clone()).or_default();
        tips.retain(|e| !pdu.prev_events.contains(e));
        tips.push(pdu.event_id.clone());
        if let Some(txn) = &event.txn {
            rooms.txns.insert(txn.clone(), pdu.event_id.clone());
        }
        Ok(AppendOutcome::Appended(pos))
    }

    async fn import_room(
        &self,
        version: &RoomVersionId,
        state_events: &[Pdu],
        auth_chain: &[Pdu],
        join: &NewEvent,
    ) -> StoreResult<u64> {
        let mut state = self.state();
        let room_id = join.pdu.room_id.clone();
        state
            .rooms
            .versions
            .insert(room_id.clone(), version.clone());
        for pdu in auth_chain.iter().chain(state_events) {
            let pos = match state.rooms.by_id.get(&pdu.event_id) {
                Some(pos) => *pos,
                None => {
                    let pos = state.advance(None);
                    state.rooms.insert(pdu, pos);
                    state.rooms.outliers.insert(pos);
                    pos
                }
            };
            if state_events.iter().any(|s| s.event_id == pdu.event_id) {
                state.rooms.make_current(pdu, pos);
            }
        }
        let pos = state.advance(None);
        state.federation.enqueue(&join.outbound);
        for (server, user) in &join.announce {
            state.announce_all(server, user);
        }
        state.rooms.insert(&join.pdu, pos);
        state.rooms.record_state(&join.pdu, pos, &join.state_after);
        state.rooms.make_current(&join.pdu, pos);
        state
            .rooms
            .extremities
            .insert(room_id, vec![join.pdu.event_id.clone()]);
        Ok(pos)
    }

    async fn store_remote_membership(
        &self,
        version: &RoomVersionId,
        invite: &Pdu,
        stripped_state: &str,
    ) -> StoreResult<u64> {
        let mut state = self.state();
        state
            .rooms
            .versions
            .entry(invite.room_id.clone())
            .or_insert_with(|| version.clone());
        let pos = match state.rooms.by_id.get(&invite.event_id) {
            Some(pos) => *pos,
            None => {
                let pos = state.advance(None);
                state.rooms.insert(invite, pos);
                state.rooms.outliers.insert(pos);
                state.rooms.make_current(invite, pos);
                pos
            }
        };
        if let Some(Ok(target)) = invite.state_key.as_deref().map(UserId::parse) {
            state
                .rooms
                .invite_state
                .insert((invite.room_id.clone(), target), stripped_state.to_owned());
        }
        Ok(pos)
    }

    async fn remote_invite_state(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> StoreResult<Option<String>> {
        Ok(self
            .state()
            .rooms
            .invite_state
            .get(&(room_id.to_owned(), user_id.to_owned()))
            .cloned())
    }

    async fn event(&self, event_id: &EventId) -> StoreResult<Option<StreamEvent>> {
        let state = self.state();
        Ok(state
            .rooms
            .by_id
            .get(event_id)
            .map(|pos| state.rooms.stream_event(*pos)))
    }

    async fn event_for_txn(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        txn_id: &str,
    ) -> StoreResult<Option<OwnedEventId>> {
        Ok(self
            .state()
            .rooms
            .txns
            .get(&(user_id.to_owned(), device_id.to_owned(), txn_id.to_owned()))
            .cloned())
    }

    async fn membership(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> StoreResult<Option<MembershipRecord>> {
        let state = self.state();
        Ok(state
            .rooms
            .memberships
            .get(&(room_id.to_owned(), user_id.to_owned()))
            .map(|(m, pos)| MembershipRecord {
                room_id: room_id.to_owned(),
                membership: m.clone(),
                pos: *pos,
            }))
    }

    async fn memberships(&self, user_id: &UserId) -> StoreResult<Vec<MembershipRecord>> {
        let state = self.state();
        Ok(state
            .rooms
            .memberships
            .iter()
            .filter(|((_, u), _)| u == user_id)
            .map(|((r, _), (m, pos))| MembershipRecord {
                room_id: r.clone(),
                membership: m.clone(),
                pos: *pos,
            })
            .collect())
    }

    async fn members_with(
        &self,
        room_id: &RoomId,
        membership: &str,
    ) -> StoreResult<Vec<OwnedUserId>> {
        let state = self.state();
        Ok(state
            .rooms
            .memberships
            .iter()
            .filter(|((r, _), (m, _))| r == room_id && m == membership)
            .map(|((_, u), _)| u.clone())
            .collect())
    }

    async fn room_events(
        &self,
        room_id: &RoomId,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<(Vec<StreamEvent>, bool)> {
        let state = self.state();
        let all: Vec<u64> = state
            .rooms
            .events
            .range(after + 1..=up_to)
            .filter(|(p, e)| e.room_id == room_id && !state.rooms.outliers.contains(p))
            .map(|(p, _)| *p)
            .collect();
        let limited = all.len() > limit;
        Ok((
            all[all.len().saturating_sub(limit)..]
                .iter()
                .map(|p| state.rooms.stream_event(*p))
                .collect(),
            limited,
        ))
    }

    async fn room_events_after(
        &self,
        room_id: &RoomId,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<Vec<StreamEvent>> {
        let state = self.state();
        Ok(state
            .rooms
            .events
            .range(after + 1..=up_to)
            .filter(|(p, e)| e.room_id == room_id && !state.rooms.outliers.contains(p))
            .take(limit)
            .map(|(p, _)| state.rooms.stream_event(*p))
            .collect())
    }

    async fn room_events_before(
        &self,
        room_id: &RoomId,
        before: u64,
        limit: usize,
    ) -> StoreResult<Vec<StreamEvent>> {
        let state = self.state();
        Ok(state
            .rooms
            .events
            .range(..before)
            .rev()
            .filter(|(p, e)| e.room_id == room_id && !state.rooms.outliers.contains(p))
            .take(limit)
            .map(|(p, _)| state.rooms.stream_event(*p))
            .collect())
    }

    async fn membership_changes(
        &self,
        user_id: &UserId,
        after: u64,
        up_to: u64,
    ) -> StoreResult<Vec<(OwnedRoomId, OwnedUserId, String)>> {
        let state = self.state();
        let mine: Vec<OwnedRoomId> = state
            .rooms
            .memberships
            .iter()
            .filter(|((_, u), _)| u == user_id)
            .map(|((r, _), _)| r.clone())
            .collect();
        Ok(state
            .rooms
            .events
            .range(after + 1..=up_to)
            .filter(|(_, e)| mine.contains(&e.room_id))
            .filter_map(|(_, e)| {
                let user = UserId::parse(e.state_key.as_deref()?).ok()?;
                Some((e.room_id.clone(), user, e.membership()?))
            })
            .collect())
    }

    async fn room_mates(&self, user_id: &UserId) -> StoreResult<Vec<OwnedUserId>> {
        let state = self.state();
        let rooms = state.rooms.rooms_of(user_id);
        let mut mates: Vec<OwnedUserId> = state
            .rooms
            .memberships
            .iter()
            .filter(|((r, _), (m, _))| rooms.contains(r) && m == "join")
            .map(|((_, u), _)| u.clone())
            .collect();
        mates.push(user_id.to_owned());
        mates.sort();
        mates.dedup();
        Ok(mates)
    }

    async fn share_a_room(&self, a: &UserId, b: &UserId) -> StoreResult<bool> {
        let state = self.state();
        Ok(state
            .rooms
            .rooms_of(a)
            .iter()
            .any(|r| state.rooms.joined(r, b)))
    }

    async fn create_alias(
        &self,
        alias: &RoomAliasId,
        room_id: &RoomId,
        creator: &UserId,
    ) -> StoreResult<bool> {
        let mut state = self.state();
        if state.rooms.aliases.contains_key(alias) {
            return Ok(false);
        }
        state
            .rooms
            .aliases
            .insert(alias.to_owned(), (room_id.to_owned(), creator.to_owned()));
        Ok(true)
    }

    async fn alias(&self, alias: &RoomAliasId) -> StoreResult<Option<(OwnedRoomId, OwnedUserId)>> {
        Ok(self.state().rooms.aliases.get(alias).cloned())
    }

    async fn delete_alias(&self, alias: &RoomAliasId) -> StoreResult<bool> {
        Ok(self.state().rooms.aliases.remove(alias).is_some())
    }
}
