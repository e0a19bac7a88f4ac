//! Cairn's HTTP face: axum routers for the client-server API, the federation listener and
//! `/metrics`.
//!
//! API boundary: handlers parse (into serde types or ruma identifiers), authenticate, call one
//! [`cairn_core::Homeserver`] method and render the answer. They hold no rules. Every failure
//! leaves as Matrix JSON (`errcode`, `error`) with the matching status, including unknown paths
//! (404 `M_UNRECOGNIZED`), wrong methods (405), oversized bodies (413) and panics (500).

mod client;
mod error;
mod extract;
mod federation;
mod metrics;

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, Method, header};
use cairn_core::Homeserver;
use cairn_federation::ServerIdentity;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{Any, CorsLayer};

pub use error::ApiError;
pub use metrics::install_recorder;

/// HTTP-level settings.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Largest request body accepted, in bytes (larger ones get 413 `M_TOO_LARGE`).
    pub max_request_bytes: usize,
    /// The client API's public base URL, for `/.well-known/matrix/client`.
    pub public_baseurl: String,
    /// `host:port` other servers should use, for `/.well-known/matrix/server`.
    pub federation_address: String,
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The rules.
    pub hs: Homeserver,
    /// The server's signing identity.
    pub identity: ServerIdentity,
    /// Other servers' keys, for authenticating their requests.
    pub key_ring: cairn_federation::KeyRing,
    /// HTTP settings.
    pub settings: std::sync::Arc<ApiSettings>,
    /// Renders `/metrics`; `None` disables the endpoint.
    pub metrics: Option<PrometheusHandle>,
}

/// The router for the client listener: `/_matrix/client`, `/.well-known/matrix`, `/metrics`.
pub fn client_router(state: AppState) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT])
        .max_age(Duration::from_secs(3600));
    common_layers(client::router().merge(metrics::router()).with_state(state)).layer(cors)
}

/// The router for the federation listener: `/_matrix/key` and `/_matrix/federation`.
pub fn federation_router(state: AppState) -> Router {
    common_layers(federation::router().with_state(state))
}

fn common_layers(router: Router) -> Router {
    router
        .fallback(error::unrecognized)
        .layer(axum::middleware::map_response(error::matrixify_bare_errors))
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(axum::middleware::map_response(
            |mut res: axum::response::Response| async {
                res.headers_mut()
                    .entry(header::CACHE_CONTROL)
                    .or_insert(HeaderValue::from_static("no-cache"));
                res
            },
        ))
}
