//! A limit that automation can lower and that climbs back step by step.
//!
//! After an action lowers it (e.g. halves a site's rate after `421 4.7.0`
//! replies), each clean period without a new action raises it by one step
//! until it is back at the configured value: never in one jump, so a receiver
//! that was pushing back is not hit with full volume the moment it recovers.

use super::Nanos;

#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveLimit {
    configured: f64,
    current: f64,
    /// Fraction of the configured value regained per clean period.
    step: f64,
    clean_period: Nanos,
    last_change: Nanos,
}

impl AdaptiveLimit {
    pub fn new(configured: f64, step: f64, clean_period: Nanos) -> Self {
        Self {
            configured,
            current: configured,
            step: step.clamp(0.01, 1.0),
            clean_period: clean_period.max(1),
            last_change: 0,
        }
    }

    /// Multiply the current value by `factor` (0–1) at `now`.
    pub fn lower(&mut self, factor: f64, now: Nanos) {
        let floor = self.configured * 0.01;
        self.current = (self.current * factor.clamp(0.0, 1.0)).max(floor);
        self.last_change = now;
    }

    /// The value in force at `now`, after any recovery steps that are due.
    pub fn value(&mut self, now: Nanos) -> f64 {
        while self.current < self.configured && now >= self.last_change + self.clean_period {
            self.current = (self.current + self.configured * self.step).min(self.configured);
            self.last_change += self.clean_period;
        }
        self.current
    }

    pub fn is_reduced(&mut self, now: Nanos) -> bool {
        self.value(now) < self.configured
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::SECOND;

    #[test]
    fn climbs_back_in_steps_after_clean_periods() {
        let minute = 60 * SECOND;
        let mut limit = AdaptiveLimit::new(100.0, 0.25, 10 * minute);
        limit.lower(0.5, 0);
        assert_eq!(limit.value(0), 50.0);
        assert_eq!(limit.value(9 * minute), 50.0);
        assert_eq!(limit.value(10 * minute), 75.0);
        assert_eq!(limit.value(20 * minute), 100.0);
        assert!(!limit.is_reduced(21 * minute));
    }

    #[test]
    fn a_new_action_restarts_the_clean_period() {
        let mut limit = AdaptiveLimit::new(10.0, 0.5, 100);
        limit.lower(0.5, 0);
        limit.lower(0.5, 90);
        assert_eq!(limit.value(150), 2.5);
        assert_eq!(limit.value(190), 7.5);
        assert_eq!(limit.value(290), 10.0);
    }
}
