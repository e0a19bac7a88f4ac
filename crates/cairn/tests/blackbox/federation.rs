//! Federation between Cairn servers started in this test process on loopback ports, each with
//! a static route to the others (no discovery) and TLS verification off (self-signed
//! certificates).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use cairn::config::Config;
use cairn::serve::{RunningServer, start_on};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::harness::{Client, Session, enc, federation_http};

/// Servers that know each other's federation addresses.
struct Federation {
    servers: Vec<(RunningServer, TempDir)>,
}

impl Federation {
    /// Starts one server per name. `unreachable` names are routed to a closed port.
    async fn start(names: &[&str], unreachable: &[&str]) -> Self {
        let bind = || TcpListener::bind("127.0.0.1:0").unwrap();
        let listeners: Vec<_> = names.iter().map(|_| (bind(), bind())).collect();
        let mut routes: BTreeMap<String, String> = names
            .iter()
            .zip(&listeners)
            .map(|(name, (_, fed))| (name.to_string(), fed.local_addr().unwrap().to_string()))
            .collect();
        for name in unreachable {
            let closed = bind().local_addr().unwrap().to_string();
            routes.insert(name.to_string(), closed);
        }
        let mut servers = Vec::new();
        for (name, (client, fed)) in names.iter().zip(listeners) {
            let dir = tempfile::tempdir().unwrap();
            let mut config = Config {
                server_name: name.to_string(),
                data_dir: dir.path().to_owned(),
                ..Config::default()
            };
            config.registration.open = true;
            config.metrics.enabled = false;
            config.federation.verify_tls = false;
            config.federation.static_routes = routes.clone();
            servers.push((start_on(&config, client, fed).await.unwrap(), dir));
        }
        Self { servers }
    }

    fn client(&self, i: usize) -> Client {
        Client::at(format!("http://{}", self.servers[i].0.client_addr))
    }

    fn federation_base(&self, i: usize) -> String {
        format!("https://{}", self.servers[i].0.federation_addr)
    }

    async fn stop(self) {
        for (server, _dir) in self.servers {
            server.stop().await.unwrap();
        }
    }
}

fn device_keys(s: &Session) -> Value {
    json!({
        "user_id": s.user_id, "device_id": s.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{}", s.device_id): "c", format!("ed25519:{}", s.device_id): "e" },
        "signatures": {},
    })
}

#[tokio::test]
async fn keys_of_a_remote_user_are_queried_and_claimed_over_federation() {
    let fed = Federation::start(&["a.test", "b.test"], &["down.test"]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    a.post(
        "/_matrix/client/v3/keys/upload",
        Some(&alice.token),
        json!({
            "device_keys": device_keys(&alice),
            "one_time_keys": { "signed_curve25519:K1": { "key": "one" } },
            "fallback_keys": { "signed_curve25519:F": { "key": "fb", "fallback": true } },
        }),
    )
    .await
    .ok();

    let started = Instant::now();
    let query = b
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            json!({ "device_keys": { alice.user_id.as_str(): [], "@carol:down.test": [] }, "timeout": 5000 }),
        )
        .await
        .ok();
    assert_eq!(
        query["device_keys"][&alice.user_id][&alice.device_id],
        device_keys(&alice),
        "the keys as uploaded; no device name over federation"
    );
    assert_eq!(query["failures"]["down.test"]["status"], 503);
    assert!(query["failures"].get("a.test").is_none());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refused server fails fast"
    );

    let claim = |b: Client, token: String, user: String, device: String| async move {
        b.post(
            "/_matrix/client/v3/keys/claim",
            Some(&token),
            json!({ "one_time_keys": { user.as_str(): { device.as_str(): "signed_curve25519" } } }),
        )
        .await
        .ok()
    };
    let first = claim(
        b.clone(),
        bob.token.clone(),
        alice.user_id.clone(),
        alice.device_id.clone(),
    )
    .await;
    assert_eq!(
        first["one_time_keys"][&alice.user_id][&alice.device_id],
        json!({ "signed_curve25519:K1": { "key": "one" } })
    );
    let second = claim(
        b.clone(),
        bob.token.clone(),
        alice.user_id.clone(),
        alice.device_id.clone(),
    )
    .await;
    assert_eq!(
        second["one_time_keys"][&alice.user_id][&alice.device_id],
        json!({ "signed_curve25519:F": { "key": "fb", "fallback": true } }),
        "then the fallback key"
    );
    assert_eq!(second["failures"], json!({}));
    fed.stop().await;
}

#[tokio::test]
async fn unsigned_and_forged_requests_are_refused_and_signed_ones_verify() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let a = fed.client(0);
    let alice = a.register("alice", "pw").await;
    a.post(
        "/_matrix/client/v3/keys/upload",
        Some(&alice.token),
        json!({ "device_keys": device_keys(&alice) }),
    )
    .await
    .ok();

    // Unsigned, badly signed, and for another destination: all 401 M_UNAUTHORIZED.
    let http = federation_http();
    let url = format!(
        "{}/_matrix/federation/v1/user/devices/{}",
        fed.federation_base(0),
        enc(&alice.user_id)
    );
    let forged =
        r#"X-Matrix origin="b.test",destination="a.test",key="ed25519:a_abcd",sig="Zm9yZ2Vk""#;
    for authorization in [None, Some(forged)] {
        let mut req = http.get(&url);
        if let Some(value) = authorization {
            req = req.header("authorization", value);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 401);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["errcode"], "M_UNAUTHORIZED", "{body}");
    }

    // B's client asking for Alice's keys makes B sign a query to A, which A verifies with
    // B's key fetched from B's key server.
    let b = fed.client(1);
    let bob = b.register("bob", "pw").await;
    let query = b
        .post(
            "/_matrix/client/v3/keys/query",
            Some(&bob.token),
            json!({ "device_keys": { alice.user_id.as_str(): [alice.device_id.as_str()] } }),
        )
        .await
        .ok();
    assert_eq!(query["failures"], json!({}));
    assert_eq!(
        query["device_keys"][&alice.user_id][&alice.device_id]["user_id"],
        alice.user_id
    );
    fed.stop().await;
}
