//! Invites across servers: inviting a user of another server (their server countersigns the
//! invite before it is sent to the room), and receiving an invite for a local user to a room
//! hosted elsewhere (countersigned here and kept with the stripped state the inviting server
//! sent, for `/sync`).

use ruma::events::TimelineEventType;
use ruma::{CanonicalJsonObject, EventId, RoomId, RoomVersionId, ServerName, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::pdu::{self, EventDraft};
use super::{APPEND_ATTEMPTS, SUPPORTED_ROOM_VERSIONS};
use crate::Homeserver;
use crate::accounts::Requester;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{AppendOutcome, NewEvent};

/// The body of an inbound `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`.
#[derive(Debug, Deserialize)]
pub struct InviteRequest {
    /// The room's version.
    pub room_version: String,
    /// The invite, signed by the inviting server.
    pub event: CanonicalJsonObject,
    /// Stripped state events of the room, for the invitee's client.
    #[serde(default)]
    pub invite_room_state: Vec<Value>,
}

impl Homeserver {
    /// Invites a user of another server: build the invite, have their server countersign it,
    /// then append it here (and send it to the room's other servers).
    pub(crate) async fn invite_remote(
        &self,
        me: &Requester,
        room_id: &RoomId,
        target: &UserId,
        content: Value,
    ) -> Result<()> {
        let version = self
            .store()
            .room_version(room_id)
            .await?
            .ok_or_else(|| Error::not_found("Unknown room"))?;
        let draft = EventDraft::state("m.room.member", target.as_str(), content);
        let stripped = self.invite_room_state(room_id, &me.user_id).await?;
        for _ in 0..APPEND_ATTEMPTS {
            let (extremities, depth) = self.store().forward_extremities(room_id).await?;
            let invite = self
                .build_checked(
                    Some(room_id),
                    &version,
                    &me.user_id,
                    &draft,
                    &extremities,
                    depth + 1,
                )
                .await?;
            let event: Value = serde_json::from_str(&invite.json)
                .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
            let body = json!({
                "room_version": version,
                "event": event,
                "invite_room_state": stripped,
            });
            let answer = self
                .federation()
                .send_invite(target.server_name(), room_id, &invite.event_id, body)
                .await
                .map_err(|e| Error::forbidden(format!("The invitee's server refused: {e}")))?;
            let signed: CanonicalJsonObject = serde_json::from_value(answer["event"].clone())
                .map_err(|e| Error::bad_json(format!("Bad invite answer: {e}")))?;
            self.federation()
                .verify_event(&signed, &version)
                .await
                .map_err(|e| Error::forbidden(format!("Countersigned invite refused: {e}")))?;
            let countersigned = pdu::from_signed(&signed, &version, Some(room_id))?;
            if countersigned.event_id != invite.event_id {
                return Err(Error::bad_json("The invitee's server changed the invite"));
            }
            // The invitee's server has the invite already; the room's other servers get it.
            let mut outbound = self.outbound_pdu(&countersigned).await?;
            outbound.retain(|o| o.destination != target.server_name());
            let (state_after, after) = self.place_state(&version, &countersigned).await?;
            let make_current = self
                .local_current_changes(&countersigned, after.as_ref())
                .await?;
            let new = NewEvent {
                pdu: countersigned,
                expected_extremities: extremities,
                txn: None,
                creates_room: None,
                outbound,
                announce: Vec::new(),
                state_after,
                make_current,
            };
            match self.store().append_event(&new).await? {
                AppendOutcome::Appended(_) => {
                    self.notify_room_event(&new.pdu).await?;
                    if !new.outbound.is_empty() {
                        self.federation().wake_sender();
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

    /// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`: countersigns an invite of a
    /// local user sent by `origin`, and remembers it unless this server is in the room (then
    /// it arrives as a room event too).
    pub async fn receive_invite(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        req: InviteRequest,
    ) -> Result<Value> {
        if !SUPPORTED_ROOM_VERSIONS.contains(&req.room_version.as_str()) {
            return Err(Error::new(
                ErrorKind::IncompatibleRoomVersion(req.room_version.clone()),
                format!("Room version {} is not supported", req.room_version),
            ));
        }
        let version = RoomVersionId::try_from(req.room_version.as_str())
            .map_err(|_| Error::bad_json("Invalid room version"))?;
        let invite = pdu::from_signed(&req.event, &version, Some(room_id))?;
        let target = invite
            .state_key
            .as_deref()
            .and_then(|k| UserId::parse(k).ok())
            .ok_or_else(|| Error::bad_json("Invite without a target"))?;
        let is_invite = invite.kind == TimelineEventType::RoomMember
            && invite.membership().as_deref() == Some("invite");
        if invite.event_id != event_id || invite.room_id != room_id || !is_invite {
            return Err(Error::bad_json("Not the invite named in the path"));
        }
        if invite.sender.server_name() != origin {
            return Err(Error::forbidden(
                "The inviter is not a user of the sending server",
            ));
        }
        if !self.is_local(&target) || self.store().user(&target).await?.is_none() {
            return Err(Error::not_found("Unknown user"));
        }
        self.federation()
            .verify_event(&req.event, &version)
            .await
            .map_err(|e| Error::forbidden(format!("Invite refused: {e}")))?;
        let mut signed = req.event;
        let rules = pdu::rules(&version)?;
        self.signer().hash_and_sign(&mut signed, &rules)?;
        let countersigned = pdu::from_signed(&signed, &version, Some(room_id))?;
        let resident = self
            .store()
            .members_with(room_id, "join")
            .await?
            .iter()
            .any(|u| self.is_local(u));
        if !resident {
            let stripped = serde_json::to_string(&req.invite_room_state)
                .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
            self.store()
                .store_remote_membership(&version, &countersigned, &stripped)
                .await?;
            self.notifier().notify(&[&target]);
        }
        Ok(json!({ "event": signed }))
    }

    /// Declines an invite to a room on another server: `make_leave` and `send_leave` through
    /// the inviting server (or the room ID's), then the leave is recorded here.
    pub(crate) async fn decline_remote_invite(
        &self,
        me: &Requester,
        room_id: &RoomId,
        invite: &pdu::Pdu,
    ) -> Result<()> {
        let mut servers = vec![invite.sender.server_name().to_owned()];
        if let Some(server) = room_id.server_name()
            && !servers.iter().any(|s| s == server)
        {
            servers.push(server.to_owned());
        }
        let mut last = Error::not_found("No server to decline the invite through");
        for server in servers {
            match self.leave_through(me, room_id, &server).await {
                Ok(()) => return Ok(()),
                Err(err) => last = err,
            }
        }
        Err(last)
    }

    async fn leave_through(
        &self,
        me: &Requester,
        room_id: &RoomId,
        server: &ServerName,
    ) -> Result<()> {
        let remote = |e: crate::federation::RemoteError| {
            Error::new(
                ErrorKind::Unknown,
                format!("Leaving through {server} failed: {e}"),
            )
        };
        let answer = self
            .federation()
            .make_leave(server, room_id, &me.user_id)
            .await
            .map_err(remote)?;
        let version = RoomVersionId::try_from(answer["room_version"].as_str().unwrap_or("1"))
            .map_err(|_| Error::bad_json("Bad make_leave answer"))?;
        let rules = pdu::rules(&version)?;
        let mut template: CanonicalJsonObject = serde_json::from_value(answer["event"].clone())
            .map_err(|e| Error::bad_json(format!("Bad make_leave answer: {e}")))?;
        let own = |field: &str| {
            template
                .get(field)
                .and_then(ruma::CanonicalJsonValue::as_str)
                == Some(me.user_id.as_str())
        };
        if !own("sender") || !own("state_key") {
            return Err(Error::bad_json("The leave template is not for this user"));
        }
        template.remove("signatures");
        template.remove("hashes");
        self.signer().hash_and_sign(&mut template, &rules)?;
        let leave = pdu::from_signed(&template, &version, Some(room_id))?;
        if leave.membership().as_deref() != Some("leave") || leave.room_id != room_id {
            return Err(Error::bad_json(
                "The leave template is not a leave of this room",
            ));
        }
        let body = serde_json::to_value(&template)
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
        self.federation()
            .send_leave(server, room_id, &leave.event_id, body)
            .await
            .map_err(remote)?;
        self.store()
            .store_remote_membership(&version, &leave, "[]")
            .await?;
        self.notifier().notify(&[&me.user_id]);
        Ok(())
    }

    /// Stripped state for an invitee: the room's name, create event, join rules and the like,
    /// and the inviter's membership.
    async fn invite_room_state(&self, room_id: &RoomId, inviter: &UserId) -> Result<Vec<Value>> {
        let keys: Vec<(String, String)> = crate::sync::rooms::INVITE_STATE_TYPES
            .iter()
            .map(|t| (t.to_string(), String::new()))
            .chain([("m.room.member".to_owned(), inviter.to_string())])
            .collect();
        Ok(self
            .store()
            .state_events(room_id, &keys)
            .await?
            .iter()
            .map(pdu::Pdu::stripped_state)
            .collect())
    }
}
