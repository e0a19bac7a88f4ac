//! [`Transport`]: what `cairn-core` asks of other servers, answered with the federation client
//! (signed requests, the sender's wake-up) and the key ring (other servers' keys).

use std::time::Duration;

use async_trait::async_trait;
use cairn_core::federation::{Federation, RemoteError};
use ruma::{CanonicalJsonObject, RoomVersionId, ServerName};
use serde_json::Value;

use crate::{FederationClient, KeyRing};

/// How long a profile look-up may take.
const PROFILE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long fetching a device list or missing events may take (Synapse allows 30 s).
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a join's requests may take (a large room's state is a big answer).
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// `/_matrix/federation/{endpoint}/{room}/{second}`, both segments percent-encoded.
fn room_path(endpoint: &str, room: &str, second: &str) -> String {
    format!(
        "/_matrix/federation/{endpoint}/{}/{}",
        encode(room),
        encode(second)
    )
}

/// Percent-encodes a path segment (IDs hold `!`, `$`, `@`, `:`).
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The federation transport behind `cairn_core::federation::Federation`. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    /// Signed requests.
    pub client: FederationClient,
    /// Other servers' keys.
    pub keys: KeyRing,
}

impl Transport {
    /// A signed `GET` to `destination`.
    async fn get(
        &self,
        destination: &ServerName,
        path: &str,
        timeout: Duration,
    ) -> Result<Value, RemoteError> {
        self.client
            .send(destination, reqwest::Method::GET, path, None, timeout)
            .await
    }
}

#[async_trait]
impl Federation for Transport {
    async fn query_keys(
        &self,
        destination: &ServerName,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, RemoteError> {
        let path = "/_matrix/federation/v1/user/keys/query";
        self.client
            .send(
                destination,
                reqwest::Method::POST,
                path,
                Some(body),
                timeout,
            )
            .await
    }

    async fn claim_keys(
        &self,
        destination: &ServerName,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, RemoteError> {
        let path = "/_matrix/federation/v1/user/keys/claim";
        self.client
            .send(
                destination,
                reqwest::Method::POST,
                path,
                Some(body),
                timeout,
            )
            .await
    }

    async fn make_join(
        &self,
        destination: &ServerName,
        room_id: &ruma::RoomId,
        user_id: &ruma::UserId,
        versions: &[&str],
    ) -> Result<Value, RemoteError> {
        let mut path = room_path("v1/make_join", room_id.as_str(), user_id.as_str());
        for (i, version) in versions.iter().enumerate() {
            path.push(if i == 0 { '?' } else { '&' });
            path.push_str(&format!("ver={}", encode(version)));
        }
        self.get(destination, &path, JOIN_TIMEOUT).await
    }

    async fn send_join(
        &self,
        destination: &ServerName,
        room_id: &ruma::RoomId,
        event_id: &ruma::EventId,
        event: Value,
    ) -> Result<Value, RemoteError> {
        let path = room_path("v2/send_join", room_id.as_str(), event_id.as_str());
        self.client
            .send(
                destination,
                reqwest::Method::PUT,
                &path,
                Some(event),
                JOIN_TIMEOUT,
            )
            .await
    }

    async fn query_profile(
        &self,
        destination: &ServerName,
        user_id: &ruma::UserId,
    ) -> Result<Value, RemoteError> {
        let path = format!(
            "/_matrix/federation/v1/query/profile?user_id={}",
            encode(user_id.as_str())
        );
        self.get(destination, &path, PROFILE_TIMEOUT).await
    }

    async fn query_directory(
        &self,
        destination: &ServerName,
        alias: &ruma::RoomAliasId,
    ) -> Result<Value, RemoteError> {
        let path = format!(
            "/_matrix/federation/v1/query/directory?room_alias={}",
            encode(alias.as_str())
        );
        self.get(destination, &path, PROFILE_TIMEOUT).await
    }

    async fn get_missing_events(
        &self,
        destination: &ServerName,
        room_id: &ruma::RoomId,
        body: Value,
    ) -> Result<Value, RemoteError> {
        let path = format!(
            "/_matrix/federation/v1/get_missing_events/{}",
            encode(room_id.as_str())
        );
        self.client
            .send(
                destination,
                reqwest::Method::POST,
                &path,
                Some(body),
                FETCH_TIMEOUT,
            )
            .await
    }

    async fn user_devices(
        &self,
        destination: &ServerName,
        user_id: &ruma::UserId,
    ) -> Result<Value, RemoteError> {
        let path = format!(
            "/_matrix/federation/v1/user/devices/{}",
            encode(user_id.as_str())
        );
        self.get(destination, &path, FETCH_TIMEOUT).await
    }

    async fn make_leave(
        &self,
        destination: &ServerName,
        room_id: &ruma::RoomId,
        user_id: &ruma::UserId,
    ) -> Result<Value, RemoteError> {
        let path = room_path("v1/make_leave", room_id.as_str(), user_id.as_str());
        self.get(destination, &path, JOIN_TIMEOUT).await
    }

    async fn send_leave(
        &self,
        destination: &ServerName,
        room_id: &ruma::RoomId,
        event_id: &ruma::EventId,
        event: Value,
    ) -> Result<Value, RemoteError> {
        let path = room_path("v2/send_leave", room_id.as_str(), event_id.as_str());
        self.client
            .send(
                destination,
                reqwest::Method::PUT,
                &path,
                Some(event),
                JOIN_TIMEOUT,
            )
            .await
    }

    async fn send_invite(
        &self,
        destination: &ServerName,
        room_id: &ruma::RoomId,
        event_id: &ruma::EventId,
        body: Value,
    ) -> Result<Value, RemoteError> {
        let path = room_path("v2/invite", room_id.as_str(), event_id.as_str());
        self.client
            .send(
                destination,
                reqwest::Method::PUT,
                &path,
                Some(body),
                JOIN_TIMEOUT,
            )
            .await
    }

    fn wake_sender(&self) {
        self.client.sender_wake().notify_one();
    }

    async fn verify_event(
        &self,
        event: &CanonicalJsonObject,
        version: &RoomVersionId,
    ) -> Result<(), RemoteError> {
        self.keys
            .verify_event(event, version)
            .await
            .map_err(RemoteError::Invalid)
    }
}
