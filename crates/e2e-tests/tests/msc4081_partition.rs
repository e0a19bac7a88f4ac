//! MSC4081 with real clients: bob's new device on b.test has never talked to alice on a.test.
//! b.test goes down; alice sends into their encrypted room; b.test comes back. With eager
//! fallback-key sharing (`share_for_all_devices`, as today's clients send no opt-in) a.test
//! answers alice's key claim from the fallback key b.test shared, so the room key reaches the
//! new device once b.test is back and it decrypts. Without it the claim fails and the new
//! device is left unable to decrypt. Both outcomes are asserted.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::{DEADLINE, Harness, UNDECRYPTABLE, open_dm, sync};
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedUserId, device_id};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_while_the_recipients_server_is_down_decrypts_with_msc4081() -> Result<()> {
    let seen = tokio::time::timeout(Duration::from_secs(300), scenario(true))
        .await
        .context("the whole scenario timed out")??;
    assert_eq!(seen, "sent while b.test was down");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_msc4081_the_same_message_stays_undecryptable() -> Result<()> {
    let seen = tokio::time::timeout(Duration::from_secs(300), scenario(false))
        .await
        .context("the whole scenario timed out")??;
    assert_eq!(seen, UNDECRYPTABLE);
    Ok(())
}

/// Runs the partition and returns what bob's new device made of the message.
async fn scenario(msc4081: bool) -> Result<String> {
    let mut servers = Harness::start_federated_with(&["a.test", "b.test"], |config| {
        config.msc4081.share_for_all_devices = msc4081;
    })
    .await?;
    let mut b = servers.pop().context("two servers")?;
    let mut a = servers.pop().context("two servers")?;
    a.register("alice").await?;
    b.register("bob").await?;
    let (alice, _) = a.login("alice", "ALICE1").await?;
    let (bob, _) = b.login("bob", "BOB1").await?;
    let (alice_room, _) = open_dm(&alice, &bob).await?;
    let bob_id: OwnedUserId = bob.user_id().context("logged in")?.to_owned();
    // The same ID as Cairn's ruma knows it.
    let bob_in_cairn = ruma::OwnedUserId::try_from(bob_id.as_str())?;

    // A new device of bob's, with a fallback key; alice's client learns of it.
    let (laptop, mut laptop_rx) = b.login("bob", "LAPTOP").await?;
    let fallback_cached = |list: &cairn_core::store::RemoteDeviceList| {
        list.devices.iter().any(|d| {
            let d: serde_json::Value = serde_json::from_str(d.get()).unwrap_or_default();
            d["device_id"] == "LAPTOP"
                && (!msc4081 || d["org.matrix.msc4081.fallback_keys"].is_object())
        })
    };
    tokio::time::timeout(DEADLINE, async {
        loop {
            let list = a
                .server()
                .homeserver
                .store()
                .remote_device_list(&bob_in_cairn)
                .await?;
            if list.as_ref().is_some_and(fallback_cached) {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .context("a.test never cached the new device")??;
    tokio::time::timeout(DEADLINE, async {
        loop {
            sync(&alice).await?;
            if alice
                .encryption()
                .get_device(&bob_id, device_id!("LAPTOP"))
                .await?
                .is_some()
            {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await
    .context("alice's client never saw the new device")??;

    // b.test is down while alice sends; her server queues what it cannot deliver.
    b.stop().await?;
    alice_room
        .send(RoomMessageEventContent::text_plain(
            "sent while b.test was down",
        ))
        .await?;
    b.restart().await?;

    // Everything a.test queued for b.test is delivered; then the laptop syncs it all.
    let b_name: ruma::OwnedServerName = "b.test".try_into()?;
    tokio::time::timeout(DEADLINE, async {
        while !a
            .server()
            .homeserver
            .store()
            .queued(&b_name, 1)
            .await?
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("a.test never delivered its queue")??;
    let outcome = tokio::time::timeout(DEADLINE, async {
        let mut undecryptable = false;
        loop {
            sync(&laptop).await?;
            while let Ok(seen) = laptop_rx.try_recv() {
                if seen == UNDECRYPTABLE {
                    undecryptable = true;
                } else {
                    return Ok::<_, anyhow::Error>(seen);
                }
            }
            // The room key would have come with the queue just delivered: the message stays
            // as it is once the laptop has seen it and synced again.
            if undecryptable {
                sync(&laptop).await?;
                while let Ok(seen) = laptop_rx.try_recv() {
                    if seen != UNDECRYPTABLE {
                        return Ok(seen);
                    }
                }
                return Ok(UNDECRYPTABLE.to_owned());
            }
        }
    })
    .await
    .context("the laptop never received the message")??;
    a.stop().await?;
    b.stop().await?;
    Ok(outcome)
}
