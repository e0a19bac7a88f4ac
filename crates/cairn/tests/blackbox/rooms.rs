//! Rooms over HTTP: creation, membership, messages, state, sync, and device lists that follow
//! shared rooms (peer-test area DL).

use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Backend, Client, Session, TestServer, enc};

both_backends!(
    a_private_chat_from_invite_to_leave,
    state_members_messages_and_aliases,
    room_errors,
    device_lists_follow_shared_rooms,
);

async fn sync(c: &Client, s: &Session, since: Option<&str>) -> Value {
    let path = match since {
        Some(since) => format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
        None => "/_matrix/client/v3/sync".to_owned(),
    };
    c.get(&path, Some(&s.token)).await.ok()
}

fn next(v: &Value) -> String {
    v["next_batch"].as_str().unwrap().to_owned()
}

async fn create_room(c: &Client, s: &Session, body: Value) -> String {
    c.post("/_matrix/client/v3/createRoom", Some(&s.token), body)
        .await
        .ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn send_text(c: &Client, s: &Session, room: &str, txn: &str, body: &str) -> String {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
        enc(room)
    );
    c.put(
        &path,
        Some(&s.token),
        json!({ "msgtype": "m.text", "body": body }),
    )
    .await
    .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn bodies(timeline: &Value) -> Vec<String> {
    timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

async fn a_private_chat_from_invite_to_leave(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let bob = c.register("bob", "pw").await;
    let bob_since = next(&sync(&c, &bob, None).await);
    let room = create_room(&c, &alice, json!({
        "preset": "trusted_private_chat", "is_direct": true, "invite": [bob.user_id], "name": "DM",
        "initial_state": [{ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }],
    })).await;

    let invited = sync(&c, &bob, Some(&bob_since)).await;
    let stripped = invited["rooms"]["invite"][&room]["invite_state"]["events"]
        .as_array()
        .unwrap();
    let kinds: Vec<&str> = stripped
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    for kind in [
        "m.room.create",
        "m.room.join_rules",
        "m.room.name",
        "m.room.encryption",
        "m.room.member",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let invite = stripped
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .unwrap();
    assert_eq!(invite["content"]["is_direct"], true);

    c.post(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        Some(&bob.token),
        json!({}),
    )
    .await
    .ok();
    let joined = sync(&c, &bob, Some(&next(&invited))).await;
    let bob_room = &joined["rooms"]["join"][&room];
    let state_kinds: Vec<&str> = bob_room["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        state_kinds.contains(&"m.room.encryption")
            || bob_room["timeline"]["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "m.room.encryption")
    );
    assert_eq!(bob_room["summary"]["m.joined_member_count"], 2);

    // matrix-sdk reads the encryption state with a trailing slash.
    let enc_state = c
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.encryption/",
                enc(&room)
            ),
            Some(&bob.token),
        )
        .await
        .ok();
    assert_eq!(enc_state, json!({ "algorithm": "m.megolm.v1.aes-sha2" }));

    let alice_since = next(&sync(&c, &alice, None).await);
    send_text(&c, &bob, &room, "b1", "hello alice").await;
    send_text(&c, &alice, &room, "a1", "hello bob").await;
    let alice_view = sync(&c, &alice, Some(&alice_since)).await;
    assert_eq!(
        bodies(&alice_view["rooms"]["join"][&room]["timeline"]),
        vec!["hello alice", "hello bob"]
    );
    assert_eq!(
        alice_view["rooms"]["join"][&room]["timeline"]["limited"],
        false
    );

    c.post(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        Some(&bob.token),
        json!({ "reason": "done" }),
    )
    .await
    .ok();
    let left = sync(&c, &bob, Some(&next(&joined))).await;
    assert!(
        left["rooms"]["leave"][&room]["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.member"
                && e["content"]["membership"] == "leave"
                && e["content"]["reason"] == "done")
    );
    assert!(left["rooms"]["join"].get(&room).is_none());
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/b2",
        enc(&room)
    );
    c.put(&path, Some(&bob.token), json!({ "body": "gone" }))
        .await
        .assert_error(403, "M_FORBIDDEN");
}

async fn state_members_messages_and_aliases(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let bob = c.register("bob", "pw").await;
    let room = create_room(
        &c,
        &alice,
        json!({ "preset": "public_chat", "room_alias_name": "lobby", "topic": "chat" }),
    )
    .await;
    let resolved = c
        .get(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                enc("#lobby:localhost:8448")
            ),
            None,
        )
        .await
        .ok();
    assert_eq!(resolved["room_id"], room.as_str());
    let joined = c
        .post(
            &format!("/_matrix/client/v3/join/{}", enc("#lobby:localhost:8448")),
            Some(&bob.token),
            json!({}),
        )
        .await
        .ok();
    assert_eq!(joined["room_id"], room.as_str());

    let members = c
        .get(
            &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room)),
            Some(&bob.token),
        )
        .await
        .ok();
    assert_eq!(members["joined"][&bob.user_id]["display_name"], "bob");
    assert_eq!(members["joined"].as_object().unwrap().len(), 2);
    let member_events = c
        .get(
            &format!("/_matrix/client/v3/rooms/{}/members", enc(&room)),
            Some(&bob.token),
        )
        .await
        .ok();
    assert_eq!(member_events["chunk"].as_array().unwrap().len(), 2);
    let topic = c
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room)),
            Some(&bob.token),
        )
        .await
        .ok();
    assert_eq!(topic, json!({ "topic": "chat" }));
    let all = c
        .get(
            &format!("/_matrix/client/v3/rooms/{}/state", enc(&room)),
            Some(&bob.token),
        )
        .await
        .ok();
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create")
    );
    assert_eq!(
        c.get("/_matrix/client/v3/joined_rooms", Some(&bob.token))
            .await
            .ok()["joined_rooms"],
        json!([room])
    );

    // Bob (power 0) may not rename; Alice may.
    let name_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.name/", enc(&room));
    c.put(&name_path, Some(&bob.token), json!({ "name": "Bob's" }))
        .await
        .assert_error(403, "M_FORBIDDEN");
    c.put(&name_path, Some(&alice.token), json!({ "name": "Lobby" }))
        .await
        .ok();

    let first = send_text(&c, &alice, &room, "t0", "m0").await;
    assert_eq!(
        send_text(&c, &alice, &room, "t0", "ignored").await,
        first,
        "same transaction, same event"
    );
    for i in 1..6 {
        send_text(&c, &alice, &room, &format!("t{i}"), &format!("m{i}")).await;
    }
    let page = c
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=3",
                enc(&room)
            ),
            Some(&bob.token),
        )
        .await
        .ok();
    assert_eq!(
        bodies(&json!({ "events": page["chunk"] })),
        vec!["m5", "m4", "m3"]
    );
    let older = c
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=3&from={}",
                enc(&room),
                page["end"].as_str().unwrap()
            ),
            Some(&bob.token),
        )
        .await
        .ok();
    assert_eq!(
        bodies(&json!({ "events": older["chunk"] })),
        vec!["m2", "m1", "m0"]
    );
    let event = c
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/event/{}",
                enc(&room),
                enc(&first)
            ),
            Some(&bob.token),
        )
        .await
        .ok();
    assert_eq!(event["content"]["body"], "m0");

    // A limited sync says so and gives a prev_batch that /messages continues from.
    let limited = c
        .get(
            &format!(
                "/_matrix/client/v3/sync?filter={}",
                enc(r#"{"room":{"timeline":{"limit":2}}}"#)
            ),
            Some(&bob.token),
        )
        .await
        .ok();
    let timeline = &limited["rooms"]["join"][&room]["timeline"];
    assert_eq!(
        (timeline["limited"].as_bool(), bodies(timeline)),
        (Some(true), vec!["m4".to_owned(), "m5".to_owned()])
    );
    let before = c
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=1&from={}",
                enc(&room),
                timeline["prev_batch"].as_str().unwrap()
            ),
            Some(&bob.token),
        )
        .await
        .ok();
    assert_eq!(bodies(&json!({ "events": before["chunk"] })), vec!["m3"]);

    let alias_path = format!(
        "/_matrix/client/v3/directory/room/{}",
        enc("#other:localhost:8448")
    );
    c.put(&alias_path, Some(&bob.token), json!({ "room_id": room }))
        .await
        .ok();
    c.put(&alias_path, Some(&alice.token), json!({ "room_id": room }))
        .await
        .assert_error(400, "M_ROOM_IN_USE");
    c.send(
        reqwest::Method::DELETE,
        &alias_path,
        Some(&alice.token),
        None,
    )
    .await
    .assert_error(403, "M_FORBIDDEN");
    c.send(reqwest::Method::DELETE, &alias_path, Some(&bob.token), None)
        .await
        .ok();
    c.get(&alias_path, None)
        .await
        .assert_error(404, "M_NOT_FOUND");
}

async fn room_errors(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let bob = c.register("bob", "pw").await;
    let room = create_room(&c, &alice, json!({})).await;
    let t = Some(bob.token.as_str());
    c.post(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        t,
        json!({}),
    )
    .await
    .assert_error(403, "M_FORBIDDEN");
    c.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room)), t)
        .await
        .assert_error(403, "M_FORBIDDEN");
    c.get(
        &format!(
            "/_matrix/client/v3/rooms/{}/messages",
            enc("!missing:localhost:8448")
        ),
        t,
    )
    .await
    .assert_error(404, "M_NOT_FOUND");
    c.get(
        &format!("/_matrix/client/v3/rooms/{}/messages", enc("not-a-room")),
        t,
    )
    .await
    .assert_error(400, "M_INVALID_PARAM");
    c.post(
        "/_matrix/client/v3/createRoom",
        t,
        json!({ "room_version": "4" }),
    )
    .await
    .assert_error(400, "M_UNSUPPORTED_ROOM_VERSION");
    c.post(
        "/_matrix/client/v3/createRoom",
        t,
        json!({ "invite": ["@nobody:localhost:8448"] }),
    )
    .await
    .assert_error(404, "M_NOT_FOUND");
    c.post(
        "/_matrix/client/v3/createRoom",
        t,
        json!({ "preset": "weird" }),
    )
    .await
    .assert_error(400, "M_INVALID_PARAM");
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/x",
        enc(&room)
    );
    c.put(&path, Some(&alice.token), json!(["not", "an", "object"]))
        .await
        .assert_error(400, "M_BAD_JSON");
    c.put(&path, Some(&alice.token), json!({ "n": 1.5 }))
        .await
        .assert_error(400, "M_BAD_JSON");
}

async fn device_lists_follow_shared_rooms(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let bob = c.register("bob", "pw").await;
    let carol = c.register("carol", "pw").await;
    let room = create_room(&c, &alice, json!({ "preset": "public_chat" })).await;
    let from = next(&sync(&c, &alice, None).await);
    // DL-06 and DL-11: a user joining my room is a change.
    c.post(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        Some(&bob.token),
        json!({}),
    )
    .await
    .ok();
    let s1 = sync(&c, &alice, Some(&from)).await;
    assert_eq!(s1["device_lists"]["changed"], json!([bob.user_id]));
    let changes = c
        .get(
            &format!(
                "/_matrix/client/v3/keys/changes?from={from}&to={}",
                next(&s1)
            ),
            Some(&alice.token),
        )
        .await
        .ok();
    assert_eq!(changes["changed"], json!([bob.user_id]));

    // DL-01, DL-02, DL-04: key upload, new login and rename of a room mate.
    let keys = json!({ "device_keys": {
        "user_id": bob.user_id, "device_id": bob.device_id, "algorithms": ["a"],
        "keys": { format!("ed25519:{}", bob.device_id): "k" }, "signatures": {} } });
    c.post("/_matrix/client/v3/keys/upload", Some(&bob.token), keys)
        .await
        .ok();
    let s2 = sync(&c, &alice, Some(&next(&s1))).await;
    assert_eq!(s2["device_lists"]["changed"], json!([bob.user_id]));
    c.login("bob", "pw", Some("BOB2")).await.ok();
    let s3 = sync(&c, &alice, Some(&next(&s2))).await;
    assert_eq!(s3["device_lists"]["changed"], json!([bob.user_id]));
    c.put(
        &format!("/_matrix/client/v3/devices/{}", bob.device_id),
        Some(&bob.token),
        json!({ "display_name": "wibble" }),
    )
    .await
    .ok();
    let s4 = sync(&c, &alice, Some(&next(&s3))).await;
    assert_eq!(s4["device_lists"]["changed"], json!([bob.user_id]));
    // Carol shares no room: her changes are not Alice's business.
    c.login("carol", "pw", None).await.ok();
    let s5 = sync(&c, &alice, Some(&next(&s4))).await;
    assert!(s5.get("device_lists").is_none(), "{s5}");

    // DL-12: when I join, everyone in the room is a change for me.
    let carol_from = next(&sync(&c, &carol, None).await);
    c.post(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room)),
        Some(&carol.token),
        json!({}),
    )
    .await
    .ok();
    let mut changed: Vec<String> =
        sync(&c, &carol, Some(&carol_from)).await["device_lists"]["changed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_str().unwrap().to_owned())
            .collect();
    changed.sort();
    assert_eq!(
        changed,
        vec![
            alice.user_id.clone(),
            bob.user_id.clone(),
            carol.user_id.clone()
        ]
    );

    // DL-13: a room mate who leaves is in `left`, and later changes are not reported.
    let before_leave = next(&sync(&c, &alice, None).await);
    c.post(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)),
        Some(&bob.token),
        json!({}),
    )
    .await
    .ok();
    let s6 = sync(&c, &alice, Some(&before_leave)).await;
    assert_eq!(s6["device_lists"]["left"], json!([bob.user_id]));
    c.login("bob", "pw", Some("BOB3")).await.ok();
    let s7 = sync(&c, &alice, Some(&next(&s6))).await;
    assert!(s7.get("device_lists").is_none(), "{s7}");
}
