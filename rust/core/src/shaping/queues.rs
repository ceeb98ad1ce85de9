//! The scheduler's queues (issue 4, in progress): a scheduled queue of
//! messages waiting for their next attempt, feeding ready queues keyed by
//! (egress source, site, tenant, campaign), drained fairly under each
//! (source, site) lane's rate limit and any suspensions.
//!
//! Memory per queued message: one 48-octet slot, one 16-octet heap entry while
//! scheduled, one 4-octet ready-queue entry while ready. Like the rest of
//! `shaping`, no clock is read: callers pass `now`.

use super::rate::{Gcra, Rate};
use super::Nanos;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

/// Interned ids; 0 means "none" for tenant and campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct QueueKey {
    pub source: u32,
    pub site: u32,
    pub tenant: u32,
    pub campaign: u32,
}

impl QueueKey {
    fn lane(&self) -> (u32, u32) {
        (self.source, self.site)
    }
}

/// What can be suspended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Site(u32),
    Source(u32),
    Tenant(u32),
    Campaign(u32),
}

pub type SlotId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Free,
    Scheduled,
    Ready,
    InFlight,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    qid: [u8; 16],
    key: QueueKey,
    due: Nanos,
    attempts: u16,
    state: State,
}

/// A message handed out by [`Queues::take_ready`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub slot: SlotId,
    pub qid: [u8; 16],
    pub key: QueueKey,
    pub attempts: u16,
}

#[derive(Debug, Default)]
struct Lane {
    rate: Option<Rate>,
    gcra: Gcra,
}

#[derive(Debug, Default)]
pub struct Queues {
    slots: Vec<Slot>,
    free: Vec<SlotId>,
    scheduled: BinaryHeap<Reverse<(Nanos, SlotId)>>,
    ready: HashMap<QueueKey, VecDeque<SlotId>>,
    /// Keys with ready messages, in round-robin order.
    active: VecDeque<QueueKey>,
    lanes: HashMap<(u32, u32), Lane>,
    suspended: HashMap<Scope, Nanos>,
    queued: usize,
}

impl Queues {
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages held (scheduled, ready or in flight).
    pub fn len(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Queue a message for an attempt at `due`.
    pub fn insert(&mut self, qid: [u8; 16], key: QueueKey, due: Nanos, attempts: u16) -> SlotId {
        let slot = Slot {
            qid,
            key,
            due,
            attempts,
            state: State::Scheduled,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = slot;
                id
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as SlotId
            }
        };
        self.scheduled.push(Reverse((due, id)));
        self.queued += 1;
        id
    }

    /// Move every message due by `now` to its ready queue.
    pub fn promote(&mut self, now: Nanos) {
        while let Some(&Reverse((due, id))) = self.scheduled.peek() {
            if due > now {
                break;
            }
            self.scheduled.pop();
            let slot = &mut self.slots[id as usize];
            if slot.state != State::Scheduled || slot.due != due {
                continue; // stale entry: the slot was rescheduled or freed
            }
            slot.state = State::Ready;
            let key = slot.key;
            let queue = self.ready.entry(key).or_default();
            if queue.is_empty() {
                self.active.push_back(key);
            }
            queue.push_back(id);
        }
    }

    pub fn set_rate(&mut self, source: u32, site: u32, rate: Option<Rate>) {
        self.lanes.entry((source, site)).or_default().rate = rate;
    }

    pub fn suspend(&mut self, scope: Scope, until: Nanos) {
        self.suspended.insert(scope, until);
    }

    pub fn resume(&mut self, scope: Scope) {
        self.suspended.remove(&scope);
    }

    /// When the key's traffic may flow again, if something suspends it.
    fn suspended_until(&self, key: &QueueKey, now: Nanos) -> Option<Nanos> {
        [
            Scope::Site(key.site),
            Scope::Source(key.source),
            Scope::Tenant(key.tenant),
            Scope::Campaign(key.campaign),
        ]
        .iter()
        .filter_map(|s| self.suspended.get(s).copied())
        .filter(|until| *until > now)
        .max()
    }

    /// Up to `max` ready messages, taking keys in turn, each under its lane's
    /// rate and suspensions. Returns them and the earliest time something now
    /// held back could go (a rate wait or a suspension end), if any.
    pub fn take_ready(&mut self, now: Nanos, max: usize) -> (Vec<Taken>, Option<Nanos>) {
        self.promote(now);
        let mut taken = Vec::new();
        let mut wake: Option<Nanos> = None;
        let mut blocked = 0; // consecutive keys that could not give a message
        while taken.len() < max && blocked < self.active.len() {
            let Some(key) = self.active.pop_front() else {
                break;
            };
            let hold = self.suspended_until(&key, now).or_else(|| {
                let lane = self.lanes.entry(key.lane()).or_default();
                let rate = lane.rate?;
                lane.gcra.try_take(rate, now).err().map(|wait| now + wait)
            });
            if let Some(at) = hold {
                wake = Some(wake.map_or(at, |w| w.min(at)));
                self.active.push_back(key);
                blocked += 1;
                continue;
            }
            blocked = 0;
            let queue = self.ready.get_mut(&key).expect("active keys have a queue");
            let id = queue.pop_front().expect("active queues are not empty");
            if queue.is_empty() {
                self.ready.remove(&key);
            } else {
                self.active.push_back(key);
            }
            let slot = &mut self.slots[id as usize];
            slot.state = State::InFlight;
            taken.push(Taken {
                slot: id,
                qid: slot.qid,
                key,
                attempts: slot.attempts,
            });
        }
        (taken, wake)
    }

    /// The earliest scheduled attempt, if any.
    pub fn next_due(&mut self) -> Option<Nanos> {
        while let Some(&Reverse((due, id))) = self.scheduled.peek() {
            let slot = &self.slots[id as usize];
            if slot.state == State::Scheduled && slot.due == due {
                return Some(due);
            }
            self.scheduled.pop();
        }
        None
    }

    /// An attempt ended for good (delivered, bounced, expired): forget it.
    pub fn finish(&mut self, id: SlotId) {
        let slot = &mut self.slots[id as usize];
        if slot.state == State::Free {
            return;
        }
        slot.state = State::Free;
        self.free.push(id);
        self.queued -= 1;
    }

    /// An attempt was deferred: try again at `due`.
    pub fn retry(&mut self, id: SlotId, due: Nanos) {
        let slot = &mut self.slots[id as usize];
        slot.attempts = slot.attempts.saturating_add(1);
        slot.due = due;
        slot.state = State::Scheduled;
        self.scheduled.push(Reverse((due, id)));
    }

    /// Bytes held per queued message (slots, heap and ready entries), for the benchmark.
    pub fn memory_per_message(&self) -> usize {
        let bytes = self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.scheduled.capacity() * std::mem::size_of::<Reverse<(Nanos, SlotId)>>()
            + self.ready.values().map(|q| q.capacity() * 4).sum::<usize>();
        bytes / self.queued.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::SECOND;

    fn qid(n: u8) -> [u8; 16] {
        [n; 16]
    }

    fn key(site: u32) -> QueueKey {
        QueueKey {
            source: 1,
            site,
            ..Default::default()
        }
    }

    #[test]
    fn messages_wait_until_due_then_come_out_in_turn() {
        let mut q = Queues::new();
        q.insert(qid(1), key(1), 10, 0);
        q.insert(qid(2), key(1), 5, 0);
        q.insert(qid(3), key(2), 5, 0);
        assert_eq!(q.take_ready(4, 10).0, []);
        assert_eq!(q.next_due(), Some(5));
        let order: Vec<_> = q.take_ready(10, 10).0.iter().map(|t| t.qid[0]).collect();
        assert_eq!(order, [2, 3, 1]); // site 1, site 2, then site 1 again
    }

    #[test]
    fn a_lane_rate_holds_and_says_when_to_come_back() {
        let mut q = Queues::new();
        for n in 0..30 {
            q.insert(qid(n), key(7), 0, 0);
        }
        q.set_rate(1, 7, Some("10/s".parse().unwrap()));
        let (first, wake) = q.take_ready(0, 100);
        assert_eq!(first.len(), 10);
        assert_eq!(wake, Some(SECOND / 10));
        assert_eq!(q.take_ready(SECOND / 10, 100).0.len(), 1);
        assert_eq!(q.take_ready(SECOND, 100).0.len(), 9);
    }

    #[test]
    fn suspension_holds_one_site_not_the_others() {
        let mut q = Queues::new();
        q.insert(qid(1), key(1), 0, 0);
        q.insert(qid(2), key(2), 0, 0);
        q.suspend(Scope::Site(1), 100);
        let (taken, wake) = q.take_ready(0, 10);
        assert_eq!(taken.iter().map(|t| t.qid[0]).collect::<Vec<_>>(), [2]);
        assert_eq!(wake, Some(100));
        assert_eq!(q.take_ready(100, 10).0.len(), 1);
    }

    #[test]
    fn retry_reschedules_and_finish_frees_the_slot() {
        let mut q = Queues::new();
        let id = q.insert(qid(1), key(1), 0, 0);
        let (taken, _) = q.take_ready(0, 1);
        assert_eq!(taken[0].slot, id);
        q.retry(id, 50);
        assert_eq!(q.take_ready(49, 1).0, []);
        let again = q.take_ready(50, 1).0;
        assert_eq!(again[0].attempts, 1);
        q.finish(id);
        assert!(q.is_empty());
        let reused = q.insert(qid(9), key(1), 0, 0);
        assert_eq!(reused, id);
        assert_eq!(q.len(), 1);
    }
}
