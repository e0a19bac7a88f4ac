//! The outbound sender: delivers the durable queue to each destination as transactions.
//!
//! One task watches the queue. It is woken when items are queued or a destination comes back,
//! and otherwise when the earliest backoff ends. Each destination with items and no backoff gets
//! a delivery task of its own, so a slow or dead server never delays the others. A delivery
//! task holds the destination's lease in the store (several processes may share a database),
//! sends up to 50 PDUs and 100 EDUs per transaction in queue order, deletes them once the
//! destination has answered 200, and on failure records the next backoff and stops. Device-list
//! announcements owed to the destination fill the EDU slots the queue leaves; they are built
//! when sent, from each device's current state. The transaction ID names the exact range of
//! queue positions it carries, when the first was queued, and the announcements, so a retry of
//! the same items is recognisably the same transaction, and different items never reuse an ID.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_core::federation::{BackoffPolicy, RemoteError};
use cairn_core::store::{Backoff, DeviceUpdate, ItemKind, QueuedItem};
use cairn_core::{Clock, Homeserver, Store};
use rand::RngExt;
use ruma::{OwnedServerName, ServerName};
use serde_json::value::RawValue;

use crate::FederationClient;

/// Most PDUs and EDUs in one transaction (the spec's limits).
const MAX_PDUS: usize = 50;
/// See [`MAX_PDUS`].
const MAX_EDUS: usize = 100;
/// How long a delivery task's lease lasts; it is renewed before every transaction.
const LEASE_MS: u64 = 30_000;
/// How long one transaction may take.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// The queue is looked at at least this often, for items queued by other processes.
const IDLE_POLL: Duration = Duration::from_secs(30);

/// Starts the sender; it runs until the returned task is aborted. `instance` names this
/// process on destination leases and must stay the same across its restarts, so that a process
/// killed while holding leases takes them back at once when it starts again.
pub fn start(
    client: FederationClient,
    hs: Homeserver,
    clock: Arc<dyn Clock>,
    policy: BackoffPolicy,
    instance: String,
) -> tokio::task::JoinHandle<()> {
    let sender = Arc::new(Sender {
        client,
        store: hs.store().clone(),
        hs,
        clock,
        policy,
        holder: instance,
        delivering: Mutex::default(),
    });
    tokio::spawn(sender.run())
}

struct Sender {
    client: FederationClient,
    /// Builds device-list EDUs.
    hs: Homeserver,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    policy: BackoffPolicy,
    /// This process's name on leases.
    holder: String,
    /// Destinations with a delivery task in this process.
    delivering: Mutex<BTreeSet<OwnedServerName>>,
}

impl Sender {
    async fn run(self: Arc<Self>) {
        if let Err(err) = self.store.forget_stale_leases().await {
            tracing::error!(%err, "cannot clear stale federation leases");
        }
        let wake = self.client.sender_wake();
        loop {
            // Registered before looking, so that a wake-up during the look is not lost.
            let woken = wake.notified();
            let next = match self.start_due_deliveries().await {
                Ok(next) => next,
                Err(err) => {
                    tracing::error!(%err, "cannot read the federation queue");
                    Some(IDLE_POLL)
                }
            };
            let _ = tokio::time::timeout(next.unwrap_or(IDLE_POLL).min(IDLE_POLL), woken).await;
        }
    }

    /// Starts a delivery task for every destination that is due; returns how long until the
    /// earliest backoff ends.
    async fn start_due_deliveries(self: &Arc<Self>) -> Result<Option<Duration>, String> {
        let now = self.clock.now_ms();
        let mut next: Option<u64> = None;
        let destinations = self
            .store
            .destinations_with_items()
            .await
            .map_err(|e| e.to_string())?;
        let backed_off = destinations
            .iter()
            .filter(|(_, b)| b.retry_after_ms > now)
            .count();
        metrics::gauge!("cairn_federation_destinations_in_backoff").set(backed_off as f64);
        for (destination, backoff) in destinations {
            if backoff.retry_after_ms > now {
                let wait = backoff.retry_after_ms - now;
                next = Some(next.map_or(wait, |n| n.min(wait)));
                continue;
            }
            let fresh = self
                .delivering
                .lock()
                .map(|mut set| set.insert(destination.clone()))
                .unwrap_or(false);
            if fresh {
                let sender = self.clone();
                tokio::spawn(async move {
                    sender.deliver(&destination).await;
                    if let Ok(mut set) = sender.delivering.lock() {
                        set.remove(&destination);
                    }
                    // Look again: more may have been queued meanwhile.
                    sender.client.sender_wake().notify_one();
                });
            }
        }
        Ok(next.map(Duration::from_millis))
    }

    /// Sends everything queued for `destination` until the queue is empty or a send fails.
    async fn deliver(&self, destination: &ServerName) {
        loop {
            let now = self.clock.now_ms();
            match self
                .store
                .lease_destination(destination, &self.holder, now, now + LEASE_MS)
                .await
            {
                Ok(true) => {}
                Ok(false) => return,
                Err(err) => {
                    tracing::error!(%err, %destination, "cannot lease the destination");
                    return;
                }
            }
            let items = match self.store.queued(destination, MAX_PDUS + MAX_EDUS).await {
                Ok(items) => fill_transaction(items),
                Err(err) => {
                    tracing::error!(%err, %destination, "cannot read the queue");
                    break;
                }
            };
            let free = MAX_EDUS - items.iter().filter(|i| i.kind == ItemKind::Edu).count();
            let updates = match self.store.pending_device_updates(destination, free).await {
                Ok(updates) => updates,
                Err(err) => {
                    tracing::error!(%err, %destination, "cannot read device-list updates");
                    break;
                }
            };
            if items.is_empty() && updates.is_empty() {
                break;
            }
            let device_edus = match self.hs.device_list_edus(&updates).await {
                Ok(edus) => edus,
                Err(err) => {
                    tracing::error!(%err, %destination, "cannot build device-list updates");
                    break;
                }
            };
            let of = |kind| -> Vec<&RawValue> {
                items
                    .iter()
                    .filter(|i| i.kind == kind)
                    .map(|i| &*i.json)
                    .collect()
            };
            let device_edus: Vec<Box<RawValue>> = device_edus
                .iter()
                .filter_map(|edu| serde_json::value::to_raw_value(edu).ok())
                .collect();
            let mut edus = of(ItemKind::Edu);
            edus.extend(device_edus.iter().map(|e| &**e));
            let body = serde_json::json!({
                "origin": self.client.server_name(),
                "origin_server_ts": now,
                "pdus": of(ItemKind::Pdu),
                "edus": edus,
            });
            let path = format!(
                "/_matrix/federation/v1/send/{}",
                transaction_id(&items, &updates, now)
            );
            let sent = self
                .client
                .send(
                    destination,
                    reqwest::Method::PUT,
                    &path,
                    Some(body),
                    TRANSACTION_TIMEOUT,
                )
                .await;
            match sent {
                Ok(_) => {
                    metrics::counter!("cairn_federation_edus_sent_total", "destination" => destination.to_string())
                        .increment(edus.len() as u64);
                    metrics::counter!("cairn_federation_device_list_updates_sent_total")
                        .increment(updates.len() as u64);
                    let seqs: Vec<u64> = items.iter().map(|i| i.seq).collect();
                    if let Err(err) = self.store.dequeue(destination, &seqs).await {
                        tracing::error!(%err, %destination, "cannot dequeue delivered items");
                        break;
                    }
                    if let Err(err) = self
                        .store
                        .device_updates_delivered(destination, &updates)
                        .await
                    {
                        tracing::error!(%err, %destination, "cannot record delivered updates");
                        break;
                    }
                    self.clear_backoff(destination).await;
                }
                Err(err) => {
                    self.back_off(destination, &err).await;
                    break;
                }
            }
        }
        if let Err(err) = self
            .store
            .release_destination(destination, &self.holder)
            .await
        {
            tracing::warn!(%err, %destination, "cannot release the destination lease");
        }
    }

    async fn back_off(&self, destination: &ServerName, err: &RemoteError) {
        let previous = self.store.backoff(destination).await.unwrap_or_default();
        let jitter = rand::rng().random_range(0.8..1.4);
        let next = self
            .policy
            .after_failure(previous, self.clock.now_ms(), jitter);
        tracing::info!(%destination, %err, retry_in_ms = next.interval_ms, "federation send failed");
        if let Err(err) = self.store.set_backoff(destination, next).await {
            tracing::error!(%err, %destination, "cannot record the backoff");
        }
    }

    async fn clear_backoff(&self, destination: &ServerName) {
        if self.store.backoff(destination).await.unwrap_or_default() != Backoff::default()
            && let Err(err) = self
                .store
                .set_backoff(destination, Backoff::default())
                .await
        {
            tracing::error!(%err, %destination, "cannot clear the backoff");
        }
    }
}

/// A transaction's ID. With queue items it is stable across retries of the same items and never
/// reused, even by a database started afresh under the same server name (receivers remember
/// transaction IDs): the first item's queue time and the range of positions name them. The
/// announcements add their newest position and count, which change whenever a newer change
/// replaces one. Announcements alone are named by the attempt's time: they are idempotent, so a
/// retry under a new ID is harmless.
fn transaction_id(items: &[QueuedItem], updates: &[DeviceUpdate], now_ms: u64) -> String {
    let mut id = match (items.first(), items.last()) {
        (Some(first), Some(last)) => format!("{}-{}-{}", first.queued_ms, first.seq, last.seq),
        _ => format!("{now_ms}"),
    };
    if let Some(newest) = updates.iter().map(|u| u.stream_id).max() {
        id.push_str(&format!("-d{newest}-{}", updates.len()));
    }
    id
}

/// The longest prefix of the queue that fits one transaction: items keep their order, so the
/// transaction ends before the first item that would exceed either limit.
fn fill_transaction(items: Vec<QueuedItem>) -> Vec<QueuedItem> {
    let (mut pdus, mut edus) = (0, 0);
    let mut taken = Vec::new();
    for item in items {
        let count = match item.kind {
            ItemKind::Pdu => &mut pdus,
            ItemKind::Edu => &mut edus,
        };
        let limit = if item.kind == ItemKind::Pdu {
            MAX_PDUS
        } else {
            MAX_EDUS
        };
        if *count == limit {
            break;
        }
        *count += 1;
        taken.push(item);
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u64, kind: ItemKind) -> QueuedItem {
        QueuedItem {
            seq,
            kind,
            queued_ms: 0,
            json: RawValue::from_string("{}".into()).unwrap(),
        }
    }

    #[test]
    fn a_transaction_is_an_in_order_prefix_within_both_limits() {
        let mut queue: Vec<QueuedItem> = (0..60).map(|n| item(n, ItemKind::Pdu)).collect();
        queue.insert(3, item(1000, ItemKind::Edu));
        let taken = fill_transaction(queue);
        assert_eq!(taken.len(), 51, "50 PDUs and the EDU queued among them");
        assert_eq!(taken[3].seq, 1000);
        assert_eq!(taken.last().unwrap().seq, 49);

        let edus: Vec<QueuedItem> = (0..150).map(|n| item(n, ItemKind::Edu)).collect();
        assert_eq!(fill_transaction(edus).len(), 100);
    }
}
