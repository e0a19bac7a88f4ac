//! What a response acknowledged survives `kill -9`.

use serde_json::json;

use crate::both_backends;
use crate::harness::{Backend, TestServer, enc};

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
}
