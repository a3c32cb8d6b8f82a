//! Reading a batch of rows into the graph: interning keys, grouping rows by record, and laying
//! the batch out in processing order for the two passes of `graph.rs`.

use super::graph::{ApplySummary, BLOCKED, GraphError, IdentityGraph, IdentityRow, NONE};
use super::intern::FastMap;
use super::prefetch::prefetch;

/// Rows hashed and looked up together, so that their cache misses overlap (see `Interner`).
const CHUNK: usize = 32;
/// `load`'s marker for a row whose type is not in priority.
const NO_TYPE: u8 = u8::MAX;

/// Rows being loaded: what the chunks of `load_rows` accumulate. Owns nothing borrowed from
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
    pairs: Vec<(u32, u32)>,
    unknown: Vec<(u32, u32)>,
    /// The last type name seen and its index: rows arrive in long runs of one type (a UNION
    /// ALL per identifier column), so the name is looked up once per run.
    last_type: (String, u8),
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
        let (hint, _) = rows.size_hint();
        loader.pairs.reserve(hint);
        let mut chunk: Vec<IdentityRow<'a>> = Vec::with_capacity(CHUNK);
        loop {
            chunk.clear();
            chunk.extend(rows.by_ref().take(CHUNK));
            if chunk.is_empty() {
                return Ok(());
            }
            self.load_chunk(&chunk, loader)?;
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
            pairs,
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
        self.sort_into_processing_order(&mut order);
        let mut rank = vec![0u32; order.len()];
        for (position, &(_, record)) in order.iter().enumerate() {
            rank[local_of(record)] = position as u32;
        }
        // Counting sort of the rows by position: O(rows), no comparison sort of 20M pairs.
        let mut offsets = vec![0u32; order.len() + 1];
        for &(record, _) in &pairs {
            offsets[rank[local_of(record)] as usize] += 1;
        }
        let mut total = 0u32;
        for offset in offsets.iter_mut() {
            total += *offset;
            *offset = total;
        }
        let mut values = vec![0u32; pairs.len()];
        for &(record, value) in &pairs {
            let position = rank[local_of(record)] as usize;
            offsets[position] -= 1;
            values[offsets[position] as usize] = value;
        }
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

    /// Loads up to `CHUNK` rows in stages, each a loop of independent memory accesses.
    fn load_chunk(
        &mut self,
        chunk: &[IdentityRow<'_>],
        loader: &mut Loader,
    ) -> Result<(), GraphError> {
        // Stage 0: drop empty rows, resolve types, hash keys (no memory traffic).
        let mut keep = [(0usize, NO_TYPE, 0u32, 0u32); CHUNK];
        let mut n = 0;
        for (i, row) in chunk.iter().enumerate() {
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
            let t = loader.last_type.1;
            let record_tag = self.records.tag_of(&[], row.record_key.as_bytes());
            let value_tag = if t == NO_TYPE {
                0
            } else {
                self.values.tag_of(&[t], row.id_value.as_bytes())
            };
            keep[n] = (i, t, record_tag, value_tag);
            n += 1;
        }
        let keep = &keep[..n];
        // Stages 1-3: touch slots, then key offsets, then key bytes, for all rows at once.
        let mut probe = [(0u64, 0u64); CHUNK];
        for (k, &(_, t, record_tag, value_tag)) in keep.iter().enumerate() {
            let value_slot = if t == NO_TYPE {
                0
            } else {
                self.values.touch_slot(value_tag)
            };
            probe[k] = (self.records.touch_slot(record_tag), value_slot);
        }
        for entry in probe.iter_mut().take(n) {
            *entry = (
                u64::from(self.records.touch_end(entry.0)),
                u64::from(self.values.touch_end(entry.1)),
            );
        }
        let mut touched = 0u8;
        for &(record_end, value_end) in probe.iter().take(n) {
            touched ^= self.records.touch_bytes(record_end as u32);
            touched ^= self.values.touch_bytes(value_end as u32);
        }
        std::hint::black_box(touched);
        // Stage 4: intern, now that the cache lines are in.
        let mut ids = [(0u32, NONE); CHUNK];
        for (k, &(i, t, record_tag, value_tag)) in keep.iter().enumerate() {
            let row = &chunk[i];
            let (record, new) = self
                .records
                .intern_tagged(record_tag, &[], row.record_key.as_bytes())
                .ok_or(GraphError::Capacity { what: "records" })?;
            if new {
                self.r.push(NONE);
                loader.new_seen.push((row.seen_at, record));
            }
            if t == NO_TYPE {
                let body = [&[0x1F], row.id_value.as_bytes()].concat();
                let (id, _) = self.unknown.intern(row.id_type.as_bytes(), &body).ok_or(
                    GraphError::Capacity {
                        what: "unknown-type identifiers",
                    },
                )?;
                loader.unknown.push((record, id));
                ids[k] = (record, NONE);
                continue;
            }
            let (value, new) = self
                .values
                .intern_tagged(value_tag, &[t], row.id_value.as_bytes())
                .ok_or(GraphError::Capacity {
                    what: "identifier values",
                })?;
            if new {
                // Patterns are matched once per distinct value, not per row.
                let blocked =
                    !self.rules.blocked.is_empty() && self.rules.blocked_set.is_match(row.id_value);
                self.v_meta.push(if blocked { t | BLOCKED } else { t });
                self.v_profile.push(NONE);
                self.v_seen.push((row.seen_at, row.seen_at));
                self.v_co.push((0, 0));
            }
            ids[k] = (record, value);
            // Stage 5 reads these at random; their misses overlap with the interning here.
            if !new {
                prefetch(&self.v_seen, value as usize);
            }
        }
        // Stage 5: times, one independent update per row.
        for (k, &(i, ..)) in keep.iter().enumerate() {
            let (record, value) = ids[k];
            let seen_at = chunk[i].seen_at;
            if value != NONE {
                let seen = &mut self.v_seen[value as usize];
                let now = (seen.0.min(seen_at), seen.1.max(seen_at));
                if now != *seen {
                    *seen = now;
                    self.reseen.set(value);
                }
                loader.pairs.push((record, value));
            }
            let seen = if record >= loader.old_records {
                &mut loader.new_seen[(record - loader.old_records) as usize]
            } else {
                let local = *loader.old_local.entry(record).or_insert_with(|| {
                    loader.old_seen.push((seen_at, record));
                    loader.old_seen.len() as u32 - 1
                });
                &mut loader.old_seen[local as usize]
            };
            seen.0 = seen.0.min(seen_at);
        }
        Ok(())
    }

    /// Sorts `(seen_at, record)` into processing order: by time, then record key.
    fn sort_into_processing_order(&self, order: &mut [(i64, u32)]) {
        // Sort by time first (integers, fast); only records that share a time need their keys
        // compared, and record ids (which follow input order) must not decide.
        order.sort_unstable();
        let mut start = 0;
        while start < order.len() {
            let at = order[start].0;
            let end = start + order[start..].iter().take_while(|(t, _)| *t == at).count();
            if end - start > 1 {
                order[start..end]
                    .sort_unstable_by(|a, b| self.records.key(a.1).cmp(self.records.key(b.1)));
            }
            start = end;
        }
    }
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
