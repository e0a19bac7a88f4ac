//! Inbound federation transactions (`PUT /_matrix/federation/v1/send/{txnId}`).
//!
//! A transaction is answered once per origin and transaction ID; a retransmission gets the
//! stored answer and changes nothing. EDUs are dispatched by type (unknown types are ignored,
//! as the spec asks); one that fails to apply is logged and does not fail the transaction,
//! because EDU results are not reported back.

use ruma::ServerName;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::Homeserver;
use crate::e2ee::to_device::DirectToDevice;
use crate::error::{Error, ErrorKind, Result};

/// Most PDUs and EDUs one transaction may carry.
pub const MAX_PDUS: usize = 50;
/// See [`MAX_PDUS`].
pub const MAX_EDUS: usize = 100;

/// The body of an inbound transaction.
#[derive(Debug, Deserialize)]
pub struct Transaction {
    /// Room events, applied in order (one may be the parent of the next).
    #[serde(default)]
    pub pdus: Vec<Box<RawValue>>,
    /// Ephemeral events.
    #[serde(default)]
    pub edus: Vec<Edu>,
}

/// One EDU.
#[derive(Debug, Deserialize)]
pub struct Edu {
    /// Its type.
    pub edu_type: String,
    /// Its content, interpreted by type.
    #[serde(default)]
    pub content: Box<RawValue>,
}

impl Homeserver {
    /// Applies transaction `txn_id` from `origin` (already authenticated) and returns the
    /// answer, the same one every time the transaction is retransmitted.
    pub async fn receive_transaction(
        &self,
        origin: &ServerName,
        txn_id: &str,
        txn: Transaction,
    ) -> Result<Value> {
        if let Some(answer) = self.store().inbound_transaction(origin, txn_id).await? {
            return serde_json::from_str(&answer)
                .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()));
        }
        if txn.pdus.len() > MAX_PDUS || txn.edus.len() > MAX_EDUS {
            return Err(Error::bad_json(format!(
                "A transaction carries at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
            )));
        }
        let mut pdus = serde_json::Map::new();
        for raw in &txn.pdus {
            let Ok(event) = serde_json::from_str::<ruma::CanonicalJsonObject>(raw.get()) else {
                tracing::warn!(%origin, "PDU that is not canonical JSON dropped");
                continue;
            };
            let (event_id, outcome) = self.receive_pdu(origin, &event).await;
            let result = match &outcome {
                Ok(()) => json!({}),
                Err(err) => {
                    tracing::info!(%origin, ?event_id, %err, "PDU refused");
                    json!({ "error": err.to_string() })
                }
            };
            if let Some(event_id) = event_id {
                pdus.insert(event_id.to_string(), result);
            }
        }
        for edu in txn.edus {
            if let Err(err) = self.apply_edu(origin, &edu).await {
                tracing::warn!(%origin, edu_type = %edu.edu_type, %err, "EDU not applied");
            }
        }
        let answer = json!({ "pdus": pdus });
        self.store()
            .record_inbound_transaction(origin, txn_id, &answer.to_string())
            .await?;
        Ok(answer)
    }

    async fn apply_edu(&self, origin: &ServerName, edu: &Edu) -> Result<()> {
        match edu.edu_type.as_str() {
            "m.direct_to_device" => {
                let content: DirectToDevice = serde_json::from_str(edu.content.get())
                    .map_err(|e| Error::bad_json(e.to_string()))?;
                self.receive_direct_to_device(origin, content).await
            }
            "m.device_list_update" => self.receive_device_list_update(origin, &edu.content).await,
            // Synapse sends each cross-signing update twice, also as the unstable
            // `org.matrix.signing_key_update`; the stable one is enough.
            "m.signing_key_update" => self.receive_signing_key_update(origin, &edu.content).await,
            _ => Ok(()),
        }
    }
}
