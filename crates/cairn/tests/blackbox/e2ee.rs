//! E2EE keys, to-device messages and `/sync` over HTTP (peer-test areas KU, KQ, KC, TD, DL).

use std::time::Duration;

use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Backend, Client, Session, TestServer};

both_backends!(
    key_upload_counts_and_idempotency,
    key_upload_refusals,
    key_query_shapes,
    claims_in_order_then_fallback,
    to_device_delivery_dedup_and_wildcards,
    to_device_wakes_a_long_poll_and_pages_at_100,
    sync_always_reports_key_counts_and_own_device_changes,
);

fn device_keys(s: &Session) -> Value {
    json!({
        "user_id": s.user_id, "device_id": s.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{}", s.device_id): "curve25519+key", format!("ed25519:{}", s.device_id): "ed25519+key" },
        "signatures": { s.user_id.as_str(): { format!("ed25519:{}", s.device_id): "self+signature" } },
    })
}

async fn upload(c: &Client, s: &Session, body: Value) -> crate::harness::Answer {
    c.post("/_matrix/client/v3/keys/upload", Some(&s.token), body)
        .await
}

async fn sync(c: &Client, s: &Session, since: Option<&str>, timeout_ms: u64) -> Value {
    let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
    if let Some(since) = since {
        path.push_str(&format!("&since={since}"));
    }
    c.get(&path, Some(&s.token)).await.ok()
}

fn otks(ids: &[&str]) -> Value {
    ids.iter()
        .map(|id| {
            (
                format!("signed_curve25519:{id}"),
                json!({ "key": id, "signatures": {} }),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

async fn key_upload_counts_and_idempotency(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let first = upload(&c, &alice, json!({ "device_keys": device_keys(&alice), "one_time_keys": { "my_algorithm:my_id_1": "bare+string" } })).await.ok();
    assert_eq!(
        first["one_time_key_counts"],
        json!({ "my_algorithm": 1, "signed_curve25519": 0 })
    );
    for (ids, expected) in [
        (&["A", "B", "C"][..], 3),
        (&["B", "C", "D"][..], 4),
        (&["B", "C", "D"][..], 4),
    ] {
        let res = upload(&c, &alice, json!({ "one_time_keys": otks(ids) }))
            .await
            .ok();
        assert_eq!(res["one_time_key_counts"]["signed_curve25519"], expected);
    }
}

async fn key_upload_refusals(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let bob = c.register("bob", "pw").await;
    let missing = json!({ "device_keys": { "user_id": bob.user_id, "device_id": bob.device_id }, "one_time_keys": otks(&["X"]) });
    upload(&c, &bob, missing)
        .await
        .assert_error(400, "M_BAD_JSON");
    upload(&c, &bob, json!({ "device_keys": device_keys(&alice) }))
        .await
        .assert_error(400, "M_BAD_JSON");
    // Nothing of the refused uploads was kept.
    let counts = upload(&c, &bob, json!({})).await.ok();
    assert_eq!(
        counts["one_time_key_counts"],
        json!({ "signed_curve25519": 0 })
    );

    upload(
        &c,
        &alice,
        json!({ "one_time_keys": { "alg1:k1": "key1" } }),
    )
    .await
    .ok();
    let changed = upload(
        &c,
        &alice,
        json!({ "one_time_keys": { "alg1:k1": "key2" } }),
    )
    .await;
    changed.assert_error(400, "M_UNKNOWN");
    assert!(
        changed.body["error"]
            .as_str()
            .unwrap()
            .starts_with("One time key alg1:k1 already exists")
    );
    upload(&c, &alice, json!({ "one_time_keys": { "nocolon": "k" } }))
        .await
        .assert_error(400, "M_BAD_JSON");
}

async fn key_query_shapes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let bob = c.register("bob", "pw").await;
    upload(&c, &alice, json!({ "device_keys": device_keys(&alice) }))
        .await
        .ok();
    let q = |body: Value| c.post("/_matrix/client/v3/keys/query", Some(&bob.token), body);
    let all = q(json!({ "device_keys": { alice.user_id.as_str(): [], bob.user_id.as_str(): [] } }))
        .await
        .ok();
    let mine = &all["device_keys"][&alice.user_id][&alice.device_id];
    let mut expected = device_keys(&alice);
    expected["unsigned"] = json!({});
    assert_eq!(mine, &expected, "no display name, no device_display_name");
    assert_eq!(all["device_keys"][&bob.user_id], json!({}));
    assert_eq!(all["failures"], json!({}));

    c.put(
        &format!("/_matrix/client/v3/devices/{}", alice.device_id),
        Some(&alice.token),
        json!({ "display_name": "display_name" }),
    )
    .await
    .ok();
    let one = q(json!({ "device_keys": { alice.user_id.as_str(): [alice.device_id] } }))
        .await
        .ok();
    assert_eq!(
        one["device_keys"][&alice.user_id][&alice.device_id]["unsigned"]["device_display_name"],
        "display_name"
    );
    for bad in [
        json!({ "device_keys": { bob.user_id.as_str(): { "device_id1": true } } }),
        json!({ "device_keys": { bob.user_id.as_str(): "device_id1" } }),
        json!({}),
    ] {
        q(bad).await.assert_error(400, "M_BAD_JSON");
    }
}

async fn claims_in_order_then_fallback(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let bob = c.register("bob", "pw").await;
    upload(
        &c,
        &alice,
        json!({ "one_time_keys": { "signed_curve25519:1": { "key": "one" } } }),
    )
    .await
    .ok();
    upload(
        &c,
        &alice,
        json!({
            "one_time_keys": { "signed_curve25519:0": { "key": "zero" } },
            "fallback_keys": { "signed_curve25519:1": { "key": "fb", "fallback": true } },
        }),
    )
    .await
    .ok();
    let body = json!({ "one_time_keys": { alice.user_id.as_str(): { alice.device_id.as_str(): "signed_curve25519" } }, "timeout": 10000 });
    let claim = || {
        c.post(
            "/_matrix/client/v3/keys/claim",
            Some(&bob.token),
            body.clone(),
        )
    };
    let got = |v: Value| v["one_time_keys"][&alice.user_id][&alice.device_id].clone();
    assert_eq!(
        got(claim().await.ok()),
        json!({ "signed_curve25519:1": { "key": "one" } })
    );
    assert_eq!(
        got(claim().await.ok()),
        json!({ "signed_curve25519:0": { "key": "zero" } })
    );
    let fallback = claim().await.ok();
    assert_eq!(
        fallback,
        json!({
            "failures": {},
            "one_time_keys": { alice.user_id.as_str(): { alice.device_id.as_str(): { "signed_curve25519:1": { "key": "fb", "fallback": true } } } },
        })
    );
    assert_eq!(
        got(claim().await.ok()),
        got(fallback),
        "the fallback key is reused"
    );
    let unknown = c
        .post(
            "/_matrix/client/v3/keys/claim",
            Some(&bob.token),
            json!({ "one_time_keys": { alice.user_id.as_str(): { "NOPE": "signed_curve25519" } } }),
        )
        .await
        .ok();
    assert_eq!(unknown, json!({ "failures": {}, "one_time_keys": {} }));
    let sync = sync(&c, &alice, None, 0).await;
    assert_eq!(
        sync["device_unused_fallback_key_types"],
        json!([]),
        "claimed: used"
    );
}

async fn to_device_delivery_dedup_and_wildcards(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let bob = c.register("bob", "pw").await;
    let bob2: Session = c.login("bob", "pw", Some("SECOND")).await.ok().into();
    let send = |txn: &str, body: Value| {
        let (c, path, token) = (
            c.clone(),
            format!("/_matrix/client/v3/sendToDevice/my.test.type/{txn}"),
            alice.token.clone(),
        );
        async move {
            c.put(&path, Some(&token), json!({ "messages": body }))
                .await
        }
    };
    send(
        "t1",
        json!({ bob.user_id.as_str(): { bob.device_id.as_str(): { "my_key": "my_value" } } }),
    )
    .await
    .ok();
    let expected = json!([{ "sender": alice.user_id, "type": "my.test.type", "content": { "my_key": "my_value" } }]);
    let first = sync(&c, &bob, None, 0).await;
    assert_eq!(first["to_device"]["events"], expected);
    assert_eq!(
        sync(&c, &bob, None, 0).await["to_device"]["events"],
        expected,
        "not acked without since"
    );
    let token = first["next_batch"].as_str().unwrap().to_owned();
    let acked = sync(&c, &bob, Some(&token), 0).await;
    assert_eq!(acked["to_device"]["events"], json!([]));
    let token = acked["next_batch"].as_str().unwrap().to_owned();

    send(
        "t1",
        json!({ bob.user_id.as_str(): { bob.device_id.as_str(): { "again": true } } }),
    )
    .await
    .ok();
    send(
        "t2",
        json!({ bob.user_id.as_str(): { "*": { "n": "second" } } }),
    )
    .await
    .ok();
    let next = sync(&c, &bob, Some(&token), 0).await;
    assert_eq!(
        next["to_device"]["events"],
        json!([{ "sender": alice.user_id, "type": "my.test.type", "content": { "n": "second" } }])
    );
    let other = sync(&c, &bob2, None, 0).await;
    assert_eq!(
        other["to_device"]["events"][0]["content"],
        json!({ "n": "second" }),
        "the wildcard reached the second device"
    );
    c.put(
        "/_matrix/client/v3/sendToDevice/x/t3",
        Some(&alice.token),
        json!({ "messages": { bob.user_id.as_str(): { "*": "not an object" } } }),
    )
    .await
    .assert_error(400, "M_BAD_JSON");
    let big = json!({ "messages": { bob.user_id.as_str(): { "*": { "a": "x".repeat(70_000) } } } });
    c.put(
        "/_matrix/client/v3/sendToDevice/x/t4",
        Some(&alice.token),
        big,
    )
    .await
    .assert_error(413, "M_TOO_LARGE");
}

async fn to_device_wakes_a_long_poll_and_pages_at_100(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let bob = c.register("bob", "pw").await;
    let token = sync(&c, &bob, None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let poll = tokio::spawn({
        let (c, bob, token) = (c.clone(), bob.clone(), token.clone());
        async move { sync(&c, &bob, Some(&token), 30_000).await }
    });
    let msg =
        json!({ "messages": { bob.user_id.as_str(): { bob.device_id.as_str(): { "wake": 1 } } } });
    c.put(
        "/_matrix/client/v3/sendToDevice/m.test/w1",
        Some(&alice.token),
        msg,
    )
    .await
    .ok();
    let woken = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("woken before its 30 s timeout")
        .unwrap();
    assert_eq!(
        woken["to_device"]["events"][0]["content"],
        json!({ "wake": 1 })
    );
    let token = woken["next_batch"].as_str().unwrap().to_owned();

    for i in 0..150 {
        let msg =
            json!({ "messages": { bob.user_id.as_str(): { bob.device_id.as_str(): { "i": i } } } });
        c.put(
            &format!("/_matrix/client/v3/sendToDevice/m.test/p{i}"),
            Some(&alice.token),
            msg,
        )
        .await
        .ok();
    }
    let page1 = sync(&c, &bob, Some(&token), 300_000).await;
    assert_eq!(page1["to_device"]["events"].as_array().unwrap().len(), 100);
    let page2 = tokio::time::timeout(
        Duration::from_secs(15),
        sync(&c, &bob, page1["next_batch"].as_str(), 300_000),
    )
    .await
    .expect("the rest at once");
    let rest = page2["to_device"]["events"].as_array().unwrap();
    assert_eq!(
        (rest.len(), &rest[0]["content"]),
        (50, &json!({ "i": 100 }))
    );
}

async fn sync_always_reports_key_counts_and_own_device_changes(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let first = sync(&c, &alice, None, 0).await;
    assert_eq!(
        first["device_one_time_keys_count"],
        json!({ "signed_curve25519": 0 })
    );
    assert_eq!(first["device_unused_fallback_key_types"], json!([]));
    assert!(first.get("device_lists").is_none());
    let token = first["next_batch"].as_str().unwrap().to_owned();

    upload(&c, &alice, json!({ "one_time_keys": { "alg1:k1": "a", "alg2:k2": "b", "alg2:k3": "c" }, "fallback_keys": { "alg1:f": "f" } })).await.ok();
    // A login of a second device is a device-list change the user sees about itself; it wakes a long-poll.
    let poll = tokio::spawn({
        let (c, alice, token) = (c.clone(), alice.clone(), token.clone());
        async move { sync(&c, &alice, Some(&token), 30_000).await }
    });
    c.login("alice", "pw", Some("NEWDEVICE")).await.ok();
    let woken = tokio::time::timeout(Duration::from_secs(15), poll)
        .await
        .expect("woken")
        .unwrap();
    assert_eq!(woken["device_lists"]["changed"], json!([alice.user_id]));
    assert_eq!(
        woken["device_one_time_keys_count"],
        json!({ "alg1": 1, "alg2": 2, "signed_curve25519": 0 })
    );
    assert_eq!(woken["device_unused_fallback_key_types"], json!(["alg1"]));
    let changes = c
        .get(
            &format!(
                "/_matrix/client/v3/keys/changes?from={token}&to={}",
                woken["next_batch"].as_str().unwrap()
            ),
            Some(&alice.token),
        )
        .await
        .ok();
    assert_eq!(changes, json!({ "changed": [alice.user_id], "left": [] }));
    c.get("/_matrix/client/v3/sync?since=garbage", Some(&alice.token))
        .await
        .assert_error(400, "M_INVALID_PARAM");
}
