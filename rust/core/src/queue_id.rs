//! Queue identifiers: short, unique per node, and sortable by creation time,
//! like Postfix's long queue IDs, so a directory listing is in arrival order.
//!
//! Layout (80 bits, 16 Crockford base32 characters):
//! 48 bits of milliseconds since the Unix epoch, then 32 bits made of a
//! per-generator random prefix mixed with a counter, so two processes started
//! in the same millisecond still differ.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Generates queue IDs; cheap to call from many threads.
#[derive(Debug)]
pub struct QueueIdGenerator {
    counter: AtomicU32,
}

impl QueueIdGenerator {
    /// A generator whose counter starts at a random point.
    pub fn new() -> Self {
        let mut seed = [0u8; 4];
        // Without an entropy source the IDs stay unique within this process;
        // the random start only separates processes.
        let _ = getrandom::fill(&mut seed);
        Self {
            counter: AtomicU32::new(u32::from_le_bytes(seed)),
        }
    }

    /// The next ID for the current wall-clock time.
    pub fn next_id(&self) -> String {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.id_at(millis)
    }

    /// The next ID for a given time in milliseconds (used by tests).
    pub fn id_at(&self, millis: u64) -> String {
        let low = self.counter.fetch_add(1, Ordering::Relaxed);
        encode(((millis as u128 & 0xFFFF_FFFF_FFFF) << 32) | low as u128)
    }
}

impl Default for QueueIdGenerator {
    fn default() -> Self {
        Self::new()
    }
}

fn encode(mut value: u128) -> String {
    let mut out = [0u8; 16];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 31) as usize];
        value >>= 5;
    }
    out.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_fixed_length() {
        let gen = QueueIdGenerator::new();
        let ids: HashSet<String> = (0..10_000).map(|_| gen.next_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 16));
    }

    #[test]
    fn ids_sort_by_time() {
        let gen = QueueIdGenerator::new();
        let early = gen.id_at(1_000);
        let late = gen.id_at(2_000);
        assert!(early < late);
    }

    #[test]
    fn alphabet_is_filename_and_case_safe() {
        let id = QueueIdGenerator::new().next_id();
        assert!(id.bytes().all(|b| ALPHABET.contains(&b)));
    }
}
