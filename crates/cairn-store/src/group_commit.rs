//! Group commit for the hot writes on SQLite: key claims and key uploads.
//!
//! Every SQLite commit waits for an fsync (`synchronous = FULL`), and SQLite has one writer, so
//! writes committed one by one are bound by the disk, not the CPU. Concurrent claims and uploads
//! therefore queue here; one task takes everything queued, runs it in one transaction and answers
//! each request only after the commit. Nothing is acknowledged before it is durable, and a job
//! that fails is retried alone so that it never takes the rest of its batch down with it.

use cairn_core::store::{KeyClaim, KeyWrite, StoreError, StoreResult, UploadedKey};
use sqlx::{AnyPool, AssertSqlSafe};
use tokio::sync::{mpsc, oneshot};

use crate::backend_err;

/// Most requests committed together.
const MAX_BATCH: usize = 256;

/// One queued write and where its answer goes.
enum Job {
    Claim(
        Vec<KeyClaim>,
        oneshot::Sender<StoreResult<Vec<Option<UploadedKey>>>>,
    ),
    WriteKeys(Box<KeyWrite>, oneshot::Sender<StoreResult<()>>),
}

/// A job's outcome, ready to be sent once its transaction has committed (or failed).
enum Done {
    Claim(
        oneshot::Sender<StoreResult<Vec<Option<UploadedKey>>>>,
        StoreResult<Vec<Option<UploadedKey>>>,
    ),
    WriteKeys(oneshot::Sender<StoreResult<()>>, StoreResult<()>),
}

impl Done {
    fn send(self) {
        match self {
            Done::Claim(reply, result) => drop(reply.send(result)),
            Done::WriteKeys(reply, result) => drop(reply.send(result)),
        }
    }
}

impl Job {
    /// Pairs the job's reply channel with its outcome.
    fn done(self, result: StoreResult<Output>) -> Done {
        match self {
            Job::Claim(_, reply) => Done::Claim(reply, result),
            Job::WriteKeys(_, reply) => Done::WriteKeys(reply, result.map(drop)),
        }
    }
}

/// Hands writes to the batching task.
#[derive(Clone)]
pub(crate) struct WriteBatcher {
    queue: mpsc::UnboundedSender<Job>,
}

impl WriteBatcher {
    /// Starts the task that commits through `write` (a one-connection pool).
    pub(crate) fn start(write: AnyPool) -> Self {
        let (queue, mut incoming) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(first) = incoming.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match incoming.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                run(&write, batch).await.into_iter().for_each(Done::send);
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
        self.submit(Job::Claim(claims, reply))?;
        answer.await.map_err(|_| stopped())?
    }

    /// Writes an upload, returning after the batch holding it has committed.
    pub(crate) async fn write_keys(&self, write: KeyWrite) -> StoreResult<()> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::WriteKeys(Box::new(write), reply))?;
        answer.await.map_err(|_| stopped())?
    }

    fn submit(&self, job: Job) -> StoreResult<()> {
        self.queue.send(job).map_err(|_| stopped())
    }
}

fn stopped() -> StoreError {
    StoreError::Backend("the write task stopped".into())
}

/// Runs a batch in one transaction. If a job fails, the batch is rolled back and every job runs
/// again in a transaction of its own, so that one bad job cannot fail the others; the jobs carry
/// no savepoints of their own because a statement per savepoint costs more than the rare retry.
async fn run(write: &AnyPool, batch: Vec<Job>) -> Vec<Done> {
    if batch.len() > 1 {
        match run_together(write, &batch).await {
            Ok(results) => {
                return batch
                    .into_iter()
                    .zip(results)
                    .map(|(job, result)| job.done(Ok(result)))
                    .collect();
            }
            Err(err) => tracing::warn!(%err, "a grouped key write failed; retrying one by one"),
        }
    }
    let mut done = Vec::with_capacity(batch.len());
    for job in batch {
        let result = run_together(write, std::slice::from_ref(&job)).await;
        done.push(job.done(result.map(|mut r| r.remove(0))));
    }
    done
}

/// What one job produced: claimed keys, or nothing for an upload.
type Output = Vec<Option<UploadedKey>>;

/// Runs `jobs` in one transaction; all of them commit or none.
async fn run_together(write: &AnyPool, jobs: &[Job]) -> StoreResult<Vec<Output>> {
    let mut tx = write
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(backend_err)?;
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        results.push(match job {
            Job::Claim(claims, _) => {
                let mut out = Vec::with_capacity(claims.len());
                for claim in claims {
                    out.push(crate::e2ee::claim_one(&mut tx, claim, "").await?);
                }
                out
            }
            Job::WriteKeys(write, _) => {
                crate::e2ee::write_keys_in(&mut tx, write).await?;
                Vec::new()
            }
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SqlStore, StoreOptions};
    use cairn_core::store::KeyStore;
    use ruma::{device_id, user_id};
    use serde_json::value::RawValue;
    use sqlx::Executor;

    fn upload(key_id: &str) -> KeyWrite {
        KeyWrite {
            user_id: user_id!("@alice:example.org").to_owned(),
            device_id: device_id!("D1").to_owned(),
            device_keys: None,
            one_time_keys: vec![UploadedKey {
                algorithm: "alg".into(),
                key_id: key_id.into(),
                key: RawValue::from_string(format!("\"{key_id}\"")).unwrap(),
            }],
            fallback_keys: vec![],
            eager_share_fallback_keys: None,
        }
    }

    /// A job that fails inside a batch fails alone; the jobs batched with it still commit.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failing_job_does_not_fail_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("db").display());
        let store = SqlStore::open(&StoreOptions {
            url,
            max_connections: 2,
        })
        .await
        .unwrap();
        store
            .write
            .execute(
                "CREATE TRIGGER poison BEFORE INSERT ON one_time_keys WHEN NEW.key_id = 'bad' \
                 BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
            )
            .await
            .unwrap();
        let (first, bad, last) = (upload("k1"), upload("bad"), upload("k2"));
        // On a current-thread runtime all three are queued before the batching task runs, so
        // they share one batch.
        let (first, bad, last) = tokio::join!(
            store.write_keys(&first),
            store.write_keys(&bad),
            store.write_keys(&last)
        );
        assert!(first.is_ok() && last.is_ok());
        assert!(bad.unwrap_err().to_string().contains("poisoned"));
        let counts = store
            .one_time_key_counts(user_id!("@alice:example.org"), device_id!("D1"))
            .await
            .unwrap();
        assert_eq!(counts.get("alg"), Some(&2));
    }
}
