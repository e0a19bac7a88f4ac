//! The `rooms` section of `/sync`: joined rooms with timeline and state, invites with stripped
//! state, and rooms left since the last sync.
//!
//! State is the room's current state: on an initial sync or after joining, all of it that the
//! timeline does not carry; on a gappy (limited) incremental sync, the state events written
//! between the last sync and the timeline; otherwise none.

use std::collections::{BTreeMap, BTreeSet};

use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde::Deserialize;

use crate::Homeserver;
use crate::accounts::Requester;
use crate::error::Result;
use crate::rooms::pdu::Pdu;
use crate::stream::SyncToken;

/// Timeline events per room when the filter does not say.
pub const DEFAULT_TIMELINE_LIMIT: usize = 10;
/// Most timeline events per room a filter may ask for.
const MAX_TIMELINE_LIMIT: usize = 500;
/// State types shown to invitees (the spec's recommendation).
pub(crate) const INVITE_STATE_TYPES: [&str; 6] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
];

/// The parts of a sync filter that Cairn applies.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SyncFilter {
    /// The `room` part.
    pub room: RoomFilter,
}

/// `filter.room`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RoomFilter {
    /// Only these rooms (all if absent).
    pub rooms: Option<Vec<OwnedRoomId>>,
    /// `filter.room.timeline`.
    pub timeline: TimelineFilter,
    /// `filter.room.state`.
    pub state: StateFilter,
}

/// `filter.room.timeline`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TimelineFilter {
    /// Most events per room.
    pub limit: Option<usize>,
}

/// `filter.room.state`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StateFilter {
    /// Send only the member events of the timeline's senders.
    pub lazy_load_members: bool,
}

/// A joined room in a sync response.
#[derive(Debug, Default)]
pub struct JoinedRoom {
    /// State not carried by the timeline.
    pub state: Vec<Pdu>,
    /// The newest events.
    pub timeline: Vec<Pdu>,
    /// Whether older events in the range were left out.
    pub limited: bool,
    /// Where `/messages` continues backwards.
    pub prev_batch: SyncToken,
    /// Joined members.
    pub joined_count: u64,
    /// Invited members.
    pub invited_count: u64,
    /// Up to five other members, for naming the room.
    pub heroes: Vec<OwnedUserId>,
}

/// A left room in a sync response.
#[derive(Debug, Default)]
pub struct LeftRoom {
    /// Events up to the leave.
    pub timeline: Vec<Pdu>,
    /// Whether older events were left out.
    pub limited: bool,
    /// Where `/messages` continues backwards.
    pub prev_batch: SyncToken,
}

/// The `rooms` section.
#[derive(Debug, Default)]
pub struct RoomsSync {
    /// Rooms the user is in.
    pub join: BTreeMap<OwnedRoomId, JoinedRoom>,
    /// Rooms the user is invited to, with stripped state.
    pub invite: BTreeMap<OwnedRoomId, Vec<serde_json::Value>>,
    /// Rooms the user left (or was removed from) since the last sync.
    pub leave: BTreeMap<OwnedRoomId, LeftRoom>,
}

impl RoomsSync {
    /// Whether it holds anything.
    pub fn is_empty(&self) -> bool {
        self.join.is_empty() && self.invite.is_empty() && self.leave.is_empty()
    }
}

impl Homeserver {
    /// Assembles the rooms section for `(since, now]`.
    pub(crate) async fn sync_rooms(
        &self,
        me: &Requester,
        since: Option<SyncToken>,
        now: u64,
        filter: &SyncFilter,
    ) -> Result<RoomsSync> {
        let store = self.store();
        let after = since.map_or(0, |t| t.pos);
        let limit = filter
            .room
            .timeline
            .limit
            .unwrap_or(DEFAULT_TIMELINE_LIMIT)
            .clamp(1, MAX_TIMELINE_LIMIT);
        let wanted = |room: &OwnedRoomId| {
            filter
                .room
                .rooms
                .as_ref()
                .is_none_or(|rooms| rooms.contains(room))
        };
        let mut out = RoomsSync::default();
        for m in store.memberships(&me.user_id).await? {
            if !wanted(&m.room_id) || m.pos > now {
                continue;
            }
            let changed_membership = since.is_none() || m.pos > after;
            match m.membership.as_str() {
                "join" => {
                    let (timeline, limited) =
                        store.room_events(&m.room_id, after, now, limit).await?;
                    if !changed_membership && timeline.is_empty() {
                        continue;
                    }
                    let first_pos = timeline.first().map_or(now, |e| e.pos);
                    let in_timeline: BTreeSet<_> =
                        timeline.iter().map(|e| e.pdu.event_id.clone()).collect();
                    let mut state: Vec<Pdu> = if changed_membership {
                        store
                            .current_state(&m.room_id)
                            .await?
                            .into_iter()
                            .filter(|e| !in_timeline.contains(&e.pdu.event_id))
                            .map(|e| e.pdu)
                            .collect()
                    } else if limited {
                        store
                            .current_state(&m.room_id)
                            .await?
                            .into_iter()
                            .filter(|e| e.pos > after && e.pos < first_pos)
                            .map(|e| e.pdu)
                            .collect()
                    } else {
                        Vec::new()
                    };
                    if filter.room.state.lazy_load_members {
                        let senders: BTreeSet<&UserId> = timeline
                            .iter()
                            .map(|e| e.pdu.sender.as_ref())
                            .chain([me.user_id.as_ref()])
                            .collect();
                        state.retain(|e| {
                            e.membership().is_none()
                                || e.state_key
                                    .as_deref()
                                    .and_then(|k| UserId::parse(k).ok())
                                    .is_some_and(|u| senders.contains(&*u))
                        });
                    }
                    let joined = store.members_with(&m.room_id, "join").await?;
                    let invited = store.members_with(&m.room_id, "invite").await?;
                    let heroes = joined
                        .iter()
                        .chain(&invited)
                        .filter(|u| **u != me.user_id)
                        .take(5)
                        .cloned()
                        .collect();
                    out.join.insert(
                        m.room_id,
                        JoinedRoom {
                            state,
                            timeline: timeline.into_iter().map(|e| e.pdu).collect(),
                            limited,
                            prev_batch: SyncToken {
                                pos: first_pos.saturating_sub(1),
                                to_device: 0,
                            },
                            joined_count: joined.len() as u64,
                            invited_count: invited.len() as u64,
                            heroes,
                        },
                    );
                }
                "invite" if changed_membership => {
                    let keys: Vec<(String, String)> = INVITE_STATE_TYPES
                        .iter()
                        .map(|t| (t.to_string(), String::new()))
                        .chain([("m.room.member".into(), me.user_id.to_string())])
                        .collect();
                    let mut stripped = store.state_events(&m.room_id, &keys).await?;
                    if let Some(invite) =
                        stripped.iter().find(|e| e.membership().is_some()).cloned()
                    {
                        let inviter = [("m.room.member".to_owned(), invite.sender.to_string())];
                        stripped.extend(store.state_events(&m.room_id, &inviter).await?);
                    }
                    let mut shown: Vec<serde_json::Value> =
                        stripped.iter().map(Pdu::stripped_state).collect();
                    // A room on another server: what its server sent with the invite.
                    if let Some(remote) = store.remote_invite_state(&m.room_id, &me.user_id).await?
                        && let Ok(serde_json::Value::Array(events)) = serde_json::from_str(&remote)
                    {
                        shown.extend(events.into_iter().filter(|e| {
                            e["type"] != "m.room.member" || e["state_key"] != me.user_id.as_str()
                        }));
                    }
                    out.invite.insert(m.room_id, shown);
                }
                "leave" | "ban" if since.is_some() && changed_membership => {
                    let (timeline, limited) =
                        store.room_events(&m.room_id, after, m.pos, limit).await?;
                    let first_pos = timeline.first().map_or(m.pos, |e| e.pos);
                    out.leave.insert(
                        m.room_id,
                        LeftRoom {
                            timeline: timeline.into_iter().map(|e| e.pdu).collect(),
                            limited,
                            prev_batch: SyncToken {
                                pos: first_pos.saturating_sub(1),
                                to_device: 0,
                            },
                        },
                    );
                }
                _ => {}
            }
        }
        Ok(out)
    }
}
