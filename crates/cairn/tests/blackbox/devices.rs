//! The device list and deletion behind user-interactive authentication.

use reqwest::Method;
use serde_json::{Value, json};

use crate::both_backends;
use crate::harness::{Backend, Client, Session, TestServer};

both_backends!(
    devices_are_listed_and_renamed,
    deleting_a_device_needs_the_password,
    bulk_deletion
);

async fn device_ids(c: &Client, token: &str) -> Vec<String> {
    let body = c.get("/_matrix/client/v3/devices", Some(token)).await.ok();
    body["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_owned())
        .collect()
}

fn password_auth(session: Option<&str>, password: &str) -> Value {
    let mut auth = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": "@alice:localhost:8448" },
        "password": password,
    });
    if let Some(session) = session {
        auth["session"] = session.into();
    }
    auth
}

async fn devices_are_listed_and_renamed(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let t = Some(alice.token.as_str());
    let listed = c.get("/_matrix/client/v3/devices", t).await.ok();
    let device = &listed["devices"][0];
    assert_eq!(device["device_id"], alice.device_id.as_str());
    assert!(device["last_seen_ts"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(device["last_seen_ip"], "127.0.0.1");

    let path = format!("/_matrix/client/v3/devices/{}", alice.device_id);
    c.put(&path, t, json!({ "display_name": "Work laptop" }))
        .await
        .ok();
    assert_eq!(c.get(&path, t).await.ok()["display_name"], "Work laptop");
    c.get("/_matrix/client/v3/devices/NOPE", t)
        .await
        .assert_error(404, "M_NOT_FOUND");
    c.put(
        "/_matrix/client/v3/devices/NOPE",
        t,
        json!({ "display_name": "x" }),
    )
    .await
    .assert_error(404, "M_NOT_FOUND");
    let long = "x".repeat(300);
    c.put(&path, t, json!({ "display_name": long }))
        .await
        .assert_error(400, "M_INVALID_PARAM");

    // Another user's device is invisible.
    let bob = c.register("bob", "pw").await;
    c.get(&path, Some(&bob.token))
        .await
        .assert_error(404, "M_NOT_FOUND");
}

async fn deleting_a_device_needs_the_password(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let other: Session = c.login("alice", "pw", Some("OTHER")).await.ok().into();
    let t = Some(alice.token.as_str());

    // No body at all: the challenge.
    let challenge = c
        .send(Method::DELETE, "/_matrix/client/v3/devices/OTHER", t, None)
        .await;
    assert_eq!(challenge.status, 401);
    assert_eq!(
        challenge.body["flows"],
        json!([{ "stages": ["m.login.password"] }])
    );
    let session = challenge.body["session"].as_str().unwrap().to_owned();

    let wrong = json!({ "auth": password_auth(Some(&session), "wrong") });
    let failed = c
        .send(
            Method::DELETE,
            "/_matrix/client/v3/devices/OTHER",
            t,
            Some(wrong),
        )
        .await;
    assert_eq!(
        (failed.status, failed.body["errcode"].as_str()),
        (401, Some("M_FORBIDDEN"))
    );
    assert_eq!(failed.body["session"], session.as_str());
    assert!(failed.body["flows"].is_array());
    c.get("/_matrix/client/v3/account/whoami", Some(&other.token))
        .await
        .ok();

    let right = json!({ "auth": password_auth(Some(&session), "pw") });
    c.send(
        Method::DELETE,
        "/_matrix/client/v3/devices/OTHER",
        t,
        Some(right),
    )
    .await
    .ok();
    c.get("/_matrix/client/v3/account/whoami", Some(&other.token))
        .await
        .assert_error(401, "M_UNKNOWN_TOKEN");
    assert_eq!(
        device_ids(&c, &alice.token).await,
        vec![alice.device_id.clone()]
    );

    // Deleting an unknown device succeeds once authenticated (nothing to do).
    let again = json!({ "auth": password_auth(None, "pw") });
    c.send(
        Method::DELETE,
        "/_matrix/client/v3/devices/GONE",
        t,
        Some(again),
    )
    .await
    .ok();
}

async fn bulk_deletion(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    for id in ["A", "B", "C"] {
        c.login("alice", "pw", Some(id)).await.ok();
    }
    let t = Some(alice.token.as_str());
    let body = json!({ "devices": ["A", "B"] });
    let challenge = c.post("/_matrix/client/v3/delete_devices", t, body).await;
    assert_eq!(challenge.status, 401);
    let session = challenge.body["session"].as_str().unwrap();
    let body = json!({ "devices": ["A", "B"], "auth": password_auth(Some(session), "pw") });
    c.post("/_matrix/client/v3/delete_devices", t, body)
        .await
        .ok();
    let mut left = device_ids(&c, &alice.token).await;
    left.sort();
    let mut expected = vec!["C".to_owned(), alice.device_id.clone()];
    expected.sort();
    assert_eq!(left, expected);
    c.post("/_matrix/client/v3/delete_devices", t, json!({}))
        .await
        .assert_error(400, "M_BAD_JSON");
}
