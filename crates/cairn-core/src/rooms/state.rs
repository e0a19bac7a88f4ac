//! Room state at any event. The state after each event is recorded as a group of changes on
//! the group before it; where the room forked, the states after the fork's tips are merged
//! with state resolution (ruma-state-res, the room version's algorithm). The room's current
//! state is kept equal to the resolved state after its forward extremities.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ruma::state_res::utils::event_id_set::EventIdSet;
use ruma::{EventId, OwnedEventId, RoomId, RoomVersionId};

use super::pdu::{self, Pdu};
use crate::Homeserver;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{StateAfter, StateEntry};

/// A room state: `(type, state_key)` to event ID.
pub(crate) type StateMap = BTreeMap<(String, String), OwnedEventId>;

/// The state before an event, and the stored group it is, if it is exactly one.
#[derive(Debug, Clone, Default)]
pub(crate) struct StateBefore {
    pub(crate) map: StateMap,
    pub(crate) group: Option<u64>,
}

impl StateBefore {
    /// The state after `pdu` and how to record it.
    pub(crate) fn after(&self, pdu: &Pdu) -> (StateMap, StateAfter) {
        let mut map = self.map.clone();
        let changes: Vec<StateEntry> = match &pdu.state_key {
            Some(key) => {
                map.insert((pdu.kind_str(), key.clone()), pdu.event_id.clone());
                vec![(pdu.kind_str(), key.clone(), pdu.event_id.clone())]
            }
            None => Vec::new(),
        };
        let record = match self.group {
            Some(group) if changes.is_empty() => StateAfter::Group(group),
            Some(group) => StateAfter::New {
                parent: Some(group),
                changes,
            },
            None => StateAfter::New {
                parent: None,
                changes: entries(&map),
            },
        };
        (map, record)
    }
}

/// The entries of a state map.
pub(crate) fn entries(map: &StateMap) -> Vec<StateEntry> {
    map.iter()
        .map(|((kind, key), id)| (kind.clone(), key.clone(), id.clone()))
        .collect()
}

fn to_map(entries: Vec<StateEntry>) -> StateMap {
    entries
        .into_iter()
        .map(|(kind, key, id)| ((kind, key), id))
        .collect()
}

impl Homeserver {
    /// The state after `event_id`, if it was recorded.
    pub(crate) async fn state_after_event(
        &self,
        event_id: &EventId,
    ) -> Result<Option<(u64, StateMap)>> {
        let Some(group) = self.store().state_group_of(event_id).await? else {
            return Ok(None);
        };
        Ok(Some((
            group,
            to_map(self.store().state_group(group).await?),
        )))
    }

    /// The state before an event whose parents are `prev_events`: the state after its one
    /// parent, or the resolution of the states after its parents. A parent whose state was
    /// never recorded (an event stored before states were) stands for the room's current state.
    pub(crate) async fn state_before(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        prev_events: &[OwnedEventId],
    ) -> Result<StateBefore> {
        let mut states = Vec::with_capacity(prev_events.len());
        let mut groups = BTreeSet::new();
        for prev in prev_events {
            match self.state_after_event(prev).await? {
                Some((group, map)) => {
                    if groups.insert(group) {
                        states.push(map);
                    }
                }
                None => states.push(self.current_state_map(room_id).await?),
            }
        }
        match (states.len(), groups.len()) {
            (0, _) => Ok(StateBefore::default()),
            (1, 1) => Ok(StateBefore {
                map: states.pop().unwrap_or_default(),
                group: groups.pop_first(),
            }),
            (1, _) => Ok(StateBefore {
                map: states.pop().unwrap_or_default(),
                group: None,
            }),
            _ => Ok(StateBefore {
                map: self.resolve_states(version, states, None).await?,
                group: None,
            }),
        }
    }

    /// How the state after `pdu` is recorded: cheaply, as the parent's group (plus the event if
    /// it is state), when it extends one event whose state was recorded; otherwise computed,
    /// and then also returned as a map.
    pub(crate) async fn place_state(
        &self,
        version: &RoomVersionId,
        pdu: &Pdu,
    ) -> Result<(StateAfter, Option<StateMap>)> {
        if let [prev] = pdu.prev_events.as_slice()
            && let Some(group) = self.store().state_group_of(prev).await?
        {
            let record = match &pdu.state_key {
                Some(key) => StateAfter::New {
                    parent: Some(group),
                    changes: vec![(pdu.kind_str(), key.clone(), pdu.event_id.clone())],
                },
                None => StateAfter::Group(group),
            };
            return Ok((record, None));
        }
        let before = self
            .state_before(&pdu.room_id, version, &pdu.prev_events)
            .await?;
        let (map, record) = before.after(pdu);
        Ok((record, Some(map)))
    }

    /// What becomes current when a local event built on all forward extremities is appended:
    /// the event itself if it is state and the room did not fork; else whatever differs from
    /// the resolved state after it.
    pub(crate) async fn local_current_changes(
        &self,
        pdu: &Pdu,
        after: Option<&StateMap>,
    ) -> Result<Vec<OwnedEventId>> {
        match after {
            Some(map) => self.current_changes(&pdu.room_id, map).await,
            None => Ok(pdu
                .state_key
                .is_some()
                .then(|| pdu.event_id.clone())
                .into_iter()
                .collect()),
        }
    }

    /// The room's current state as a map.
    pub(crate) async fn current_state_map(&self, room_id: &RoomId) -> Result<StateMap> {
        Ok(self
            .store()
            .current_state(room_id)
            .await?
            .into_iter()
            .filter_map(|e| {
                let key = e.pdu.state_key.clone()?;
                Some(((e.pdu.kind_str(), key), e.pdu.event_id))
            })
            .collect())
    }

    /// The events of `target` that differ from the room's current state: what must become
    /// current for the current state to be `target`.
    pub(crate) async fn current_changes(
        &self,
        room_id: &RoomId,
        target: &StateMap,
    ) -> Result<Vec<OwnedEventId>> {
        let current = self.current_state_map(room_id).await?;
        Ok(target
            .iter()
            .filter(|(key, id)| current.get(*key) != Some(*id))
            .map(|(_, id)| id.clone())
            .collect())
    }

    /// Merges forked states with the room version's state resolution algorithm. `pending` is
    /// an event the states may name that is not stored yet (the one being appended).
    pub(crate) async fn resolve_states(
        &self,
        version: &RoomVersionId,
        states: Vec<StateMap>,
        pending: Option<&Pdu>,
    ) -> Result<StateMap> {
        let rules = pdu::rules(version)?;
        let v2 = rules.state_res.v2_rules().ok_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                "room version without state resolution v2",
            )
        })?;
        // Every state event and its auth chain, in memory: the algorithm reads them by ID.
        let mut events: HashMap<OwnedEventId, Pdu> = HashMap::new();
        let mut auth_chains = Vec::with_capacity(states.len());
        for state in &states {
            let mut members = Vec::with_capacity(state.len());
            for id in state.values() {
                match pending {
                    Some(pdu) if pdu.event_id == *id => members.push(pdu.clone()),
                    _ => {
                        if let Some(event) = self.store().event(id).await? {
                            members.push(event.pdu);
                        }
                    }
                }
            }
            let chain = self.auth_chain(members.iter()).await?;
            auth_chains.push(
                chain
                    .iter()
                    .map(|e| e.event_id.clone())
                    .collect::<EventIdSet<OwnedEventId>>(),
            );
            for event in members.into_iter().chain(chain) {
                events.insert(event.event_id.clone(), event);
            }
        }
        let maps: Vec<ruma::state_res::StateMap<OwnedEventId>> = states
            .iter()
            .map(|state| {
                state
                    .iter()
                    .map(|((kind, key), id)| ((kind.as_str().into(), key.clone()), id.clone()))
                    .collect()
            })
            .collect();
        let resolved = ruma::state_res::resolve(
            &rules.authorization,
            v2,
            maps.iter(),
            auth_chains,
            |id| events.get(id).cloned(),
            |conflicted| Some(conflicted_subgraph(&events, conflicted)),
        )
        .map_err(|e| Error::new(ErrorKind::Internal, format!("state resolution failed: {e}")))?;
        Ok(resolved
            .into_iter()
            .map(|((kind, key), id)| ((kind.to_string(), key), id))
            .collect())
    }
}

/// The conflicted state subgraph (room version 12): the conflicted events and every event on
/// an auth path from one conflicted event to another.
fn conflicted_subgraph(
    events: &HashMap<OwnedEventId, Pdu>,
    conflicted: &ruma::state_res::StateMap<Vec<OwnedEventId>>,
) -> EventIdSet<OwnedEventId> {
    let targets: BTreeSet<&OwnedEventId> = conflicted.values().flatten().collect();
    // Whether an event reaches a conflicted event through its auth events (memoised).
    fn reaches<'a>(
        id: &'a OwnedEventId,
        events: &'a HashMap<OwnedEventId, Pdu>,
        targets: &BTreeSet<&OwnedEventId>,
        memo: &mut HashMap<&'a OwnedEventId, bool>,
    ) -> bool {
        if let Some(known) = memo.get(id) {
            return *known;
        }
        memo.insert(id, false);
        let found = events.get(id).is_some_and(|e| {
            e.auth_events
                .iter()
                .any(|a| targets.contains(a) || reaches(a, events, targets, memo))
        });
        memo.insert(id, found);
        found
    }
    let mut memo = HashMap::new();
    let mut subgraph: EventIdSet<OwnedEventId> = EventIdSet::new();
    let mut todo: Vec<&OwnedEventId> = targets.iter().copied().collect();
    let mut seen = BTreeSet::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        if targets.contains(id) || reaches(id, events, &targets, &mut memo) {
            subgraph.insert(id.clone());
        }
        if let Some(event) = events.get(id) {
            todo.extend(event.auth_events.iter());
        }
    }
    subgraph
}
