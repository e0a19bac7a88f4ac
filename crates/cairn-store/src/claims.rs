//! Group commit for key claims on SQLite.
//!
//! Every SQLite commit waits for an fsync (`synchronous = FULL`), and SQLite has one writer, so
//! claims committed one by one are bound by the disk, not the CPU. Concurrent claims therefore
//! queue here; one task takes everything queued, runs it in one transaction and answers each
//! request only after the commit. Nothing is acknowledged before it is durable.

use cairn_core::store::{KeyClaim, StoreError, StoreResult, UploadedKey};
use sqlx::{AnyPool, AssertSqlSafe};
use tokio::sync::{mpsc, oneshot};

use crate::backend_err;

/// Most claim requests committed together.
const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<StoreResult<Vec<Option<UploadedKey>>>>;

/// Hands claims to the batching task.
#[derive(Clone)]
pub(crate) struct ClaimBatcher {
    queue: mpsc::UnboundedSender<(Vec<KeyClaim>, Reply)>,
}

impl ClaimBatcher {
    /// Starts the task that commits claims through `write` (a one-connection pool).
    pub(crate) fn start(write: AnyPool) -> Self {
        let (queue, mut incoming) = mpsc::unbounded_channel::<(Vec<KeyClaim>, Reply)>();
        tokio::spawn(async move {
            while let Some(first) = incoming.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match incoming.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                match commit(&write, &batch).await {
                    Ok(mut results) => {
                        for (_, reply) in batch.into_iter().rev() {
                            let mine = results.pop().unwrap_or_default();
                            let _ = reply.send(Ok(mine));
                        }
                    }
                    Err(err) => {
                        let message = err.to_string();
                        for (_, reply) in batch {
                            let _ = reply.send(Err(StoreError::Backend(message.clone())));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    /// Claims, returning after the batch holding them has committed.
    pub(crate) async fn claim(
        &self,
        claims: Vec<KeyClaim>,
    ) -> StoreResult<Vec<Option<UploadedKey>>> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((claims, reply))
            .map_err(|_| StoreError::Backend("claim queue closed".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("claim task stopped".into()))?
    }
}

/// Runs every claim of the batch in one transaction; results per request, in order.
async fn commit(
    write: &AnyPool,
    batch: &[(Vec<KeyClaim>, Reply)],
) -> StoreResult<Vec<Vec<Option<UploadedKey>>>> {
    let mut tx = write
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(backend_err)?;
    let mut results = Vec::with_capacity(batch.len());
    for (claims, _) in batch {
        let mut mine = Vec::with_capacity(claims.len());
        for claim in claims {
            mine.push(crate::e2ee::claim_one(&mut tx, claim, "").await?);
        }
        results.push(mine);
    }
    tx.commit().await.map_err(backend_err)?;
    Ok(results)
}

/// The statement that takes the oldest one-time key; `lock` is PostgreSQL's row-locking clause.
pub(crate) fn take_otk_sql(lock: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(format!(
        "DELETE FROM one_time_keys WHERE seq = (SELECT seq FROM one_time_keys \
         WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 ORDER BY seq LIMIT 1{lock}) \
         RETURNING algorithm, key_id, key_json"
    ))
}
