//! Time as an input. The farm reads the time only through the [`Clock`] it is given: the
//! master runs on [`SystemClock`], the farm's unit tests on a [`FakeClock`] they move by
//! hand, so lease expiry, benching and quarantine expiry are tested without waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A source of the current time, in Unix seconds.
pub trait Clock: Send + Sync {
    /// Now, in Unix seconds.
    fn now(&self) -> f64;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        greenlight_shared::unix_now_s()
    }
}

/// A clock that moves only when told to. Clones share one time.
#[derive(Debug, Clone)]
pub struct FakeClock {
    bits: Arc<AtomicU64>,
}

impl FakeClock {
    /// A clock standing at `now`.
    pub fn at(now: f64) -> FakeClock {
        FakeClock { bits: Arc::new(AtomicU64::new(now.to_bits())) }
    }

    /// Moves the clock `seconds` forward.
    pub fn advance(&self, seconds: f64) {
        let now = self.now() + seconds;
        self.bits.store(now.to_bits(), Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::SeqCst))
    }
}
