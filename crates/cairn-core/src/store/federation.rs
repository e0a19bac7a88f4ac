//! The durable federation state: the outbound queue per destination, each destination's
//! backoff, and the inbound transactions already answered.

use async_trait::async_trait;
use ruma::{OwnedServerName, ServerName};
use serde_json::value::RawValue;

use super::StoreResult;

/// What a queued item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemKind {
    /// A room event, as signed.
    Pdu,
    /// An ephemeral event, `{"edu_type", "content"}`.
    Edu,
}

impl ItemKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Pdu => "pdu",
            ItemKind::Edu => "edu",
        }
    }

    /// Parses the stored name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "pdu" => Some(ItemKind::Pdu),
            "edu" => Some(ItemKind::Edu),
            _ => None,
        }
    }
}

/// An item for another server, queued in the same transaction as the change that caused it.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Where it goes.
    pub destination: OwnedServerName,
    /// PDU or EDU.
    pub kind: ItemKind,
    /// The item's JSON.
    pub json: Box<RawValue>,
}

/// A queued item as read back for sending.
#[derive(Debug, Clone)]
pub struct QueuedItem {
    /// Its place in the queue; items are sent in this order.
    pub seq: u64,
    /// PDU or EDU.
    pub kind: ItemKind,
    /// The item's JSON.
    pub json: Box<RawValue>,
    /// When it was queued. With the queue positions it makes transaction IDs that a database
    /// started afresh under the same server name never repeats.
    pub queued_ms: u64,
}

/// A destination's backoff: no attempt before `retry_after_ms`; the next failure waits
/// longer than `interval_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backoff {
    /// The earliest time of the next attempt.
    pub retry_after_ms: u64,
    /// The wait after the last failure (0: the destination is not backed off).
    pub interval_ms: u64,
}

/// The federation sender's and receiver's durable state.
#[async_trait]
pub trait FederationStore: Send + Sync {
    /// Destinations with queued items, with their backoff.
    async fn destinations_with_items(&self) -> StoreResult<Vec<(OwnedServerName, Backoff)>>;

    /// Takes (or, for its holder, extends) the sending lease of `destination` until `until_ms`,
    /// unless another holder's lease runs past `now_ms`. Processes sharing a database never send
    /// to one destination at once.
    async fn lease_destination(
        &self,
        destination: &ServerName,
        holder: &str,
        now_ms: u64,
        until_ms: u64,
    ) -> StoreResult<bool>;

    /// Gives the lease back.
    async fn release_destination(&self, destination: &ServerName, holder: &str) -> StoreResult<()>;

    /// Drops leases whose holders cannot be running: on a database only one process uses
    /// (SQLite), every lease at start-up; on a shared one, none (they expire).
    async fn forget_stale_leases(&self) -> StoreResult<()>;

    /// The oldest `limit` items queued for `destination`.
    async fn queued(&self, destination: &ServerName, limit: usize) -> StoreResult<Vec<QueuedItem>>;

    /// Removes items that were delivered.
    async fn dequeue(&self, destination: &ServerName, seqs: &[u64]) -> StoreResult<()>;

    /// The backoff of `destination`.
    async fn backoff(&self, destination: &ServerName) -> StoreResult<Backoff>;

    /// Records `destination`'s backoff (all zero clears it).
    async fn set_backoff(&self, destination: &ServerName, backoff: Backoff) -> StoreResult<()>;

    /// The response already given to inbound transaction `txn_id` of `origin`.
    async fn inbound_transaction(
        &self,
        origin: &ServerName,
        txn_id: &str,
    ) -> StoreResult<Option<String>>;

    /// Remembers the response to an inbound transaction.
    async fn record_inbound_transaction(
        &self,
        origin: &ServerName,
        txn_id: &str,
        response: &str,
    ) -> StoreResult<()>;
}
