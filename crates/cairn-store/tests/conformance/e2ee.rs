//! Conformance cases for keys, to-device inboxes and stream positions.

use std::sync::Arc;

use cairn_core::store::*;
use ruma::{OwnedDeviceId, user_id};

use super::{Harness, alice, new_device, new_user, raw};

fn key(algorithm: &str, key_id: &str, json: &str) -> UploadedKey {
    UploadedKey {
        algorithm: algorithm.into(),
        key_id: key_id.into(),
        key: raw(json),
    }
}

fn write(otks: Vec<UploadedKey>, fallbacks: Vec<UploadedKey>) -> KeyWrite {
    KeyWrite {
        user_id: alice().to_owned(),
        device_id: "D1".into(),
        device_keys: None,
        one_time_keys: otks,
        fallback_keys: fallbacks,
        eager_share_fallback_keys: None,
        owes_update: false,
    }
}

fn claim(algorithm: &str) -> KeyClaim {
    KeyClaim {
        user_id: alice().to_owned(),
        device_id: "D1".into(),
        algorithm: algorithm.into(),
    }
}

async fn with_alice(h: &Harness) -> &SqlStoreRef {
    h.store
        .create_user(&new_user(alice()), Some(&new_device(alice(), "D1", "t1")))
        .await
        .unwrap();
    &h.store
}

type SqlStoreRef = cairn_store::SqlStore;

fn ids(keys: &[Option<UploadedKey>]) -> Vec<Option<String>> {
    keys.iter()
        .map(|k| {
            k.as_ref()
                .map(|k| format!("{}:{}={}", k.algorithm, k.key_id, k.key.get()))
        })
        .collect()
}

pub(crate) async fn keys_are_written_and_read_back_exactly(h: &Harness) {
    let s = with_alice(h).await;
    let device_keys = r#"{"user_id":"@alice:example.org",  "device_id":"D1","keys":{}}"#;
    let before = s.current_position().await.unwrap();
    let mut w = write(
        vec![
            key("signed_curve25519", "A", r#"{"key":"a", "signatures":{}}"#),
            key("other", "B", r#""bare""#),
        ],
        vec![key(
            "signed_curve25519",
            "F",
            r#"{"key":"f","fallback":true}"#,
        )],
    );
    w.device_keys = Some(raw(device_keys));
    w.eager_share_fallback_keys = Some(true);
    s.write_keys(&w).await.unwrap().unwrap();

    assert_eq!(
        s.device_keys(alice(), "D1".into())
            .await
            .unwrap()
            .unwrap()
            .get(),
        device_keys
    );
    // Writing the same keys again (one re-signed) stores nothing new: the counts stay.
    w.one_time_keys[0] = key(
        "signed_curve25519",
        "A",
        r#"{"signatures":{"x":{}},"key":"a"}"#,
    );
    let counts = s.write_keys(&w).await.unwrap().unwrap();
    let expected = vec![("other".into(), 1), ("signed_curve25519".into(), 1)];
    assert_eq!(counts.into_iter().collect::<Vec<_>>(), expected);
    let counts = s.one_time_key_counts(alice(), "D1".into()).await.unwrap();
    assert_eq!(counts.into_iter().collect::<Vec<_>>(), expected);
    let claimed = s.claim_keys(&[claim("signed_curve25519")]).await.unwrap();
    assert_eq!(
        ids(&claimed),
        [Some(
            r#"signed_curve25519:A={"key":"a", "signatures":{}}"#.into()
        )],
        "the key first stored stays, byte for byte"
    );
    let fallbacks = s.fallback_keys(alice(), "D1".into()).await.unwrap();
    assert_eq!(
        (
            fallbacks.len(),
            fallbacks[0].used,
            fallbacks[0].key.key_id.as_str()
        ),
        (1, false, "F")
    );
    assert_eq!(
        s.eager_share_fallback_keys(alice(), "D1".into())
            .await
            .unwrap(),
        Some(true)
    );

    let after = s.current_position().await.unwrap();
    assert!(after > before, "new device keys take a stream position");
    assert_eq!(
        s.device_list_changes(alice(), before, after).await.unwrap(),
        vec![alice().to_owned()]
    );
    let queried = s.query_device_keys(alice(), &[]).await.unwrap();
    assert_eq!((queried.len(), queried[0].keys.get()), (1, device_keys));
    assert_eq!(queried[0].display_name.as_deref(), Some("D1 name"));
    assert!(
        s.query_device_keys(alice(), &["OTHER".into()])
            .await
            .unwrap()
            .is_empty()
    );

    // Writing only one-time keys leaves the opt-in and takes no position. Every write returns
    // the device's counts, also one without one-time keys.
    let counts = s
        .write_keys(&write(vec![key("other", "C", r#""c""#)], vec![]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [("other".into(), 2)]
    );
    let counts = s
        .write_keys(&write(vec![], vec![key("alg", "F2", r#""f2""#)]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [("other".into(), 2)]
    );
    assert_eq!(
        s.eager_share_fallback_keys(alice(), "D1".into())
            .await
            .unwrap(),
        Some(true)
    );
    assert_eq!(s.current_position().await.unwrap(), after);
}

pub(crate) async fn claims_take_one_time_keys_in_upload_order_then_the_fallback(h: &Harness) {
    let s = with_alice(h).await;
    s.write_keys(&write(vec![key("alg", "k9", r#""first""#)], vec![]))
        .await
        .unwrap()
        .unwrap();
    s.write_keys(&write(
        vec![key("alg", "k1", r#""second""#)],
        vec![key("alg", "f", r#""fb""#)],
    ))
    .await
    .unwrap()
    .unwrap();
    let got = s
        .claim_keys(&[claim("alg"), claim("alg"), claim("alg"), claim("none")])
        .await
        .unwrap();
    assert_eq!(
        ids(&got),
        vec![
            Some(r#"alg:k9="first""#.into()),
            Some(r#"alg:k1="second""#.into()),
            Some(r#"alg:f="fb""#.into()),
            None
        ]
    );
    assert!(s.fallback_keys(alice(), "D1".into()).await.unwrap()[0].used);
    assert!(
        s.one_time_key_counts(alice(), "D1".into())
            .await
            .unwrap()
            .is_empty()
    );
    // A replacement fallback key is unused again.
    s.write_keys(&write(vec![], vec![key("alg", "g", r#""fb2""#)]))
        .await
        .unwrap()
        .unwrap();
    let fb = s.fallback_keys(alice(), "D1".into()).await.unwrap();
    assert_eq!((fb[0].key.key_id.as_str(), fb[0].used), ("g", false));
}

pub(crate) async fn concurrent_claims_never_hand_out_a_key_twice(h: &Harness) {
    let s = with_alice(h).await;
    let otks = (0..40)
        .map(|i| key("alg", &format!("k{i}"), &format!(r#""v{i}""#)))
        .collect();
    s.write_keys(&write(otks, vec![key("alg", "f", r#""fb""#)]))
        .await
        .unwrap()
        .unwrap();
    let store = Arc::new(s.clone());
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim_keys(&[claim("alg"), claim("alg"), claim("alg")])
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut otks = Vec::new();
    let mut fallbacks = 0;
    for task in tasks {
        for k in task.await.unwrap().into_iter().flatten() {
            if k.key_id == "f" {
                fallbacks += 1
            } else {
                otks.push(k.key_id)
            }
        }
    }
    let total = otks.len();
    otks.sort();
    otks.dedup();
    assert_eq!((otks.len(), total), (40, 40), "every key once");
    assert_eq!(
        fallbacks, 20,
        "the rest of the 60 claims got the fallback key"
    );
}

pub(crate) async fn deleting_a_device_deletes_its_keys_and_inbox(h: &Harness) {
    let s = with_alice(h).await;
    let mut w = write(
        vec![key("alg", "k", r#""v""#)],
        vec![key("alg", "f", r#""fb""#)],
    );
    w.device_keys = Some(raw("{}"));
    s.write_keys(&w).await.unwrap().unwrap();
    let batch = ToDeviceBatch {
        sender: alice().to_owned(),
        sender_device: "D1".into(),
        txn_id: "t".into(),
        event_type: "m.test".into(),
        messages: vec![(alice().to_owned(), "D1".into(), raw("{}"))],
        outbound: vec![],
    };
    assert!(s.send_to_device(&batch).await.unwrap());
    let before = s.current_position().await.unwrap();
    let gone: Vec<OwnedDeviceId> = vec!["D1".into()];
    s.delete_devices(alice(), &gone).await.unwrap();
    assert!(s.device_keys(alice(), "D1".into()).await.unwrap().is_none());
    assert!(
        s.one_time_key_counts(alice(), "D1".into())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.fallback_keys(alice(), "D1".into())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        s.to_device_messages(alice(), "D1".into(), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let after = s.current_position().await.unwrap();
    assert_eq!(
        s.device_list_changes(alice(), before, after).await.unwrap(),
        vec![alice().to_owned()]
    );
    // Deleting nothing records nothing.
    s.delete_devices(alice(), &gone).await.unwrap();
    assert_eq!(s.current_position().await.unwrap(), after);
}

pub(crate) async fn to_device_batches_are_deduplicated_and_paged(h: &Harness) {
    let s = with_alice(h).await;
    let bob = user_id!("@bob:example.org");
    s.create_user(&new_user(bob), Some(&new_device(bob, "B1", "tb")))
        .await
        .unwrap();
    let batch = |txn: &str, n: u32| ToDeviceBatch {
        sender: alice().to_owned(),
        sender_device: "D1".into(),
        txn_id: txn.into(),
        event_type: "m.test".into(),
        messages: vec![(
            bob.to_owned(),
            "B1".into(),
            raw(&format!(r#"{{"n": {n}}}"#)),
        )],
        outbound: vec![],
    };
    for i in 0..5 {
        assert!(s.send_to_device(&batch(&format!("t{i}"), i)).await.unwrap());
    }
    assert!(
        !s.send_to_device(&batch("t0", 99)).await.unwrap(),
        "a repeated transaction ID"
    );
    let first = s.to_device_messages(bob, "B1".into(), 0, 3).await.unwrap();
    let contents: Vec<_> = first.iter().map(|m| m.content.get().to_owned()).collect();
    assert_eq!(contents, vec![r#"{"n": 0}"#, r#"{"n": 1}"#, r#"{"n": 2}"#]);
    assert_eq!(
        (first[0].sender.as_str(), first[0].event_type.as_str()),
        ("@alice:example.org", "m.test")
    );
    let rest = s
        .to_device_messages(bob, "B1".into(), first[2].pos, 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    s.delete_to_device_messages(bob, "B1".into(), first[2].pos)
        .await
        .unwrap();
    assert_eq!(
        s.to_device_messages(bob, "B1".into(), 0, 10)
            .await
            .unwrap()
            .len(),
        2
    );
}

pub(crate) async fn positions_order_account_data_and_device_list_changes(h: &Harness) {
    let s = with_alice(h).await;
    let p0 = s.current_position().await.unwrap();
    s.put_account_data(alice(), "a.type", &raw(r#"{"v":1}"#))
        .await
        .unwrap();
    let p1 = s.current_position().await.unwrap();
    s.put_account_data(alice(), "b.type", &raw(r#"{"v":2}"#))
        .await
        .unwrap();
    assert!(
        s.set_device_display_name(alice(), "D1".into(), Some("new"))
            .await
            .unwrap()
    );
    let p2 = s.current_position().await.unwrap();
    assert!(p0 < p1 && p1 < p2);
    let types = |v: Vec<(String, Box<serde_json::value::RawValue>)>| {
        v.into_iter().map(|(t, _)| t).collect::<Vec<_>>()
    };
    assert_eq!(
        types(s.account_data_changes(alice(), p0, p2).await.unwrap()),
        vec!["a.type", "b.type"]
    );
    assert_eq!(
        types(s.account_data_changes(alice(), p1, p2).await.unwrap()),
        vec!["b.type"]
    );
    assert!(
        s.account_data_changes(alice(), p2, p2)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.device_list_changes(alice(), p1, p2).await.unwrap(),
        vec![alice().to_owned()]
    );
    assert!(
        s.device_list_changes(alice(), p0, p1)
            .await
            .unwrap()
            .is_empty()
    );
}

pub(crate) async fn concurrent_uploads_and_claims_all_land(h: &Harness) {
    let s = with_alice(h).await;
    let store = Arc::new(s.clone());
    let uploads: Vec<_> = (0..20)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let keys = (0..10)
                    .map(|k| key("alg", &format!("t{t}k{k}"), &format!(r#""v{t}_{k}""#)))
                    .collect();
                store
                    .write_keys(&write(keys, vec![]))
                    .await
                    .unwrap()
                    .unwrap();
            })
        })
        .collect();
    for task in uploads {
        task.await.unwrap();
    }
    assert_eq!(
        s.one_time_key_counts(alice(), "D1".into()).await.unwrap()["alg"],
        200
    );
    let claims: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim_keys(&[claim("alg"), claim("alg")])
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut got = Vec::new();
    for task in claims {
        got.extend(task.await.unwrap().into_iter().flatten().map(|k| k.key_id));
    }
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 20, "20 distinct keys claimed");
    assert_eq!(
        s.one_time_key_counts(alice(), "D1".into()).await.unwrap()["alg"],
        180
    );
}

pub(crate) async fn a_changed_one_time_key_refuses_the_whole_upload(h: &Harness) {
    let s = with_alice(h).await;
    s.write_keys(&write(vec![key("alg", "k1", r#""a""#)], vec![]))
        .await
        .unwrap()
        .unwrap();
    let before = s.current_position().await.unwrap();
    // With device keys (the ordinary path on SQLite) and without (the group commit).
    let mut with_device_keys = write(
        vec![key("alg", "k2", r#""b""#), key("alg", "k1", r#""changed""#)],
        vec![key("alg", "f", r#""fb""#)],
    );
    with_device_keys.device_keys = Some(raw("{}"));
    with_device_keys.eager_share_fallback_keys = Some(true);
    let mut keys_only = with_device_keys.clone();
    keys_only.device_keys = None;
    for upload in [with_device_keys, keys_only] {
        match s.write_keys(&upload).await.unwrap() {
            Err(OneTimeKeyRefusal::Changed { old, new }) => assert_eq!(
                (old.key_id.as_str(), old.key.get(), new.key.get()),
                ("k1", r#""a""#, r#""changed""#)
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    let counts = s.one_time_key_counts(alice(), "D1".into()).await.unwrap();
    assert_eq!(counts["alg"], 1, "k2 was not stored");
    assert!(
        s.fallback_keys(alice(), "D1".into())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.device_keys(alice(), "D1".into()).await.unwrap().is_none());
    assert_eq!(
        s.eager_share_fallback_keys(alice(), "D1".into())
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.current_position().await.unwrap(), before);
}

/// Uploads of one device that run at once are checked against each other's keys: one key ID
/// gets one key, and the cap holds.
pub(crate) async fn concurrent_uploads_of_one_device_are_checked_together(h: &Harness) {
    let s = with_alice(h).await;
    let store = Arc::new(s.clone());
    let same_id: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let upload = write(vec![key("alg", "k", &format!(r#""v{i}""#))], vec![]);
                store.write_keys(&upload).await.unwrap()
            })
        })
        .collect();
    let mut stored = 0;
    for task in same_id {
        match task.await.unwrap() {
            Ok(_) => stored += 1,
            Err(OneTimeKeyRefusal::Changed { .. }) => {}
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    assert_eq!(
        stored, 1,
        "one upload stored its key under k, the others were refused"
    );

    // 20 uploads of 300 keys: 16 fit under the cap of 5000 (with k), the other 4 do not.
    let many: Vec<_> = (0..20)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let keys = (0..300)
                    .map(|k| key("alg", &format!("t{t}k{k}"), r#""v""#))
                    .collect();
                store.write_keys(&write(keys, vec![])).await.unwrap()
            })
        })
        .collect();
    let (mut fitted, mut refused) = (0, 0);
    for task in many {
        match task.await.unwrap() {
            Ok(counts) => {
                assert!(counts["alg"] <= cairn_core::e2ee::keys::MAX_ONE_TIME_KEYS_PER_DEVICE);
                fitted += 1;
            }
            Err(OneTimeKeyRefusal::TooMany) => refused += 1,
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    assert_eq!((fitted, refused), (16, 4));
    assert_eq!(
        s.one_time_key_counts(alice(), "D1".into()).await.unwrap()["alg"],
        4801
    );
}
