//! `PUT /sendToDevice/{eventType}/{txnId}`: queue messages for devices, once per transaction ID.

use std::collections::{BTreeMap, BTreeSet};

use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use serde_json::value::RawValue;

use crate::Homeserver;
use crate::accounts::Requester;
use crate::error::{Error, ErrorKind, Result};
use crate::store::ToDeviceBatch;

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
        };
        let mut recipients: BTreeSet<OwnedUserId> = BTreeSet::new();
        for (user_id, by_device) in messages {
            if !self.is_local(&user_id) {
                // Remote delivery needs federation; until then such messages are dropped.
                tracing::debug!(%user_id, "to-device message for a remote user dropped");
                continue;
            }
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
                if content.get().len() > MAX_TO_DEVICE_CONTENT_BYTES {
                    return Err(Error::new(
                        ErrorKind::TooLarge,
                        "To-device message is too large",
                    ));
                }
                if !content.get().trim_start().starts_with('{') {
                    return Err(Error::bad_json("To-device content must be an object"));
                }
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
        if self.store().send_to_device(&batch).await? {
            let users: Vec<&UserId> = recipients.iter().map(|u| u.as_ref()).collect();
            self.notifier().notify(&users);
        }
        Ok(())
    }
}
