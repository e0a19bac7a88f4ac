//! A `cairn serve` child process on loopback, and its CPU time.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A running server process.
pub struct ServerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl ServerProcess {
    /// Starts `cairn serve` with open registration on free loopback ports.
    pub async fn start(cairn: &Path, data_dir: &Path, database_url: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(cairn)
            .args([
                "serve",
                "--open-registration",
                "--client-listen",
                "127.0.0.1:0",
                "--federation-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--database-url", database_url])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (build it with cargo build --release)",
                    cairn.display()
                )
            })?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let base = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.trim().strip_prefix("client API:") {
                    return Ok(url.trim().to_owned());
                }
            }
            bail!("cairn exited before listening")
        })
        .await
        .context("cairn did not start within 60 s")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, base })
    }

    /// Where to send load, and whose CPU time to read.
    pub fn target(&self) -> Target {
        Target {
            base: self.base.clone(),
            pid: self.child.id(),
        }
    }

    /// Stops the server.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A homeserver under load: its client API, and its process when known.
pub struct Target {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The server's process, for its CPU time.
    pub pid: Option<u32>,
}

impl Target {
    /// CPU time (user + system) the server has used so far, if its process is known.
    pub fn cpu_time(&self) -> Option<anyhow::Result<Duration>> {
        self.pid.map(cpu_time)
    }
}

/// CPU time (user + system) process `pid` has used so far.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = stat.rsplit_once(')').context("odd /proc stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    let hz = 100; // USER_HZ on Linux
    Ok(Duration::from_millis(ticks * 1000 / hz))
}
