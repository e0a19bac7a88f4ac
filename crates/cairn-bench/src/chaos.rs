//! `cairn-bench chaos`: MSC4081 under random outages, with it and without it.
//!
//! Several Cairn servers run in this process on loopback, with users on each (several devices,
//! Cairn's reference client, real Olm) in one room. A seeded random schedule then stops and
//! restarts servers, moves the clients' simulated clock on by hours (so fallback keys rotate
//! weekly over weeks of simulated time) and sends Olm messages between random devices. At the
//! end every server is up, every queue drains, every device syncs, and the run reports how many
//! messages their recipients could decrypt, and how long claims answered from a cache took. The
//! same schedule runs twice: clients opting in to MSC4081, and not.
//!
//! Servers and clients share one simulated clock: real time plus the hours the schedule adds,
//! so backoff and queues run as usual while keys age by weeks and the cache's age limit
//! applies as it would.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn::config::Config;
use cairn::serve::{RunningServer, start_on_with_clock};
use cairn_client::client::{Client, ClientError, KeySource};
use serde_json::json;

use sim::{Rng, SimClock, Together};

mod sim;

/// What to run.
pub struct Options {
    /// Seeds the schedule.
    pub seed: u64,
    /// Servers.
    pub servers: usize,
    /// Users per server.
    pub users: usize,
    /// Devices per user.
    pub devices: usize,
    /// Steps of the schedule.
    pub steps: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            seed: 4081,
            servers: 3,
            users: 2,
            devices: 2,
            steps: 400,
        }
    }
}

struct Server {
    config: Config,
    addrs: (SocketAddr, SocketAddr),
    running: Option<RunningServer>,
    clock: Arc<SimClock>,
}

impl Server {
    async fn start(&mut self) -> anyhow::Result<()> {
        let client = rebind(self.addrs.0).await?;
        let federation = rebind(self.addrs.1).await?;
        self.running =
            Some(start_on_with_clock(&self.config, client, federation, self.clock.clone()).await?);
        Ok(())
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(server) = self.running.take() {
            server.stop().await?;
        }
        Ok(())
    }
}

/// Binds `addr` again. While a server was down, a connection elsewhere on this machine may
/// have been given its port as the local end; such a port is free again within moments.
async fn rebind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr) {
            Err(err)
                if err.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            bound => return Ok(bound?),
        }
    }
}

/// One device of the run and where it lives.
struct Participant {
    server: usize,
    user: String,
    client: Client,
    /// Texts it decrypted, and how many messages it could not decrypt.
    decrypted: Vec<String>,
    failed: usize,
    failures: BTreeMap<String, usize>,
}

/// What one run saw.
#[derive(Default)]
struct Report {
    sent: usize,
    sender_offline: usize,
    no_key: usize,
    /// For each "no key": how long (simulated) the sender's and the recipient's servers had
    /// not been up together, and the age of the key the sender's server held for the device
    /// (since its server last sent it; `None`: none held).
    no_key_partitions_ms: Vec<(u64, Option<u64>)>,
    delivered_decrypted: usize,
    /// Messages that arrived and could not be decrypted (the rest of the shortfall never
    /// arrived).
    arrived_undecryptable: usize,
    /// Why those did not decrypt, by kind.
    failure_kinds: BTreeMap<String, usize>,
    claims_from_cache: BTreeMap<String, Vec<Duration>>,
    restarts: usize,
    simulated_days: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs the schedule with MSC4081 and without, and prints both reports.
pub async fn run(options: Options) -> anyhow::Result<()> {
    println!(
        "chaos: {} servers x {} users x {} devices, {} steps, seed {}",
        options.servers, options.users, options.devices, options.steps, options.seed
    );
    println!(
        "| MSC4081 | attempted | sender offline | sent | no key (UTD) | decrypted | arrived undecryptable | share decrypted | cached claims p50 / p99 (backoff) | p50 / p99 (other) | restarts | simulated days |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for eager in [true, false] {
        let report = run_once(&options, eager).await?;
        let attempted = report.sent + report.no_key;
        let mut backoff = report
            .claims_from_cache
            .get("backoff")
            .cloned()
            .unwrap_or_default();
        let mut other: Vec<Duration> = report
            .claims_from_cache
            .iter()
            .filter(|(r, _)| *r != "backoff")
            .flat_map(|(_, v)| v.clone())
            .collect();
        backoff.sort();
        other.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1}% | {:.1} / {:.1} ms (n={}) | {:.1} / {:.1} ms (n={}) | {} | {} |",
            if eager { "on" } else { "off" },
            attempted + report.sender_offline,
            report.sender_offline,
            report.sent,
            report.no_key,
            report.delivered_decrypted,
            report.arrived_undecryptable,
            100.0 * report.delivered_decrypted as f64 / attempted.max(1) as f64,
            ms(percentile(&backoff, 0.5)),
            ms(percentile(&backoff, 0.99)),
            backoff.len(),
            ms(percentile(&other, 0.5)),
            ms(percentile(&other, 0.99)),
            other.len(),
            report.restarts,
            report.simulated_days,
        );
        for (kind, n) in &report.failure_kinds {
            println!("  undecryptable on arrival: {n} x {kind}");
        }
        if eager && !report.no_key_partitions_ms.is_empty() {
            let days = |ms: u64| format!("{:.1}", ms as f64 / DAY_MS as f64);
            let cases: Vec<String> = report
                .no_key_partitions_ms
                .iter()
                .map(|(apart, age)| {
                    format!(
                        "apart {} d, key held {}",
                        days(*apart),
                        age.map_or("none".to_owned(), |a| format!("{} d old", days(a)))
                    )
                })
                .collect();
            let limit_ms = cairn::config::Msc4081::default().max_cached_key_age_ms;
            let within = report
                .no_key_partitions_ms
                .iter()
                .filter(|(apart, _)| *apart <= limit_ms)
                .count();
            println!(
                "  no key with MSC4081 on: {}; {within} of {} apart no longer than the {}-day age limit",
                cases.join("; "),
                cases.len(),
                limit_ms / DAY_MS
            );
        }
    }
    Ok(())
}

async fn run_once(options: &Options, eager: bool) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(SimClock::new(1_700_000_000_000));
    let names: Vec<String> = (0..options.servers)
        .map(|i| format!("s{i}.chaos"))
        .collect();
    // Every probe stays bound until all are picked, so no two servers get the same port.
    let mut probes = Vec::new();
    for _ in 0..names.len() * 2 {
        probes.push(TcpListener::bind("127.0.0.1:0")?);
    }
    let mut picked = Vec::new();
    for probe in &probes {
        picked.push(probe.local_addr()?);
    }
    drop(probes);
    let addrs: Vec<(SocketAddr, SocketAddr)> = picked.chunks(2).map(|p| (p[0], p[1])).collect();
    let routes: BTreeMap<String, String> = names
        .iter()
        .zip(&addrs)
        .map(|(n, (_, f))| (n.clone(), f.to_string()))
        .collect();
    let mut servers = Vec::new();
    for (name, addrs) in names.iter().zip(addrs) {
        let mut config = Config {
            server_name: name.clone(),
            data_dir: dir.path().join(name),
            ..Config::default()
        };
        config.registration.open = true;
        config.metrics.enabled = false;
        config.federation.verify_tls = false;
        config.federation.static_routes = routes.clone();
        config.federation.backoff_min_ms = 200;
        config.federation.backoff_max_ms = 1_000;
        config.federation.claim_timeout_ms = 1_000;
        let mut server = Server {
            config,
            addrs,
            running: None,
            clock: clock.clone(),
        };
        server.start().await?;
        servers.push(server);
    }
    let base = |s: &Server| format!("http://{}", s.addrs.0);

    // Users, one room with everyone, devices.
    let http = reqwest::Client::new();
    let mut room_id = String::new();
    let mut people = Vec::new();
    for (s, server) in servers.iter().enumerate() {
        for u in 0..options.users {
            let user = format!("u{u}");
            let url = format!("{}/_matrix/client/v3/register", base(server));
            let answer: serde_json::Value = http
                .post(url)
                .json(&json!({ "username": user, "password": "pw", "auth": { "type": "m.login.dummy" } }))
                .send()
                .await?
                .json()
                .await?;
            let token = answer["access_token"]
                .as_str()
                .context("registered")?
                .to_owned();
            let path = if room_id.is_empty() {
                "/_matrix/client/v3/createRoom".to_owned()
            } else {
                format!(
                    "/_matrix/client/v3/join/{}?server_name=s0.chaos",
                    room_id.replace('!', "%21").replace(':', "%3A")
                )
            };
            let answer: serde_json::Value = http
                .post(format!("{}{path}", base(server)))
                .bearer_auth(&token)
                .json(&json!({ "preset": "public_chat" }))
                .send()
                .await?
                .json()
                .await?;
            room_id = answer["room_id"]
                .as_str()
                .context("in the room")?
                .to_owned();
            for d in 0..options.devices {
                let device = format!("S{s}U{u}D{d}");
                let client = Client::login_sharing(
                    &base(server),
                    &user,
                    "pw",
                    &device,
                    clock.clone(),
                    eager,
                )
                .await?;
                people.push(Participant {
                    server: s,
                    user: client.user_id().to_owned(),
                    client,
                    decrypted: Vec::new(),
                    failed: 0,
                    failures: BTreeMap::new(),
                });
            }
        }
    }
    // Every server has learnt every other server's devices (with fallback keys when shared).
    let deadline = Instant::now() + Duration::from_secs(60);
    'settle: loop {
        let mut missing = 0;
        for (s, server) in servers.iter().enumerate() {
            let hs = &server.running.as_ref().context("up")?.homeserver;
            for p in people.iter().filter(|p| p.server != s) {
                let user = ruma::OwnedUserId::try_from(p.user.as_str())?;
                let list = hs.store().remote_device_list(&user).await?;
                let known = list.iter().flat_map(|l| &l.devices).any(|d| {
                    let d: serde_json::Value = serde_json::from_str(d.get()).unwrap_or_default();
                    d["device_id"] == p.client.device_id()
                        && (!eager || d["org.matrix.msc4081.fallback_keys"].is_object())
                });
                missing += usize::from(!known);
            }
        }
        if missing == 0 {
            break 'settle;
        }
        if Instant::now() > deadline {
            bail!("{missing} device lists never reached the other servers");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut rng = Rng(options.seed | 1);
    let mut report = Report::default();
    let mut together = Together::new(servers.len(), clock_now(&clock));
    let mut texts: BTreeMap<String, usize> = BTreeMap::new();
    let started_ms = clock_now(&clock);
    for step in 0..options.steps {
        match rng.below(100) {
            0..60 => {
                let from = rng.below(people.len());
                let to = rng.below(people.len());
                if people[from].user == people[to].user {
                    continue;
                }
                if servers[people[from].server].running.is_none() {
                    report.sender_offline += 1;
                    continue;
                }
                let text = format!("m{step}");
                let (user, device) = (
                    people[to].user.clone(),
                    people[to].client.device_id().to_owned(),
                );
                let began = Instant::now();
                match people[from].client.send(&user, &device, &text, 2_000).await {
                    Ok(source) => {
                        if let KeySource::Cached(reason) = source {
                            report
                                .claims_from_cache
                                .entry(reason)
                                .or_default()
                                .push(began.elapsed());
                        }
                        report.sent += 1;
                        texts.insert(text, to);
                    }
                    Err(ClientError::NoKey(_)) => {
                        report.no_key += 1;
                        let now = clock_now(&clock);
                        let apart = together.apart_ms(people[from].server, people[to].server, now);
                        let hs = &servers[people[from].server]
                            .running
                            .as_ref()
                            .context("up")?
                            .homeserver;
                        let held = held_key_received_ms(hs, &user, &device).await?;
                        report
                            .no_key_partitions_ms
                            .push((apart, held.map(|at| now.saturating_sub(at))));
                    }
                    Err(err) => return Err(err).context("a send failed"),
                }
            }
            60..75 => {
                let s = rng.below(servers.len());
                if servers[s].running.is_some() {
                    servers[s].stop().await?;
                } else {
                    servers[s].start().await?;
                    report.restarts += 1;
                }
                together.update(&servers, clock_now(&clock));
            }
            _ => {
                together.update(&servers, clock_now(&clock));
                clock.advance_ms((1 + rng.below(12) as u64) * 60 * 60 * 1000);
                together.update(&servers, clock_now(&clock));
                // Those hours held many of each server's 30 s device-list passes; one stands
                // in for them (their timers run in real time, which barely moves here).
                for server in &servers {
                    if let Some(running) = &server.running {
                        running.homeserver.retry_stale_device_lists().await?;
                    }
                }
                for p in people.iter_mut() {
                    if servers[p.server].running.is_some() {
                        let received = p.client.sync(0).await.context("sync")?;
                        receive(p, &received);
                    }
                }
            }
        }
    }
    report.simulated_days = (clock_now(&clock) - started_ms) / DAY_MS;

    // Everything back; every queue drained; every device syncs until nothing more arrives.
    for server in servers.iter_mut() {
        if server.running.is_none() {
            server.start().await?;
            report.restarts += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut queued = 0;
        for server in &servers {
            let hs = &server.running.as_ref().context("up")?.homeserver;
            for name in &names {
                let name = ruma::OwnedServerName::try_from(name.as_str())?;
                queued += hs.store().queued(&name, 1).await?.len();
            }
        }
        if queued == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("queues never drained");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..2 {
        for p in people.iter_mut() {
            let received = p.client.sync(0).await.context("final sync")?;
            receive(p, &received);
        }
    }
    for (text, to) in &texts {
        if people[*to].decrypted.contains(text) {
            report.delivered_decrypted += 1;
        }
    }
    report.arrived_undecryptable = people.iter().map(|p| p.failed).sum();
    for p in &people {
        for (kind, n) in &p.failures {
            *report.failure_kinds.entry(kind.clone()).or_default() += n;
        }
    }
    for server in servers.iter_mut() {
        server.stop().await?;
    }
    Ok(report)
}

fn clock_now(clock: &SimClock) -> u64 {
    clock.now()
}

/// When `hs` last received the fallback key it holds for `user`'s `device`, if any.
async fn held_key_received_ms(
    hs: &cairn_core::Homeserver,
    user: &str,
    device: &str,
) -> anyhow::Result<Option<u64>> {
    let user = ruma::OwnedUserId::try_from(user)?;
    let Some(list) = hs.store().remote_device_list(&user).await? else {
        return Ok(None);
    };
    Ok(list.devices.iter().find_map(|d| {
        let d: serde_json::Value = serde_json::from_str(d.get()).ok()?;
        if d["device_id"] != device {
            return None;
        }
        d[cairn_core::e2ee::msc4081::RECEIVED_FIELD]
            .as_object()?
            .values()
            .filter_map(serde_json::Value::as_u64)
            .max()
    }))
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

fn receive(p: &mut Participant, received: &[cairn_client::client::Received]) {
    for message in received {
        match &message.text {
            Ok(text) => p.decrypted.push(text.clone()),
            Err(why) => {
                p.failed += 1;
                // The kind of failure, without the key or session it names.
                let kind: String = why.split(':').take(2).collect::<Vec<_>>().join(":");
                *p.failures.entry(kind).or_default() += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short schedule: with MSC4081 every message sent is decrypted; without it, some
    /// messages to devices on a stopped server cannot even be encrypted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_msc4081_every_message_sent_decrypts() {
        let options = Options {
            steps: 120,
            ..Options::default()
        };
        let on = run_once(&options, true).await.unwrap();
        assert_eq!(on.no_key, 0);
        assert!(on.sent > 0);
        assert_eq!(
            on.delivered_decrypted, on.sent,
            "every message sent was decrypted"
        );
        assert!(on.claims_from_cache.values().map(Vec::len).sum::<usize>() > 0);
        let off = run_once(&options, false).await.unwrap();
        assert!(off.no_key > 0, "without MSC4081 some claims found no key");
        assert_eq!(off.sent + off.no_key, on.sent, "the same schedule");
    }
}
