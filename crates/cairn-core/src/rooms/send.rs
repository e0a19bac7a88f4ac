//! Sending message events and state events.

use ruma::{OwnedEventId, RoomId};
use serde_json::Value;

use super::pdu::EventDraft;
use crate::Homeserver;
use crate::accounts::Requester;
use crate::error::{Error, Result};

impl Homeserver {
    /// `PUT /rooms/{roomId}/send/{eventType}/{txnId}`: once per transaction ID and device.
    pub async fn send_message(
        &self,
        me: &Requester,
        room_id: &RoomId,
        event_type: &str,
        txn_id: &str,
        content: Value,
    ) -> Result<OwnedEventId> {
        if !content.is_object() {
            return Err(Error::bad_json("Content must be a JSON object"));
        }
        self.require_joined(me, room_id).await?;
        self.append_event(
            room_id,
            &me.user_id,
            &EventDraft::message(event_type, content),
            Some((me, txn_id)),
        )
        .await
    }

    /// `PUT /rooms/{roomId}/state/{eventType}/{stateKey}`.
    pub async fn send_state(
        &self,
        me: &Requester,
        room_id: &RoomId,
        event_type: &str,
        state_key: &str,
        content: Value,
    ) -> Result<OwnedEventId> {
        if !content.is_object() {
            return Err(Error::bad_json("Content must be a JSON object"));
        }
        if event_type == "m.room.create" {
            return Err(Error::forbidden("The create event cannot be replaced"));
        }
        self.append_event(
            room_id,
            &me.user_id,
            &EventDraft::state(event_type, state_key, content),
            None,
        )
        .await
    }

    /// Errors unless the user is joined to the room.
    pub(crate) async fn require_joined(&self, me: &Requester, room_id: &RoomId) -> Result<()> {
        match self.store().membership(room_id, &me.user_id).await? {
            Some(m) if m.membership == "join" => Ok(()),
            _ => Err(self.not_in_room(room_id).await?),
        }
    }
}
