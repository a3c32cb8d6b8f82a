//! The process's allocator: mimalloc, except for blocks of 32 MiB and more, which are mapped
//! straight from the kernel so that growing or shrinking one moves no bytes.
//!
//! Why: on the machines c360 runs on (virtual machines that hand freed memory back to the
//! host), writing a page for the first time is the dearest thing a large build does; perf put
//! the kernel zeroing fresh pages at a third of an identity build. A vector that doubles
//! through `malloc`/`memcpy` writes its whole contents again into fresh pages at every step,
//! so a 200 MB vector grown by pushes costs 400 MB of first touches and 200 MB of copying.
//! `mremap` moves the pages instead: growth only ever touches the new tail, and `shrink_to`
//! gives the tail back without a copy. Fresh mappings are also zero already, so a large
//! `vec![0; n]` costs nothing until written (mimalloc would `memset` reused memory).
//!
//! Below the threshold everything is mimalloc's, whose small-object speed is why it is used
//! at all (see [`tune_mimalloc`]). The threshold is far above anything allocated per row or
//! per request, so the extra system calls are a handful per large build.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc;

/// Blocks at least this large are mapped directly.
const DIRECT_BYTES: usize = 32 << 20;
/// Mappings are page-aligned, so they serve any alignment up to a page.
const PAGE: usize = 4096;

/// The global allocator of the server, the tests and the benches alike (declared in `lib.rs`).
pub struct C360Allocator;

fn is_direct(size: usize, align: usize) -> bool {
    size >= DIRECT_BYTES && align <= PAGE
}

fn mapped_len(size: usize) -> usize {
    size.div_ceil(PAGE) * PAGE
}

/// A fresh zero-filled mapping, backed by 2 MiB pages where the kernel allows them (one fault
/// per 2 MiB instead of 512, and fewer TLB misses in large hash tables); null on failure.
unsafe fn map(size: usize) -> *mut u8 {
    let len = mapped_len(size);
    // Safety: an anonymous private mapping aliases nothing.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    // Advice only: without huge pages the mapping works the same.
    // Safety: `ptr..ptr + len` is the mapping just made.
    unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) };
    warmer::ask(ptr as usize, len);
    ptr.cast()
}

/// Faults in fresh large mappings on a thread of its own, from their end backwards, while
/// the thread that mapped them writes from the front.
///
/// Why: writing a page for the first time costs the writer the kernel's zeroing and, on a
/// virtual machine, the host's backing of the page (about 1.8 s per GB here). An identity
/// build's loading thread spent a third of its time in those faults, on its interner's
/// arena blocks and tables, while the other core, waiting on it, sat idle a fifth of the
/// time. Pages faulted in ahead cost the writer nothing. A mapping freed (or shrunk, or
/// placed elsewhere) meanwhile makes the kernel refuse the advice for its range: the warmer
/// stops there. It never allocates: requests sit in a fixed ring, dropped when it is full.
mod warmer {
    use std::sync::{Condvar, Mutex, Once};

    /// Ranges waiting: a handful per large build.
    const SLOTS: usize = 32;
    /// Faulted in per call, so that a freed range stops the warmer soon.
    const STEP: usize = 2 << 20;

    struct Ring {
        ranges: [(usize, usize); SLOTS],
        len: usize,
    }

    static RING: Mutex<Ring> = Mutex::new(Ring {
        ranges: [(0, 0); SLOTS],
        len: 0,
    });
    static WAKE: Condvar = Condvar::new();
    static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// Asks for `start..start + len` to be faulted in. Never allocates; waits at most for the
    /// warmer to take a range off the ring (nothing allocates while holding it).
    pub(super) fn ask(start: usize, len: usize) {
        if !STARTED.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut ring = RING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if ring.len < SLOTS {
            let at = ring.len;
            ring.ranges[at] = (start, len);
            ring.len += 1;
            WAKE.notify_one();
        }
    }

    /// Starts the warmer (once; called where the process starts its engine).
    pub(crate) fn start() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("c360-prefault".into())
                .spawn(run);
            if spawned.is_ok() {
                STARTED.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }

    fn run() {
        loop {
            let (start, len) = {
                let mut ring = RING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                while ring.len == 0 {
                    ring = WAKE
                        .wait(ring)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                }
                // Newest first: the oldest is likeliest to be written through by now.
                ring.len -= 1;
                let at = ring.len;
                ring.ranges[at]
            };
            let mut end = start + len;
            while end > start {
                let from = end.saturating_sub(STEP).max(start);
                // Safety: advice only. On a range no longer mapped the kernel refuses it and
                // changes nothing; on one mapped again since, it faults in pages that a
                // writer would have faulted in anyway.
                let refused = unsafe {
                    libc::madvise(
                        from as *mut libc::c_void,
                        end - from,
                        libc::MADV_POPULATE_WRITE,
                    )
                } != 0;
                if refused {
                    break;
                }
                end = from;
            }
        }
    }
}

pub(crate) use warmer::start as start_prefaulting;

unsafe impl GlobalAlloc for C360Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_direct(layout.size(), layout.align()) {
            // Safety: forwarded contract.
            unsafe { map(layout.size()) }
        } else {
            // Safety: forwarded contract.
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_direct(layout.size(), layout.align()) {
            // Safety: forwarded contract; anonymous mappings are zero-filled.
            unsafe { map(layout.size()) }
        } else {
            // Safety: forwarded contract.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_direct(layout.size(), layout.align()) {
            // Safety: `ptr` came from `map` with this size (the caller passes the layout it
            // allocated or last reallocated with, and the size alone decides the path).
            unsafe { libc::munmap(ptr.cast(), mapped_len(layout.size())) };
        } else {
            // Safety: forwarded contract.
            unsafe { MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let was_direct = is_direct(layout.size(), layout.align());
        let is_direct_now = is_direct(new_size, layout.align());
        match (was_direct, is_direct_now) {
            (false, false) => {
                // Safety: forwarded contract.
                unsafe { MiMalloc.realloc(ptr, layout, new_size) }
            }
            (true, true) => {
                // Safety: `ptr` is a mapping of the old size; the kernel moves its pages
                // (contents kept) and may place it elsewhere, which `GlobalAlloc` allows.
                let moved = unsafe {
                    libc::mremap(
                        ptr.cast(),
                        mapped_len(layout.size()),
                        mapped_len(new_size),
                        libc::MREMAP_MAYMOVE,
                    )
                };
                if moved == libc::MAP_FAILED {
                    std::ptr::null_mut()
                } else {
                    let (old_len, new_len) = (mapped_len(layout.size()), mapped_len(new_size));
                    if new_len > old_len {
                        warmer::ask(moved as usize + old_len, new_len - old_len);
                    }
                    moved.cast()
                }
            }
            // Crossing the threshold: a copy of at most 32 MiB, once per vector.
            _ => {
                // Safety: the new layout is valid: same alignment, and `new_size` is non-zero
                // and does not overflow when rounded up (the caller's contract).
                let new_layout =
                    unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                // Safety: forwarded contract, with the layout just built.
                let new_ptr = unsafe { self.alloc(new_layout) };
                if !new_ptr.is_null() {
                    // Safety: both blocks are live and distinct, and hold at least this much.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new_ptr
            }
        }
    }
}

/// mimalloc's options, by their index in its `mi_option_e` (v3), which the sys crate does not
/// all name.
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Sets how mimalloc takes memory from the kernel and gives it back.
///
/// - Freed pages go back within `PURGE_DELAY_MS`, and arenas are committed as they are used.
///   By default mimalloc (v3) commits its 1 GiB arenas eagerly and purges freed pages a
///   second after the free. A build streams gigabytes of source batches through it, each
///   freed milliseconds after it was made, so their pages stayed resident: at 1M customers
///   the identity build's peak RSS held a gigabyte more than the graph and its loader.
///   Purging at once (a delay of 0) saved another 0.4 GB but made the build 15-25% slower.
/// - Its own large allocations are backed by 2 MiB pages (transparent huge pages, where the
///   kernel allows them on request). Measured on the 1M-customer identity bench before
///   blocks were mapped directly: the build 42.6 → 38.9 s.
pub(crate) fn tune_mimalloc() {
    const PURGE_DELAY_MS: std::ffi::c_long = 50;
    static ONCE: std::sync::Once = std::sync::Once::new();
    // Safety: sets process-wide options; mimalloc reads them atomically each time it uses
    // them, so this is sound at any time and from any thread.
    ONCE.call_once(|| unsafe {
        libmimalloc_sys::mi_option_set_enabled(libmimalloc_sys::mi_option_large_os_pages, true);
        libmimalloc_sys::mi_option_set_enabled(ARENA_EAGER_COMMIT, false);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vector that grows by pushes across the threshold, is mapped, grows in place, shrinks
    /// back under it and is freed keeps its contents at every step.
    #[test]
    fn vectors_keep_their_contents_across_the_direct_threshold() {
        let words = DIRECT_BYTES / 8;
        let mut v: Vec<u64> = Vec::new();
        for i in 0..(3 * words as u64) {
            v.push(i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        assert!(v.capacity() * 8 >= DIRECT_BYTES);
        assert!(
            v.iter()
                .enumerate()
                .all(|(i, &x)| x == (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        );
        v.truncate(words / 4);
        v.shrink_to_fit();
        assert!(v.capacity() * 8 < DIRECT_BYTES);
        assert!(
            v.iter()
                .enumerate()
                .all(|(i, &x)| x == (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        );
    }

    /// A fresh large mapping is faulted in by the warmer without being written: without it,
    /// none of its pages would be resident.
    #[test]
    fn fresh_large_mappings_are_faulted_in_ahead() {
        start_prefaulting();
        let len = 2 * DIRECT_BYTES;
        let block: Vec<u8> = Vec::with_capacity(len);
        let pages = len / PAGE;
        let resident = || {
            let mut flags = vec![0u8; pages];
            // Safety: the range is the block's mapping (page-aligned, `len` long), alive
            // while `block` is; `flags` has a byte per page.
            let status = unsafe {
                libc::mincore(block.as_ptr() as *mut libc::c_void, len, flags.as_mut_ptr())
            };
            assert_eq!(status, 0);
            flags.iter().filter(|&&f| f & 1 != 0).count()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while resident() < pages && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(resident(), pages);
    }

    /// Large zeroed blocks read as zero, and a block past the threshold can be written whole.
    #[test]
    fn large_zeroed_blocks_are_zero() {
        let mut v = vec![0u32; DIRECT_BYTES];
        assert!(v.iter().all(|&x| x == 0));
        v.iter_mut().enumerate().for_each(|(i, x)| *x = i as u32);
        assert_eq!(v[DIRECT_BYTES - 1], DIRECT_BYTES as u32 - 1);
        let copy = v.clone();
        assert_eq!(copy, v);
    }

    /// Alignments above a page stay with mimalloc, which honours them.
    #[test]
    fn alignments_above_a_page_are_honoured() {
        let layout = Layout::from_size_align(DIRECT_BYTES, 2 * PAGE).unwrap();
        // Safety: a valid non-zero layout, freed with the same layout.
        unsafe {
            let p = C360Allocator.alloc(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % (2 * PAGE), 0);
            C360Allocator.dealloc(p, layout);
        }
    }
}
