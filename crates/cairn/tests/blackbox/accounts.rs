//! Registration, login, logout and whoami.

use serde_json::json;

use crate::both_backends;
use crate::harness::{Backend, TestServer};

both_backends!(
    registration_runs_the_dummy_flow,
    registration_refusals,
    registration_is_closed_by_default,
    login_variants,
    logout_revokes_one_device,
    logout_all_revokes_every_device,
);

const REGISTER: &str = "/_matrix/client/v3/register";

async fn registration_runs_the_dummy_flow(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let first = c
        .post(
            REGISTER,
            None,
            json!({ "username": "Alice", "password": "pw" }),
        )
        .await;
    assert_eq!(first.status, 401);
    assert_eq!(
        first.body["flows"],
        json!([{ "stages": ["m.login.dummy"] }])
    );
    assert!(first.body.get("errcode").is_none());
    let session = first.body["session"].as_str().unwrap();

    let body = json!({
        "username": "Alice", "password": "pw", "device_id": "PHONE",
        "initial_device_display_name": "Alice's phone",
        "auth": { "type": "m.login.dummy", "session": session },
    });
    let done = c.post(REGISTER, None, body).await.ok();
    assert_eq!(done["user_id"], "@alice:localhost:8448");
    assert_eq!(done["device_id"], "PHONE");
    let token = done["access_token"].as_str().unwrap();
    let me = c
        .get("/_matrix/client/v3/account/whoami", Some(token))
        .await
        .ok();
    assert_eq!(
        me,
        json!({ "user_id": "@alice:localhost:8448", "device_id": "PHONE", "is_guest": false })
    );
    let device = c
        .get("/_matrix/client/v3/devices/PHONE", Some(token))
        .await
        .ok();
    assert_eq!(device["display_name"], "Alice's phone");
    // The old r0 prefix reaches the same endpoints.
    assert_eq!(
        c.get("/_matrix/client/r0/account/whoami", Some(token))
            .await
            .ok()["user_id"],
        me["user_id"]
    );

    // inhibit_login: an account and no token.
    let body = json!({ "username": "bob", "password": "pw", "inhibit_login": true, "auth": { "type": "m.login.dummy" } });
    let done = c.post(REGISTER, None, body).await.ok();
    assert_eq!(done, json!({ "user_id": "@bob:localhost:8448" }));
    assert_eq!(c.login("bob", "pw", None).await.status, 200);
}

async fn registration_refusals(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    c.register("alice", "pw").await;
    let taken =
        json!({ "username": "ALICE", "password": "pw", "auth": { "type": "m.login.dummy" } });
    c.post(REGISTER, None, taken)
        .await
        .assert_error(400, "M_USER_IN_USE");
    for bad in ["al ice", "_reserved", "12345", "émile"] {
        let body =
            json!({ "username": bad, "password": "pw", "auth": { "type": "m.login.dummy" } });
        c.post(REGISTER, None, body)
            .await
            .assert_error(400, "M_INVALID_USERNAME");
    }
    c.post(&format!("{REGISTER}?kind=guest"), None, json!({}))
        .await
        .assert_error(403, "M_GUEST_ACCESS_FORBIDDEN");

    let available = |name: &str| format!("{REGISTER}/available?username={name}");
    assert_eq!(
        c.get(&available("carol"), None).await.ok(),
        json!({ "available": true })
    );
    c.get(&available("alice"), None)
        .await
        .assert_error(400, "M_USER_IN_USE");
    c.get(&available("bad%20name"), None)
        .await
        .assert_error(400, "M_INVALID_USERNAME");
    c.get(&format!("{REGISTER}/available"), None)
        .await
        .assert_error(400, "M_MISSING_PARAM");

    // A session from an earlier, finished registration cannot be reused.
    let first = c
        .post(
            REGISTER,
            None,
            json!({ "username": "dave", "password": "pw" }),
        )
        .await;
    let session = first.body["session"].as_str().unwrap().to_owned();
    let auth = json!({ "type": "m.login.dummy", "session": session });
    c.post(
        REGISTER,
        None,
        json!({ "username": "dave", "password": "pw", "auth": auth }),
    )
    .await
    .ok();
    c.post(
        REGISTER,
        None,
        json!({ "username": "erin", "password": "pw", "auth": auth }),
    )
    .await
    .assert_error(400, "M_UNKNOWN");
    // Nothing was half-written for the refused name.
    assert_eq!(
        c.get(&available("erin"), None).await.ok(),
        json!({ "available": true })
    );
}

async fn registration_is_closed_by_default(backend: Backend) {
    let server = TestServer::start_with(backend, &[]).await;
    let c = server.client();
    let body =
        json!({ "username": "alice", "password": "pw", "auth": { "type": "m.login.dummy" } });
    c.post(REGISTER, None, body)
        .await
        .assert_error(403, "M_FORBIDDEN");
    c.get(&format!("{REGISTER}/available?username=alice"), None)
        .await
        .assert_error(403, "M_FORBIDDEN");
}

async fn login_variants(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let registered = c.register("alice", "s3cret").await;
    assert_eq!(
        c.get("/_matrix/client/v3/login", None).await.ok(),
        json!({ "flows": [{ "type": "m.login.password" }] })
    );
    let by_localpart = c.login("alice", "s3cret", None).await.ok();
    assert_eq!(by_localpart["user_id"], "@alice:localhost:8448");
    assert_ne!(by_localpart["device_id"], registered.device_id.as_str());
    assert_eq!(by_localpart["home_server"], "localhost:8448");
    let by_user_id = c
        .login("@alice:localhost:8448", "s3cret", Some("LAPTOP"))
        .await
        .ok();
    assert_eq!(by_user_id["device_id"], "LAPTOP");
    // The deprecated top-level `user` field still works.
    let legacy = json!({ "type": "m.login.password", "user": "alice", "password": "s3cret" });
    c.post("/_matrix/client/v3/login", None, legacy).await.ok();
    // Logging in again with an existing device ID keeps that one device.
    c.login("alice", "s3cret", Some("LAPTOP")).await.ok();
    let token = by_user_id["access_token"].as_str().unwrap();
    let devices = c.get("/_matrix/client/v3/devices", Some(token)).await.ok();
    let ids: Vec<_> = devices["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].clone())
        .collect();
    assert_eq!(ids.iter().filter(|id| *id == "LAPTOP").count(), 1);
    assert_eq!(ids.len(), 4);

    c.login("alice", "wrong", None)
        .await
        .assert_error(403, "M_FORBIDDEN");
    c.login("nobody", "s3cret", None)
        .await
        .assert_error(403, "M_FORBIDDEN");
    c.login("@alice:elsewhere.org", "s3cret", None)
        .await
        .assert_error(403, "M_FORBIDDEN");
    let token_login = json!({ "type": "m.login.token", "token": "x" });
    c.post("/_matrix/client/v3/login", None, token_login)
        .await
        .assert_error(400, "M_UNKNOWN");
    c.post("/_matrix/client/v3/login", None, json!({ "password": "x" }))
        .await
        .assert_error(400, "M_BAD_JSON");
}

async fn logout_revokes_one_device(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let first = c.register("alice", "pw").await;
    let second: crate::harness::Session = c.login("alice", "pw", None).await.ok().into();
    c.post("/_matrix/client/v3/logout", Some(&first.token), json!({}))
        .await
        .ok();
    c.get("/_matrix/client/v3/account/whoami", Some(&first.token))
        .await
        .assert_error(401, "M_UNKNOWN_TOKEN");
    let devices = c
        .get("/_matrix/client/v3/devices", Some(&second.token))
        .await
        .ok();
    assert_eq!(
        devices["devices"].as_array().unwrap().len(),
        1,
        "the logged-out device is gone"
    );
    assert_eq!(
        devices["devices"][0]["device_id"],
        second.device_id.as_str()
    );
}

async fn logout_all_revokes_every_device(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let first = c.register("alice", "pw").await;
    let second: crate::harness::Session = c.login("alice", "pw", None).await.ok().into();
    let bob = c.register("bob", "pw").await;
    c.post(
        "/_matrix/client/v3/logout/all",
        Some(&second.token),
        json!({}),
    )
    .await
    .ok();
    for token in [&first.token, &second.token] {
        let answer = c
            .get("/_matrix/client/v3/account/whoami", Some(token))
            .await;
        answer.assert_error(401, "M_UNKNOWN_TOKEN");
        assert_eq!(answer.body["soft_logout"], false);
    }
    c.get("/_matrix/client/v3/account/whoami", Some(&bob.token))
        .await
        .ok();
    let again: crate::harness::Session = c.login("alice", "pw", None).await.ok().into();
    let devices = c
        .get("/_matrix/client/v3/devices", Some(&again.token))
        .await
        .ok();
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1);
}
