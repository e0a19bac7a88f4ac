//! Shared by the matrix-sdk tests: in-process Cairn servers (one, or several that federate
//! over loopback) and matrix-sdk clients that log in, sync and wait for decrypted messages, each
//! wait with a deadline.

#![allow(dead_code)]

use std::time::Duration;

use anyhow::{Context, Result};
use cairn::config::Config;
use cairn::serve::RunningServer;
use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::room::message::OriginalSyncRoomMessageEvent;
use matrix_sdk::ruma::{OwnedRoomId, RoomId};
use matrix_sdk::{Client, Room, RoomState};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Longest any single wait in the scenario may take.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Harness {
    pub server: RunningServer,
    pub base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// One server, `localhost:8448`, on free loopback ports.
    pub async fn start() -> Result<Self> {
        let bind = || std::net::TcpListener::bind("127.0.0.1:0");
        Self::start_on("localhost:8448", bind()?, bind()?, Default::default()).await
    }

    /// Servers named `names` that reach each other by static routes, TLS checks off.
    pub async fn start_federated(names: &[&str]) -> Result<Vec<Self>> {
        let bind = || std::net::TcpListener::bind("127.0.0.1:0");
        let mut listeners = Vec::new();
        for _ in names {
            listeners.push((bind()?, bind()?));
        }
        let routes: std::collections::BTreeMap<String, String> = names
            .iter()
            .zip(&listeners)
            .map(|(name, (_, fed))| Ok((name.to_string(), fed.local_addr()?.to_string())))
            .collect::<Result<_>>()?;
        let mut servers = Vec::new();
        for (name, (client, fed)) in names.iter().zip(listeners) {
            servers.push(Self::start_on(name, client, fed, routes.clone()).await?);
        }
        Ok(servers)
    }

    pub async fn start_on(
        name: &str,
        client: std::net::TcpListener,
        federation: std::net::TcpListener,
        routes: std::collections::BTreeMap<String, String>,
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = Config {
            server_name: name.to_owned(),
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        config.registration.open = true;
        config.metrics.enabled = false;
        config.federation.verify_tls = false;
        config.federation.static_routes = routes;
        config.federation.backoff_min_ms = 200;
        config.federation.backoff_max_ms = 2_000;
        let server = cairn::serve::start_on(&config, client, federation).await?;
        let base = format!("http://{}", server.client_addr);
        Ok(Self {
            server,
            base,
            http: reqwest::Client::new(),
            _dir: dir,
        })
    }

    pub async fn register(&self, name: &str) -> Result<()> {
        let body = json!({ "username": name, "password": "pw", "inhibit_login": true, "auth": { "type": "m.login.dummy" } });
        let res = self
            .http
            .post(format!("{}/_matrix/client/v3/register", self.base))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(
            res.status().is_success(),
            "register {name}: {}",
            res.text().await?
        );
        Ok(())
    }

    /// A logged-in matrix-sdk client with a handler that forwards decrypted texts.
    pub async fn login(
        &self,
        name: &str,
        device: &str,
    ) -> Result<(Client, mpsc::UnboundedReceiver<String>)> {
        login_at(&self.base, name, device).await
    }

    /// Raw JSON call with an access token.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Value,
    ) -> Result<Value> {
        let res = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        let status = res.status();
        let value: Value = res.json().await?;
        anyhow::ensure!(status.is_success(), "{path}: {status} {value}");
        Ok(value)
    }
}

/// Registers `name` (password `pw`) on any homeserver with open registration.
pub async fn register_at(base: &str, name: &str) -> Result<()> {
    let body = json!({ "username": name, "password": "pw", "inhibit_login": true, "auth": { "type": "m.login.dummy" } });
    let res = reqwest::Client::new()
        .post(format!("{base}/_matrix/client/v3/register"))
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(
        res.status().is_success(),
        "register {name}: {}",
        res.text().await?
    );
    Ok(())
}

/// A matrix-sdk client logged in to the homeserver at `base`, with a handler that forwards
/// decrypted texts.
pub async fn login_at(
    base: &str,
    name: &str,
    device: &str,
) -> Result<(Client, mpsc::UnboundedReceiver<String>)> {
    let client = Client::builder()
        .homeserver_url(base)
        .request_config(
            RequestConfig::new()
                .retry_limit(2)
                .timeout(Duration::from_secs(30)),
        )
        .build()
        .await?;
    client
        .matrix_auth()
        .login_username(name, "pw")
        .device_id(device)
        .initial_device_display_name(device)
        .await?;
    client
        .encryption()
        .wait_for_e2ee_initialization_tasks()
        .await;
    let (tx, rx) = mpsc::unbounded_channel();
    client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(ev.content.body().to_owned());
        }
    });
    // Two syncs: device keys and one-time keys go up, then the fallback key once the
    // server has said it supports them.
    sync(&client).await?;
    sync(&client).await?;
    Ok((client, rx))
}

/// One short sync.
pub async fn sync(client: &Client) -> Result<()> {
    client
        .sync_once(SyncSettings::default().timeout(Duration::from_millis(300)))
        .await?;
    Ok(())
}

/// Syncs `client` until its handler has seen `body`.
pub async fn expect_text(
    client: &Client,
    rx: &mut mpsc::UnboundedReceiver<String>,
    body: &str,
) -> Result<()> {
    tokio::time::timeout(DEADLINE, async {
        loop {
            sync(client).await?;
            while let Ok(seen) = rx.try_recv() {
                if seen == body {
                    return Ok(());
                }
            }
        }
    })
    .await
    .with_context(|| format!("{:?} never decrypted {body:?}", client.user_id()))?
}

/// Syncs until the room is known in `state`.
pub async fn wait_room(client: &Client, room_id: &RoomId, state: RoomState) -> Result<Room> {
    tokio::time::timeout(DEADLINE, async {
        loop {
            sync(client).await?;
            if let Some(room) = client.get_room(room_id)
                && room.state() == state
            {
                return Ok::<_, anyhow::Error>(room);
            }
        }
    })
    .await
    .context("room never reached the expected state")?
}

/// Opens an encrypted DM from `from` to `to` and returns it once `to` has joined.
pub async fn open_dm(from: &Client, to: &Client) -> Result<(Room, OwnedRoomId)> {
    let invitee = to.user_id().context("logged in")?;
    let room = from.create_dm(invitee).await?;
    let room_id = room.room_id().to_owned();
    wait_room(to, &room_id, RoomState::Invited).await?;
    to.join_room_by_id(&room_id).await?;
    wait_room(from, &room_id, RoomState::Joined).await?;
    // The sender must see the join before it shares the room key.
    tokio::time::timeout(DEADLINE, async {
        loop {
            sync(from).await?;
            // Read from the member events: Synapse sends a room summary only to clients that
            // lazy-load members.
            let member = room.get_member_no_sync(invitee).await?;
            if member.is_some_and(|m| *m.membership() == MembershipState::Join) {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await
    .context("the invitee's join never reached the sender")??;
    Ok((room, room_id))
}
