//! What other servers see when a server fails in each way the proxy can make it fail: client
//! queries and claims report the failure per server, queued traffic waits and is delivered
//! once the server answers again, and cached device lists answer without asking it.

use serde_json::{Value, json};

use super::device_lists::{cached_list, join_via, upload_device_keys};
use super::proxy::Fault;
use super::{Federation, create_room, sync_until, to_device_bodies};

#[tokio::test]
async fn each_fault_is_reported_per_server_and_queued_traffic_waits_it_out() {
    let fed = Federation::start_proxied(&["a.test", "b.test"]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    upload_device_keys(&a, &alice).await;
    let faults = [
        (Fault::Refuse, 503),
        (Fault::Hang, 503),
        (Fault::Status(429), 429),
        (Fault::Status(502), 502),
    ];
    for (n, (fault, status)) in faults.into_iter().enumerate() {
        fed.proxies[0].set(fault).await;
        let query = b
            .post(
                "/_matrix/client/v3/keys/query",
                Some(&bob.token),
                json!({ "device_keys": { alice.user_id.as_str(): [] }, "timeout": 1000 }),
            )
            .await
            .ok();
        assert_eq!(
            query["failures"]["a.test"]["status"], status,
            "{fault:?}: {query}"
        );
        assert_eq!(query["device_keys"], json!({}), "{fault:?}");
        let claim = b
            .post(
                "/_matrix/client/v3/keys/claim",
                Some(&bob.token),
                json!({ "one_time_keys": { alice.user_id.as_str(): { alice.device_id.as_str(): "signed_curve25519" } },
                        "timeout": 1000 }),
            )
            .await
            .ok();
        assert_eq!(
            claim["failures"]["a.test"]["status"], status,
            "{fault:?}: {claim}"
        );

        let body = json!({ "messages": { alice.user_id.as_str(): { alice.device_id.as_str(): { "n": n } } } });
        b.put(
            &format!("/_matrix/client/v3/sendToDevice/m.test/fault{n}"),
            Some(&bob.token),
            body,
        )
        .await
        .ok();
        fed.proxies[0].set(Fault::Pass).await;
        let got = sync_until(&a, &alice, |sync| {
            to_device_bodies(sync).into_iter().find(|m| m["n"] == n)
        })
        .await;
        assert_eq!(
            got,
            json!({ "n": n }),
            "{fault:?}: delivered once a.test answers"
        );
    }
    fed.stop().await;
}

/// KQ-10 and DF-24: a user sharing a room is queried through `GET /user/devices` once, and from
/// then on answered from the cache, even while their server fails.
#[tokio::test]
async fn a_shared_users_list_is_fetched_once_then_answered_from_the_cache() {
    let fed = Federation::start_proxied(&["a.test", "b.test"]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    upload_device_keys(&a, &alice).await;
    let room_id = create_room(&a, &alice, json!({ "preset": "public_chat" })).await;
    join_via(&b, &bob, &room_id, "a.test").await;
    let b_server = fed.servers[1].as_ref().unwrap();
    cached_list(b_server, &alice.user_id, |l| l.devices.len() == 1).await;

    // Dropped (as if never fetched): the next query fetches the whole list, at most once.
    let alice_id: ruma::OwnedUserId = alice.user_id.as_str().try_into().unwrap();
    b_server
        .homeserver
        .store()
        .forget_remote_device_list(&alice_id)
        .await
        .unwrap();
    let proxy = &fed.proxies[0];
    let (devices_before, queries_before) = (
        proxy.seen("GET /_matrix/federation/v1/user/devices/"),
        proxy.seen("POST /_matrix/federation/v1/user/keys/query"),
    );
    let query = || async {
        b.post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            json!({ "device_keys": { alice.user_id.as_str(): [] } }),
        )
        .await
        .ok()
    };
    let first: Value = query().await;
    assert_eq!(first["failures"], json!({}), "{first}");
    assert_eq!(
        first["device_keys"][&alice.user_id][&alice.device_id]["user_id"],
        alice.user_id
    );
    proxy.set(Fault::Status(502)).await;
    let second: Value = query().await;
    assert_eq!(second, first, "the same answer, from the cache");
    // At most one: a fetch still under way from the join may have cached the list again
    // before the first query, which then needs none.
    assert!(
        proxy.seen("GET /_matrix/federation/v1/user/devices/") - devices_before <= 1,
        "at most one fetch of the whole list"
    );
    assert_eq!(
        proxy.seen("POST /_matrix/federation/v1/user/keys/query"),
        queries_before,
        "no per-query requests"
    );
    fed.stop().await;
}
