//! What a client asks before anything else: versions, capabilities, `.well-known`.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::AppState;
use crate::extract::Authed;

/// Spec versions Cairn serves, oldest first.
const SPEC_VERSIONS: &[&str] = &[
    "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11",
];

pub(crate) async fn versions() -> Json<Value> {
    Json(json!({
        "versions": SPEC_VERSIONS,
        "unstable_features": { "org.matrix.msc4081": true },
    }))
}

pub(crate) async fn well_known_client(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "m.homeserver": { "base_url": state.settings.public_baseurl } }))
}

pub(crate) async fn well_known_server(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "m.server": state.settings.federation_address }))
}

pub(crate) async fn capabilities(_: Authed) -> Json<Value> {
    Json(json!({
        "capabilities": {
            "m.change_password": { "enabled": false },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": false },
        }
    }))
}
