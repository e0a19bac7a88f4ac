//! Unit tests of the MSC4081 rules: what is cached, what uploads owe, what claims may serve.

use std::collections::BTreeMap;

use ruma::signatures::Ed25519KeyPair;
use ruma::{CanonicalJsonObject, OwnedUserId, user_id};
use serde_json::json;

use super::*;
use crate::store::{RemoteDeviceList, UploadedKey};
use crate::testing::{homeserver, user};

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// A device's ed25519 key pair and its public half.
fn device_key(device_id: &str) -> (Ed25519KeyPair, String) {
    let der = Ed25519KeyPair::generate();
    let pair = Ed25519KeyPair::from_der(&der, device_id.to_owned()).unwrap();
    let public =
        ruma::serde::Base64::<ruma::serde::base64::Standard, _>::new(pair.public_key().to_vec())
            .encode();
    (pair, public)
}

fn signed(pair: &Ed25519KeyPair, user: &UserId, value: Value) -> Value {
    let mut object: CanonicalJsonObject = serde_json::from_value(value).unwrap();
    ruma::signatures::sign_json(user.as_str(), pair, &mut object).unwrap();
    serde_json::to_value(object).unwrap()
}

fn device_keys(user: &UserId, device: &str, public: &str) -> Value {
    json!({ "user_id": user, "device_id": device, "keys": { format!("ed25519:{device}"): public } })
}

#[test]
fn only_well_formed_keys_signed_by_the_device_are_cached() {
    let user = user_id!("@alice:a.test");
    let (pair, public) = device_key("D1");
    let (other, _) = device_key("D1");
    let good = signed(&pair, user, json!({ "key": "k1", "fallback": true }));
    let keys = device_keys(user, "D1", &public);
    let check = |raw: Value| checked_fallback_keys(&raw, user, "D1", Some(&keys));

    let (kept, refused) = check(json!({ "signed_curve25519:AAAA": good }));
    assert_eq!(kept.len(), 1);
    assert!(refused.is_empty());

    let cases = [
        (json!({ "signed_curve25519": good }), Refusal::KeyId),
        (json!({ ":AAAA": good }), Refusal::KeyId),
        (
            json!({ "signed_curve25519:A": good, "signed_curve25519:B": good }),
            Refusal::Duplicate,
        ),
        (
            json!({ "signed_curve25519:A": signed(&pair, user, json!({ "key": "k" })) }),
            Refusal::Shape,
        ),
        (
            json!({ "signed_curve25519:A": signed(&pair, user, json!({ "key": "k".repeat(4000), "fallback": true })) }),
            Refusal::Size,
        ),
        (
            json!({ "signed_curve25519:A": signed(&other, user, json!({ "key": "k", "fallback": true })) }),
            Refusal::Signature,
        ),
    ];
    for (raw, want) in cases {
        let (_, refused) = check(raw.clone());
        assert_eq!(refused, [want], "{raw}");
    }
    // Without the device's keys nothing can be checked, so nothing is cached.
    let (kept, refused) =
        checked_fallback_keys(&json!({ "signed_curve25519:A": good }), user, "D1", None);
    assert!(kept.is_empty());
    assert_eq!(refused, [Refusal::Signature]);
}

#[test]
fn a_cached_key_is_stamped_each_time_its_server_sends_it() {
    let user = user_id!("@alice:a.test");
    let (pair, public) = device_key("D1");
    let one = signed(&pair, user, json!({ "key": "k1", "fallback": true }));
    let two = signed(&pair, user, json!({ "key": "k2", "fallback": true }));
    let mut first = json!({ "device_id": "D1", "keys": device_keys(user, "D1", &public),
                            "fallback_keys": { "signed_curve25519:K1": one } });
    let object = first.as_object_mut().unwrap();
    assert!(cache_fallback_keys(object, user, "D1", None, 1_000).is_empty());
    assert!(object.get(STABLE_FIELD).is_none(), "kept under one name");
    assert_eq!(first[RECEIVED_FIELD]["signed_curve25519:K1"], 1_000);

    // The same key again (every update carries it): the owner's server says it is still
    // current, so its age starts again.
    let mut again = json!({ "device_id": "D1", UNSTABLE_FIELD: { "signed_curve25519:K1": one } });
    cache_fallback_keys(
        again.as_object_mut().unwrap(),
        user,
        "D1",
        Some(&first),
        5_000,
    );
    assert_eq!(again[RECEIVED_FIELD]["signed_curve25519:K1"], 5_000);
    assert!(
        again[UNSTABLE_FIELD]["signed_curve25519:K1"].is_object(),
        "checked with the cached device keys"
    );

    // A rotated key is new; an update without the field caches none.
    let mut rotated = json!({ "device_id": "D1", UNSTABLE_FIELD: { "signed_curve25519:K2": two } });
    cache_fallback_keys(
        rotated.as_object_mut().unwrap(),
        user,
        "D1",
        Some(&first),
        9_000,
    );
    assert_eq!(rotated[RECEIVED_FIELD]["signed_curve25519:K2"], 9_000);
    let mut without = json!({ "device_id": "D1", RECEIVED_FIELD: { "x": 1 } });
    cache_fallback_keys(
        without.as_object_mut().unwrap(),
        user,
        "D1",
        Some(&rotated),
        9_500,
    );
    assert!(without.get(UNSTABLE_FIELD).is_none() && without.get(RECEIVED_FIELD).is_none());
}

fn fallback(key_id: &str) -> UploadedKey {
    UploadedKey {
        algorithm: "signed_curve25519".into(),
        key_id: key_id.into(),
        key: serde_json::value::to_raw_value(&json!({ "key": key_id, "fallback": true })).unwrap(),
    }
}

#[tokio::test]
async fn uploads_owe_updates_only_when_what_is_shared_changes() {
    let (hs, _) = homeserver(true);
    let me = user(&hs, "alice", "D1").await;
    let write = |fallbacks: Vec<UploadedKey>, eager: Option<bool>| KeyWrite {
        user_id: me.user_id.clone(),
        device_id: me.device_id.clone(),
        device_keys: None,
        one_time_keys: Vec::new(),
        fallback_keys: fallbacks,
        eager_share_fallback_keys: eager,
        owes_update: false,
    };
    let owes = |w: KeyWrite| {
        let hs = hs.clone();
        async move { hs.upload_owes_update(&w).await.unwrap() }
    };
    assert!(
        !owes(write(vec![fallback("A")], None)).await,
        "not opted in"
    );
    assert!(
        owes(write(vec![fallback("A")], Some(true))).await,
        "opting in with a key"
    );
    assert!(
        owes(write(Vec::new(), Some(true))).await,
        "opting in shares the stored key"
    );
    hs.store()
        .write_keys(&write(vec![fallback("A")], Some(true)))
        .await
        .unwrap()
        .unwrap();
    assert!(
        owes(write(vec![fallback("B")], None)).await,
        "a new key of a sharing device"
    );
    assert!(!owes(write(Vec::new(), None)).await, "one-time keys only");
    assert!(
        !owes(write(Vec::new(), Some(true))).await,
        "the same opt-in again"
    );
    assert!(
        owes(write(Vec::new(), Some(false))).await,
        "opting out withdraws the key"
    );
}

#[tokio::test]
async fn claims_serve_cached_keys_of_the_algorithm_asked_within_the_age_limit() {
    let (hs, _) = homeserver(true);
    let me = user(&hs, "me", "D").await;
    let _ = me;
    let alice: OwnedUserId = user_id!("@alice:a.test").to_owned();
    let device = json!({ "device_id": "D1",
        UNSTABLE_FIELD: { "signed_curve25519:K1": { "key": "k", "fallback": true } },
        RECEIVED_FIELD: { "signed_curve25519:K1": 1_000 } });
    hs.store()
        .replace_remote_device_list(&RemoteDeviceList {
            user_id: alice.clone(),
            stream_id: 1,
            stale: false,
            devices: vec![serde_json::value::to_raw_value(&device).unwrap()],
            master_key: None,
            self_signing_key: None,
        })
        .await
        .unwrap();
    let ask = |algorithm: &str, devices: &[&str]| {
        let devices: BTreeMap<_, _> = devices
            .iter()
            .map(|d| (OwnedDeviceId::from(*d), algorithm.to_owned()))
            .collect();
        BTreeMap::from([(alice.clone(), devices)])
    };
    let limit = 1_000 + 14 * DAY_MS;
    let found = hs
        .cached_claims(&ask("signed_curve25519", &["D1"]), limit)
        .await;
    let (served, complete) = (found.keys, found.complete);
    assert!(complete);
    assert_eq!(served[0].2, "signed_curve25519:K1");
    let found = hs
        .cached_claims(&ask("signed_curve25519", &["D1"]), limit + 1)
        .await;
    let (served, complete) = (found.keys, found.complete);
    assert!(served.is_empty() && !complete, "older than the age limit");
    let served = hs
        .cached_claims(&ask("other_alg", &["D1"]), 2_000)
        .await
        .keys;
    assert!(served.is_empty(), "only the algorithm asked");
    let found = hs
        .cached_claims(&ask("signed_curve25519", &["D1", "D2"]), 2_000)
        .await;
    let (served, complete) = (found.keys, found.complete);
    assert_eq!(
        (served.len(), complete),
        (1, false),
        "a device with nothing cached"
    );
}
