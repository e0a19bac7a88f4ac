//! The device list: read, rename, delete.

use axum::Json;
use axum::extract::State;
use cairn_core::store::DeviceRecord;
use cairn_core::uia::AuthData;
use ruma::OwnedDeviceId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::extract::{Authed, JsonBody, OptionalJsonBody, PathParams};
use crate::{ApiError, AppState};

type Answer = Result<Json<Value>, ApiError>;

fn device_json(user_id: &ruma::UserId, d: &DeviceRecord) -> Value {
    let mut v = json!({ "device_id": d.device_id, "user_id": user_id });
    for (key, value) in [
        ("display_name", d.display_name.clone().map(Value::from)),
        ("last_seen_ts", d.last_seen_ms.map(Value::from)),
        ("last_seen_ip", d.last_seen_ip.clone().map(Value::from)),
    ] {
        if let Some(value) = value {
            v[key] = value;
        }
    }
    v
}

pub(crate) async fn list(State(state): State<AppState>, Authed(me): Authed) -> Answer {
    let devices = state.hs.devices(&me.user_id).await?;
    let devices: Vec<_> = devices
        .iter()
        .map(|d| device_json(&me.user_id, d))
        .collect();
    Ok(Json(json!({ "devices": devices })))
}

pub(crate) async fn get(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(device_id): PathParams<String>,
) -> Answer {
    let device = state
        .hs
        .device(&me.user_id, device_id.as_str().into())
        .await?;
    Ok(Json(device_json(&me.user_id, &device)))
}

#[derive(Deserialize)]
pub(crate) struct Rename {
    display_name: Option<String>,
}

pub(crate) async fn rename(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(device_id): PathParams<String>,
    JsonBody(body): JsonBody<Rename>,
) -> Answer {
    state
        .hs
        .rename_device(
            &me.user_id,
            device_id.as_str().into(),
            body.display_name.as_deref(),
        )
        .await?;
    Ok(Json(json!({})))
}

#[derive(Default, Deserialize)]
pub(crate) struct DeleteOne {
    auth: Option<AuthData>,
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(device_id): PathParams<String>,
    OptionalJsonBody(body): OptionalJsonBody<DeleteOne>,
) -> Answer {
    state
        .hs
        .delete_devices(&me, &[device_id.into()], body.auth)
        .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(crate) struct DeleteMany {
    devices: Vec<OwnedDeviceId>,
    auth: Option<AuthData>,
}

pub(crate) async fn delete_many(
    State(state): State<AppState>,
    Authed(me): Authed,
    JsonBody(body): JsonBody<DeleteMany>,
) -> Answer {
    state
        .hs
        .delete_devices(&me, &body.devices, body.auth)
        .await?;
    Ok(Json(json!({})))
}
