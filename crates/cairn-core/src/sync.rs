//! `GET /sync`: what a device has not seen yet, waiting for it when there is nothing.
//!
//! The response covers the stream up to the position read at the start of each attempt. A
//! listener is taken before reading, so a change committed while the response is assembled
//! still wakes the wait (see [`crate::notify`]).

use std::collections::BTreeMap;
use std::time::Duration;

use ruma::OwnedUserId;
use serde_json::value::RawValue;

use crate::Homeserver;

pub mod rooms;
use crate::accounts::Requester;
use crate::error::Result;
use crate::store::ToDeviceRecord;
use crate::stream::SyncToken;
pub use rooms::{RoomsSync, SyncFilter};

/// Most to-device messages in one response (the spec's recommendation).
pub const MAX_TO_DEVICE_PER_SYNC: usize = 100;
/// Longest long-poll a client may ask for.
pub const MAX_SYNC_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// What a client asked `/sync` for.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    /// Where the client's last sync ended; `None` for an initial sync.
    pub since: Option<SyncToken>,
    /// How long to wait for something new.
    pub timeout: Duration,
    /// What the client wants to see.
    pub filter: SyncFilter,
}

/// The sync response, before rendering.
#[derive(Debug, Default)]
pub struct SyncResponse {
    /// Where the next sync starts.
    pub next_batch: SyncToken,
    /// Rooms.
    pub rooms: RoomsSync,
    /// Global account data that changed (all of it on an initial sync).
    pub account_data: Vec<(String, Box<RawValue>)>,
    /// To-device messages for this device, oldest first.
    pub to_device: Vec<ToDeviceRecord>,
    /// Users whose device lists changed (incremental syncs only).
    pub device_lists_changed: Vec<OwnedUserId>,
    /// Users no longer sharing an encrypted room (incremental syncs only).
    pub device_lists_left: Vec<OwnedUserId>,
    /// Unclaimed one-time keys of this device, with `signed_curve25519` always present.
    pub one_time_key_counts: BTreeMap<String, u64>,
    /// Algorithms whose fallback key has not been claimed since upload.
    pub unused_fallback_key_types: Vec<String>,
}

impl SyncResponse {
    /// Whether anything in it is news (key counts alone are not: they ride along).
    fn has_news(&self) -> bool {
        !self.rooms.is_empty()
            || !self.account_data.is_empty()
            || !self.to_device.is_empty()
            || !self.device_lists_changed.is_empty()
            || !self.device_lists_left.is_empty()
    }
}

impl Homeserver {
    /// Assembles a sync response, long-polling up to `req.timeout` when there is no news.
    pub async fn sync(&self, me: &Requester, req: SyncRequest) -> Result<SyncResponse> {
        let timeout = req.timeout.min(MAX_SYNC_TIMEOUT);
        let started = std::time::Instant::now();
        if let Some(since) = req.since {
            // Everything up to the token was received: drop the acknowledged to-device messages.
            self.store()
                .delete_to_device_messages(&me.user_id, &me.device_id, since.to_device)
                .await?;
        }
        loop {
            let remaining = timeout.saturating_sub(started.elapsed());
            let listener = self.notifier().listener(&me.user_id, remaining);
            let response = self.sync_once(me, req.since, &req.filter).await?;
            if req.since.is_none() || response.has_news() || remaining.is_zero() {
                return Ok(response);
            }
            listener.await;
            if started.elapsed() >= timeout {
                return self.sync_once(me, req.since, &req.filter).await;
            }
        }
    }

    async fn sync_once(
        &self,
        me: &Requester,
        since: Option<SyncToken>,
        filter: &SyncFilter,
    ) -> Result<SyncResponse> {
        let store = self.store();
        let now = store.current_position().await?;
        let after = since.map_or(0, |t| t.pos);
        let to_device_after = since.map_or(0, |t| t.to_device);
        let to_device = store
            .to_device_messages(
                &me.user_id,
                &me.device_id,
                to_device_after,
                MAX_TO_DEVICE_PER_SYNC,
            )
            .await?;
        let next_to_device = to_device.last().map_or(to_device_after, |m| m.pos);
        let lists = match since {
            Some(_) => self.device_list_delta(&me.user_id, after, now).await?,
            None => Default::default(),
        };
        Ok(SyncResponse {
            next_batch: SyncToken {
                pos: now,
                to_device: next_to_device,
            },
            rooms: self.sync_rooms(me, since, now, filter).await?,
            account_data: store.account_data_changes(&me.user_id, after, now).await?,
            to_device,
            device_lists_changed: lists.changed,
            device_lists_left: lists.left,
            one_time_key_counts: self.one_time_key_counts(&me.user_id, &me.device_id).await?,
            unused_fallback_key_types: store
                .fallback_keys(&me.user_id, &me.device_id)
                .await?
                .into_iter()
                .filter(|k| !k.used)
                .map(|k| k.key.algorithm)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests;
