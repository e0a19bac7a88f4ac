//! matrix-sdk clients on two Cairn servers chatting end-to-end encrypted over federation:
//! alice on a.test opens an encrypted DM with bob on b.test; messages decrypt both ways.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{Harness, expect_text, open_dm};
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_sdk_users_on_two_servers_chat_encrypted() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(300), scenario())
        .await
        .context("the whole scenario timed out")?
}

async fn scenario() -> Result<()> {
    let mut servers = Harness::start_federated(&["a.test", "b.test"]).await?;
    let mut b = servers.pop().context("two servers")?;
    let mut a = servers.pop().context("two servers")?;
    a.register("alice").await?;
    b.register("bob").await?;
    let (alice, mut alice_rx) = a.login("alice", "ALICE1").await?;
    let (bob, mut bob_rx) = b.login("bob", "BOB1").await?;

    let (alice_room, room_id) = open_dm(&alice, &bob).await?;
    assert!(alice_room.latest_encryption_state().await?.is_encrypted());
    alice_room
        .send(RoomMessageEventContent::text_plain(
            "hello bob, across servers",
        ))
        .await?;
    expect_text(&bob, &mut bob_rx, "hello bob, across servers").await?;
    let bob_room = bob.get_room(&room_id).context("bob knows the room")?;
    bob_room
        .send(RoomMessageEventContent::text_plain(
            "hello alice, across servers",
        ))
        .await?;
    expect_text(&alice, &mut alice_rx, "hello alice, across servers").await?;

    a.stop().await?;
    b.stop().await?;
    Ok(())
}
