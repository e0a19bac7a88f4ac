//! Room state and history across servers: a fork in room state resolves the same on both
//! sides; events a server missed are fetched when a later one arrives; the state before an
//! event and older events are served to servers in the room.

use serde_json::json;

use super::device_lists::join_via;
use super::proxy::Fault;
use super::{Federation, create_room, see_message};
use crate::harness::{Client, Session, enc};

async fn send_text(client: &Client, session: &Session, room_id: &str, body: &str) -> String {
    client
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{body}",
                enc(room_id)
            ),
            Some(&session.token),
            json!({ "msgtype": "m.text", "body": body }),
        )
        .await
        .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Transactions to b.test are lost (the proxy answers 200 and drops them); the next event
/// names a parent b.test never got, so b.test fetches the missing ones from a.test with
/// `get_missing_events`. Then b.test reads the state before an event and older events back.
#[tokio::test]
async fn missed_events_are_fetched_and_history_is_served() {
    let fed = Federation::start_proxied(&["a.test", "b.test"]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let room_id = create_room(&a, &alice, json!({ "preset": "public_chat" })).await;
    join_via(&b, &bob, &room_id, "a.test").await;
    send_text(&a, &alice, &room_id, "seen").await;
    see_message(&b, &bob, &room_id, "seen").await;

    fed.proxies[1].set(Fault::Swallow).await;
    let lost = [
        send_text(&a, &alice, &room_id, "lost1").await,
        send_text(&a, &alice, &room_id, "lost2").await,
    ];
    let a_server = fed.servers[0].as_ref().unwrap();
    super::queue_drained(a_server, "b.test").await;
    fed.proxies[1].set(Fault::Pass).await;
    let last = send_text(&a, &alice, &room_id, "after").await;
    see_message(&b, &bob, &room_id, "after").await;
    for body in ["lost1", "lost2"] {
        let event = b
            .get(
                &format!(
                    "/_matrix/client/v3/rooms/{}/event/{}",
                    enc(&room_id),
                    enc(&lost[usize::from(body == "lost2")])
                ),
                Some(&bob.token),
            )
            .await
            .ok();
        assert_eq!(event["content"]["body"], body, "fetched from a.test");
    }
    assert!(fed.proxies[0].seen("POST /_matrix/federation/v1/get_missing_events/") >= 1);

    // History as b.test reads it from a.test.
    let b_server = fed.servers[1].as_ref().unwrap();
    let ask = |path: String| async move {
        b_server
            .send_federation("a.test", "GET", &path, serde_json::Value::Null)
            .await
            .unwrap()
    };
    let ids = ask(format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        enc(&room_id),
        enc(&last)
    ))
    .await;
    let pdu_ids = ids["pdu_ids"].as_array().unwrap();
    assert!(
        pdu_ids.len() >= 5,
        "create, members, power levels, join rules...: {ids}"
    );
    assert!(
        !pdu_ids.iter().any(|id| id == &json!(last)),
        "the state before the event"
    );
    assert!(!ids["auth_chain_ids"].as_array().unwrap().is_empty());
    let back = ask(format!(
        "/_matrix/federation/v1/backfill/{}?v={}&limit=3",
        enc(&room_id),
        enc(&last)
    ))
    .await;
    let bodies: Vec<&serde_json::Value> = back["pdus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["content"]["body"])
        .collect();
    assert_eq!(bodies, [&json!("after"), &json!("lost2"), &json!("lost1")]);
    fed.stop().await;
}

async fn set_name(client: &Client, session: &Session, room_id: &str, name: &str) {
    client
        .put(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                enc(room_id)
            ),
            Some(&session.token),
            json!({ "name": name }),
        )
        .await
        .ok();
}

/// The room's name as `session` reads it ("" while it has none).
async fn name(client: &Client, session: &Session, room_id: &str) -> String {
    let answer = client
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                enc(room_id)
            ),
            Some(&session.token),
        )
        .await;
    answer.body["name"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_fork_in_room_state_resolves_the_same_on_both_servers() {
    let fed = Federation::start_proxied(&["a.test", "b.test"]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let room_id = create_room(
        &a,
        &alice,
        json!({ "preset": "public_chat",
                "power_level_content_override": { "users": { alice.user_id.as_str(): 100, bob.user_id.as_str(): 50 } } }),
    )
    .await;
    join_via(&b, &bob, &room_id, "a.test").await;
    set_name(&a, &alice, &room_id, "before").await;
    wait_for_name(&b, &bob, &room_id, "before").await;

    // Cut off from each other, both rename the room: bob first, alice later.
    fed.proxies[0].set(Fault::Refuse).await;
    fed.proxies[1].set(Fault::Refuse).await;
    set_name(&b, &bob, &room_id, "bob's name").await;
    set_name(&a, &alice, &room_id, "alice's name").await;
    assert_eq!(name(&a, &alice, &room_id).await, "alice's name");
    assert_eq!(name(&b, &bob, &room_id).await, "bob's name");

    // Reunited: each server gets the other's rename, built on the same parent. State
    // resolution orders the two by power-level mainline, then time: alice's, the later, wins.
    fed.proxies[0].set(Fault::Pass).await;
    fed.proxies[1].set(Fault::Pass).await;
    wait_for_name(&a, &alice, &room_id, "alice's name").await;
    wait_for_name(&b, &bob, &room_id, "alice's name").await;

    // The next message merges the fork; it reaches the other side.
    a.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/merge",
            enc(&room_id)
        ),
        Some(&alice.token),
        json!({ "msgtype": "m.text", "body": "after the fork" }),
    )
    .await
    .ok();
    see_message(&b, &bob, &room_id, "after the fork").await;
    assert_eq!(name(&b, &bob, &room_id).await, "alice's name");
    fed.stop().await;
}

/// Waits until the room's name, as `session` reads it, is `want` (at most 10 s).
async fn wait_for_name(client: &Client, session: &Session, room_id: &str, want: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while name(client, session, room_id).await != want {
        assert!(
            std::time::Instant::now() < deadline,
            "the name never became {want:?}; it is {:?}",
            name(client, session, room_id).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
