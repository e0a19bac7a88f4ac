//! Where another server listens: the spec's server discovery.
//!
//! 1. An IP literal, or a name with an explicit port, is used as it is (port 8448 by default).
//! 2. Otherwise `https://<name>/.well-known/matrix/server` may delegate to another name; an IP
//!    literal or a name with a port there is used as it is.
//! 3. Otherwise (for the delegated name, or the server's own) the SRV records
//!    `_matrix-fed._tcp.<name>`, then the deprecated `_matrix._tcp.<name>`, give the host and
//!    port to connect to, while TLS and `Host` keep using `<name>`.
//! 4. Otherwise `<name>:8448`.
//!
//! The lookups are a trait, so that the rules are tested without a network; [`SrvResolver`]
//! is the DNS side for reqwest: it connects a name to its SRV target's addresses.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ruma::ServerName;

/// The default federation port.
const DEFAULT_PORT: u16 = 8448;

/// Where requests for a server go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port` of the URL: also the name TLS checks and `Host` carries.
    pub authority: String,
    /// From an SRV record: the host whose addresses to connect to instead of the URL's.
    pub connect_host: Option<String>,
}

impl Endpoint {
    fn direct(authority: String) -> Self {
        Self {
            authority,
            connect_host: None,
        }
    }
}

/// The lookups discovery makes.
#[async_trait]
pub trait Lookups: Send + Sync {
    /// The `m.server` of `https://<host>/.well-known/matrix/server`, if it names a valid one.
    async fn well_known(&self, host: &str) -> Option<String>;
    /// The preferred record of an SRV name (lowest priority, then highest weight): target
    /// host and port.
    async fn srv(&self, name: &str) -> Option<(String, u16)>;
}

/// `host:port` when the name itself says where to connect: an IP literal (port 8448 unless
/// given) or any name with an explicit port.
pub fn direct_address(name: &str) -> Option<String> {
    let server = ServerName::parse(name).ok()?;
    if server.port().is_some() {
        return Some(name.to_owned());
    }
    let host = server.host();
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<IpAddr>()
        .ok()
        .map(|_| format!("{host}:{DEFAULT_PORT}"))
}

/// Finds where `server` listens (see the module docs).
pub async fn discover(server: &ServerName, lookups: &dyn Lookups) -> Endpoint {
    if let Some(direct) = direct_address(server.as_str()) {
        return Endpoint::direct(direct);
    }
    let mut host = server.host().to_owned();
    if let Some(delegated) = lookups.well_known(&host).await {
        if let Some(direct) = direct_address(&delegated) {
            return Endpoint::direct(direct);
        }
        host = delegated;
    }
    for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
        if let Some((target, port)) = lookups.srv(&format!("{service}.{host}")).await {
            let target = target.trim_end_matches('.').to_owned();
            return Endpoint {
                authority: format!("{host}:{port}"),
                connect_host: (target != host).then_some(target),
            };
        }
    }
    Endpoint::direct(format!("{host}:{DEFAULT_PORT}"))
}

/// Name resolution for the federation client: a host that discovery mapped to an SRV target
/// resolves to the target's addresses; any other resolves as the system resolves it.
#[derive(Clone, Default)]
pub struct SrvResolver {
    targets: Arc<Mutex<HashMap<String, String>>>,
}

impl SrvResolver {
    /// Connects `host` to `target`'s addresses from now on.
    pub fn map(&self, host: &str, target: &str) {
        if let Ok(mut targets) = self.targets.lock() {
            targets.insert(host.to_owned(), target.to_owned());
        }
    }
}

impl reqwest::dns::Resolve for SrvResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = self
            .targets
            .lock()
            .ok()
            .and_then(|t| t.get(name.as_str()).cloned())
            .unwrap_or_else(|| name.as_str().to_owned());
        Box::pin(async move {
            // The port is the URL's; reqwest puts it in.
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// SRV lookups through the system's DNS configuration.
pub async fn srv_lookup(
    resolver: &hickory_resolver::TokioResolver,
    name: &str,
) -> Option<(String, u16)> {
    let answer = resolver.srv_lookup(name).await.ok()?;
    answer
        .answers()
        .iter()
        .filter_map(|record| match &record.data {
            hickory_resolver::proto::rr::RData::SRV(srv) => Some(srv),
            _ => None,
        })
        .min_by_key(|srv| (srv.priority, std::cmp::Reverse(srv.weight)))
        .map(|srv| (srv.target.to_utf8(), srv.port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_say_where_to_connect() {
        assert_eq!(direct_address("1.2.3.4"), Some("1.2.3.4:8448".into()));
        assert_eq!(direct_address("1.2.3.4:99"), Some("1.2.3.4:99".into()));
        assert_eq!(direct_address("[::1]"), Some("[::1]:8448".into()));
        assert_eq!(direct_address("[::1]:99"), Some("[::1]:99".into()));
        assert_eq!(
            direct_address("example.org:8000"),
            Some("example.org:8000".into())
        );
        assert_eq!(direct_address("example.org"), None, "needs discovery");
    }

    #[tokio::test]
    async fn a_host_mapped_to_an_srv_target_resolves_to_the_targets_addresses() {
        use reqwest::dns::Resolve;
        let resolver = SrvResolver::default();
        resolver.map("federation.example.invalid", "127.0.0.1");
        let name: reqwest::dns::Name = "federation.example.invalid".parse().unwrap();
        let addrs: Vec<SocketAddr> = resolver.resolve(name).await.unwrap().collect();
        assert_eq!(addrs, ["127.0.0.1:0".parse::<SocketAddr>().unwrap()]);
        let other: reqwest::dns::Name = "unmapped.example.invalid".parse().unwrap();
        assert!(
            resolver.resolve(other).await.is_err(),
            "others resolve as the system does"
        );
    }

    /// Canned `.well-known` and SRV answers.
    #[derive(Default)]
    struct Canned {
        well_known: HashMap<&'static str, &'static str>,
        srv: HashMap<&'static str, (&'static str, u16)>,
    }

    #[async_trait]
    impl Lookups for Canned {
        async fn well_known(&self, host: &str) -> Option<String> {
            self.well_known.get(host).map(|s| s.to_string())
        }
        async fn srv(&self, name: &str) -> Option<(String, u16)> {
            self.srv.get(name).map(|(t, p)| (t.to_string(), *p))
        }
    }

    async fn endpoint(name: &str, lookups: &Canned) -> (String, Option<String>) {
        let found = discover(&ServerName::parse(name).unwrap(), lookups).await;
        (found.authority, found.connect_host)
    }

    #[tokio::test]
    async fn discovery_follows_the_spec_order() {
        let lookups = Canned {
            well_known: [
                ("delegates.org", "matrix.delegates.org"),
                ("to-port.org", "m.to-port.org:443"),
                ("to-ip.org", "10.0.0.1"),
                ("both.org", "inner.both.org"),
            ]
            .into(),
            srv: [
                ("_matrix-fed._tcp.srv.org", ("fed.srv.org.", 8000)),
                ("_matrix._tcp.old.org", ("legacy.old.org", 8001)),
                ("_matrix-fed._tcp.inner.both.org", ("box.both.org", 9000)),
                ("_matrix-fed._tcp.both.org", ("wrong.both.org", 1)),
                ("_matrix-fed._tcp.self.org", ("self.org", 8002)),
            ]
            .into(),
        };
        let none = None;
        assert_eq!(
            endpoint("10.0.0.9", &lookups).await,
            ("10.0.0.9:8448".into(), none.clone())
        );
        assert_eq!(
            endpoint("port.org:1234", &lookups).await,
            ("port.org:1234".into(), none.clone())
        );
        assert_eq!(
            endpoint("delegates.org", &lookups).await,
            ("matrix.delegates.org:8448".into(), none.clone()),
            "delegated, no SRV: port 8448"
        );
        assert_eq!(
            endpoint("to-port.org", &lookups).await,
            ("m.to-port.org:443".into(), none.clone())
        );
        assert_eq!(
            endpoint("to-ip.org", &lookups).await,
            ("10.0.0.1:8448".into(), none.clone())
        );
        assert_eq!(
            endpoint("both.org", &lookups).await,
            ("inner.both.org:9000".into(), Some("box.both.org".into())),
            "the delegated name's SRV, not the server name's"
        );
        assert_eq!(
            endpoint("srv.org", &lookups).await,
            ("srv.org:8000".into(), Some("fed.srv.org".into())),
            "TLS and Host keep the server name; the connection goes to the target"
        );
        assert_eq!(
            endpoint("old.org", &lookups).await,
            ("old.org:8001".into(), Some("legacy.old.org".into())),
            "the deprecated service name still counts"
        );
        assert_eq!(
            endpoint("self.org", &lookups).await,
            ("self.org:8002".into(), none.clone())
        );
        assert_eq!(
            endpoint("plain.org", &lookups).await,
            ("plain.org:8448".into(), none)
        );
    }
}
