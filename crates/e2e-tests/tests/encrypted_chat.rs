//! matrix-sdk clients chatting end-to-end encrypted through one Cairn server.
//!
//! One scenario, in order: an encrypted DM both ways; a second device of the recipient that logs
//! in later decrypts what is sent after it appeared; and a session built on the fallback key
//! (the recipient's one-time keys drained first) still decrypts. Every wait has a deadline.

mod common;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use common::{Harness, expect_text, open_dm, sync};
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_sdk_users_chat_encrypted() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(600), scenario())
        .await
        .context("the whole scenario timed out")?
}

async fn scenario() -> Result<()> {
    let mut h = Harness::start().await?;
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

    h.stop().await?;
    Ok(())
}
