//! `cairn-bench`: load generators for Cairn.
//!
//! `cairn-bench keys` starts a release `cairn` binary per backend as a separate process on
//! loopback, prepares users and devices, then measures `/keys/upload` (50 one-time keys per
//! request), `/keys/claim` and `/keys/query` at each concurrency: requests per second, p50 and
//! p99 latency, and the server's CPU time per request (from `/proc/<pid>/stat`). Every phase is
//! bounded by a request count and a time limit; nothing but 127.0.0.1 is contacted. With
//! `--against URL` the same load goes to a homeserver already running (Synapse, say), so both
//! are measured on one machine; `--pid` names its process for the CPU column.

mod chaos;
mod keys;
mod server;

use anyhow::{Context, bail};

const USAGE: &str = "usage: cairn-bench keys [--cairn PATH] [--backend sqlite|postgres|both] \
[--requests N] [--concurrency 8,64] [--postgres-url URL]\n       \
cairn-bench keys --against URL [--pid PID] [--requests N] [--concurrency 8,64]\n       \
cairn-bench chaos [--seed N] [--servers N] [--users N] [--devices N] [--steps N]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    if all.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let mut args = all.into_iter();
    let Some(command) = args.next() else {
        bail!("{USAGE}")
    };
    if command == "chaos" {
        let mut options = chaos::Options::default();
        while let Some(flag) = args.next() {
            let value: usize = args
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?
                .parse()?;
            match flag.as_str() {
                "--seed" => options.seed = value as u64,
                "--servers" => options.servers = value,
                "--users" => options.users = value,
                "--devices" => options.devices = value,
                "--steps" => options.steps = value,
                _ => bail!("unknown flag {flag}\n{USAGE}"),
            }
        }
        return chaos::run(options).await;
    }
    let mut options = keys::Options::default();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--cairn" => options.cairn = value()?.into(),
            "--backend" => options.backends = keys::Options::parse_backends(&value()?)?,
            "--requests" => options.requests = value()?.parse()?,
            "--concurrency" => {
                options.concurrency = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?;
            }
            "--postgres-url" => options.postgres_url = value()?,
            "--against" => options.against = Some(value()?),
            "--pid" => options.pid = Some(value()?.parse()?),
            _ => bail!("unknown flag {flag}\n{USAGE}"),
        }
    }
    match command.as_str() {
        "keys" => keys::run(options).await,
        _ => bail!("unknown command {command}\n{USAGE}"),
    }
}
