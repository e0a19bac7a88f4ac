//! What the rules need from other servers, behind a trait, and how their failures are reported.
//!
//! The transport (`cairn-federation`) signs, resolves and sends; the rules here decide what to
//! ask, in parallel under one deadline, and how to fold the answers and failures into the client
//! response. A failure is reported per server in the shape Synapse uses, `{"status", "message"}`.

use std::time::Duration;

use async_trait::async_trait;
use ruma::ServerName;
use serde_json::Value;

/// How a request to another server went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// No answer: connection refused or reset, name resolution failed, TLS failed, or the
    /// deadline passed.
    #[error("{0}")]
    Unreachable(String),
    /// The server answered with an HTTP error.
    #[error("{status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The `error` of its Matrix error body, or a summary.
        message: String,
    },
    /// The server answered with something that is not the expected JSON.
    #[error("invalid response: {0}")]
    Invalid(String),
}

impl RemoteError {
    /// The entry for this server in a client response's `failures`.
    pub fn to_failure(&self) -> Value {
        let status = match self {
            RemoteError::Unreachable(_) | RemoteError::Invalid(_) => 503,
            RemoteError::Status { status, .. } => *status,
        };
        serde_json::json!({ "status": status, "message": self.to_string() })
    }
}

/// The federation requests the rules make. Each call is one signed request to one server.
#[async_trait]
pub trait Federation: Send + Sync {
    /// `POST /_matrix/federation/v1/user/keys/query`.
    async fn query_keys(
        &self,
        destination: &ServerName,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, RemoteError>;

    /// `POST /_matrix/federation/v1/user/keys/claim`.
    async fn claim_keys(
        &self,
        destination: &ServerName,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, RemoteError>;

    /// Items were queued for other servers: the sender should look at the queue now.
    fn wake_sender(&self) {}
}

/// For a homeserver that does not federate (and for tests that need no other server): every
/// request fails as unreachable.
pub struct NoFederation;

#[async_trait]
impl Federation for NoFederation {
    async fn query_keys(
        &self,
        _: &ServerName,
        _: Value,
        _: Duration,
    ) -> Result<Value, RemoteError> {
        Err(RemoteError::Unreachable("federation is disabled".into()))
    }

    async fn claim_keys(
        &self,
        _: &ServerName,
        _: Value,
        _: Duration,
    ) -> Result<Value, RemoteError> {
        Err(RemoteError::Unreachable("federation is disabled".into()))
    }
}
