//! `GET /sync`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::request::Parts;
use cairn_core::ErrorKind;
use cairn_core::accounts::Requester;
use cairn_core::rooms::pdu::Pdu;
use cairn_core::sync::{RoomsSync, SyncFilter, SyncRequest};
use serde_json::{Map, Value, json};

use crate::extract::{Authed, query_param};
use crate::{ApiError, AppState};

pub(crate) async fn sync(
    State(state): State<AppState>,
    Authed(me): Authed,
    parts: Parts,
) -> Result<Json<Value>, ApiError> {
    let since = query_param(&parts, "since")
        .map(|s| s.parse())
        .transpose()?;
    let timeout = match query_param(&parts, "timeout") {
        Some(t) => t
            .parse::<u64>()
            .map_err(|_| ApiError::new(ErrorKind::InvalidParam, "Invalid timeout"))?,
        None => 0,
    };
    let filter = filter(&state, &me, query_param(&parts, "filter")).await?;
    let res = state
        .hs
        .sync(
            &me,
            SyncRequest {
                since,
                timeout: Duration::from_millis(timeout),
                filter,
            },
        )
        .await?;

    let account_data: Vec<Value> = res
        .account_data
        .iter()
        .map(|(kind, content)| json!({ "type": kind, "content": content }))
        .collect();
    let to_device: Vec<Value> = res
        .to_device
        .iter()
        .map(|m| json!({ "sender": m.sender, "type": m.event_type, "content": m.content }))
        .collect();
    let mut body = json!({
        "next_batch": res.next_batch.to_string(),
        "rooms": rooms(&res.rooms),
        "account_data": { "events": account_data },
        "to_device": { "events": to_device },
        "device_one_time_keys_count": res.one_time_key_counts,
        "device_unused_fallback_key_types": res.unused_fallback_key_types,
    });
    if !res.device_lists_changed.is_empty() || !res.device_lists_left.is_empty() {
        body["device_lists"] =
            json!({ "changed": res.device_lists_changed, "left": res.device_lists_left });
    }
    Ok(Json(body))
}

/// The `filter` parameter: inline JSON or the ID of a stored filter.
async fn filter(
    state: &AppState,
    me: &Requester,
    raw: Option<String>,
) -> Result<SyncFilter, ApiError> {
    let Some(raw) = raw else {
        return Ok(SyncFilter::default());
    };
    let json = if raw.trim_start().starts_with('{') {
        raw
    } else {
        state
            .hs
            .filter(&me.user_id, &me.user_id, &raw)
            .await?
            .get()
            .to_owned()
    };
    serde_json::from_str(&json)
        .map_err(|e| ApiError::new(ErrorKind::InvalidParam, format!("Invalid filter: {e}")))
}

fn events(pdus: &[Pdu]) -> Vec<Value> {
    pdus.iter().map(|e| e.client_event(None)).collect()
}

fn rooms(rooms: &RoomsSync) -> Value {
    let mut join = Map::new();
    for (room_id, room) in &rooms.join {
        join.insert(
            room_id.to_string(),
            json!({
                "timeline": { "events": events(&room.timeline), "limited": room.limited, "prev_batch": room.prev_batch.to_string() },
                "state": { "events": events(&room.state) },
                "account_data": { "events": [] },
                "ephemeral": { "events": [] },
                "summary": {
                    "m.joined_member_count": room.joined_count,
                    "m.invited_member_count": room.invited_count,
                    "m.heroes": room.heroes,
                },
                "unread_notifications": { "notification_count": 0, "highlight_count": 0 },
            }),
        );
    }
    let mut invite = Map::new();
    for (room_id, stripped) in &rooms.invite {
        invite.insert(
            room_id.to_string(),
            json!({ "invite_state": { "events": stripped } }),
        );
    }
    let mut leave = Map::new();
    for (room_id, room) in &rooms.leave {
        leave.insert(
            room_id.to_string(),
            json!({
                "timeline": { "events": events(&room.timeline), "limited": room.limited, "prev_batch": room.prev_batch.to_string() },
                "state": { "events": [] },
                "account_data": { "events": [] },
            }),
        );
    }
    json!({ "join": join, "invite": invite, "leave": leave, "knock": {} })
}
