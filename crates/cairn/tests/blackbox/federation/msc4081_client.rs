//! MSC4081 with Cairn's own client (real Olm on vodozemac): a pre-key message built on a
//! fallback key that a.test got from b.test's share, while b.test could not answer, decrypts
//! once b.test is back; and it still does after bob rotated twice during the partition (the
//! client's archive of retired fallback keys).

use std::sync::Arc;

use cairn_client::FakeClock;
use cairn_client::client::{Client as OlmClient, KeySource};
use serde_json::{Value, json};

use super::device_lists::{cached_list, join_via};
use super::proxy::Fault;
use super::{Federation, create_room};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Waits until a.test holds a shared fallback key of bob's `device` (`key` if given).
async fn shared(fed: &Federation, bob: &str, device: &str, key: Option<&str>) {
    let field = "org.matrix.msc4081.fallback_keys";
    cached_list(fed.servers[0].as_ref().unwrap(), bob, |list| {
        list.devices.iter().any(|d| {
            let d: Value = serde_json::from_str(d.get()).unwrap();
            d["device_id"] == device
                && d[field].as_object().is_some_and(|keys| {
                    !keys.is_empty() && key.is_none_or(|k| keys.values().any(|v| v["key"] == k))
                })
        })
    })
    .await;
}

/// Syncs `client` until a message arrives; returns its text or why it did not decrypt.
async fn receive(client: &mut OlmClient) -> Result<String, String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing received within 10 s"
        );
        if let Some(message) = client.sync(500).await.unwrap().pop() {
            return message.text;
        }
    }
}

async fn setup() -> (Federation, OlmClient, String) {
    let fed = Federation::start_proxied(&["a.test", "b.test"]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let room_id = create_room(&a, &alice, json!({ "preset": "public_chat" })).await;
    join_via(&b, &bob, &room_id, "a.test").await;
    let clock = Arc::new(FakeClock::at(1_000_000));
    let alice = OlmClient::login(&fed.client(0).base, "alice", "pw", "ALICE", clock)
        .await
        .unwrap();
    (fed, alice, bob.user_id)
}

#[tokio::test]
async fn a_message_on_a_cached_fallback_key_decrypts_after_recovery() {
    let (fed, mut alice, bob_id) = setup().await;
    let faults = [
        (Fault::Refuse, "connect"),
        (Fault::Hang, "timeout"),
        (Fault::Status(429), "http_429"),
        (Fault::Status(502), "http_5xx"),
    ];
    for (n, (fault, reason)) in faults.into_iter().enumerate() {
        // A new device of bob's each time: alice has no session with it yet.
        let device = format!("BOB{n}");
        let clock = Arc::new(FakeClock::at(1_000_000));
        let mut bob = OlmClient::login(&fed.client(1).base, "bob", "pw", &device, clock)
            .await
            .unwrap();
        shared(&fed, &bob_id, &device, None).await;
        fed.proxies[1].set(fault).await;
        let text = format!("sent while b.test failed ({fault:?})");
        let source = alice.send(&bob_id, &device, &text, 2_000).await.unwrap();
        assert_eq!(source, KeySource::Cached(reason.into()), "{fault:?}");
        fed.proxies[1].set(Fault::Pass).await;
        assert_eq!(receive(&mut bob).await, Ok(text), "{fault:?}");
        // b.test's next signed request ends a.test's backoff of it for the next case.
        fed.servers[1]
            .as_ref()
            .unwrap()
            .send_federation(
                "a.test",
                "GET",
                "/_matrix/federation/v1/query/profile?user_id=%40alice%3Aa.test",
                Value::Null,
            )
            .await
            .unwrap();
    }
    fed.stop().await;
}

#[tokio::test]
async fn a_key_rotated_twice_during_the_partition_still_decrypts_from_the_archive() {
    let (fed, mut alice, bob_id) = setup().await;
    let clock = Arc::new(FakeClock::at(1_000_000));
    let mut bob = OlmClient::login(&fed.client(1).base, "bob", "pw", "BOB", clock.clone())
        .await
        .unwrap();
    let first = bob.device().current_fallback_key().unwrap().to_owned();
    shared(&fed, &bob_id, "BOB", Some(&first)).await;

    // Cut off both ways; bob rotates twice (two weeks of his clock): a.test still holds the
    // first key, which bob's vodozemac account no longer has.
    fed.proxies[0].set(Fault::Refuse).await;
    fed.proxies[1].set(Fault::Refuse).await;
    for _ in 0..2 {
        clock.advance_ms(8 * DAY_MS);
        bob.sync(0).await.unwrap();
    }
    assert_ne!(bob.device().current_fallback_key().unwrap(), first);
    assert!(
        bob.device()
            .archived_fallback_keys()
            .contains(&first.as_str())
    );
    let source = alice
        .send(&bob_id, "BOB", "built on the first key", 2_000)
        .await
        .unwrap();
    assert_eq!(source, KeySource::Cached("connect".into()));

    fed.proxies[0].set(Fault::Pass).await;
    fed.proxies[1].set(Fault::Pass).await;
    assert_eq!(receive(&mut bob).await, Ok("built on the first key".into()));
    fed.stop().await;
}
