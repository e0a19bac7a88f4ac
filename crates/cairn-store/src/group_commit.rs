//! Group commit for the hot writes on SQLite: key claims and key uploads.
//!
//! Every SQLite commit waits for an fsync (`synchronous = FULL`), and SQLite has one writer, so
//! writes committed one by one are bound by the disk, not the CPU. Concurrent claims and uploads
//! therefore queue here; one task takes everything queued and runs it in one transaction, and a
//! job that fails is retried alone so that it never takes the rest of its batch down with it.
//!
//! A batch runs on a connection of its own, through rusqlite, in one call on a blocking thread.
//! Through sqlx every statement is a round trip to the connection's thread; at a few statements
//! per job those trips were most of the cost of a batch. The store's one-connection write pool
//! is the write lock: the batch holds that connection while it runs, so the store's other
//! writes never meet it inside SQLite (where they would wait on the busy handler's sleeps).
//!
//! The fsync is pipelined: a batch commits without waiting for the disk (this connection runs
//! at `synchronous = NORMAL`), and a second stage fsyncs the write-ahead log (which holds every
//! committed frame) while the next batch runs. Nobody is answered before that fsync has
//! returned, so nothing is acknowledged before it is durable. Other connections may read a
//! batch a moment before it is on disk; after a power cut such a batch is gone, but it was
//! never acknowledged, and every later acknowledged write is behind it in the log.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use cairn_core::store::{
    KeyClaim, KeyWrite, OneTimeKeyRefusal, OneTimeKeysHeld, StoreError, StoreResult, UploadedKey,
};
use rusqlite::OptionalExtension;
use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use crate::e2ee::raw_json;
use crate::key_sql;
use crate::{Backend, SQLITE_BUSY_TIMEOUT_MS, from_ms};

/// Most requests committed together.
const MAX_BATCH: usize = 256;

/// An upload's outcome: the device's counts, or why nothing was written.
type Written = Result<BTreeMap<String, u64>, OneTimeKeyRefusal>;

/// One queued write and where its answer goes.
struct Job {
    work: Work,
    reply: Reply,
}

enum Work {
    Claim(Vec<KeyClaim>),
    WriteKeys(Box<KeyWrite>),
}

enum Reply {
    Claim(oneshot::Sender<StoreResult<Vec<Option<UploadedKey>>>>),
    WriteKeys(oneshot::Sender<StoreResult<Written>>),
}

/// What one job produced.
enum Output {
    Claimed(Vec<Option<UploadedKey>>),
    Written(Written),
}

/// A job's outcome, ready to be sent once its transaction has committed (or failed).
struct Done(Reply, StoreResult<Output>);

impl Done {
    fn send(self) {
        // The output always matches the reply (both come from one job); a mismatch would
        // drop the reply, which its caller sees as an error.
        match self {
            Done(Reply::Claim(reply), Ok(Output::Claimed(keys))) => drop(reply.send(Ok(keys))),
            Done(Reply::WriteKeys(reply), Ok(Output::Written(written))) => {
                drop(reply.send(Ok(written)))
            }
            Done(reply, Err(err)) => reply.fail(err),
            Done(_, Ok(_)) => {}
        }
    }

    /// The commit may not have reached the disk: the job is not acknowledged.
    fn fail(self, message: &str) {
        self.0.fail(StoreError::Backend(message.to_owned()));
    }
}

impl Reply {
    fn fail(self, err: StoreError) {
        match self {
            Reply::Claim(reply) => drop(reply.send(Err(err))),
            Reply::WriteKeys(reply) => drop(reply.send(Err(err))),
        }
    }
}

/// Makes everything committed to the write-ahead log so far durable. The log is opened by path
/// each time, so the sync reaches the file SQLite is writing even if it was ever recreated.
fn sync_log(wal: &Path) -> std::io::Result<()> {
    std::fs::File::open(wal)?.sync_data()
}

/// Hands writes to the batching task.
#[derive(Clone)]
pub(crate) struct WriteBatcher {
    queue: mpsc::UnboundedSender<Job>,
}

impl WriteBatcher {
    /// Opens a connection of its own to the database file `file` (already in WAL mode) and
    /// starts the task that commits through it, holding `write_lock`'s connection meanwhile.
    pub(crate) fn start(write_lock: AnyPool, file: &Path) -> StoreResult<Self> {
        let conn = rusqlite::Connection::open(file).map_err(sqlite_err)?;
        conn.busy_timeout(Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS.into()))
            .map_err(sqlite_err)?;
        // Only commits from here skip the sync; the sync stage makes them durable.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite_err)?;
        let conn = Arc::new(Mutex::new(conn));
        let wal = file.with_file_name(format!(
            "{}-wal",
            file.file_name().unwrap_or_default().to_string_lossy()
        ));

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
                let done = match write_lock.acquire().await {
                    Ok(_held) => {
                        let conn = conn.clone();
                        let ran = tokio::task::spawn_blocking(move || {
                            run(
                                &mut conn.lock().unwrap_or_else(PoisonError::into_inner),
                                batch,
                            )
                        })
                        .await;
                        // A panic dropped the jobs' reply channels: their callers get an error.
                        ran.unwrap_or_default()
                    }
                    Err(err) => {
                        let message = format!("the write lock is gone: {err}");
                        for job in batch {
                            job.reply.fail(StoreError::Backend(message.clone()));
                        }
                        continue;
                    }
                };
                if synced.send(done).is_err() {
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
                let synced = tokio::task::spawn_blocking(move || sync_log(&wal)).await;
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
        Ok(Self { queue })
    }

    /// Claims, returning after the batch holding them has committed.
    pub(crate) async fn claim(
        &self,
        claims: Vec<KeyClaim>,
    ) -> StoreResult<Vec<Option<UploadedKey>>> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job {
            work: Work::Claim(claims),
            reply: Reply::Claim(reply),
        })?;
        answer.await.map_err(|_| stopped())?
    }

    /// Writes an upload, returning after the batch holding it has committed. Device keys and
    /// owed announcements are not written here (see `e2ee::write_keys_in`).
    pub(crate) async fn write_keys(&self, write: KeyWrite) -> StoreResult<Written> {
        debug_assert!(write.device_keys.is_none() && !write.owes_update);
        let (reply, answer) = oneshot::channel();
        self.submit(Job {
            work: Work::WriteKeys(Box::new(write)),
            reply: Reply::WriteKeys(reply),
        })?;
        answer.await.map_err(|_| stopped())?
    }

    fn submit(&self, job: Job) -> StoreResult<()> {
        self.queue.send(job).map_err(|_| stopped())
    }
}

fn stopped() -> StoreError {
    StoreError::Backend("the write task stopped".into())
}

fn sqlite_err(err: rusqlite::Error) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// Why a job did not complete.
enum Failure {
    Store(StoreError),
    /// An upload whose keys were refused after some were inserted: its transaction must be
    /// rolled back, so inside a batch it fails the batch (see [`write_keys`]).
    Refused(OneTimeKeyRefusal),
}

impl From<rusqlite::Error> for Failure {
    fn from(err: rusqlite::Error) -> Self {
        Failure::Store(sqlite_err(err))
    }
}

impl From<StoreError> for Failure {
    fn from(err: StoreError) -> Self {
        Failure::Store(err)
    }
}

/// Runs a batch in one transaction. If a job fails, the batch is rolled back and every job runs
/// again in a transaction of its own, so that one bad job cannot fail the others. The jobs carry
/// no savepoints of their own: measured, a savepoint per upload cost 5-10% of upload
/// throughput (SQLite copies each page an upload touches into its statement journal), and a
/// failure or refusal, which costs the batch a second run, is rare.
fn run(conn: &mut rusqlite::Connection, batch: Vec<Job>) -> Vec<Done> {
    if batch.len() > 1 {
        match run_together(conn, &batch) {
            Ok(results) => {
                return batch
                    .into_iter()
                    .zip(results)
                    .map(|(job, result)| Done(job.reply, Ok(result)))
                    .collect();
            }
            Err(Failure::Store(err)) => {
                tracing::warn!(%err, "a grouped key write failed; retrying one by one")
            }
            // Refused again below, alone, with nothing written.
            Err(Failure::Refused(_)) => {}
        }
    }
    batch
        .into_iter()
        .map(|job| {
            let result = match run_together(conn, std::slice::from_ref(&job)) {
                Ok(mut results) => Ok(results.remove(0)),
                Err(Failure::Refused(refusal)) => Ok(Output::Written(Err(refusal))),
                Err(Failure::Store(err)) => Err(err),
            };
            Done(job.reply, result)
        })
        .collect()
}

/// Runs `jobs` in one transaction; all of them commit or none.
fn run_together(conn: &mut rusqlite::Connection, jobs: &[Job]) -> Result<Vec<Output>, Failure> {
    // A panic in an earlier batch may have left its transaction open.
    if !conn.is_autocommit() {
        conn.execute_batch("ROLLBACK")?;
    }
    conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
    let result = jobs
        .iter()
        .map(|job| run_job(conn, job))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|results| {
            conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(results)
        });
    if result.is_err() && !conn.is_autocommit() {
        // Nothing of a failed batch stays.
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

fn run_job(conn: &rusqlite::Connection, job: &Job) -> Result<Output, Failure> {
    match &job.work {
        Work::Claim(claims) => Ok(Output::Claimed(
            claims
                .iter()
                .map(|claim| claim_one(conn, claim))
                .collect::<Result<_, _>>()?,
        )),
        Work::WriteKeys(write) => write_keys(conn, write).map(|counts| Output::Written(Ok(counts))),
    }
}

/// Takes the oldest one-time key of the claim, else marks the fallback key used and returns it.
fn claim_one(
    conn: &rusqlite::Connection,
    claim: &KeyClaim,
) -> Result<Option<UploadedKey>, Failure> {
    let params = (
        claim.user_id.as_str(),
        claim.device_id.as_str(),
        &claim.algorithm,
    );
    for sql in [key_sql::TAKE_ONE_TIME_KEY, key_sql::TAKE_FALLBACK_KEY] {
        let taken = conn
            .prepare_cached(sql)?
            .query_row(params, |row| {
                Ok((row.get(0)?, row.get(1)?, row.get::<_, String>(2)?))
            })
            .optional()?;
        if let Some((algorithm, key_id, json)) = taken {
            return Ok(Some(UploadedKey {
                algorithm,
                key_id,
                key: raw_json(json)?,
            }));
        }
    }
    Ok(None)
}

/// Writes an upload's one-time keys, fallback keys and opt-in (the same rows as
/// `e2ee::write_keys_in`) and returns the device's counts.
///
/// The keys are inserted first, one statement each, and only those whose ID was taken are read
/// back: the insert's own uniqueness check is the lookup, where a read of every named key
/// beforehand cost as much again. The rule then sees what the device held, as in
/// `e2ee::write_keys_in`; if it refuses, the inserts must be undone, which is
/// [`Failure::Refused`] (the batch is rolled back, and this job refused alone).
fn write_keys(
    conn: &rusqlite::Connection,
    write: &KeyWrite,
) -> Result<BTreeMap<String, u64>, Failure> {
    static INSERT_ONE: LazyLock<String> =
        LazyLock::new(|| key_sql::insert_one_time_keys_sql(Backend::Sqlite, 1));
    let (user, device) = (write.user_id.as_str(), write.device_id.as_str());
    let mut held = OneTimeKeysHeld::default();
    let mut counts = conn.prepare_cached(key_sql::ONE_TIME_KEY_COUNTS)?;
    let mut rows = counts.query((user, device))?;
    while let Some(row) = rows.next()? {
        held.counts.insert(row.get(0)?, from_ms(row.get(1)?));
    }
    drop(rows);
    let mut inserted: BTreeMap<&str, i64> = BTreeMap::new();
    let mut insert = conn.prepare_cached(&INSERT_ONE)?;
    for key in &write.one_time_keys {
        let algorithm = key.algorithm.as_str();
        let id = key.key_id.as_str();
        if insert.execute((user, device, algorithm, id, key.key.get()))? == 1 {
            *inserted.entry(algorithm).or_default() += 1;
            continue;
        }
        let json: String = conn
            .prepare_cached(key_sql::ONE_TIME_KEY)?
            .query_row((user, device, algorithm, id), |row| row.get(0))?;
        held.existing.push(UploadedKey {
            algorithm: algorithm.to_owned(),
            key_id: id.to_owned(),
            key: raw_json(json)?,
        });
    }
    let counts = write
        .new_one_time_keys(&held)
        .map_err(Failure::Refused)?
        .counts;
    for (algorithm, n) in inserted {
        conn.prepare_cached(key_sql::ADD_ONE_TIME_KEY_COUNT)?
            .execute((user, device, algorithm, n))?;
    }
    for key in &write.fallback_keys {
        conn.prepare_cached(key_sql::PUT_FALLBACK_KEY)?.execute((
            user,
            device,
            &key.algorithm,
            &key.key_id,
            key.key.get(),
        ))?;
    }
    if let Some(eager) = write.eager_share_fallback_keys {
        conn.prepare_cached(key_sql::SET_EAGER_SHARE)?
            .execute((i64::from(eager), user, device))?;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use crate::{SqlStore, StoreOptions};
    use cairn_core::store::{KeyClaim, KeyStore, KeyWrite, OneTimeKeyRefusal, UploadedKey};
    use ruma::{device_id, user_id};
    use serde_json::value::RawValue;
    use sqlx::Executor;

    /// An upload of keys named `id` or `id=value` (the value defaults to the ID).
    fn upload_keys(keys: &[&str]) -> KeyWrite {
        let one_time_keys = keys
            .iter()
            .map(|key| {
                let (key_id, value) = key.split_once('=').unwrap_or((key, key));
                UploadedKey {
                    algorithm: "alg".into(),
                    key_id: key_id.into(),
                    key: RawValue::from_string(format!("\"{value}\"")).unwrap(),
                }
            })
            .collect();
        KeyWrite {
            user_id: user_id!("@alice:example.org").to_owned(),
            device_id: device_id!("D1").to_owned(),
            device_keys: None,
            one_time_keys,
            fallback_keys: vec![],
            eager_share_fallback_keys: None,
            owes_update: false,
        }
    }

    fn upload(key_id: &str) -> KeyWrite {
        upload_keys(&[key_id])
    }

    async fn store_in(dir: &tempfile::TempDir) -> SqlStore {
        let url = format!("sqlite://{}", dir.path().join("db").display());
        SqlStore::open(&StoreOptions {
            url,
            max_connections: 2,
        })
        .await
        .unwrap()
    }

    /// An upload refused after its keys were inserted is refused alone, with nothing of it
    /// kept; the uploads batched with it commit, and see each other's keys.
    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_upload_leaves_its_batch_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
        let (first, refused, last) = (
            upload_keys(&["k1"]),
            upload_keys(&["k2", "k1=changed"]),
            upload_keys(&["k3", "k1"]),
        );
        // On a current-thread runtime all three are queued before the batching task runs, so
        // they share one batch.
        let (first, refused, last) = tokio::join!(
            store.write_keys(&first),
            store.write_keys(&refused),
            store.write_keys(&last)
        );
        assert_eq!(first.unwrap().unwrap()["alg"], 1);
        assert!(matches!(
            refused.unwrap(),
            Err(OneTimeKeyRefusal::Changed { .. })
        ));
        assert_eq!(last.unwrap().unwrap()["alg"], 2, "k1 was held, k3 is new");
        let claims = vec![
            KeyClaim {
                user_id: user_id!("@alice:example.org").to_owned(),
                device_id: device_id!("D1").to_owned(),
                algorithm: "alg".into(),
            };
            3
        ];
        let claimed: Vec<_> = store
            .claim_keys(&claims)
            .await
            .unwrap()
            .into_iter()
            .map(|key| key.map(|key| key.key.get().to_owned()))
            .collect();
        assert_eq!(
            claimed,
            [Some(r#""k1""#.into()), Some(r#""k3""#.into()), None],
            "k2 was not kept"
        );
    }

    /// A job that fails inside a batch fails alone; the jobs batched with it still commit.
    #[tokio::test(flavor = "current_thread")]
    async fn a_failing_job_does_not_fail_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
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
