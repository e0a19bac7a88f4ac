//! Rooms over federation, the resident side: other servers' users joining our rooms
//! (`make_join`, `send_join`) and room events arriving in transactions.
//!
//! Every event from another server is checked before it is stored: it must be signed by the
//! servers its room version requires with their published keys, its content hash must match,
//! its ID is recomputed from its content, its parents must be known here, and it must pass the
//! room version's authorisation rules against the room's current state. Events whose parents are
//! unknown are refused for now (fetching missing events is not built yet).

use std::collections::{BTreeMap, BTreeSet};

use ruma::events::TimelineEventType;
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedServerName, RoomId, RoomVersionId,
    ServerName, UserId,
};
use serde_json::{Value, json};

use super::pdu::{self, EventDraft, Pdu, Placement};
use super::state::StateMap;
use super::{APPEND_ATTEMPTS, check_auth};
use crate::Homeserver;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{AppendOutcome, NewEvent, StateAfter};

impl Homeserver {
    /// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`: a join event for `user_id` to
    /// sign, if `origin` may speak for that user, supports the room's version, and the join
    /// would be allowed now.
    pub async fn make_join(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        supported_versions: &[String],
    ) -> Result<Value> {
        self.membership_template(origin, room_id, user_id, "join", Some(supported_versions))
            .await
    }

    /// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`: a leave event for `user_id`
    /// (a member or an invitee declining) to sign.
    pub async fn make_leave(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> Result<Value> {
        self.membership_template(origin, room_id, user_id, "leave", None)
            .await
    }

    /// An unsigned membership event of `user_id`, if `origin` may speak for that user, supports
    /// the room's version (when it says which it supports), and the change is allowed now.
    async fn membership_template(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user_id: &UserId,
        membership: &str,
        supported_versions: Option<&[String]>,
    ) -> Result<Value> {
        if user_id.server_name() != origin {
            return Err(Error::forbidden(
                "The user does not belong to the requesting server",
            ));
        }
        let version = self.resident_room_version(room_id).await?;
        // Without `ver`, a server supports only version 1 (the spec's default).
        if let Some(supported) = supported_versions
            && !supported.iter().any(|v| v == version.as_str())
        {
            return Err(Error::new(
                ErrorKind::IncompatibleRoomVersion(version.to_string()),
                format!("Your server does not support room version {version}"),
            ));
        }
        let rules = pdu::rules(&version)?;
        let draft = EventDraft::state(
            "m.room.member",
            user_id.as_str(),
            json!({ "membership": membership }),
        );
        let (extremities, depth) = self.store().forward_extremities(room_id).await?;
        let kind = TimelineEventType::RoomMember;
        let content = pdu::raw(&draft.content);
        let auth_state = self
            .auth_state(
                room_id,
                &kind,
                user_id,
                Some(user_id.as_str()),
                &content,
                &rules,
            )
            .await?;
        let mut auth_ids: Vec<OwnedEventId> = auth_state
            .iter()
            .filter(|e| {
                rules.event_format.allow_room_create_in_auth_events
                    || e.kind != TimelineEventType::RoomCreate
            })
            .map(|e| e.event_id.clone())
            .collect();
        auth_ids.sort();
        let placement = Placement {
            room_id: Some(room_id),
            version: &version,
            sender: user_id,
            prev_events: &extremities,
            depth: depth + 1,
            auth_events: &auth_ids,
            now_ms: self.now_ms(),
        };
        let template = pdu::unsigned_event(&draft, &placement)?;
        // Would the change be allowed? Check the unsigned event as it stands.
        let as_pdu = pdu::from_signed(&template, &version, Some(room_id))?;
        check_auth(&rules, &as_pdu, &auth_state)?;
        Ok(json!({ "room_version": version, "event": template }))
    }

    /// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`: accepts `origin`'s signed
    /// join, appends it, sends it to the room's other servers, and answers with the room's
    /// state before the join and its authorisation chain.
    pub async fn send_join(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        event: CanonicalJsonObject,
    ) -> Result<Value> {
        let version = self.resident_room_version(room_id).await?;
        let pdu = self
            .membership_event(origin, room_id, event_id, &event, &version, "join")
            .await?;
        let state: Vec<Pdu> = self
            .store()
            .current_state(room_id)
            .await?
            .into_iter()
            .map(|e| e.pdu)
            .collect();
        self.append_remote(&pdu, &version, Some(origin)).await?;
        let auth_chain = self.auth_chain(state.iter().chain([&pdu])).await?;
        let as_json = |p: &Pdu| serde_json::from_str::<Value>(&p.json).unwrap_or(Value::Null);
        Ok(json!({
            "origin": self.config().server_name,
            "members_omitted": false,
            "state": state.iter().map(as_json).collect::<Vec<_>>(),
            "auth_chain": auth_chain.iter().map(as_json).collect::<Vec<_>>(),
            "event": as_json(&pdu),
        }))
    }

    /// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`: accepts `origin`'s signed
    /// leave, appends it and sends it to the room's other servers.
    pub async fn send_leave(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        event: CanonicalJsonObject,
    ) -> Result<Value> {
        let version = self.resident_room_version(room_id).await?;
        let pdu = self
            .membership_event(origin, room_id, event_id, &event, &version, "leave")
            .await?;
        self.append_remote(&pdu, &version, Some(origin)).await?;
        Ok(json!({}))
    }

    /// A verified membership event of the sending server's user about themselves.
    async fn membership_event(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        event: &CanonicalJsonObject,
        version: &RoomVersionId,
        membership: &str,
    ) -> Result<Pdu> {
        let pdu = self.verified_pdu(event, version, room_id).await?;
        if pdu.event_id != event_id {
            return Err(Error::bad_json("The event ID does not match the event"));
        }
        // Built from this server's make_join/make_leave template: on events it has.
        if let Some(prev) = self.missing_parents(&pdu).await?.first() {
            return Err(Error::bad_json(format!("Unknown previous event {prev}")));
        }
        let own = pdu.kind == TimelineEventType::RoomMember
            && pdu.membership().as_deref() == Some(membership)
            && pdu.state_key.as_deref() == Some(pdu.sender.as_str());
        if !own || pdu.sender.server_name() != origin {
            return Err(Error::bad_json(format!(
                "Not a {membership} of a user of the sending server"
            )));
        }
        Ok(pdu)
    }

    /// A PDU from a transaction: checked and appended. Returns its event ID (if it could be
    /// computed) and the outcome.
    pub(crate) async fn receive_pdu(
        &self,
        origin: &ServerName,
        event: &CanonicalJsonObject,
    ) -> (Option<OwnedEventId>, Result<()>) {
        let room_id = match event
            .get("room_id")
            .and_then(CanonicalJsonValue::as_str)
            .and_then(|id| RoomId::parse(id).ok())
        {
            Some(room_id) => room_id,
            None => return (None, Err(Error::bad_json("PDU without a room"))),
        };
        let version = match self.store().room_version(&room_id).await {
            Ok(Some(version)) => version,
            Ok(None) => return (None, Err(Error::not_found("Unknown room"))),
            Err(err) => return (None, Err(err.into())),
        };
        let event_id = pdu::from_signed(event, &version, Some(&room_id))
            .ok()
            .map(|p| p.event_id);
        let outcome = async {
            let pdu = self.verified_pdu(event, &version, &room_id).await?;
            if self.store().event(&pdu.event_id).await?.is_none() {
                self.fill_gap(origin, &pdu, &version).await?;
                self.append_remote(&pdu, &version, None).await?;
            }
            Ok(())
        }
        .await;
        (event_id, outcome)
    }

    /// Joins `me` to a room hosted elsewhere, through the first of `via` that answers:
    /// `make_join`, sign, `send_join`, check the room state it sends back, and store it.
    pub(crate) async fn join_remote(
        &self,
        me: &UserId,
        room_id: &RoomId,
        via: &[OwnedServerName],
    ) -> Result<()> {
        let mut last_error = Error::not_found("No server to join the room through");
        for server in via.iter().filter(|s| **s != self.config().server_name) {
            match self.join_through(me, room_id, server).await {
                Ok(()) => return Ok(()),
                Err(err) => {
                    tracing::info!(%room_id, %server, %err, "remote join failed");
                    last_error = err;
                }
            }
        }
        Err(last_error)
    }

    async fn join_through(&self, me: &UserId, room_id: &RoomId, server: &ServerName) -> Result<()> {
        let remote = |e: crate::federation::RemoteError| {
            Error::new(
                ErrorKind::Unknown,
                format!("Joining through {server} failed: {e}"),
            )
        };
        let answer = self
            .federation()
            .make_join(server, room_id, me, &super::SUPPORTED_ROOM_VERSIONS)
            .await
            .map_err(remote)?;
        let version: RoomVersionId = answer["room_version"]
            .as_str()
            .and_then(|v| RoomVersionId::try_from(v).ok())
            .unwrap_or(RoomVersionId::V1);
        let rules = pdu::rules(&version)?;
        let mut template: CanonicalJsonObject = serde_json::from_value(answer["event"].clone())
            .map_err(|e| Error::bad_json(format!("Bad make_join answer: {e}")))?;
        let sender_ok = template.get("sender").and_then(CanonicalJsonValue::as_str)
            == Some(me.as_str())
            && template
                .get("state_key")
                .and_then(CanonicalJsonValue::as_str)
                == Some(me.as_str())
            && template.get("room_id").and_then(CanonicalJsonValue::as_str)
                == Some(room_id.as_str());
        if !sender_ok {
            return Err(Error::bad_json(
                "The join template is not for this user and room",
            ));
        }
        template.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(ruma::Int::try_from(self.now_ms()).unwrap_or_default()),
        );
        template.remove("signatures");
        template.remove("hashes");
        self.signer().hash_and_sign(&mut template, &rules)?;
        let join = pdu::from_signed(&template, &version, Some(room_id))?;
        let body = serde_json::to_value(&template)
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
        let answer = self
            .federation()
            .send_join(server, room_id, &join.event_id, body)
            .await
            .map_err(remote)?;

        let mut state = Vec::new();
        let mut auth_chain = Vec::new();
        for (field, into) in [("state", &mut state), ("auth_chain", &mut auth_chain)] {
            for raw in answer[field].as_array().into_iter().flatten() {
                let Ok(object) = serde_json::from_value::<CanonicalJsonObject>(raw.clone()) else {
                    continue;
                };
                // Events that fail their checks are left out; the join is checked below against
                // what remains.
                match self.federation().verify_event(&object, &version).await {
                    Ok(()) => into.push(pdu::from_signed(&object, &version, Some(room_id))?),
                    Err(err) => tracing::warn!(%room_id, %server, %err, "state event refused"),
                }
            }
        }
        if !state
            .iter()
            .any(|e| e.kind == TimelineEventType::RoomCreate)
        {
            return Err(Error::bad_json("The room state has no create event"));
        }
        let lookup: Vec<Pdu> = state
            .iter()
            .filter(|e| {
                e.state_key.is_some()
                    && (join.auth_events.contains(&e.event_id)
                        || e.kind == TimelineEventType::RoomCreate)
            })
            .cloned()
            .collect();
        check_auth(&rules, &join, &lookup)?;
        let joined_before: Vec<ruma::OwnedUserId> = state
            .iter()
            .filter(|e| e.membership().as_deref() == Some("join"))
            .filter_map(|e| e.state_key.as_deref().and_then(|k| UserId::parse(k).ok()))
            .collect();
        let mut room_state: StateMap = state
            .iter()
            .filter_map(|e| Some(((e.kind_str(), e.state_key.clone()?), e.event_id.clone())))
            .collect();
        room_state.insert((join.kind_str(), me.to_string()), join.event_id.clone());
        let event = NewEvent {
            announce: self.newly_sharing(&join, &joined_before).await?,
            pdu: join.clone(),
            expected_extremities: Vec::new(),
            txn: None,
            creates_room: None,
            outbound: Vec::new(),
            state_after: StateAfter::New {
                parent: None,
                changes: super::state::entries(&room_state),
            },
            make_current: vec![join.event_id.clone()],
        };
        self.store()
            .import_room(&version, &state, &auth_chain, &event)
            .await?;
        self.notify_room_event(&join).await?;
        if !event.announce.is_empty() {
            self.federation().wake_sender();
        }
        self.fetch_device_lists_soon(joined_before);
        Ok(())
    }

    /// The version of a room this server is in (has a local member joined to).
    async fn resident_room_version(&self, room_id: &RoomId) -> Result<RoomVersionId> {
        let version = self.store().room_version(room_id).await?;
        let local_member = self
            .store()
            .members_with(room_id, "join")
            .await?
            .iter()
            .any(|u| self.is_local(u));
        match version {
            Some(version) if local_member => Ok(version),
            _ => Err(Error::not_found("This server is not in that room")),
        }
    }

    /// Signatures and hash checked by the transport, the ID recomputed, the parents known.
    async fn verified_pdu(
        &self,
        event: &CanonicalJsonObject,
        version: &RoomVersionId,
        room_id: &RoomId,
    ) -> Result<Pdu> {
        self.federation()
            .verify_event(event, version)
            .await
            .map_err(|e| Error::forbidden(format!("Event refused: {e}")))?;
        let pdu = pdu::from_signed(event, version, Some(room_id))?;
        if pdu.room_id != room_id {
            return Err(Error::bad_json("The event is for another room"));
        }
        Ok(pdu)
    }

    /// The parents of `pdu` this server does not have.
    async fn missing_parents(&self, pdu: &Pdu) -> Result<Vec<OwnedEventId>> {
        let mut missing = Vec::new();
        for prev in &pdu.prev_events {
            if self.store().event(prev).await?.is_none() {
                missing.push(prev.clone());
            }
        }
        Ok(missing)
    }

    /// Fetches from `origin` the events between this server's view of the room and `pdu`
    /// (`get_missing_events`), checks them, and appends them oldest first. Fails if they do
    /// not connect `pdu` to events this server has.
    async fn fill_gap(
        &self,
        origin: &ServerName,
        pdu: &Pdu,
        version: &RoomVersionId,
    ) -> Result<()> {
        if self.missing_parents(pdu).await?.is_empty() {
            return Ok(());
        }
        let (extremities, _) = self.store().forward_extremities(&pdu.room_id).await?;
        let body = json!({
            "earliest_events": extremities,
            "latest_events": [pdu.event_id],
            "limit": 20,
            "min_depth": 0,
        });
        let answer = self
            .federation()
            .get_missing_events(origin, &pdu.room_id, body)
            .await
            .map_err(|e| Error::bad_json(format!("Parents unknown, and not given: {e}")))?;
        let mut events = Vec::new();
        for raw in answer["events"].as_array().into_iter().flatten() {
            let Ok(object) = serde_json::from_value::<CanonicalJsonObject>(raw.clone()) else {
                continue;
            };
            let event = self.verified_pdu(&object, version, &pdu.room_id).await?;
            if self.store().event(&event.event_id).await?.is_none() {
                events.push(event);
            }
        }
        events.sort_by_key(|e| e.depth);
        for event in &events {
            if !self.missing_parents(event).await?.is_empty() {
                return Err(Error::bad_json(
                    "The missing events do not reach known ones",
                ));
            }
            self.append_remote(event, version, None).await?;
        }
        match self.missing_parents(pdu).await?.first() {
            Some(prev) => Err(Error::bad_json(format!("Unknown previous event {prev}"))),
            None => Ok(()),
        }
    }

    /// Checks a verified remote event against the current state and appends it; a join handled
    /// here as the resident server is also sent to the room's other servers (not `origin`).
    async fn append_remote(
        &self,
        pdu: &Pdu,
        version: &RoomVersionId,
        forward_except: Option<&ServerName>,
    ) -> Result<()> {
        let rules = pdu::rules(version)?;
        // Checked against the state before it, wherever in the room's history it sits.
        let before = self
            .state_before(&pdu.room_id, version, &pdu.prev_events)
            .await?;
        let auth_state = self.auth_state_in(&before.map, pdu, &rules).await?;
        check_auth(&rules, pdu, &auth_state)?;
        let (after, state_after) = before.after(pdu);
        for _ in 0..APPEND_ATTEMPTS {
            let (extremities, _) = self.store().forward_extremities(&pdu.room_id).await?;
            // The room's tips once the event is in; where more than one, their states merge.
            let others: Vec<&OwnedEventId> = extremities
                .iter()
                .filter(|e| !pdu.prev_events.contains(e))
                .collect();
            // The current state is the state after the room's one tip, so an event on exactly
            // that tip changes it by itself at most (the common case, no state read).
            let extends_the_tip = matches!((extremities.as_slice(), pdu.prev_events.as_slice()),
                ([tip], [prev]) if tip == prev);
            let make_current = if extends_the_tip {
                pdu.state_key
                    .is_some()
                    .then(|| pdu.event_id.clone())
                    .into_iter()
                    .collect()
            } else if others.is_empty() {
                self.current_changes(&pdu.room_id, &after).await?
            } else {
                let mut states = vec![after.clone()];
                for tip in others {
                    states.push(match self.state_after_event(tip).await? {
                        Some((_, map)) => map,
                        None => self.current_state_map(&pdu.room_id).await?,
                    });
                }
                let resolved = self.resolve_states(version, states, Some(pdu)).await?;
                self.current_changes(&pdu.room_id, &resolved).await?
            };
            let outbound = match forward_except {
                Some(origin) => {
                    let mut out = self.outbound_pdu(pdu).await?;
                    out.retain(|o| o.destination != origin);
                    out
                }
                None => Vec::new(),
            };
            let event = NewEvent {
                pdu: pdu.clone(),
                expected_extremities: extremities,
                txn: None,
                creates_room: None,
                outbound,
                announce: self.announcements(pdu).await?,
                state_after: state_after.clone(),
                make_current,
            };
            match self.store().append_event(&event).await? {
                AppendOutcome::Appended(_) => {
                    self.notify_room_event(pdu).await?;
                    if !event.outbound.is_empty() || !event.announce.is_empty() {
                        self.federation().wake_sender();
                    }
                    if pdu.membership().as_deref() == Some("join")
                        && let Some(joiner) =
                            pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
                        && self.tracked_locally(&joiner).await?
                    {
                        self.fetch_device_lists_soon(vec![joiner]);
                    }
                    return Ok(());
                }
                AppendOutcome::ExtremitiesMoved => continue,
                AppendOutcome::DuplicateTxn(_) => return Ok(()),
            }
        }
        Err(Error::new(
            ErrorKind::Unknown,
            "The room is too busy; try again",
        ))
    }

    /// Every event reachable through `auth_events` from `events`, oldest first by depth.
    pub(crate) async fn auth_chain(&self, events: impl Iterator<Item = &Pdu>) -> Result<Vec<Pdu>> {
        let mut seen: BTreeSet<OwnedEventId> = BTreeSet::new();
        let mut todo: Vec<OwnedEventId> = events.flat_map(|e| e.auth_events.clone()).collect();
        let mut chain: BTreeMap<(u64, OwnedEventId), Pdu> = BTreeMap::new();
        while let Some(id) = todo.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(event) = self.store().event(&id).await? {
                todo.extend(event.pdu.auth_events.iter().cloned());
                chain.insert((event.pdu.depth, id), event.pdu);
            }
        }
        Ok(chain.into_values().collect())
    }
}
