//! The federation listener's routes: the key server and the version endpoint.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use crate::AppState;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/key/v2/server", get(server_keys))
        // Deprecated form with a key ID; the answer is the same document.
        .route("/_matrix/key/v2/server/{key_id}", get(server_keys))
        .route("/_matrix/federation/v1/version", get(version))
}

async fn server_keys(State(state): State<AppState>) -> Json<Value> {
    Json(state.identity.key_document(state.hs.now_ms()))
}

async fn version() -> Json<Value> {
    Json(json!({ "server": { "name": "Cairn", "version": env!("CARGO_PKG_VERSION") } }))
}
