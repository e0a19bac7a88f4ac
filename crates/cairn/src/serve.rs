//! `cairn serve`: open the store, load the identity, bind both listeners, run until a signal.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum_server::tls_rustls::RustlsConfig;
use cairn_api::{ApiSettings, AppState};
use cairn_core::clock::SystemClock;
use cairn_core::federation::BackoffPolicy;
use cairn_core::notify::LocalNotifier;
use cairn_core::{Clock, CoreConfig, Homeserver, Services};
use cairn_federation::{ClientSettings, FederationClient, KeyRing, ServerIdentity, tls};
use cairn_store::{SqlStore, StoreOptions};

use crate::config::Config;

/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A homeserver and the parts `serve` wires around it.
pub struct Built {
    /// The rules.
    pub hs: Homeserver,
    /// The store.
    pub store: SqlStore,
    /// The signing identity.
    pub identity: ServerIdentity,
    /// Other servers' keys.
    pub key_ring: KeyRing,
    /// The federation client.
    pub client: FederationClient,
    /// The outbound sender's retry schedule.
    pub backoff: BackoffPolicy,
}

/// Opens the store, loads the signing key and builds the homeserver that both `serve` and
/// `user add` use.
pub async fn homeserver(config: &Config) -> anyhow::Result<Built> {
    homeserver_with_clock(config, Arc::new(SystemClock)).await
}

/// [`homeserver`] reading the time from `clock` (simulations run servers on theirs).
pub async fn homeserver_with_clock(
    config: &Config,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Built> {
    let server_name = ruma::ServerName::parse(&config.server_name)
        .with_context(|| format!("invalid server_name {:?}", config.server_name))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let url = config.database_url();
    let store = SqlStore::open(&StoreOptions {
        url: url.clone(),
        max_connections: config.database.max_connections,
    })
    .await
    .with_context(|| format!("cannot open database {}", redact(&url)))?;
    let identity = ServerIdentity::load_or_create(&store, server_name.clone(), clock.now_ms())
        .await
        .context("cannot load the signing key")?;
    let mut settings = ClientSettings {
        verify_tls: config.federation.verify_tls,
        extra_roots_pem: Vec::new(),
        static_routes: config.federation.static_routes.clone(),
    };
    if let Some(ca) = &config.federation.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        settings.extra_roots_pem.push(pem);
    }
    let client = FederationClient::new(identity.clone(), &settings)
        .map_err(|e| anyhow::anyhow!("cannot build the federation client: {e}"))?;
    let key_ring = KeyRing::new(
        server_name.clone(),
        Arc::new(store.clone()),
        client.clone(),
        clock.clone(),
    );
    let policy = BackoffPolicy {
        min_ms: config.federation.backoff_min_ms,
        multiplier: config.federation.backoff_multiplier,
        max_ms: config.federation.backoff_max_ms,
    };

    let mut core = CoreConfig::new(server_name);
    core.registration_open = config.registration.open;
    core.claim_timeout_ms = config.federation.claim_timeout_ms;
    core.backoff = policy;
    core.msc4081 = cairn_core::config::Msc4081Config {
        share_for_all_devices: config.msc4081.share_for_all_devices,
        max_cached_key_age_ms: config.msc4081.max_cached_key_age_ms,
        stable_names: config.msc4081.stable_names,
    };
    let services = Services {
        store: Arc::new(store.clone()),
        clock,
        notifier: Arc::new(LocalNotifier::new()),
        signer: Arc::new(identity.clone()),
        federation: Arc::new(cairn_federation::Transport {
            client: client.clone(),
            keys: key_ring.clone(),
        }),
    };
    Ok(Built {
        hs: Homeserver::new(core, services),
        store,
        identity,
        key_ring,
        client,
        backoff: policy,
    })
}

/// A server started in this process; [`RunningServer::stop`] shuts it down gracefully.
pub struct RunningServer {
    /// Where the client API listens.
    pub client_addr: SocketAddr,
    /// Where the federation API listens.
    pub federation_addr: SocketAddr,
    /// The rules, for callers that drive the server directly (tests, `cairn demo`).
    pub homeserver: Homeserver,
    federation_client: FederationClient,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Stops accepting requests, lets in-flight ones finish, and closes the database.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.task.await.context("server task panicked")?
    }

    /// Sends a signed federation request as this server (tests, `cairn demo`); a `Null` body
    /// sends none.
    pub async fn send_federation(
        &self,
        destination: &str,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let destination = ruma::ServerName::parse(destination)?;
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        self.federation_client
            .send(
                &destination,
                method,
                path,
                (!body.is_null()).then_some(body),
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Runs until the task ends on its own (it does not, unless a listener fails).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("server task panicked")?
    }
}

/// Opens the store, binds both listeners and serves in the background.
pub async fn start(config: &Config) -> anyhow::Result<RunningServer> {
    let client = std::net::TcpListener::bind(config.listeners.client)
        .with_context(|| format!("cannot listen on {}", config.listeners.client))?;
    let federation = std::net::TcpListener::bind(config.listeners.federation)
        .with_context(|| format!("cannot listen on {}", config.listeners.federation))?;
    start_on(config, client, federation).await
}

/// Like [`start`], on listeners the caller has bound already (so that servers in one test can
/// learn each other's addresses before any of them starts).
pub async fn start_on(
    config: &Config,
    client_listener: std::net::TcpListener,
    federation_listener: std::net::TcpListener,
) -> anyhow::Result<RunningServer> {
    start_on_with_clock(
        config,
        client_listener,
        federation_listener,
        Arc::new(SystemClock),
    )
    .await
}

/// [`start_on`] with the server reading the time from `clock` (its rules, backoff and
/// leases; TLS checks keep the system's time).
pub async fn start_on_with_clock(
    config: &Config,
    client_listener: std::net::TcpListener,
    federation_listener: std::net::TcpListener,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<RunningServer> {
    let Built {
        hs,
        store,
        identity,
        key_ring,
        client: federation_client,
        backoff,
    } = homeserver_with_clock(config, clock.clone()).await?;
    let sender = cairn_federation::sender::start(
        federation_client.clone(),
        hs.clone(),
        clock,
        backoff,
        instance_id(&config.data_dir)?,
    );
    let resync = tokio::spawn({
        let hs = hs.clone();
        async move {
            loop {
                tokio::time::sleep(cairn_core::e2ee::remote_lists::RESYNC_INTERVAL).await;
                if let Err(err) = hs.retry_stale_device_lists().await {
                    tracing::warn!(%err, "cannot retry stale device lists");
                }
            }
        }
    });
    let tls_files = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        },
        (None, None) => {
            let host = hs.config().server_name.host().to_owned();
            tls::self_signed_in(
                &config.data_dir,
                &[host, "localhost".into(), "127.0.0.1".into()],
            )
            .context("cannot create the TLS certificate")?
        }
        _ => anyhow::bail!("tls.cert and tls.key must be set together"),
    };
    let metrics = if config.metrics.enabled {
        Some(cairn_api::install_recorder().map_err(|e| anyhow::anyhow!("metrics: {e}"))?)
    } else {
        None
    };

    client_listener.set_nonblocking(true)?;
    let client_listener = tokio::net::TcpListener::from_std(client_listener)?;
    let client_addr = client_listener.local_addr()?;
    federation_listener.set_nonblocking(true)?;
    let federation_addr = federation_listener.local_addr()?;

    let settings = ApiSettings {
        max_request_bytes: config.limits.max_request_bytes,
        public_baseurl: config
            .public_baseurl
            .clone()
            .unwrap_or_else(|| format!("http://{client_addr}")),
        federation_address: federation_address(hs.config().server_name.as_str()),
    };
    let state = AppState {
        hs: hs.clone(),
        identity,
        key_ring,
        settings: Arc::new(settings),
        metrics,
    };
    let client_app =
        cairn_api::client_router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let federation_app =
        cairn_api::federation_router(state).into_make_service_with_connect_info::<SocketAddr>();

    let tls_config = RustlsConfig::from_pem_file(&tls_files.cert, &tls_files.key)
        .await
        .context("cannot load the TLS certificate")?;
    let federation_handle = axum_server::Handle::new();
    let federation = axum_server::from_tcp_rustls(federation_listener, tls_config)?
        .handle(federation_handle.clone())
        .serve(federation_app);

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let client = axum::serve(client_listener, client_app).with_graceful_shutdown({
        let mut stop = stop_rx.clone();
        async move {
            let _ = stop.changed().await;
        }
    });
    let task = tokio::spawn(async move {
        let mut stop = stop_rx;
        let federation_stop = async move {
            let _ = stop.changed().await;
            federation_handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
        };
        let (client, federation, ()) =
            tokio::join!(client.into_future(), federation, federation_stop);
        sender.abort();
        resync.abort();
        client.context("client listener failed")?;
        federation.context("federation listener failed")?;
        store.close().await;
        Ok(())
    });
    Ok(RunningServer {
        client_addr,
        federation_addr,
        homeserver: hs,
        federation_client,
        stop,
        task,
    })
}

/// This process's name among processes sharing a database: random, kept in the data directory
/// so that it survives restarts.
fn instance_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let path = data_dir.join("instance_id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let id = cairn_core::secrets::random_alphanumeric(16);
            std::fs::write(&path, &id)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
    }
}

/// `cairn serve`: start, say where, and run until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let server = start(&config).await?;
    println!(
        "Cairn {} is serving {}",
        env!("CARGO_PKG_VERSION"),
        server.homeserver.config().server_name
    );
    println!("  client API:  http://{}", server.client_addr);
    println!("  federation:  https://{}", server.federation_addr);
    println!("  database:    {}", redact(&config.database_url()));
    if config.registration.open {
        println!("  registration is open");
    } else {
        println!("  registration is closed; create a user with: cairn user add NAME");
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.stop().await?;
    println!("Cairn stopped");
    Ok(())
}

/// Where other servers should connect: the server name if it carries a port, else port 8448.
fn federation_address(server_name: &str) -> String {
    let has_port = server_name
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok())
        && !server_name.ends_with(']');
    if has_port {
        server_name.to_owned()
    } else {
        format!("{server_name}:8448")
    }
}

/// A database URL with any password removed, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on Unix");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federation_address_defaults_to_8448() {
        assert_eq!(federation_address("example.org"), "example.org:8448");
        assert_eq!(federation_address("localhost:8448"), "localhost:8448");
        assert_eq!(federation_address("[::1]"), "[::1]:8448");
        assert_eq!(federation_address("[::1]:9000"), "[::1]:9000");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://cairn:secret@db:5432/cairn"),
            "postgres://cairn:***@db:5432/cairn"
        );
        assert_eq!(
            redact("postgres://cairn@db/cairn"),
            "postgres://cairn@db/cairn"
        );
        assert_eq!(
            redact("sqlite://./cairn-data/cairn.db"),
            "sqlite://./cairn-data/cairn.db"
        );
    }
}
