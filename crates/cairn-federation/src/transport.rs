//! [`Transport`]: what `cairn-core` asks of other servers, answered with the federation client
//! (signed requests, the sender's wake-up) and the key ring (other servers' keys).

use std::time::Duration;

use async_trait::async_trait;
use cairn_core::federation::{Federation, RemoteError};
use ruma::{CanonicalJsonObject, RoomVersionId, ServerName};
use serde_json::Value;

use crate::{FederationClient, KeyRing};

/// The federation transport behind `cairn_core::federation::Federation`. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    /// Signed requests.
    pub client: FederationClient,
    /// Other servers' keys.
    pub keys: KeyRing,
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
