//! Unit tests of the key rules (the KU, KQ and KC cases of the peer-test catalogue, among others).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;
use crate::testing::{homeserver, user};

fn device_keys(me: &Requester) -> Value {
    json!({
        "user_id": me.user_id, "device_id": me.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{}", me.device_id): "curve+key", format!("ed25519:{}", me.device_id): "ed+key" },
        "signatures": { me.user_id.as_str(): { format!("ed25519:{}", me.device_id): "self+signature" } },
    })
}

fn upload(body: Value) -> UploadRequest {
    serde_json::from_value(body).unwrap()
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn claim_req(me: &Requester, algorithm: &str) -> ClaimRequest {
    serde_json::from_value(
        json!({ "one_time_keys": { me.user_id.as_str(): { me.device_id.as_str(): algorithm } } }),
    )
    .unwrap()
}

async fn claim_one(hs: &Homeserver, me: &Requester, algorithm: &str) -> Option<(String, String)> {
    let res = hs.claim_keys(claim_req(me, algorithm)).await.unwrap();
    assert!(res.failures.is_empty());
    let keys = res.one_time_keys.get(&me.user_id)?.get(&me.device_id)?;
    assert_eq!(keys.len(), 1);
    keys.iter()
        .next()
        .map(|(id, key)| (id.clone(), key.get().to_owned()))
}

#[tokio::test]
async fn upload_counts_per_algorithm_and_is_idempotent() {
    let (hs, _) = homeserver(true);
    let me = user(&hs, "alice", "D1").await;
    let first = upload(json!({
        "device_keys": device_keys(&me),
        "one_time_keys": { "my_algorithm:my_id_1": "bare+string", "signed_curve25519:A": { "key": "A", "signatures": {} } },
    }));
    assert_eq!(
        hs.upload_keys(&me, first).await.unwrap(),
        counts(&[("my_algorithm", 1), ("signed_curve25519", 1)])
    );

    // Overlapping sets count the union; identical re-uploads change nothing.
    let keys = |ids: &[&str]| -> Value {
        ids.iter()
            .map(|id| {
                (
                    format!("signed_curve25519:{id}"),
                    json!({ "key": id, "signatures": {} }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let c = hs
        .upload_keys(
            &me,
            upload(json!({ "one_time_keys": keys(&["A", "B", "C"]) })),
        )
        .await
        .unwrap();
    assert_eq!(c["signed_curve25519"], 3);
    let c = hs
        .upload_keys(
            &me,
            upload(json!({ "one_time_keys": keys(&["B", "C", "D"]) })),
        )
        .await
        .unwrap();
    assert_eq!(c["signed_curve25519"], 4);
    // A different signature on the same key is the same key.
    let resigned = json!({ "one_time_keys": { "signed_curve25519:A": { "key": "A", "signatures": { "x": "y" } } } });
    assert_eq!(
        hs.upload_keys(&me, upload(resigned)).await.unwrap()["signed_curve25519"],
        4
    );
}

#[tokio::test]
async fn a_changed_one_time_key_is_refused_with_nothing_written() {
    let (hs, _) = homeserver(true);
    let me = user(&hs, "alice", "D1").await;
    hs.upload_keys(
        &me,
        upload(json!({ "one_time_keys": { "alg1:k1": "key1", "alg2:k2": { "key": "key2" } } })),
    )
    .await
    .unwrap();
    for changed in [
        json!({ "alg1:k1": "key2" }),
        json!({ "alg2:k2": "key2" }),
        json!({ "alg1:k1": { "key": "key1" } }),
        json!({ "alg2:k2": { "key": "key3", "signatures": { "k1": "sig1" } } }),
    ] {
        let body = json!({ "one_time_keys": { "alg9:new": "fresh" } });
        let mut body = body;
        body["one_time_keys"]
            .as_object_mut()
            .unwrap()
            .extend(changed.as_object().unwrap().clone());
        let err = hs.upload_keys(&me, upload(body)).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unknown);
        assert!(
            err.message.starts_with("One time key alg"),
            "{}",
            err.message
        );
    }
    let held = hs
        .one_time_key_counts(&me.user_id, &me.device_id)
        .await
        .unwrap();
    assert_eq!(
        held,
        counts(&[("alg1", 1), ("alg2", 1), ("signed_curve25519", 0)]),
        "alg9:new was not written"
    );
}

#[tokio::test]
async fn device_keys_must_name_the_uploader_and_have_the_required_fields() {
    let (hs, _) = homeserver(true);
    let me = user(&hs, "alice", "D1").await;
    let bob = user(&hs, "bob", "B1").await;
    let mut wrong_user = device_keys(&me);
    wrong_user["user_id"] = bob.user_id.as_str().into();
    let mut wrong_device = device_keys(&me);
    wrong_device["device_id"] = "OTHER".into();
    let missing = json!({ "user_id": me.user_id, "device_id": me.device_id });
    for bad in [
        json!({ "device_keys": wrong_user }),
        json!({ "device_keys": wrong_device }),
        json!({ "device_keys": missing }),
        json!({ "device_keys": null }),
        json!({ "device_keys": [] }),
    ] {
        assert_eq!(
            hs.upload_keys(&me, upload(bad)).await.unwrap_err().kind,
            ErrorKind::BadJson
        );
    }
    for bad_name in [
        json!({ "one_time_keys": { "nocolon": "k" } }),
        json!({ "one_time_keys": { ":id": "k" } }),
        json!({ "one_time_keys": { "alg:": "k" } }),
        json!({ "one_time_keys": { "alg:id": 5 } }),
    ] {
        assert_eq!(
            hs.upload_keys(&me, upload(bad_name))
                .await
                .unwrap_err()
                .kind,
            ErrorKind::BadJson
        );
    }
}

#[tokio::test]
async fn identical_device_keys_are_no_change() {
    let (hs, _) = homeserver(true);
    let me = user(&hs, "alice", "D1").await;
    let start = hs.store().current_position().await.unwrap();
    hs.upload_keys(&me, upload(json!({ "device_keys": device_keys(&me) })))
        .await
        .unwrap();
    let after_first = hs.store().current_position().await.unwrap();
    assert!(after_first > start);
    assert_eq!(
        hs.key_changes(
            &me.user_id,
            SyncToken {
                pos: start,
                to_device: 0
            }
        )
        .await
        .unwrap()
        .changed,
        vec![me.user_id.clone()]
    );
    hs.upload_keys(&me, upload(json!({ "device_keys": device_keys(&me) })))
        .await
        .unwrap();
    assert_eq!(
        hs.store().current_position().await.unwrap(),
        after_first,
        "nothing written"
    );
    assert!(
        hs.key_changes(
            &me.user_id,
            SyncToken {
                pos: after_first,
                to_device: 0
            }
        )
        .await
        .unwrap()
        .changed
        .is_empty()
    );
}

#[tokio::test]
async fn claims_hand_out_one_time_keys_in_upload_order_then_the_fallback() {
    let (hs, clock) = homeserver(true);
    let me = user(&hs, "alice", "D1").await;
    hs.upload_keys(
        &me,
        upload(json!({ "one_time_keys": { "alg1:k1": "key1" } })),
    )
    .await
    .unwrap();
    clock.advance(1_000);
    hs.upload_keys(&me, upload(json!({ "one_time_keys": { "alg1:k0": "key0" }, "fallback_keys": { "alg1:k1": "fallback1" } }))).await.unwrap();
    assert_eq!(
        claim_one(&hs, &me, "alg1").await,
        Some(("alg1:k1".into(), "\"key1\"".into()))
    );
    assert_eq!(
        claim_one(&hs, &me, "alg1").await,
        Some(("alg1:k0".into(), "\"key0\"".into()))
    );
    // OTKs gone: the fallback key, again and again (same ID as an OTK: separate namespaces).
    assert_eq!(
        claim_one(&hs, &me, "alg1").await,
        Some(("alg1:k1".into(), "\"fallback1\"".into()))
    );
    assert_eq!(
        claim_one(&hs, &me, "alg1").await,
        Some(("alg1:k1".into(), "\"fallback1\"".into()))
    );
    assert_eq!(
        claim_one(&hs, &me, "other").await,
        None,
        "nothing for an algorithm without keys"
    );
    let res = hs.claim_keys(claim_req(&me, "other")).await.unwrap();
    assert!(res.one_time_keys.is_empty(), "no empty user or device maps");
}

#[tokio::test]
async fn fallback_keys_replace_unless_identical() {
    let (hs, _) = homeserver(true);
    let me = user(&hs, "alice", "D1").await;
    let unused = |hs: Homeserver, me: Requester| async move {
        hs.store()
            .fallback_keys(&me.user_id, &me.device_id)
            .await
            .unwrap()
            .into_iter()
            .filter(|k| !k.used)
            .count()
    };
    let fb = json!({ "fallback_keys": { "alg1:k1": { "key": "f1", "fallback": true, "signatures": {} } } });
    hs.upload_keys(&me, upload(fb.clone())).await.unwrap();
    assert_eq!(unused(hs.clone(), me.clone()).await, 1);
    claim_one(&hs, &me, "alg1").await.unwrap();
    assert_eq!(unused(hs.clone(), me.clone()).await, 0);
    // The identical key again keeps the used mark.
    hs.upload_keys(&me, upload(fb)).await.unwrap();
    assert_eq!(unused(hs.clone(), me.clone()).await, 0);
    // A new key replaces it, unused.
    hs.upload_keys(&me, upload(json!({ "fallback_keys": { "alg1:k2": "f2" } })))
        .await
        .unwrap();
    assert_eq!(unused(hs.clone(), me.clone()).await, 1);
    assert_eq!(
        claim_one(&hs, &me, "alg1").await,
        Some(("alg1:k2".into(), "\"f2\"".into()))
    );
    let two = json!({ "fallback_keys": { "alg1:a": "x", "alg1:b": "y" } });
    assert_eq!(
        hs.upload_keys(&me, upload(two)).await.unwrap_err().kind,
        ErrorKind::BadJson
    );
}

#[tokio::test]
async fn the_eager_share_opt_in_is_sticky() {
    let (hs, _) = homeserver(true);
    let me = user(&hs, "alice", "D1").await;
    let eager = || async {
        hs.store()
            .eager_share_fallback_keys(&me.user_id, &me.device_id)
            .await
            .unwrap()
    };
    assert_eq!(eager().await, None);
    hs.upload_keys(
        &me,
        upload(json!({ "fallback_keys": { "a:1": "k" }, "eager_share_fallback_keys": true })),
    )
    .await
    .unwrap();
    assert_eq!(eager().await, Some(true));
    hs.upload_keys(&me, upload(json!({ "one_time_keys": { "a:2": "k" } })))
        .await
        .unwrap();
    assert_eq!(
        eager().await,
        Some(true),
        "an upload without the field leaves it"
    );
    hs.upload_keys(
        &me,
        upload(json!({ "org.matrix.msc4081.eager_share_fallback_keys": false })),
    )
    .await
    .unwrap();
    assert_eq!(eager().await, Some(false), "the unstable name works too");
}

#[tokio::test]
async fn one_time_keys_are_capped_per_device() {
    let (hs, _) = homeserver(true);
    let me = user(&hs, "alice", "D1").await;
    let many: serde_json::Map<String, Value> = (0..MAX_ONE_TIME_KEYS_PER_DEVICE)
        .map(|i| (format!("alg:{i}"), json!("k")))
        .collect();
    hs.upload_keys(&me, upload(json!({ "one_time_keys": many })))
        .await
        .unwrap();
    let err = hs
        .upload_keys(
            &me,
            upload(json!({ "one_time_keys": { "alg:extra": "k" } })),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidParam);
}

#[tokio::test]
async fn query_returns_keys_with_display_names() {
    let (hs, _) = homeserver(true);
    let me = user(&hs, "alice", "D1").await;
    let bob = user(&hs, "bob", "B1").await;
    hs.rename_device(&me.user_id, &me.device_id, Some("phone"))
        .await
        .unwrap();
    hs.upload_keys(&me, upload(json!({ "device_keys": device_keys(&me) })))
        .await
        .unwrap();
    let q = |body: Value| hs.query_keys(&bob.user_id, serde_json::from_value(body).unwrap());
    let res = q(json!({ "device_keys": { me.user_id.as_str(): [], bob.user_id.as_str(): [] } }))
        .await
        .unwrap();
    let mine = &res.device_keys[&me.user_id][&me.device_id];
    let mut expected = device_keys(&me);
    expected["unsigned"] = json!({ "device_display_name": "phone" });
    assert_eq!(mine, &expected);
    assert!(
        res.device_keys[&bob.user_id].is_empty(),
        "a user without keys is an empty map"
    );
    let none = q(json!({ "device_keys": { me.user_id.as_str(): ["OTHER"] } }))
        .await
        .unwrap();
    assert!(none.device_keys[&me.user_id].is_empty());
    let remote = q(json!({ "device_keys": { "@x:remote.org": [] } }))
        .await
        .unwrap();
    assert_eq!(remote.failures["remote.org"]["status"], 503);
}
