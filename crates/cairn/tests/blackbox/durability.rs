//! What a response acknowledged survives `kill -9`.

use serde_json::json;

use crate::both_backends;
use crate::harness::{Backend, Client, Session, TestServer, enc};

both_backends!(acknowledged_writes_survive_kill_9);

async fn acknowledged_writes_survive_kill_9(backend: Backend) {
    let mut server = TestServer::start(backend).await;
    let c = server.client();
    let registered = c.register("alice", "pw").await;
    let login: crate::harness::Session = c.login("alice", "pw", Some("LAPTOP")).await.ok().into();
    let path = format!(
        "/_matrix/client/v3/user/{}/account_data/org.example.k",
        enc(&login.user_id)
    );
    c.put(&path, Some(&login.token), json!({ "n": 1 }))
        .await
        .ok();
    c.post(
        "/_matrix/client/v3/logout",
        Some(&registered.token),
        json!({}),
    )
    .await
    .ok();
    // Key uploads and claims, group-committed on SQLite.
    let upload = "/_matrix/client/v3/keys/upload";
    let uploaded = c
        .post(
            upload,
            Some(&login.token),
            json!({
                "one_time_keys": {
                    "signed_curve25519:A": { "key": "a" },
                    "signed_curve25519:B": { "key": "b" },
                },
            }),
        )
        .await
        .ok();
    assert_eq!(uploaded["one_time_key_counts"]["signed_curve25519"], 2);
    assert_eq!(claim(&c, &login).await, ["signed_curve25519:A"]);

    server.kill_and_restart().await;
    let c = server.client();
    let me = c
        .get("/_matrix/client/v3/account/whoami", Some(&login.token))
        .await
        .ok();
    assert_eq!(me["device_id"], "LAPTOP");
    assert_eq!(
        c.get(&path, Some(&login.token)).await.ok(),
        json!({ "n": 1 })
    );
    c.get("/_matrix/client/v3/account/whoami", Some(&registered.token))
        .await
        .assert_error(401, "M_UNKNOWN_TOKEN");
    c.login("alice", "pw", None).await.ok();
    let counts = c.post(upload, Some(&login.token), json!({})).await.ok();
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 1);
    assert_eq!(
        claim(&c, &login).await,
        ["signed_curve25519:B"],
        "A was claimed before the kill"
    );
}

/// Claims one key of the session's device; the IDs of what came back.
async fn claim(c: &Client, login: &Session) -> Vec<String> {
    let body = json!({ "one_time_keys": { &login.user_id: { "LAPTOP": "signed_curve25519" } } });
    let claimed = c
        .post("/_matrix/client/v3/keys/claim", Some(&login.token), body)
        .await
        .ok();
    let keys = &claimed["one_time_keys"][&login.user_id]["LAPTOP"];
    keys.as_object()
        .into_iter()
        .flatten()
        .map(|(id, _)| id.clone())
        .collect()
}
