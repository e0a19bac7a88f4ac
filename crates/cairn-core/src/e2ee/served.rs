//! What this server tells other servers about its users' keys: `user/keys/query`,
//! `user/keys/claim` and `user/devices`. Only local users are answered; anything else in a
//! request is left out.

use ruma::UserId;
use serde_json::{Value, json};

use super::keys::{ClaimRequest, ClaimResponse, QueryRequest, QueryResponse, Viewer};
use crate::Homeserver;
use crate::error::{Error, ErrorKind, Result};

impl Homeserver {
    /// `POST /_matrix/federation/v1/user/keys/query`.
    pub async fn federation_query_keys(&self, req: QueryRequest) -> Result<Value> {
        let mut response = QueryResponse::default();
        for (user_id, devices) in req.device_keys {
            if self.is_local(&user_id) {
                self.add_local_keys(Viewer::Server, &user_id, &devices, &mut response)
                    .await?;
            }
        }
        Ok(json!({
            "device_keys": response.device_keys,
            "master_keys": response.master_keys,
            "self_signing_keys": response.self_signing_keys,
        }))
    }

    /// `POST /_matrix/federation/v1/user/keys/claim`.
    pub async fn federation_claim_keys(&self, mut req: ClaimRequest) -> Result<ClaimResponse> {
        req.one_time_keys
            .retain(|user_id, _| self.is_local(user_id));
        self.claim_keys(req).await
    }

    /// `GET /_matrix/federation/v1/user/devices/{userId}`: the user's devices with keys, the
    /// position of the device-list stream they are current at, and the cross-signing keys.
    pub async fn federation_user_devices(&self, user_id: &UserId) -> Result<Value> {
        if !self.is_local(user_id) {
            return Err(Error::new(
                ErrorKind::InvalidParam,
                "User is not hosted on this homeserver",
            ));
        }
        // Read the position first: a change after it is announced with a later stream_id.
        let stream_id = self.store().current_position().await?;
        let mut keys = QueryResponse::default();
        self.add_local_keys(Viewer::Server, user_id, &[], &mut keys)
            .await?;
        let mut devices = Vec::new();
        for (device_id, keys) in keys.device_keys.remove(user_id).unwrap_or_default() {
            let mut device = json!({ "device_id": device_id, "keys": keys });
            if let Some(fallback) = self.shared_fallback_keys(user_id, &device_id).await? {
                device[self.fallback_field()] = fallback;
            }
            devices.push(device);
        }
        Ok(json!({
            "user_id": user_id,
            "stream_id": stream_id,
            "devices": devices,
            "master_key": keys.master_keys.remove(user_id),
            "self_signing_key": keys.self_signing_keys.remove(user_id),
        }))
    }
}
