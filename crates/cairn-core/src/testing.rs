//! Shared set-up for the rules' unit tests: a homeserver over the in-memory store.

use std::sync::Arc;

use ruma::server_name;

use crate::accounts::{RegisterRequest, Requester};
use crate::clock::FakeClock;
use crate::memory_store::MemoryStore;
use crate::notify::LocalNotifier;
use crate::uia::AuthData;
use crate::{CoreConfig, EventSigner, Homeserver, Services};

/// A homeserver for `example.org` with a fake clock, that does not federate.
pub fn homeserver(registration_open: bool) -> (Homeserver, Arc<FakeClock>) {
    homeserver_with(registration_open, Arc::new(crate::federation::NoFederation))
}

/// A homeserver for `example.org` with a fake clock and the given transport to other servers.
pub fn homeserver_with(
    registration_open: bool,
    federation: Arc<dyn crate::federation::Federation>,
) -> (Homeserver, Arc<FakeClock>) {
    let mut config = CoreConfig::new(server_name!("example.org").to_owned());
    config.registration_open = registration_open;
    let clock = Arc::new(FakeClock::new(1_700_000_000_000));
    let services = Services {
        store: Arc::new(MemoryStore::new()),
        clock: clock.clone(),
        notifier: Arc::new(LocalNotifier::new()),
        signer: Arc::new(TestSigner::new("example.org")),
        federation,
    };
    (Homeserver::new(config, services), clock)
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

/// Signs events with a throw-away key.
pub struct TestSigner {
    server_name: ruma::OwnedServerName,
    key: ruma::signatures::Ed25519KeyPair,
}

impl TestSigner {
    /// A signer for `server_name` with a fresh key.
    pub fn new(server_name: &str) -> Self {
        let der = ruma::signatures::Ed25519KeyPair::generate();
        Self {
            server_name: server_name.try_into().unwrap(),
            key: ruma::signatures::Ed25519KeyPair::from_der(&der, "test".into()).unwrap(),
        }
    }
}

impl EventSigner for TestSigner {
    fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    fn hash_and_sign(
        &self,
        event: &mut ruma::CanonicalJsonObject,
        rules: &ruma::room_version_rules::RoomVersionRules,
    ) -> crate::Result<()> {
        ruma::signatures::hash_and_sign_event(
            self.server_name.as_str(),
            &self.key,
            event,
            &rules.redaction,
        )
        .map_err(|e| crate::Error::new(crate::ErrorKind::Internal, e.to_string()))
    }
}
