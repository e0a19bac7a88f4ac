//! Room endpoints: create, membership, send, state, members, messages, aliases.

use axum::Json;
use axum::extract::State;
use axum::http::request::Parts;
use cairn_core::ErrorKind;
use cairn_core::Homeserver;
use cairn_core::rooms::create::CreateRoomRequest;
use cairn_core::rooms::read::Direction;
use ruma::{OwnedRoomId, OwnedUserId, RoomId};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::extract::{Authed, JsonBody, OptionalJsonBody, PathParams, query_param};
use crate::{ApiError, AppState};

type Answer = Result<Json<Value>, ApiError>;

fn room_id(raw: &str) -> Result<OwnedRoomId, ApiError> {
    RoomId::parse(raw).map_err(|_| ApiError::new(ErrorKind::InvalidParam, "Invalid room ID"))
}

pub(crate) async fn create(
    State(state): State<AppState>,
    Authed(me): Authed,
    JsonBody(req): JsonBody<CreateRoomRequest>,
) -> Answer {
    let room_id = state.hs.create_room(&me, req).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

pub(crate) async fn join_by_id(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(room): PathParams<String>,
    parts: Parts,
) -> Answer {
    // Servers to join through: `server_name` (repeatable, the spec's name before v1.12) and `via`.
    let via: Vec<ruma::OwnedServerName> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(name, _)| *name == "server_name" || *name == "via")
        .filter_map(|(_, value)| {
            let value = percent_decode(value)?;
            ruma::ServerName::parse(value).ok()
        })
        .collect();
    let room_id = state.hs.join_room(&me, &room, &via).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

#[derive(Deserialize)]
pub(crate) struct Target {
    user_id: OwnedUserId,
    reason: Option<String>,
}

#[derive(Default, Deserialize)]
pub(crate) struct Reason {
    reason: Option<String>,
}

pub(crate) async fn invite(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(room): PathParams<String>,
    JsonBody(t): JsonBody<Target>,
) -> Answer {
    state
        .hs
        .invite(
            &me,
            &room_id(&room)?,
            &t.user_id,
            t.reason.as_deref(),
            false,
        )
        .await?;
    Ok(Json(json!({})))
}

pub(crate) async fn leave(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(room): PathParams<String>,
    OptionalJsonBody(body): OptionalJsonBody<Reason>,
) -> Answer {
    state
        .hs
        .leave_room(&me, &room_id(&room)?, body.reason.as_deref())
        .await?;
    Ok(Json(json!({})))
}

pub(crate) async fn kick(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(room): PathParams<String>,
    JsonBody(t): JsonBody<Target>,
) -> Answer {
    state
        .hs
        .kick(&me, &room_id(&room)?, &t.user_id, t.reason.as_deref())
        .await?;
    Ok(Json(json!({})))
}

pub(crate) async fn ban(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(room): PathParams<String>,
    JsonBody(t): JsonBody<Target>,
) -> Answer {
    state
        .hs
        .ban(&me, &room_id(&room)?, &t.user_id, t.reason.as_deref())
        .await?;
    Ok(Json(json!({})))
}

pub(crate) async fn unban(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(room): PathParams<String>,
    JsonBody(t): JsonBody<Target>,
) -> Answer {
    state.hs.unban(&me, &room_id(&room)?, &t.user_id).await?;
    Ok(Json(json!({})))
}

pub(crate) async fn send(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams((room, event_type, txn_id)): PathParams<(String, String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> Answer {
    let event_id = state
        .hs
        .send_message(&me, &room_id(&room)?, &event_type, &txn_id, content)
        .await?;
    Ok(Json(json!({ "event_id": event_id })))
}

pub(crate) async fn put_state_empty_key(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams((room, event_type)): PathParams<(String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> Answer {
    let event_id = state
        .hs
        .send_state(&me, &room_id(&room)?, &event_type, "", content)
        .await?;
    Ok(Json(json!({ "event_id": event_id })))
}

pub(crate) async fn put_state(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams((room, event_type, state_key)): PathParams<(String, String, String)>,
    JsonBody(content): JsonBody<Value>,
) -> Answer {
    let event_id = state
        .hs
        .send_state(&me, &room_id(&room)?, &event_type, &state_key, content)
        .await?;
    Ok(Json(json!({ "event_id": event_id })))
}

pub(crate) async fn get_state_empty_key(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams((room, event_type)): PathParams<(String, String)>,
) -> Result<Json<Box<RawValue>>, ApiError> {
    Ok(Json(
        state
            .hs
            .state_event(&me, &room_id(&room)?, &event_type, "")
            .await?,
    ))
}

pub(crate) async fn get_state(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams((room, event_type, state_key)): PathParams<(String, String, String)>,
) -> Result<Json<Box<RawValue>>, ApiError> {
    Ok(Json(
        state
            .hs
            .state_event(&me, &room_id(&room)?, &event_type, &state_key)
            .await?,
    ))
}

pub(crate) async fn all_state(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(room): PathParams<String>,
) -> Answer {
    let events = state.hs.room_state(&me, &room_id(&room)?).await?;
    Ok(Json(Value::Array(
        events.iter().map(|e| e.client_event(None)).collect(),
    )))
}

pub(crate) async fn members(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(room): PathParams<String>,
) -> Answer {
    let events = state.hs.room_members(&me, &room_id(&room)?).await?;
    Ok(Json(
        json!({ "chunk": events.iter().map(|e| e.client_event(None)).collect::<Vec<_>>() }),
    ))
}

pub(crate) async fn joined_members(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(room): PathParams<String>,
) -> Answer {
    let members = state.hs.joined_members(&me, &room_id(&room)?).await?;
    let mut joined = Map::new();
    for (user, m) in members {
        joined.insert(
            user.to_string(),
            json!({ "display_name": m.display_name, "avatar_url": m.avatar_url }),
        );
    }
    Ok(Json(json!({ "joined": joined })))
}

pub(crate) async fn joined_rooms(State(state): State<AppState>, Authed(me): Authed) -> Answer {
    Ok(Json(
        json!({ "joined_rooms": state.hs.joined_rooms(&me).await? }),
    ))
}

pub(crate) async fn event(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams((room, event_id)): PathParams<(String, String)>,
) -> Answer {
    let event_id = ruma::EventId::parse(&event_id)
        .map_err(|_| ApiError::new(ErrorKind::InvalidParam, "Invalid event ID"))?;
    Ok(Json(
        state
            .hs
            .room_event(&me, &room_id(&room)?, &event_id)
            .await?
            .client_event(None),
    ))
}

pub(crate) async fn messages(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(room): PathParams<String>,
    parts: Parts,
) -> Answer {
    let from = query_param(&parts, "from").map(|f| f.parse()).transpose()?;
    let dir = match query_param(&parts, "dir").as_deref() {
        None | Some("b") => Direction::Backward,
        Some("f") => Direction::Forward,
        Some(_) => return Err(ApiError::new(ErrorKind::InvalidParam, "dir must be b or f")),
    };
    let limit = match query_param(&parts, "limit") {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::new(ErrorKind::InvalidParam, "Invalid limit"))?,
        None => 10,
    };
    let page = state
        .hs
        .messages(&me, &room_id(&room)?, from, dir, limit)
        .await?;
    let mut body = json!({
        "chunk": page.chunk.iter().map(|e| e.client_event(None)).collect::<Vec<_>>(),
        "start": page.start.to_string(),
    });
    if let Some(end) = page.end {
        body["end"] = end.to_string().into();
    }
    Ok(Json(body))
}

#[derive(Deserialize)]
pub(crate) struct AliasTarget {
    room_id: OwnedRoomId,
}

pub(crate) async fn put_alias(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(alias): PathParams<String>,
    JsonBody(body): JsonBody<AliasTarget>,
) -> Answer {
    state
        .hs
        .create_alias(&me, &Homeserver::parse_alias(&alias)?, &body.room_id)
        .await?;
    Ok(Json(json!({})))
}

pub(crate) async fn get_alias(
    State(state): State<AppState>,
    PathParams(alias): PathParams<String>,
) -> Answer {
    let (room_id, servers) = state
        .hs
        .resolve_alias(&Homeserver::parse_alias(&alias)?)
        .await?;
    Ok(Json(json!({ "room_id": room_id, "servers": servers })))
}

pub(crate) async fn delete_alias(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(alias): PathParams<String>,
) -> Answer {
    state
        .hs
        .delete_alias(&me, &Homeserver::parse_alias(&alias)?)
        .await?;
    Ok(Json(json!({})))
}

/// Decodes `%XX` escapes (and `+` as a space is not used in these values).
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
