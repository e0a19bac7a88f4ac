//! Bad input always gets a Matrix error with the right status, never a 500.

use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::harness::{Backend, TestServer};

both_backends!(
    malformed_requests_get_matrix_errors,
    authentication_errors,
    oversized_bodies_are_refused
);

async fn malformed_requests_get_matrix_errors(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    c.get("/_matrix/client/v3/no/such/endpoint", None)
        .await
        .assert_error(404, "M_UNRECOGNIZED");
    c.get("/totally/elsewhere", None)
        .await
        .assert_error(404, "M_UNRECOGNIZED");
    c.send(Method::DELETE, "/_matrix/client/v3/login", None, None)
        .await
        .assert_error(405, "M_UNRECOGNIZED");
    c.send(Method::PUT, "/_matrix/client/versions", None, None)
        .await
        .assert_error(405, "M_UNRECOGNIZED");

    let login = "/_matrix/client/v3/login";
    for not_json in [
        &b"{not json"[..],
        b"",
        b"\xff\xfe",
        b"{\"type\": \"m.login.password\"",
    ] {
        c.raw(Method::POST, login, None, Some(not_json.to_vec()))
            .await
            .assert_error(400, "M_NOT_JSON");
    }
    for bad_shape in [
        json!([]),
        json!("x"),
        json!({ "type": 5 }),
        json!({ "type": "m.login.password", "identifier": "alice" }),
    ] {
        c.post(login, None, bad_shape)
            .await
            .assert_error(400, "M_BAD_JSON");
    }
    let register = "/_matrix/client/v3/register";
    c.post(register, None, json!({ "username": 12 }))
        .await
        .assert_error(400, "M_BAD_JSON");
    c.raw(Method::POST, register, None, Some(b"nope".to_vec()))
        .await
        .assert_error(400, "M_NOT_JSON");

    let alice = c.register("alice", "pw").await;
    let t = Some(alice.token.as_str());
    let path = format!("/_matrix/client/v3/devices/{}", alice.device_id);
    c.put(&path, t, json!({ "display_name": 3 }))
        .await
        .assert_error(400, "M_BAD_JSON");
    c.raw(Method::PUT, &path, t, Some(b"]".to_vec()))
        .await
        .assert_error(400, "M_NOT_JSON");
    // After all of that, the server still answers normally.
    c.get("/_matrix/client/v3/account/whoami", t).await.ok();
}

async fn authentication_errors(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let whoami = "/_matrix/client/v3/account/whoami";
    c.get(whoami, None)
        .await
        .assert_error(401, "M_MISSING_TOKEN");
    c.get(whoami, Some("cairn_forged"))
        .await
        .assert_error(401, "M_UNKNOWN_TOKEN");
    let alice = c.register("alice", "pw").await;
    // The deprecated query-string token is still accepted.
    let by_query = c
        .get(&format!("{whoami}?access_token={}", alice.token), None)
        .await
        .ok();
    assert_eq!(by_query["user_id"], alice.user_id.as_str());
    c.get("/_matrix/client/v3/capabilities", None)
        .await
        .assert_error(401, "M_MISSING_TOKEN");
}

async fn oversized_bodies_are_refused(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let path = format!(
        "/_matrix/client/v3/user/{}/account_data/big",
        crate::harness::enc(&alice.user_id)
    );
    let big = json!({ "blob": "x".repeat(2 * 1024 * 1024) });
    c.put(&path, Some(&alice.token), big)
        .await
        .assert_error(413, "M_TOO_LARGE");
    c.get(&path, Some(&alice.token))
        .await
        .assert_error(404, "M_NOT_FOUND");
}
