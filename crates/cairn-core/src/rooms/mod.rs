//! Rooms: creating them, changing membership, sending events, and reading them back.
//!
//! Every local event goes through [`Homeserver::append_event`]: read the forward extremities and
//! the authorising state, build and sign the event, check it with the room version's
//! authorisation rules (ruma-state-res), and append it if the room has not moved meanwhile.

pub mod create;
pub mod history;
pub mod invites;
pub mod membership;
pub mod pdu;
pub mod read;
pub mod remote;
pub mod send;
pub mod state;

use std::collections::BTreeSet;

use ruma::events::TimelineEventType;
use ruma::{OwnedEventId, OwnedServerName, RoomId, RoomVersionId, UserId};
use serde_json::value::RawValue;

use crate::Homeserver;
use crate::accounts::Requester;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{AppendOutcome, ItemKind, NewEvent, Outbound};
use pdu::{EventDraft, Pdu, Placement, build_event};

/// How often an append is retried when other events land in the room meanwhile.
const APPEND_ATTEMPTS: usize = 16;

/// Room versions Cairn creates and joins.
pub const SUPPORTED_ROOM_VERSIONS: [&str; 3] = ["10", "11", "12"];
/// The version of rooms created without one. 10 is what every current client and server
/// handles; 11 and 12 are available on request.
pub const DEFAULT_ROOM_VERSION: &str = "10";

impl Homeserver {
    /// Builds, authorises and appends a local event to an existing room. With `txn`, a repeated
    /// client transaction returns the event it produced the first time.
    pub(crate) async fn append_event(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        draft: &EventDraft,
        txn: Option<(&Requester, &str)>,
    ) -> Result<OwnedEventId> {
        if let Some((me, txn_id)) = txn
            && let Some(event_id) = self
                .store()
                .event_for_txn(&me.user_id, &me.device_id, txn_id)
                .await?
        {
            return Ok(event_id);
        }
        let version = self
            .store()
            .room_version(room_id)
            .await?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        for _ in 0..APPEND_ATTEMPTS {
            let (extremities, depth) = self.store().forward_extremities(room_id).await?;
            let pdu = self
                .build_checked(
                    Some(room_id),
                    &version,
                    sender,
                    draft,
                    &extremities,
                    depth + 1,
                )
                .await?;
            let outbound = self.outbound_pdu(&pdu).await?;
            let announce = self.announcements(&pdu).await?;
            let (state_after, after) = self.place_state(&version, &pdu).await?;
            let make_current = self.local_current_changes(&pdu, after.as_ref()).await?;
            let event = NewEvent {
                pdu,
                expected_extremities: extremities,
                txn: txn.map(|(me, id)| (me.user_id.clone(), me.device_id.clone(), id.to_owned())),
                creates_room: None,
                outbound,
                announce,
                state_after,
                make_current,
            };
            match self.store().append_event(&event).await? {
                AppendOutcome::Appended(_) => {
                    self.notify_room_event(&event.pdu).await?;
                    if !event.outbound.is_empty() || !event.announce.is_empty() {
                        self.federation().wake_sender();
                    }
                    return Ok(event.pdu.event_id);
                }
                AppendOutcome::DuplicateTxn(event_id) => return Ok(event_id),
                AppendOutcome::ExtremitiesMoved => continue,
            }
        }
        Err(Error::new(
            ErrorKind::Unknown,
            "The room is too busy; try again",
        ))
    }

    /// Builds an event on the given parents and checks it against the room's current state.
    pub(crate) async fn build_checked(
        &self,
        room_id: Option<&RoomId>,
        version: &RoomVersionId,
        sender: &UserId,
        draft: &EventDraft,
        prev_events: &[OwnedEventId],
        depth: u64,
    ) -> Result<Pdu> {
        let rules = pdu::rules(version)?;
        let kind = TimelineEventType::from(draft.kind.as_str());
        let content = pdu::raw(&draft.content);
        let auth_state = match room_id {
            Some(room_id) => {
                self.auth_state(
                    room_id,
                    &kind,
                    sender,
                    draft.state_key.as_deref(),
                    &content,
                    &rules,
                )
                .await?
            }
            None => Vec::new(),
        };
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
            room_id,
            version,
            sender,
            prev_events,
            depth,
            auth_events: &auth_ids,
            now_ms: self.now_ms(),
        };
        let pdu = build_event(draft, &placement, self.signer().as_ref())?;
        check_auth(&rules, &pdu, &auth_state)?;
        Ok(pdu)
    }

    /// The current state events that authorise an event of this shape (always with the create
    /// event, which the checks read even where, in room version 12, it is not an auth event).
    pub(crate) async fn auth_state(
        &self,
        room_id: &RoomId,
        kind: &TimelineEventType,
        sender: &UserId,
        state_key: Option<&str>,
        content: &RawValue,
        rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> Result<Vec<Pdu>> {
        let keys = ruma::state_res::auth_types_for_event(
            kind,
            sender,
            state_key,
            content,
            &rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("Invalid event content: {e}")))?;
        let mut keys: Vec<(String, String)> =
            keys.into_iter().map(|(t, k)| (t.to_string(), k)).collect();
        let create = ("m.room.create".to_owned(), String::new());
        if !keys.contains(&create) {
            keys.push(create);
        }
        Ok(self.store().state_events(room_id, &keys).await?)
    }

    /// The events of `state` that authorise `pdu` (always with the create event).
    pub(crate) async fn auth_state_in(
        &self,
        state: &state::StateMap,
        pdu: &Pdu,
        rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> Result<Vec<Pdu>> {
        let keys = ruma::state_res::auth_types_for_event(
            &pdu.kind,
            &pdu.sender,
            pdu.state_key.as_deref(),
            &pdu.content,
            &rules.authorization,
        )
        .map_err(|e| Error::bad_json(format!("Invalid event content: {e}")))?;
        let mut wanted: Vec<(String, String)> =
            keys.into_iter().map(|(t, k)| (t.to_string(), k)).collect();
        wanted.push(("m.room.create".to_owned(), String::new()));
        let mut events = Vec::new();
        for key in wanted {
            if let Some(id) = state.get(&key)
                && !events.iter().any(|e: &Pdu| e.event_id == *id)
                && let Some(event) = self.store().event(id).await?
            {
                events.push(event.pdu);
            }
        }
        Ok(events)
    }

    /// The PDU queued for every other server with a member joined to the room and, for a
    /// membership change, the target's server (an invitee's or a leaver's). Read before the
    /// append: a membership change in between moves the room's extremities, so the append
    /// fails and this is computed again.
    pub(crate) async fn outbound_pdu(&self, pdu: &Pdu) -> Result<Vec<Outbound>> {
        let mut servers: BTreeSet<OwnedServerName> = self
            .store()
            .members_with(&pdu.room_id, "join")
            .await?
            .iter()
            .map(|u| u.server_name().to_owned())
            .collect();
        if pdu.membership().is_some()
            && let Some(target) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
        {
            servers.insert(target.server_name().to_owned());
        }
        servers.remove(&self.config().server_name);
        let json = RawValue::from_string(pdu.json.to_string())
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
        Ok(servers
            .into_iter()
            .map(|destination| Outbound {
                destination,
                kind: ItemKind::Pdu,
                json: json.clone(),
            })
            .collect())
    }

    /// Wakes everyone a new event concerns: the room's joined members and, for a membership
    /// change, its target.
    pub(crate) async fn notify_room_event(&self, pdu: &Pdu) -> Result<()> {
        let mut users = self.store().members_with(&pdu.room_id, "join").await?;
        if pdu.membership().is_some()
            && let Some(target) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
        {
            users.push(target);
        }
        let refs: Vec<&UserId> = users.iter().map(|u| u.as_ref()).collect();
        self.notifier().notify(&refs);
        Ok(())
    }
}

/// Checks `pdu` with the room version's authorisation rules against `auth_state`.
pub(crate) fn check_auth(
    rules: &ruma::room_version_rules::RoomVersionRules,
    pdu: &Pdu,
    auth_state: &[Pdu],
) -> Result<()> {
    let forbidden = |reason: String| Error::forbidden(format!("Not allowed: {reason}"));
    ruma::state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id| {
        auth_state.iter().find(|e| e.event_id == *id).cloned()
    })
    .map_err(forbidden)?;
    ruma::state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |kind, key| {
        auth_state
            .iter()
            .find(|e| e.kind.to_string() == kind.to_string() && e.state_key.as_deref() == Some(key))
            .cloned()
    })
    .map_err(forbidden)
}

#[cfg(test)]
mod tests;
