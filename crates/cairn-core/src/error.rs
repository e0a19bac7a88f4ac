//! The one error type of the rules, carrying the Matrix error code a client will see.

use crate::store::StoreError;
use crate::uia::UiaChallenge;

/// Result of a homeserver rule.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in Matrix terms. The API layer maps each kind to an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// `M_FORBIDDEN`
    Forbidden,
    /// `M_NOT_FOUND`
    NotFound,
    /// `M_UNKNOWN_TOKEN`
    UnknownToken,
    /// `M_MISSING_TOKEN`
    MissingToken,
    /// `M_UNAUTHORIZED`: a federation request without a valid X-Matrix signature.
    Unauthorized,
    /// `M_INCOMPATIBLE_ROOM_VERSION`: the other server does not support this room's version.
    IncompatibleRoomVersion(String),
    /// `M_BAD_JSON`: the body is JSON but not of the right shape.
    BadJson,
    /// `M_NOT_JSON`
    NotJson,
    /// `M_INVALID_PARAM`
    InvalidParam,
    /// `M_MISSING_PARAM`
    MissingParam,
    /// `M_USER_IN_USE`
    UserInUse,
    /// `M_INVALID_USERNAME`
    InvalidUsername,
    /// `M_GUEST_ACCESS_FORBIDDEN`
    GuestAccessForbidden,
    /// `M_UNRECOGNIZED`
    Unrecognized,
    /// `M_TOO_LARGE`
    TooLarge,
    /// `M_BAD_JSON` with HTTP 405: account data that the server manages itself.
    ServerManagedAccountData,
    /// `M_UNSUPPORTED_ROOM_VERSION`
    UnsupportedRoomVersion,
    /// `M_ROOM_IN_USE`: a room alias that is taken.
    RoomInUse,
    /// `M_INVALID_SIGNATURE`
    InvalidSignature,
    /// `M_UNKNOWN`: a request the server understands but refuses for a reason with no own code.
    Unknown,
    /// User-interactive authentication is needed (or a stage failed): HTTP 401 with flows.
    UserInteractive(Box<UiaChallenge>),
    /// The store failed; the client sees `M_UNKNOWN` with HTTP 500 and nothing was written.
    Internal,
}

impl ErrorKind {
    /// The Matrix `errcode` for this kind.
    pub fn errcode(&self) -> &'static str {
        match self {
            Self::Forbidden => "M_FORBIDDEN",
            Self::NotFound => "M_NOT_FOUND",
            Self::UnknownToken => "M_UNKNOWN_TOKEN",
            Self::MissingToken => "M_MISSING_TOKEN",
            Self::Unauthorized => "M_UNAUTHORIZED",
            Self::IncompatibleRoomVersion(_) => "M_INCOMPATIBLE_ROOM_VERSION",
            Self::BadJson | Self::ServerManagedAccountData => "M_BAD_JSON",
            Self::NotJson => "M_NOT_JSON",
            Self::InvalidParam => "M_INVALID_PARAM",
            Self::MissingParam => "M_MISSING_PARAM",
            Self::UserInUse => "M_USER_IN_USE",
            Self::InvalidUsername => "M_INVALID_USERNAME",
            Self::GuestAccessForbidden => "M_GUEST_ACCESS_FORBIDDEN",
            Self::Unrecognized => "M_UNRECOGNIZED",
            Self::TooLarge => "M_TOO_LARGE",
            Self::UnsupportedRoomVersion => "M_UNSUPPORTED_ROOM_VERSION",
            Self::RoomInUse => "M_ROOM_IN_USE",
            Self::InvalidSignature => "M_INVALID_SIGNATURE",
            Self::Unknown | Self::Internal => "M_UNKNOWN",
            Self::UserInteractive(challenge) => challenge
                .failure
                .as_ref()
                .map_or("M_FORBIDDEN", |f| f.errcode()),
        }
    }
}

/// An error with a human-readable message for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", kind.errcode())]
pub struct Error {
    /// What kind of failure this is.
    pub kind: ErrorKind,
    /// The `error` text.
    pub message: String,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// `M_FORBIDDEN`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, message)
    }

    /// `M_NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// `M_BAD_JSON`.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadJson, message)
    }

    /// `M_INVALID_PARAM`.
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParam, message)
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        tracing::error!(error = %err, "store failure");
        Self::new(ErrorKind::Internal, "Internal storage error")
    }
}
