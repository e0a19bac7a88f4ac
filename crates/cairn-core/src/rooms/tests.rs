//! Unit tests of room rules: creation per room version, membership, sending, reading.

use serde_json::json;

use super::create::CreateRoomRequest;
use super::read::Direction;
use crate::error::ErrorKind;
use crate::testing::{homeserver, user};

fn create(body: serde_json::Value) -> CreateRoomRequest {
    serde_json::from_value(body).unwrap()
}

#[tokio::test]
async fn rooms_of_every_supported_version_are_created_with_valid_events() {
    let (hs, _) = homeserver(true);
    let alice = user(&hs, "alice", "A1").await;
    for version in ["10", "11", "12"] {
        let req = create(
            json!({ "room_version": version, "name": "Lounge", "topic": "t",
            "initial_state": [{ "type": "m.room.encryption", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }] }),
        );
        let room_id = hs.create_room(&alice, req).await.unwrap();
        assert_eq!(
            room_id.server_name().is_some(),
            version != "12",
            "v12 room IDs are hashes"
        );
        let state = hs.room_state(&alice, &room_id).await.unwrap();
        let kinds: Vec<String> = state.iter().map(|e| e.kind_str()).collect();
        for kind in [
            "m.room.create",
            "m.room.member",
            "m.room.power_levels",
            "m.room.join_rules",
            "m.room.history_visibility",
            "m.room.name",
            "m.room.topic",
            "m.room.encryption",
        ] {
            assert!(
                kinds.contains(&kind.to_owned()),
                "{version}: {kind} in {kinds:?}"
            );
        }
        let encryption = hs
            .state_event(&alice, &room_id, "m.room.encryption", "")
            .await
            .unwrap();
        assert_eq!(encryption.get(), r#"{"algorithm":"m.megolm.v1.aes-sha2"}"#);
        let event_id = hs
            .send_message(
                &alice,
                &room_id,
                "m.room.message",
                "t1",
                json!({ "body": "hi", "msgtype": "m.text" }),
            )
            .await
            .unwrap();
        assert!(event_id.as_str().starts_with('$'));
        assert_eq!(
            hs.joined_rooms(&alice)
                .await
                .unwrap()
                .iter()
                .filter(|r| **r == room_id)
                .count(),
            1
        );
    }
    let bad = hs
        .create_room(&alice, create(json!({ "room_version": "1" })))
        .await
        .unwrap_err();
    assert_eq!(bad.kind, ErrorKind::UnsupportedRoomVersion);
}

#[tokio::test]
async fn invites_joins_and_what_the_auth_rules_refuse() {
    let (hs, _) = homeserver(true);
    let alice = user(&hs, "alice", "A1").await;
    let bob = user(&hs, "bob", "B1").await;
    let carol = user(&hs, "carol", "C1").await;
    let room = hs
        .create_room(&alice, create(json!({ "preset": "private_chat" })))
        .await
        .unwrap();
    // Not invited to a private room.
    assert_eq!(
        hs.join_room(&bob, room.as_str(), &[])
            .await
            .unwrap_err()
            .kind,
        ErrorKind::Forbidden
    );
    assert_eq!(
        hs.send_message(&bob, &room, "m.room.message", "t", json!({}))
            .await
            .unwrap_err()
            .kind,
        ErrorKind::Forbidden
    );
    hs.invite(&alice, &room, &bob.user_id, None, true)
        .await
        .unwrap();
    hs.join_room(&bob, room.as_str(), &[]).await.unwrap();
    assert_eq!(hs.joined_members(&alice, &room).await.unwrap().len(), 2);
    // Power level 0 cannot change the name (state_default 50), nor kick.
    let err = hs
        .send_state(&bob, &room, "m.room.name", "", json!({ "name": "mine" }))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Forbidden);
    assert_eq!(
        hs.kick(&bob, &room, &alice.user_id, None)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::Forbidden
    );
    // The creator can kick and ban; a banned user cannot come back by invite.
    hs.kick(&alice, &room, &bob.user_id, Some("bye"))
        .await
        .unwrap();
    assert_eq!(
        hs.send_message(&bob, &room, "m.room.message", "t2", json!({}))
            .await
            .unwrap_err()
            .kind,
        ErrorKind::Forbidden
    );
    hs.ban(&alice, &room, &carol.user_id, None).await.unwrap();
    assert_eq!(
        hs.invite(&alice, &room, &carol.user_id, None, false)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::Forbidden
    );
    hs.unban(&alice, &room, &carol.user_id).await.unwrap();
    hs.invite(&alice, &room, &carol.user_id, None, false)
        .await
        .unwrap();
    hs.leave_room(&carol, &room, Some("not now")).await.unwrap(); // declines
    assert_eq!(
        hs.leave_room(&carol, ruma::room_id!("!nope:example.org"), None)
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn public_rooms_are_joinable_by_alias() {
    let (hs, _) = homeserver(true);
    let alice = user(&hs, "alice", "A1").await;
    let bob = user(&hs, "bob", "B1").await;
    let room = hs
        .create_room(
            &alice,
            create(json!({ "preset": "public_chat", "room_alias_name": "lobby" })),
        )
        .await
        .unwrap();
    assert_eq!(
        hs.join_room(&bob, "#lobby:example.org", &[]).await.unwrap(),
        room
    );
    let taken = hs
        .create_room(&alice, create(json!({ "room_alias_name": "lobby" })))
        .await
        .unwrap_err();
    assert_eq!(taken.kind, ErrorKind::RoomInUse);
    assert_eq!(
        hs.join_room(&bob, "#missing:example.org", &[])
            .await
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn sends_are_deduplicated_and_paginated() {
    let (hs, _) = homeserver(true);
    let alice = user(&hs, "alice", "A1").await;
    let room = hs.create_room(&alice, create(json!({}))).await.unwrap();
    let first = hs
        .send_message(
            &alice,
            &room,
            "m.room.message",
            "same",
            json!({ "body": "1" }),
        )
        .await
        .unwrap();
    let again = hs
        .send_message(
            &alice,
            &room,
            "m.room.message",
            "same",
            json!({ "body": "other" }),
        )
        .await
        .unwrap();
    assert_eq!(first, again);
    for i in 2..=5 {
        hs.send_message(
            &alice,
            &room,
            "m.room.message",
            &format!("t{i}"),
            json!({ "body": i.to_string() }),
        )
        .await
        .unwrap();
    }
    let page = hs
        .messages(&alice, &room, None, Direction::Backward, 3)
        .await
        .unwrap();
    let bodies: Vec<String> = page
        .chunk
        .iter()
        .map(|e| e.content_value()["body"].to_string())
        .collect();
    assert_eq!(bodies, vec!["\"5\"", "\"4\"", "\"3\""]);
    let older = hs
        .messages(&alice, &room, page.end, Direction::Backward, 3)
        .await
        .unwrap();
    assert_eq!(older.chunk[0].content_value()["body"], "2");
    let mut seen = 0;
    let mut token = None;
    loop {
        let page = hs
            .messages(&alice, &room, token, Direction::Backward, 4)
            .await
            .unwrap();
        seen += page.chunk.len();
        match page.end {
            Some(end) => token = Some(end),
            None => break,
        }
    }
    assert!(
        seen >= 5 + 6,
        "all messages and the creation events: {seen}"
    );
}
