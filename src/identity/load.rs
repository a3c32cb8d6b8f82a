//! Reading a batch of rows into the graph: interning keys, grouping rows by record, and laying
//! the batch out in processing order for the two passes of `graph.rs`.

use super::graph::{
    ApplySummary, BLOCKED, GraphError, IdentityGraph, IdentityRow, LogNeed, NONE, REFUSED_BIT,
    TYPE_MASK,
};
use super::intern::{FastMap, Interner, heap_of};
use crate::prefetch::{AHEAD, prefetch};

/// Rows hashed and looked up together, so that their cache misses overlap (see `Interner`).
const CHUNK: usize = 32;
/// Rows interned per round (see `load_round`). Each round starts a thread and then waits for
/// the slower of the two interners, and rows arrive in long runs of one source and type that
/// give one side or the other most of the work: short rounds lose both cores' time to the
/// start and the wait. Stitch bench at 1M customers, load: 8192-row rounds 12.2–14.3 s,
/// 65536 7.1–11.8 s, 262144 7.3–8.5 s. Feed at least this many rows at a time (`FEED_ROWS`).
const ROUND: usize = super::graph::FEED_ROWS;
/// Fewer kept rows than this are interned on the calling thread alone: starting a thread
/// costs more than it saves.
const PARALLEL_ROWS: usize = 1024;
/// Positions this close to the row before's are near: their offsets share a few cache lines.
const NEAR_POSITIONS: u32 = 1024;
/// Fewer entries than this are sorted on one core (see `sort_on_all_cores`).
const PARALLEL_SORT: usize = 1 << 20;
/// `load`'s marker for a row whose type is not in priority.
const NO_TYPE: u8 = u8::MAX;

/// Rows being loaded: what the rounds of `load_rows` accumulate. Owns nothing borrowed from
/// the rows, so that rows can be fed from one source batch at a time and each batch dropped
/// once fed: a full build never holds its whole input in memory.
pub(super) struct Loader {
    old_records: u32,
    old_local: FastMap<u32, u32>,
    /// `(earliest seen_at in the batch, record)`, for new records (by `record - old_records`)
    /// and for known ones (by `old_local`): sorted in place into the batch's processing order,
    /// so that the layout needs no copy of them.
    new_seen: Vec<(i64, u32)>,
    old_seen: Vec<(i64, u32)>,
    /// `record << 32 | value`, a row each (see `finish_load`).
    pairs: Vec<u64>,
    unknown: Vec<(u32, u32)>,
    /// The last type name seen and its index: rows arrive in long runs of one type (a UNION
    /// ALL per identifier column), so the name is looked up once per run.
    last_type: (String, u8),
    /// Kept from feed to feed, so that each round's vectors are not grown again.
    scratch: RoundScratch,
    pub(super) summary: ApplySummary,
}

/// One batch's rows, grouped by record and laid out in processing order, so that both passes
/// read the batch front to back.
pub(super) struct Batch {
    /// Records known before the batch: ids below this are "old".
    pub(super) old_records: u32,
    /// By position in processing order: the record's earliest `seen_at` in the batch, and id.
    pub(super) order: Vec<(i64, u32)>,
    /// The record at position `p` has values `values[offsets[p]..offsets[p + 1]]`.
    pub(super) offsets: Vec<u32>,
    pub(super) values: Vec<u32>,
    /// `(position, unknown id)` rows, sorted.
    pub(super) unknown: Vec<(u32, u32)>,
}

impl Loader {
    /// Records known before the batch: ids below this are "old".
    pub(super) fn old_records(&self) -> u32 {
        self.old_records
    }

    /// Heap held for the rows loaded so far, besides what they added to the graph.
    pub(super) fn heap_bytes(&self) -> usize {
        heap_of(&self.new_seen)
            + heap_of(&self.old_seen)
            + heap_of(&self.pairs)
            + heap_of(&self.unknown)
            + self.old_local.capacity() * std::mem::size_of::<(u32, u32)>()
    }
}

impl Batch {
    pub(super) fn range(&self, position: usize) -> std::ops::Range<usize> {
        self.offsets[position] as usize..self.offsets[position + 1] as usize
    }
}

impl IdentityGraph {
    /// Starts loading a batch of rows (see `load_rows` and `finish_load`).
    pub(super) fn start_load(&mut self) -> Loader {
        Loader {
            old_records: self.records.len() as u32,
            old_local: FastMap::default(),
            new_seen: Vec::new(),
            old_seen: Vec::new(),
            pairs: Vec::new(),
            unknown: Vec::new(),
            last_type: (String::new(), NO_TYPE),
            scratch: RoundScratch::default(),
            summary: ApplySummary::default(),
        }
    }

    /// Interns rows into the batch being loaded. Can be called once per source batch.
    pub(super) fn load_rows<'a>(
        &mut self,
        loader: &mut Loader,
        rows: impl IntoIterator<Item = IdentityRow<'a>>,
    ) -> Result<(), GraphError> {
        let mut rows = rows.into_iter();
        let (hint, most) = rows.size_hint();
        loader.pairs.reserve(hint);
        // Sized once: a round of rows grown by doubling is copied about twice over, every feed.
        let mut round: Vec<IdentityRow<'a>> =
            Vec::with_capacity(most.unwrap_or(ROUND).clamp(1, ROUND));
        let mut scratch = std::mem::take(&mut loader.scratch);
        loop {
            round.clear();
            round.extend(rows.by_ref().take(ROUND));
            if round.is_empty() {
                loader.scratch = scratch;
                return Ok(());
            }
            self.load_round(&round, loader, &mut scratch)?;
        }
    }

    /// Groups the loaded rows by record, in processing order. The only step of `apply` that
    /// can fail besides interning.
    pub(super) fn finish_load(
        &mut self,
        loader: Loader,
    ) -> Result<(Batch, ApplySummary), GraphError> {
        let Loader {
            old_records,
            old_local,
            new_seen: mut order,
            old_seen,
            mut pairs,
            unknown,
            summary,
            ..
        } = loader;
        let grown: usize = old_seen
            .iter()
            .map(|&(_, r)| self.record_ids(r).len())
            .sum();
        if pairs.len() >= u32::MAX as usize
            || self.r_ids.len() + pairs.len() + grown >= u32::MAX as usize
        {
            return Err(GraphError::Capacity {
                what: "identifier rows",
            });
        }
        // Local indices: new records by id, then known ones in order of appearance.
        let new_records = order.len();
        let local_of = |record: u32| -> usize {
            if record >= old_records {
                (record - old_records) as usize
            } else {
                new_records + old_local.get(&record).copied().unwrap_or(0) as usize
            }
        };
        order.extend(old_seen);
        self.sort_into_processing_order(&mut order)?;
        let mut rank = vec![0u32; order.len()];
        for (position, &(_, record)) in order.iter().enumerate() {
            rank[local_of(record)] = position as u32;
        }
        // Each row keyed by its record's position, in place, for `group_by_position`.
        let mut jumps = 0usize;
        let mut previous = 0u32;
        for pair in pairs.iter_mut() {
            let position = rank[local_of((*pair >> 32) as u32)];
            *pair = (u64::from(position) << 32) | (*pair & u64::from(u32::MAX));
            jumps += usize::from(position.abs_diff(previous) > NEAR_POSITIONS);
            previous = position;
        }
        let (offsets, values) = group_by_position(&mut pairs, order.len(), jumps);
        drop(pairs);
        let mut unknown: Vec<(u32, u32)> = unknown
            .into_iter()
            .map(|(record, id)| (rank[local_of(record)], id))
            .collect();
        unknown.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| self.unknown.key(a.1).cmp(self.unknown.key(b.1)))
        });
        unknown.dedup();
        let batch = Batch {
            old_records,
            order,
            offsets,
            values,
            unknown,
        };
        Ok((batch, summary))
    }

    /// Loads one round of rows: record keys and values are interned at once, on two threads
    /// (the two interners share nothing), each noting its rows' times; then pairs, in order.
    fn load_round(
        &mut self,
        rows: &[IdentityRow<'_>],
        loader: &mut Loader,
        scratch: &mut RoundScratch,
    ) -> Result<(), GraphError> {
        scratch.kept.clear();
        for (i, row) in rows.iter().enumerate() {
            loader.summary.rows += 1;
            if blank(row.id_value) || blank(row.record_key) {
                loader.summary.ignored += 1;
                continue;
            }
            // Rows arrive in long runs of one type (a UNION ALL per identifier column).
            if loader.last_type.0 != row.id_type {
                let t = self.rules.type_index(row.id_type).unwrap_or(NO_TYPE);
                loader.last_type.0.clear();
                loader.last_type.0.push_str(row.id_type);
                loader.last_type.1 = t;
            }
            scratch.kept.push((i, loader.last_type.1));
        }
        let kept = &scratch.kept;
        let record_key = |k: usize| Some(("", rows[kept[k].0].record_key));
        let value_key = |k: usize| {
            let (i, t) = kept[k];
            (t != NO_TYPE).then(|| (type_prefix(t), rows[i].id_value))
        };
        let IdentityGraph {
            records,
            r,
            values,
            v_meta,
            v_profile,
            v_seen,
            v_co,
            rules,
            reseen,
            ..
        } = self;
        let seen_at = |k: usize| rows[kept[k].0].seen_at;
        let Loader {
            old_records,
            old_local,
            new_seen,
            old_seen,
            ..
        } = loader;
        let old_records = *old_records;
        // Each side also notes its rows' times, so that little is left for one core after.
        let mut intern_records = |ids: &mut Vec<u32>| {
            intern_staged(records, kept.len(), record_key, ids, |k, record| {
                r.push(NONE);
                new_seen.push((seen_at(k), record));
            })
            .ok_or(GraphError::Capacity { what: "records" })?;
            for (k, &record) in ids.iter().enumerate() {
                let at = seen_at(k);
                let seen = if record >= old_records {
                    &mut new_seen[(record - old_records) as usize]
                } else {
                    let local = *old_local.entry(record).or_insert_with(|| {
                        old_seen.push((at, record));
                        old_seen.len() as u32 - 1
                    });
                    &mut old_seen[local as usize]
                };
                seen.0 = seen.0.min(at);
            }
            Ok(())
        };
        let mut moved = 0u64;
        let mut intern_values = |ids: &mut Vec<u32>| {
            // A set's matching state comes from a pool whose owner, the first thread to match,
            // takes it without a lock; every other thread locks it per match. Each round runs
            // on a new thread, so each takes a clone of its own (a clone has its own pool):
            // the shared set's lock was a percent of a full build's time.
            let blocked_set = rules.blocked_set.clone();
            intern_staged(values, kept.len(), value_key, ids, |k, _| {
                let (i, t) = kept[k];
                let row = &rows[i];
                // Patterns are matched once per distinct value, not per row.
                let blocked = !rules.blocked.is_empty() && blocked_set.is_match(row.id_value);
                v_meta.push(if blocked { t | BLOCKED } else { t });
                v_profile.push(NONE);
                v_seen.push((row.seen_at, row.seen_at));
                v_co.push((0, 0));
            })
            .ok_or(GraphError::Capacity {
                what: "identifier values",
            })?;
            for (k, &value) in ids.iter().enumerate() {
                // Times are read at random: the lines of the rows ahead are asked for now.
                if let Some(&ahead) = ids.get(k + AHEAD).filter(|&&v| v != NONE) {
                    prefetch(v_seen, ahead as usize);
                }
                if value == NONE {
                    continue;
                }
                let at = seen_at(k);
                let seen = &mut v_seen[value as usize];
                let now = (seen.0.min(at), seen.1.max(at));
                if now != *seen {
                    *seen = now;
                    reseen.set(value);
                    moved += 1;
                }
            }
            Ok(())
        };
        let (record_ids, value_ids) = (&mut scratch.record_ids, &mut scratch.value_ids);
        if kept.len() >= PARALLEL_ROWS {
            std::thread::scope(|scope| {
                let values_done = scope.spawn(|| intern_values(value_ids));
                let records_done = intern_records(record_ids);
                let values_done = values_done
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                records_done.and(values_done)
            })?;
        } else {
            intern_records(record_ids)?;
            intern_values(value_ids)?;
        }
        loader.summary.reseen += moved;
        self.pair_round(rows, loader, scratch)
    }

    /// The rows of a round in order, their ids known: pairs, and rows of unknown types.
    fn pair_round(
        &mut self,
        rows: &[IdentityRow<'_>],
        loader: &mut Loader,
        scratch: &RoundScratch,
    ) -> Result<(), GraphError> {
        let ids = scratch.record_ids.iter().zip(&scratch.value_ids);
        for (&(i, t), (&record, &value)) in scratch.kept.iter().zip(ids) {
            if t == NO_TYPE {
                let row = &rows[i];
                let body = unknown_body(row.id_value);
                let (id, _) =
                    self.unknown
                        .intern(row.id_type, &body)
                        .ok_or(GraphError::Capacity {
                            what: "unknown-type identifiers",
                        })?;
                loader.unknown.push((record, id));
            } else {
                loader
                    .pairs
                    .push((u64::from(record) << 32) | u64::from(value));
            }
        }
        Ok(())
    }

    /// See [`super::graph::Applying::log_need`]. Mirrors `load_round` and `observe`: a
    /// repeat interns nothing new, moves no first or last seen, and adds nothing to its
    /// record, so `stitch` passes its record over unless another row changes it.
    pub(super) fn log_need(
        &self,
        old_records: u32,
        row: &IdentityRow<'_>,
        repeats_until: Option<i64>,
    ) -> LogNeed {
        if blank(row.id_value) || blank(row.record_key) {
            return LogNeed::Never;
        }
        if repeats_until.is_none_or(|until| row.seen_at > until) {
            return LogNeed::Always;
        }
        let Some(t) = self.rules.type_index(row.id_type) else {
            return LogNeed::Always;
        };
        let record = self.records.get(b"", row.record_key.as_bytes());
        let value = self
            .values
            .get(type_prefix(t).as_bytes(), row.id_value.as_bytes());
        let (Some(record), Some(value)) = (record, value) else {
            return LogNeed::Always;
        };
        let (first, last) = self.v_seen[value as usize];
        let repeated = record < old_records
            && (first..=last).contains(&row.seen_at)
            && self
                .record_ids(record)
                .iter()
                .any(|id| id & !REFUSED_BIT == value);
        if repeated {
            LogNeed::IfRecordChanges(record)
        } else {
            LogNeed::Always
        }
    }

    /// Sorts `(seen_at, record)` into processing order: by time, then record key.
    fn sort_into_processing_order(&self, order: &mut [(i64, u32)]) -> Result<(), GraphError> {
        // Sort by time first (integers, fast); only records that share a time need their keys
        // compared, and record ids (which follow input order) must not decide.
        sort_on_all_cores(order);
        let mut ties = Vec::new();
        let mut start = 0;
        while start < order.len() {
            let at = order[start].0;
            let end = start + order[start..].iter().take_while(|(t, _)| *t == at).count();
            if end - start > 1 {
                ties.push(start..end);
            }
            start = end;
        }
        if ties.is_empty() {
            return Ok(());
        }
        // The tied records' keys are read in one pass in file order, not one by one through
        // the mappings: a source with many ties (an import stamped with one time) would bring
        // most of the spilled keys back into the process's memory for good.
        let tied: Vec<u32> = ties
            .iter()
            .flat_map(|run| order[run.clone()].iter().map(|&(_, record)| record))
            .collect();
        let keys = self.records.key_texts(&tied).map_err(GraphError::spill)?;
        let mut by_key: Vec<(&str, u32)> = Vec::new();
        let mut first = 0;
        for run in ties {
            by_key.clear();
            by_key.extend((first..first + run.len()).map(|i| (keys.value(i), tied[i])));
            first += run.len();
            by_key.sort_unstable();
            for (slot, &(_, record)) in order[run].iter_mut().zip(&by_key) {
                slot.1 = record;
            }
        }
        Ok(())
    }
}

/// Groups rows keyed `position << 32 | value` by position: `values[offsets[p]..offsets[p + 1]]`
/// are the values of position `p`, in no set order (`observe` sorts each record's values).
///
/// Rows that arrive in time order (a table written as things happened) are scattered into
/// place by a counting sort, whose writes then stay near each other. Rows that arrive source
/// by source put every write at a random place: 3 s of cache misses for a full build's 25M
/// rows, against under 1 s to sort them in place and read the groups off in order. `jumps`
/// counts the rows whose position is not near the row before's: more than one in 64 takes
/// the sort.
fn group_by_position(rows: &mut [u64], positions: usize, jumps: usize) -> (Vec<u32>, Vec<u32>) {
    let position_of = |row: u64| (row >> 32) as usize;
    if jumps > rows.len() / 64 {
        sort_on_all_cores(rows);
        let mut offsets = Vec::with_capacity(positions + 1);
        let mut values = Vec::with_capacity(rows.len());
        for (index, &row) in rows.iter().enumerate() {
            while offsets.len() <= position_of(row) {
                offsets.push(index as u32);
            }
            values.push(row as u32);
        }
        offsets.resize(positions + 1, rows.len() as u32);
        return (offsets, values);
    }
    let mut offsets = vec![0u32; positions + 1];
    for &row in rows.iter() {
        offsets[position_of(row)] += 1;
    }
    let mut total = 0u32;
    for offset in offsets.iter_mut() {
        total += *offset;
        *offset = total;
    }
    let mut values = vec![0u32; rows.len()];
    for &row in rows.iter().rev() {
        let position = position_of(row);
        offsets[position] -= 1;
        values[offsets[position] as usize] = row as u32;
    }
    (offsets, values)
}

/// Sorts `items` with the two halves sorted on two cores, when there are two and enough items:
/// a full build sorts one entry per record (tens of millions) and nothing else runs then.
/// Partitioning at the median first leaves the halves nothing to merge.
fn sort_on_all_cores<T: Ord + Send>(items: &mut [T]) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 || items.len() < PARALLEL_SORT {
        items.sort_unstable();
        return;
    }
    let middle = items.len() / 2;
    items.select_nth_unstable(middle);
    let (low, high) = items.split_at_mut(middle);
    std::thread::scope(|scope| {
        scope.spawn(|| low.sort_unstable());
        high.sort_unstable();
    });
}

/// Empty or only whitespace (what SQL NULL is passed as, too). Nearly every identifier starts
/// with a visible ASCII character, which settles it without decoding the rest: `trim` on
/// every row was 2% of a full build's load.
fn blank(text: &str) -> bool {
    match text.as_bytes().first() {
        None => true,
        Some(b) if b.is_ascii_graphic() => false,
        Some(_) => text.trim().is_empty(),
    }
}

/// What a round needs besides the rows, kept across rounds to reuse the allocations.
#[derive(Default)]
struct RoundScratch {
    /// `(row index, type index)` of the rows with a record key and a value.
    kept: Vec<(usize, u8)>,
    record_ids: Vec<u32>,
    /// `NONE` for a row whose type is not in priority.
    value_ids: Vec<u32>,
}

/// Interns `count` keys (`key(k)`, or `None` to skip `k`) into `ids` (`NONE` where skipped),
/// `CHUNK` at a time in stages, each a loop of independent memory accesses: tags, then
/// slots, then key offsets, then key bytes, and only then the interning, so that the cache
/// misses of a whole chunk overlap (see `Interner`). A key equal to the one before it takes
/// its id without a lookup: a table written a record at a time has each record's rows
/// together (two rows in five of the bench's landed identifiers). `on_new(k, id)` runs for
/// each new key, in order. `None` when the interner is full.
fn intern_staged<'k>(
    interner: &mut Interner,
    count: usize,
    key: impl Fn(usize) -> Option<(&'k str, &'k str)>,
    ids: &mut Vec<u32>,
    mut on_new: impl FnMut(usize, u32),
) -> Option<()> {
    ids.clear();
    let mut first = 0;
    while first < count {
        let end = (first + CHUNK).min(count);
        // `Some` for the keys to look up; `None` for no key, and for a repeat of the key
        // before (found by `repeats` in the last loop).
        let mut wanted: [Option<(&str, &str)>; CHUNK] = [None; CHUNK];
        let mut repeats = [false; CHUNK];
        let mut before = first.checked_sub(1).and_then(&key);
        for k in first..end {
            let this = key(k);
            if this.is_some() && this == before {
                repeats[k - first] = true;
            } else {
                wanted[k - first] = this;
            }
            before = this;
        }
        let mut tags = [0u32; CHUNK];
        for (tag, wanted) in tags.iter_mut().zip(&wanted) {
            if let Some((prefix, body)) = wanted {
                *tag = interner.tag_of(prefix.as_bytes(), body.as_bytes());
            }
        }
        let mut probe = [0u64; CHUNK];
        for (i, wanted) in wanted.iter().enumerate().take(end - first) {
            if wanted.is_some() {
                probe[i] = interner.touch_slot(tags[i]);
            }
        }
        for entry in probe.iter_mut().take(end - first) {
            *entry = u64::from(interner.touch_end(*entry));
        }
        let mut touched = 0u8;
        for &end_offset in probe.iter().take(end - first) {
            touched ^= interner.touch_bytes(end_offset as u32);
        }
        std::hint::black_box(touched);
        for k in first..end {
            if repeats[k - first] {
                // A repeat follows a key, whose id was pushed last.
                ids.push(ids.last().copied().unwrap_or(NONE));
                continue;
            }
            let Some((prefix, body)) = wanted[k - first] else {
                ids.push(NONE);
                continue;
            };
            let (id, new) = interner.intern_tagged(tags[k - first], prefix, body)?;
            if new {
                on_new(k, id);
            }
            ids.push(id);
        }
        first = end;
    }
    Some(())
}

/// The one-byte key prefix of type index `t` (an ASCII control character, so keys stay
/// UTF-8), from a table built at compile time: it is asked for twice per row.
pub(super) fn type_prefix(t: u8) -> &'static str {
    const PREFIXES: [&str; 64] = {
        const TYPES: [u8; 64] = {
            let mut types = [0u8; 64];
            let mut t = 0;
            while t < 64 {
                types[t] = t as u8;
                t += 1;
            }
            types
        };
        let mut prefixes = [""; 64];
        let mut t = 0;
        while t < 64 {
            let (_, from_t) = TYPES.split_at(t);
            let (byte, _) = from_t.split_at(1);
            // Bytes below 0x80 are each a character of their own.
            prefixes[t] = match std::str::from_utf8(byte) {
                Ok(prefix) => prefix,
                Err(_) => panic!("an ASCII byte is UTF-8"),
            };
            t += 1;
        }
        prefixes
    };
    PREFIXES[usize::from(t & TYPE_MASK)]
}

/// The unknown-type interner's key body for `value`, after its type name: a separator the
/// type name cannot contain, then the value.
pub(super) fn unknown_body(value: &str) -> String {
    let mut body = String::with_capacity(value.len() + 1);
    body.push('\u{1F}');
    body.push_str(value);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs of one key, across chunk boundaries and around rows without a key, get one id,
    /// and only their first row is new.
    #[test]
    fn repeated_keys_get_the_id_of_the_first() {
        let bodies: Vec<Option<String>> = (0..3 * CHUNK + 5)
            .map(|k| match k % 7 {
                6 => None,
                _ => Some(format!("key-{}", k / 5)),
            })
            .collect();
        let key = |k: usize| bodies[k].as_deref().map(|body| ("\u{2}", body));
        let mut interner = Interner::new();
        let (mut ids, mut new) = (Vec::new(), Vec::new());
        intern_staged(&mut interner, bodies.len(), key, &mut ids, |k, id| {
            new.push((k, id))
        })
        .unwrap();
        let mut expected = Interner::new();
        let mut expected_new = Vec::new();
        for (k, body) in bodies.iter().enumerate() {
            let id = match body {
                Some(body) => {
                    let (id, fresh) = expected.intern("\u{2}", body).unwrap();
                    if fresh {
                        expected_new.push((k, id));
                    }
                    id
                }
                None => NONE,
            };
            assert_eq!(ids[k], id, "row {k}");
        }
        assert_eq!(new, expected_new);
    }

    /// Rows in time order and rows shuffled are grouped alike, positions without rows
    /// included.
    #[test]
    fn rows_are_grouped_by_position_in_or_out_of_order() {
        let positions = 1000;
        // Position 7 and those ending in 3 have no rows; the others one to three.
        let rows: Vec<u64> = (0..positions as u64)
            .filter(|p| *p != 7 && p % 10 != 3)
            .flat_map(|p| (0..=p % 3).map(move |k| (p << 32) | (p * 4 + k)))
            .collect();
        let mut shuffled = rows.clone();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, (i * 7919 + 13) % (i + 1));
        }
        let grouped = |mut rows: Vec<u64>, jumps: usize| {
            let (offsets, values) = group_by_position(&mut rows, positions, jumps);
            assert_eq!(offsets.len(), positions + 1);
            (0..positions)
                .map(|p| {
                    let mut group = values[offsets[p] as usize..offsets[p + 1] as usize].to_vec();
                    group.sort_unstable();
                    group
                })
                .collect::<Vec<_>>()
        };
        let in_order = grouped(rows.clone(), 0);
        assert_eq!(grouped(shuffled, rows.len()), in_order);
        assert!(in_order[7].is_empty() && in_order[13].is_empty());
        assert_eq!(in_order[5], vec![20, 21, 22]);
        assert_eq!(in_order.iter().map(Vec::len).sum::<usize>(), rows.len());
    }

    #[test]
    fn sorting_on_all_cores_sorts_as_one_core_does() {
        // Past the threshold, with many equal times, as a day of events has.
        let count = PARALLEL_SORT as u32 * 2 + 7;
        let mut items: Vec<(i64, u32)> = (0..count)
            .map(|i| ((i64::from(i) * 7919) % 1000, count - i))
            .collect();
        let mut expected = items.clone();
        expected.sort_unstable();
        sort_on_all_cores(&mut items);
        assert_eq!(items, expected);
    }
}
