//! The in-memory federation queue, backoff and inbound transactions.

use std::collections::BTreeMap;

use async_trait::async_trait;
use ruma::{OwnedServerName, ServerName};

use super::MemoryStore;
use crate::Clock;
use crate::store::*;

#[derive(Default)]
pub(super) struct FederationState {
    next_seq: u64,
    queue: BTreeMap<(OwnedServerName, u64), (ItemKind, String, u64)>,
    backoff: BTreeMap<OwnedServerName, Backoff>,
    leases: BTreeMap<OwnedServerName, (String, u64)>,
    inbound: BTreeMap<(OwnedServerName, String), String>,
}

impl FederationState {
    pub(super) fn enqueue(&mut self, items: &[Outbound]) {
        for item in items {
            self.next_seq += 1;
            self.queue.insert(
                (item.destination.clone(), self.next_seq),
                (
                    item.kind,
                    item.json.get().to_owned(),
                    crate::clock::SystemClock.now_ms(),
                ),
            );
        }
    }
}

#[async_trait]
impl FederationStore for MemoryStore {
    async fn destinations_with_items(&self) -> StoreResult<Vec<(OwnedServerName, Backoff)>> {
        let state = self.state();
        let mut destinations = state.device_list_destinations();
        destinations.extend(state.federation.queue.keys().map(|(d, _)| d.clone()));
        Ok(destinations
            .into_iter()
            .map(|d| {
                let backoff = state.federation.backoff.get(&d).copied();
                (d, backoff.unwrap_or_default())
            })
            .collect())
    }

    async fn lease_destination(
        &self,
        destination: &ServerName,
        holder: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> StoreResult<bool> {
        let mut state = self.state();
        let leases = &mut state.federation.leases;
        if leases
            .get(destination)
            .is_some_and(|(by, until)| by != holder && *until > now_ms)
        {
            return Ok(false);
        }
        leases.insert(destination.to_owned(), (holder.to_owned(), until_ms));
        Ok(true)
    }

    async fn release_destination(&self, destination: &ServerName, holder: &str) -> StoreResult<()> {
        let mut state = self.state();
        if state
            .federation
            .leases
            .get(destination)
            .is_some_and(|(by, _)| by == holder)
        {
            state.federation.leases.remove(destination);
        }
        Ok(())
    }

    async fn forget_stale_leases(&self) -> StoreResult<()> {
        self.state().federation.leases.clear();
        Ok(())
    }

    async fn queued(&self, destination: &ServerName, limit: usize) -> StoreResult<Vec<QueuedItem>> {
        let state = self.state();
        state
            .federation
            .queue
            .iter()
            .filter(|((d, _), _)| d == destination)
            .take(limit)
            .map(|((_, seq), (kind, json, queued_ms))| {
                Ok(QueuedItem {
                    seq: *seq,
                    kind: *kind,
                    queued_ms: *queued_ms,
                    json: serde_json::value::RawValue::from_string(json.clone())
                        .map_err(|e| StoreError::Backend(e.to_string()))?,
                })
            })
            .collect()
    }

    async fn dequeue(&self, destination: &ServerName, seqs: &[u64]) -> StoreResult<()> {
        let mut state = self.state();
        for seq in seqs {
            state
                .federation
                .queue
                .remove(&(destination.to_owned(), *seq));
        }
        Ok(())
    }

    async fn backoff(&self, destination: &ServerName) -> StoreResult<Backoff> {
        Ok(self
            .state()
            .federation
            .backoff
            .get(destination)
            .copied()
            .unwrap_or_default())
    }

    async fn set_backoff(&self, destination: &ServerName, backoff: Backoff) -> StoreResult<()> {
        self.state()
            .federation
            .backoff
            .insert(destination.to_owned(), backoff);
        Ok(())
    }

    async fn inbound_transaction(
        &self,
        origin: &ServerName,
        txn_id: &str,
    ) -> StoreResult<Option<String>> {
        Ok(self
            .state()
            .federation
            .inbound
            .get(&(origin.to_owned(), txn_id.to_owned()))
            .cloned())
    }

    async fn record_inbound_transaction(
        &self,
        origin: &ServerName,
        txn_id: &str,
        response: &str,
    ) -> StoreResult<()> {
        self.state()
            .federation
            .inbound
            .insert((origin.to_owned(), txn_id.to_owned()), response.to_owned());
        Ok(())
    }
}
