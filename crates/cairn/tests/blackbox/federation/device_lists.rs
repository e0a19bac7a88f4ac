//! Device lists across servers: announcements to servers sharing a room (on joins and on every
//! change), the receiving server's cache and what it answers while the owner is down, and the
//! resync when an update arrives out of sequence.

use std::time::{Duration, Instant};

use cairn::serve::RunningServer;
use cairn_core::store::RemoteDeviceList;
use serde_json::{Value, json};

use super::{Federation, create_room, device_keys};
use crate::harness::{Backend, Client, Session, enc};

/// Waits until `server`'s cached list of `user` satisfies `done`, for at most 10 s.
pub(super) async fn cached_list(
    server: &RunningServer,
    user: &str,
    mut done: impl FnMut(&RemoteDeviceList) -> bool,
) -> RemoteDeviceList {
    let user: ruma::OwnedUserId = user.try_into().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = server
            .homeserver
            .store()
            .remote_device_list(&user)
            .await
            .unwrap();
        if let Some(list) = list.filter(|l| !l.stale && done(l)) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{user}'s cached list never got there"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn device_ids(list: &RemoteDeviceList) -> Vec<String> {
    list.devices
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(d.get()).unwrap()["device_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

pub(super) async fn upload_device_keys(client: &Client, session: &Session) {
    client
        .post(
            "/_matrix/client/v3/keys/upload",
            Some(&session.token),
            json!({ "device_keys": device_keys(session) }),
        )
        .await
        .ok();
}

pub(super) async fn join_via(client: &Client, session: &Session, room_id: &str, server: &str) {
    client
        .post(
            &format!(
                "/_matrix/client/v3/join/{}?server_name={server}",
                enc(room_id)
            ),
            Some(&session.token),
            json!({}),
        )
        .await
        .ok();
}

crate::both_backends!(device_lists_are_announced_cached_and_served_while_the_owner_is_down);

/// Alice (a.test) and Bob (b.test) meet in a room: each server is told the other's user's
/// devices without anyone asking. Later changes (a new device, cross-signing keys, a deleted
/// device) follow as updates, also across an outage of the receiver. With a.test down, Bob's
/// key query is answered from b.test's cache.
async fn device_lists_are_announced_cached_and_served_while_the_owner_is_down(backend: Backend) {
    let mut fed = Federation::start_on(backend, &["a.test", "b.test"], &[]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    upload_device_keys(&a, &alice).await;
    upload_device_keys(&b, &bob).await;
    let room_id = create_room(&a, &alice, json!({ "preset": "public_chat" })).await;
    join_via(&b, &bob, &room_id, "a.test").await;

    // Both directions, from the join alone.
    let at_b = cached_list(fed.servers[1].as_ref().unwrap(), &alice.user_id, |l| {
        device_ids(l) == [alice.device_id.as_str()]
    })
    .await;
    let keys: Value = serde_json::from_str(at_b.devices[0].get()).unwrap();
    assert_eq!(
        keys["keys"],
        device_keys(&alice),
        "the device keys, as uploaded"
    );
    cached_list(fed.servers[0].as_ref().unwrap(), &bob.user_id, |l| {
        device_ids(l) == [bob.device_id.as_str()]
    })
    .await;

    // A second device and a master key, while b.test is up.
    let laptop = Session::from(a.login("alice", "pw", Some("LAPTOP")).await.ok());
    upload_device_keys(&a, &laptop).await;
    let master = json!({ "user_id": alice.user_id, "usage": ["master"],
                         "keys": { "ed25519:MASTERKEY": "MASTERKEY" } });
    a.post(
        "/_matrix/client/v3/keys/device_signing/upload",
        Some(&alice.token),
        json!({ "master_key": master }),
    )
    .await
    .ok();
    cached_list(fed.servers[1].as_ref().unwrap(), &alice.user_id, |l| {
        device_ids(l).len() == 2 && l.master_key.is_some()
    })
    .await;

    // A deletion while b.test is down arrives once it is back.
    fed.stop_server(1).await;
    a.send(
        reqwest::Method::DELETE,
        &format!("/_matrix/client/v3/devices/{}", laptop.device_id),
        Some(&alice.token),
        Some(
            json!({ "auth": { "type": "m.login.password", "password": "pw",
                               "identifier": { "type": "m.id.user", "user": "alice" } } }),
        ),
    )
    .await
    .ok();
    fed.restart_server(1).await;
    cached_list(fed.servers[1].as_ref().unwrap(), &alice.user_id, |l| {
        device_ids(l) == [alice.device_id.as_str()]
    })
    .await;

    // With a.test down, b.test answers from its cache: no failure, the current keys.
    fed.stop_server(0).await;
    let query = b
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            json!({ "device_keys": { alice.user_id.as_str(): [] } }),
        )
        .await
        .ok();
    assert_eq!(query["failures"], json!({}), "{query}");
    let devices = query["device_keys"][&alice.user_id].as_object().unwrap();
    assert_eq!(devices.keys().collect::<Vec<_>>(), [&alice.device_id]);
    assert_eq!(query["master_keys"][&alice.user_id], master);
    fed.stop().await;
}

/// An update out of sequence (an unknown `prev_id`) makes b.test fetch alice's whole list
/// again, which replaces whatever the update said; updates about another server's users, and
/// keys that name another device, are not cached.
#[tokio::test]
async fn an_update_out_of_sequence_makes_the_receiver_fetch_the_whole_list() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    upload_device_keys(&a, &alice).await;
    let room_id = create_room(&a, &alice, json!({ "preset": "public_chat" })).await;
    join_via(&b, &bob, &room_id, "a.test").await;
    let (a_server, b_server) = (
        fed.servers[0].as_ref().unwrap(),
        fed.servers[1].as_ref().unwrap(),
    );
    let before = cached_list(b_server, &alice.user_id, |l| l.devices.len() == 1).await;

    let update = |user: &str, device: &str, prev: u64, keys: Value| {
        json!({ "edu_type": "m.device_list_update", "content": {
            "user_id": user, "device_id": device, "stream_id": before.stream_id + 1_000,
            "prev_id": [prev], "keys": keys,
        }})
    };
    let ghost = json!({ "user_id": alice.user_id, "device_id": "GHOST", "algorithms": [],
                        "keys": {}, "signatures": {} });
    let edus = [
        update(
            &alice.user_id,
            "GHOST",
            before.stream_id + 999,
            ghost.clone(),
        ),
        update(
            "@mallory:c.test",
            "M",
            1,
            json!({ "user_id": "@mallory:c.test", "device_id": "M" }),
        ),
    ];
    a_server
        .send_federation(
            "b.test",
            "PUT",
            "/_matrix/federation/v1/send/gap1",
            json!({ "origin": "a.test", "origin_server_ts": 0, "pdus": [], "edus": edus }),
        )
        .await
        .unwrap();
    // The whole list, fetched again, has no GHOST and moves to a.test's current position.
    let after = cached_list(b_server, &alice.user_id, |l| {
        l.stream_id > before.stream_id && l.stream_id != before.stream_id + 1_000
    })
    .await;
    assert_eq!(device_ids(&after), [alice.device_id.as_str()]);
    let mallory: ruma::OwnedUserId = "@mallory:c.test".try_into().unwrap();
    let store = b_server.homeserver.store();
    assert!(store.remote_device_list(&mallory).await.unwrap().is_none());

    // In sequence, the update is applied as it is; keys naming another device are refused.
    let in_order = |device: &str, keys: Value| {
        json!({ "edu_type": "m.device_list_update", "content": {
            "user_id": alice.user_id, "device_id": device, "stream_id": after.stream_id + 1,
            "prev_id": [after.stream_id], "keys": keys,
        }})
    };
    let mut liar = ghost.clone();
    liar["device_id"] = "OTHER".into();
    a_server
        .send_federation(
            "b.test",
            "PUT",
            "/_matrix/federation/v1/send/inorder1",
            json!({ "origin": "a.test", "origin_server_ts": 0, "pdus": [],
                    "edus": [in_order("LIAR", liar), in_order("GHOST", ghost)] }),
        )
        .await
        .unwrap();
    let applied = cached_list(b_server, &alice.user_id, |l| l.devices.len() == 2).await;
    let mut ids = device_ids(&applied);
    ids.sort();
    let mut want = vec!["GHOST".to_owned(), alice.device_id.clone()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(applied.stream_id, after.stream_id + 1);
    fed.stop().await;
}

/// DF-26 and DF-10: once no local user shares a room with alice, b.test stops trusting its copy
/// of her list: the next query asks a.test, and nothing of hers stays cached.
#[tokio::test]
async fn a_list_is_dropped_when_no_room_is_shared_any_more() {
    let fed = Federation::start_proxied(&["a.test", "b.test"]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    upload_device_keys(&a, &alice).await;
    let room_id = create_room(&a, &alice, json!({ "preset": "public_chat" })).await;
    join_via(&b, &bob, &room_id, "a.test").await;
    let b_server = fed.servers[1].as_ref().unwrap();
    cached_list(b_server, &alice.user_id, |l| l.devices.len() == 1).await;

    b.post(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
        Some(&bob.token),
        json!({}),
    )
    .await
    .ok();
    let queries = fed.proxies[0].seen("POST /_matrix/federation/v1/user/keys/query");
    let query = b
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            json!({ "device_keys": { alice.user_id.as_str(): [] } }),
        )
        .await
        .ok();
    assert!(
        query["device_keys"][&alice.user_id][&alice.device_id].is_object(),
        "{query}"
    );
    assert_eq!(
        fed.proxies[0].seen("POST /_matrix/federation/v1/user/keys/query"),
        queries + 1,
        "asked a.test, not the cache"
    );
    let alice_id: ruma::OwnedUserId = alice.user_id.as_str().try_into().unwrap();
    let cached = b_server
        .homeserver
        .store()
        .remote_device_list(&alice_id)
        .await
        .unwrap();
    assert!(cached.is_none(), "the copy was dropped");
    fed.stop().await;
}
