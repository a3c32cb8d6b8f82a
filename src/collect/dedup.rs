//! The `messageId` dedup window: which ids were accepted recently, and by which generation
//! (group commit), so that a retry is acknowledged without being stored twice.
//!
//! It is a fixed memory budget. Ids are 128-bit hashes kept in a few *segments*, each a hash
//! table sized once for the ids it will ever hold; the newest segment takes new ids, and
//! when it is full the oldest segment is dropped whole (or earlier, once its newest id is
//! older than the window). So the tables never grow, never rehash millions of ids while
//! requests wait on the lock, and never collect the tombstones that per-id removal leaves
//! (a hash table with steady deletions eventually doubles to make room for them: what a
//! plain map plus an expiry queue does, at about 130 bytes per id). Here an id costs about
//! [`BYTES_PER_ID`] bytes, and the oldest are forgotten a segment (an eighth or so of the
//! budget) at a time: the window holds between `max_ids - segment` and `max_ids` ids once
//! full, and every id younger than the window while there is room.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::{Duration, Instant};

/// A message id's 128-bit hash, as two words: a map entry with its generation is then 24
/// bytes (a `u128` is 16-byte aligned, which would make it 32).
pub type IdKey = (u64, u64);

/// Hashes an [`IdKey`] by folding its two words: they already are a hash of the message id,
/// so hashing them again (SipHash, by default) would only cost time, and a new id is looked
/// up in every segment while the collector's lock is held.
#[derive(Default)]
pub struct IdKeyHasher(u64);

impl Hasher for IdKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = self.0.rotate_left(29) ^ word;
    }

    // Only `write_u64` is called for an `IdKey`; bytes are folded the same way, should a
    // key of another shape ever be hashed with it.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }
}

/// A map or set keyed by [`IdKey`], hashed with [`IdKeyHasher`].
pub type IdKeyMap<V> = HashMap<IdKey, V, BuildHasherDefault<IdKeyHasher>>;

/// What one remembered id costs once the window is full: a 24-byte entry and a control byte
/// in a table at most 7/8 full.
pub const BYTES_PER_ID: usize = 29;

/// The budget is split in about this many segments: fewer forget more ids at once, more
/// cost a lookup each for every new id.
const SEGMENTS: usize = 8;

struct Segment {
    /// id → the generation that accepted it.
    ids: IdKeyMap<u64>,
    /// When its newest id was accepted: once that is older than the window, so are all.
    newest: Instant,
}

pub struct DedupWindow {
    /// Oldest first; the last one takes new ids.
    segments: VecDeque<Segment>,
    /// Ids one segment holds: its table's capacity, so that it never grows.
    per_segment: usize,
    /// Segments alive at most, the one being filled included.
    max_segments: usize,
    window: Duration,
    len: usize,
}

impl DedupWindow {
    /// A window of `window` holding at most `max_ids` ids.
    pub fn new(max_ids: usize, window: Duration) -> DedupWindow {
        let per_segment = IdKeyMap::<u64>::with_capacity_and_hasher(
            max_ids.div_ceil(SEGMENTS).max(1),
            Default::default(),
        )
        .capacity()
        .min(max_ids)
        .max(1);
        DedupWindow {
            segments: VecDeque::new(),
            per_segment,
            max_segments: (max_ids / per_segment).max(1),
            window,
            len: 0,
        }
    }

    /// Forgets the segments whose ids are all older than the window.
    pub fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.segments.front() {
            if now.duration_since(oldest.newest) < self.window {
                break;
            }
            self.drop_oldest();
        }
    }

    /// The generation that accepted `key`, if it is remembered.
    pub fn get(&self, key: &IdKey) -> Option<u64> {
        // Newest first: a retry is most often of a recent id.
        self.segments
            .iter()
            .rev()
            .find_map(|segment| segment.ids.get(key).copied())
    }

    /// Remembers `key` as accepted by `generation` (the caller checked it is not known).
    pub fn insert(&mut self, key: IdKey, generation: u64, now: Instant) {
        let full = self
            .segments
            .back()
            .is_none_or(|segment| segment.ids.len() >= self.per_segment);
        if full {
            while self.segments.len() >= self.max_segments {
                self.drop_oldest();
            }
            self.segments.push_back(Segment {
                ids: IdKeyMap::with_capacity_and_hasher(self.per_segment, Default::default()),
                newest: now,
            });
        }
        if let Some(segment) = self.segments.back_mut() {
            if segment.ids.insert(key, generation).is_none() {
                self.len += 1;
            }
            segment.newest = now;
        }
    }

    /// Forgets the ids `generation` accepted (its commit failed: their retries must be
    /// stored). A scan of every id, but failures are rare.
    pub fn forget_generation(&mut self, generation: u64) {
        for segment in &mut self.segments {
            segment.ids.retain(|_, g| *g != generation);
        }
        self.len = self.segments.iter().map(|s| s.ids.len()).sum();
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn drop_oldest(&mut self) {
        if let Some(oldest) = self.segments.pop_front() {
            self.len -= oldest.ids.len();
        }
    }

    /// Slots of every segment's table (tests: that none ever grows past its budget).
    #[cfg(test)]
    fn slots(&self) -> Vec<usize> {
        self.segments.iter().map(|s| s.ids.capacity()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u64) -> IdKey {
        (n, n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    #[test]
    fn holds_at_most_max_ids_forgetting_the_oldest_first() {
        let mut window = DedupWindow::new(10_000, Duration::from_secs(3600));
        let now = Instant::now();
        for n in 0..100_000 {
            if window.get(&key(n)).is_none() {
                window.insert(key(n), n, now);
            }
            assert!(window.len() <= 10_000);
        }
        // The newest are there, the oldest are gone, and at least all but one segment's
        // worth of the budget is in use.
        assert_eq!(window.get(&key(99_999)), Some(99_999));
        assert_eq!(window.get(&key(0)), None);
        assert!(
            window.len() >= 10_000 - window.per_segment,
            "{}",
            window.len()
        );
    }

    #[test]
    fn its_tables_never_grow_however_long_the_load() {
        let mut window = DedupWindow::new(10_000, Duration::from_secs(3600));
        let now = Instant::now();
        for n in 0..50_000 {
            window.insert(key(n), n, now);
        }
        let slots = window.slots();
        for n in 50_000..500_000 {
            window.insert(key(n), n, now);
        }
        assert_eq!(window.slots(), slots);
        // Entry and control byte per slot: the whole budget, over the ids it may hold.
        let bytes: usize = slots.iter().map(|s| s * 25).sum();
        assert!(
            bytes <= 10_000 * BYTES_PER_ID,
            "{bytes} bytes for 10,000 ids"
        );
    }

    #[test]
    fn ids_older_than_the_window_are_forgotten() {
        let mut window = DedupWindow::new(1000, Duration::from_millis(100));
        let start = Instant::now();
        window.insert(key(1), 1, start);
        window.expire(start + Duration::from_millis(50));
        assert_eq!(window.get(&key(1)), Some(1));
        window.expire(start + Duration::from_millis(150));
        assert_eq!(window.get(&key(1)), None);
        assert!(window.is_empty());
    }

    #[test]
    fn a_failed_generation_is_forgotten_and_the_rest_kept() {
        let mut window = DedupWindow::new(1000, Duration::from_secs(60));
        let now = Instant::now();
        window.insert(key(1), 7, now);
        window.insert(key(2), 8, now);
        window.forget_generation(7);
        assert_eq!((window.get(&key(1)), window.get(&key(2))), (None, Some(8)));
        assert_eq!(window.len(), 1);
    }
}
