//! A matrix-sdk user on Cairn and one on a real Synapse chat end-to-end encrypted, both ways.
//!
//! It needs a running Synapse whose client API is at `$CAIRN_INTEROP_SYNAPSE`, with open
//! registration and loopback federation allowed; `scripts/synapse-interop/run.sh` starts one
//! and runs this test (it is ignored otherwise).

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{Harness, expect_text, login_at, open_dm, register_at};
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a running Synapse; run by scripts/synapse-interop/run.sh"]
async fn a_cairn_user_and_a_synapse_user_chat_encrypted() -> Result<()> {
    tokio::time::timeout(Duration::from_secs(300), scenario())
        .await
        .context("the whole scenario timed out")?
}

async fn scenario() -> Result<()> {
    let synapse = std::env::var("CAIRN_INTEROP_SYNAPSE")
        .context("set CAIRN_INTEROP_SYNAPSE to the Synapse client API base URL")?;
    // Synapse reaches a `localhost:PORT` server directly on that port, over TLS.
    let bind = || std::net::TcpListener::bind("127.0.0.1:0");
    let federation = bind()?;
    let name = format!("localhost:{}", federation.local_addr()?.port());
    let mut cairn = Harness::start_on(&name, bind()?, federation, Default::default()).await?;
    // Synapse keeps its users between runs.
    let bob_name = format!("bob{}", std::process::id());
    cairn.register("alice").await?;
    register_at(&synapse, &bob_name).await?;
    let (alice, mut alice_rx) = cairn.login("alice", "ALICE1").await?;
    let (bob, mut bob_rx) = login_at(&synapse, &bob_name, "BOB1").await?;

    // Cairn to Synapse: alice opens the DM; then Synapse to Cairn: bob opens one too.
    let (alice_room, room_id) = open_dm(&alice, &bob).await?;
    assert!(alice_room.latest_encryption_state().await?.is_encrypted());
    alice_room
        .send(RoomMessageEventContent::text_plain("hello bob on synapse"))
        .await?;
    expect_text(&bob, &mut bob_rx, "hello bob on synapse").await?;
    let bob_room = bob.get_room(&room_id).context("bob knows the room")?;
    bob_room
        .send(RoomMessageEventContent::text_plain("hello alice on cairn"))
        .await?;
    expect_text(&alice, &mut alice_rx, "hello alice on cairn").await?;

    let (bob_dm, _) = open_dm(&bob, &alice).await?;
    bob_dm
        .send(RoomMessageEventContent::text_plain(
            "a room synapse created",
        ))
        .await?;
    expect_text(&alice, &mut alice_rx, "a room synapse created").await?;
    cairn.stop().await?;
    Ok(())
}
