//! Extractors that turn requests into typed values or Matrix errors (never axum's plain text).

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Query, Request};
use axum::http::{header, request::Parts};
use cairn_core::ErrorKind;
use cairn_core::accounts::Requester;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use crate::{ApiError, AppState};

/// The authenticated requester, from `Authorization: Bearer` or `?access_token=`.
pub struct Authed(pub Requester);

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = match parts.headers.get(header::AUTHORIZATION) {
            Some(value) => value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|t| t.trim().to_owned())
                .ok_or_else(|| {
                    ApiError::new(ErrorKind::UnknownToken, "Invalid Authorization header")
                })?,
            None => query_param(parts, "access_token")
                .ok_or_else(|| ApiError::new(ErrorKind::MissingToken, "Missing access token"))?,
        };
        let ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip().to_string());
        Ok(Self(state.hs.authenticate(&token, ip.as_deref()).await?))
    }
}

/// One query-string parameter.
pub fn query_param(parts: &Parts, name: &str) -> Option<String> {
    Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
        .ok()?
        .0
        .remove(name)
}

/// A JSON body of type `T`: 413 `M_TOO_LARGE` past the limit, 400 `M_NOT_JSON` if it is not
/// JSON, 400 `M_BAD_JSON` if it is JSON of the wrong shape.
pub struct JsonBody<T>(pub T);

/// Like [`JsonBody`], but an empty body means `T::default()` (for endpoints whose body is
/// optional, such as `DELETE /devices/{id}`).
pub struct OptionalJsonBody<T>(pub T);

/// A body past the limit is still read (and dropped) up to this size, so that the client gets
/// its 413 instead of a reset connection; anything larger is cut off.
const DRAIN_CAP_BYTES: usize = 16 * 1024 * 1024;

pub(crate) async fn read_body(req: Request, state: &AppState) -> Result<bytes::Bytes, ApiError> {
    let limit = state.settings.max_request_bytes;
    let mut body = req.into_body();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        seen += data.len();
        if seen > DRAIN_CAP_BYTES {
            break;
        }
        if seen <= limit {
            buf.extend_from_slice(data);
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            ErrorKind::TooLarge,
            format!("Request body is larger than {limit} bytes"),
        ));
    }
    Ok(buf.freeze())
}

pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|err| {
        if err.is_data() {
            ApiError::new(ErrorKind::BadJson, format!("Invalid request body: {err}"))
        } else {
            ApiError::new(ErrorKind::NotJson, "Content not JSON")
        }
    })
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        parse(&bytes).map(Self)
    }
}

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        parse(&bytes).map(Self)
    }
}

/// Path parameters, decoded; a malformed path is `M_UNRECOGNIZED` rather than axum's text.
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|_| ApiError::new(ErrorKind::Unrecognized, "Unrecognized request path"))
    }
}

/// Parses a user ID from a path segment (400 `M_INVALID_PARAM` if it is none).
pub fn user_id_param(raw: &str) -> Result<ruma::OwnedUserId, ApiError> {
    ruma::UserId::parse(raw).map_err(|_| ApiError::new(ErrorKind::InvalidParam, "Invalid user ID"))
}
