//! E2EE key endpoints and to-device messaging.

use axum::Json;
use axum::extract::State;
use axum::http::request::Parts;
use cairn_core::ErrorKind;
use cairn_core::e2ee::cross_signing::{DeviceSigningUpload, SignaturesUpload};
use cairn_core::e2ee::keys::{ClaimRequest, QueryRequest, UploadRequest};
use cairn_core::e2ee::to_device::ToDeviceMessages;
use cairn_core::stream::SyncToken;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::extract::{Authed, JsonBody, PathParams, query_param};
use crate::{ApiError, AppState};

type Answer = Result<Json<Value>, ApiError>;

pub(crate) async fn upload(
    State(state): State<AppState>,
    Authed(me): Authed,
    JsonBody(req): JsonBody<UploadRequest>,
) -> Answer {
    let counts = state.hs.upload_keys(&me, req).await?;
    Ok(Json(json!({ "one_time_key_counts": counts })))
}

pub(crate) async fn query(
    State(state): State<AppState>,
    Authed(me): Authed,
    JsonBody(req): JsonBody<QueryRequest>,
) -> Answer {
    let res = state.hs.query_keys(&me.user_id, req).await?;
    Ok(Json(json!({
        "device_keys": res.device_keys,
        "failures": res.failures,
        "master_keys": res.master_keys,
        "self_signing_keys": res.self_signing_keys,
        "user_signing_keys": res.user_signing_keys,
    })))
}

pub(crate) async fn device_signing_upload(
    State(state): State<AppState>,
    Authed(me): Authed,
    JsonBody(req): JsonBody<DeviceSigningUpload>,
) -> Answer {
    state.hs.upload_device_signing(&me, req).await?;
    Ok(Json(json!({})))
}

pub(crate) async fn signatures_upload(
    State(state): State<AppState>,
    Authed(me): Authed,
    JsonBody(body): JsonBody<SignaturesUpload>,
) -> Answer {
    let failures = state.hs.upload_signatures(&me, body).await?;
    Ok(Json(json!({ "failures": failures })))
}

pub(crate) async fn claim(
    State(state): State<AppState>,
    _: Authed,
    parts: Parts,
    JsonBody(mut req): JsonBody<ClaimRequest>,
) -> Answer {
    // Synapse reads the deadline from the query string, so clients send it there too.
    if req.timeout.is_none() {
        req.timeout = query_param(&parts, "timeout").and_then(|t| t.parse().ok());
    }
    let res = state.hs.claim_keys(req).await?;
    let mut answer = json!({ "one_time_keys": res.one_time_keys, "failures": res.failures });
    if !res.cached.is_empty() {
        answer["org.matrix.msc4081.cached"] = json!(res.cached);
    }
    Ok(Json(answer))
}

pub(crate) async fn changes(
    State(state): State<AppState>,
    Authed(me): Authed,
    parts: Parts,
) -> Answer {
    let from = query_param(&parts, "from")
        .ok_or_else(|| ApiError::new(ErrorKind::MissingParam, "Missing from"))?;
    // `to` is required by the spec but, as in Synapse, changes after it may be included.
    query_param(&parts, "to")
        .ok_or_else(|| ApiError::new(ErrorKind::MissingParam, "Missing to"))?;
    let from: SyncToken = from.parse()?;
    let delta = state.hs.key_changes(&me.user_id, from).await?;
    Ok(Json(
        json!({ "changed": delta.changed, "left": delta.left }),
    ))
}

#[derive(Deserialize)]
pub(crate) struct SendToDevice {
    messages: ToDeviceMessages,
}

pub(crate) async fn send_to_device(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams((event_type, txn_id)): PathParams<(String, String)>,
    JsonBody(body): JsonBody<SendToDevice>,
) -> Answer {
    state
        .hs
        .send_to_device(&me, &event_type, &txn_id, body.messages)
        .await?;
    Ok(Json(json!({})))
}
