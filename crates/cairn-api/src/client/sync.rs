//! `GET /sync`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::request::Parts;
use cairn_core::ErrorKind;
use cairn_core::sync::SyncRequest;
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
    let res = state
        .hs
        .sync(
            &me,
            SyncRequest {
                since,
                timeout: Duration::from_millis(timeout),
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
        "rooms": { "join": {}, "invite": {}, "leave": {}, "knock": {} },
        "account_data": { "events": account_data },
        "to_device": { "events": to_device },
        "device_one_time_keys_count": res.one_time_key_counts,
        "device_unused_fallback_key_types": res.unused_fallback_key_types,
    });
    if !res.device_lists_changed.is_empty() || !res.device_lists_left.is_empty() {
        let mut lists = Map::new();
        lists.insert("changed".into(), json!(res.device_lists_changed));
        lists.insert("left".into(), json!(res.device_lists_left));
        body["device_lists"] = Value::Object(lists);
    }
    Ok(Json(body))
}
