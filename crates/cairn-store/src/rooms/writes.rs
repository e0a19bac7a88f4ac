//! The row writes shared by local appends, joined rooms and remote memberships.

use cairn_core::rooms::pdu::Pdu;
use cairn_core::store::StoreResult;

use crate::{backend_err, from_ms, ms, next_position};

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

/// Records a membership event of a local user in a room this server is not in, with the
/// stripped state to show with it (see `RoomStore::store_remote_membership`), inside `tx`.
pub(super) async fn remote_membership(
    tx: &mut sqlx::AnyConnection,
    version: &ruma::RoomVersionId,
    invite: &Pdu,
    stripped_state: &str,
) -> StoreResult<u64> {
    let room = invite.room_id.as_str();
    let target = invite.state_key.as_deref().unwrap_or_default();
    sqlx::query("INSERT INTO rooms (room_id, room_version) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(room)
        .bind(version.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend_err)?;
    let known: Option<i64> =
        sqlx::query_scalar("SELECT stream_pos FROM events WHERE event_id = $1")
            .bind(invite.event_id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend_err)?;
    let pos = match known {
        Some(pos) => from_ms(pos),
        None => {
            let pos = next_position(tx).await?;
            insert_event(tx, invite, pos, true).await?;
            make_current(tx, invite, pos).await?;
            pos
        }
    };
    sqlx::query(
        "INSERT INTO remote_invite_state (room_id, user_id, state_json) VALUES ($1, $2, $3) \
         ON CONFLICT (room_id, user_id) DO UPDATE SET state_json = excluded.state_json",
    )
    .bind(room)
    .bind(target)
    .bind(stripped_state)
    .execute(&mut *tx)
    .await
    .map_err(backend_err)?;
    Ok(pos)
}
