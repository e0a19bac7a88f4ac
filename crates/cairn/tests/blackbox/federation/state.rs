//! Room state across servers when the room forks: two servers cut off from each other both
//! change the same state; once they hear from each other again, both resolve the fork to the
//! same state.

use serde_json::json;

use super::device_lists::join_via;
use super::proxy::Fault;
use super::{Federation, create_room, see_message};
use crate::harness::{Client, Session, enc};

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
