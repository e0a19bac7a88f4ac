//! A fault-injecting HTTPS proxy in front of one server's federation listener. It forwards
//! requests as they are (signatures included), or refuses connections, or holds requests
//! without answering, or answers a status of its choosing; and it records what it was asked.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum_server::tls_rustls::RustlsConfig;

/// What the proxy does with the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward it.
    Pass,
    /// Nothing listens: connections are refused.
    Refuse,
    /// Accept it and never answer.
    Hang,
    /// Answer this status with a Matrix error body.
    Status(u16),
    /// Answer 200 with an empty transaction result without forwarding: what was sent is lost.
    Swallow,
}

struct Shared {
    fault: Mutex<Fault>,
    /// Wakes held requests when the fault changes.
    changed: tokio::sync::Notify,
    seen: Mutex<Vec<String>>,
    backend: SocketAddr,
    http: reqwest::Client,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    tls: RustlsConfig,
    running: Mutex<Option<(axum_server::Handle<SocketAddr>, tokio::task::JoinHandle<()>)>>,
}

impl FaultProxy {
    /// A proxy on a fresh loopback port, forwarding to `backend` (a federation listener),
    /// presenting the backend's certificate.
    pub async fn start(backend: SocketAddr, cert: &std::path::Path, key: &std::path::Path) -> Self {
        let tls = RustlsConfig::from_pem_file(cert, key).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = Self {
            addr: listener.local_addr().unwrap(),
            shared: Arc::new(Shared {
                fault: Mutex::new(Fault::Pass),
                changed: tokio::sync::Notify::new(),
                seen: Mutex::default(),
                backend,
                http: reqwest::Client::builder()
                    .danger_accept_invalid_certs(true)
                    .build()
                    .unwrap(),
            }),
            tls,
            running: Mutex::default(),
        };
        proxy.listen(listener);
        proxy
    }

    fn listen(&self, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let handle = axum_server::Handle::new();
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(self.shared.clone());
        let server = axum_server::from_tcp_rustls(listener, self.tls.clone())
            .unwrap()
            .handle(handle.clone())
            .serve(app.into_make_service());
        let task = tokio::spawn(async move {
            let _ = server.await;
        });
        *self.running.lock().unwrap() = Some((handle, task));
    }

    /// Switches to `fault` from the next request (or connection, for [`Fault::Refuse`]) on.
    pub async fn set(&self, fault: Fault) {
        let before = std::mem::replace(&mut *self.shared.fault.lock().unwrap(), fault);
        self.shared.changed.notify_waiters();
        if before != Fault::Refuse && fault == Fault::Refuse {
            let running = self.running.lock().unwrap().take();
            if let Some((handle, task)) = running {
                handle.shutdown();
                task.await.unwrap();
            }
        } else if before == Fault::Refuse && fault != Fault::Refuse {
            self.listen(TcpListener::bind(self.addr).unwrap());
        }
    }

    /// How many requests whose `METHOD path` starts with `prefix` reached the proxy.
    pub fn seen(&self, prefix: &str) -> usize {
        let seen = self.shared.seen.lock().unwrap();
        seen.iter().filter(|r| r.starts_with(prefix)).count()
    }
}

async fn forward(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared
        .seen
        .lock()
        .unwrap()
        .push(format!("{method} {}", uri.path()));
    // A held request stays unanswered until the fault changes, then gets what the new one
    // says (so a sender's retry need not wait out its own timeout in tests).
    let fault = loop {
        let changed = shared.changed.notified();
        let fault = *shared.fault.lock().unwrap();
        if fault != Fault::Hang {
            break fault;
        }
        changed.await;
    };
    match fault {
        Fault::Hang => unreachable!("held above"),
        Fault::Swallow => axum::Json(serde_json::json!({ "pdus": {} })).into_response(),
        Fault::Status(status) => (
            StatusCode::from_u16(status).unwrap(),
            axum::Json(serde_json::json!({ "errcode": "M_UNKNOWN", "error": "injected fault" })),
        )
            .into_response(),
        Fault::Pass | Fault::Refuse => {
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let mut request = shared
                .http
                .request(method, format!("https://{}{path}", shared.backend))
                .body(body);
            for name in ["authorization", "content-type"] {
                if let Some(value) = headers.get(name) {
                    request = request.header(name, value);
                }
            }
            match request.send().await {
                Ok(answer) => {
                    let status = answer.status();
                    let content_type = answer.headers().get("content-type").cloned();
                    let bytes = answer.bytes().await.unwrap_or_default();
                    let mut response = (status, bytes).into_response();
                    if let Some(content_type) = content_type {
                        response.headers_mut().insert("content-type", content_type);
                    }
                    response
                }
                Err(_) => StatusCode::BAD_GATEWAY.into_response(),
            }
        }
    }
}
