//! The federation listener's routes: the key server, the version endpoint, and the signed
//! `/_matrix/federation` endpoints, each authenticated by its X-Matrix signature.

use axum::Json;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::routing::{get, post, put};
use cairn_core::ErrorKind;
use cairn_core::e2ee::keys::{ClaimRequest, QueryRequest};
use cairn_core::inbound::Transaction;
use cairn_federation::XMatrixError;
use ruma::OwnedServerName;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{PathParams, parse, read_body, user_id_param};

type Answer = Result<Json<Value>, ApiError>;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/key/v2/server", get(server_keys))
        // Deprecated form with a key ID; the answer is the same document.
        .route("/_matrix/key/v2/server/{key_id}", get(server_keys))
        .route("/_matrix/federation/v1/version", get(version))
        .route("/_matrix/federation/v1/user/keys/query", post(query_keys))
        .route("/_matrix/federation/v1/user/keys/claim", post(claim_keys))
        .route(
            "/_matrix/federation/v1/send/{txn_id}",
            put(send_transaction),
        )
        .route(
            "/_matrix/federation/v1/user/devices/{user_id}",
            get(user_devices),
        )
        .route(
            "/_matrix/federation/v1/make_join/{room_id}/{user_id}",
            get(make_join),
        )
        .route(
            "/_matrix/federation/v2/send_join/{room_id}/{event_id}",
            put(send_join),
        )
        .route(
            "/_matrix/federation/v2/invite/{room_id}/{event_id}",
            put(invite),
        )
        .route("/_matrix/federation/v1/event/{event_id}", get(event))
        .route("/_matrix/federation/v1/state/{room_id}", get(room_state))
        .route(
            "/_matrix/federation/v1/state_ids/{room_id}",
            get(room_state_ids),
        )
        .route("/_matrix/federation/v1/backfill/{room_id}", get(backfill))
        .route(
            "/_matrix/federation/v1/get_missing_events/{room_id}",
            post(missing_events),
        )
        .route("/_matrix/federation/v1/query/profile", get(query_profile))
        .route(
            "/_matrix/federation/v1/query/directory",
            get(query_directory),
        )
        .route(
            "/_matrix/federation/v1/make_leave/{room_id}/{user_id}",
            get(make_leave),
        )
        .route(
            "/_matrix/federation/v2/send_leave/{room_id}/{event_id}",
            put(send_leave),
        )
}

async fn server_keys(State(state): State<AppState>) -> Json<Value> {
    Json(state.identity.key_document(state.hs.now_ms()))
}

async fn version() -> Json<Value> {
    Json(json!({ "server": { "name": "Cairn", "version": env!("CARGO_PKG_VERSION") } }))
}

/// A request without a body, signed by `0`.
pub(crate) struct SignedBy(pub OwnedServerName);

/// A JSON body signed by `origin`.
pub(crate) struct SignedJson<T> {
    pub origin: OwnedServerName,
    pub body: T,
}

fn unauthorized(err: XMatrixError) -> ApiError {
    ApiError::new(ErrorKind::Unauthorized, err.to_string())
}

async fn authenticate(
    parts: &Parts,
    state: &AppState,
    body: Option<&[u8]>,
) -> Result<OwnedServerName, ApiError> {
    let authorization = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    let uri = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |p| p.as_str());
    state
        .key_ring
        .authenticate(authorization, parts.method.as_str(), uri, body)
        .await
        .map_err(unauthorized)
}

impl FromRequestParts<AppState> for SignedBy {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(parts, state, None).await.map(Self)
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for SignedJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let bytes = read_body(Request::from_parts(parts.clone(), body), state).await?;
        let origin = authenticate(&parts, state, Some(&bytes)).await?;
        Ok(Self {
            origin,
            body: parse(&bytes)?,
        })
    }
}

async fn query_keys(State(state): State<AppState>, req: SignedJson<QueryRequest>) -> Answer {
    tracing::debug!(origin = %req.origin, "federation key query");
    Ok(Json(state.hs.federation_query_keys(req.body).await?))
}

async fn claim_keys(State(state): State<AppState>, req: SignedJson<ClaimRequest>) -> Answer {
    tracing::debug!(origin = %req.origin, "federation key claim");
    let res = state.hs.federation_claim_keys(req.body).await?;
    Ok(Json(json!({ "one_time_keys": res.one_time_keys })))
}

async fn user_devices(
    State(state): State<AppState>,
    SignedBy(origin): SignedBy,
    PathParams(user_id): PathParams<String>,
) -> Answer {
    let user_id = user_id_param(&user_id)?;
    tracing::debug!(%origin, %user_id, "federation device list request");
    Ok(Json(state.hs.federation_user_devices(&user_id).await?))
}

async fn send_transaction(
    State(state): State<AppState>,
    PathParams(txn_id): PathParams<String>,
    req: SignedJson<Transaction>,
) -> Answer {
    Ok(Json(
        state
            .hs
            .receive_transaction(&req.origin, &txn_id, req.body)
            .await?,
    ))
}

async fn make_join(
    State(state): State<AppState>,
    SignedBy(origin): SignedBy,
    PathParams((room_id, user_id)): PathParams<(String, String)>,
    parts: Parts,
) -> Answer {
    let room_id = room_id_param(&room_id)?;
    let user_id = user_id_param(&user_id)?;
    // `ver` repeats, once per supported room version.
    let versions: Vec<String> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.strip_prefix("ver="))
        .map(str::to_owned)
        .collect();
    Ok(Json(
        state
            .hs
            .make_join(&origin, &room_id, &user_id, &versions)
            .await?,
    ))
}

async fn send_join(
    State(state): State<AppState>,
    PathParams((room_id, event_id)): PathParams<(String, String)>,
    req: SignedJson<ruma::CanonicalJsonObject>,
) -> Answer {
    let room_id = room_id_param(&room_id)?;
    let event_id = ruma::EventId::parse(&event_id)
        .map_err(|_| ApiError::new(ErrorKind::InvalidParam, "Invalid event ID"))?;
    Ok(Json(
        state
            .hs
            .send_join(&req.origin, &room_id, &event_id, req.body)
            .await?,
    ))
}

fn room_id_param(raw: &str) -> Result<ruma::OwnedRoomId, ApiError> {
    ruma::RoomId::parse(raw).map_err(|_| ApiError::new(ErrorKind::InvalidParam, "Invalid room ID"))
}

async fn invite(
    State(state): State<AppState>,
    PathParams((room_id, event_id)): PathParams<(String, String)>,
    req: SignedJson<cairn_core::rooms::invites::InviteRequest>,
) -> Answer {
    let room_id = room_id_param(&room_id)?;
    let event_id = ruma::EventId::parse(&event_id)
        .map_err(|_| ApiError::new(ErrorKind::InvalidParam, "Invalid event ID"))?;
    Ok(Json(
        state
            .hs
            .receive_invite(&req.origin, &room_id, &event_id, req.body)
            .await?,
    ))
}

async fn event(
    State(state): State<AppState>,
    SignedBy(origin): SignedBy,
    PathParams(event_id): PathParams<String>,
) -> Answer {
    let event_id = ruma::EventId::parse(&event_id)
        .map_err(|_| ApiError::new(ErrorKind::InvalidParam, "Invalid event ID"))?;
    Ok(Json(state.hs.federation_event(&origin, &event_id).await?))
}

/// The `event_id` query parameter of `/state` and `/state_ids`.
fn event_id_query(parts: &Parts) -> Result<ruma::OwnedEventId, ApiError> {
    let raw = crate::extract::query_param(parts, "event_id")
        .ok_or_else(|| ApiError::new(ErrorKind::MissingParam, "Missing event_id"))?;
    ruma::EventId::parse(&raw)
        .map_err(|_| ApiError::new(ErrorKind::InvalidParam, "Invalid event ID"))
}

async fn room_state(
    State(state): State<AppState>,
    SignedBy(origin): SignedBy,
    PathParams(room_id): PathParams<String>,
    parts: Parts,
) -> Answer {
    let (room_id, event_id) = (room_id_param(&room_id)?, event_id_query(&parts)?);
    Ok(Json(
        state
            .hs
            .federation_state(&origin, &room_id, &event_id)
            .await?,
    ))
}

async fn room_state_ids(
    State(state): State<AppState>,
    SignedBy(origin): SignedBy,
    PathParams(room_id): PathParams<String>,
    parts: Parts,
) -> Answer {
    let (room_id, event_id) = (room_id_param(&room_id)?, event_id_query(&parts)?);
    Ok(Json(
        state
            .hs
            .federation_state_ids(&origin, &room_id, &event_id)
            .await?,
    ))
}

async fn backfill(
    State(state): State<AppState>,
    SignedBy(origin): SignedBy,
    PathParams(room_id): PathParams<String>,
    parts: Parts,
) -> Answer {
    let room_id = room_id_param(&room_id)?;
    let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
        .map_err(|_| ApiError::new(ErrorKind::InvalidParam, "Bad query string"))?
        .0;
    let from = pairs
        .iter()
        .filter(|(name, _)| name == "v")
        .map(|(_, id)| ruma::EventId::parse(id))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ApiError::new(ErrorKind::InvalidParam, "Invalid event ID in v"))?;
    let limit = pairs
        .iter()
        .find(|(name, _)| name == "limit")
        .map(|(_, n)| n.parse::<usize>())
        .transpose()
        .map_err(|_| ApiError::new(ErrorKind::InvalidParam, "Invalid limit"))?
        .ok_or_else(|| ApiError::new(ErrorKind::MissingParam, "Missing limit"))?;
    Ok(Json(
        state
            .hs
            .federation_backfill(&origin, &room_id, &from, limit)
            .await?,
    ))
}

async fn missing_events(
    State(state): State<AppState>,
    PathParams(room_id): PathParams<String>,
    req: SignedJson<cairn_core::rooms::history::MissingEventsRequest>,
) -> Answer {
    let room_id = room_id_param(&room_id)?;
    Ok(Json(
        state
            .hs
            .federation_missing_events(&req.origin, &room_id, req.body)
            .await?,
    ))
}

async fn make_leave(
    State(state): State<AppState>,
    SignedBy(origin): SignedBy,
    PathParams((room_id, user_id)): PathParams<(String, String)>,
) -> Answer {
    let room_id = room_id_param(&room_id)?;
    let user_id = user_id_param(&user_id)?;
    Ok(Json(
        state.hs.make_leave(&origin, &room_id, &user_id).await?,
    ))
}

async fn send_leave(
    State(state): State<AppState>,
    PathParams((room_id, event_id)): PathParams<(String, String)>,
    req: SignedJson<ruma::CanonicalJsonObject>,
) -> Answer {
    let room_id = room_id_param(&room_id)?;
    let event_id = ruma::EventId::parse(&event_id)
        .map_err(|_| ApiError::new(ErrorKind::InvalidParam, "Invalid event ID"))?;
    Ok(Json(
        state
            .hs
            .send_leave(&req.origin, &room_id, &event_id, req.body)
            .await?,
    ))
}

async fn query_profile(State(state): State<AppState>, _: SignedBy, parts: Parts) -> Answer {
    let user_id = crate::extract::query_param(&parts, "user_id")
        .ok_or_else(|| ApiError::new(ErrorKind::MissingParam, "Missing user_id"))?;
    let user_id = user_id_param(&user_id)?;
    let field = crate::extract::query_param(&parts, "field");
    Ok(Json(
        state
            .hs
            .federation_query_profile(&user_id, field.as_deref())
            .await?,
    ))
}

async fn query_directory(State(state): State<AppState>, _: SignedBy, parts: Parts) -> Answer {
    let alias = crate::extract::query_param(&parts, "room_alias")
        .ok_or_else(|| ApiError::new(ErrorKind::MissingParam, "Missing room_alias"))?;
    let alias = cairn_core::Homeserver::parse_alias(&alias)?;
    Ok(Json(state.hs.federation_query_directory(&alias).await?))
}
