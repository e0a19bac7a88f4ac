//! MSC4081 across servers: a device's fallback key, shared eagerly, answers claims for it while
//! its server cannot (refused, held, 429, 502, in backoff); an opt-out withdraws it.

use ruma::CanonicalJsonObject;
use ruma::signatures::Ed25519KeyPair;
use serde_json::{Value, json};

use super::device_lists::{cached_list, join_via};
use super::proxy::Fault;
use super::{Federation, create_room};
use crate::harness::{Client, Session, enc};

/// A device's ed25519 key, which signs its device keys and fallback keys.
struct DeviceKey {
    pair: Ed25519KeyPair,
    public: String,
}

impl DeviceKey {
    fn new(device_id: &str) -> Self {
        let der = Ed25519KeyPair::generate();
        let pair = Ed25519KeyPair::from_der(&der, device_id.to_owned()).unwrap();
        let public = ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(
            pair.public_key().to_vec(),
        )
        .encode();
        Self { pair, public }
    }

    fn sign(&self, user: &str, value: Value) -> Value {
        let mut object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
        ruma::signatures::sign_json(user, &self.pair, &mut object).unwrap();
        serde_json::to_value(object).unwrap()
    }
}

/// Uploads signed device keys, a signed fallback key `FB<n>` and the opt-in as given.
async fn upload(
    client: &Client,
    s: &Session,
    key: &DeviceKey,
    n: u32,
    opt_in: Option<bool>,
) -> Value {
    let device_keys = key.sign(
        &s.user_id,
        json!({ "user_id": s.user_id, "device_id": s.device_id,
                "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                "keys": { format!("ed25519:{}", s.device_id): key.public,
                          format!("curve25519:{}", s.device_id): "curve" } }),
    );
    let fallback = key.sign(
        &s.user_id,
        json!({ "key": format!("fallback{n}"), "fallback": true }),
    );
    let mut body = json!({
        "device_keys": device_keys,
        "fallback_keys": { format!("signed_curve25519:FB{n}"): fallback },
    });
    if let Some(opt_in) = opt_in {
        body["org.matrix.msc4081.eager_share_fallback_keys"] = opt_in.into();
    }
    client
        .post("/_matrix/client/v3/keys/upload", Some(&s.token), body)
        .await
        .ok();
    fallback
}

async fn claim(b: &Client, bob: &Session, alice: &Session) -> Value {
    b.post(
        "/_matrix/client/v3/keys/claim",
        Some(&bob.token),
        json!({ "one_time_keys": { alice.user_id.as_str(): { alice.device_id.as_str(): "signed_curve25519" } },
                "timeout": 2000 }),
    )
    .await
    .ok()
}

/// Whether a cached list holds the shared fallback key `FB<n>` of one of its devices.
fn holds_fallback(n: u32) -> impl Fn(&cairn_core::store::RemoteDeviceList) -> bool {
    move |list| {
        list.devices.iter().any(|d| {
            let d: Value = serde_json::from_str(d.get()).unwrap();
            d["org.matrix.msc4081.fallback_keys"]
                .get(format!("signed_curve25519:FB{n}"))
                .is_some()
        })
    }
}

/// Whether a `/sync` answer lists `user_id` in `device_lists.changed`.
fn lists_as_changed(sync: &Value, user_id: &str) -> bool {
    sync["device_lists"]["changed"]
        .as_array()
        .is_some_and(|c| c.iter().any(|u| u == user_id))
}

/// a.test and b.test behind fault proxies; bob on b.test shares fallback key `FB1` (opted in)
/// and alice on a.test joined his room, so a.test holds the key. Returns them and bob's key.
async fn alice_sees_bobs_shared_key() -> (Federation, Session, Session, DeviceKey) {
    let fed = Federation::start_proxied(&["a.test", "b.test"]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let key = DeviceKey::new(&bob.device_id);
    upload(&b, &bob, &key, 1, Some(true)).await;
    let room_id = create_room(&b, &bob, json!({ "preset": "public_chat" })).await;
    join_via(&a, &alice, &room_id, "b.test").await;
    cached_list(
        fed.servers[0].as_ref().unwrap(),
        &bob.user_id,
        holds_fallback(1),
    )
    .await;
    (fed, alice, bob, key)
}

#[tokio::test]
async fn a_shared_fallback_key_answers_claims_while_its_server_cannot() {
    let fed = Federation::start_proxied(&["a.test", "b.test"]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let key = DeviceKey::new(&alice.device_id);
    let fallback = upload(&a, &alice, &key, 1, Some(true)).await;
    let room_id = create_room(&a, &alice, json!({ "preset": "public_chat" })).await;
    join_via(&b, &bob, &room_id, "a.test").await;
    let b_server = fed.servers[1].as_ref().unwrap();
    cached_list(b_server, &alice.user_id, holds_fallback(1)).await;

    // Answered by a.test while it answers: it hands out the fallback key itself.
    let direct = claim(&b, &bob, &alice).await;
    assert_eq!(direct["failures"], json!({}));
    assert!(
        direct.get("org.matrix.msc4081.cached").is_none(),
        "{direct}"
    );

    let cases = [
        (Fault::Refuse, "connect"),
        (Fault::Hang, "timeout"),
        (Fault::Status(429), "http_429"),
        (Fault::Status(502), "http_5xx"),
    ];
    for (fault, reason) in cases {
        // Each case starts with a.test out of backoff (a signed request from it clears it).
        let a_server = fed.servers[0].as_ref().unwrap();
        a_server
            .send_federation(
                "b.test",
                "GET",
                &format!(
                    "/_matrix/federation/v1/query/profile?user_id={}",
                    enc(&bob.user_id)
                ),
                Value::Null,
            )
            .await
            .unwrap();
        fed.proxies[0].set(fault).await;
        let answer = claim(&b, &bob, &alice).await;
        assert_eq!(answer["failures"], json!({}), "{fault:?}: {answer}");
        assert_eq!(
            answer["one_time_keys"][&alice.user_id][&alice.device_id]["signed_curve25519:FB1"],
            fallback,
            "{fault:?}: the shared key, as signed"
        );
        assert_eq!(
            answer["org.matrix.msc4081.cached"]["a.test"]["reason"], reason,
            "{fault:?}"
        );

        // Now a.test is in backoff: the next claim is answered at once, without asking it.
        // The kit's backoff is 100 ms, which a loaded machine can outlast between two claims,
        // so it is held open for this step (the next case's signed request ends it).
        let store = b_server.homeserver.store();
        let a_name = ruma::server_name!("a.test");
        let backoff = store.backoff(a_name).await.unwrap();
        assert!(
            backoff.interval_ms > 0,
            "{fault:?}: the failure backed a.test off"
        );
        store
            .set_backoff(
                a_name,
                cairn_core::store::Backoff {
                    retry_after_ms: backoff.retry_after_ms + 60_000,
                    ..backoff
                },
            )
            .await
            .unwrap();
        let asked = fed.proxies[0].seen("POST /_matrix/federation/v1/user/keys/claim");
        let again = claim(&b, &bob, &alice).await;
        assert_eq!(
            again["org.matrix.msc4081.cached"]["a.test"]["reason"], "backoff",
            "{again}"
        );
        assert!(
            again["org.matrix.msc4081.cached"]["a.test"]["retry_after_ms"]
                .as_u64()
                .unwrap()
                > 0
        );
        assert_eq!(
            fed.proxies[0].seen("POST /_matrix/federation/v1/user/keys/claim"),
            asked
        );
        fed.proxies[0].set(Fault::Pass).await;
    }

    // A new fallback key replaces the cached one; an opt-out withdraws it.
    upload(&a, &alice, &key, 2, None).await;
    cached_list(b_server, &alice.user_id, holds_fallback(2)).await;
    upload(&a, &alice, &key, 2, Some(false)).await;
    cached_list(b_server, &alice.user_id, |l| {
        !holds_fallback(2)(l) && !l.devices.is_empty()
    })
    .await;
    fed.proxies[0].set(Fault::Refuse).await;
    let answer = claim(&b, &bob, &alice).await;
    assert_eq!(answer["failures"]["a.test"]["status"], 503, "{answer}");
    assert_eq!(answer["one_time_keys"], json!({}));
    fed.stop().await;
}

/// Scenario 5: while b.test cannot reach a.test, bob's device rotates its fallback key; when
/// b.test gets through again, a.test caches the new key and alice sees bob in
/// `device_lists.changed`, so her client queries again.
#[tokio::test]
async fn when_a_cut_off_server_returns_local_users_hear_of_its_changes() {
    let (fed, alice, bob, key) = alice_sees_bobs_shared_key().await;
    let (a, b) = (fed.client(0), fed.client(1));
    let a_server = fed.servers[0].as_ref().unwrap();
    let since = a
        .get("/_matrix/client/v3/sync?timeout=0", Some(&alice.token))
        .await
        .ok()["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    fed.proxies[0].set(Fault::Refuse).await;
    upload(&b, &bob, &key, 2, None).await;
    fed.proxies[0].set(Fault::Pass).await;
    cached_list(a_server, &bob.user_id, holds_fallback(2)).await;
    let mut since = since;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "bob never showed as changed"
        );
        let sync = a
            .get(
                &format!("/_matrix/client/v3/sync?timeout=1000&since={since}"),
                Some(&alice.token),
            )
            .await
            .ok();
        if lists_as_changed(&sync, &bob.user_id) {
            break;
        }
        since = sync["next_batch"].as_str().unwrap().to_owned();
    }
    fed.stop().await;
}

/// Decision 19, for a user whose server has nothing new to say: alice's claim for bob's device
/// is answered from a.test's cache while b.test refuses; once b.test answers again, a.test
/// fetches bob's list once more and alice sees bob in `device_lists.changed`, though nothing
/// about bob changed, so her client queries again.
#[tokio::test]
async fn users_served_from_the_cache_are_fetched_again_when_their_server_answers() {
    let (fed, alice, bob, _) = alice_sees_bobs_shared_key().await;
    let a = fed.client(0);
    let a_server = fed.servers[0].as_ref().unwrap();
    // `wait_ms`: how long the sync may wait for something to tell.
    let sync = |since: String, wait_ms: u32| {
        let (a, token) = (&a, alice.token.clone());
        async move {
            a.get(
                &format!("/_matrix/client/v3/sync?timeout={wait_ms}&since={since}"),
                Some(&token),
            )
            .await
            .ok()
        }
    };
    // Settle: b.test's announcements of bob's devices delivered, then syncs until one passes
    // without bob (the join's fetch and the announcements may land in either order).
    let b_server = fed.servers[1].as_ref().unwrap();
    let a_name: ruma::OwnedServerName = "a.test".try_into().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !b_server
        .homeserver
        .store()
        .pending_device_updates(&a_name, 1)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "announcements stuck");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let bob_changed = |sync: &Value| lists_as_changed(sync, &bob.user_id);
    let mut since = a
        .get("/_matrix/client/v3/sync?timeout=0", Some(&alice.token))
        .await
        .ok()["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "bob's list never settled"
        );
        let next = sync(since.clone(), 300).await;
        since = next["next_batch"].as_str().unwrap().to_owned();
        if !bob_changed(&next) {
            break;
        }
    }

    fed.proxies[1].set(Fault::Refuse).await;
    let answer = claim(&a, &alice, &bob).await;
    // "connect", or "backoff" if a.test's sender met the refusal first.
    let reason = &answer["org.matrix.msc4081.cached"]["b.test"]["reason"];
    assert!(reason == "connect" || reason == "backoff", "{answer}");
    let devices_path = "GET /_matrix/federation/v1/user/devices/";
    let fetched = fed.proxies[1].seen(devices_path);
    // While b.test is in backoff the recheck waits.
    a_server
        .homeserver
        .retry_stale_device_lists()
        .await
        .unwrap();
    assert_eq!(fed.proxies[1].seen(devices_path), fetched);
    let quiet = sync(since.clone(), 0).await;
    assert!(!bob_changed(&quiet), "nothing to tell yet: {quiet}");
    since = quiet["next_batch"].as_str().unwrap().to_owned();

    fed.proxies[1].set(Fault::Pass).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "bob never showed as changed"
        );
        // The 30 s pass, run now; it skips b.test until its (short, in tests) backoff ends.
        a_server
            .homeserver
            .retry_stale_device_lists()
            .await
            .unwrap();
        let next = sync(since.clone(), 200).await;
        if bob_changed(&next) {
            break;
        }
        since = next["next_batch"].as_str().unwrap().to_owned();
    }
    assert_eq!(
        fed.proxies[1].seen(devices_path),
        fetched + 1,
        "bob's list was fetched once more"
    );
    // Rechecked once: later passes leave it alone.
    a_server
        .homeserver
        .retry_stale_device_lists()
        .await
        .unwrap();
    assert_eq!(fed.proxies[1].seen(devices_path), fetched + 1);
    fed.stop().await;
}
