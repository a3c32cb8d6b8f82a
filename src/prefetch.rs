//! Software prefetch: asks for the cache line of an element that a loop will read a few
//! iterations later. The identity stitch's passes walk records in processing order and, for
//! each, read per-value and per-profile arrays at random (tens of MB, far beyond the caches),
//! and an index build inserts every row at a random slot; each such read is a cache miss the
//! loop otherwise waits for, one at a time.

/// How many records ahead of the one at hand the passes prefetch. A record takes a few
/// hundred nanoseconds to stitch and a miss costs 100-200 ns, so a few records ahead is enough
/// for the line to arrive, and not so far that it is evicted before it is used.
pub(crate) const AHEAD: usize = 8;

/// How far ahead loops that do only a few nanoseconds of work per element prefetch (writing
/// a graph's state: a row per record read at random): a miss then spans a few dozen of them.
pub(crate) const AHEAD_FAST: usize = 32;

/// Starts loading `items[index]` into the caches without waiting for it. Out-of-range indices
/// are ignored: a prefetch is only a hint.
#[inline(always)]
pub(crate) fn prefetch<T>(items: &[T], index: usize) {
    if let Some(item) = items.get(index) {
        #[cfg(target_arch = "x86_64")]
        // Safety: a prefetch never faults and reads nothing into the program; the address is
        // an element of a live slice anyway.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>((item as *const T).cast::<i8>());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = item;
    }
}
