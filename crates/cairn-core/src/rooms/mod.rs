//! Rooms: creating them, changing membership, sending events, and reading them back.
//!
//! Every local event goes through [`Homeserver::append_event`]: read the forward extremities and
//! the authorising state, build and sign the event, check it with the room version's
//! authorisation rules (ruma-state-res), and append it if the room has not moved meanwhile.

pub mod create;
pub mod membership;
pub mod pdu;
pub mod read;
pub mod send;

use ruma::events::TimelineEventType;
use ruma::{OwnedEventId, RoomId, RoomVersionId, UserId};

use crate::Homeserver;
use crate::accounts::Requester;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{AppendOutcome, NewEvent};
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
            let event = NewEvent {
                pdu,
                expected_extremities: extremities,
                txn: txn.map(|(me, id)| (me.user_id.clone(), me.device_id.clone(), id.to_owned())),
                creates_room: None,
            };
            match self.store().append_event(&event).await? {
                AppendOutcome::Appended(_) => {
                    self.notify_room_event(&event.pdu).await?;
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
                let keys = ruma::state_res::auth_types_for_event(
                    &kind,
                    sender,
                    draft.state_key.as_deref(),
                    &content,
                    &rules.authorization,
                )
                .map_err(|e| Error::bad_json(format!("Invalid event content: {e}")))?;
                let mut keys: Vec<(String, String)> =
                    keys.into_iter().map(|(t, k)| (t.to_string(), k)).collect();
                // The checks always look at the create event, even where (room version 12) it is
                // not among the auth events.
                let create = ("m.room.create".to_owned(), String::new());
                if !keys.contains(&create) {
                    keys.push(create);
                }
                self.store().state_events(room_id, &keys).await?
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
        let forbidden = |reason: String| Error::forbidden(format!("Not allowed: {reason}"));
        ruma::state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, |id| {
            auth_state.iter().find(|e| e.event_id == *id).cloned()
        })
        .map_err(forbidden)?;
        ruma::state_res::check_state_dependent_auth_rules(
            &rules.authorization,
            &pdu,
            |kind, key| {
                auth_state
                    .iter()
                    .find(|e| {
                        e.kind.to_string() == kind.to_string()
                            && e.state_key.as_deref() == Some(key)
                    })
                    .cloned()
            },
        )
        .map_err(forbidden)?;
        Ok(pdu)
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

#[cfg(test)]
mod tests;
