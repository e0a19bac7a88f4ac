//! Rendering failures as Matrix errors.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_core::{Error, ErrorKind};
use serde_json::json;

/// A failure on its way to the client.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        Self(err)
    }
}

impl ApiError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(Error::new(kind, message))
    }
}

/// The HTTP status of each kind of error.
fn status(kind: &ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Forbidden | ErrorKind::GuestAccessForbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound | ErrorKind::Unrecognized => StatusCode::NOT_FOUND,
        ErrorKind::UnknownToken
        | ErrorKind::MissingToken
        | ErrorKind::Unauthorized
        | ErrorKind::UserInteractive(_) => StatusCode::UNAUTHORIZED,
        ErrorKind::BadJson
        | ErrorKind::NotJson
        | ErrorKind::InvalidParam
        | ErrorKind::MissingParam
        | ErrorKind::UserInUse
        | ErrorKind::InvalidUsername
        | ErrorKind::UnsupportedRoomVersion
        | ErrorKind::RoomInUse
        | ErrorKind::InvalidSignature
        | ErrorKind::IncompatibleRoomVersion(_)
        | ErrorKind::Unknown => StatusCode::BAD_REQUEST,
        ErrorKind::ServerManagedAccountData => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let Error { kind, message } = self.0;
        let body = match &kind {
            ErrorKind::UserInteractive(challenge) => {
                let flows: Vec<_> = challenge
                    .flows
                    .iter()
                    .map(|stages| json!({ "stages": stages }))
                    .collect();
                let mut body = json!({
                    "flows": flows,
                    "params": {},
                    "session": challenge.session,
                    "completed": challenge.completed,
                });
                if let Some(failure) = &challenge.failure {
                    body["errcode"] = failure.errcode().into();
                    body["error"] = message.into();
                }
                body
            }
            ErrorKind::IncompatibleRoomVersion(version) => json!({
                "errcode": kind.errcode(), "error": message, "room_version": version,
            }),
            ErrorKind::UnknownToken => {
                json!({ "errcode": kind.errcode(), "error": message, "soft_logout": false })
            }
            _ => json!({ "errcode": kind.errcode(), "error": message }),
        };
        (status(&kind), axum::Json(body)).into_response()
    }
}

/// Fallback for paths no route knows.
pub(crate) async fn unrecognized() -> ApiError {
    ApiError::new(ErrorKind::Unrecognized, "Unrecognized request")
}

/// Gives the bare 404/405 answers that axum produces itself (no route, wrong method) a Matrix
/// body. Answers that already have a content type are left alone.
pub(crate) async fn matrixify_bare_errors(res: Response) -> Response {
    let bare = !res.headers().contains_key(header::CONTENT_TYPE);
    match res.status() {
        StatusCode::METHOD_NOT_ALLOWED if bare => {
            let mut out =
                ApiError::new(ErrorKind::Unrecognized, "Unsupported method").into_response();
            *out.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            if let Some(allow) = res.headers().get(header::ALLOW) {
                out.headers_mut().insert(header::ALLOW, allow.clone());
            }
            out
        }
        StatusCode::NOT_FOUND if bare => unrecognized().await.into_response(),
        _ => res,
    }
}

/// What a panicking handler answers (a bug, never expected; the process keeps serving).
pub(crate) fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("request handler panicked");
    ApiError::new(ErrorKind::Internal, "Internal server error").into_response()
}
