//! The clock the core's deadlines and latencies are measured on inside SPDK:
//! SPDK's tick counter (`spdk_get_ticks`, the TSC on x86, as upstream's
//! transport uses) scaled to nanoseconds with a fixed-point factor taken once
//! from `spdk_get_ticks_hz`. No system call per poll (a `clock_gettime` per
//! poll was 12-16 % of an idle poll group's time).

use std::sync::OnceLock;
use std::time::Instant;

use super::api::api;

/// Ticks → nanoseconds: `ns = (ticks - base) * mult >> SHIFT`.
struct TickScale {
    base: u64,
    mult: u64,
}

const SHIFT: u32 = 32;

/// What the first call found: SPDK's ticks, or (no SPDK, a zero rate) the
/// standard monotonic clock.
enum Clock {
    Ticks(TickScale),
    Std(Instant),
}

static CLOCK: OnceLock<Clock> = OnceLock::new();

fn clock() -> &'static Clock {
    CLOCK.get_or_init(|| {
        if let Some(api) = api() {
            // SAFETY: plain getters of SPDK's environment, callable from any
            // thread once the environment is up (the transport exists).
            let (hz, base) = unsafe { (api.spdk_get_ticks_hz(), api.spdk_get_ticks()) };
            if let Some(mult) = scale(hz) {
                return Clock::Ticks(TickScale { base, mult });
            }
        }
        Clock::Std(Instant::now())
    })
}

/// The fixed-point factor for `hz` ticks per second, if usable.
fn scale(hz: u64) -> Option<u64> {
    if hz == 0 {
        return None;
    }
    u64::try_from((1_000_000_000u128 << SHIFT) / u128::from(hz)).ok()
}

/// Nanoseconds since the first call, on the clock the core's deadlines use.
pub(crate) fn now_ns() -> u64 {
    match clock() {
        Clock::Ticks(s) => {
            // `api()` was resolved when the scale was made.
            let Some(api) = api() else { return 0 };
            // SAFETY: see `clock`.
            let t = unsafe { api.spdk_get_ticks() };
            ticks_to_ns(t.wrapping_sub(s.base), s.mult)
        }
        Clock::Std(base) => base.elapsed().as_nanos() as u64,
    }
}

fn ticks_to_ns(ticks: u64, mult: u64) -> u64 {
    ((u128::from(ticks) * u128::from(mult)) >> SHIFT) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_ticks_to_nanoseconds() {
        let m = scale(2_000_000_000).unwrap();
        assert_eq!(ticks_to_ns(2_000_000_000, m), 1_000_000_000);
        assert_eq!(ticks_to_ns(3, m), 1);
        let m = scale(1_000_000).unwrap();
        assert_eq!(ticks_to_ns(1_000_000 * 3600, m), 3_600_000_000_000);
        assert_eq!(scale(0), None);
    }
}
