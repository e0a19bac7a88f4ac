//! Reading rooms: state, members, joined rooms, single events and `/messages`.
//!
//! Visibility: a joined member sees the whole room (history visibility `shared`, what Cairn's
//! presets set); a member who left or was banned sees it up to that moment.

use std::collections::BTreeMap;

use ruma::{EventId, OwnedRoomId, OwnedUserId, RoomId};
use serde_json::value::RawValue;

use super::pdu::Pdu;
use crate::Homeserver;
use crate::accounts::Requester;
use crate::error::{Error, Result};
use crate::store::StreamEvent;
use crate::stream::SyncToken;

/// Most events one `/messages` call returns.
pub const MAX_MESSAGES_LIMIT: usize = 1000;

/// Direction of `/messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Older events first (`b`).
    Backward,
    /// Newer events first (`f`).
    Forward,
}

/// A page of `/messages`.
#[derive(Debug)]
pub struct MessagesPage {
    /// The events, in the requested direction.
    pub chunk: Vec<Pdu>,
    /// The token the page starts at.
    pub start: SyncToken,
    /// The token to continue from; `None` at the end of the room.
    pub end: Option<SyncToken>,
}

/// A joined member's profile as the room knows it.
#[derive(Debug, Clone, Default)]
pub struct RoomMember {
    /// Display name in the room.
    pub display_name: Option<String>,
    /// Avatar in the room.
    pub avatar_url: Option<String>,
}

impl Homeserver {
    /// The newest stream position the user may see in the room: everything while joined, up to
    /// the leave or ban otherwise.
    async fn visible_until(&self, me: &Requester, room_id: &RoomId) -> Result<u64> {
        match self.store().membership(room_id, &me.user_id).await? {
            Some(m) if m.membership == "join" => Ok(u64::MAX),
            Some(m) if m.membership == "leave" || m.membership == "ban" => Ok(m.pos),
            _ => Err(self.not_in_room(room_id).await?),
        }
    }

    /// `GET /rooms/{roomId}/state`.
    pub async fn room_state(&self, me: &Requester, room_id: &RoomId) -> Result<Vec<Pdu>> {
        let until = self.visible_until(me, room_id).await?;
        Ok(self
            .store()
            .current_state(room_id)
            .await?
            .into_iter()
            .filter(|e| e.pos <= until)
            .map(|e| e.pdu)
            .collect())
    }

    /// `GET /rooms/{roomId}/state/{eventType}/{stateKey}`: the content.
    pub async fn state_event(
        &self,
        me: &Requester,
        room_id: &RoomId,
        kind: &str,
        key: &str,
    ) -> Result<Box<RawValue>> {
        self.visible_until(me, room_id).await?;
        let found = self
            .store()
            .state_events(room_id, &[(kind.to_owned(), key.to_owned())])
            .await?;
        found
            .into_iter()
            .next()
            .map(|e| e.content)
            .ok_or_else(|| Error::not_found("Event not found"))
    }

    /// `GET /rooms/{roomId}/members`: the member events.
    pub async fn room_members(&self, me: &Requester, room_id: &RoomId) -> Result<Vec<Pdu>> {
        Ok(self
            .room_state(me, room_id)
            .await?
            .into_iter()
            .filter(|e| e.membership().is_some())
            .collect())
    }

    /// `GET /rooms/{roomId}/joined_members`.
    pub async fn joined_members(
        &self,
        me: &Requester,
        room_id: &RoomId,
    ) -> Result<BTreeMap<OwnedUserId, RoomMember>> {
        let mut out = BTreeMap::new();
        for event in self.room_members(me, room_id).await? {
            if event.membership().as_deref() == Some("join")
                && let Some(user) = event
                    .state_key
                    .as_deref()
                    .and_then(|k| ruma::UserId::parse(k).ok())
            {
                let content = event.content_value();
                out.insert(
                    user,
                    RoomMember {
                        display_name: content
                            .get("displayname")
                            .and_then(|v| v.as_str())
                            .map(ToOwned::to_owned),
                        avatar_url: content
                            .get("avatar_url")
                            .and_then(|v| v.as_str())
                            .map(ToOwned::to_owned),
                    },
                );
            }
        }
        Ok(out)
    }

    /// `GET /joined_rooms`.
    pub async fn joined_rooms(&self, me: &Requester) -> Result<Vec<OwnedRoomId>> {
        Ok(self
            .store()
            .memberships(&me.user_id)
            .await?
            .into_iter()
            .filter(|m| m.membership == "join")
            .map(|m| m.room_id)
            .collect())
    }

    /// `GET /rooms/{roomId}/event/{eventId}`.
    pub async fn room_event(
        &self,
        me: &Requester,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Pdu> {
        let until = self.visible_until(me, room_id).await?;
        match self.store().event(event_id).await? {
            Some(e) if e.pdu.room_id == room_id && e.pos <= until => Ok(e.pdu),
            _ => Err(Error::not_found("Event not found")),
        }
    }

    /// `GET /rooms/{roomId}/messages`.
    pub async fn messages(
        &self,
        me: &Requester,
        room_id: &RoomId,
        from: Option<SyncToken>,
        dir: Direction,
        limit: usize,
    ) -> Result<MessagesPage> {
        let until = self.visible_until(me, room_id).await?;
        let now = self.store().current_position().await?;
        let limit = limit.clamp(1, MAX_MESSAGES_LIMIT);
        let start = from.unwrap_or(SyncToken {
            pos: now,
            to_device: 0,
        });
        let token = |pos: u64| SyncToken { pos, to_device: 0 };
        let (events, end) = match dir {
            Direction::Backward => {
                let before = start.pos.min(until).saturating_add(1);
                let events: Vec<StreamEvent> = self
                    .store()
                    .room_events_before(room_id, before, limit)
                    .await?;
                let end =
                    (events.len() == limit).then(|| token(events.last().map_or(0, |e| e.pos) - 1));
                (events, end)
            }
            Direction::Forward => {
                let up_to = now.min(until);
                let events = self
                    .store()
                    .room_events_after(room_id, start.pos, up_to, limit)
                    .await?;
                let end = events.last().map(|e| token(e.pos));
                (events, end)
            }
        };
        Ok(MessagesPage {
            chunk: events.into_iter().map(|e| e.pdu).collect(),
            start,
            end,
        })
    }
}
