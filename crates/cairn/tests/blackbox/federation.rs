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
    servers: Vec<Option<RunningServer>>,
    configs: Vec<Config>,
    addrs: Vec<(std::net::SocketAddr, std::net::SocketAddr)>,
    _dirs: Vec<TempDir>,
}

impl Federation {
    /// Starts one server per name. `unreachable` names are routed to a closed port. Backoff is
    /// short: 100 ms after the first failure, at most 1 s.
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
        let mut fed = Self {
            servers: Vec::new(),
            configs: Vec::new(),
            addrs: Vec::new(),
            _dirs: Vec::new(),
        };
        for (name, (client, federation)) in names.iter().zip(listeners) {
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
            config.federation.backoff_min_ms = 100;
            config.federation.backoff_max_ms = 1_000;
            fed.addrs.push((
                client.local_addr().unwrap(),
                federation.local_addr().unwrap(),
            ));
            fed.servers
                .push(Some(start_on(&config, client, federation).await.unwrap()));
            fed.configs.push(config);
            fed._dirs.push(dir);
        }
        fed
    }

    fn client(&self, i: usize) -> Client {
        Client::at(format!("http://{}", self.addrs[i].0))
    }

    fn federation_base(&self, i: usize) -> String {
        format!("https://{}", self.addrs[i].1)
    }

    /// Stops server `i` (its ports are refused until it restarts).
    async fn stop_server(&mut self, i: usize) {
        if let Some(server) = self.servers[i].take() {
            server.stop().await.unwrap();
        }
    }

    /// Starts server `i` again on its ports and data.
    async fn restart_server(&mut self, i: usize) {
        let client = TcpListener::bind(self.addrs[i].0).unwrap();
        let federation = TcpListener::bind(self.addrs[i].1).unwrap();
        let server = start_on(&self.configs[i], client, federation)
            .await
            .unwrap();
        self.servers[i] = Some(server);
    }

    async fn stop(mut self) {
        for i in 0..self.servers.len() {
            self.stop_server(i).await;
        }
    }
}

/// Syncs as `session` until `found` picks something out of a response, or 10 s pass.
async fn sync_until<T>(
    client: &Client,
    session: &Session,
    mut found: impl FnMut(&Value) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut since: Option<String> = None;
    loop {
        assert!(Instant::now() < deadline, "not seen within 10 s");
        let path = match &since {
            Some(since) => format!("/_matrix/client/v3/sync?timeout=1000&since={since}"),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let res = client.get(&path, Some(&session.token)).await.ok();
        if let Some(value) = found(&res) {
            return value;
        }
        since = res["next_batch"].as_str().map(str::to_owned);
    }
}

fn to_device_bodies(sync: &Value) -> Vec<Value> {
    sync["to_device"]["events"]
        .as_array()
        .map(|events| events.iter().map(|e| e["content"].clone()).collect())
        .unwrap_or_default()
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

#[tokio::test]
async fn to_device_messages_cross_servers_and_wait_out_an_outage_in_order() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("cairn_federation=info")
        .with_test_writer()
        .try_init();
    let mut fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let send = |n: u32, txn: String| {
        let (a, alice, bob) = (a.clone(), alice.clone(), bob.clone());
        async move {
            let body = json!({ "messages": { bob.user_id.as_str(): { "*": { "n": n } } } });
            a.put(
                &format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"),
                Some(&alice.token),
                body,
            )
            .await
            .ok();
        }
    };

    send(0, "t0".into()).await;
    let first = sync_until(&b, &bob, |sync| {
        let events = sync["to_device"]["events"].as_array()?.clone();
        (!events.is_empty()).then_some(events)
    })
    .await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0]["sender"], alice.user_id);
    assert_eq!(first[0]["type"], "m.test");
    assert_eq!(first[0]["content"], json!({ "n": 0 }));

    // B goes down: messages queue on A, A backs off, and they arrive in order once B is back.
    fed.stop_server(1).await;
    for n in 1..=5 {
        send(n, format!("t{n}")).await;
    }
    // A repeated client transaction is not sent twice.
    send(99, "t5".into()).await;
    fed.restart_server(1).await;
    let b = fed.client(1);
    let mut seen: Vec<Value> = Vec::new();
    let all = sync_until(&b, &bob, |sync| {
        seen.extend(to_device_bodies(sync));
        (seen.len() >= 6).then(|| seen.clone())
    })
    .await;
    let numbers: Vec<u64> = all.iter().filter_map(|c| c["n"].as_u64()).collect();
    assert_eq!(numbers, [0, 1, 2, 3, 4, 5], "no loss, no repeat, in order");
    fed.stop().await;
}

#[tokio::test]
async fn a_retransmitted_transaction_is_applied_once() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let b = fed.client(1);
    let bob = b.register("bob", "pw").await;
    // The transaction is built and signed as a.test would, through a.test's own client.
    let a_server = fed.servers[0].as_ref().unwrap();
    let edu = json!({ "edu_type": "m.direct_to_device", "content": {
        "sender": "@alice:a.test", "type": "m.test", "message_id": "m1",
        "messages": { bob.user_id.as_str(): { "*": { "once": true } } },
    }});
    let foreign = json!({ "edu_type": "m.direct_to_device", "content": {
        "sender": "@mallory:c.test", "type": "m.test", "message_id": "m2",
        "messages": { bob.user_id.as_str(): { "*": { "forged": true } } },
    }});
    for _ in 0..2 {
        let answer = a_server
            .send_federation(
                "b.test",
                "PUT",
                "/_matrix/federation/v1/send/txn1",
                json!({ "origin": "a.test", "origin_server_ts": 0, "pdus": [], "edus": [edu, foreign] }),
            )
            .await
            .unwrap();
        assert_eq!(answer, json!({ "pdus": {} }));
    }
    let sync = b
        .get("/_matrix/client/v3/sync?timeout=0", Some(&bob.token))
        .await
        .ok();
    assert_eq!(
        to_device_bodies(&sync),
        [json!({ "once": true })],
        "delivered once; the EDU about another server's user is ignored"
    );
    fed.stop().await;
}

crate::both_backends!(queued_edus_survive_kill_9_of_the_sender);

/// A (the `cairn` binary) queues to-device messages for B while B is down, is killed with
/// SIGKILL and restarted; once B is back, everything queued arrives, in order.
async fn queued_edus_survive_kill_9_of_the_sender(backend: crate::harness::Backend) {
    let mut fed = Federation::start(&["b.test"], &[]).await;
    let b = fed.client(0);
    let bob = b.register("bob", "pw").await;
    fed.stop_server(0).await;

    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "[federation]\nverify_tls = false\nbackoff_min_ms = 100\nbackoff_max_ms = 500\n\
             [federation.static_routes]\n\"b.test\" = \"{}\"\n",
            fed.addrs[0].1
        ),
    )
    .unwrap();
    let path = config.path().display().to_string();
    let mut a = crate::harness::TestServer::start_with(
        backend,
        &["--open-registration", "--config", &path],
    )
    .await;
    let alice = a.client().register("alice", "pw").await;
    for n in 1..=3 {
        let body =
            json!({ "messages": { bob.user_id.as_str(): { bob.device_id.as_str(): { "n": n } } } });
        a.client()
            .put(
                &format!("/_matrix/client/v3/sendToDevice/m.test/t{n}"),
                Some(&alice.token),
                body,
            )
            .await
            .ok();
    }
    a.kill_and_restart().await;

    // B learns where A's (new) federation listener is, to fetch its key, and comes back.
    let a_federation = a.federation.trim_start_matches("https://").to_owned();
    fed.configs[0]
        .federation
        .static_routes
        .insert("localhost:8448".into(), a_federation);
    fed.restart_server(0).await;
    let mut seen: Vec<Value> = Vec::new();
    let all = sync_until(&fed.client(0), &bob, |sync| {
        seen.extend(to_device_bodies(sync));
        (seen.len() >= 3).then(|| seen.clone())
    })
    .await;
    assert_eq!(
        all,
        [json!({ "n": 1 }), json!({ "n": 2 }), json!({ "n": 3 })]
    );
    fed.stop().await;
}

/// Waits until `session` sees a message with `body` in `room_id`'s timeline.
async fn see_message(client: &Client, session: &Session, room_id: &str, body: &str) {
    sync_until(client, session, |sync| {
        let events = sync["rooms"]["join"][room_id]["timeline"]["events"].as_array()?;
        events
            .iter()
            .any(|e| e["content"]["body"] == body)
            .then_some(())
    })
    .await
}

#[tokio::test]
async fn a_user_joins_a_room_on_another_server_and_messages_flow_both_ways() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let room_id = a
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.token),
            json!({ "preset": "public_chat", "name": "across" }),
        )
        .await
        .ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.post(
        &format!(
            "/_matrix/client/v3/join/{}?server_name=a.test",
            enc(&room_id)
        ),
        Some(&bob.token),
        json!({}),
    )
    .await
    .ok();

    // Both servers agree on who is in the room, and B has the room's state.
    for (client, session) in [(&a, &alice), (&b, &bob)] {
        let members = client
            .get(
                &format!("/_matrix/client/v3/rooms/{}/joined_members", enc(&room_id)),
                Some(&session.token),
            )
            .await
            .ok();
        let mut joined: Vec<&String> = members["joined"].as_object().unwrap().keys().collect();
        joined.sort();
        assert_eq!(joined, [&alice.user_id, &bob.user_id]);
    }
    let name = b
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                enc(&room_id)
            ),
            Some(&bob.token),
        )
        .await
        .ok();
    assert_eq!(name["name"], "across");

    for (sender, from, to, reader, body) in [
        (&alice, &a, &b, &bob, "hello from a"),
        (&bob, &b, &a, &alice, "hello from b"),
    ] {
        from.put(
            &format!(
                "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                enc(&room_id),
                body.replace(' ', "_")
            ),
            Some(&sender.token),
            json!({ "msgtype": "m.text", "body": body }),
        )
        .await
        .ok();
        see_message(to, reader, &room_id, body).await;
    }
    fed.stop().await;
}

#[tokio::test]
async fn a_remote_invite_shows_in_sync_and_the_invitee_joins() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let room_id = a
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.token),
            json!({ "preset": "trusted_private_chat", "name": "private", "is_direct": true,
                    "invite": [bob.user_id] }),
        )
        .await
        .ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let invite = sync_until(&b, &bob, |sync| {
        sync["rooms"]["invite"][&room_id]["invite_state"]["events"]
            .as_array()
            .cloned()
    })
    .await;
    let member = invite
        .iter()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id)
        .expect("the invite itself");
    assert_eq!(member["sender"], alice.user_id);
    assert_eq!(member["content"]["is_direct"], true);
    assert!(
        invite
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "private"),
        "the stripped state the inviting server sent: {invite:?}"
    );

    // No server named: the invite says where the room is.
    b.post(
        &format!("/_matrix/client/v3/rooms/{}/join", enc(&room_id)),
        Some(&bob.token),
        json!({}),
    )
    .await
    .ok();
    b.put(
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/m1",
            enc(&room_id)
        ),
        Some(&bob.token),
        json!({ "msgtype": "m.text", "body": "thanks for the invite" }),
    )
    .await
    .ok();
    see_message(&a, &alice, &room_id, "thanks for the invite").await;
    fed.stop().await;
}

#[tokio::test]
async fn a_remote_key_change_reaches_local_room_mates() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let room_id = a
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.token),
            json!({ "preset": "public_chat" }),
        )
        .await
        .ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.post(
        &format!(
            "/_matrix/client/v3/join/{}?server_name=a.test",
            enc(&room_id)
        ),
        Some(&bob.token),
        json!({}),
    )
    .await
    .ok();
    let since = b
        .get("/_matrix/client/v3/sync?timeout=0", Some(&bob.token))
        .await
        .ok()["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    let update = |user: &str, stream_id: u64| {
        json!({ "edu_type": "m.device_list_update", "content": {
            "user_id": user, "device_id": "NEW", "stream_id": stream_id, "prev_id": [],
            "keys": {}, "deleted": false,
        }})
    };
    let a_server = fed.servers[0].as_ref().unwrap();
    a_server
        .send_federation(
            "b.test",
            "PUT",
            "/_matrix/federation/v1/send/dl1",
            json!({ "origin": "a.test", "origin_server_ts": 0, "pdus": [],
                    "edus": [update(&alice.user_id, 7), update("@mallory:c.test", 8)] }),
        )
        .await
        .unwrap();
    let sync = b
        .get(
            &format!("/_matrix/client/v3/sync?timeout=5000&since={since}"),
            Some(&bob.token),
        )
        .await
        .ok();
    assert_eq!(
        sync["device_lists"]["changed"],
        json!([alice.user_id]),
        "alice's change is seen; the EDU about c.test's user is ignored"
    );
    fed.stop().await;
}

#[tokio::test]
async fn events_are_served_only_to_servers_in_their_room() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let create = |name: &'static str| {
        let (a, alice) = (a.clone(), alice.clone());
        async move {
            a.post(
                "/_matrix/client/v3/createRoom",
                Some(&alice.token),
                json!({ "preset": "public_chat", "name": name }),
            )
            .await
            .ok()["room_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let shared = create("shared").await;
    let private = create("private").await;
    b.post(
        &format!(
            "/_matrix/client/v3/join/{}?server_name=a.test",
            enc(&shared)
        ),
        Some(&bob.token),
        json!({}),
    )
    .await
    .ok();
    let send = |room: String| {
        let (a, alice) = (a.clone(), alice.clone());
        async move {
            a.put(
                &format!(
                    "/_matrix/client/v3/rooms/{}/send/m.room.message/{}",
                    enc(&room),
                    enc(&room)
                ),
                Some(&alice.token),
                json!({ "msgtype": "m.text", "body": "x" }),
            )
            .await
            .ok()["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let in_shared = send(shared.clone()).await;
    let in_private = send(private.clone()).await;
    let b_server = fed.servers[1].as_ref().unwrap();
    let got = b_server
        .send_federation(
            "a.test",
            "GET",
            &format!("/_matrix/federation/v1/event/{}", enc(&in_shared)),
            Value::Null,
        )
        .await
        .unwrap();
    assert_eq!(got["origin"], "a.test");
    assert_eq!(got["pdus"][0]["room_id"], shared);
    assert_eq!(got["pdus"][0]["content"]["body"], "x");
    let refused = b_server
        .send_federation(
            "a.test",
            "GET",
            &format!("/_matrix/federation/v1/event/{}", enc(&in_private)),
            Value::Null,
        )
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("403"), "{refused}");
    fed.stop().await;
}

#[tokio::test]
async fn an_invite_from_another_server_can_be_declined() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let (a, b) = (fed.client(0), fed.client(1));
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let room_id = a
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.token),
            json!({ "preset": "private_chat", "invite": [bob.user_id] }),
        )
        .await
        .ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    sync_until(&b, &bob, |sync| {
        sync["rooms"]["invite"].get(&room_id).cloned()
    })
    .await;
    b.post(
        &format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)),
        Some(&bob.token),
        json!({}),
    )
    .await
    .ok();
    let member = a
        .get(
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                enc(&room_id),
                enc(&bob.user_id)
            ),
            Some(&alice.token),
        )
        .await
        .ok();
    assert_eq!(
        member["membership"], "leave",
        "the inviting server saw the decline"
    );
    fed.stop().await;
}

#[tokio::test]
async fn profile_and_directory_queries_are_answered_for_local_users_and_aliases() {
    let fed = Federation::start(&["a.test", "b.test"], &[]).await;
    let a = fed.client(0);
    let alice = a.register("alice", "pw").await;
    a.put(
        &format!(
            "/_matrix/client/v3/profile/{}/displayname",
            enc(&alice.user_id)
        ),
        Some(&alice.token),
        json!({ "displayname": "Alice A" }),
    )
    .await
    .ok();
    let room_id = a
        .post(
            "/_matrix/client/v3/createRoom",
            Some(&alice.token),
            json!({ "preset": "public_chat", "room_alias_name": "lobby" }),
        )
        .await
        .ok()["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = fed.servers[1].as_ref().unwrap();
    let ask =
        |path: String| async move { b.send_federation("a.test", "GET", &path, Value::Null).await };
    let profile = ask(format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        enc(&alice.user_id)
    ))
    .await
    .unwrap();
    assert_eq!(profile, json!({ "displayname": "Alice A" }));
    let name_only = ask(format!(
        "/_matrix/federation/v1/query/profile?user_id={}&field=avatar_url",
        enc(&alice.user_id)
    ))
    .await
    .unwrap();
    assert_eq!(name_only, json!({}));
    let unknown = ask("/_matrix/federation/v1/query/profile?user_id=%40nobody%3Aa.test".into())
        .await
        .unwrap_err();
    assert!(unknown.to_string().contains("404"), "{unknown}");
    let directory = ask(format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        enc("#lobby:a.test")
    ))
    .await
    .unwrap();
    assert_eq!(
        directory,
        json!({ "room_id": room_id, "servers": ["a.test"] })
    );
    // A third server's user is never looked up on its behalf.
    let relayed = ask("/_matrix/federation/v1/query/profile?user_id=%40x%3Ab.test".into())
        .await
        .unwrap_err();
    assert!(relayed.to_string().contains("404"), "{relayed}");

    // A client of b.test sees alice's profile through her server.
    let b_client = fed.client(1);
    let bob = b_client.register("bob", "pw").await;
    let seen = b_client
        .get(
            &format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id)),
            Some(&bob.token),
        )
        .await
        .ok();
    assert_eq!(seen["displayname"], "Alice A");
    fed.stop().await;
}
