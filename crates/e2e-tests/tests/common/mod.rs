//! Shared by the matrix-sdk tests: in-process Cairn servers (one, or several that federate
//! over loopback) and matrix-sdk clients that log in, sync and wait for decrypted messages, each
//! wait with a deadline.

#![allow(dead_code)]

use std::time::Duration;

use anyhow::{Context, Result};
use cairn::config::Config;
use cairn::serve::RunningServer;
use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::ruma::events::room::encrypted::OriginalSyncRoomEncryptedEvent;
use matrix_sdk::ruma::events::room::member::MembershipState;
use matrix_sdk::ruma::events::room::message::OriginalSyncRoomMessageEvent;
use matrix_sdk::ruma::{OwnedRoomId, RoomId};
use matrix_sdk::{Client, Room, RoomState};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// What a client's channel carries for a room message it could not decrypt.
pub const UNDECRYPTABLE: &str = "<unable to decrypt>";

/// Longest any single wait in the scenario may take.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Harness {
    server: Option<RunningServer>,
    pub base: String,
    config: Config,
    addrs: (std::net::SocketAddr, std::net::SocketAddr),
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
        Self::start_federated_with(names, |_| {}).await
    }

    /// [`Self::start_federated`], with `configure` applied to each server's configuration.
    pub async fn start_federated_with(
        names: &[&str],
        configure: impl Fn(&mut Config),
    ) -> Result<Vec<Self>> {
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
            servers.push(Self::start_with(name, client, fed, routes.clone(), &configure).await?);
        }
        Ok(servers)
    }

    pub async fn start_on(
        name: &str,
        client: std::net::TcpListener,
        federation: std::net::TcpListener,
        routes: std::collections::BTreeMap<String, String>,
    ) -> Result<Self> {
        Self::start_with(name, client, federation, routes, &|_| {}).await
    }

    async fn start_with(
        name: &str,
        client: std::net::TcpListener,
        federation: std::net::TcpListener,
        routes: std::collections::BTreeMap<String, String>,
        configure: &dyn Fn(&mut Config),
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
        configure(&mut config);
        let addrs = (client.local_addr()?, federation.local_addr()?);
        let server = cairn::serve::start_on(&config, client, federation).await?;
        let base = format!("http://{}", server.client_addr);
        Ok(Self {
            server: Some(server),
            base,
            config,
            addrs,
            http: reqwest::Client::new(),
            _dir: dir,
        })
    }

    /// The running server.
    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("the server is running")
    }

    /// Stops the server (its ports refuse connections until it starts again).
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(server) = self.server.take() {
            server.stop().await?;
        }
        Ok(())
    }

    /// Starts the server again on its ports and data.
    pub async fn restart(&mut self) -> Result<()> {
        let client = rebind(self.addrs.0).await?;
        let federation = rebind(self.addrs.1).await?;
        self.server = Some(cairn::serve::start_on(&self.config, client, federation).await?);
        Ok(())
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
    let undecryptable = tx.clone();
    client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(ev.content.body().to_owned());
        }
    });
    // What the client could not decrypt reaches handlers still encrypted.
    client.add_event_handler(move |_: OriginalSyncRoomEncryptedEvent| {
        let tx = undecryptable.clone();
        async move {
            let _ = tx.send(UNDECRYPTABLE.to_owned());
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

/// Binds `addr` again. While the server was down, another test's connection may have been given
/// the port as its local end; such a port is free again within moments.
async fn rebind(addr: std::net::SocketAddr) -> Result<std::net::TcpListener> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match std::net::TcpListener::bind(addr) {
            Err(err)
                if err.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            bound => return Ok(bound?),
        }
    }
}
