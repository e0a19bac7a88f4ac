//! The E2EE key endpoints under load.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::server::{ServerProcess, Target};

/// Longest a single phase may run; it stops early with what it measured.
const PHASE_TIME_LIMIT: Duration = Duration::from_secs(120);
/// One-time keys per upload request.
const OTKS_PER_UPLOAD: usize = 50;
/// Uploads per device: 5000 one-time keys is Cairn's cap per device, 500 Synapse's.
const UPLOADS_PER_DEVICE: usize = 90;
const UPLOADS_PER_DEVICE_ELSEWHERE: usize = 10;

/// What to run.
pub struct Options {
    pub cairn: PathBuf,
    pub backends: Vec<&'static str>,
    pub requests: usize,
    pub concurrency: Vec<usize>,
    pub postgres_url: String,
    /// A homeserver already running (for example Synapse), measured instead of starting Cairn.
    pub against: Option<String>,
    /// Its process, whose CPU time is then reported.
    pub pid: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cairn: "target/release/cairn".into(),
            backends: vec!["sqlite", "postgres"],
            requests: 4000,
            concurrency: vec![8, 64],
            postgres_url: "postgres://postgres@127.0.0.1:5432".into(),
            against: None,
            pid: None,
        }
    }
}

impl Options {
    pub fn parse_backends(raw: &str) -> anyhow::Result<Vec<&'static str>> {
        Ok(match raw {
            "sqlite" => vec!["sqlite"],
            "postgres" => vec!["postgres"],
            "both" => vec!["sqlite", "postgres"],
            _ => bail!("--backend is sqlite, postgres or both"),
        })
    }
}

/// One measured phase.
struct Row {
    backend: &'static str,
    endpoint: &'static str,
    concurrency: usize,
    requests: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    /// The server's CPU time, when its process is known.
    cpu: Option<Duration>,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    if let Some(base) = &options.against {
        let target = Target {
            base: base.trim_end_matches('/').to_owned(),
            pid: options.pid,
        };
        rows.extend(
            bench_backend(
                &target,
                "running server",
                UPLOADS_PER_DEVICE_ELSEWHERE,
                &options,
            )
            .await?,
        );
    }
    // A server given with --against is measured instead of starting Cairn on each backend.
    let backends: &[&str] = if options.against.is_some() {
        &[]
    } else {
        &options.backends
    };
    for backend in backends {
        let dir = tempfile::tempdir()?;
        let (url, db) = match *backend {
            "sqlite" => (format!("sqlite://{}/cairn.db", dir.path().display()), None),
            _ => {
                let name = format!("cairn_bench_{}", std::process::id());
                psql(
                    &options.postgres_url,
                    &format!("DROP DATABASE IF EXISTS {name}"),
                )
                .await?;
                psql(&options.postgres_url, &format!("CREATE DATABASE {name}")).await?;
                (format!("{}/{name}", options.postgres_url), Some(name))
            }
        };
        let server = ServerProcess::start(&options.cairn, dir.path(), &url).await?;
        let result = bench_backend(&server.target(), backend, UPLOADS_PER_DEVICE, &options).await;
        server.stop().await;
        if let Some(name) = db {
            psql(
                &options.postgres_url,
                &format!("DROP DATABASE IF EXISTS {name}"),
            )
            .await?;
        }
        rows.extend(result?);
    }
    println!(
        "| backend | endpoint | concurrency | requests | req/s | p50 ms | p99 ms | server CPU µs/req |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let cpu = r.cpu.map_or("".to_owned(), |cpu| {
            format!("{:.0}", cpu.as_secs_f64() * 1e6 / r.requests as f64)
        });
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {cpu} |",
            r.backend,
            r.endpoint,
            r.concurrency,
            r.requests,
            r.requests as f64 / r.elapsed.as_secs_f64(),
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3,
        );
    }
    Ok(())
}

async fn psql(admin_url: &str, sql: &str) -> anyhow::Result<()> {
    let status = tokio::process::Command::new("psql")
        .arg(format!("{admin_url}/postgres"))
        .args(["-qc", sql])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "psql failed: {sql}");
    Ok(())
}

async fn bench_backend(
    server: &Target,
    backend: &'static str,
    uploads_per_device: usize,
    o: &Options,
) -> anyhow::Result<Vec<Row>> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let base = server.base.clone();
    let call = |path: &str, token: Option<&str>, body: Value| {
        let mut req = http.post(format!("{base}{path}")).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        async move {
            let res = req.send().await?;
            let status = res.status();
            let text = res.text().await?;
            anyhow::ensure!(status.is_success(), "{status}: {text}");
            Ok::<Value, anyhow::Error>(serde_json::from_str(&text)?)
        }
    };
    // A new user per run, so that a server measured before keeps no state that matters.
    let username = format!(
        "bench{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let registered = call("/_matrix/client/v3/register", None, json!({ "username": username, "password": "pw", "auth": { "type": "m.login.dummy" }, "inhibit_login": true })).await?;
    let user_id = registered["user_id"]
        .as_str()
        .context("registered")?
        .to_owned();
    let max_concurrency = o.concurrency.iter().copied().max().unwrap_or(1);
    let devices = (o.requests * o.concurrency.len())
        .div_ceil(uploads_per_device)
        .max(max_concurrency);
    let mut tokens = Vec::new();
    for i in 0..devices {
        let login = call("/_matrix/client/v3/login", None, json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": username }, "password": "pw", "device_id": format!("D{i}") })).await?;
        let token = login["access_token"].as_str().context("token")?.to_owned();
        let keys = json!({ "device_keys": { "user_id": user_id, "device_id": format!("D{i}"), "algorithms": ["m.olm.v1.curve25519-aes-sha2"], "keys": { format!("ed25519:D{i}"): "k" }, "signatures": {} } });
        call("/_matrix/client/v3/keys/upload", Some(&token), keys).await?;
        tokens.push(token);
    }
    let tokens = Arc::new(tokens);
    let next_key = Arc::new(AtomicUsize::new(0));
    let mut rows = Vec::new();
    for &concurrency in &o.concurrency {
        let t = tokens.clone();
        let counter = next_key.clone();
        rows.push(
            phase(
                server,
                &http,
                backend,
                "/keys/upload (50 OTKs)",
                concurrency,
                o.requests,
                move |i| {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    // Round the devices: the uploads in flight come from different devices, as
                    // on a real server, where a client uploads one batch at a time (uploads of
                    // one device take turns). No device gets more than `uploads_per_device`.
                    let device = n % t.len();
                    let otks: serde_json::Map<String, Value> = (0..OTKS_PER_UPLOAD)
                        .map(|k| {
                            (
                                format!("signed_curve25519:{n}_{k}"),
                                json!({ "key": format!("key{n}_{k}_{i}"), "signatures": {} }),
                            )
                        })
                        .collect();
                    (
                        "/_matrix/client/v3/keys/upload",
                        t[device].clone(),
                        json!({ "one_time_keys": otks }),
                    )
                },
            )
            .await?,
        );
    }
    for &concurrency in &o.concurrency {
        let (t, user_id) = (tokens.clone(), user_id.clone());
        rows.push(
            phase(
                server,
                &http,
                backend,
                "/keys/claim",
                concurrency,
                o.requests,
                move |i| {
                    let device = format!("D{}", i % t.len());
                    (
                        "/_matrix/client/v3/keys/claim",
                        t[0].clone(),
                        json!({ "one_time_keys": { &user_id: { device: "signed_curve25519" } } }),
                    )
                },
            )
            .await?,
        );
    }
    for &concurrency in &o.concurrency {
        let (t, user_id) = (tokens.clone(), user_id.clone());
        rows.push(
            phase(
                server,
                &http,
                backend,
                "/keys/query",
                concurrency,
                o.requests,
                move |i| {
                    let device = format!("D{}", i % t.len());
                    (
                        "/_matrix/client/v3/keys/query",
                        t[0].clone(),
                        json!({ "device_keys": { &user_id: [device] } }),
                    )
                },
            )
            .await?,
        );
    }
    Ok(rows)
}

/// Runs `requests` requests from `concurrency` worker tasks (or until the time limit).
async fn phase<F>(
    server: &Target,
    http: &reqwest::Client,
    backend: &'static str,
    endpoint: &'static str,
    concurrency: usize,
    requests: usize,
    make: F,
) -> anyhow::Result<Row>
where
    F: Fn(usize) -> (&'static str, String, Value) + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let issued = Arc::new(AtomicUsize::new(0));
    let cpu_before = server.cpu_time().transpose()?;
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (make, issued, http, base) = (
                make.clone(),
                issued.clone(),
                http.clone(),
                server.base.clone(),
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = issued.fetch_add(1, Ordering::Relaxed);
                    if i >= requests || started.elapsed() > PHASE_TIME_LIMIT {
                        return Ok::<_, anyhow::Error>(latencies);
                    }
                    let (path, token, body) = make(i);
                    let sent = Instant::now();
                    let res = http
                        .post(format!("{base}{path}"))
                        .bearer_auth(token)
                        .json(&body)
                        .send()
                        .await?;
                    let status = res.status();
                    let text = res.bytes().await?;
                    anyhow::ensure!(
                        status.is_success(),
                        "{path}: {status} {}",
                        String::from_utf8_lossy(&text)
                    );
                    latencies.push(sent.elapsed());
                }
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::new();
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let elapsed = started.elapsed();
    let cpu = match (server.cpu_time().transpose()?, cpu_before) {
        (Some(after), Some(before)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Ok(Row {
        backend,
        endpoint,
        concurrency,
        requests: latencies.len(),
        elapsed,
        p50: pick(0.50),
        p99: pick(0.99),
        cpu,
    })
}
