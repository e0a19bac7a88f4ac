//! Group commit for the hot writes on SQLite: key claims and key uploads.
//!
//! Every SQLite commit waits for an fsync (`synchronous = FULL`), and SQLite has one writer, so
//! writes committed one by one are bound by the disk, not the CPU. Concurrent claims and uploads
//! therefore queue here; one task takes everything queued, runs it in one transaction and answers
//! each request only after the commit. Nothing is acknowledged before it is durable. An upload
//! runs in a savepoint of its own, so one that fails rolls back alone; a claim is a single
//! statement, atomic by itself.

use cairn_core::store::{KeyClaim, KeyWrite, StoreError, StoreResult, UploadedKey};
use sqlx::{AnyPool, AssertSqlSafe, Connection};
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

/// A job's outcome, held until the batch commits.
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

    /// The batch could not commit: everyone in it gets the error.
    fn fail(self, message: &str) {
        let err = || StoreError::Backend(message.to_owned());
        match self {
            Done::Claim(reply, _) => drop(reply.send(Err(err()))),
            Done::WriteKeys(reply, _) => drop(reply.send(Err(err()))),
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
                match run(&write, batch).await {
                    Ok(done) => done.into_iter().for_each(Done::send),
                    Err((done, err)) => {
                        let message = err.to_string();
                        done.into_iter().for_each(|d| d.fail(&message));
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

/// Runs a batch in one transaction. On a failed commit every job's answer becomes that error.
async fn run(write: &AnyPool, batch: Vec<Job>) -> Result<Vec<Done>, (Vec<Done>, StoreError)> {
    let mut done = Vec::with_capacity(batch.len());
    let mut tx = match write.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(err) => {
            let done = batch.into_iter().map(|job| match job {
                Job::Claim(_, reply) => Done::Claim(reply, Ok(Vec::new())),
                Job::WriteKeys(_, reply) => Done::WriteKeys(reply, Ok(())),
            });
            return Err((done.collect(), backend_err(err)));
        }
    };
    for job in batch {
        match job {
            Job::Claim(claims, reply) => {
                let mut out = Vec::with_capacity(claims.len());
                let mut result = Ok(());
                for claim in &claims {
                    match crate::e2ee::claim_one(&mut tx, claim, "").await {
                        Ok(key) => out.push(key),
                        Err(err) => {
                            result = Err(err);
                            break;
                        }
                    }
                }
                done.push(Done::Claim(reply, result.map(|()| out)));
            }
            Job::WriteKeys(write, reply) => {
                let result = async {
                    let mut savepoint = tx.begin().await.map_err(backend_err)?;
                    crate::e2ee::write_keys_in(&mut savepoint, &write).await?;
                    savepoint.commit().await.map_err(backend_err)
                }
                .await;
                done.push(Done::WriteKeys(reply, result));
            }
        }
    }
    match tx.commit().await {
        Ok(()) => Ok(done),
        Err(err) => Err((done, backend_err(err))),
    }
}

/// The statement that takes the oldest one-time key; `lock` is PostgreSQL's row-locking clause.
pub(crate) fn take_otk_sql(lock: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(format!(
        "DELETE FROM one_time_keys WHERE seq = (SELECT seq FROM one_time_keys \
         WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 ORDER BY seq LIMIT 1{lock}) \
         RETURNING algorithm, key_id, key_json"
    ))
}
