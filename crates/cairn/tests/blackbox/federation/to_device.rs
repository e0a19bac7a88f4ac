//! To-device messages over federation (peer-test area TD): a federated message wakes a
//! long-poll, arrives exactly once, reaches every device through `*`, is refused when too large,
//! and a message to many users is split across transactions.

use serde_json::{Value, json};

use super::{Federation, to_device_bodies};
use crate::harness::{Client, Session};

async fn send(
    client: &Client,
    from: &Session,
    txn: &str,
    messages: Value,
) -> crate::harness::Answer {
    client
        .put(
            &format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"),
            Some(&from.token),
            json!({ "messages": messages }),
        )
        .await
}

async fn since(client: &Client, session: &Session) -> String {
    client
        .get("/_matrix/client/v3/sync?timeout=0", Some(&session.token))
        .await
        .ok()["next_batch"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// One long-poll from `since`; returns the to-device contents and the next token.
async fn poll(client: &Client, session: &Session, since: &str) -> (Vec<Value>, String) {
    let sync = client
        .get(
            &format!("/_matrix/client/v3/sync?timeout=10000&since={since}"),
            Some(&session.token),
        )
        .await
        .ok();
    (
        to_device_bodies(&sync),
        sync["next_batch"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn federated_to_device_wakes_arrives_once_and_reaches_every_device() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let laptop = Session::from(b.login("bob", "pw", Some("LAPTOP")).await.ok());

    // TD-06/TD-07: the long-poll wakes with exactly the first message, then exactly the second.
    let token = since(&b, &bob).await;
    let waiting = tokio::spawn({
        let (b, bob) = (b.clone(), bob.clone());
        async move { poll(&b, &bob, &token).await }
    });
    let to_phone =
        |n: &str| json!({ bob.user_id.as_str(): { bob.device_id.as_str(): { "message": n } } });
    send(&a, &alice, "first", to_phone("first")).await.ok();
    let (got, token) = waiting.await.unwrap();
    assert_eq!(
        got,
        [json!({ "message": "first" })],
        "woken by the federated message"
    );
    send(&a, &alice, "second", to_phone("second")).await.ok();
    let (got, _) = poll(&b, &bob, &token).await;
    assert_eq!(
        got,
        [json!({ "message": "second" })],
        "no duplicate of the first"
    );

    // TD-10: `*` over federation reaches both of bob's devices.
    let tokens = [since(&b, &bob).await, since(&b, &laptop).await];
    send(
        &a,
        &alice,
        "wild",
        json!({ bob.user_id.as_str(): { "*": { "to": "all" } } }),
    )
    .await
    .ok();
    for (session, token) in [&bob, &laptop].into_iter().zip(tokens) {
        let (got, _) = poll(&b, session, &token).await;
        assert_eq!(got, [json!({ "to": "all" })], "{}", session.device_id);
    }

    // TD-13: too large for an EDU.
    let big = "a".repeat(65_536);
    send(
        &a,
        &alice,
        "big",
        json!({ bob.user_id.as_str(): { bob.device_id.as_str(): { "foo": big } } }),
    )
    .await
    .assert_error(413, "M_TOO_LARGE");
    fed.stop().await;
}

/// TD-15: one request to 101 users of one server becomes 101 EDUs, over at least two
/// transactions (100 EDUs at most in each); all are delivered.
#[tokio::test]
async fn a_message_to_many_remote_users_is_split_across_transactions() {
    let fed = Federation::start_proxied(&["a.test", "b.test"]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let token = since(&b, &bob).await;
    let mut messages = serde_json::Map::new();
    messages.insert(bob.user_id.clone(), json!({ "*": { "n": "bob" } }));
    for n in 0..100 {
        messages.insert(format!("@user{n}:b.test"), json!({ "*": { "n": n } }));
    }
    send(&a, &alice, "many", Value::Object(messages)).await.ok();
    let (got, _) = poll(&b, &bob, &token).await;
    assert_eq!(got, [json!({ "n": "bob" })]);
    let a_server = fed.servers[0].as_ref().unwrap();
    super::queue_drained(a_server, "b.test").await;
    // All 101 were queued at once (one store transaction), so the sender saw them together.
    let transactions = fed.proxies[1].seen("PUT /_matrix/federation/v1/send/");
    assert!(
        transactions >= 2,
        "101 EDUs in {transactions} transaction(s)"
    );
    fed.stop().await;
}
