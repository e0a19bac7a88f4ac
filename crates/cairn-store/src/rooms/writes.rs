//! The row writes shared by local appends, joined rooms and remote memberships.

use cairn_core::rooms::pdu::Pdu;
use cairn_core::store::StoreResult;

use crate::{backend_err, ms};

/// Stores an event at `pos`; an outlier is kept out of timelines.
pub(super) async fn insert_event(
    tx: &mut sqlx::AnyConnection,
    pdu: &Pdu,
    pos: u64,
    outlier: bool,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO events (stream_pos, event_id, room_id, event_type, state_key, depth, json, outlier) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(ms(pos))
    .bind(pdu.event_id.as_str())
    .bind(pdu.room_id.as_str())
    .bind(pdu.kind_str())
    .bind(pdu.state_key.as_deref())
    .bind(ms(pdu.depth))
    .bind(&*pdu.json)
    .bind(i64::from(outlier))
    .execute(&mut *tx)
    .await
    .map_err(backend_err)?;
    Ok(())
}

/// Makes a state event (stored at `pos`) the room's current state for its type and key, and
/// mirrors memberships.
pub(super) async fn make_current(
    tx: &mut sqlx::AnyConnection,
    pdu: &Pdu,
    pos: u64,
) -> StoreResult<()> {
    let Some(state_key) = &pdu.state_key else {
        return Ok(());
    };
    let room = pdu.room_id.as_str();
    sqlx::query(
        "INSERT INTO current_state (room_id, event_type, state_key, stream_pos) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (room_id, event_type, state_key) DO UPDATE SET stream_pos = excluded.stream_pos",
    )
    .bind(room)
    .bind(pdu.kind_str())
    .bind(state_key)
    .bind(ms(pos))
    .execute(&mut *tx)
    .await
    .map_err(backend_err)?;
    if let Some(membership) = pdu.membership() {
        sqlx::query(
            "INSERT INTO memberships (room_id, user_id, membership, stream_pos, server_name) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership, stream_pos = excluded.stream_pos",
        )
        .bind(room)
        .bind(state_key)
        .bind(membership)
        .bind(ms(pos))
        .bind(state_key.split_once(':').map_or("", |(_, server)| server))
        .execute(&mut *tx)
        .await
        .map_err(backend_err)?;
    }
    Ok(())
}
