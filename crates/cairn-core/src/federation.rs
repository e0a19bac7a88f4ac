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
    /// No connection: refused or reset, name resolution failed, TLS failed.
    #[error("{0}")]
    Unreachable(String),
    /// No answer before the deadline.
    #[error("timed out")]
    TimedOut,
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
            RemoteError::Unreachable(_) | RemoteError::TimedOut | RemoteError::Invalid(_) => 503,
            RemoteError::Status { status, .. } => *status,
        };
        serde_json::json!({ "status": status, "message": self.to_string() })
    }

    /// Whether the failure says the server could not answer (MSC4081 decision 13), and how:
    /// `connect`, `timeout`, `http_429`, `http_5xx` or `bad_response`. Any other answer (401,
    /// 403, 404...) is the server's word and `None`.
    pub fn unreachable_reason(&self) -> Option<&'static str> {
        match self {
            RemoteError::Unreachable(_) => Some("connect"),
            RemoteError::TimedOut => Some("timeout"),
            RemoteError::Invalid(_) => Some("bad_response"),
            RemoteError::Status { status: 429, .. } => Some("http_429"),
            RemoteError::Status { status, .. } if *status >= 500 => Some("http_5xx"),
            RemoteError::Status { .. } => None,
        }
    }
}

/// The federation requests the rules make. Each call is one signed request to one server. Every
/// request fails as unreachable unless an implementation provides it.
#[async_trait]
pub trait Federation: Send + Sync {
    /// `POST /_matrix/federation/v1/user/keys/query`.
    async fn query_keys(
        &self,
        destination: &ServerName,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, RemoteError> {
        let _ = (destination, body, timeout);
        Err(RemoteError::Unreachable("federation is disabled".into()))
    }

    /// `POST /_matrix/federation/v1/user/keys/claim`.
    async fn claim_keys(
        &self,
        destination: &ServerName,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, RemoteError> {
        let _ = (destination, body, timeout);
        Err(RemoteError::Unreachable("federation is disabled".into()))
    }

    /// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}?ver=...`.
    async fn make_join(
        &self,
        destination: &ServerName,
        room_id: &ruma::RoomId,
        user_id: &ruma::UserId,
        versions: &[&str],
    ) -> Result<Value, RemoteError> {
        let _ = (destination, room_id, user_id, versions);
        Err(RemoteError::Unreachable("federation is disabled".into()))
    }

    /// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`.
    async fn send_join(
        &self,
        destination: &ServerName,
        room_id: &ruma::RoomId,
        event_id: &ruma::EventId,
        event: Value,
    ) -> Result<Value, RemoteError> {
        let _ = (destination, room_id, event_id, event);
        Err(RemoteError::Unreachable("federation is disabled".into()))
    }

    /// `GET /_matrix/federation/v1/query/profile?user_id=...`.
    async fn query_profile(
        &self,
        destination: &ServerName,
        user_id: &ruma::UserId,
    ) -> Result<Value, RemoteError> {
        let _ = (destination, user_id);
        Err(RemoteError::Unreachable("federation is disabled".into()))
    }

    /// `GET /_matrix/federation/v1/user/devices/{userId}`: the user's whole device list.
    async fn user_devices(
        &self,
        destination: &ServerName,
        user_id: &ruma::UserId,
    ) -> Result<Value, RemoteError> {
        let _ = (destination, user_id);
        Err(RemoteError::Unreachable("federation is disabled".into()))
    }

    /// `GET /_matrix/federation/v1/query/directory?room_alias=...`.
    async fn query_directory(
        &self,
        destination: &ServerName,
        alias: &ruma::RoomAliasId,
    ) -> Result<Value, RemoteError> {
        let _ = (destination, alias);
        Err(RemoteError::Unreachable("federation is disabled".into()))
    }

    /// `POST /_matrix/federation/v1/get_missing_events/{roomId}`.
    async fn get_missing_events(
        &self,
        destination: &ServerName,
        room_id: &ruma::RoomId,
        body: Value,
    ) -> Result<Value, RemoteError> {
        let _ = (destination, room_id, body);
        Err(RemoteError::Unreachable("federation is disabled".into()))
    }

    /// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`.
    async fn make_leave(
        &self,
        destination: &ServerName,
        room_id: &ruma::RoomId,
        user_id: &ruma::UserId,
    ) -> Result<Value, RemoteError> {
        let _ = (destination, room_id, user_id);
        Err(RemoteError::Unreachable("federation is disabled".into()))
    }

    /// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`.
    async fn send_leave(
        &self,
        destination: &ServerName,
        room_id: &ruma::RoomId,
        event_id: &ruma::EventId,
        event: Value,
    ) -> Result<Value, RemoteError> {
        let _ = (destination, room_id, event_id, event);
        Err(RemoteError::Unreachable("federation is disabled".into()))
    }

    /// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`.
    async fn send_invite(
        &self,
        destination: &ServerName,
        room_id: &ruma::RoomId,
        event_id: &ruma::EventId,
        body: Value,
    ) -> Result<Value, RemoteError> {
        let _ = (destination, room_id, event_id, body);
        Err(RemoteError::Unreachable("federation is disabled".into()))
    }

    /// Items were queued for other servers: the sender should look at the queue now.
    fn wake_sender(&self) {}

    /// Checks the signatures and content hash of an event from another server, fetching the
    /// signing servers' keys as needed.
    async fn verify_event(
        &self,
        event: &ruma::CanonicalJsonObject,
        version: &ruma::RoomVersionId,
    ) -> Result<(), RemoteError> {
        let _ = (event, version);
        Err(RemoteError::Unreachable("federation is disabled".into()))
    }
}

/// For a homeserver that does not federate (and for tests that need no other server): every
/// request fails as unreachable.
pub struct NoFederation;

impl Federation for NoFederation {}

/// When to try a destination again after failed attempts. The default is Synapse's schedule:
/// 10 minutes after the first failure, then twice as long each time (with jitter), at most a
/// week. Tests shorten it to milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    /// The wait after the first failure.
    pub min_ms: u64,
    /// How much longer each further wait is.
    pub multiplier: f64,
    /// The longest wait.
    pub max_ms: u64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            min_ms: 10 * 60 * 1000,
            multiplier: 2.0,
            max_ms: 7 * 24 * 60 * 60 * 1000,
        }
    }
}

impl BackoffPolicy {
    /// The backoff after a failed attempt at `now_ms`. `jitter` (drawn from 0.8..1.4 by the
    /// caller) keeps servers that failed together from retrying together.
    pub fn after_failure(
        &self,
        previous: crate::store::Backoff,
        now_ms: u64,
        jitter: f64,
    ) -> crate::store::Backoff {
        let interval_ms = if previous.interval_ms == 0 {
            self.min_ms
        } else {
            let grown = previous.interval_ms as f64 * self.multiplier * jitter;
            (grown as u64).clamp(self.min_ms, self.max_ms)
        };
        crate::store::Backoff {
            retry_after_ms: now_ms.saturating_add(interval_ms),
            interval_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Backoff;

    #[test]
    fn backoff_starts_at_the_minimum_grows_and_is_capped() {
        let policy = BackoffPolicy {
            min_ms: 100,
            multiplier: 2.0,
            max_ms: 1_000,
        };
        let first = policy.after_failure(Backoff::default(), 5_000, 1.4);
        assert_eq!(
            first,
            Backoff {
                retry_after_ms: 5_100,
                interval_ms: 100
            },
            "no jitter on the first"
        );
        let second = policy.after_failure(first, 6_000, 1.0);
        assert_eq!(second.interval_ms, 200);
        assert_eq!(policy.after_failure(second, 0, 0.8).interval_ms, 320);
        let mut b = second;
        for _ in 0..10 {
            b = policy.after_failure(b, 0, 1.4);
        }
        assert_eq!(b.interval_ms, 1_000, "capped");
        // A jitter below 1 never takes the wait under the minimum.
        let low = policy.after_failure(
            Backoff {
                retry_after_ms: 0,
                interval_ms: 100,
            },
            0,
            0.01,
        );
        assert_eq!(low.interval_ms, 100);
    }

    #[test]
    fn failures_are_reported_in_synapse_shape() {
        let refused = RemoteError::Unreachable("connection refused".into());
        assert_eq!(refused.to_failure()["status"], 503);
        let limited = RemoteError::Status {
            status: 429,
            message: "slow".into(),
        };
        assert_eq!(
            limited.to_failure(),
            serde_json::json!({ "status": 429, "message": "429: slow" })
        );
    }
}
