//! The scheduler's queues: a scheduled queue (the [`Calendar`] timer wheel) of
//! messages waiting for their next attempt, feeding ready queues keyed by
//! (egress source, site, tenant, campaign) that are drained in turn, so one
//! busy key cannot starve the others.
//!
//! Rates, connection limits and suspensions are applied after this, per
//! connection, by the delivery engine (with `Gcra` and friends from this
//! module's siblings): they depend on which source and MX host a connection
//! has, which only the engine knows.
//!
//! Memory per queued message: one 48-octet slot, one 16-octet calendar entry
//! while scheduled, one 4-octet ready-queue entry while ready. Like the rest
//! of `shaping`, no clock is read: callers pass `now`.

use super::calendar::{Calendar, Entry};
use super::Nanos;
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;

/// Interned ids; 0 means "none" for tenant and campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct QueueKey {
    pub source: u32,
    pub site: u32,
    pub tenant: u32,
    pub campaign: u32,
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
pub struct Queues {
    slots: Vec<Slot>,
    free: Vec<SlotId>,
    scheduled: Calendar,
    /// Reused by `promote` for the entries that fell due.
    due_scratch: Vec<Entry>,
    ready: HashMap<QueueKey, VecDeque<SlotId>>,
    /// Keys with ready messages, in round-robin order.
    active: VecDeque<QueueKey>,
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
        self.scheduled.push(due, id);
        self.queued += 1;
        id
    }

    /// Move every message due by `now` to its ready queue.
    pub fn promote(&mut self, now: Nanos) {
        let mut due_entries = std::mem::take(&mut self.due_scratch);
        self.scheduled.pop_due(now, &mut due_entries);
        for &(due, id) in &due_entries {
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
        due_entries.clear();
        self.due_scratch = due_entries;
    }

    /// Up to `max` ready messages, taking keys in turn.
    pub fn take_ready(&mut self, now: Nanos, max: usize) -> Vec<Taken> {
        self.promote(now);
        let mut taken = Vec::with_capacity(max.min(self.queued));
        while taken.len() < max {
            let Some(key) = self.active.pop_front() else {
                break;
            };
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
        taken
    }

    /// The earliest scheduled attempt, if any.
    pub fn next_due(&mut self) -> Option<Nanos> {
        let slots = &self.slots;
        self.scheduled
            .first_live(|(due, id)| {
                let slot = &slots[id as usize];
                slot.state == State::Scheduled && slot.due == due
            })
            .map(|(due, _)| due)
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
        self.scheduled.push(due, id);
    }

    /// Bytes held per queued message (slots, heap and ready entries), for the benchmark.
    pub fn memory_per_message(&self) -> usize {
        let bytes = self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.scheduled.memory()
            + self.ready.values().map(|q| q.capacity() * 4).sum::<usize>();
        bytes / self.queued.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(q.take_ready(4, 10), []);
        assert_eq!(q.next_due(), Some(5));
        let order: Vec<_> = q.take_ready(10, 10).iter().map(|t| t.qid[0]).collect();
        assert_eq!(order, [2, 3, 1]); // site 1, site 2, then site 1 again
    }

    #[test]
    fn one_busy_key_does_not_starve_another() {
        let mut q = Queues::new();
        for n in 0..100 {
            q.insert(qid(1), key(1), 0, 0);
            if n < 3 {
                q.insert(qid(2), key(2), 0, 0);
            }
        }
        let first: Vec<u8> = q.take_ready(0, 6).iter().map(|t| t.qid[0]).collect();
        assert_eq!(first, [1, 2, 1, 2, 1, 2]);
    }

    #[test]
    fn retry_reschedules_and_finish_frees_the_slot() {
        let mut q = Queues::new();
        let id = q.insert(qid(1), key(1), 0, 0);
        let taken = q.take_ready(0, 1);
        assert_eq!(taken[0].slot, id);
        q.retry(id, 50);
        assert_eq!(q.take_ready(49, 1), []);
        let again = q.take_ready(50, 1);
        assert_eq!(again[0].attempts, 1);
        q.finish(id);
        assert!(q.is_empty());
        let reused = q.insert(qid(9), key(1), 0, 0);
        assert_eq!(reused, id);
        assert_eq!(q.len(), 1);
    }
}
