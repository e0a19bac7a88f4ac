//! Storage for rooms: events, current state, memberships, forward extremities and aliases.
//!
//! Events are appended with a compare-and-swap on the room's forward extremities: the rules
//! read the extremities and the authorising state, build and check the event, and the store
//! appends it only if the extremities are still the ones read. Otherwise the rules try again.
//! This keeps each room's local events in a chain, checked against the state they extend, even
//! with several processes writing.

use async_trait::async_trait;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId};

use super::StoreResult;
use crate::rooms::pdu::Pdu;

/// A new local event to append.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The event.
    pub pdu: Pdu,
    /// The forward extremities it was built on; the append fails if they moved.
    pub expected_extremities: Vec<OwnedEventId>,
    /// `(user, device, txn_id)` of the client request, for deduplication.
    pub txn: Option<(OwnedUserId, ruma::OwnedDeviceId, String)>,
    /// For a create event: the room's version (the room is created in the same transaction).
    pub creates_room: Option<RoomVersionId>,
    /// The event for other servers in the room, queued in the same transaction.
    pub outbound: Vec<super::Outbound>,
    /// `(server, local user)`: servers that start sharing a room with the user through this
    /// event; each is owed an announcement of every one of the user's devices and its
    /// cross-signing keys, recorded in the same transaction.
    pub announce: Vec<(ruma::OwnedServerName, OwnedUserId)>,
    /// The room's state after the event.
    pub state_after: StateAfter,
    /// State events that become the room's current state for their type and key (the event
    /// itself, if it is a state event that wins; more when forks were resolved).
    pub make_current: Vec<OwnedEventId>,
}

/// One entry of a room state: `(type, state_key, event_id)`.
pub type StateEntry = (String, String, OwnedEventId);

/// How the state after an appended event is recorded. States are stored as groups, each a set
/// of changes on a parent group; the group an event creates is numbered by its stream position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateAfter {
    /// The same as an existing group's (the event changes no state).
    Group(u64),
    /// A new group: the parent's state (none: the empty state) with `changes` applied.
    New {
        /// The group the changes apply to.
        parent: Option<u64>,
        /// Entries that replace the parent's for their type and key.
        changes: Vec<StateEntry>,
    },
}

/// What became of an append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored at this stream position.
    Appended(u64),
    /// The room moved on meanwhile; build again on the new extremities.
    ExtremitiesMoved,
    /// The client's transaction ID was already used: this is the event it produced.
    DuplicateTxn(OwnedEventId),
}

/// A room event with its stream position.
#[derive(Debug, Clone)]
pub struct StreamEvent {
    /// Position in the stream.
    pub pos: u64,
    /// The event.
    pub pdu: Pdu,
}

/// A user's membership in a room, as of now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipRecord {
    /// The room.
    pub room_id: OwnedRoomId,
    /// `join`, `invite`, `leave`, `ban` or `knock`.
    pub membership: String,
    /// Position of the membership event.
    pub pos: u64,
}

/// Rooms and their events.
#[async_trait]
pub trait RoomStore: Send + Sync {
    /// The room's version, if the room is known.
    async fn room_version(&self, room_id: &RoomId) -> StoreResult<Option<RoomVersionId>>;
    /// The room's forward extremities and the greatest depth among them.
    async fn forward_extremities(&self, room_id: &RoomId) -> StoreResult<(Vec<OwnedEventId>, u64)>;
    /// Current state events for the given `(type, state_key)` pairs (those that exist).
    async fn state_events(
        &self,
        room_id: &RoomId,
        keys: &[(String, String)],
    ) -> StoreResult<Vec<Pdu>>;
    /// The room's whole current state.
    async fn current_state(&self, room_id: &RoomId) -> StoreResult<Vec<StreamEvent>>;
    /// Appends a local event: stores it, updates current state, memberships and extremities,
    /// records the transaction ID, in one transaction (see the module docs).
    async fn append_event(&self, event: &NewEvent) -> StoreResult<AppendOutcome>;
    /// Joins a room another server hosts, in one transaction: records its version, stores the
    /// state and auth chain the resident server sent as outliers (never in timelines), makes
    /// that state current, and appends `join` as the room's only forward extremity. Returns the
    /// join's stream position.
    async fn import_room(
        &self,
        version: &RoomVersionId,
        state: &[Pdu],
        auth_chain: &[Pdu],
        join: &NewEvent,
    ) -> StoreResult<u64>;
    /// Records a membership event of a local user in a room this server is not in (an invite
    /// received, or the leave that declines it): the room's version, the event (an outlier
    /// whose membership becomes current for its target), and the stripped state to show with
    /// an invite (a JSON array). Returns the event's stream position.
    async fn store_remote_membership(
        &self,
        version: &RoomVersionId,
        invite: &Pdu,
        stripped_state: &str,
    ) -> StoreResult<u64>;
    /// The stripped state stored with a remote invite of `user_id` to `room_id`.
    async fn remote_invite_state(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> StoreResult<Option<String>>;
    /// One event by ID.
    async fn event(&self, event_id: &ruma::EventId) -> StoreResult<Option<StreamEvent>>;
    /// The state group holding the room state after the event, if it was recorded (events
    /// stored as outliers have none).
    async fn state_group_of(&self, event_id: &ruma::EventId) -> StoreResult<Option<u64>>;
    /// The whole state of a group.
    async fn state_group(&self, group: u64) -> StoreResult<Vec<StateEntry>>;
    /// The event a client transaction produced, if any.
    async fn event_for_txn(
        &self,
        user_id: &UserId,
        device_id: &ruma::DeviceId,
        txn_id: &str,
    ) -> StoreResult<Option<OwnedEventId>>;
    /// The user's membership in the room now.
    async fn membership(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> StoreResult<Option<MembershipRecord>>;
    /// The user's memberships in every room they have one in.
    async fn memberships(&self, user_id: &UserId) -> StoreResult<Vec<MembershipRecord>>;
    /// Users with the given membership in the room.
    async fn members_with(
        &self,
        room_id: &RoomId,
        membership: &str,
    ) -> StoreResult<Vec<OwnedUserId>>;
    /// Room events in `(after, up_to]`, the newest `limit` of them, oldest first; and whether
    /// older ones in the range were left out.
    async fn room_events(
        &self,
        room_id: &RoomId,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<(Vec<StreamEvent>, bool)>;
    /// Room events in `(after, up_to]`, the oldest `limit` of them, oldest first.
    async fn room_events_after(
        &self,
        room_id: &RoomId,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<Vec<StreamEvent>>;
    /// Room events before position `before` (newest first), at most `limit`.
    async fn room_events_before(
        &self,
        room_id: &RoomId,
        before: u64,
        limit: usize,
    ) -> StoreResult<Vec<StreamEvent>>;
    /// Users whose membership in a room shared with `user_id` changed in `(after, up_to]`,
    /// with the room and new membership; includes `user_id`'s own changes.
    async fn membership_changes(
        &self,
        user_id: &UserId,
        after: u64,
        up_to: u64,
    ) -> StoreResult<Vec<(OwnedRoomId, OwnedUserId, String)>>;
    /// Every user joined to a room that `user_id` is joined to (`user_id` included).
    async fn room_mates(&self, user_id: &UserId) -> StoreResult<Vec<OwnedUserId>>;
    /// Whether the two users are both joined to some room.
    async fn share_a_room(&self, a: &UserId, b: &UserId) -> StoreResult<bool>;
    /// Points an alias at a room; `false` if the alias is taken.
    async fn create_alias(
        &self,
        alias: &ruma::RoomAliasId,
        room_id: &RoomId,
        creator: &UserId,
    ) -> StoreResult<bool>;
    /// The room an alias points to, and who created the alias.
    async fn alias(
        &self,
        alias: &ruma::RoomAliasId,
    ) -> StoreResult<Option<(OwnedRoomId, OwnedUserId)>>;
    /// Removes an alias; `false` if there was none.
    async fn delete_alias(&self, alias: &ruma::RoomAliasId) -> StoreResult<bool>;
}
