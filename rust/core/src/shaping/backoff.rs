//! Retry delays: exponential backoff with a cap and random jitter.

use super::Nanos;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub first: Nanos,
    pub multiplier: f64,
    pub max: Nanos,
    /// Random spread as a fraction of the delay, 0 to 0.5.
    pub jitter: f64,
}

impl Backoff {
    /// Delay before attempt `attempts + 1` (after `attempts` failures, ≥ 1):
    /// `first · multiplier^(attempts−1)`, capped at `max`, then spread by
    /// `± jitter`. `unit` is a uniform random number in [0, 1), supplied by
    /// the caller so that tests are exact.
    pub fn delay(&self, attempts: u32, unit: f64) -> Nanos {
        let exponent = attempts.saturating_sub(1).min(64) as i32;
        let base = (self.first as f64) * self.multiplier.powi(exponent);
        let capped = base.min(self.max as f64);
        let spread = 1.0 + self.jitter.clamp(0.0, 0.5) * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        (capped * spread).round().max(0.0) as Nanos
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::SECOND;

    const B: Backoff = Backoff {
        first: 300 * SECOND,
        multiplier: 2.0,
        max: 7200 * SECOND,
        jitter: 0.1,
    };

    #[test]
    fn doubles_then_caps() {
        let mid = 0.5; // no jitter at the middle of the range
        assert_eq!(B.delay(1, mid), 300 * SECOND);
        assert_eq!(B.delay(2, mid), 600 * SECOND);
        assert_eq!(B.delay(5, mid), 4800 * SECOND);
        assert_eq!(B.delay(6, mid), 7200 * SECOND);
        assert_eq!(B.delay(1000, mid), 7200 * SECOND);
    }

    #[test]
    fn jitter_spreads_within_bounds() {
        assert_eq!(B.delay(1, 0.0), 270 * SECOND);
        assert_eq!(B.delay(1, 1.0), 330 * SECOND);
    }
}
