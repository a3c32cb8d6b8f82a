//! Fast hashing and byte-string interning for the identity graph (in memory only).
//!
//! The stitch touches every identifier row once or twice, so its hash tables are on the hot
//! path: std's SipHash costs several times what a multiply-fold hash does, and a
//! `HashMap<String, u32>` costs one heap allocation and ~50 bytes per key. The [`Interner`]
//! here keeps every key in a byte arena of fixed-size blocks and maps it to a dense `u32` id
//! through an open-addressing table of ids and hash tags, 15 to 27 bytes per key plus the key
//! itself.
//!
//! Nothing here is persisted or shown to users: ids are reassigned identically on reload
//! (keys are re-interned in id order), and the hash is seeded per process so that crafted
//! identifiers cannot be chosen to collide. The stable hash behind profile ids lives in
//! `graph.rs` and is a different, fixed function.
//!
//! An interner made with [`Interner::spilling`] writes its full blocks to a scratch file and
//! maps them back: for keys that are read again only to build output columns and state
//! (record keys, most of a graph's text), the text then lives in the page cache, which the
//! kernel can drop and write back, instead of the heap.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use datafusion::arrow::array::builder::make_view;
use datafusion::arrow::array::{StringArray, StringViewArray};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::error::ArrowError;

use super::spill::Spill;
use crate::prefetch::{AHEAD, prefetch};

const K: u64 = 0x9E37_79B9_7F4A_7C15;

/// Multiplies as 128 bits and folds the halves: one instruction pair that mixes every input
/// bit into every output bit well enough for hash tables (the core of foldhash/wyhash).
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = (a as u128).wrapping_mul(b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

#[inline]
pub(super) fn hash_bytes(seed: u64, parts: [&[u8]; 2]) -> u64 {
    let mut h = seed ^ (parts[0].len() as u64).wrapping_add((parts[1].len() as u64) << 32);
    for bytes in parts {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            h = fold_mul(h ^ read_u64(chunk), K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            h = fold_mul(h ^ tail_word(rest) ^ 0xFF, K);
        }
    }
    fold_mul(h, 0x2D35_8DCC_AA6C_78A5)
}

#[inline]
fn read_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

/// 1 to 7 bytes as one word, with shifts rather than a `memcpy` call (most keys end in one).
#[inline]
fn tail_word(rest: &[u8]) -> u64 {
    rest.iter()
        .rev()
        .fold(0u64, |word, &b| (word << 8) | u64::from(b))
}

/// A small Fx-style hasher for std maps keyed by integers (record and value ids): SipHash's
/// DoS resistance buys nothing for keys the graph assigned itself.
#[derive(Default, Clone, Copy)]
pub(super) struct FastHasher(u64);

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash_bytes(self.0, [bytes, &[]]);
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = fold_mul(self.0 ^ u64::from(n), K);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = fold_mul(self.0 ^ n, K);
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = fold_mul(self.0 ^ n as u64, K);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(super) type FastMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FastHasher>>;
pub(super) type FastSet<K> = std::collections::HashSet<K, BuildHasherDefault<FastHasher>>;

/// Arena block size. Blocks are allocated whole and never moved: one arena growing by
/// doubling copied every key again at each step into pages the kernel first had to zero,
/// which perf showed as a third of a full build's stitch (and the copy held both arenas at
/// once). Keys never straddle blocks; a key longer than a block is refused (the interner
/// reports itself full), and identifiers are never that long. A full block is sealed: it
/// never changes again, so output columns can point into it instead of copying its keys
/// (see [`Interner::key_views`]).
#[cfg(not(test))]
pub(super) const BLOCK_SHIFT: u32 = 26;
/// Unit tests use small blocks, so that graphs of a few thousand keys seal and spill some.
#[cfg(test)]
pub(super) const BLOCK_SHIFT: u32 = 16;
const BLOCK: usize = 1 << BLOCK_SHIFT;

/// Largest id an interner hands out. Ids stay below 2^30 because the graph keeps flags in
/// the top two bits of ids it stores per record.
pub(super) const MAX_ID: u32 = (1 << 30) - 2;

/// Interns strings (given as a prefix and a body, so callers need not concatenate) to dense
/// ids `0, 1, 2, …` in insertion order. Every key is UTF-8 (only `&str` goes in), so output
/// columns point at keys without checking them again: a full build's tables and state hold
/// tens of millions of keys, and checking them cost a second and a half.
pub(super) struct Interner {
    seed: u64,
    /// The arena: position `p` is byte `p % BLOCK` of block `p / BLOCK`, where the blocks are
    /// the sealed ones, then `open`, the only one that grows (up to `BLOCK` bytes).
    sealed: Vec<Buffer>,
    open: Vec<u8>,
    /// `ends[i]` is the position where key `i` ends; it starts where key `i - 1` ends, or at
    /// the start of its block when it did not fit in the previous one (see `start`). 32 bits
    /// keep this array small; past 4 GiB of positions the interner reports itself full.
    ends: Vec<u32>,
    /// Open addressing with linear probing, at most 70% full. An entry is `0` (empty) or
    /// `tag << 32 | (id + 1)`, where the tag is 32 bits of the key's hash: probing compares
    /// tags in the table itself and touches the arena only on a tag match (one cache miss
    /// per lookup instead of one per probe), and growing rehashes from the tags alone.
    table: Vec<u64>,
    /// `64 - log2(table.len())`: slots are the top bits of `tag × K` (Fibonacci hashing).
    shift: u32,
    /// Set for a spilling interner (see [`Interner::spilling`]).
    spill: Option<Spill>,
}

impl Interner {
    pub(super) fn new() -> Self {
        Interner {
            seed: RandomState::new().hash_one(0x5EED_u64),
            sealed: Vec::new(),
            open: Vec::new(),
            ends: Vec::new(),
            table: vec![0; 1024],
            shift: 64 - 10,
            spill: None,
        }
    }

    /// An interner whose full blocks go to an unlinked scratch file in the temporary
    /// directory (`TMPDIR`) and are mapped back. Interning compares a 64-bit check per key
    /// instead of its bytes, so building never reads a spilled key; output columns point into
    /// the mappings; state and views read the file in order instead. Falls back to the heap
    /// (with a warning) when the file cannot be created or written.
    pub(super) fn spilling() -> Self {
        Interner {
            spill: Some(Spill::new()),
            ..Interner::new()
        }
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The key of `id` (prefix and body together).
    #[inline]
    pub(super) fn key(&self, id: u32) -> &[u8] {
        let i = id as usize;
        self.slice(self.start(i), self.ends[i] as usize)
    }

    /// The key of `id` less its first `skip` bytes (a type prefix), as text. Keys are UTF-8
    /// (see `Interner`), so only where the text starts needs checking; text starting inside
    /// a character (a `skip` no caller passes) comes out lossily rather than unchecked.
    pub(super) fn key_text(&self, id: u32, skip: usize) -> Cow<'_, str> {
        let rest = self.key(id).get(skip..).unwrap_or_default();
        match rest.first() {
            Some(&b) if b & 0xC0 == 0x80 => String::from_utf8_lossy(rest),
            // Safety: a whole key is UTF-8, and `rest` is its end from a character's start.
            _ => Cow::Borrowed(unsafe { std::str::from_utf8_unchecked(rest) }),
        }
    }

    /// Positions `start..end`, which lie in one block.
    #[inline]
    fn slice(&self, start: usize, end: usize) -> &[u8] {
        if start == end {
            return &[];
        }
        let block = (end - 1) >> BLOCK_SHIFT;
        let base = block << BLOCK_SHIFT;
        &self.block(block)[start - base..end - base]
    }

    /// Block `index`: a sealed one, or the open one past them.
    #[inline]
    fn block(&self, index: usize) -> &[u8] {
        match self.sealed.get(index) {
            Some(block) => block.as_slice(),
            None => &self.open,
        }
    }

    /// Where key `id` starts: where the previous key ended, unless that is in an earlier
    /// block than the key's last byte (the key did not fit there), then at its block's start.
    fn start(&self, id: usize) -> usize {
        let previous = if id == 0 {
            0
        } else {
            self.ends[id - 1] as usize
        };
        let end = self.ends[id] as usize;
        if end == previous {
            return end;
        }
        previous.max(((end - 1) >> BLOCK_SHIFT) << BLOCK_SHIFT)
    }

    /// The end of a run of keys from `first` holding at most `max_keys` keys and, past its
    /// first key, at most `max_bytes` bytes, all in one block: how persisted key columns are
    /// cut into batches.
    pub(super) fn run_end(&self, first: usize, max_keys: usize, max_bytes: usize) -> usize {
        let end = (first + max_keys).min(self.len());
        if end == first {
            return end;
        }
        let start = self.start(first);
        let block_end = ((start >> BLOCK_SHIFT) + 1) << BLOCK_SHIFT;
        let limit = start.saturating_add(max_bytes).min(block_end);
        if self.ends[end - 1] as usize <= limit {
            return end;
        }
        let within = self.ends[first..end].partition_point(|&e| e as usize <= limit);
        first + within.max(1)
    }

    /// Keys `first..end` (a run from [`Interner::run_end`]) as Arrow's variable-width layout:
    /// offsets from 0 and their bytes. The bytes of a run in a sealed block are a slice of it,
    /// not a copy (persisting a full build's keys copied hundreds of megabytes into fresh
    /// pages); a run in the open block, which still grows, is copied. A run in a spilled
    /// block is read from the file: through the mapping, its pages would stay in the
    /// process's memory for as long as the mapping lives.
    pub(super) fn key_run(
        &self,
        first: usize,
        end: usize,
    ) -> Result<(Vec<i32>, Buffer), ArrowError> {
        if end == first {
            return Ok((vec![0], Buffer::from_vec(Vec::<u8>::new())));
        }
        let base = self.start(first);
        let last = self.ends[end - 1] as usize;
        let mut offsets = Vec::with_capacity(end - first + 1);
        offsets.push(0);
        offsets.extend(
            self.ends[first..end]
                .iter()
                .map(|&e| (e as usize - base) as i32),
        );
        // A run lies in one block (see `run_end`): the block of its last byte.
        let block = last.saturating_sub(1) >> BLOCK_SHIFT;
        let bytes = match (self.spilled(block), self.sealed.get(block)) {
            (Some(spill), _) => {
                let mut bytes = vec![0u8; last - base];
                spill.read(base, &mut bytes)?;
                Buffer::from_vec(bytes)
            }
            (None, Some(sealed)) if last > base => {
                sealed.slice_with_length(base - (block << BLOCK_SHIFT), last - base)
            }
            _ => Buffer::from_slice_ref(self.slice(base, last)),
        };
        Ok((offsets, bytes))
    }

    /// The spill, if block `index` is one of its blocks on file.
    fn spilled(&self, index: usize) -> Option<&Spill> {
        self.spill.as_ref().filter(|spill| index < spill.on_file)
    }

    /// [`Interner::key_run`] as a string column, for keys without a prefix (record keys).
    pub(super) fn key_run_text(&self, first: usize, end: usize) -> Result<StringArray, ArrowError> {
        let (offsets, bytes) = self.key_run(first, end)?;
        // Offsets from `key_run` start at 0 and never decrease.
        let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
        // Safety: the offsets cut `bytes` into whole keys, each UTF-8 (see `Interner`), and
        // lie within it. Checking again cost as much as writing the state's keys.
        Ok(unsafe { StringArray::new_unchecked(offsets, bytes, None) })
    }

    #[inline]
    fn tag(&self, prefix: &[u8], body: &[u8]) -> u32 {
        hash_bytes(self.seed, [prefix, body]) as u32
    }

    #[inline]
    fn home(&self, tag: u32) -> usize {
        (u64::from(tag).wrapping_mul(K) >> self.shift) as usize
    }

    /// Finds the key: `Ok(id)`, or `Err(slot)` where it would be inserted.
    #[inline]
    fn probe(&self, tag: u32, prefix: &[u8], body: &[u8]) -> Result<u32, usize> {
        let mask = self.table.len() - 1;
        let mut slot = self.home(tag);
        let mut check = None;
        loop {
            let entry = self.table[slot];
            if entry == 0 {
                return Err(slot);
            }
            if (entry >> 32) as u32 == tag {
                let id = entry as u32 - 1;
                if self.is_key(id, prefix, body, &mut check) {
                    return Ok(id);
                }
            }
            slot = (slot + 1) & mask;
        }
    }

    /// Whether key `id` is `prefix ++ body`: by its bytes, or in a spilling interner by its
    /// length and check (`check` keeps the probed key's check from one candidate to the next).
    #[inline]
    fn is_key(&self, id: u32, prefix: &[u8], body: &[u8], check: &mut Option<u64>) -> bool {
        let len = prefix.len() + body.len();
        match &self.spill {
            None => {
                let key = self.key(id);
                key.len() == len && &key[..prefix.len()] == prefix && &key[prefix.len()..] == body
            }
            Some(spill) => {
                let i = id as usize;
                self.ends[i] as usize - self.start(i) == len
                    && spill.checks[i] == *check.get_or_insert_with(|| spill.check(prefix, body))
            }
        }
    }

    /// The id of `prefix ++ body`, if interned.
    pub(super) fn get(&self, prefix: &[u8], body: &[u8]) -> Option<u32> {
        self.probe(self.tag(prefix, body), prefix, body).ok()
    }

    /// The id of `prefix ++ body`, interning it if new; the flag says whether it was new.
    /// `None` when the interner is full (more than [`MAX_ID`] keys or 4 GiB of key bytes).
    pub(super) fn intern(&mut self, prefix: &str, body: &str) -> Option<(u32, bool)> {
        self.intern_tagged(self.tag(prefix.as_bytes(), body.as_bytes()), prefix, body)
    }

    // Batched lookups. A lookup in a large table is a chain of dependent cache misses (slot,
    // then the key's end offset, then its bytes), each ~100-200 ns on a loaded server. Callers
    // with many keys at hand compute tags first, then touch every key's slot, then every
    // candidate's offset, then its bytes, each stage a loop of independent loads that the CPU
    // overlaps, and only then intern: the misses of a whole chunk cost about one miss.

    /// The tag to pass to the `touch_*` functions and [`Interner::intern_tagged`].
    #[inline]
    pub(super) fn tag_of(&self, prefix: &[u8], body: &[u8]) -> u32 {
        self.tag(prefix, body)
    }

    /// Stage 1: loads the key's home slot; returns it for stage 2.
    #[inline]
    pub(super) fn touch_slot(&self, tag: u32) -> u64 {
        self.table[self.home(tag)]
    }

    /// Stage 1 for keys known to be new (a reload): loads the home slots of `keys`. Returns a
    /// value to pass to `black_box`, so that the loads stay.
    pub(super) fn touch_slots<'k>(&self, keys: impl Iterator<Item = (&'k [u8], &'k [u8])>) -> u64 {
        let mut tags = [0u32; 32];
        let mut n = 0;
        for (prefix, body) in keys.take(tags.len()) {
            tags[n] = self.tag(prefix, body);
            n += 1;
        }
        tags[..n]
            .iter()
            .fold(0, |touched, &tag| touched ^ self.touch_slot(tag))
    }

    /// Stage 2: loads the end offset of the entry found in stage 1 (and, in a spilling
    /// interner, its check, which is what gets compared); returns a token for stage 3.
    #[inline]
    pub(super) fn touch_end(&self, entry: u64) -> u32 {
        if entry == 0 {
            return 0;
        }
        let i = (entry as u32 - 1) as usize;
        let end = self.ends.get(i).copied().unwrap_or(0);
        match &self.spill {
            Some(spill) => end ^ spill.checks.get(i).map_or(0, |&check| check as u32),
            None => end,
        }
    }

    /// Stage 3: loads the last byte of that entry's key. Nothing in a spilling interner, whose
    /// keys are never read back to be compared (the token is then passed through).
    #[inline]
    pub(super) fn touch_bytes(&self, end: u32) -> u8 {
        if self.spill.is_some() {
            return end as u8;
        }
        let last = (end as usize).wrapping_sub(1);
        let index = last >> BLOCK_SHIFT;
        if index > self.sealed.len() {
            return 0;
        }
        self.block(index)
            .get(last & (BLOCK - 1))
            .copied()
            .unwrap_or(0)
    }

    /// [`Interner::intern`] with the tag already computed by [`Interner::tag_of`].
    pub(super) fn intern_tagged(
        &mut self,
        tag: u32,
        prefix: &str,
        body: &str,
    ) -> Option<(u32, bool)> {
        let (prefix, body) = (prefix.as_bytes(), body.as_bytes());
        let slot = match self.probe(tag, prefix, body) {
            Ok(id) => return Some((id, false)),
            Err(slot) => slot,
        };
        let id = u32::try_from(self.ends.len())
            .ok()
            .filter(|id| *id <= MAX_ID)?;
        let end = u32::try_from(self.append(prefix, body)?).ok()?;
        self.ends.push(end);
        if let Some(spill) = &mut self.spill {
            spill.checks.push(spill.check(prefix, body));
        }
        self.table[slot] = (u64::from(tag) << 32) | u64::from(id + 1);
        if self.ends.len() * 10 > self.table.len() * 7 {
            self.grow();
        }
        Some((id, true))
    }

    /// Writes a key at the end of the arena, sealing the open block and starting a new one if
    /// it does not fit; returns the position where it ends. `None` for a key longer than a
    /// block.
    fn append(&mut self, prefix: &[u8], body: &[u8]) -> Option<usize> {
        let len = prefix.len() + body.len();
        if len > BLOCK {
            return None;
        }
        if self.open.len() + len > BLOCK {
            self.seal();
        }
        let open = &mut self.open;
        // Only the first block grows, from small: graphs of a few keys stay small.
        if open.capacity() < open.len() + len {
            let wanted = (open.capacity() * 2)
                .max(open.len() + len)
                .clamp(1 << 16, BLOCK);
            open.reserve_exact(wanted - open.len());
        }
        open.extend_from_slice(prefix);
        open.extend_from_slice(body);
        Some((self.sealed.len() << BLOCK_SHIFT) + open.len())
    }

    /// The keys of `ids` as a string column of copies, read in id order (from the file, for
    /// spilled keys, through [`Heads`]): for the refused table, whose hundreds of thousands of
    /// records, read at random through the mappings, touched most of their pages.
    pub(super) fn key_texts(&self, ids: &[u32]) -> Result<StringArray, ArrowError> {
        let mut offsets = Vec::with_capacity(ids.len() + 1);
        offsets.push(0i32);
        let mut total = 0usize;
        for &id in ids {
            let i = id as usize;
            total += self.ends[i] as usize - self.start(i);
            let offset =
                i32::try_from(total).map_err(|_| ArrowError::OffsetOverflowError(total))?;
            offsets.push(offset);
        }
        let mut by_id: Vec<u32> = (0..ids.len() as u32).collect();
        by_id.sort_unstable_by_key(|&row| ids[row as usize]);
        let mut heads = Heads {
            interner: self,
            windowed: true,
            window: Vec::new(),
            window_start: 0,
        };
        let mut bytes = vec![0u8; total];
        for row in by_id {
            let row = row as usize;
            let (at, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            let start = self.start(ids[row] as usize);
            bytes[at..end].copy_from_slice(heads.read(start, end - at)?);
        }
        let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
        // Safety: the offsets ascend from 0 to the bytes' end, each range a whole key, and
        // keys are UTF-8 (see `Interner`).
        Ok(unsafe { StringArray::new_unchecked(offsets, Buffer::from_vec(bytes), None) })
    }

    /// Seals the open block: onto the scratch file in a spilling interner, which then reuses
    /// the open block's memory, else onto the heap as it is.
    fn seal(&mut self) {
        let index = self.sealed.len();
        let spilled = match &mut self.spill {
            Some(spill) => spill.store(index, &self.open),
            None => None,
        };
        let block = match spilled {
            Some(mapped) => {
                self.open.clear();
                mapped
            }
            // Blocks after the first are whole from the start, so nothing large is copied.
            None => Buffer::from_vec(std::mem::replace(&mut self.open, Vec::with_capacity(BLOCK))),
        };
        self.sealed.push(block);
    }

    /// The keys of `ids`, less their first `skip` bytes (a type prefix), as a string-view
    /// column. Keys in sealed blocks are not copied: the column points into the blocks, which
    /// it then shares with the interner (a full build's records table is tens of millions of
    /// keys, hundreds of megabytes held twice otherwise). Keys in the open block, which still
    /// grows, are copied. A view also holds its key's first bytes (all of a short key); those
    /// of spilled keys are read from the file (see [`Heads`]). Fails when skipping `skip`
    /// bytes would split a character.
    pub(super) fn key_views(
        &self,
        ids: &[u32],
        skip: usize,
    ) -> Result<StringViewArray, ArrowError> {
        let mut heads = Heads {
            interner: self,
            windowed: ids.is_sorted(),
            window: Vec::new(),
            window_start: 0,
        };
        let mut views = Vec::with_capacity(ids.len());
        // The column's buffers, each sealed block and the copy taking an index as first used.
        let mut buffers: Vec<Buffer> = Vec::new();
        let mut block_index: Vec<Option<u32>> = vec![None; self.sealed.len()];
        let mut copy_index = None;
        let mut copied: Vec<u8> = Vec::new();
        for (k, &id) in ids.iter().enumerate() {
            // Keys are read at random: the end offsets of the ones ahead are asked for now.
            if let Some(&ahead) = ids.get(k + AHEAD) {
                prefetch(&self.ends, ahead as usize);
            }
            let (start, end) = (self.start(id as usize), self.ends[id as usize] as usize);
            let start = (start + skip).min(end);
            let len = end - start;
            let head = heads.read(start, len.min(INLINE))?;
            if len <= INLINE {
                // Short keys are copied into their views: checked as they are, cheaply.
                std::str::from_utf8(head)
                    .map_err(|e| ArrowError::InvalidArgumentError(e.to_string()))?;
                views.push(make_view(head, 0, 0));
                continue;
            }
            check_boundary(head)?;
            let block = (end - 1) >> BLOCK_SHIFT;
            let (buffer, offset) = if block < self.sealed.len() {
                let index = *block_index[block].get_or_insert_with(|| {
                    buffers.push(self.sealed[block].clone());
                    buffers.len() as u32 - 1
                });
                (index, start - (block << BLOCK_SHIFT))
            } else {
                let index = *copy_index.get_or_insert_with(|| {
                    // Filled in with the copy once it is whole.
                    buffers.push(Buffer::from_vec(Vec::<u8>::new()));
                    buffers.len() as u32 - 1
                });
                copied.extend_from_slice(self.slice(start, end));
                (index, copied.len() - len)
            };
            views.push(long_view(len, head, buffer, offset));
        }
        if let Some(index) = copy_index {
            buffers[index as usize] = Buffer::from_vec(copied);
        }
        // Safety: each view names a buffer above and a range in it that is the end of one key
        // from a character's start (checked), and keys are UTF-8 (see `Interner`); short keys
        // were checked whole.
        Ok(unsafe { StringViewArray::new_unchecked(ScalarBuffer::from(views), buffers, None) })
    }

    /// Gives back arena space beyond a little headroom (see `IdentityGraph::trim`).
    pub(super) fn trim(&mut self) {
        trim(&mut self.open);
        trim(&mut self.ends);
        if let Some(spill) = &mut self.spill {
            trim(&mut spill.checks);
        }
    }

    /// The addresses of the sealed blocks (see `IdentityGraph::shared_block_addresses`).
    pub(super) fn sealed_addresses(&self) -> Vec<usize> {
        self.sealed
            .iter()
            .map(|block| block.as_ptr() as usize)
            .collect()
    }

    /// Bytes of heap held: spilled blocks are page cache, not heap.
    pub(super) fn heap_bytes(&self) -> usize {
        let on_file = self.spill.as_ref().map_or(0, |spill| spill.on_file);
        let checks = self
            .spill
            .as_ref()
            .map_or(0, |spill| heap_of(&spill.checks));
        self.sealed[on_file..]
            .iter()
            .map(Buffer::capacity)
            .sum::<usize>()
            + checks
            + heap_of(&self.open)
            + heap_of(&self.sealed)
            + heap_of(&self.ends)
            + heap_of(&self.table)
    }

    /// Makes room for `additional` more keys without growing the table on the way.
    pub(super) fn reserve(&mut self, additional: usize) {
        self.ends.reserve(additional);
        if let Some(spill) = &mut self.spill {
            spill.checks.reserve(additional);
        }
        while (self.ends.len() + additional) * 10 > self.table.len() * 7 {
            self.grow();
        }
    }

    /// Doubles the table where it lies. Homes are the top bits of `tag × K`, so doubling adds
    /// one bit: an entry's new home is `2h` or `2h + 1`, `h` its old one. Walking the old slots
    /// from the top down, an entry whose new home is above its old slot moves up into the part
    /// already rebuilt, never across an entry still to move; the few others (near the start:
    /// wrapped round, or further from their home than its index) are set aside and inserted
    /// last. Rehashing into a second table instead touched twice the memory, at random: a
    /// large table grows by `mremap` (see `allocator.rs`), so only the new half is fresh, and
    /// this walk streams through it.
    fn grow(&mut self) {
        let old_len = self.table.len();
        let old_shift = self.shift;
        self.table.resize(old_len * 2, 0);
        self.shift -= 1;
        let len = self.table.len();
        let mut set_aside = Vec::new();
        for slot in (0..old_len).rev() {
            let entry = std::mem::take(&mut self.table[slot]);
            if entry == 0 {
                continue;
            }
            let tag = (entry >> 32) as u32;
            let old_home = (u64::from(tag).wrapping_mul(K) >> old_shift) as usize;
            let mut at = self.home(tag);
            if old_home > slot || at <= slot {
                set_aside.push(entry);
                continue;
            }
            while at < len && self.table[at] != 0 {
                at += 1;
            }
            // Wrapping round would cross slots still to move, but the walk never gets there:
            // the entries with new homes in `at..len` came from old homes of at least `at / 2`,
            // so there are fewer of them than slots. Setting aside costs nothing if it did.
            if at == len {
                set_aside.push(entry);
                continue;
            }
            self.table[at] = entry;
        }
        for entry in set_aside {
            let mut at = self.home((entry >> 32) as u32);
            while self.table[at] != 0 {
                at = (at + 1) & (len - 1);
            }
            self.table[at] = entry;
        }
    }
}

/// Bytes a string view holds itself (Arrow's layout); longer keys are pointed at.
const INLINE: usize = 12;

/// The view of a key longer than [`INLINE`] bytes, from its first bytes (`head`, at least 4),
/// in Arrow's layout: length, 4-byte prefix, buffer index, offset.
fn long_view(len: usize, head: &[u8], buffer: u32, offset: usize) -> u128 {
    let prefix = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    u128::from(len as u32)
        | (u128::from(prefix) << 32)
        | (u128::from(buffer) << 64)
        | (u128::from(offset as u32) << 96)
}

/// Fails unless `head` (a key's text once a prefix is skipped) starts on a character.
fn check_boundary(head: &[u8]) -> Result<(), ArrowError> {
    match head.first() {
        Some(&b) if b & 0xC0 != 0x80 => Ok(()),
        _ => Err(ArrowError::InvalidArgumentError(
            "an interned key's view does not start on a character".into(),
        )),
    }
}

/// Spilled keys' first bytes are read from the file through a window of this many bytes.
const WINDOW: usize = 256 << 10;

/// Reads the first bytes of keys for their views (see [`Interner::key_views`]). Those of
/// spilled keys come from the file: through the mappings, a full build's records table would
/// bring every page of them back into the process's memory. Keys asked for in ascending
/// order (the records table's) cost one read per window; others are read through the mapping.
struct Heads<'i> {
    interner: &'i Interner,
    windowed: bool,
    window: Vec<u8>,
    /// The position of `window[0]`.
    window_start: usize,
}

impl Heads<'_> {
    /// Positions `start..start + len`, which lie in one block.
    fn read(&mut self, start: usize, len: usize) -> Result<&[u8], ArrowError> {
        let interner = self.interner;
        let end = start + len;
        let spill = match interner.spilled(start >> BLOCK_SHIFT) {
            Some(spill) if self.windowed && len > 0 => spill,
            _ => return Ok(interner.slice(start, end)),
        };
        let window_end = self.window_start + self.window.len();
        if start < self.window_start || end > window_end {
            let block = start >> BLOCK_SHIFT;
            let block_end = (block << BLOCK_SHIFT) + interner.sealed[block].len();
            self.window
                .resize((start + WINDOW).min(block_end).max(end) - start, 0);
            spill.read(start, &mut self.window)?;
            self.window_start = start;
        }
        Ok(&self.window[start - self.window_start..end - self.window_start])
    }
}

/// Shrinks a vector that doubled past its needs back to its length plus 1/8 headroom: a full
/// build grows vectors by doubling, which can leave nearly half of a large vector unused.
/// Large blocks are shrunk in place (the allocator remaps their pages), so this is cheap.
pub(super) fn trim<T>(v: &mut Vec<T>) {
    let len = v.len();
    if v.capacity() > len + len / 4 + 1024 {
        v.shrink_to(len + len / 8);
    }
}

/// Bytes a vector holds on the heap: its capacity, not its length, as the process pays.
pub(super) fn heap_of<T>(v: &Vec<T>) -> usize {
    v.capacity() * std::mem::size_of::<T>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_straddle_blocks_and_runs_stop_at_their_end() {
        let mut interner = Interner::new();
        // Keys of 3/64 of a block: 21 fill a block with 1/64 left, so the 22nd starts the next.
        let key = |i: u8| char::from(b'A' + i).to_string().repeat(3 * (BLOCK >> 6));
        let prefix = |i: u8| char::from(i).to_string();
        for i in 0..30u8 {
            assert_eq!(
                interner.intern(&prefix(i), &key(i)),
                Some((u32::from(i), true))
            );
        }
        assert_eq!(interner.sealed.len(), 1);
        for i in 0..30u8 {
            let found = interner.key(u32::from(i));
            assert_eq!((found[0], found.len()), (i, 3 * (BLOCK >> 6) + 1));
            assert!(found[1..].iter().all(|&b| b == b'A' + i));
        }
        // A run from key 0 ends where the first block does, whatever the limits.
        let end = interner.run_end(0, 100, usize::MAX);
        assert_eq!(end, 21);
        let (offsets, bytes) = interner.key_run(0, end).unwrap();
        assert_eq!(bytes.len(), 21 * (3 * (BLOCK >> 6) + 1));
        // The sealed block's own bytes, not a copy.
        assert_eq!(bytes.as_ptr(), interner.sealed[0].as_ptr());
        assert_eq!(offsets.len(), 22);
        assert_eq!(interner.run_end(end, 100, usize::MAX), 30);
        assert_eq!(
            interner.key_run(21, 30).unwrap().0[9] as usize,
            9 * (3 * (BLOCK >> 6) + 1)
        );
        // Found again, with their ids.
        assert_eq!(interner.get(&[25], key(25).as_bytes()), Some(25));
        // Longer than a block: refused, not split.
        assert_eq!(interner.intern("", &"k".repeat(BLOCK + 1)), None);
    }

    /// Views of keys in sealed blocks point into those blocks; keys in the open block, and
    /// short ones, come out the same from copies.
    #[test]
    fn key_views_share_sealed_blocks_and_copy_the_open_one() {
        let mut interner = Interner::new();
        // Keys of 3/64 of a block: 21 fill the first block, sealed when the 22nd arrives.
        let big = |i: u8| format!("{i:02}{}", "k".repeat(3 * (BLOCK >> 6)));
        for i in 0..25u8 {
            interner.intern("\u{7}", &big(i)).unwrap();
        }
        let (short, _) = interner.intern("\u{7}", "tiny").unwrap();
        assert_eq!(interner.sealed.len(), 1);
        let ids = [22, 3, short, 20, 24];
        let views = interner.key_views(&ids, 1).unwrap();
        let texts: Vec<&str> = views.iter().map(Option::unwrap_or_default).collect();
        assert_eq!(
            texts,
            [big(22).as_str(), &big(3), "tiny", &big(20), &big(24)]
        );
        let sealed = interner.sealed[0].as_ptr();
        assert!(views.data_buffers().iter().any(|b| b.as_ptr() == sealed));
        // The copy holds the open block's two keys, nothing of the sealed ones.
        let copied: usize = views
            .data_buffers()
            .iter()
            .filter(|b| b.as_ptr() != sealed)
            .map(|b| b.len())
            .sum();
        assert_eq!(copied, 2 * big(0).len());
        // The whole key, prefix included, when nothing is skipped.
        let whole = interner.key_views(&[short], 0).unwrap();
        assert_eq!(whole.value(0), "\u{7}tiny");
    }

    /// Growing keeps every entry, each reachable from its new home without crossing an empty
    /// slot. Small tables filled at random, to the limit and past it (`grow` takes any load),
    /// have among them every awkward case: clusters wrapping round the end, entries far from
    /// homes near the start, new homes crowding the end.
    #[test]
    fn tables_grown_in_place_keep_every_entry_reachable() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut random_tag = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u32
        };
        for bits in [3u32, 4, 5, 6] {
            for round in 0..4000 {
                let mut interner = Interner::new();
                interner.table = vec![0; 1 << bits];
                interner.shift = 64 - bits;
                let mask = interner.table.len() - 1;
                let count = match round % 2 {
                    0 => interner.table.len() * 7 / 10,
                    _ => interner.table.len() - 1,
                };
                for id in 0..count as u64 {
                    let tag = random_tag();
                    let mut at = interner.home(tag);
                    while interner.table[at] != 0 {
                        at = (at + 1) & mask;
                    }
                    interner.table[at] = (u64::from(tag) << 32) | (id + 1);
                }
                let mut before: Vec<u64> =
                    interner.table.iter().copied().filter(|&e| e != 0).collect();
                interner.grow();
                let table = &interner.table;
                let mut after: Vec<u64> = table.iter().copied().filter(|&e| e != 0).collect();
                before.sort_unstable();
                after.sort_unstable();
                assert_eq!(after, before);
                let mask = table.len() - 1;
                for (slot, &entry) in table.iter().enumerate().filter(|(_, e)| **e != 0) {
                    let mut at = interner.home((entry >> 32) as u32);
                    while at != slot {
                        assert_ne!(table[at], 0, "a hole between home {at} and slot {slot}");
                        at = (at + 1) & mask;
                    }
                }
            }
        }
    }

    /// Text skipping into the middle of a character comes out lossily, never unchecked.
    #[test]
    fn key_text_is_checked_only_where_it_starts() {
        let mut interner = Interner::new();
        let (id, _) = interner.intern("", "été").unwrap();
        assert_eq!(interner.key_text(id, 0), "été");
        assert_eq!(interner.key_text(id, 2), "té");
        assert_eq!(interner.key_text(id, 1), "\u{FFFD}té");
        assert_eq!(interner.key_text(id, 9), "");
    }

    #[test]
    fn interns_densely_and_finds_again() {
        let mut interner = Interner::new();
        let mut ids = Vec::new();
        for i in 0..5000 {
            let body = format!("value-{i}");
            let (id, new) = interner.intern("\u{1}", &body).unwrap();
            assert!(new);
            ids.push(id);
        }
        assert_eq!(ids, (0..5000).collect::<Vec<u32>>());
        for i in 0..5000u32 {
            let body = format!("value-{i}");
            assert_eq!(interner.get(&[1], body.as_bytes()), Some(i));
            assert_eq!(interner.intern("\u{1}", &body), Some((i, false)));
            assert_eq!(interner.get(&[2], body.as_bytes()), None);
            assert_eq!(&interner.key(i)[1..], body.as_bytes());
            assert_eq!(interner.key_text(i, 1), body);
        }
    }

    /// Keys of varied lengths (some short enough to sit inline in a view), a few blocks' worth.
    fn record_keys() -> Vec<String> {
        (0..20_000)
            .map(|i| format!("r{i}-{}", "x".repeat(i % 41)))
            .collect()
    }

    /// Every key of `keys` is found again under its id, read back whole, and comes out the
    /// same from runs (the state) and views (the tables), in either order.
    fn assert_reads_back(interner: &mut Interner, keys: &[String]) {
        for (id, key) in keys.iter().enumerate() {
            let id = id as u32;
            assert_eq!(interner.get(b"", key.as_bytes()), Some(id));
            assert_eq!(interner.intern("", key), Some((id, false)));
            assert_eq!(interner.key_text(id, 0), key.as_str());
            // Same length and one byte off, or one byte longer: other keys.
            let mut near = key.clone().into_bytes();
            near[0] = b's';
            assert_eq!(interner.get(b"", &near), None);
            assert_eq!(interner.get(b"", format!("{key}!").as_bytes()), None);
        }
        let mut from_runs = Vec::new();
        let mut first = 0;
        while first < interner.len() {
            let end = interner.run_end(first, 3000, usize::MAX);
            let run = interner.key_run_text(first, end).unwrap();
            from_runs.extend(run.iter().map(|k| k.unwrap().to_string()));
            first = end;
        }
        assert_eq!(from_runs, keys);
        let ascending: Vec<u32> = (0..keys.len() as u32).collect();
        let descending: Vec<u32> = ascending.iter().rev().copied().collect();
        for ids in [ascending, descending] {
            let views = interner.key_views(&ids, 0).unwrap();
            let texts = interner.key_texts(&ids).unwrap();
            for (row, &id) in ids.iter().enumerate() {
                assert_eq!(views.value(row), keys[id as usize]);
                assert_eq!(texts.value(row), keys[id as usize]);
            }
        }
    }

    /// A spilling interner's full blocks are on file, mapped, and off its heap; it finds keys
    /// by their checks, and its runs and views read the same text back (runs as copies, so
    /// that the state does not bring the mapped pages back into memory).
    #[test]
    fn a_spilling_interner_maps_its_full_blocks_and_reads_them_back() {
        let keys = record_keys();
        let mut spilling = Interner::spilling();
        let mut plain = Interner::new();
        for (id, key) in keys.iter().enumerate() {
            assert_eq!(spilling.intern("", key), Some((id as u32, true)));
            plain.intern("", key).unwrap();
        }
        let spill = spilling.spill.as_ref().unwrap();
        assert!(spill.on_file >= 3, "{} blocks on file", spill.on_file);
        assert_eq!(spill.on_file, spilling.sealed.len());
        let on_file: usize = spilling.sealed.iter().map(Buffer::len).sum();
        assert!(
            plain.heap_bytes() + heap_of(&spill.checks) >= spilling.heap_bytes() + on_file,
            "the blocks on file are not heap"
        );
        assert_reads_back(&mut spilling, &keys);
        // Runs are copies; views of long keys point into the mappings themselves.
        let (_, bytes) = spilling.key_run(0, 10).unwrap();
        assert_ne!(bytes.as_ptr(), spilling.sealed[0].as_ptr());
        let views = spilling.key_views(&[40, 41], 0).unwrap();
        assert_eq!(
            views.data_buffers()[0].as_ptr(),
            spilling.sealed[0].as_ptr()
        );
    }

    /// When the scratch file cannot be written, blocks stay on the heap and nothing is lost.
    #[test]
    fn a_spill_that_cannot_write_keeps_its_blocks_on_the_heap() {
        let keys = record_keys();
        let mut interner = Interner::spilling();
        // Opened for reading only: every write fails.
        let read_only = std::fs::File::open("/dev/null").unwrap();
        interner.spill.as_mut().unwrap().file = Some(read_only);
        for key in &keys {
            interner.intern("", key).unwrap();
        }
        let spill = interner.spill.as_ref().unwrap();
        assert!(spill.failed);
        assert_eq!(spill.on_file, 0);
        assert!(interner.sealed.len() >= 3);
        assert_reads_back(&mut interner, &keys);
    }
}
