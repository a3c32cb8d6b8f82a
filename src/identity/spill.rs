//! The scratch file of a spilling interner (see `Interner::spilling`): its full key blocks
//! written out and mapped back, and the per-key checks that stand in for their bytes.

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::BuildHasher;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::Arc;

use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::error::ArrowError;

use super::intern::{BLOCK_SHIFT, hash_bytes};

/// Where a spilling interner's sealed blocks go, and how it tells keys apart without them.
pub(super) struct Spill {
    /// An unlinked scratch file, made at the first seal: block `b` lies at offset `b × BLOCK`,
    /// so a key's position is also its file offset.
    pub(super) file: Option<File>,
    /// Set once creating or writing the file failed: later blocks then stay on the heap.
    pub(super) failed: bool,
    /// How many of the first sealed blocks are mapped from the file rather than on the heap.
    pub(super) on_file: usize,
    /// A second hash of each key (by id) under a seed of its own. With the table's 32-bit tag
    /// and the key's length it tells keys apart (96 bits: a false match among 100M keys is
    /// about 10^-13 likely), so that interning never reads a spilled key back.
    pub(super) checks: Vec<u64>,
    seed: u64,
}

impl Spill {
    pub(super) fn new() -> Self {
        Spill {
            file: None,
            failed: false,
            on_file: 0,
            checks: Vec::new(),
            seed: RandomState::new().hash_one(0xC4EC_u64),
        }
    }

    /// The check of `prefix ++ body` (see `checks`).
    #[inline]
    pub(super) fn check(&self, prefix: &[u8], body: &[u8]) -> u64 {
        hash_bytes(self.seed, [prefix, body])
    }

    /// Writes block `index` and maps it back; `None` (and the heap from then on) on failure.
    pub(super) fn store(&mut self, index: usize, bytes: &[u8]) -> Option<Buffer> {
        if self.failed || index != self.on_file {
            return None;
        }
        match self.write_and_map(index, bytes) {
            Ok(block) => {
                self.on_file += 1;
                Some(block)
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    dir = %std::env::temp_dir().display(),
                    "cannot spill interned keys to a scratch file; keeping them in memory"
                );
                self.failed = true;
                None
            }
        }
    }

    fn write_and_map(&mut self, index: usize, bytes: &[u8]) -> std::io::Result<Buffer> {
        let file = match &mut self.file {
            Some(file) => file,
            empty => empty.insert(tempfile::tempfile()?),
        };
        let offset = (index as u64) << BLOCK_SHIFT;
        file.write_all_at(bytes, offset)?;
        // Safety: the file is unlinked, so no other process can reach it, and this interner
        // never writes the range again: the mapping's bytes never change under its readers.
        let map = unsafe {
            memmap2::MmapOptions::new()
                .offset(offset)
                .len(bytes.len())
                .map(&*file)?
        };
        let start = NonNull::new(map.as_ptr().cast_mut())
            .ok_or_else(|| std::io::Error::other("the kernel mapped a block at address 0"))?;
        let len = map.len();
        // Safety: `start..start + len` is the mapping, which the buffer owns and unmaps last.
        Ok(unsafe { Buffer::from_custom_allocation(start, len, Arc::new(map)) })
    }

    /// Positions `start..start + buf.len()` of the file (in one spilled block).
    pub(super) fn read(&self, start: usize, buf: &mut [u8]) -> Result<(), ArrowError> {
        let file = self.file.as_ref().ok_or_else(|| {
            ArrowError::ComputeError("a spilled block has no scratch file".into())
        })?;
        file.read_exact_at(buf, start as u64)
            .map_err(|e| ArrowError::IoError(format!("reading spilled keys: {e}"), e))
    }
}
