//! Discovery endpoints, capabilities, metrics, the key server and graceful shutdown.

use serde_json::json;

use crate::both_backends;
use crate::harness::{Backend, TestServer, federation_http};

both_backends!(
    discovery_and_capabilities,
    metrics_count_requests,
    key_server_answers_over_tls,
    sigterm_stops_cleanly
);

async fn discovery_and_capabilities(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let versions = c.get("/_matrix/client/versions", None).await.ok();
    let listed: Vec<_> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(listed.first(), Some(&"v1.1"));
    assert!(listed.contains(&"v1.11"));
    assert_eq!(versions["unstable_features"]["org.matrix.msc4081"], true);
    assert_eq!(
        c.get("/.well-known/matrix/client", None).await.ok(),
        json!({ "m.homeserver": { "base_url": server.base } })
    );
    assert_eq!(
        c.get("/.well-known/matrix/server", None).await.ok(),
        json!({ "m.server": "localhost:8448" })
    );
    let alice = c.register("alice", "pw").await;
    let caps = c
        .get("/_matrix/client/v3/capabilities", Some(&alice.token))
        .await
        .ok();
    assert_eq!(caps["capabilities"]["m.set_displayname"]["enabled"], true);
    assert_eq!(caps["capabilities"]["m.change_password"]["enabled"], false);
}

async fn metrics_count_requests(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    c.get("/_matrix/client/versions", None).await.ok();
    c.get("/_matrix/client/v3/account/whoami", None)
        .await
        .assert_error(401, "M_MISSING_TOKEN");
    let text = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"cairn_http_requests_total{endpoint="/_matrix/client/versions",method="GET",status="200"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"endpoint="/_matrix/client/v3/account/whoami",method="GET",status="401"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("cairn_http_request_duration_seconds_bucket"),
        "{text}"
    );
}

async fn key_server_answers_over_tls(backend: Backend) {
    let mut server = TestServer::start(backend).await;
    let http = federation_http();
    let url = format!("{}/_matrix/key/v2/server", server.federation);
    assert!(url.starts_with("https://"));
    let doc: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["server_name"], "localhost:8448");
    let key_id = doc["verify_keys"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    assert!(key_id.starts_with("ed25519:"));
    assert!(doc["signatures"]["localhost:8448"][&key_id].is_string());
    assert!(doc["valid_until_ts"].as_u64().unwrap() > 1_700_000_000_000);

    // The key is persisted: a restart serves the same one.
    server.kill_and_restart().await;
    let url = format!("{}/_matrix/key/v2/server", server.federation);
    let again: serde_json::Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(again["verify_keys"], doc["verify_keys"]);

    let unknown = http
        .get(format!(
            "{}/_matrix/federation/v1/nothing",
            server.federation
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let body: serde_json::Value = unknown.json().await.unwrap();
    assert_eq!(body["errcode"], "M_UNRECOGNIZED");
}

async fn sigterm_stops_cleanly(backend: Backend) {
    let mut server = TestServer::start(backend).await;
    server.client().register("alice", "pw").await;
    assert!(server.terminate().await, "exit status 0 after SIGTERM");
}
