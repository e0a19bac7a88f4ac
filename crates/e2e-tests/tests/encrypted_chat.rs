//! matrix-sdk clients chatting end-to-end encrypted through one Cairn server.
//!
//! One scenario, in order: an encrypted DM both ways; a second device of the recipient that logs
//! in later decrypts what is sent after it appeared; and a session built on the fallback key
//! (the recipient's one-time keys drained first) still decrypts. Every wait has a deadline.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use cairn::config::Config;
use cairn::serve::RunningServer;
use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::ruma::events::room::message::{
    OriginalSyncRoomMessageEvent, RoomMessageEventContent,
};
use matrix_sdk::ruma::{OwnedRoomId, RoomId};
use matrix_sdk::{Client, Room, RoomState};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Longest any single wait in the scenario may take.
const DEADLINE: Duration = Duration::from_secs(60);

struct Harness {
    server: RunningServer,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        config.listeners.client = "127.0.0.1:0".parse()?;
        config.listeners.federation = "127.0.0.1:0".parse()?;
        config.registration.open = true;
        config.metrics.enabled = false;
        let server = cairn::serve::start(&config).await?;
        let base = format!("http://{}", server.client_addr);
        Ok(Self {
            server,
            base,
            http: reqwest::Client::new(),
            _dir: dir,
        })
    }

    async fn register(&self, name: &str) -> Result<()> {
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
    async fn login(
        &self,
        name: &str,
        device: &str,
    ) -> Result<(Client, mpsc::UnboundedReceiver<String>)> {
        let client = Client::builder()
            .homeserver_url(&self.base)
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

    /// Raw JSON call with an access token.
    async fn call(
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

async fn sync(client: &Client) -> Result<()> {
    client
        .sync_once(SyncSettings::default().timeout(Duration::from_millis(300)))
        .await?;
    Ok(())
}

/// Syncs `client` until its handler has seen `body`.
async fn expect_text(
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
async fn wait_room(client: &Client, room_id: &RoomId, state: RoomState) -> Result<Room> {
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
async fn open_dm(from: &Client, to: &Client) -> Result<(Room, OwnedRoomId)> {
    let room = from.create_dm(to.user_id().context("logged in")?).await?;
    let room_id = room.room_id().to_owned();
    wait_room(to, &room_id, RoomState::Invited).await?;
    to.join_room_by_id(&room_id).await?;
    wait_room(from, &room_id, RoomState::Joined).await?;
    // The sender must see the join before it shares the room key.
    tokio::time::timeout(DEADLINE, async {
        loop {
            sync(from).await?;
            if room.joined_members_count() >= 2 {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await
    .context("the invitee's join never reached the sender")??;
    Ok((room, room_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_sdk_users_chat_encrypted() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(600), scenario())
        .await
        .context("the whole scenario timed out")?
}

async fn scenario() -> Result<()> {
    let h = Harness::start().await?;
    for name in ["alice", "bob", "carol"] {
        h.register(name).await?;
    }
    let (alice, mut alice_rx) = h.login("alice", "ALICE1").await?;
    let (bob, mut bob_rx) = h.login("bob", "BOB1").await?;

    // An encrypted DM, both ways.
    let (alice_room, room_id) = open_dm(&alice, &bob).await?;
    assert!(
        alice_room.latest_encryption_state().await?.is_encrypted(),
        "create_dm makes an encrypted room"
    );
    alice_room
        .send(RoomMessageEventContent::text_plain("hello bob"))
        .await?;
    expect_text(&bob, &mut bob_rx, "hello bob").await?;
    let bob_room = bob.get_room(&room_id).context("bob knows the room")?;
    bob_room
        .send(RoomMessageEventContent::text_plain("hello alice"))
        .await?;
    expect_text(&alice, &mut alice_rx, "hello alice").await?;

    // A second device of bob that logs in later decrypts what is sent after it appeared.
    let (bob2, mut bob2_rx) = h.login("bob", "BOB2").await?;
    sync(&alice).await?; // alice learns of the new device through device_lists.changed
    alice_room
        .send(RoomMessageEventContent::text_plain(
            "to both of bob's devices",
        ))
        .await?;
    expect_text(&bob2, &mut bob2_rx, "to both of bob's devices").await?;
    expect_text(&bob, &mut bob_rx, "to both of bob's devices").await?;

    // Carol's one-time keys are drained: alice's session is built on carol's fallback key.
    let (carol, mut carol_rx) = h.login("carol", "CAROL1").await?;
    let (carol_room_from_alice, _) = open_dm(&alice, &carol).await?;
    let carol_token = carol.access_token().context("carol is logged in")?;
    let alice_token = alice.access_token().context("alice is logged in")?;
    let claim =
        json!({ "one_time_keys": { "@carol:localhost:8448": { "CAROL1": "signed_curve25519" } } });
    let mut drained = 0;
    loop {
        let counts = h
            .call(
                reqwest::Method::POST,
                "/_matrix/client/v3/keys/upload",
                &carol_token,
                json!({}),
            )
            .await?;
        if counts["one_time_key_counts"]["signed_curve25519"] == 0 {
            break;
        }
        h.call(
            reqwest::Method::POST,
            "/_matrix/client/v3/keys/claim",
            &alice_token,
            claim.clone(),
        )
        .await?;
        drained += 1;
        if drained > 200 {
            bail!("carol's one-time keys never ran out");
        }
    }
    assert!(drained > 0, "carol had one-time keys to drain");
    let unused = |v: &Value| v["device_unused_fallback_key_types"].clone();
    let before = h
        .call(
            reqwest::Method::GET,
            "/_matrix/client/v3/sync",
            &carol_token,
            Value::Null,
        )
        .await;
    // (GET with a JSON body is ignored by the server; `call` always sends one.)
    let before = before?;
    assert_eq!(
        unused(&before),
        json!(["signed_curve25519"]),
        "carol has an unused fallback key"
    );

    carol_room_from_alice
        .send(RoomMessageEventContent::text_plain(
            "built on a fallback key",
        ))
        .await?;
    let after = h
        .call(
            reqwest::Method::GET,
            "/_matrix/client/v3/sync",
            &carol_token,
            Value::Null,
        )
        .await?;
    assert_eq!(
        unused(&after),
        json!([]),
        "alice's claim was answered with the fallback key"
    );
    expect_text(&carol, &mut carol_rx, "built on a fallback key").await?;

    h.server.stop().await?;
    Ok(())
}
