//! Signed requests, keys of remote users, to-device messages and the durable queue.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Federation, device_keys, sync_until, to_device_bodies};
use crate::harness::{Client, enc, federation_http};

#[tokio::test]
async fn keys_of_a_remote_user_are_queried_and_claimed_over_federation() {
    let fed = Federation::start(&["a.test", "b.test"], &["down.test"]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    a.post(
        "/_matrix/client/v3/keys/upload",
        Some(&alice.token),
        json!({
            "device_keys": device_keys(&alice),
            "one_time_keys": { "signed_curve25519:K1": { "key": "one" } },
            "fallback_keys": { "signed_curve25519:F": { "key": "fb", "fallback": true } },
        }),
    )
    .await
    .ok();

    let started = Instant::now();
    let query = b
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            json!({ "device_keys": { alice.user_id.as_str(): [], "@carol:down.test": [] }, "timeout": 5000 }),
        )
        .await
        .ok();
    assert_eq!(
        query["device_keys"][&alice.user_id][&alice.device_id],
        device_keys(&alice),
        "the keys as uploaded; no device name over federation"
    );
    assert_eq!(query["failures"]["down.test"]["status"], 503);
    assert!(query["failures"].get("a.test").is_none());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refused server fails fast"
    );

    let claim = |b: Client, token: String, user: String, device: String| async move {
        b.post(
            "/_matrix/client/v3/keys/claim",
            Some(&token),
            json!({ "one_time_keys": { user.as_str(): { device.as_str(): "signed_curve25519" } } }),
        )
        .await
        .ok()
    };
    let first = claim(
        b.clone(),
        bob.token.clone(),
        alice.user_id.clone(),
        alice.device_id.clone(),
    )
    .await;
    assert_eq!(
        first["one_time_keys"][&alice.user_id][&alice.device_id],
        json!({ "signed_curve25519:K1": { "key": "one" } })
    );
    let second = claim(
        b.clone(),
        bob.token.clone(),
        alice.user_id.clone(),
        alice.device_id.clone(),
    )
    .await;
    assert_eq!(
        second["one_time_keys"][&alice.user_id][&alice.device_id],
        json!({ "signed_curve25519:F": { "key": "fb", "fallback": true } }),
        "then the fallback key"
    );
    assert_eq!(second["failures"], json!({}));
    fed.stop().await;
}

#[tokio::test]
async fn unsigned_and_forged_requests_are_refused_and_signed_ones_verify() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let a = fed.client(0);
    let alice = a.register("alice", "pw").await;
    a.post(
        "/_matrix/client/v3/keys/upload",
        Some(&alice.token),
        json!({ "device_keys": device_keys(&alice) }),
    )
    .await
    .ok();

    // Unsigned, badly signed, and for another destination: all 401 M_UNAUTHORIZED.
    let http = federation_http();
    let url = format!(
        "{}/_matrix/federation/v1/user/devices/{}",
        fed.federation_base(0),
        enc(&alice.user_id)
    );
    let forged =
        r#"X-Matrix origin="b.test",destination="a.test",key="ed25519:a_abcd",sig="Zm9yZ2Vk""#;
    for authorization in [None, Some(forged)] {
        let mut req = http.get(&url);
        if let Some(value) = authorization {
            req = req.header("authorization", value);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 401);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{body}");
    }

    // B's client asking for Alice's keys makes B sign a query to A, which A verifies with
    // B's key fetched from B's key server.
    let b = fed.client(1);
    let bob = b.register("bob", "pw").await;
    let query = b
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            json!({ "device_keys": { alice.user_id.as_str(): [alice.device_id.as_str()] } }),
        )
        .await
        .ok();
    assert_eq!(query["failures"], json!({}));
    assert_eq!(
        query["device_keys"][&alice.user_id][&alice.device_id]["user_id"],
        alice.user_id
    );
    fed.stop().await;
}

#[tokio::test]
async fn to_device_messages_cross_servers_and_wait_out_an_outage_in_order() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("cairn_federation=info")
        .with_test_writer()
        .try_init();
    let mut fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let send = |n: u32, txn: String| {
        let (a, alice, bob) = (a.clone(), alice.clone(), bob.clone());
        async move {
            let body = json!({ "messages": { bob.user_id.as_str(): { "*": { "n": n } } } });
            a.put(
                &format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"),
                Some(&alice.token),
                body,
            )
            .await
            .ok();
        }
    };

    send(0, "t0".into()).await;
    let first = sync_until(&b, &bob, |sync| {
        let events = sync["to_device"]["events"].as_array()?.clone();
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["sender"], alice.user_id);
    assert_eq!(first[0]["type"], "m.test");
    assert_eq!(first[0]["content"], json!({ "n": 0 }));

    // B goes down: messages queue on A, A backs off, and they arrive in order once B is back.
    fed.stop_server(1).await;
    for n in 1..=5 {
        send(n, format!("t{n}")).await;
    }
    // A repeated client transaction is not sent twice.
    send(99, "t5".into()).await;
    fed.restart_server(1).await;
    let b = fed.client(1);
    let mut seen: Vec<Value> = Vec::new();
    let all = sync_until(&b, &bob, |sync| {
        seen.extend(to_device_bodies(sync));
        (seen.len() >= 6).then(|| seen.clone())
    })
    .await;
    let numbers: Vec<u64> = all.iter().filter_map(|c| c["n"].as_u64()).collect();
    assert_eq!(numbers, [0, 1, 2, 3, 4, 5], "no loss, no repeat, in order");
    fed.stop().await;
}

#[tokio::test]
async fn a_retransmitted_transaction_is_applied_once() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let b = fed.client(1);
    let bob = b.register("bob", "pw").await;
    // The transaction is built and signed as a.test would, through a.test's own client.
    let a_server = fed.servers[0].as_ref().unwrap();
    let edu = json!({ "edu_type": "m.direct_to_device", "content": {
        "sender": "@alice:a.test", "type": "m.test", "message_id": "m1",
        "messages": { bob.user_id.as_str(): { "*": { "once": true } } },
    }});
    let foreign = json!({ "edu_type": "m.direct_to_device", "content": {
        "sender": "@mallory:c.test", "type": "m.test", "message_id": "m2",
        "messages": { bob.user_id.as_str(): { "*": { "forged": true } } },
    }});
    for _ in 0..2 {
        let answer = a_server
            .send_federation(
                "b.test",
                "PUT",
                "/_matrix/federation/v1/send/txn1",
                json!({ "origin": "a.test", "origin_server_ts": 0, "pdus": [], "edus": [edu, foreign] }),
            )
            .await
            .unwrap();
        assert_eq!(answer, json!({ "pdus": {} }));
    }
    let sync = b
        .get("/_matrix/client/v3/sync?timeout=0", Some(&bob.token))
        .await
        .ok();
    assert_eq!(
        to_device_bodies(&sync),
        [json!({ "once": true })],
        "delivered once; the EDU about another server's user is ignored"
    );
    fed.stop().await;
}

crate::both_backends!(queued_edus_survive_kill_9_of_the_sender);

/// A (the `cairn` binary) queues to-device messages for B while B is down, is killed with
/// SIGKILL and restarted; once B is back, everything queued arrives, in order.
async fn queued_edus_survive_kill_9_of_the_sender(backend: crate::harness::Backend) {
    let mut fed = Federation::start(&["b.test"], &[]).await;
    let b = fed.client(0);
    let bob = b.register("bob", "pw").await;
    fed.stop_server(0).await;

    // A (localhost:8448) has a certificate from the kit's CA and trusts it, as B does.
    let (cert, key) = fed.ca.issue("localhost");
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "[tls]\ncert = {cert:?}\nkey = {key:?}\n\
             [federation]\nca_file = {ca:?}\nbackoff_min_ms = 100\nbackoff_max_ms = 500\n\
             [federation.static_routes]\n\"b.test\" = \"{}\"\n",
            fed.addrs[0].1,
            ca = fed.ca.ca_file,
        ),
    )
    .unwrap();
    let path = config.path().display().to_string();
    let mut a = crate::harness::TestServer::start_with(
        backend,
        &["--open-registration", "--config", &path],
    )
    .await;
    let alice = a.client().register("alice", "pw").await;
    for n in 1..=3 {
        let body =
            json!({ "messages": { bob.user_id.as_str(): { bob.device_id.as_str(): { "n": n } } } });
        a.client()
            .put(
                &format!("/_matrix/client/v3/sendToDevice/m.test/t{n}"),
                Some(&alice.token),
                body,
            )
            .await
            .ok();
    }
    a.kill_and_restart().await;

    // B learns where A's (new) federation listener is, to fetch its key, and comes back.
    let a_federation = a.federation.trim_start_matches("https://").to_owned();
    fed.configs[0]
        .federation
        .static_routes
        .insert("localhost:8448".into(), a_federation);
    fed.restart_server(0).await;
    let mut seen: Vec<Value> = Vec::new();
    let all = sync_until(&fed.client(0), &bob, |sync| {
        seen.extend(to_device_bodies(sync));
        (seen.len() >= 3).then(|| seen.clone())
    })
    .await;
    assert_eq!(
        all,
        [json!({ "n": 1 }), json!({ "n": 2 }), json!({ "n": 3 })]
    );
    fed.stop().await;
}

/// TLS is checked against the server's name: an address that answers with another server's
/// certificate is refused, though the same address under its own name is fine.
#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let mut fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let a_federation = fed.addrs[0].1.to_string();
    fed.configs[1]
        .federation
        .static_routes
        .insert("c.test".into(), a_federation);
    fed.stop_server(1).await;
    fed.restart_server(1).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let query = b
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            json!({ "device_keys": { alice.user_id.as_str(): [], "@carol:c.test": [] } }),
        )
        .await
        .ok();
    assert_eq!(query["failures"]["c.test"]["status"], 503, "{query}");
    let message = query["failures"]["c.test"]["message"].as_str().unwrap();
    assert!(message.contains("certificate"), "{message}");
    assert!(query["failures"].get("a.test").is_none(), "{query}");
    fed.stop().await;
}
