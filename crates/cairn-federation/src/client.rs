//! The federation HTTP client: finds where a server listens, signs each request with X-Matrix,
//! and turns every way a request can fail into a [`RemoteError`].
//!
//! Where a server listens: a configured static route wins (tests, private networks: the
//! connection goes to the route's address, TLS still checks the server's name); otherwise
//! the spec's server discovery ([`crate::discovery`]: IP literals and explicit ports,
//! `.well-known` delegation, SRV records, port 8448), remembered for an hour. TLS uses the
//! server's (or delegated) name for SNI and the certificate check, which is on unless the
//! operator turns it off.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_core::federation::RemoteError;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName};
use serde_json::Value;

use crate::ServerIdentity;
use crate::discovery::{Endpoint, Lookups, SrvResolver, direct_address, discover, srv_lookup};

/// How long a discovered endpoint is remembered.
const DISCOVERY_TTL: Duration = Duration::from_secs(60 * 60);
/// The longest a `.well-known` lookup may take.
const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How the client reaches other servers.
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// Check other servers' TLS certificates (turn off only in tests).
    pub verify_tls: bool,
    /// Extra trusted root certificates, PEM (a private or test CA).
    pub extra_roots_pem: Vec<Vec<u8>>,
    /// Fixed `host:port` per server name, used instead of discovery.
    pub static_routes: BTreeMap<String, String>,
}

/// Sends signed requests to other servers. Cheap to clone.
#[derive(Clone)]
pub struct FederationClient {
    http: reqwest::Client,
    identity: ServerIdentity,
    static_routes: Arc<BTreeMap<String, String>>,
    /// Discovered endpoints, with when they were found.
    endpoints: Arc<Mutex<BTreeMap<OwnedServerName, (Instant, Endpoint)>>>,
    resolver: SrvResolver,
    /// SRV lookups; `None` where the system's DNS configuration cannot be read.
    dns: Option<Arc<hickory_resolver::TokioResolver>>,
    sender_wake: Arc<tokio::sync::Notify>,
}

impl FederationClient {
    /// Builds a client that signs as `identity`.
    pub fn new(identity: ServerIdentity, settings: &ClientSettings) -> Result<Self, String> {
        let resolver = SrvResolver::default();
        let dns = hickory_resolver::TokioResolver::builder_tokio()
            .and_then(|b| b.build())
            .map_err(|e| tracing::warn!(%e, "no DNS configuration: SRV records are not looked up"))
            .ok()
            .map(Arc::new);
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("Cairn/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .dns_resolver(Arc::new(resolver.clone()))
            .danger_accept_invalid_certs(!settings.verify_tls);
        for pem in &settings.extra_roots_pem {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|e| e.to_string())?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Self {
            http: builder.build().map_err(|e| e.to_string())?,
            identity,
            static_routes: Arc::new(settings.static_routes.clone()),
            endpoints: Arc::default(),
            resolver,
            dns,
            sender_wake: Arc::default(),
        })
    }

    /// The server this client speaks for.
    pub fn server_name(&self) -> &OwnedServerName {
        self.identity.server_name()
    }

    /// Wakes the outbound sender (see [`crate::sender`]).
    pub fn sender_wake(&self) -> &Arc<tokio::sync::Notify> {
        &self.sender_wake
    }

    /// Sends a signed request and returns the JSON answer.
    pub async fn send(
        &self,
        destination: &ServerName,
        method: reqwest::Method,
        path_and_query: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, RemoteError> {
        let base = self.base_url(destination).await;
        let content: Option<CanonicalJsonValue> = body
            .as_ref()
            .map(|b| serde_json::from_value(b.clone()))
            .transpose()
            .map_err(|e| {
                RemoteError::Invalid(format!("request body is not canonical JSON: {e}"))
            })?;
        let authorization = self.identity.authorize(
            destination,
            method.as_str(),
            path_and_query,
            content.as_ref(),
        );
        let mut request = self
            .http
            .request(method, format!("{base}{path_and_query}"))
            .header(reqwest::header::AUTHORIZATION, authorization)
            .timeout(timeout);
        if let Some(body) = &body {
            request = request.json(body);
        }
        read_json(request.send().await).await
    }

    /// Fetches `server`'s key document (`GET /_matrix/key/v2/server`, unsigned).
    pub async fn key_document(
        &self,
        server: &ServerName,
        timeout: Duration,
    ) -> Result<CanonicalJsonObject, RemoteError> {
        let base = self.base_url(server).await;
        let answer = read_json(
            self.http
                .get(format!("{base}/_matrix/key/v2/server"))
                .timeout(timeout)
                .send()
                .await,
        )
        .await?;
        serde_json::from_value(answer)
            .map_err(|e| RemoteError::Invalid(format!("key document is not canonical JSON: {e}")))
    }

    /// `https://host:port` for `server`, following the discovery rules above.
    async fn base_url(&self, server: &ServerName) -> String {
        if let Some(route) = self.static_routes.get(server.as_str()) {
            // Like curl's --resolve: the connection goes to the route, while TLS and `Host`
            // keep the server's name, so certificates are checked against it.
            return match route.rsplit_once(':') {
                Some((address, port)) => {
                    let address = address.trim_start_matches('[').trim_end_matches(']');
                    self.resolver.map(server.host(), address);
                    format!("https://{}:{port}", server.host())
                }
                None => format!("https://{route}"),
            };
        }
        if let Some(direct) = direct_address(server.as_str()) {
            return format!("https://{direct}");
        }
        let cached = self.endpoints.lock().ok().and_then(|cache| {
            cache
                .get(server)
                .filter(|(at, _)| at.elapsed() < DISCOVERY_TTL)
                .map(|(_, endpoint)| endpoint.clone())
        });
        let endpoint = match cached {
            Some(endpoint) => endpoint,
            None => {
                let endpoint = discover(server, self).await;
                if let Ok(mut cache) = self.endpoints.lock() {
                    cache.insert(server.to_owned(), (Instant::now(), endpoint.clone()));
                }
                endpoint
            }
        };
        if let Some(target) = &endpoint.connect_host {
            let host = endpoint
                .authority
                .rsplit_once(':')
                .map_or(endpoint.authority.as_str(), |(host, _)| host);
            self.resolver.map(host, target);
        }
        format!("https://{}", endpoint.authority)
    }
}

#[async_trait::async_trait]
impl Lookups for FederationClient {
    async fn well_known(&self, host: &str) -> Option<String> {
        let url = format!("https://{host}/.well-known/matrix/server");
        match self.http.get(url).timeout(WELL_KNOWN_TIMEOUT).send().await {
            Ok(res) if res.status().is_success() => res
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v.get("m.server")?.as_str().map(str::to_owned))
                .filter(|name| ServerName::parse(name).is_ok()),
            _ => None,
        }
    }

    async fn srv(&self, name: &str) -> Option<(String, u16)> {
        srv_lookup(self.dns.as_deref()?, name).await
    }
}

/// The JSON body of a successful answer; anything else as the matching [`RemoteError`].
async fn read_json(sent: Result<reqwest::Response, reqwest::Error>) -> Result<Value, RemoteError> {
    let response = sent.map_err(|e| match e.is_timeout() {
        true => RemoteError::TimedOut,
        false => RemoteError::Unreachable(describe(&e)),
    })?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| RemoteError::Unreachable(describe(&e)))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
        return Err(RemoteError::Status {
            status: status.as_u16(),
            message,
        });
    }
    serde_json::from_slice(&body).map_err(|e| RemoteError::Invalid(e.to_string()))
}

/// A transport error with its cause chain, which reqwest keeps out of its own message.
fn describe(err: &reqwest::Error) -> String {
    let mut text = if err.is_timeout() {
        "timed out".to_owned()
    } else {
        err.to_string()
    };
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
