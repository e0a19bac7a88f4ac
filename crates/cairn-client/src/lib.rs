//! Cairn's reference client for MSC4081: a device that shares its fallback key eagerly, rotates
//! it when it is used and weekly, and keeps retired ones for 30 days (`device`), and talks to
//! its homeserver to send and receive Olm-encrypted to-device messages (`client`). Its rules
//! read time through a [`Clock`], so tests can cover weeks.

pub mod client;
pub mod device;

use std::sync::atomic::{AtomicU64, Ordering};

/// Where the client's rules read the time.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock that moves only when told (tests, simulations).
#[derive(Default)]
pub struct FakeClock(AtomicU64);

impl FakeClock {
    /// A clock at `now_ms`.
    pub fn at(now_ms: u64) -> Self {
        Self(AtomicU64::new(now_ms))
    }

    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
