//! Group commit for the hot writes on SQLite: key claims and key uploads.
//!
//! Every SQLite commit waits for an fsync (`synchronous = FULL`), and SQLite has one writer, so
//! writes committed one by one are bound by the disk, not the CPU. Concurrent claims and uploads
//! therefore queue here; one task takes everything queued and runs it in one transaction, and a
//! job that fails is retried alone so that it never takes the rest of its batch down with it.
//!
//! The fsync is pipelined: a batch commits without waiting for the disk, and a second stage
//! fsyncs the write-ahead log (which holds every committed frame) while the next batch runs.
//! Nobody is answered before that fsync has returned, so nothing is acknowledged before it is
//! durable. Other connections may read a batch a moment before it is on disk; after a power
//! cut such a batch is gone, but it was never acknowledged, and every later acknowledged write
//! is behind it in the log.

use cairn_core::store::{KeyClaim, KeyWrite, StoreError, StoreResult, UploadedKey};
use std::path::{Path, PathBuf};

use sqlx::{AnyPool, AssertSqlSafe, Executor};
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

impl Done {
    /// The commit may not have reached the disk: the job is not acknowledged.
    fn fail(self, message: &str) {
        let err = || StoreError::Backend(message.to_owned());
        match self {
            Done::Claim(reply, _) => drop(reply.send(Err(err()))),
            Done::WriteKeys(reply, _) => drop(reply.send(Err(err()))),
        }
    }
}

/// Makes everything committed to the write-ahead log so far durable. The log is opened by path
/// each time, so the sync reaches the file SQLite is writing even if it was ever recreated.
fn sync_log(wal: Option<&Path>) -> std::io::Result<()> {
    match wal {
        Some(wal) => std::fs::File::open(wal)?.sync_data(),
        None => Ok(()),
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
    /// Starts the task that commits through `write` (a one-connection pool) to the database
    /// whose write-ahead log is `wal`.
    pub(crate) fn start(write: AnyPool, wal: Option<PathBuf>) -> Self {
        let (queue, mut incoming) = mpsc::unbounded_channel::<Job>();
        let (synced, mut to_sync) = mpsc::unbounded_channel::<Vec<Done>>();
        tokio::spawn(async move {
            while let Some(first) = incoming.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match incoming.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                if synced.send(run(&write, batch).await).is_err() {
                    return;
                }
            }
        });
        // The sync stage: one fsync of the log covers every batch committed before it started,
        // and runs while the next batch executes.
        tokio::spawn(async move {
            while let Some(first) = to_sync.recv().await {
                let mut batches = vec![first];
                while let Ok(next) = to_sync.try_recv() {
                    batches.push(next);
                }
                let wal = wal.clone();
                let synced = tokio::task::spawn_blocking(move || sync_log(wal.as_deref())).await;
                let failure = match synced {
                    Ok(Ok(())) => None,
                    Ok(Err(err)) => Some(format!("syncing the write-ahead log failed: {err}")),
                    Err(err) => Some(format!("the log sync task failed: {err}")),
                };
                for done in batches.into_iter().flatten() {
                    match &failure {
                        None => done.send(),
                        Some(message) => done.fail(message),
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

/// Runs `jobs` in one transaction; all of them commit or none. The commit itself does not wait
/// for the disk (`synchronous = NORMAL` for this transaction only); the sync stage does, before
/// anyone is answered. The connection is back at `FULL` for every other writer, or closed.
///
/// The pragma travels with `BEGIN` and with `COMMIT` in one call each: every statement is a
/// hop to the connection's thread, and these four were a third of a small batch's hops. The
/// transaction is therefore not sqlx's; this task is never cancelled mid-batch (it ends only
/// with the runtime), so the connection never goes back to the pool inside it.
async fn run_together(write: &AnyPool, jobs: &[Job]) -> StoreResult<Vec<Output>> {
    let mut conn = write.acquire().await.map_err(backend_err)?;
    let begun = conn
        .execute(sqlx::raw_sql(
            "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE",
        ))
        .await
        .map_err(backend_err);
    let result = match begun {
        Ok(_) => match run_in(&mut conn, jobs).await {
            Ok(results) => conn
                .execute(sqlx::raw_sql("COMMIT; PRAGMA synchronous = FULL"))
                .await
                .map(|_| results)
                .map_err(backend_err),
            Err(err) => Err(err),
        },
        // BEGIN failed (busy past the timeout, say) after the pragma took effect.
        Err(err) => Err(err),
    };
    if result.is_err() {
        // The transaction may still be open (a job failed, or COMMIT did); nothing of it stays.
        // Without one, ROLLBACK fails harmlessly.
        let _ = conn.execute(sqlx::raw_sql("ROLLBACK")).await;
    }
    if result.is_err()
        && let Err(err) = conn.execute("PRAGMA synchronous = FULL").await
    {
        tracing::error!(%err, "could not restore synchronous = FULL; closing the connection");
        let _ = conn.close().await;
    }
    result
}

async fn run_in(conn: &mut sqlx::AnyConnection, jobs: &[Job]) -> StoreResult<Vec<Output>> {
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        results.push(match job {
            Job::Claim(claims, _) => {
                let mut out = Vec::with_capacity(claims.len());
                for claim in claims {
                    out.push(crate::e2ee::claim_one(&mut *conn, claim, "").await?);
                }
                out
            }
            Job::WriteKeys(write, _) => {
                crate::e2ee::write_keys_in(&mut *conn, write).await?;
                Vec::new()
            }
        });
    }
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
            owes_update: false,
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
