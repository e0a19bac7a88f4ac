//! The SQL of key uploads and claims, shared by the ordinary transactions (`e2ee`, through
//! sqlx, on both backends) and SQLite's group commit (`group_commit`, through rusqlite). The
//! statements number their parameters `$1, $2, ...` in the order they are bound, which both
//! drivers read positionally on SQLite.

use cairn_core::store::{KeyWrite, OneTimeKeysHeld, StoreResult, UploadedKey};

use crate::e2ee::raw_json;
use crate::params::Params;
use crate::{Backend, from_ms};

/// The statement that reads what a device holds of an upload's one-time keys, and its
/// parameters. One statement (through sqlx each is a hop to the connection's thread): the named
/// keys, one indexed lookup per algorithm (uploads rarely mix them; the unique index is (user,
/// device, algorithm, key_id), so the algorithm must be fixed to reach the key IDs), then the
/// counts, told apart by `n` (-1 on key rows). Rows are read by [`held_from_rows`].
pub(crate) fn held_one_time_keys_query(backend: Backend, write: &KeyWrite) -> (String, Vec<&str>) {
    let (user, device) = (write.user_id.as_str(), write.device_id.as_str());
    let mut p = Params::new(backend);
    let mut parts = Vec::new();
    let mut params = Vec::new();
    for (algorithm, keys) in one_time_keys_per_algorithm(&write.one_time_keys) {
        parts.push(format!(
            "SELECT algorithm, key_id, key_json, -1 AS n FROM one_time_keys WHERE user_id = {} \
             AND device_id = {} AND algorithm = {} AND key_id IN ({})",
            p.one(),
            p.one(),
            p.one(),
            p.many(keys.len())
        ));
        params.extend([user, device, algorithm]);
        params.extend(keys.iter().map(|k| k.key_id.as_str()));
    }
    parts.push(format!(
        "SELECT algorithm, '' AS key_id, '' AS key_json, n FROM one_time_key_counts \
         WHERE user_id = {} AND device_id = {} AND n > 0",
        p.one(),
        p.one()
    ));
    params.extend([user, device]);
    (parts.join(" UNION ALL "), params)
}

/// What [`held_one_time_keys_query`] read: (algorithm, key ID, key JSON, count) rows.
pub(crate) fn held_from_rows(
    rows: impl IntoIterator<Item = (String, String, String, i64)>,
) -> StoreResult<OneTimeKeysHeld> {
    let mut held = OneTimeKeysHeld::default();
    for (algorithm, key_id, json, n) in rows {
        if n < 0 {
            held.existing.push(UploadedKey {
                algorithm,
                key_id,
                key: raw_json(json)?,
            });
        } else {
            held.counts.insert(algorithm, from_ms(n));
        }
    }
    Ok(held)
}

/// Takes the oldest one-time key of a device and algorithm; `$lock` is PostgreSQL's row lock.
macro_rules! take_one_time_key {
    ($lock:literal) => {
        concat!(
            "DELETE FROM one_time_keys WHERE seq = (SELECT seq FROM one_time_keys \
             WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 ORDER BY seq LIMIT 1",
            $lock,
            ") RETURNING algorithm, key_id, key_json"
        )
    };
}

/// Takes (deletes and returns) the oldest one-time key of user `$1`'s device `$2` for algorithm
/// `$3`, on SQLite, where there is one writer.
pub(crate) const TAKE_ONE_TIME_KEY: &str = take_one_time_key!("");

/// The same on PostgreSQL: concurrent claimers skip each other's locked rows, so no key is
/// handed out twice.
pub(crate) const TAKE_ONE_TIME_KEY_SKIP_LOCKED: &str =
    take_one_time_key!(" FOR UPDATE SKIP LOCKED");

/// The unclaimed one-time keys of `$1`'s device `$2`, counted per algorithm (`algorithm, n`).
pub(crate) const ONE_TIME_KEY_COUNTS: &str = "SELECT algorithm, n FROM one_time_key_counts \
     WHERE user_id = $1 AND device_id = $2 AND n > 0";

/// The stored key of `$1`'s device `$2` for algorithm `$3` and key ID `$4` (`key_json`).
pub(crate) const ONE_TIME_KEY: &str = "SELECT key_json FROM one_time_keys \
     WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4";

/// Marks the fallback key of `$1`'s device `$2` for algorithm `$3` used and returns it.
pub(crate) const TAKE_FALLBACK_KEY: &str = "UPDATE fallback_keys SET used = 1 \
     WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 RETURNING algorithm, key_id, key_json";

/// Adds `$4` to the count of `$1`'s device `$2` for algorithm `$3` (deletions have a trigger).
pub(crate) const ADD_ONE_TIME_KEY_COUNT: &str = "INSERT INTO one_time_key_counts \
     (user_id, device_id, algorithm, n) VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, device_id, algorithm) \
     DO UPDATE SET n = one_time_key_counts.n + excluded.n";

/// Stores a fallback key, unused, in place of the device's key of that algorithm.
pub(crate) const PUT_FALLBACK_KEY: &str = "INSERT INTO fallback_keys \
     (user_id, device_id, algorithm, key_id, key_json, used) VALUES ($1, $2, $3, $4, $5, 0) \
     ON CONFLICT (user_id, device_id, algorithm) \
     DO UPDATE SET key_id = excluded.key_id, key_json = excluded.key_json, used = 0";

/// Sets a device's MSC4081 opt-in (`$1`, 0 or 1).
pub(crate) const SET_EAGER_SHARE: &str =
    "UPDATE devices SET eager_share_fallback_keys = $1 WHERE user_id = $2 AND device_id = $3";

/// Inserts `rows` one-time keys, each bound as user, device, algorithm, key ID and key; a key
/// already stored under its ID is left as it is.
pub(crate) fn insert_one_time_keys_sql(backend: Backend, rows: usize) -> String {
    let mut p = Params::new(backend);
    let values: Vec<String> = (0..rows).map(|_| format!("({})", p.many(5))).collect();
    format!(
        "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, key_json) VALUES {} \
         ON CONFLICT (user_id, device_id, algorithm, key_id) DO NOTHING",
        values.join(", ")
    )
}

/// Keys grouped per algorithm, in upload order within each.
fn one_time_keys_per_algorithm<K: std::borrow::Borrow<UploadedKey>>(
    keys: &[K],
) -> Vec<(&str, Vec<&UploadedKey>)> {
    let mut algorithms: Vec<&str> = keys.iter().map(|k| k.borrow().algorithm.as_str()).collect();
    algorithms.sort_unstable();
    algorithms.dedup();
    algorithms
        .into_iter()
        .map(|algorithm| {
            let of = keys
                .iter()
                .map(|k| k.borrow())
                .filter(|k| k.algorithm == algorithm)
                .collect();
            (algorithm, of)
        })
        .collect()
}

/// New one-time keys as one insert per algorithm, in chunks far below SQLite's 32766
/// parameters.
pub(crate) fn one_time_key_chunks<'a>(
    keys: &'a [&'a UploadedKey],
) -> Vec<(&'a str, Vec<&'a UploadedKey>)> {
    let mut chunks = Vec::new();
    for (algorithm, of) in one_time_keys_per_algorithm(keys) {
        chunks.extend(of.chunks(1000).map(|chunk| (algorithm, chunk.to_vec())));
    }
    chunks
}
