//! The chaos run's simulation: its clock, its random numbers, and which servers were up together.

use std::time::Instant;

use super::Server;

/// Real time plus whatever the schedule adds: what servers and clients read as now.
pub(super) struct SimClock {
    started: Instant,
    start_ms: u64,
    added_ms: std::sync::atomic::AtomicU64,
}

impl SimClock {
    pub(super) fn new(start_ms: u64) -> Self {
        Self {
            started: Instant::now(),
            start_ms,
            added_ms: Default::default(),
        }
    }

    pub(super) fn advance_ms(&self, ms: u64) {
        self.added_ms
            .fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }

    pub(super) fn now(&self) -> u64 {
        self.start_ms
            + self.started.elapsed().as_millis() as u64
            + self.added_ms.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl cairn_core::Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.now()
    }
}

impl cairn_client::Clock for SimClock {
    fn now_ms(&self) -> u64 {
        self.now()
    }
}

/// A small deterministic generator (xorshift64*), so that a seed replays a run.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// When each pair of servers was last up at the same time (simulated ms): a server holds
/// keys from another only as new as that moment.
pub(super) struct Together(Vec<Vec<u64>>);

impl Together {
    pub(super) fn new(servers: usize, now_ms: u64) -> Self {
        Self(vec![vec![now_ms; servers]; servers])
    }

    pub(super) fn update(&mut self, servers: &[Server], now_ms: u64) {
        for (i, a) in servers.iter().enumerate() {
            for (j, b) in servers.iter().enumerate() {
                if a.running.is_some() && b.running.is_some() {
                    self.0[i][j] = now_ms;
                }
            }
        }
    }

    pub(super) fn apart_ms(&self, a: usize, b: usize, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.0[a][b])
    }
}
