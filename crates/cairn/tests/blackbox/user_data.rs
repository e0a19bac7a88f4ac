//! Account data, profiles and filters.

use serde_json::json;

use crate::both_backends;
use crate::harness::{Backend, TestServer, enc};

both_backends!(account_data_round_trips, profiles, filters);

async fn account_data_round_trips(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let bob = c.register("bob", "pw").await;
    let path = format!(
        "/_matrix/client/v3/user/{}/account_data/org.example.test",
        enc(&alice.user_id)
    );
    let t = Some(alice.token.as_str());

    c.get(&path, t).await.assert_error(404, "M_NOT_FOUND");
    // The secret-storage probe that matrix-sdk makes after login must be a proper M_NOT_FOUND.
    let sdk = format!(
        "/_matrix/client/v3/user/{}/account_data/m.secret_storage.default_key",
        enc(&alice.user_id)
    );
    c.get(&sdk, t).await.assert_error(404, "M_NOT_FOUND");

    c.put(&path, t, json!({ "a": 1 })).await.ok();
    c.put(
        &path,
        t,
        json!({ "b": [true, null], "nested": { "x": "é" } }),
    )
    .await
    .ok();
    assert_eq!(
        c.get(&path, t).await.ok(),
        json!({ "b": [true, null], "nested": { "x": "é" } })
    );

    c.get(&path, Some(&bob.token))
        .await
        .assert_error(403, "M_FORBIDDEN");
    c.put(&path, Some(&bob.token), json!({}))
        .await
        .assert_error(403, "M_FORBIDDEN");
    c.put(&path, t, json!([1, 2]))
        .await
        .assert_error(400, "M_BAD_JSON");
    let push_rules = format!(
        "/_matrix/client/v3/user/{}/account_data/m.push_rules",
        enc(&alice.user_id)
    );
    c.put(&push_rules, t, json!({}))
        .await
        .assert_error(405, "M_BAD_JSON");
    c.get("/_matrix/client/v3/user/not-a-user/account_data/x", t)
        .await
        .assert_error(400, "M_INVALID_PARAM");
}

async fn profiles(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let bob = c.register("bob", "pw").await;
    let me = enc(&alice.user_id);
    let t = Some(alice.token.as_str());
    // A new account's display name is its localpart.
    assert_eq!(
        c.get(&format!("/_matrix/client/v3/profile/{me}"), None)
            .await
            .ok(),
        json!({ "displayname": "alice" })
    );

    c.put(
        &format!("/_matrix/client/v3/profile/{me}/displayname"),
        t,
        json!({ "displayname": "Alice A." }),
    )
    .await
    .ok();
    let avatar = json!({ "avatar_url": "mxc://localhost:8448/abc" });
    c.put(
        &format!("/_matrix/client/v3/profile/{me}/avatar_url"),
        t,
        avatar,
    )
    .await
    .ok();
    assert_eq!(
        c.get(&format!("/_matrix/client/v3/profile/{me}"), None)
            .await
            .ok(),
        json!({ "displayname": "Alice A.", "avatar_url": "mxc://localhost:8448/abc" })
    );
    assert_eq!(
        c.get(
            &format!("/_matrix/client/v3/profile/{me}/displayname"),
            None
        )
        .await
        .ok(),
        json!({ "displayname": "Alice A." })
    );
    let bob_path = format!(
        "/_matrix/client/v3/profile/{}/displayname",
        enc(&bob.user_id)
    );
    c.put(&bob_path, t, json!({ "displayname": "hacked" }))
        .await
        .assert_error(403, "M_FORBIDDEN");
    c.get(
        &format!(
            "/_matrix/client/v3/profile/{}/avatar_url",
            enc(&bob.user_id)
        ),
        None,
    )
    .await
    .assert_error(404, "M_NOT_FOUND");
    c.get(
        "/_matrix/client/v3/profile/%40nobody%3Alocalhost%3A8448",
        None,
    )
    .await
    .assert_error(404, "M_NOT_FOUND");
    let long = json!({ "displayname": "x".repeat(257) });
    c.put(
        &format!("/_matrix/client/v3/profile/{me}/displayname"),
        t,
        long,
    )
    .await
    .assert_error(400, "M_INVALID_PARAM");
}

async fn filters(backend: Backend) {
    let server = TestServer::start(backend).await;
    let c = server.client();
    let alice = c.register("alice", "pw").await;
    let bob = c.register("bob", "pw").await;
    let base = format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id));
    let t = Some(alice.token.as_str());
    let filter =
        json!({ "room": { "timeline": { "limit": 10 }, "state": { "lazy_load_members": true } } });
    let id = c.post(&base, t, filter.clone()).await.ok()["filter_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(!id.starts_with('{'));
    assert_eq!(c.get(&format!("{base}/{id}"), t).await.ok(), filter);
    c.get(&format!("{base}/999999"), t)
        .await
        .assert_error(404, "M_NOT_FOUND");
    c.get(&format!("{base}/{id}"), Some(&bob.token))
        .await
        .assert_error(403, "M_FORBIDDEN");
    c.post(&base, Some(&bob.token), filter)
        .await
        .assert_error(403, "M_FORBIDDEN");
    c.post(&base, t, json!("not an object"))
        .await
        .assert_error(400, "M_BAD_JSON");
}
