//! Room history between servers. Served: one event (`/event`), the state before an event
//! (`/state`, `/state_ids`), older events (`/backfill`) and the events between two points
//! (`get_missing_events`), each only to a server with a member joined to the room. Fetched: when
//! an event arrives whose parents this server lacks, the events in between, from its sender.

use std::collections::{BTreeMap, BTreeSet};

use ruma::{EventId, OwnedEventId, RoomId, RoomVersionId, ServerName, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::pdu::Pdu;
use crate::Homeserver;
use crate::error::{Error, ErrorKind, Result};

/// Most events one `/backfill` answer carries.
const MAX_BACKFILL: usize = 100;
/// Most events asked for, or given, in one `get_missing_events`.
const MAX_MISSING: usize = 20;

/// The body of `POST /get_missing_events/{roomId}`.
#[derive(Debug, Deserialize)]
pub struct MissingEventsRequest {
    /// Events the asker has: the walk stops there.
    #[serde(default)]
    pub earliest_events: Vec<OwnedEventId>,
    /// Events whose missing ancestors are wanted.
    pub latest_events: Vec<OwnedEventId>,
    /// Most events to return (default 10).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Events shallower than this are left out.
    #[serde(default)]
    pub min_depth: Option<u64>,
}

fn json_of(pdu: &Pdu) -> Result<Value> {
    serde_json::from_str(&pdu.json).map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))
}

impl Homeserver {
    /// The room's version, if `origin` has a member joined to it.
    async fn history_access(&self, origin: &ServerName, room_id: &RoomId) -> Result<RoomVersionId> {
        let members = self.store().members_with(room_id, "join").await?;
        if !members.iter().any(|u| u.server_name() == origin) {
            return Err(Error::forbidden("Your server is not in that room"));
        }
        self.store()
            .room_version(room_id)
            .await?
            .ok_or_else(|| Error::not_found("Unknown room"))
    }

    /// `GET /_matrix/federation/v1/event/{eventId}`: an event, for a server with a member
    /// joined to its room (or one that was invited: its user is the event's target).
    pub async fn federation_event(&self, origin: &ServerName, event_id: &EventId) -> Result<Value> {
        let event = self
            .store()
            .event(event_id)
            .await?
            .ok_or_else(|| Error::not_found("Unknown event"))?
            .pdu;
        let invited_target = event
            .state_key
            .as_deref()
            .and_then(|k| UserId::parse(k).ok())
            .is_some_and(|u| u.server_name() == origin);
        if !invited_target {
            self.history_access(origin, &event.room_id).await?;
        }
        Ok(json!({
            "origin": self.config().server_name,
            "origin_server_ts": self.now_ms(),
            "pdus": [json_of(&event)?],
        }))
    }

    /// The state before `event_id` and its auth chain, for `/state` and `/state_ids`.
    async fn state_at(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<(Vec<Pdu>, Vec<Pdu>)> {
        let version = self.history_access(origin, room_id).await?;
        let event = self
            .store()
            .event(event_id)
            .await?
            .filter(|e| e.pdu.room_id == room_id)
            .ok_or_else(|| Error::not_found("Unknown event"))?
            .pdu;
        if self.store().state_group_of(event_id).await?.is_none() {
            return Err(Error::not_found(
                "The state at that event is not known here",
            ));
        }
        let before = self
            .state_before(room_id, &version, &event.prev_events)
            .await?;
        let mut state = Vec::with_capacity(before.map.len());
        for id in before.map.values() {
            if let Some(e) = self.store().event(id).await? {
                state.push(e.pdu);
            }
        }
        let chain = self.auth_chain(state.iter()).await?;
        Ok((state, chain))
    }

    /// `GET /_matrix/federation/v1/state_ids/{roomId}?event_id=`.
    pub async fn federation_state_ids(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Value> {
        let (state, chain) = self.state_at(origin, room_id, event_id).await?;
        let ids = |events: &[Pdu]| {
            events
                .iter()
                .map(|e| e.event_id.clone())
                .collect::<Vec<_>>()
        };
        Ok(json!({ "pdu_ids": ids(&state), "auth_chain_ids": ids(&chain) }))
    }

    /// `GET /_matrix/federation/v1/state/{roomId}?event_id=`.
    pub async fn federation_state(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Value> {
        let (state, chain) = self.state_at(origin, room_id, event_id).await?;
        let pdus = |events: &[Pdu]| events.iter().map(json_of).collect::<Result<Vec<_>>>();
        Ok(json!({ "pdus": pdus(&state)?, "auth_chain": pdus(&chain)? }))
    }

    /// Walks parents from `from` (included when `include_from`), deepest first, stopping at
    /// `stop`, below `min_depth`, and after `limit` events.
    async fn walk_back(
        &self,
        room_id: &RoomId,
        from: &[OwnedEventId],
        include_from: bool,
        stop: &BTreeSet<OwnedEventId>,
        min_depth: u64,
        limit: usize,
    ) -> Result<Vec<Pdu>> {
        let mut frontier: BTreeMap<(u64, OwnedEventId), Pdu> = BTreeMap::new();
        let mut seen: BTreeSet<OwnedEventId> = stop.clone();
        let mut found = Vec::new();
        let push = |pdu: Pdu, frontier: &mut BTreeMap<(u64, OwnedEventId), Pdu>| {
            if pdu.room_id == room_id && pdu.depth >= min_depth {
                frontier.insert((pdu.depth, pdu.event_id.clone()), pdu);
            }
        };
        for id in from {
            if let Some(event) = self.store().event(id).await? {
                seen.insert(id.clone());
                if include_from {
                    push(event.pdu, &mut frontier);
                } else {
                    for prev in &event.pdu.prev_events {
                        if seen.insert(prev.clone())
                            && let Some(p) = self.store().event(prev).await?
                        {
                            push(p.pdu, &mut frontier);
                        }
                    }
                }
            }
        }
        while found.len() < limit {
            let Some((_, pdu)) = frontier.pop_last() else {
                break;
            };
            for prev in &pdu.prev_events {
                if seen.insert(prev.clone())
                    && let Some(p) = self.store().event(prev).await?
                {
                    push(p.pdu, &mut frontier);
                }
            }
            found.push(pdu);
        }
        Ok(found)
    }

    /// `GET /_matrix/federation/v1/backfill/{roomId}?v=...&limit=`: `from` and the events
    /// before them, deepest first.
    pub async fn federation_backfill(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<Value> {
        self.history_access(origin, room_id).await?;
        let events = self
            .walk_back(
                room_id,
                from,
                true,
                &BTreeSet::new(),
                0,
                limit.clamp(1, MAX_BACKFILL),
            )
            .await?;
        Ok(json!({
            "origin": self.config().server_name,
            "origin_server_ts": self.now_ms(),
            "pdus": events.iter().map(json_of).collect::<Result<Vec<_>>>()?,
        }))
    }

    /// `POST /_matrix/federation/v1/get_missing_events/{roomId}`: ancestors of
    /// `latest_events` that are not `earliest_events` or older than them, oldest first.
    pub async fn federation_missing_events(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        req: MissingEventsRequest,
    ) -> Result<Value> {
        self.history_access(origin, room_id).await?;
        let stop: BTreeSet<OwnedEventId> = req.earliest_events.into_iter().collect();
        let limit = req.limit.unwrap_or(10).clamp(1, MAX_MISSING);
        let mut events = self
            .walk_back(
                room_id,
                &req.latest_events,
                false,
                &stop,
                req.min_depth.unwrap_or(0),
                limit,
            )
            .await?;
        events.reverse();
        Ok(json!({ "events": events.iter().map(json_of).collect::<Result<Vec<_>>>()? }))
    }
}
