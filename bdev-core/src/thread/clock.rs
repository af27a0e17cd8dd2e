//! The runtime's time base, in ticks.
//!
//! On x86-64 a tick is one TSC cycle, as `spdk_get_ticks()` is in SPDK: reading it costs
//! about 13 ns in a KVM guest, a third of `clock_gettime`. Elsewhere ticks are nanoseconds
//! from [`std::time::Instant`]. The test harness swaps in a mock clock that only moves
//! when the test says so (one tick per microsecond).
//!
//! A thread reads the clock once per poll iteration and caches it ([`crate::thread::now`]);
//! I/O timestamps use that cached value, so their resolution is one poll iteration.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where a runtime's ticks come from.
#[derive(Clone, Debug)]
pub(crate) enum Clock {
    /// The CPU's time-stamp counter (or `Instant` off x86-64).
    Real,
    /// A counter the test harness advances by hand; one tick per microsecond.
    Mock(Arc<AtomicU64>),
}

impl Clock {
    /// Current ticks.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        match self {
            Clock::Real => real_ticks(),
            Clock::Mock(t) => t.load(Ordering::Relaxed),
        }
    }

    /// Ticks per second.
    pub(crate) fn hz(&self) -> u64 {
        match self {
            Clock::Real => real_hz(),
            Clock::Mock(_) => 1_000_000,
        }
    }
}

/// Reads the real tick counter.
#[inline]
pub fn real_ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no preconditions and touches no memory; every x86-64 CPU has it.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        epoch().elapsed().as_nanos() as u64
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Real ticks per second, measured once against the monotonic clock (2 ms of the first
/// caller's time on x86-64).
pub fn real_hz() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        if cfg!(not(target_arch = "x86_64")) {
            return 1_000_000_000;
        }
        let t0 = Instant::now();
        let c0 = real_ticks();
        let window = Duration::from_millis(2);
        while t0.elapsed() < window {
            std::hint::spin_loop();
        }
        let c1 = real_ticks();
        let dt = t0.elapsed();
        let hz = ((c1 - c0) as u128 * 1_000_000_000 / dt.as_nanos().max(1)) as u64;
        hz.max(1)
    })
}

/// Converts microseconds to ticks at `hz`, saturating (a period of centuries is "never").
#[inline]
pub(crate) fn us_to_ticks(us: u64, hz: u64) -> u64 {
    u64::try_from(us as u128 * hz as u128 / 1_000_000).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_clock_moves_forward_at_a_plausible_rate() {
        let hz = real_hz();
        assert!(hz > 1_000_000, "tick rate {hz} Hz is implausibly low");
        let a = real_ticks();
        std::thread::sleep(Duration::from_millis(5));
        let b = real_ticks();
        let us = (b - a) as u128 * 1_000_000 / hz as u128;
        assert!(
            (4_000..500_000).contains(&us),
            "5 ms sleep measured as {us} us"
        );
    }

    #[test]
    fn mock_clock_moves_only_when_told() {
        let t = Arc::new(AtomicU64::new(7));
        let c = Clock::Mock(t.clone());
        assert_eq!(c.now(), 7);
        t.fetch_add(10, Ordering::Relaxed);
        assert_eq!(c.now(), 17);
        assert_eq!(c.hz(), 1_000_000);
        assert_eq!(us_to_ticks(5, c.hz()), 5);
        // Beyond 64 bits of ticks: saturates instead of wrapping to a short period.
        assert_eq!(us_to_ticks(u64::MAX, 3_000_000_000), u64::MAX);
    }
}
