//! State groups: the room state after each event, as changes on a parent group (see
//! `cairn_core::rooms::state`).

use std::collections::BTreeMap;

use cairn_core::store::{StateAfter, StateEntry, StoreError, StoreResult};
use ruma::OwnedEventId;
use sqlx::Row;

use crate::{backend_err, from_ms, ms};

/// A group is stored whole once this many parents sit above it, so that reading any state
/// takes at most this many more rows.
const MAX_CHAIN: i64 = 32;

type Delta = Vec<(String, String, String)>;

fn bad(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("bad stored state group: {e}"))
}

/// Records the state after the event `event_id`, stored at `pos` in `room_id`.
pub(super) async fn record(
    conn: &mut sqlx::AnyConnection,
    room_id: &str,
    event_id: &str,
    pos: u64,
    after: &StateAfter,
) -> StoreResult<()> {
    let group = match after {
        StateAfter::Group(group) => *group,
        StateAfter::New { parent, changes } => {
            let parent_len: Option<i64> = match parent {
                Some(parent) => {
                    sqlx::query_scalar("SELECT chain_len FROM state_groups WHERE state_group = $1")
                        .bind(ms(*parent))
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(backend_err)?
                }
                None => None,
            };
            let (parent, chain_len, delta) = match (parent, parent_len) {
                (Some(parent), Some(len)) if len < MAX_CHAIN => {
                    (Some(*parent), len + 1, changes.clone())
                }
                (Some(parent), Some(_)) => {
                    let mut whole = read(conn, *parent).await?;
                    apply(&mut whole, changes);
                    (None, 0, whole)
                }
                _ => (None, 0, changes.clone()),
            };
            let delta: Delta = delta
                .into_iter()
                .map(|(kind, key, id)| (kind, key, id.to_string()))
                .collect();
            sqlx::query(
                "INSERT INTO state_groups (state_group, room_id, parent, chain_len, delta) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(ms(pos))
            .bind(room_id)
            .bind(parent.map(ms))
            .bind(chain_len)
            .bind(serde_json::to_string(&delta).map_err(bad)?)
            .execute(&mut *conn)
            .await
            .map_err(backend_err)?;
            pos
        }
    };
    sqlx::query(
        "INSERT INTO event_states (event_id, state_group) VALUES ($1, $2) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(event_id)
    .bind(ms(group))
    .execute(&mut *conn)
    .await
    .map_err(backend_err)?;
    Ok(())
}

fn apply(state: &mut Vec<StateEntry>, changes: &[StateEntry]) {
    let mut map: BTreeMap<(String, String), OwnedEventId> = state
        .drain(..)
        .map(|(kind, key, id)| ((kind, key), id))
        .collect();
    for (kind, key, id) in changes {
        map.insert((kind.clone(), key.clone()), id.clone());
    }
    state.extend(map.into_iter().map(|((kind, key), id)| (kind, key, id)));
}

/// The whole state of `group`: its chain of deltas applied from the top down.
pub(super) async fn read(
    conn: &mut sqlx::AnyConnection,
    group: u64,
) -> StoreResult<Vec<StateEntry>> {
    let mut deltas = Vec::new();
    let mut next = Some(ms(group));
    while let Some(at) = next {
        let row = sqlx::query("SELECT parent, delta FROM state_groups WHERE state_group = $1")
            .bind(at)
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend_err)?
            .ok_or_else(|| bad(format!("group {at} is missing")))?;
        next = row
            .try_get::<Option<i64>, _>("parent")
            .map_err(backend_err)?;
        let delta: Delta =
            serde_json::from_str(&row.try_get::<String, _>("delta").map_err(backend_err)?)
                .map_err(bad)?;
        deltas.push(delta);
    }
    let mut state = Vec::new();
    for delta in deltas.into_iter().rev() {
        let changes: Vec<StateEntry> = delta
            .into_iter()
            .map(|(kind, key, id)| Ok((kind, key, OwnedEventId::try_from(id).map_err(bad)?)))
            .collect::<StoreResult<_>>()?;
        apply(&mut state, &changes);
    }
    Ok(state)
}

/// The group recorded for an event.
pub(super) async fn group_of(
    conn: &mut sqlx::AnyConnection,
    event_id: &str,
) -> StoreResult<Option<u64>> {
    let group: Option<i64> =
        sqlx::query_scalar("SELECT state_group FROM event_states WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend_err)?;
    Ok(group.map(from_ms))
}
