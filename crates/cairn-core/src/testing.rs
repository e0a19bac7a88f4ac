//! Shared set-up for the rules' unit tests: a homeserver over the in-memory store.

use std::sync::Arc;

use ruma::server_name;

use crate::accounts::{RegisterRequest, Requester};
use crate::clock::FakeClock;
use crate::memory_store::MemoryStore;
use crate::notify::LocalNotifier;
use crate::uia::AuthData;
use crate::{CoreConfig, Homeserver};

/// A homeserver for `example.org` with a fake clock.
pub fn homeserver(registration_open: bool) -> (Homeserver, Arc<FakeClock>) {
    let mut config = CoreConfig::new(server_name!("example.org").to_owned());
    config.registration_open = registration_open;
    let clock = Arc::new(FakeClock::new(1_700_000_000_000));
    let hs = Homeserver::new(
        config,
        Arc::new(MemoryStore::new()),
        clock.clone(),
        Arc::new(LocalNotifier::new()),
    );
    (hs, clock)
}

/// Registers `name` (password `pw`) with device `device` and returns it as a requester.
pub async fn user(hs: &Homeserver, name: &str, device: &str) -> Requester {
    let req = RegisterRequest {
        username: Some(name.into()),
        password: Some("pw".into()),
        device_id: Some(device.into()),
        auth: Some(AuthData {
            kind: Some("m.login.dummy".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let session = hs.register(req, false).await.unwrap().session.unwrap();
    Requester {
        user_id: session.user_id,
        device_id: session.device_id,
    }
}
