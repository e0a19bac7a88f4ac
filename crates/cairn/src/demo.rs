//! `cairn demo`: MSC4081 in one command. Two servers start in this process on loopback, alice on
//! one and bob on the other share a room, the link is cut (bob's server stops), alice's key claim
//! is answered from her server's cache of bob's fallback key, alice sends, bob's server comes
//! back, and bob decrypts. Each step is printed as it happens.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_client::SystemClock;
use cairn_client::client::{Client as OlmClient, KeySource};
use serde_json::{Value, json};

use crate::config::Config;
use crate::serve::{RunningServer, start_on};

/// One demo server: its configuration and addresses, so that it can start again.
struct DemoServer {
    config: Config,
    addrs: (SocketAddr, SocketAddr),
    running: Option<RunningServer>,
}

impl DemoServer {
    async fn start(&mut self) -> anyhow::Result<()> {
        let client = TcpListener::bind(self.addrs.0)?;
        let federation = TcpListener::bind(self.addrs.1)?;
        self.running = Some(start_on(&self.config, client, federation).await?);
        Ok(())
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(server) = self.running.take() {
            server.stop().await?;
        }
        Ok(())
    }

    fn base(&self) -> String {
        format!("http://{}", self.addrs.0)
    }
}

fn say(step: &str) {
    println!("[demo] {step}");
}

/// Runs the demo in a temporary directory; fails if any step does not happen as described.
pub async fn run() -> anyhow::Result<()> {
    let dir = tempfile_dir()?;
    let names = ["a.demo", "b.demo"];
    let mut addrs = Vec::new();
    for _ in names {
        let client = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let federation = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        addrs.push((client, federation));
    }
    let routes: BTreeMap<String, String> = names
        .iter()
        .zip(&addrs)
        .map(|(name, (_, federation))| (name.to_string(), federation.to_string()))
        .collect();
    let mut servers = Vec::new();
    for (name, addrs) in names.iter().zip(addrs) {
        let mut config = Config {
            server_name: name.to_string(),
            data_dir: dir.join(name),
            ..Config::default()
        };
        config.registration.open = true;
        config.metrics.enabled = false;
        // Self-signed certificates on loopback: the demo does not check them.
        config.federation.verify_tls = false;
        config.federation.static_routes = routes.clone();
        config.federation.backoff_min_ms = 500;
        config.federation.backoff_max_ms = 2_000;
        let mut server = DemoServer {
            config,
            addrs,
            running: None,
        };
        server.start().await?;
        servers.push(server);
    }
    let (a, b) = (servers[0].base(), servers[1].base());
    say(&format!("a.demo listens at {a}, b.demo at {b}"));

    let http = reqwest::Client::new();
    for (base, user) in [(&a, "alice"), (&b, "bob")] {
        post(&http, base, "/_matrix/client/v3/register", None,
             json!({ "username": user, "password": "demo", "inhibit_login": true, "auth": { "type": "m.login.dummy" } })).await?;
    }
    let clock = Arc::new(SystemClock);
    let mut alice = OlmClient::login(&a, "alice", "demo", "ALICE", clock.clone()).await?;
    let mut bob = OlmClient::login(&b, "bob", "demo", "BOB", clock).await?;
    let fallback = bob
        .device()
        .current_fallback_key()
        .unwrap_or_default()
        .to_owned();
    say(&format!(
        "alice@a.demo and bob@b.demo logged in; bob's device uploaded fallback key {fallback} with eager_share_fallback_keys: true"
    ));

    let alice_token = login_token(&http, &a, "alice").await?;
    let bob_token = login_token(&http, &b, "bob").await?;
    let room = post(
        &http,
        &a,
        "/_matrix/client/v3/createRoom",
        Some(&alice_token),
        json!({ "preset": "public_chat" }),
    )
    .await?;
    let room_id = room["room_id"]
        .as_str()
        .context("createRoom answers a room_id")?;
    post(
        &http,
        &b,
        &format!(
            "/_matrix/client/v3/join/{}?server_name=a.demo",
            room_id.replace('!', "%21").replace(':', "%3A")
        ),
        Some(&bob_token),
        json!({}),
    )
    .await?;
    say("alice created a room and bob joined it: the servers now share a room");

    let a_hs = &servers[0]
        .running
        .as_ref()
        .context("a.demo runs")?
        .homeserver;
    let b_hs = &servers[1]
        .running
        .as_ref()
        .context("b.demo runs")?
        .homeserver;
    let bob_id = ruma::OwnedUserId::try_from("@bob:b.demo")?;
    let a_name = ruma::OwnedServerName::try_from("a.demo")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Every announcement delivered, and the whole list held: a first update (no prev_id)
        // makes a.demo fetch the list again, and the link must not be cut before that ends.
        let delivered = b_hs
            .store()
            .pending_device_updates(&a_name, 1)
            .await?
            .is_empty();
        let list = a_hs.store().remote_device_list(&bob_id).await?;
        let whole = delivered && list.as_ref().is_some_and(|l| !l.stale);
        let cached = whole
            && list.iter().flat_map(|l| &l.devices).any(|d| {
                let d: Value = serde_json::from_str(d.get()).unwrap_or_default();
                d["org.matrix.msc4081.fallback_keys"]
                    .as_object()
                    .is_some_and(|keys| keys.values().any(|k| k["key"] == fallback.as_str()))
            });
        if cached {
            break;
        }
        if Instant::now() > deadline {
            bail!("a.demo never received bob's fallback key");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    say(
        "b.demo sent bob's device list, with the fallback key, to a.demo, which checked its signature and cached it",
    );

    servers[1].stop().await?;
    say("the link is cut: b.demo is down");
    let started = Instant::now();
    let text = "hello bob, sent while b.demo was down";
    let source = alice.send("@bob:b.demo", "BOB", text, 10_000).await?;
    match source {
        KeySource::Cached(reason) => say(&format!(
            "alice's claim for bob's device was answered from a.demo's cache (reason: {reason}) in {} ms; she sent an Olm message built on it, which a.demo queued for b.demo",
            started.elapsed().as_millis()
        )),
        other => bail!("the claim was not answered from the cache: {other:?}"),
    }

    servers[1].start().await?;
    say("the link is back: b.demo started again, and a.demo delivers what it queued");
    let deadline = Instant::now() + Duration::from_secs(20);
    let received = loop {
        if let Some(message) = bob.sync(1_000).await?.pop() {
            break message;
        }
        if Instant::now() > deadline {
            bail!("bob received nothing");
        }
    };
    match received.text {
        Ok(decrypted) => say(&format!(
            "bob decrypted from {}: \"{decrypted}\"",
            received.sender
        )),
        Err(why) => bail!("bob could not decrypt: {why}"),
    }
    say(&format!(
        "bob's device rotated its fallback key after that message: now {}",
        bob.device().current_fallback_key().unwrap_or_default()
    ));
    for server in &mut servers {
        server.stop().await?;
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("cairn-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn login_token(http: &reqwest::Client, base: &str, user: &str) -> anyhow::Result<String> {
    let answer = post(http, base, "/_matrix/client/v3/login", None,
        json!({ "type": "m.login.password", "password": "demo", "identifier": { "type": "m.id.user", "user": user } })).await?;
    Ok(answer["access_token"]
        .as_str()
        .context("a token")?
        .to_owned())
}

async fn post(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> anyhow::Result<Value> {
    let mut request = http.post(format!("{base}{path}")).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status();
    let answer: Value = response.json().await?;
    if !status.is_success() {
        bail!("{path}: {status} {answer}");
    }
    Ok(answer)
}
