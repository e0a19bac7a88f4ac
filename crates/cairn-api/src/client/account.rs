//! Registration, login, logout and `whoami`.

use axum::Json;
use axum::extract::State;
use axum::http::request::Parts;
use cairn_core::ErrorKind;
use cairn_core::accounts::{LoginRequest, LoginSession, RegisterRequest};
use serde_json::{Value, json};

use crate::extract::{Authed, JsonBody, query_param};
use crate::{ApiError, AppState};

type Answer = Result<Json<Value>, ApiError>;

fn session_json(session: &LoginSession, state: &AppState) -> Value {
    json!({
        "user_id": session.user_id,
        "access_token": session.access_token,
        "device_id": session.device_id,
        "home_server": state.hs.config().server_name,
    })
}

pub(crate) async fn register(
    State(state): State<AppState>,
    parts: Parts,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> Answer {
    let guest = match query_param(&parts, "kind").as_deref() {
        None | Some("user") => false,
        Some("guest") => true,
        Some(_) => return Err(ApiError::new(ErrorKind::InvalidParam, "Invalid kind")),
    };
    let registered = state.hs.register(req, guest).await?;
    Ok(Json(match &registered.session {
        Some(session) => session_json(session, &state),
        None => json!({ "user_id": registered.user_id }),
    }))
}

pub(crate) async fn username_available(State(state): State<AppState>, parts: Parts) -> Answer {
    state
        .hs
        .username_available(query_param(&parts, "username").as_deref())
        .await?;
    Ok(Json(json!({ "available": true })))
}

pub(crate) async fn login_flows() -> Json<Value> {
    Json(json!({ "flows": [{ "type": "m.login.password" }] }))
}

pub(crate) async fn login(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<LoginRequest>,
) -> Answer {
    let session = state.hs.login(req).await?;
    Ok(Json(session_json(&session, &state)))
}

pub(crate) async fn logout(State(state): State<AppState>, Authed(me): Authed) -> Answer {
    state.hs.logout(&me).await?;
    Ok(Json(json!({})))
}

pub(crate) async fn logout_all(State(state): State<AppState>, Authed(me): Authed) -> Answer {
    state.hs.logout_all(&me).await?;
    Ok(Json(json!({})))
}

pub(crate) async fn whoami(Authed(me): Authed) -> Json<Value> {
    Json(json!({ "user_id": me.user_id, "device_id": me.device_id, "is_guest": false }))
}
