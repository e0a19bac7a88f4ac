//! Unit tests of to-device delivery and `/sync` assembly.

use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::e2ee::to_device::ToDeviceMessages;
use crate::testing::{homeserver, user};

fn messages(v: Value) -> ToDeviceMessages {
    serde_json::from_value(v).unwrap()
}

fn req(since: Option<SyncToken>, timeout_ms: u64) -> SyncRequest {
    SyncRequest {
        since,
        timeout: Duration::from_millis(timeout_ms),
        filter: Default::default(),
    }
}

fn contents(res: &SyncResponse) -> Vec<String> {
    res.to_device
        .iter()
        .map(|m| m.content.get().to_owned())
        .collect()
}

#[tokio::test]
async fn to_device_messages_are_delivered_once_in_order_and_deduplicated() {
    let (hs, _) = homeserver(true);
    let alice = user(&hs, "alice", "A1").await;
    let bob = user(&hs, "bob", "B1").await;
    let initial = hs.sync(&bob, req(None, 0)).await.unwrap();
    assert!(initial.to_device.is_empty());

    for (txn, n) in [("t1", 1), ("t2", 2), ("t1", 99)] {
        let m = messages(json!({ bob.user_id.as_str(): { "B1": { "n": n } } }));
        hs.send_to_device(&alice, "m.test", txn, m).await.unwrap();
    }
    let res = hs
        .sync(&bob, req(Some(initial.next_batch), 0))
        .await
        .unwrap();
    assert_eq!(
        contents(&res),
        vec![r#"{"n":1}"#, r#"{"n":2}"#],
        "t1 repeated was dropped"
    );
    assert_eq!(res.to_device[0].sender, alice.user_id);
    assert_eq!(res.to_device[0].event_type, "m.test");

    // Not acknowledged yet: a retry with the same token gets them again.
    let again = hs
        .sync(&bob, req(Some(initial.next_batch), 0))
        .await
        .unwrap();
    assert_eq!(contents(&again), contents(&res));
    // Acknowledged by the next token: gone.
    let after = hs.sync(&bob, req(Some(res.next_batch), 0)).await.unwrap();
    assert!(after.to_device.is_empty());
    let retried_old = hs
        .sync(&bob, req(Some(initial.next_batch), 0))
        .await
        .unwrap();
    assert!(
        retried_old.to_device.is_empty(),
        "deleted once acknowledged"
    );
}

#[tokio::test]
async fn wildcards_reach_every_device_and_named_devices_win() {
    let (hs, _) = homeserver(true);
    let alice = user(&hs, "alice", "A1").await;
    let bob = user(&hs, "bob", "B1").await;
    let session = hs
        .login(
            serde_json::from_value(json!({
                "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "bob" },
                "password": "pw", "device_id": "B2",
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let bob2 = crate::accounts::Requester {
        user_id: session.user_id,
        device_id: session.device_id,
    };
    let m = messages(
        json!({ bob.user_id.as_str(): { "*": { "to": "all" }, "B2": { "to": "b2" }, "GONE": { "to": "nobody" } } }),
    );
    hs.send_to_device(&alice, "m.test", "t1", m).await.unwrap();
    assert_eq!(
        contents(&hs.sync(&bob, req(None, 0)).await.unwrap()),
        vec![r#"{"to":"all"}"#]
    );
    assert_eq!(
        contents(&hs.sync(&bob2, req(None, 0)).await.unwrap()),
        vec![r#"{"to":"b2"}"#]
    );
}

#[tokio::test]
async fn at_most_a_hundred_messages_per_response() {
    let (hs, _) = homeserver(true);
    let alice = user(&hs, "alice", "A1").await;
    let bob = user(&hs, "bob", "B1").await;
    for i in 0..150 {
        let m = messages(json!({ bob.user_id.as_str(): { "B1": { "i": i } } }));
        hs.send_to_device(&alice, "m.test", &format!("t{i}"), m)
            .await
            .unwrap();
    }
    let first = hs.sync(&bob, req(None, 0)).await.unwrap();
    assert_eq!(first.to_device.len(), MAX_TO_DEVICE_PER_SYNC);
    let second = hs
        .sync(&bob, req(Some(first.next_batch), 30_000))
        .await
        .unwrap();
    assert_eq!(second.to_device.len(), 50);
    assert_eq!(second.to_device[0].content.get(), r#"{"i":100}"#);
}

#[tokio::test]
async fn a_long_poll_wakes_for_a_message() {
    let (hs, _) = homeserver(true);
    let alice = user(&hs, "alice", "A1").await;
    let bob = user(&hs, "bob", "B1").await;
    let since = hs.sync(&bob, req(None, 0)).await.unwrap().next_batch;
    let waiting = tokio::spawn({
        let (hs, bob) = (hs.clone(), bob.clone());
        async move { hs.sync(&bob, req(Some(since), 60_000)).await.unwrap() }
    });
    let m = messages(json!({ bob.user_id.as_str(): { "B1": { "wake": true } } }));
    hs.send_to_device(&alice, "m.test", "t1", m).await.unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken well before the timeout")
        .unwrap();
    assert_eq!(contents(&res), vec![r#"{"wake":true}"#]);
}

#[tokio::test]
async fn key_counts_and_fallback_types_are_always_there() {
    let (hs, _) = homeserver(true);
    let alice = user(&hs, "alice", "A1").await;
    let res = hs.sync(&alice, req(None, 0)).await.unwrap();
    assert_eq!(res.one_time_key_counts.get("signed_curve25519"), Some(&0));
    assert!(res.unused_fallback_key_types.is_empty());
    let up = serde_json::from_value(json!({ "fallback_keys": { "signed_curve25519:f": "k" }, "one_time_keys": { "signed_curve25519:o": "k" } })).unwrap();
    hs.upload_keys(&alice, up).await.unwrap();
    let res = hs.sync(&alice, req(Some(res.next_batch), 0)).await.unwrap();
    assert_eq!(res.one_time_key_counts.get("signed_curve25519"), Some(&1));
    assert_eq!(
        res.unused_fallback_key_types,
        vec!["signed_curve25519".to_owned()]
    );
}

#[tokio::test]
async fn own_device_changes_and_account_data_appear_incrementally() {
    let (hs, _) = homeserver(true);
    let alice = user(&hs, "alice", "A1").await;
    let first = hs.sync(&alice, req(None, 0)).await.unwrap();
    assert!(
        first.device_lists_changed.is_empty(),
        "not on an initial sync"
    );
    hs.rename_device(&alice.user_id, &alice.device_id, Some("renamed"))
        .await
        .unwrap();
    let content = serde_json::value::to_raw_value(&json!({ "x": 1 })).unwrap();
    hs.put_account_data(&alice.user_id, &alice.user_id, "org.example", &content)
        .await
        .unwrap();
    let res = hs
        .sync(&alice, req(Some(first.next_batch), 0))
        .await
        .unwrap();
    assert_eq!(res.device_lists_changed, vec![alice.user_id.clone()]);
    assert_eq!(res.account_data.len(), 1);
    assert_eq!(res.account_data[0].0, "org.example");
    let quiet = hs.sync(&alice, req(Some(res.next_batch), 0)).await.unwrap();
    assert!(quiet.device_lists_changed.is_empty() && quiet.account_data.is_empty());
    // An initial sync carries all account data.
    assert_eq!(
        hs.sync(&alice, req(None, 0))
            .await
            .unwrap()
            .account_data
            .len(),
        1
    );
}
