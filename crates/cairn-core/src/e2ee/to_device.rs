//! `PUT /sendToDevice/{eventType}/{txnId}`: queue messages for devices, once per transaction ID.

use std::collections::{BTreeMap, BTreeSet};

use ruma::{OwnedDeviceId, OwnedServerName, OwnedUserId, ServerName, UserId};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::Homeserver;
use crate::accounts::Requester;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{ItemKind, Outbound, ToDeviceBatch};

/// The sending "device" of messages from another server: transaction IDs of remote senders are
/// their `message_id`s, scoped to the sending user and this marker.
const REMOTE_SENDER_DEVICE: &str = "";

/// The content of an `m.direct_to_device` EDU.
#[derive(Debug, Deserialize)]
pub struct DirectToDevice {
    /// The sending user, on the origin server.
    pub sender: OwnedUserId,
    /// The event type of every message.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Unique per sender; a repeated ID is a retransmission.
    pub message_id: String,
    /// `user -> device or "*" -> content`, for users of the receiving server.
    pub messages: ToDeviceMessages,
}

/// Largest message content, in bytes (Synapse's limit for one EDU).
pub const MAX_TO_DEVICE_CONTENT_BYTES: usize = 65_536;

/// `user -> device or "*" -> content`.
pub type ToDeviceMessages = BTreeMap<OwnedUserId, BTreeMap<String, Box<RawValue>>>;

impl Homeserver {
    /// Queues one message per addressed device. `*` means every device of that user; an
    /// explicitly named device takes its own message over the `*` one. A transaction ID that
    /// this device used before is acknowledged without sending again.
    pub async fn send_to_device(
        &self,
        me: &Requester,
        event_type: &str,
        txn_id: &str,
        messages: ToDeviceMessages,
    ) -> Result<()> {
        let mut batch = ToDeviceBatch {
            sender: me.user_id.clone(),
            sender_device: me.device_id.clone(),
            txn_id: txn_id.to_owned(),
            event_type: event_type.to_owned(),
            messages: Vec::new(),
            outbound: Vec::new(),
        };
        let mut remote: BTreeMap<OwnedServerName, ToDeviceMessages> = BTreeMap::new();
        let mut local = ToDeviceMessages::new();
        for (user_id, by_device) in messages {
            check_contents(&by_device)?;
            if self.is_local(&user_id) {
                local.insert(user_id, by_device);
            } else {
                remote
                    .entry(user_id.server_name().to_owned())
                    .or_default()
                    .insert(user_id, by_device);
            }
        }
        // One EDU per recipient (as Synapse sends them), each with its own message ID: a
        // message to many users stays many EDUs of bounded size, which transactions split.
        for (destination, users) in remote {
            for (user_id, by_device) in users {
                let content = serde_json::json!({
                    "sender": me.user_id,
                    "type": event_type,
                    "message_id": crate::secrets::random_alphanumeric(24),
                    "messages": { user_id.as_str(): by_device },
                });
                let edu =
                    serde_json::json!({ "edu_type": "m.direct_to_device", "content": content });
                batch.outbound.push(Outbound {
                    destination: destination.clone(),
                    kind: ItemKind::Edu,
                    json: serde_json::value::to_raw_value(&edu)
                        .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?,
                });
            }
        }
        self.deliver_to_device(batch, local).await
    }

    /// `m.direct_to_device` from `origin`: delivered to local users like a local message, once
    /// per `message_id`. A sender that is not `origin`'s user is ignored.
    pub async fn receive_direct_to_device(
        &self,
        origin: &ServerName,
        edu: DirectToDevice,
    ) -> Result<()> {
        if edu.sender.server_name() != origin {
            tracing::warn!(%origin, sender = %edu.sender, "to-device EDU for another server's user ignored");
            return Ok(());
        }
        let mut local = edu.messages;
        local.retain(|user_id, _| self.is_local(user_id));
        for by_device in local.values() {
            check_contents(by_device)?;
        }
        let batch = ToDeviceBatch {
            sender: edu.sender,
            sender_device: REMOTE_SENDER_DEVICE.into(),
            txn_id: edu.message_id,
            event_type: edu.event_type,
            messages: Vec::new(),
            outbound: Vec::new(),
        };
        self.deliver_to_device(batch, local).await
    }

    /// Expands `local` into one message per existing device and stores the batch.
    async fn deliver_to_device(
        &self,
        mut batch: ToDeviceBatch,
        local: ToDeviceMessages,
    ) -> Result<()> {
        let mut recipients: BTreeSet<OwnedUserId> = BTreeSet::new();
        for (user_id, by_device) in local {
            // Messages go only to devices that exist; one for a deleted device would wait forever.
            let existing: Vec<OwnedDeviceId> = self
                .store()
                .devices(&user_id)
                .await?
                .into_iter()
                .map(|d| d.device_id)
                .collect();
            let mut targets: BTreeMap<OwnedDeviceId, Box<RawValue>> = BTreeMap::new();
            for (device, content) in by_device {
                if device == "*" {
                    for d in &existing {
                        targets.entry(d.clone()).or_insert_with(|| content.clone());
                    }
                } else if existing.iter().any(|d| d.as_str() == device) {
                    targets.insert(device.into(), content);
                }
            }
            if !targets.is_empty() {
                recipients.insert(user_id.clone());
            }
            batch
                .messages
                .extend(targets.into_iter().map(|(d, c)| (user_id.clone(), d, c)));
        }
        let queued = !batch.outbound.is_empty();
        if self.store().send_to_device(&batch).await? {
            let users: Vec<&UserId> = recipients.iter().map(|u| u.as_ref()).collect();
            self.notifier().notify(&users);
            if queued {
                self.federation().wake_sender();
            }
        }
        Ok(())
    }
}

/// Every content must be a JSON object within the size limit.
fn check_contents(by_device: &BTreeMap<String, Box<RawValue>>) -> Result<()> {
    for content in by_device.values() {
        if content.get().len() > MAX_TO_DEVICE_CONTENT_BYTES {
            return Err(Error::new(
                ErrorKind::TooLarge,
                "To-device message is too large",
            ));
        }
        if !content.get().trim_start().starts_with('{') {
            return Err(Error::bad_json("To-device content must be an object"));
        }
    }
    Ok(())
}
