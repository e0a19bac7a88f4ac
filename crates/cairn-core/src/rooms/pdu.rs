//! Persistent data units: room events as they are signed, hashed, stored and federated.
//!
//! A [`Pdu`] keeps the full signed event as canonical JSON next to the fields the rules read.
//! Locally created events are built with [`build_event`]: the server signs them (through an
//! [`EventSigner`]), the content hash and the event ID (the reference hash, room versions 3+)
//! are computed here, and for room version 12 the create event's ID also names the room.

use std::sync::Arc;

use ruma::canonical_json::{CanonicalJsonObject, CanonicalJsonValue, to_canonical_value};
use ruma::events::TimelineEventType;
use ruma::room_version_rules::{RoomIdFormatVersion, RoomVersionRules};
use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    RoomVersionId, UInt, UserId,
};
use serde::Deserialize;
use serde_json::value::{RawValue, to_raw_value};
use serde_json::{Value, json};

use crate::error::{Error, ErrorKind, Result};

/// Largest PDU, in bytes of canonical JSON (the spec's limit).
pub const MAX_PDU_BYTES: usize = 65_536;

/// Signs events with the server's key.
pub trait EventSigner: Send + Sync + 'static {
    /// The server name that signs.
    fn server_name(&self) -> &ruma::ServerName;
    /// Adds the content hash and this server's signature to `event`.
    fn hash_and_sign(
        &self,
        event: &mut CanonicalJsonObject,
        rules: &RoomVersionRules,
    ) -> Result<()>;
}

/// A room event with its signed JSON.
#[derive(Debug, Clone)]
pub struct Pdu {
    /// The event ID.
    pub event_id: OwnedEventId,
    /// The room.
    pub room_id: OwnedRoomId,
    /// Whether the JSON names the room (room-version-12 create events do not).
    room_id_in_json: bool,
    /// The sender.
    pub sender: OwnedUserId,
    /// When the sender's server created it.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// The event type.
    pub kind: TimelineEventType,
    /// The content.
    pub content: Box<RawValue>,
    /// The state key, for state events.
    pub state_key: Option<String>,
    /// The events it follows.
    pub prev_events: Vec<OwnedEventId>,
    /// The state events that authorise it.
    pub auth_events: Vec<OwnedEventId>,
    /// For redactions, the redacted event.
    pub redacts: Option<OwnedEventId>,
    /// Its depth in the room's graph.
    pub depth: u64,
    /// The signed event as canonical JSON (without `event_id`, which is derived).
    pub json: Arc<str>,
}

/// The fields of a PDU that are parsed out of its JSON.
#[derive(Deserialize)]
struct PduFields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawValue>,
    state_key: Option<String>,
    #[serde(default)]
    prev_events: Vec<OwnedEventId>,
    #[serde(default)]
    auth_events: Vec<OwnedEventId>,
    redacts: Option<OwnedEventId>,
    depth: UInt,
}

impl Pdu {
    /// Parses a stored or received PDU. `room_id` is needed for room-version-12 create events,
    /// which do not carry one.
    pub fn from_json(event_id: OwnedEventId, room_id: &RoomId, json: &str) -> Result<Self> {
        let fields: PduFields =
            serde_json::from_str(json).map_err(|e| Error::bad_json(format!("Invalid PDU: {e}")))?;
        // Room version 11 moved `redacts` into the content.
        let redacts = fields.redacts.or_else(|| {
            #[derive(Deserialize)]
            struct Redacts {
                redacts: Option<OwnedEventId>,
            }
            serde_json::from_str::<Redacts>(fields.content.get())
                .ok()
                .and_then(|r| r.redacts)
        });
        Ok(Self {
            event_id,
            room_id_in_json: fields.room_id.is_some(),
            room_id: fields.room_id.unwrap_or_else(|| room_id.to_owned()),
            sender: fields.sender,
            origin_server_ts: fields.origin_server_ts,
            kind: fields.kind,
            content: fields.content,
            state_key: fields.state_key,
            prev_events: fields.prev_events,
            auth_events: fields.auth_events,
            redacts,
            depth: fields.depth.into(),
            json: json.into(),
        })
    }

    /// The event type as a string.
    pub fn kind_str(&self) -> String {
        self.kind.to_string()
    }

    /// `content.membership` of a member event.
    pub fn membership(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct Member {
            membership: String,
        }
        (self.kind == TimelineEventType::RoomMember)
            .then(|| {
                serde_json::from_str::<Member>(self.content.get())
                    .ok()
                    .map(|m| m.membership)
            })
            .flatten()
    }

    /// The content as a JSON value.
    pub fn content_value(&self) -> Value {
        serde_json::from_str(self.content.get()).unwrap_or(Value::Null)
    }

    /// The event as clients see it (`ClientEvent`), with `unsigned` extras.
    pub fn client_event(&self, unsigned: Option<Value>) -> Value {
        let mut event = json!({
            "event_id": self.event_id,
            "room_id": self.room_id,
            "sender": self.sender,
            "origin_server_ts": self.origin_server_ts,
            "type": self.kind,
            "content": self.content,
        });
        if let Some(state_key) = &self.state_key {
            event["state_key"] = state_key.as_str().into();
        }
        if let Some(redacts) = &self.redacts {
            event["redacts"] = redacts.as_str().into();
        }
        if let Some(unsigned) = unsigned {
            event["unsigned"] = unsigned;
        }
        event
    }

    /// The event as invitees see room state before joining (stripped state).
    pub fn stripped_state(&self) -> Value {
        json!({
            "type": self.kind,
            "state_key": self.state_key.as_deref().unwrap_or(""),
            "sender": self.sender,
            "content": self.content,
        })
    }
}

/// What a new event says; the rules add where it sits in the room.
#[derive(Debug, Clone)]
pub struct EventDraft {
    /// The event type.
    pub kind: String,
    /// The state key, for state events.
    pub state_key: Option<String>,
    /// The content.
    pub content: Value,
}

impl EventDraft {
    /// A state event.
    pub fn state(kind: &str, state_key: &str, content: Value) -> Self {
        Self {
            kind: kind.to_owned(),
            state_key: Some(state_key.to_owned()),
            content,
        }
    }

    /// A message-like event.
    pub fn message(kind: &str, content: Value) -> Self {
        Self {
            kind: kind.to_owned(),
            state_key: None,
            content,
        }
    }
}

/// Where a new event goes: its room, parents, authorising events and time.
pub struct Placement<'a> {
    /// The room (ignored for a room-version-12 create event, whose ID becomes the room ID).
    pub room_id: Option<&'a RoomId>,
    /// The room version.
    pub version: &'a RoomVersionId,
    /// The sender.
    pub sender: &'a UserId,
    /// The current forward extremities.
    pub prev_events: &'a [OwnedEventId],
    /// Depth: one more than the deepest parent.
    pub depth: u64,
    /// The authorising state events.
    pub auth_events: &'a [OwnedEventId],
    /// Creation time.
    pub now_ms: u64,
}

/// The rules of a room version Cairn supports.
pub fn rules(version: &RoomVersionId) -> Result<RoomVersionRules> {
    version.rules().ok_or_else(|| {
        Error::new(
            ErrorKind::UnsupportedRoomVersion,
            format!("Room version {version} is not supported"),
        )
    })
}

/// Builds, hashes and signs a new event.
pub fn build_event(
    draft: &EventDraft,
    at: &Placement<'_>,
    signer: &dyn EventSigner,
) -> Result<Pdu> {
    let rules = rules(at.version)?;
    let mut object = unsigned_event(draft, at)?;
    signer.hash_and_sign(&mut object, &rules)?;
    from_signed(&object, at.version, at.room_id)
}

/// A new event without hashes and signatures: what `make_join` hands to a joining server.
pub fn unsigned_event(draft: &EventDraft, at: &Placement<'_>) -> Result<CanonicalJsonObject> {
    let rules = rules(at.version)?;
    let is_create = draft.kind == "m.room.create";
    let mut event = json!({
        "type": draft.kind,
        "sender": at.sender,
        "content": draft.content,
        "origin_server_ts": at.now_ms,
        "depth": at.depth,
        "prev_events": at.prev_events,
        "auth_events": at.auth_events,
    });
    if let Some(state_key) = &draft.state_key {
        event["state_key"] = state_key.as_str().into();
    }
    let v12_create = is_create && rules.room_id_format == RoomIdFormatVersion::V2;
    if !v12_create {
        let room_id = at
            .room_id
            .ok_or_else(|| Error::new(ErrorKind::Internal, "event without a room"))?;
        event["room_id"] = room_id.as_str().into();
    }
    if draft.kind == "m.room.redaction"
        && !rules.redaction.content_field_redacts
        && let Some(redacts) = draft.content.get("redacts")
    {
        event["redacts"] = redacts.clone();
    }
    match to_canonical_value(&event) {
        Ok(CanonicalJsonValue::Object(object)) => Ok(object),
        _ => Err(Error::bad_json(
            "Event content is not canonical JSON (floats or huge integers?)",
        )),
    }
}

/// A signed event as a [`Pdu`]: its ID is its reference hash (room versions 3 and later), and a
/// room-version-12 create event's hash also names the room. `room_id` is the room for events
/// that do not carry one. Signatures are not checked here.
pub fn from_signed(
    object: &CanonicalJsonObject,
    version: &RoomVersionId,
    room_id: Option<&RoomId>,
) -> Result<Pdu> {
    let rules = rules(version)?;
    let hash = ruma::signatures::reference_hash(object, &rules)
        .map_err(|_| Error::bad_json("Event cannot be hashed"))?;
    let json = serde_json::to_string(object)
        .map_err(|_| Error::new(ErrorKind::Internal, "unserialisable event"))?;
    if json.len() > MAX_PDU_BYTES {
        return Err(Error::new(ErrorKind::TooLarge, "Event is too large"));
    }
    let event_id = EventId::parse(format!("${hash}"))
        .map_err(|_| Error::new(ErrorKind::Internal, "bad event ID"))?;
    let room_id: OwnedRoomId = match object.get("room_id").and_then(CanonicalJsonValue::as_str) {
        Some(id) => RoomId::parse(id).map_err(|_| Error::bad_json("Invalid room ID"))?,
        None => match room_id {
            Some(room_id) => room_id.to_owned(),
            // A room-version-12 create event: its hash names the room.
            None => RoomId::parse(format!("!{hash}"))
                .map_err(|_| Error::new(ErrorKind::Internal, "bad room ID"))?,
        },
    };
    Pdu::from_json(event_id, &room_id, &json)
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }

    fn room_id(&self) -> Option<&RoomId> {
        self.room_id_in_json.then_some(&*self.room_id)
    }

    fn sender(&self) -> &UserId {
        &self.sender
    }

    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }

    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }

    fn content(&self) -> &RawValue {
        &self.content
    }

    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }

    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }

    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }

    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }

    fn rejected(&self) -> bool {
        false
    }
}

/// Canonical JSON of a value (for content that must be stored byte-exact).
pub fn raw(value: &Value) -> Box<RawValue> {
    to_raw_value(value).expect("a JSON value serialises")
}
