//! Rooms: events in stream order, current state, memberships, extremities and aliases.

mod state;
mod writes;

use async_trait::async_trait;
use cairn_core::rooms::pdu::Pdu;
use cairn_core::store::*;
use ruma::{
    DeviceId, EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, RoomVersionId,
    UserId,
};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::{Backend, SqlStore, backend_err, from_ms, ms, next_position};
use writes::{insert_event, make_current};

const EVENT_COLUMNS: &str = "e.stream_pos, e.event_id, e.room_id, e.json";

fn bad(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("bad stored {what}: {e}"))
}

fn stream_event(row: &AnyRow) -> StoreResult<StreamEvent> {
    let event_id: String = row.try_get("event_id").map_err(backend_err)?;
    let room_id: String = row.try_get("room_id").map_err(backend_err)?;
    let json: String = row.try_get("json").map_err(backend_err)?;
    let event_id = EventId::parse(event_id).map_err(|e| bad("event ID", e))?;
    let room_id = RoomId::parse(room_id).map_err(|e| bad("room ID", e))?;
    let pdu = Pdu::from_json(event_id, &room_id, &json).map_err(|e| bad("event", e))?;
    Ok(StreamEvent {
        pos: from_ms(row.try_get("stream_pos").map_err(backend_err)?),
        pdu,
    })
}

fn users(raw: Vec<String>) -> StoreResult<Vec<OwnedUserId>> {
    raw.into_iter()
        .map(|u| UserId::parse(u).map_err(|e| bad("user ID", e)))
        .collect()
}

#[async_trait]
impl RoomStore for SqlStore {
    async fn room_version(&self, room_id: &RoomId) -> StoreResult<Option<RoomVersionId>> {
        let version: Option<String> =
            sqlx::query_scalar("SELECT room_version FROM rooms WHERE room_id = $1")
                .bind(room_id.as_str())
                .fetch_optional(&self.read)
                .await
                .map_err(backend_err)?;
        version
            .map(|v| RoomVersionId::try_from(v).map_err(|e| bad("room version", e)))
            .transpose()
    }

    async fn forward_extremities(&self, room_id: &RoomId) -> StoreResult<(Vec<OwnedEventId>, u64)> {
        let rows = sqlx::query(
            "SELECT f.event_id, e.depth FROM forward_extremities f JOIN events e ON e.event_id = f.event_id \
             WHERE f.room_id = $1 ORDER BY f.event_id",
        )
        .bind(room_id.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        let mut ids = Vec::new();
        let mut depth = 0;
        for row in &rows {
            let id: String = row.try_get("event_id").map_err(backend_err)?;
            ids.push(EventId::parse(id).map_err(|e| bad("event ID", e))?);
            depth = depth.max(from_ms(row.try_get("depth").map_err(backend_err)?));
        }
        Ok((ids, depth))
    }

    async fn state_events(
        &self,
        room_id: &RoomId,
        keys: &[(String, String)],
    ) -> StoreResult<Vec<Pdu>> {
        let mut out = Vec::new();
        for (kind, key) in keys {
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT {EVENT_COLUMNS} FROM current_state s JOIN events e ON e.stream_pos = s.stream_pos \
                 WHERE s.room_id = $1 AND s.event_type = $2 AND s.state_key = $3"
            )))
            .bind(room_id.as_str())
            .bind(kind)
            .bind(key)
            .fetch_optional(&self.read)
            .await
            .map_err(backend_err)?;
            if let Some(row) = row {
                out.push(stream_event(&row)?.pdu);
            }
        }
        Ok(out)
    }

    async fn current_state(&self, room_id: &RoomId) -> StoreResult<Vec<StreamEvent>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM current_state s JOIN events e ON e.stream_pos = s.stream_pos \
             WHERE s.room_id = $1 ORDER BY e.stream_pos"
        )))
        .bind(room_id.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        rows.iter().map(stream_event).collect()
    }

    async fn append_event(&self, event: &NewEvent) -> StoreResult<AppendOutcome> {
        let pdu = &event.pdu;
        let room = pdu.room_id.as_str();
        let mut tx = self.begin().await?;
        if let Some((user, device, txn_id)) = &event.txn {
            let done: Option<String> = sqlx::query_scalar(
                "SELECT event_id FROM event_transactions WHERE user_id = $1 AND device_id = $2 AND txn_id = $3",
            )
            .bind(user.as_str())
            .bind(device.as_str())
            .bind(txn_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend_err)?;
            if let Some(id) = done {
                return Ok(AppendOutcome::DuplicateTxn(
                    EventId::parse(id).map_err(|e| bad("event ID", e))?,
                ));
            }
        }
        match &event.creates_room {
            Some(version) => {
                let created = sqlx::query("INSERT INTO rooms (room_id, room_version) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(room)
                    .bind(version.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(backend_err)?;
                if created.rows_affected() == 0 {
                    return Ok(AppendOutcome::ExtremitiesMoved);
                }
            }
            None => {
                // Lock the room (PostgreSQL; SQLite has one writer) before reading its extremities,
                // so that the comparison below holds until commit.
                let lock = match self.backend {
                    Backend::Postgres => " FOR UPDATE",
                    Backend::Sqlite => "",
                };
                sqlx::query(AssertSqlSafe(format!(
                    "SELECT room_id FROM rooms WHERE room_id = $1{lock}"
                )))
                .bind(room)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend_err)?;
                let mut current: Vec<String> = sqlx::query_scalar(
                    "SELECT event_id FROM forward_extremities WHERE room_id = $1",
                )
                .bind(room)
                .fetch_all(&mut *tx)
                .await
                .map_err(backend_err)?;
                current.sort();
                let mut expected: Vec<&str> = event
                    .expected_extremities
                    .iter()
                    .map(|e| e.as_str())
                    .collect();
                expected.sort_unstable();
                if current != expected {
                    return Ok(AppendOutcome::ExtremitiesMoved);
                }
            }
        }
        let pos = next_position(&mut tx).await?;
        crate::federation::enqueue(&mut tx, &event.outbound).await?;
        crate::device_lists::announce_all(&mut tx, &event.announce).await?;
        insert_event(&mut tx, pdu, pos, false).await?;
        state::record(
            &mut tx,
            room,
            pdu.event_id.as_str(),
            pos,
            &event.state_after,
        )
        .await?;
        for id in &event.make_current {
            let row = sqlx::query(AssertSqlSafe(format!(
                "SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id = $1"
            )))
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend_err)?;
            if let Some(current) = row.as_ref().map(stream_event).transpose()? {
                make_current(&mut tx, &current.pdu, current.pos).await?;
            }
        }
        for prev in &pdu.prev_events {
            sqlx::query("DELETE FROM forward_extremities WHERE room_id = $1 AND event_id = $2")
                .bind(room)
                .bind(prev.as_str())
                .execute(&mut *tx)
                .await
                .map_err(backend_err)?;
        }
        sqlx::query("INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)")
            .bind(room)
            .bind(pdu.event_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
        if let Some((user, device, txn_id)) = &event.txn {
            sqlx::query("INSERT INTO event_transactions (user_id, device_id, txn_id, event_id) VALUES ($1, $2, $3, $4)")
                .bind(user.as_str())
                .bind(device.as_str())
                .bind(txn_id)
                .bind(pdu.event_id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(backend_err)?;
        }
        tx.commit().await.map_err(backend_err)?;
        Ok(AppendOutcome::Appended(pos))
    }

    async fn import_room(
        &self,
        version: &RoomVersionId,
        state: &[Pdu],
        auth_chain: &[Pdu],
        join: &NewEvent,
    ) -> StoreResult<u64> {
        let room = join.pdu.room_id.as_str();
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO rooms (room_id, room_version) VALUES ($1, $2) \
             ON CONFLICT (room_id) DO UPDATE SET room_version = excluded.room_version",
        )
        .bind(room)
        .bind(version.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend_err)?;
        let state_ids: std::collections::BTreeSet<&EventId> =
            state.iter().map(|p| &*p.event_id).collect();
        for pdu in auth_chain.iter().chain(state) {
            let known: Option<i64> =
                sqlx::query_scalar("SELECT stream_pos FROM events WHERE event_id = $1")
                    .bind(pdu.event_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(backend_err)?;
            let pos = match known {
                Some(pos) => from_ms(pos),
                None => {
                    let pos = next_position(&mut tx).await?;
                    insert_event(&mut tx, pdu, pos, true).await?;
                    pos
                }
            };
            if state_ids.contains(&*pdu.event_id) {
                make_current(&mut tx, pdu, pos).await?;
            }
        }
        sqlx::query("DELETE FROM forward_extremities WHERE room_id = $1")
            .bind(room)
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
        let pos = next_position(&mut tx).await?;
        crate::federation::enqueue(&mut tx, &join.outbound).await?;
        crate::device_lists::announce_all(&mut tx, &join.announce).await?;
        insert_event(&mut tx, &join.pdu, pos, false).await?;
        state::record(
            &mut tx,
            room,
            join.pdu.event_id.as_str(),
            pos,
            &join.state_after,
        )
        .await?;
        make_current(&mut tx, &join.pdu, pos).await?;
        sqlx::query("INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)")
            .bind(room)
            .bind(join.pdu.event_id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend_err)?;
        tx.commit().await.map_err(backend_err)?;
        Ok(pos)
    }

    async fn store_remote_membership(
        &self,
        version: &RoomVersionId,
        invite: &Pdu,
        stripped_state: &str,
    ) -> StoreResult<u64> {
        let mut tx = self.begin().await?;
        let pos = writes::remote_membership(&mut tx, version, invite, stripped_state).await?;
        tx.commit().await.map_err(backend_err)?;
        Ok(pos)
    }

    async fn remote_invite_state(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> StoreResult<Option<String>> {
        sqlx::query_scalar(
            "SELECT state_json FROM remote_invite_state WHERE room_id = $1 AND user_id = $2",
        )
        .bind(room_id.as_str())
        .bind(user_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)
    }

    async fn event(&self, event_id: &EventId) -> StoreResult<Option<StreamEvent>> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id = $1"
        )))
        .bind(event_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?;
        row.as_ref().map(stream_event).transpose()
    }

    async fn state_group_of(&self, event_id: &EventId) -> StoreResult<Option<u64>> {
        let mut conn = self.read.acquire().await.map_err(backend_err)?;
        state::group_of(&mut conn, event_id.as_str()).await
    }

    async fn state_group(&self, group: u64) -> StoreResult<Vec<StateEntry>> {
        let mut conn = self.read.acquire().await.map_err(backend_err)?;
        state::read(&mut conn, group).await
    }

    async fn event_for_txn(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        txn_id: &str,
    ) -> StoreResult<Option<OwnedEventId>> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT event_id FROM event_transactions WHERE user_id = $1 AND device_id = $2 AND txn_id = $3",
        )
        .bind(user_id.as_str())
        .bind(device_id.as_str())
        .bind(txn_id)
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?;
        id.map(|id| EventId::parse(id).map_err(|e| bad("event ID", e)))
            .transpose()
    }

    async fn membership(
        &self,
        room_id: &RoomId,
        user_id: &UserId,
    ) -> StoreResult<Option<MembershipRecord>> {
        let row = sqlx::query(
            "SELECT membership, stream_pos FROM memberships WHERE room_id = $1 AND user_id = $2",
        )
        .bind(room_id.as_str())
        .bind(user_id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?;
        row.map(|row| {
            Ok(MembershipRecord {
                room_id: room_id.to_owned(),
                membership: row.try_get("membership").map_err(backend_err)?,
                pos: from_ms(row.try_get("stream_pos").map_err(backend_err)?),
            })
        })
        .transpose()
    }

    async fn memberships(&self, user_id: &UserId) -> StoreResult<Vec<MembershipRecord>> {
        let rows = sqlx::query("SELECT room_id, membership, stream_pos FROM memberships WHERE user_id = $1 ORDER BY room_id")
            .bind(user_id.as_str())
            .fetch_all(&self.read)
            .await
            .map_err(backend_err)?;
        rows.iter()
            .map(|row| {
                let room: String = row.try_get("room_id").map_err(backend_err)?;
                Ok(MembershipRecord {
                    room_id: RoomId::parse(room).map_err(|e| bad("room ID", e))?,
                    membership: row.try_get("membership").map_err(backend_err)?,
                    pos: from_ms(row.try_get("stream_pos").map_err(backend_err)?),
                })
            })
            .collect()
    }

    async fn members_with(
        &self,
        room_id: &RoomId,
        membership: &str,
    ) -> StoreResult<Vec<OwnedUserId>> {
        let raw: Vec<String> =
            sqlx::query_scalar("SELECT user_id FROM memberships WHERE room_id = $1 AND membership = $2 ORDER BY user_id")
                .bind(room_id.as_str())
                .bind(membership)
                .fetch_all(&self.read)
                .await
                .map_err(backend_err)?;
        users(raw)
    }

    async fn room_events(
        &self,
        room_id: &RoomId,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<(Vec<StreamEvent>, bool)> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND e.outlier = 0 AND e.stream_pos > $2 AND e.stream_pos <= $3 \
             ORDER BY e.stream_pos DESC LIMIT $4"
        )))
        .bind(room_id.as_str())
        .bind(ms(after))
        .bind(ms(up_to))
        .bind(i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        let limited = rows.len() > limit;
        let mut events: Vec<StreamEvent> = rows
            .iter()
            .take(limit)
            .map(stream_event)
            .collect::<StoreResult<_>>()?;
        events.reverse();
        Ok((events, limited))
    }

    async fn room_events_after(
        &self,
        room_id: &RoomId,
        after: u64,
        up_to: u64,
        limit: usize,
    ) -> StoreResult<Vec<StreamEvent>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND e.outlier = 0 AND e.stream_pos > $2 AND e.stream_pos <= $3 \
             ORDER BY e.stream_pos LIMIT $4"
        )))
        .bind(room_id.as_str())
        .bind(ms(after))
        .bind(ms(up_to))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        rows.iter().map(stream_event).collect()
    }

    async fn room_events_before(
        &self,
        room_id: &RoomId,
        before: u64,
        limit: usize,
    ) -> StoreResult<Vec<StreamEvent>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND e.outlier = 0 AND e.stream_pos < $2 \
             ORDER BY e.stream_pos DESC LIMIT $3"
        )))
        .bind(room_id.as_str())
        .bind(ms(before))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        rows.iter().map(stream_event).collect()
    }

    async fn membership_changes(
        &self,
        user_id: &UserId,
        after: u64,
        up_to: u64,
    ) -> StoreResult<Vec<(OwnedRoomId, OwnedUserId, String)>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events e JOIN memberships m ON m.room_id = e.room_id AND m.user_id = $1 \
             WHERE e.event_type = 'm.room.member' AND e.stream_pos > $2 AND e.stream_pos <= $3 ORDER BY e.stream_pos"
        )))
        .bind(user_id.as_str())
        .bind(ms(after))
        .bind(ms(up_to))
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        let mut out = Vec::new();
        for row in &rows {
            let event = stream_event(row)?.pdu;
            if let (Some(membership), Some(Ok(user))) = (
                event.membership(),
                event.state_key.as_deref().map(UserId::parse),
            ) {
                out.push((event.room_id, user, membership));
            }
        }
        Ok(out)
    }

    async fn room_mates(&self, user_id: &UserId) -> StoreResult<Vec<OwnedUserId>> {
        let mut raw: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT o.user_id FROM memberships me JOIN memberships o ON o.room_id = me.room_id \
             WHERE me.user_id = $1 AND me.membership = 'join' AND o.membership = 'join'",
        )
        .bind(user_id.as_str())
        .fetch_all(&self.read)
        .await
        .map_err(backend_err)?;
        raw.push(user_id.to_string());
        raw.sort();
        raw.dedup();
        users(raw)
    }

    async fn share_a_room(&self, a: &UserId, b: &UserId) -> StoreResult<bool> {
        let found: Option<String> = sqlx::query_scalar(
            "SELECT me.room_id FROM memberships me JOIN memberships o ON o.room_id = me.room_id \
             WHERE me.user_id = $1 AND me.membership = 'join' AND o.user_id = $2 AND o.membership = 'join' LIMIT 1",
        )
        .bind(a.as_str())
        .bind(b.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(backend_err)?;
        Ok(found.is_some())
    }

    async fn create_alias(
        &self,
        alias: &RoomAliasId,
        room_id: &RoomId,
        creator: &UserId,
    ) -> StoreResult<bool> {
        let done = sqlx::query("INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(alias.as_str())
            .bind(room_id.as_str())
            .bind(creator.as_str())
            .execute(&self.write)
            .await
            .map_err(backend_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn alias(&self, alias: &RoomAliasId) -> StoreResult<Option<(OwnedRoomId, OwnedUserId)>> {
        let row = sqlx::query("SELECT room_id, creator FROM room_aliases WHERE alias = $1")
            .bind(alias.as_str())
            .fetch_optional(&self.read)
            .await
            .map_err(backend_err)?;
        row.map(|row| {
            let room: String = row.try_get("room_id").map_err(backend_err)?;
            let creator: String = row.try_get("creator").map_err(backend_err)?;
            Ok((
                RoomId::parse(room).map_err(|e| bad("room ID", e))?,
                UserId::parse(creator).map_err(|e| bad("user ID", e))?,
            ))
        })
        .transpose()
    }

    async fn delete_alias(&self, alias: &RoomAliasId) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM room_aliases WHERE alias = $1")
            .bind(alias.as_str())
            .execute(&self.write)
            .await
            .map_err(backend_err)?;
        Ok(done.rows_affected() > 0)
    }
}
