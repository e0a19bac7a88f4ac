//! The federation queue, backoff, leases and inbound transactions.

use cairn_core::store::*;
use ruma::server_name;
use serde_json::value::RawValue;

use crate::{Harness, raw};

fn edu(destination: &str, n: u32) -> Outbound {
    Outbound {
        destination: destination.try_into().unwrap(),
        kind: ItemKind::Edu,
        json: RawValue::from_string(format!(r#"{{"edu_type":"m.test","content":{{"n":{n}}}}}"#))
            .unwrap(),
    }
}

fn batch(txn: &str, outbound: Vec<Outbound>) -> ToDeviceBatch {
    ToDeviceBatch {
        sender: "@alice:example.org".try_into().unwrap(),
        sender_device: "D1".into(),
        txn_id: txn.into(),
        event_type: "m.test".into(),
        messages: vec![],
        outbound,
    }
}

pub(crate) async fn queued_items_keep_their_order_until_delivered(h: &Harness) {
    let s = &h.store;
    let (a, b) = (server_name!("a.test"), server_name!("b.test"));
    s.send_to_device(&batch("t1", vec![edu("a.test", 1), edu("b.test", 2)]))
        .await
        .unwrap();
    s.send_to_device(&batch("t2", vec![edu("a.test", 3)]))
        .await
        .unwrap();
    // A repeated client transaction queues nothing.
    s.send_to_device(&batch("t2", vec![edu("a.test", 4)]))
        .await
        .unwrap();
    let names: Vec<String> = s
        .destinations_with_items()
        .await
        .unwrap()
        .into_iter()
        .map(|(d, _)| d.to_string())
        .collect();
    assert_eq!(names, ["a.test", "b.test"]);

    let store = h.reopen().await;
    let queued = store.queued(a, 10).await.unwrap();
    let contents: Vec<&str> = queued.iter().map(|q| q.json.get()).collect();
    assert!(queued.iter().all(|q| q.kind == ItemKind::Edu));
    assert_eq!(
        contents,
        [
            r#"{"edu_type":"m.test","content":{"n":1}}"#,
            r#"{"edu_type":"m.test","content":{"n":3}}"#
        ]
    );
    assert!(queued[0].seq < queued[1].seq);
    assert_eq!(store.queued(a, 1).await.unwrap().len(), 1);
    store.dequeue(a, &[queued[0].seq]).await.unwrap();
    assert_eq!(store.queued(a, 10).await.unwrap()[0].seq, queued[1].seq);
    store.dequeue(a, &[queued[1].seq]).await.unwrap();
    let left = store.destinations_with_items().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, b);
}

pub(crate) async fn backoff_leases_and_inbound_transactions_persist(h: &Harness) {
    let s = &h.store;
    let a = server_name!("a.test");
    assert_eq!(s.backoff(a).await.unwrap(), Backoff::default());
    let backoff = Backoff {
        retry_after_ms: 5_000,
        interval_ms: 2_000,
    };
    s.set_backoff(a, backoff).await.unwrap();

    assert!(s.lease_destination(a, "p1", 100, 200).await.unwrap());
    assert!(
        !s.lease_destination(a, "p2", 150, 300).await.unwrap(),
        "held"
    );
    assert!(
        s.lease_destination(a, "p1", 150, 300).await.unwrap(),
        "extended by its holder"
    );
    assert!(
        !s.lease_destination(a, "p2", 299, 400).await.unwrap(),
        "still held"
    );
    assert!(
        s.lease_destination(a, "p2", 300, 400).await.unwrap(),
        "expired"
    );
    s.release_destination(a, "p1").await.unwrap();
    assert!(
        !s.lease_destination(a, "p1", 301, 500).await.unwrap(),
        "only the holder releases"
    );
    s.release_destination(a, "p2").await.unwrap();
    assert!(
        s.lease_destination(a, "p1", 301, 500).await.unwrap(),
        "released"
    );
    assert_eq!(
        s.backoff(a).await.unwrap(),
        backoff,
        "leases leave the backoff alone"
    );

    assert_eq!(s.inbound_transaction(a, "t").await.unwrap(), None);
    s.record_inbound_transaction(a, "t", "{}").await.unwrap();
    let store = h.reopen().await;
    assert_eq!(store.backoff(a).await.unwrap(), backoff);
    assert_eq!(
        store.inbound_transaction(a, "t").await.unwrap().as_deref(),
        Some("{}")
    );
    assert_eq!(
        store
            .inbound_transaction(server_name!("b.test"), "t")
            .await
            .unwrap(),
        None
    );
}

/// A remote device list in order moves forward only: a fetched list older than an update applied
/// meanwhile is not written; a stale list takes any fetched one; a forgotten list is gone.
pub(crate) async fn remote_device_lists_only_move_forward(h: &Harness) {
    let store = &h.store;
    let bob = ruma::user_id!("@bob:b.test");
    let list = |stream_id: u64, devices: &[&str]| RemoteDeviceList {
        user_id: bob.to_owned(),
        stream_id,
        stale: false,
        devices: devices
            .iter()
            .map(|d| raw(&format!(r#"{{"device_id":"{d}"}}"#)))
            .collect(),
        master_key: Some(raw(r#"{"user_id":"@bob:b.test","usage":["master"]}"#)),
        self_signing_key: None,
    };
    assert!(
        store
            .replace_remote_device_list(&list(5, &["A"]))
            .await
            .unwrap()
            .is_some()
    );
    store
        .apply_remote_device_update(bob, "B", Some(&raw(r#"{"device_id":"B"}"#)), 7, false)
        .await
        .unwrap();
    assert!(
        store
            .replace_remote_device_list(&list(6, &["A"]))
            .await
            .unwrap()
            .is_none(),
        "older than what is cached"
    );
    let cached = store.remote_device_list(bob).await.unwrap().unwrap();
    assert_eq!(
        (cached.stream_id, cached.devices.len(), cached.stale),
        (7, 2, false)
    );
    assert!(cached.master_key.is_some());
    store.mark_remote_device_list_stale(bob).await.unwrap();
    assert_eq!(
        store.stale_remote_device_lists().await.unwrap(),
        [bob.to_owned()]
    );
    assert!(
        store
            .replace_remote_device_list(&list(3, &["C"]))
            .await
            .unwrap()
            .is_some()
    );
    let cached = store.remote_device_list(bob).await.unwrap().unwrap();
    assert_eq!(
        (cached.stream_id, cached.devices.len(), cached.stale),
        (3, 1, false)
    );
    assert_eq!(store.devices_with_cached_fallback_keys().await.unwrap(), 0);
    assert!(
        store
            .remote_device_lists_to_refresh(1_000_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "no shared fallback keys, nothing to keep confirmed"
    );
    let sharing = raw(r#"{"device_id":"F","org.matrix.msc4081.fallback_keys":{"a:b":{}}}"#);
    store
        .apply_remote_device_update(bob, "F", Some(&sharing), 10, false)
        .await
        .unwrap();
    assert_eq!(store.devices_with_cached_fallback_keys().await.unwrap(), 1);

    // A list holding shared keys comes up for a refresh when not fetched whole since the cutoff.
    let to_refresh =
        |before: u64, limit: usize| store.remote_device_lists_to_refresh(before, limit);
    assert_eq!(to_refresh(1_000, 10).await.unwrap(), [bob.to_owned()]);
    store.remote_device_list_fetched(bob, 2_000).await.unwrap();
    assert!(to_refresh(1_000, 10).await.unwrap().is_empty());
    assert_eq!(to_refresh(3_000, 10).await.unwrap(), [bob.to_owned()]);
    assert!(to_refresh(3_000, 0).await.unwrap().is_empty());

    // A recheck mark (MSC4081 decision 19) is kept for cached users only, survives a fetched
    // list replacing the cached one, and is cleared when the recheck is done.
    let carol = ruma::user_id!("@carol:b.test");
    let to_recheck = || store.remote_device_lists_to_recheck();
    store
        .mark_remote_device_lists_for_recheck(&[bob.to_owned(), carol.to_owned()])
        .await
        .unwrap();
    assert_eq!(to_recheck().await.unwrap(), [bob.to_owned()]);
    store
        .replace_remote_device_list(&list(11, &["A"]))
        .await
        .unwrap();
    assert_eq!(to_recheck().await.unwrap(), [bob.to_owned()]);
    store.remote_device_list_rechecked(bob).await.unwrap();
    assert!(to_recheck().await.unwrap().is_empty());
    store
        .mark_remote_device_lists_for_recheck(&[bob.to_owned()])
        .await
        .unwrap();
    store.forget_remote_device_list(bob).await.unwrap();
    assert!(to_recheck().await.unwrap().is_empty());
    store
        .apply_remote_device_update(bob, "F", Some(&sharing), 12, false)
        .await
        .unwrap();
    store.forget_remote_device_list(bob).await.unwrap();
    assert_eq!(store.devices_with_cached_fallback_keys().await.unwrap(), 0);
    assert!(store.remote_device_list(bob).await.unwrap().is_none());
}
