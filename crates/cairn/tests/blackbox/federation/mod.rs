//! Federation between Cairn servers started in this test process on loopback ports, each with
//! a static route to the others (no discovery) and TLS checked against a test CA (`ca`) that
//! signed each server's certificate, optionally through a fault-injecting proxy in front of each
//! federation listener (`proxy`). This module is the kit; `transport` tests signing, keys, to-device and
//! the queue, `rooms` tests rooms, invites and queries across servers, `device_lists` device
//! lists across servers, `faults` what the proxy's faults do.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use cairn::config::Config;
use cairn::serve::{RunningServer, start_on};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::harness::{Backend, Client, Session};

/// Servers that know each other's federation addresses.
struct Federation {
    servers: Vec<Option<RunningServer>>,
    configs: Vec<Config>,
    addrs: Vec<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// One per server when started with [`Self::start_proxied`]; other servers reach server
    /// `i` only through `proxies[i]`.
    proxies: Vec<proxy::FaultProxy>,
    /// Signed every server's certificate; trusted by every server.
    ca: ca::TestCa,
    _dirs: Vec<TempDir>,
    _databases: Vec<cairn_store::testing::TempDatabase>,
}

impl Federation {
    /// Starts one server per name. `unreachable` names are routed to a closed port. Backoff is
    /// short: 100 ms after the first failure, at most 1 s.
    async fn start(names: &[&str], unreachable: &[&str]) -> Self {
        Self::launch(Backend::Sqlite, names, unreachable, false).await
    }

    /// [`Self::start`], each server on a database of its own on `backend`.
    async fn start_on(backend: Backend, names: &[&str], unreachable: &[&str]) -> Self {
        Self::launch(backend, names, unreachable, false).await
    }

    /// [`Self::start`], each server behind a fault-injecting proxy.
    async fn start_proxied(names: &[&str]) -> Self {
        Self::launch(Backend::Sqlite, names, &[], true).await
    }

    async fn launch(backend: Backend, names: &[&str], unreachable: &[&str], proxied: bool) -> Self {
        let bind = || TcpListener::bind("127.0.0.1:0").unwrap();
        let listeners: Vec<_> = names.iter().map(|_| (bind(), bind())).collect();
        let mut routes: BTreeMap<String, String> = names
            .iter()
            .zip(&listeners)
            .map(|(name, (_, fed))| (name.to_string(), fed.local_addr().unwrap().to_string()))
            .collect();
        for name in unreachable {
            let closed = bind().local_addr().unwrap().to_string();
            routes.insert(name.to_string(), closed);
        }
        let mut fed = Self {
            servers: Vec::new(),
            configs: Vec::new(),
            addrs: Vec::new(),
            proxies: Vec::new(),
            ca: ca::TestCa::new(),
            _dirs: Vec::new(),
            _databases: Vec::new(),
        };
        let certificates: Vec<_> = names.iter().map(|name| fed.ca.issue(name)).collect();
        if proxied {
            for ((name, (_, federation)), (cert, key)) in
                names.iter().zip(&listeners).zip(&certificates)
            {
                let proxy =
                    proxy::FaultProxy::start(federation.local_addr().unwrap(), cert, key).await;
                routes.insert(name.to_string(), proxy.addr.to_string());
                fed.proxies.push(proxy);
            }
        }
        for ((name, (client, federation)), (cert, key)) in
            names.iter().zip(listeners).zip(certificates)
        {
            let dir = tempfile::tempdir().unwrap();
            let mut config = Config {
                server_name: name.to_string(),
                data_dir: dir.path().to_owned(),
                ..Config::default()
            };
            config.registration.open = true;
            config.metrics.enabled = false;
            config.tls.cert = Some(cert);
            config.tls.key = Some(key);
            config.federation.verify_tls = true;
            config.federation.ca_file = Some(fed.ca.ca_file.clone());
            config.federation.static_routes = routes.clone();
            config.federation.backoff_min_ms = 100;
            config.federation.backoff_max_ms = 1_000;
            if backend == Backend::Postgres {
                let db = cairn_store::testing::TempDatabase::create().await;
                config.database.url = Some(db.url().to_owned());
                fed._databases.push(db);
            }
            fed.addrs.push((
                client.local_addr().unwrap(),
                federation.local_addr().unwrap(),
            ));
            fed.servers
                .push(Some(start_on(&config, client, federation).await.unwrap()));
            fed.configs.push(config);
            fed._dirs.push(dir);
        }
        fed
    }

    fn client(&self, i: usize) -> Client {
        Client::at(format!("http://{}", self.addrs[i].0))
    }

    fn federation_base(&self, i: usize) -> String {
        format!("https://{}", self.addrs[i].1)
    }

    /// Stops server `i` (its ports are refused until it restarts).
    async fn stop_server(&mut self, i: usize) {
        if let Some(server) = self.servers[i].take() {
            server.stop().await.unwrap();
        }
    }

    /// Starts server `i` again on its ports and data.
    async fn restart_server(&mut self, i: usize) {
        let client = rebind(self.addrs[i].0).await;
        let federation = rebind(self.addrs[i].1).await;
        let server = start_on(&self.configs[i], client, federation)
            .await
            .unwrap();
        self.servers[i] = Some(server);
    }

    async fn stop(mut self) {
        for i in 0..self.servers.len() {
            self.stop_server(i).await;
        }
    }
}

/// Waits until `server` has nothing queued for `destination` (at most 10 s).
/// Binds `addr` again. While the server was down, another test's connection may have been
/// given the port as its local end; such a port is free again within moments.
async fn rebind(addr: std::net::SocketAddr) -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr) {
            Ok(listener) => return listener,
            Err(err)
                if err.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("cannot bind {addr} again: {err}"),
        }
    }
}

async fn queue_drained(server: &RunningServer, destination: &str) {
    let destination: ruma::OwnedServerName = destination.try_into().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let store = server.homeserver.store();
    while !store.queued(&destination, 1).await.unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the queue for {destination} never drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Syncs as `session` until `found` picks something out of a response, or 10 s pass.
async fn sync_until<T>(
    client: &Client,
    session: &Session,
    mut found: impl FnMut(&Value) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut since: Option<String> = None;
    loop {
        assert!(Instant::now() < deadline, "not seen within 10 s");
        let path = match &since {
            Some(since) => format!("/_matrix/client/v3/sync?timeout=1000&since={since}"),
            None => "/_matrix/client/v3/sync?timeout=0".to_owned(),
        };
        let res = client.get(&path, Some(&session.token)).await.ok();
        if let Some(value) = found(&res) {
            return value;
        }
        since = res["next_batch"].as_str().map(str::to_owned);
    }
}

fn to_device_bodies(sync: &Value) -> Vec<Value> {
    sync["to_device"]["events"]
        .as_array()
        .map(|events| events.iter().map(|e| e["content"].clone()).collect())
        .unwrap_or_default()
}

fn device_keys(s: &Session) -> Value {
    json!({
        "user_id": s.user_id, "device_id": s.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{}", s.device_id): "c", format!("ed25519:{}", s.device_id): "e" },
        "signatures": {},
    })
}

/// Creates a room as `session` with the `createRoom` body `body`; returns its ID.
async fn create_room(client: &Client, session: &Session, body: Value) -> String {
    client
        .post("/_matrix/client/v3/createRoom", Some(&session.token), body)
        .await
        .ok()["room_id"]
        .as_str()
        .expect("createRoom answers a room_id")
        .to_owned()
}

/// Waits until `session` sees a message with `body` in `room_id`'s timeline.
async fn see_message(client: &Client, session: &Session, room_id: &str, body: &str) {
    sync_until(client, session, |sync| {
        let events = sync["rooms"]["join"][room_id]["timeline"]["events"].as_array()?;
        events
            .iter()
            .any(|e| e["content"]["body"] == body)
            .then_some(())
    })
    .await
}

mod ca;
mod device_lists;
mod faults;
mod msc4081;
mod msc4081_client;
mod proxy;
mod rooms;
mod state;
mod to_device;
mod transport;
