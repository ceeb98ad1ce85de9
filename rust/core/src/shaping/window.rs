//! "N in D" thresholds: has something happened at least N times within the
//! last D? Used by reply-driven automation (`5 in 10m` 421 replies → suspend).

use super::Nanos;
use std::collections::VecDeque;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Threshold {
    pub count: usize,
    pub within: Nanos,
}

/// The times of recent events; never holds more than `count` of them.
#[derive(Debug, Clone, Default)]
pub struct EventWindow {
    times: VecDeque<Nanos>,
}

impl EventWindow {
    /// Record one event at `now`; true when the threshold is reached.
    pub fn record(&mut self, threshold: &Threshold, now: Nanos) -> bool {
        if threshold.count <= 1 {
            return true;
        }
        self.times.push_back(now);
        while self.times.len() > threshold.count {
            self.times.pop_front();
        }
        let oldest = *self.times.front().unwrap_or(&now);
        self.times.len() >= threshold.count && now.saturating_sub(oldest) <= threshold.within
    }

    pub fn clear(&mut self) {
        self.times.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::SECOND;

    #[test]
    fn fires_only_when_enough_events_fall_in_the_window() {
        let t = Threshold {
            count: 3,
            within: 600 * SECOND,
        };
        let mut w = EventWindow::default();
        assert!(!w.record(&t, 0));
        assert!(!w.record(&t, 100 * SECOND));
        assert!(!w.record(&t, 700 * SECOND)); // 0 s fell out of the window
        assert!(!w.record(&t, 710 * SECOND)); // and 100 s too
        assert!(w.record(&t, 720 * SECOND)); // 700, 710, 720: three within 10 minutes
    }

    #[test]
    fn a_threshold_of_one_fires_at_once() {
        let t = Threshold {
            count: 1,
            within: 0,
        };
        assert!(EventWindow::default().record(&t, 5));
    }
}
