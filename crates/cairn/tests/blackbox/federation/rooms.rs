//! Rooms, invites, events and queries across servers.

use serde_json::{Value, json};

use super::{Federation, create_room, see_message, sync_until};
use crate::harness::enc;

#[tokio::test]
async fn a_user_joins_a_room_on_another_server_and_messages_flow_both_ways() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let room_id = create_room(
        &a,
        &alice,
        json!({ "preset": "public_chat", "name": "across" }),
    )
    .await;
    b.post(
        &format!(
            "/_matrix/client/v3/join/{}?server_name=a.test",
            enc(&room_id)
        ),
        Some(&bob.token),
        json!({}),
    )
    .await
    .ok();

    // Both servers agree on who is in the room, and B has the room's state.
    for (client, session) in [(&a, &alice), (&b, &bob)] {
        let members = client
            .get(
                &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room_id)),
                Some(&session.token),
            )
            .await
            .ok();
        let mut joined: Vec<&String> = members["joined"].as_object().unwrap().keys().collect();
        joined.sort();
        assert_eq!(joined, [&alice.user_id, &bob.user_id]);
    }
    let name = b
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                enc(&room_id)
            ),
            Some(&bob.token),
        )
        .await
        .ok();
    assert_eq!(name["name"], "across");

    for (sender, from, to, reader, body) in [
        (&alice, &a, &b, &bob, "hello from a"),
        (&bob, &b, &a, &alice, "hello from b"),
    ] {
        from.put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(&room_id),
                body.replace(' ', "_")
            ),
            Some(&sender.token),
            json!({ "msgtype": "m.text", "body": body }),
        )
        .await
        .ok();
        see_message(to, reader, &room_id, body).await;
    }
    fed.stop().await;
}

#[tokio::test]
async fn a_remote_invite_shows_in_sync_and_the_invitee_joins() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let room_id = create_room(
        &a,
        &alice,
        json!({ "preset": "trusted_private_chat", "name": "private", "is_direct": true,
                    "invite": [bob.user_id] }),
    )
    .await;

    let invite = sync_until(&b, &bob, |sync| {
        sync["rooms"]["invite"][&room_id]["invite_state"]["events"]
            .as_array()
            .cloned()
    })
    .await;
    let member = invite
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id)
        .expect("the invite itself");
    assert_eq!(member["sender"], alice.user_id);
    assert_eq!(member["content"]["is_direct"], true);
    assert!(
        invite
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "private"),
        "the stripped state the inviting server sent: {invite:?}"
    );

    // No server named: the invite says where the room is.
    b.post(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room_id)),
        Some(&bob.token),
        json!({}),
    )
    .await
    .ok();
    b.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/m1",
            enc(&room_id)
        ),
        Some(&bob.token),
        json!({ "msgtype": "m.text", "body": "thanks for the invite" }),
    )
    .await
    .ok();
    see_message(&a, &alice, &room_id, "thanks for the invite").await;
    fed.stop().await;
}

#[tokio::test]
async fn a_remote_key_change_reaches_local_room_mates() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let room_id = create_room(&a, &alice, json!({ "preset": "public_chat" })).await;
    b.post(
        &format!(
            "/_matrix/client/v3/join/{}?server_name=a.test",
            enc(&room_id)
        ),
        Some(&bob.token),
        json!({}),
    )
    .await
    .ok();
    let since = b
        .get("/_matrix/client/v3/sync?timeout=0", Some(&bob.token))
        .await
        .ok()["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    let update = |user: &str, stream_id: u64| {
        json!({ "edu_type": "m.device_list_update", "content": {
            "user_id": user, "device_id": "NEW", "stream_id": stream_id, "prev_id": [],
            "deleted": false,
        }})
    };
    let a_server = fed.servers[0].as_ref().unwrap();
    a_server
        .send_federation(
            "b.test",
            "PUT",
            "/_matrix/federation/v1/send/dl1",
            json!({ "origin": "a.test", "origin_server_ts": 0, "pdus": [],
                    "edus": [update(&alice.user_id, 7), update("@mallory:c.test", 8)] }),
        )
        .await
        .unwrap();
    let sync = b
        .get(
            &format!("/_matrix/client/v3/sync?timeout=5000&since={since}"),
            Some(&bob.token),
        )
        .await
        .ok();
    assert_eq!(
        sync["device_lists"]["changed"],
        json!([alice.user_id]),
        "alice's change is seen; the EDU about c.test's user is ignored"
    );
    fed.stop().await;
}

#[tokio::test]
async fn events_are_served_only_to_servers_in_their_room() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let shared = create_room(
        &a,
        &alice,
        json!({ "preset": "public_chat", "name": "shared" }),
    )
    .await;
    let private = create_room(
        &a,
        &alice,
        json!({ "preset": "public_chat", "name": "private" }),
    )
    .await;
    b.post(
        &format!(
            "/_matrix/client/v3/join/{}?server_name=a.test",
            enc(&shared)
        ),
        Some(&bob.token),
        json!({}),
    )
    .await
    .ok();
    let send = |room: String| {
        let (a, alice) = (a.clone(), alice.clone());
        async move {
            a.put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                    enc(&room),
                    enc(&room)
                ),
                Some(&alice.token),
                json!({ "msgtype": "m.text", "body": "x" }),
            )
            .await
            .ok()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let in_shared = send(shared.clone()).await;
    let in_private = send(private.clone()).await;
    let b_server = fed.servers[1].as_ref().unwrap();
    let got = b_server
        .send_federation(
            "a.test",
            "GET",
            &format!("/_matrix/federation/v1/event/{}", enc(&in_shared)),
            Value::Null,
        )
        .await
        .unwrap();
    assert_eq!(got["origin"], "a.test");
    assert_eq!(got["pdus"][0]["room_id"], shared);
    assert_eq!(got["pdus"][0]["content"]["body"], "x");
    let refused = b_server
        .send_federation(
            "a.test",
            "GET",
            &format!("/_matrix/federation/v1/event/{}", enc(&in_private)),
            Value::Null,
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("403"), "{refused}");
    fed.stop().await;
}

#[tokio::test]
async fn an_invite_from_another_server_can_be_declined() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let room_id = create_room(
        &a,
        &alice,
        json!({ "preset": "private_chat", "invite": [bob.user_id] }),
    )
    .await;
    sync_until(&b, &bob, |sync| {
        sync["rooms"]["invite"].get(&room_id).cloned()
    })
    .await;
    b.post(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
        Some(&bob.token),
        json!({}),
    )
    .await
    .ok();
    let member = a
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&room_id),
                enc(&bob.user_id)
            ),
            Some(&alice.token),
        )
        .await
        .ok();
    assert_eq!(
        member["membership"], "leave",
        "the inviting server saw the decline"
    );
    fed.stop().await;
}

#[tokio::test]
async fn profile_and_directory_queries_are_answered_for_local_users_and_aliases() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let a = fed.client(0);
    let alice = a.register("alice", "pw").await;
    a.put(
        &format!(
            "/_matrix/client/v3/profile/{}/displayname",
            enc(&alice.user_id)
        ),
        Some(&alice.token),
        json!({ "displayname": "Alice A" }),
    )
    .await
    .ok();
    let room_id = create_room(
        &a,
        &alice,
        json!({ "preset": "public_chat", "room_alias_name": "lobby" }),
    )
    .await;
    let b = fed.servers[1].as_ref().unwrap();
    let ask =
        |path: String| async move { b.send_federation("a.test", "GET", &path, Value::Null).await };
    let profile = ask(format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&alice.user_id)
    ))
    .await
    .unwrap();
    assert_eq!(profile, json!({ "displayname": "Alice A" }));
    let name_only = ask(format!(
        "/_matrix/federation/v1/query/profile?user_id={}&field=avatar_url",
        enc(&alice.user_id)
    ))
    .await
    .unwrap();
    assert_eq!(name_only, json!({}));
    let unknown = ask("/_matrix/federation/v1/query/profile?user_id=%40nobody%3Aa.test".into())
        .await
        .unwrap_err();
    assert!(unknown.to_string().contains("404"), "{unknown}");
    let directory = ask(format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        enc("#lobby:a.test")
    ))
    .await
    .unwrap();
    assert_eq!(
        directory,
        json!({ "room_id": room_id, "servers": ["a.test"] })
    );
    // A third server's user is never looked up on its behalf.
    let relayed = ask("/_matrix/federation/v1/query/profile?user_id=%40x%3Ab.test".into())
        .await
        .unwrap_err();
    assert!(relayed.to_string().contains("404"), "{relayed}");

    // A client of b.test sees alice's profile through her server.
    let b_client = fed.client(1);
    let bob = b_client.register("bob", "pw").await;
    let seen = b_client
        .get(
            &format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id)),
            Some(&bob.token),
        )
        .await
        .ok();
    assert_eq!(seen["displayname"], "Alice A");

    // ... and resolves her alias through her server, then joins by it.
    let resolved = b_client
        .get(
            &format!("/_matrix/client/v3/directory/room/{}", enc("#lobby:a.test")),
            Some(&bob.token),
        )
        .await
        .ok();
    assert_eq!(
        resolved,
        json!({ "room_id": room_id, "servers": ["a.test"] })
    );
    b_client
        .get(
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                enc("#nowhere:a.test")
            ),
            Some(&bob.token),
        )
        .await
        .assert_error(404, "M_NOT_FOUND");
    let joined = b_client
        .post(
            &format!("/_matrix/client/v3/join/{}", enc("#lobby:a.test")),
            Some(&bob.token),
            json!({}),
        )
        .await
        .ok();
    assert_eq!(joined["room_id"], room_id);
    fed.stop().await;
}
