//! The scheduled queue: a timer wheel of due times.
//!
//! Attempts due within the next `RING` buckets (each 2^30 ns, about 1.07 s;
//! about 73 minutes in all) go into the bucket of their due time, an O(1)
//! push; later ones wait in a heap and move into the wheel as it turns. A
//! bucket is sorted only when it falls due (latest first, so the due ones
//! come off its end), and messages still come out in exact due order. A binary heap of a million entries spends most of its time on
//! cache misses sifting; the wheel touches memory in order.
//!
//! Entries are (due, slot). The calendar does not know whether a slot was
//! rescheduled or freed meanwhile: callers skip stale entries (see
//! `Queues::promote`).

use super::Nanos;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

const BUCKET_SHIFT: u32 = 30;
const RING: usize = 1 << 12;
const WORDS: usize = RING / 64;
/// A drained bucket keeps at most this much room for the next turn.
const KEEP_CAPACITY: usize = 256;

pub type Entry = (Nanos, u32);

#[derive(Debug)]
pub struct Calendar {
    /// Bucket number (due >> BUCKET_SHIFT) of `ring[head]`.
    base: u64,
    head: usize,
    ring: Vec<Vec<Entry>>,
    /// One bit per ring position: is the bucket non-empty?
    occupied: Vec<u64>,
    near: usize,
    far: BinaryHeap<Reverse<Entry>>,
}

impl Default for Calendar {
    fn default() -> Self {
        Self {
            base: 0,
            head: 0,
            ring: vec![Vec::new(); RING],
            occupied: vec![0; WORDS],
            near: 0,
            far: BinaryHeap::new(),
        }
    }
}

fn bucket_of(due: Nanos) -> u64 {
    due >> BUCKET_SHIFT
}

impl Calendar {
    pub fn len(&self) -> usize {
        self.near + self.far.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, due: Nanos, slot: u32) {
        let ahead = bucket_of(due).saturating_sub(self.base);
        if ahead < RING as u64 {
            let pos = (self.head + ahead as usize) % RING;
            self.ring[pos].push((due, slot));
            self.occupied[pos / 64] |= 1 << (pos % 64);
            self.near += 1;
        } else {
            self.far.push(Reverse((due, slot)));
        }
    }

    /// Ring position and bucket number of the first non-empty bucket.
    fn first_occupied(&self) -> Option<(usize, u64)> {
        if self.near == 0 {
            return None;
        }
        // Scan the bitset circularly from `head`.
        for step in 0..=WORDS {
            let word_index = (self.head / 64 + step) % WORDS;
            let mut word = self.occupied[word_index];
            if step == 0 {
                word &= !0u64 << (self.head % 64); // positions before head come last
            }
            if step == WORDS {
                word = self.occupied[word_index] & !(!0u64 << (self.head % 64));
            }
            if word != 0 {
                let pos = word_index * 64 + word.trailing_zeros() as usize;
                let ahead = (pos + RING - self.head) % RING;
                return Some((pos, self.base + ahead as u64));
            }
        }
        None
    }

    /// Turn the wheel so `bucket` is at the head, pulling in what now fits
    /// from the far heap. Every bucket before it must be empty.
    fn turn_to(&mut self, bucket: u64) {
        if bucket <= self.base {
            return;
        }
        if self.near == 0 {
            self.head = 0;
        } else {
            self.head = (self.head + (bucket - self.base) as usize) % RING;
        }
        self.base = bucket;
        let horizon = self.base + RING as u64;
        while let Some(&Reverse((due, slot))) = self.far.peek() {
            if bucket_of(due) >= horizon {
                break;
            }
            self.far.pop();
            self.push(due, slot);
        }
    }

    /// Append every entry due by `now` to `out`, in due order.
    pub fn pop_due(&mut self, now: Nanos, out: &mut Vec<Entry>) {
        loop {
            let Some((pos, bucket)) = self.first_occupied() else {
                match self.far.peek() {
                    Some(&Reverse((due, _))) if due <= now => {
                        self.turn_to(bucket_of(due));
                        continue;
                    }
                    _ => return,
                }
            };
            if bucket << BUCKET_SHIFT > now && bucket > self.base {
                return; // (the head bucket can hold entries pushed late, already due)
            }
            let entries = &mut self.ring[pos];
            entries.sort_unstable_by(|a, b| b.cmp(a));
            let not_due = entries.partition_point(|&(due, _)| due > now);
            let due_count = entries.len() - not_due;
            if due_count == 0 {
                return;
            }
            out.extend(entries.drain(not_due..).rev());
            self.near -= due_count;
            if !entries.is_empty() {
                return; // the rest of this bucket is not due yet
            }
            entries.shrink_to(KEEP_CAPACITY);
            self.occupied[pos / 64] &= !(1 << (pos % 64));
            self.turn_to(bucket + 1);
        }
    }

    /// The earliest entry for which `live` holds; entries failing it are dropped.
    pub fn first_live(&mut self, live: impl Fn(Entry) -> bool) -> Option<Entry> {
        loop {
            let Some((pos, bucket)) = self.first_occupied() else {
                while let Some(&Reverse(entry)) = self.far.peek() {
                    if live(entry) {
                        return Some(entry);
                    }
                    self.far.pop();
                }
                return None;
            };
            let entries = &mut self.ring[pos];
            let before = entries.len();
            entries.retain(|&e| live(e));
            self.near -= before - entries.len();
            if let Some(&first) = entries.iter().min() {
                return Some(first);
            }
            self.occupied[pos / 64] &= !(1 << (pos % 64));
            self.turn_to(bucket + 1);
        }
    }

    /// Bytes held, for the memory-per-message figure.
    pub fn memory(&self) -> usize {
        self.ring.len() * std::mem::size_of::<Vec<Entry>>()
            + self.ring.iter().map(Vec::capacity).sum::<usize>() * std::mem::size_of::<Entry>()
            + self.far.capacity() * std::mem::size_of::<Entry>()
            + WORDS * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shaping::SECOND;

    fn drain(c: &mut Calendar, now: Nanos) -> Vec<Entry> {
        let mut out = Vec::new();
        c.pop_due(now, &mut out);
        out
    }

    #[test]
    fn entries_come_out_in_due_order_when_due() {
        let mut c = Calendar::default();
        c.push(5 * SECOND, 1);
        c.push(SECOND, 2);
        c.push(SECOND + 1, 3);
        c.push(SECOND, 0);
        assert_eq!(drain(&mut c, SECOND - 1), []);
        assert_eq!(drain(&mut c, SECOND), [(SECOND, 0), (SECOND, 2)]);
        assert_eq!(drain(&mut c, 4 * SECOND), [(SECOND + 1, 3)]);
        assert_eq!(c.len(), 1);
        assert_eq!(drain(&mut c, 10 * SECOND), [(5 * SECOND, 1)]);
        assert!(c.is_empty());
    }

    #[test]
    fn far_entries_wait_in_the_heap_then_join_the_wheel() {
        let mut c = Calendar::default();
        let day = 86_400 * SECOND;
        for n in 0..5u32 {
            c.push(day * u64::from(n + 1), n);
            c.push(u64::from(n) * SECOND, 100 + n);
        }
        assert_eq!(c.len(), 10);
        assert_eq!(c.first_live(|_| true), Some((0, 100)));
        assert_eq!(drain(&mut c, 10 * SECOND).len(), 5);
        assert_eq!(c.first_live(|_| true), Some((day, 0)));
        let later: Vec<u32> = drain(&mut c, 3 * day).iter().map(|e| e.1).collect();
        assert_eq!(later, [0, 1, 2]);
        // An entry pushed "in the past" after the wheel turned is due at once.
        c.push(SECOND, 42);
        assert_eq!(drain(&mut c, 3 * day), [(SECOND, 42)]);
        assert_eq!(drain(&mut c, 10 * day).len(), 2);
        assert!(c.is_empty());
    }

    #[test]
    fn the_wheel_wraps_around_the_ring() {
        let mut c = Calendar::default();
        let bucket = 1u64 << BUCKET_SHIFT;
        let mut now = 0;
        // Walk the clock over two full turns of the ring, one entry per 999 buckets.
        for n in 0..70u32 {
            let due = now + 1000 * bucket;
            c.push(due, n);
            now += 999 * bucket;
            let out = drain(&mut c, now);
            assert!(out.iter().all(|&(d, _)| d <= now));
        }
        let rest = drain(&mut c, u64::MAX);
        assert_eq!(c.len(), 0);
        assert!(rest.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn first_live_drops_stale_entries() {
        let mut c = Calendar::default();
        c.push(SECOND, 1);
        c.push(2 * SECOND, 2);
        assert_eq!(c.first_live(|(_, slot)| slot != 1), Some((2 * SECOND, 2)));
        assert_eq!(c.len(), 1);
        assert_eq!(c.first_live(|_| false), None);
        assert!(c.is_empty());
    }
}
