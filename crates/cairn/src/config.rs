//! Configuration: defaults, then the TOML file, then `CAIRN_...` environment variables, then
//! command-line flags. Every key is documented in docs/configuration.md.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use cairn_core::federation::BackoffPolicy;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The name in user IDs; also how other servers reach this one unless delegated.
    pub server_name: String,
    /// Where Cairn keeps its SQLite database and generated TLS certificate.
    pub data_dir: PathBuf,
    /// The URL clients use, for `/.well-known/matrix/client`; default `http://<client listener>`.
    pub public_baseurl: Option<String>,
    /// Listening addresses.
    pub listeners: Listeners,
    /// The database.
    pub database: Database,
    /// Account registration.
    pub registration: Registration,
    /// Request limits.
    pub limits: Limits,
    /// The federation listener's TLS certificate.
    pub tls: Tls,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// How this server reaches other servers.
    pub federation: Federation,
    /// Eager fallback-key sharing (MSC4081).
    pub msc4081: Msc4081,
}

/// Eager fallback-key sharing (MSC4081; see docs/msc4081.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Msc4081 {
    /// Share the fallback key of every device, also those whose client did not opt in.
    pub share_for_all_devices: bool,
    /// Cached fallback keys that their owner's server last sent longer ago than this are not
    /// handed out, in milliseconds.
    pub max_cached_key_age_ms: u64,
    /// Send the bare field name `fallback_keys` (once the MSC is merged) instead of
    /// `org.matrix.msc4081.fallback_keys`.
    pub stable_names: bool,
}

impl Default for Msc4081 {
    fn default() -> Self {
        let core = cairn_core::config::Msc4081Config::default();
        Self {
            share_for_all_devices: core.share_for_all_devices,
            max_cached_key_age_ms: core.max_cached_key_age_ms,
            stable_names: core.stable_names,
        }
    }
}

/// Listening addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listeners {
    /// Client-server API, plain HTTP (put a TLS proxy in front for the internet).
    pub client: SocketAddr,
    /// Federation API and key server, HTTPS.
    pub federation: SocketAddr,
}

/// The database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Database {
    /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`; default SQLite in the data directory.
    pub url: Option<String>,
    /// Connection pool size.
    pub max_connections: u32,
}

/// Account registration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Registration {
    /// Whether anyone may register through the client API.
    pub open: bool,
}

/// Request limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_request_bytes: usize,
}

/// TLS for the federation listener.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain; with `key`. Default: a self-signed pair in the data directory.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// Prometheus metrics.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Serve `/metrics` on the client listener.
    pub enabled: bool,
}

/// How this server reaches other servers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Federation {
    /// Check other servers' TLS certificates. Turn off only for tests.
    pub verify_tls: bool,
    /// A PEM file of extra trusted root certificates (a private CA).
    pub ca_file: Option<PathBuf>,
    /// Fixed `address:port` per server name, used instead of server discovery (TLS still
    /// checks the server's name).
    pub static_routes: std::collections::BTreeMap<String, String>,
    /// The wait before retrying a server after its first failure, in milliseconds.
    pub backoff_min_ms: u64,
    /// How much longer each further wait is.
    pub backoff_multiplier: f64,
    /// The longest wait, in milliseconds.
    pub backoff_max_ms: u64,
    /// How long a key claim waits for another server at most, in milliseconds.
    pub claim_timeout_ms: u64,
}

impl Default for Federation {
    fn default() -> Self {
        Self {
            verify_tls: true,
            ca_file: None,
            static_routes: Default::default(),
            backoff_min_ms: BackoffPolicy::default().min_ms,
            backoff_multiplier: BackoffPolicy::default().multiplier,
            backoff_max_ms: BackoffPolicy::default().max_ms,
            claim_timeout_ms: 5_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost:8448".into(),
            data_dir: "./cairn-data".into(),
            public_baseurl: None,
            listeners: Listeners::default(),
            database: Database::default(),
            registration: Registration::default(),
            limits: Limits::default(),
            tls: Tls::default(),
            metrics: Metrics::default(),
            federation: Federation::default(),
            msc4081: Msc4081::default(),
        }
    }
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            client: ([127, 0, 0, 1], 8008).into(),
            federation: ([127, 0, 0, 1], 8448).into(),
        }
    }
}

impl Default for Database {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 1024 * 1024,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self { enabled: true }
    }
}

impl Config {
    /// The database URL, defaulting to `cairn.db` in the data directory.
    pub fn database_url(&self) -> String {
        self.database
            .url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("cairn.db").display()))
    }
}

/// Top-level keys, the only ones `CAIRN_...` variables may set.
const SECTIONS: &[&str] = &[
    "server_name",
    "data_dir",
    "public_baseurl",
    "listeners",
    "database",
    "registration",
    "limits",
    "tls",
    "metrics",
    "federation",
];

/// Flags shared by every subcommand that reads the configuration.
#[derive(Debug, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "CAIRN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (SQLite database, generated TLS certificate).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Server name, as in `@user:<server_name>`.
    #[arg(long)]
    pub server_name: Option<String>,
    /// Client API address, `ADDR:PORT` (port 0 picks a free port).
    #[arg(long)]
    pub client_listen: Option<SocketAddr>,
    /// Federation address, `ADDR:PORT` (port 0 picks a free port).
    #[arg(long)]
    pub federation_listen: Option<SocketAddr>,
    /// `sqlite://PATH` or `postgres://...`.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Let anyone register.
    #[arg(long)]
    pub open_registration: bool,
}

impl ConfigArgs {
    /// Merges defaults, the file, the environment and these flags, in that order.
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = &self.config {
            anyhow::ensure!(
                path.exists(),
                "configuration file {} does not exist",
                path.display()
            );
            figment = figment.merge(Toml::file(path));
        }
        // Only variables naming a configuration section are read, so that unrelated `CAIRN_...`
        // variables (CAIRN_CONFIG, test settings) never trip `deny_unknown_fields`.
        let env = Env::prefixed("CAIRN_")
            .filter(|key| {
                SECTIONS
                    .iter()
                    .any(|s| key.as_str().to_ascii_lowercase().split("__").next() == Some(*s))
            })
            .split("__");
        figment = figment.merge(env);
        let mut config: Config = figment.extract().context("invalid configuration")?;
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &self.server_name {
            config.server_name = v.clone();
        }
        if let Some(v) = self.client_listen {
            config.listeners.client = v;
        }
        if let Some(v) = self.federation_listen {
            config.listeners.federation = v;
        }
        if let Some(v) = &self.database_url {
            config.database.url = Some(v.clone());
        }
        if self.open_registration {
            config.registration.open = true;
        }
        Ok(config)
    }
}

#[cfg(test)]
// figment's Jail closures must return figment's (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "cairn.toml",
                "server_name = \"file.example\"\n[registration]\nopen = false\n[database]\nmax_connections = 3\n",
            )?;
            jail.set_env("CAIRN_DATABASE__MAX_CONNECTIONS", "5");
            jail.set_env("CAIRN_DATA_DIR", "/env/data");
            jail.set_env("CAIRN_TEST_SOMETHING", "ignored");
            let args = ConfigArgs {
                config: Some("cairn.toml".into()),
                server_name: Some("flag.example".into()),
                open_registration: true,
                ..Default::default()
            };
            let config = args.load().map_err(|e| e.to_string())?;
            assert_eq!(config.server_name, "flag.example");
            assert!(config.registration.open);
            assert_eq!(config.database.max_connections, 5);
            assert_eq!(config.data_dir, PathBuf::from("/env/data"));
            assert_eq!(config.database_url(), "sqlite:///env/data/cairn.db");
            assert_eq!(config.listeners.client.port(), 8008);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("cairn.toml", "sever_name = \"typo.example\"\n")?;
            let args = ConfigArgs {
                config: Some("cairn.toml".into()),
                ..Default::default()
            };
            assert!(args.load().is_err());
            Ok(())
        });
    }
}
