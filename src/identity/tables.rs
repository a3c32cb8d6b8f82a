//! The graph's four SQL tables, kept between refreshes and rebuilt only where the graph changed.
//!
//! A full rebuild of the tables copies every record key and finds every row's profile: tens of
//! millions of rows, seconds of work, for a refresh that added a few thousand. What a refresh
//! can change is narrow:
//! - rows are only ever added, at the end (records batch by batch in id order, values in the
//!   order they joined a profile, merges and refusals as they happen);
//! - a row's profile changes only when its profile is merged into another, and then the row's
//!   old root is one of the `from` slots of the new merges;
//! - a record stitched again (new identifiers on a known key) may change profile, or get one.
//!
//! So rows are kept in chunks of positions, each with its unchanging columns (record keys,
//! identifier types and values) and the profile root of every row. The profile-id column is
//! those roots, as keys into one dictionary of every profile's id (see `ProfileIdText`);
//! published tables decode it as it is read. A refresh follows the new merges to move roots,
//! rebuilds whole only the chunks holding a re-stitched record, and appends chunks for the new
//! positions. The result is the same, row for row, as [`IdentityGraph::records`] and friends.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, DictionaryArray, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
    UInt32Array,
};
use datafusion::arrow::buffer::{Buffer, MutableBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::UInt32Type;

use crate::storage::index::Changes;

use super::batch::batch_of;
use super::bits::Bits;
use super::graph::{GraphError, IdentityGraph, NONE, SinceTables};
use super::output::{identities_schema, records_schema};
use crate::prefetch::{AHEAD_FAST, prefetch};

/// Positions per chunk: one output batch each.
const CHUNK: usize = 65_536;
/// Bytes of a profile id: `p_` and 16 hex digits.
const ID_LEN: usize = 18;

/// One table's chunks, covering positions `0..covered` of its order.
#[derive(Default)]
struct Chunked {
    chunks: Vec<Chunk>,
    covered: usize,
}

struct Chunk {
    /// Positions `first..end` of the table's order (`record_order` or `linked`).
    first: usize,
    end: usize,
    /// The record or value of each row (records without a profile have no row).
    members: Vec<u32>,
    /// Each row's profile root: also the keys of the row's profile id in the dictionary of
    /// every profile's id (see `ProfileIdText`), so the column costs 4 bytes a row where
    /// the ids' text cost 22, and a merge rewrites keys instead of text.
    roots: ScalarBuffer<u32>,
    /// Columns that never change for a row (record key; identifier type and value).
    fixed: Vec<ArrayRef>,
    /// The buffers of the first and last seen columns, as published the time before: written
    /// over by the next refresh once no reader holds them (see `recycled`).
    spare: Spare,
}

#[derive(Default)]
struct Spare {
    seen: Option<(Buffer, Buffer)>,
    /// First and last seen as last published.
    published_seen: Option<(Buffer, Buffer)>,
}

/// The four tables of one graph, as Arrow batches ready to publish.
pub struct GraphTables {
    chunk_rows: usize,
    profile_ids: ProfileIdText,
    records: Chunked,
    identities: Chunked,
    merges: Vec<RecordBatch>,
    merges_rows: usize,
    refused: Vec<RecordBatch>,
    refused_rows: usize,
}

/// `[identities, records, merges, refused]`.
pub type TableBatches = [Vec<RecordBatch>; 4];

/// [`GraphTables::first`]: the tables, their batches, and how those relate to whatever the
/// published tables held before (nothing kept).
pub type FirstTables = (GraphTables, TableBatches, [Changes; 4]);

impl Default for GraphTables {
    fn default() -> Self {
        GraphTables::with_chunk_rows(CHUNK)
    }
}

impl GraphTables {
    /// Tables cut into batches of `chunk_rows` positions (tests use small ones).
    pub fn with_chunk_rows(chunk_rows: usize) -> Self {
        GraphTables {
            chunk_rows: chunk_rows.max(1),
            profile_ids: ProfileIdText::default(),
            records: Chunked::default(),
            identities: Chunked::default(),
            merges: Vec::new(),
            merges_rows: 0,
            refused: Vec::new(),
            refused_rows: 0,
        }
    }

    /// Brings the tables up to date with `graph` (all of it, the first time) and returns them,
    /// with how each relates to its previous batches (for the published indexes).
    /// `graph` must be the graph these tables were last brought up to date with, or the first.
    pub fn update(
        &mut self,
        graph: &mut IdentityGraph,
    ) -> Result<(TableBatches, [Changes; 4]), GraphError> {
        let since = graph.take_since_tables();
        self.update_from(graph, &since)
    }

    /// The tables of a graph built from nothing (no record was stitched twice), from a shared
    /// reference: so that they can be built while the graph's state is written.
    pub fn first(graph: &IdentityGraph) -> Result<FirstTables, GraphError> {
        let mut tables = GraphTables::default();
        // Every chunk is new, so every time is read from the graph: nothing to take.
        let since = SinceTables {
            restitched: graph.restitched.clone(),
            reseen: Bits::default(),
        };
        let (batches, changes) = tables.update_from(graph, &since)?;
        Ok((tables, batches, changes))
    }

    fn update_from(
        &mut self,
        graph: &IdentityGraph,
        since: &SinceTables,
    ) -> Result<(TableBatches, [Changes; 4]), GraphError> {
        let restitched = &since.restitched;
        self.profile_ids.cover(graph)?;
        // Read once per row of both tables (tens of millions), at random: as bytes, the flags
        // of 1.5M profiles missed the cache on most rows, two thirds of a refresh's table time.
        let mut moved = Bits::new(graph.p_parent.len());
        for merge in &graph.merges[self.merges_rows.min(graph.merges.len())..] {
            moved.set(merge.from);
        }
        let mut again = Bits::new(graph.records.len());
        for &record in restitched {
            again.set(record);
        }

        let record_rows = |first: usize, end: usize| -> Vec<u32> {
            let records = &graph.record_order[first..end];
            let mut rows = Vec::with_capacity(records.len());
            for (i, &record) in records.iter().enumerate() {
                // Records come in id order, but what their entries point to is read at
                // random: asked for now for the ones ahead.
                if let Some(&ahead) = records.get(i + AHEAD_FAST) {
                    graph.prefetch_record_profile(ahead as usize);
                }
                if graph.record_profile(record) != NONE {
                    rows.push(record);
                }
            }
            rows
        };
        let record_profiles = Profiles {
            slot: &|record| graph.record_profile(record),
            ask: &|record| graph.prefetch_record_profile(record as usize),
        };
        let record_columns = |members: &[u32]| -> Result<Vec<ArrayRef>, GraphError> {
            let keys = graph.records.key_views(members, 0).map_err(arrow_error)?;
            Ok(vec![Arc::new(keys) as ArrayRef])
        };
        let mut records = self.records.update(
            graph,
            RECORDS_PROFILE_ID,
            self.chunk_rows,
            graph.record_order.len(),
            &moved,
            Some(&mut again),
            &record_rows,
            &record_profiles,
            &record_columns,
        )?;
        // A re-stitched record not found among the rows had no profile and may have one now:
        // the chunks of its position are rebuilt to take it in.
        let gained: Vec<u32> = restitched
            .iter()
            .copied()
            .filter(|&record| again.get(record) && graph.record_profile(record) != NONE)
            .collect();
        if !gained.is_empty() {
            let mut wanted = Bits::new(graph.records.len());
            for &record in &gained {
                wanted.set(record);
            }
            let mut stale: Vec<usize> = graph.record_order[..self.records.covered]
                .iter()
                .enumerate()
                .filter(|(_, record)| wanted.get(**record))
                .map(|(position, _)| position / self.chunk_rows)
                .collect();
            stale.dedup();
            let kept = self.records.rebuild(
                graph,
                &stale,
                &record_rows,
                &record_profiles,
                &record_columns,
            )?;
            records.kept_rows = records.kept_rows.min(kept);
            for (_, rows) in &mut records.changed {
                rows.retain(|&row| (row as usize) < kept);
            }
        }

        let value_rows = |first: usize, end: usize| graph.linked[first..end].to_vec();
        let value_profiles = Profiles {
            slot: &|value| graph.v_profile[value as usize],
            ask: &|value| prefetch(&graph.v_profile, value as usize),
        };
        let value_columns = |members: &[u32]| -> Result<Vec<ArrayRef>, GraphError> {
            let mut types = StringBuilder::with_capacity(members.len(), members.len() * 8);
            for &value in members {
                types.append_value(graph.rules.type_name(graph.type_of(value)));
            }
            // The key's first byte is its type (see `load.rs`).
            let values = graph.values.key_views(members, 1).map_err(arrow_error)?;
            Ok(vec![Arc::new(types.finish()), Arc::new(values)])
        };
        let identities = self.identities.update(
            graph,
            IDENTITIES_PROFILE_ID,
            self.chunk_rows,
            graph.linked.len(),
            &moved,
            None,
            &value_rows,
            &value_profiles,
            &value_columns,
        )?;

        // Merges and refusals are only ever appended.
        let appended = |rows: usize| Changes {
            kept_rows: rows,
            changed: Vec::new(),
        };
        let changes = [
            identities,
            records,
            appended(self.merges_rows),
            appended(self.refused_rows),
        ];
        if graph.merges.len() > self.merges_rows {
            self.merges.extend(graph.merges_from(self.merges_rows)?);
            self.merges_rows = graph.merges.len();
        }
        if graph.refusals.len() > self.refused_rows {
            self.refused.extend(graph.refused_from(self.refused_rows)?);
            self.refused_rows = graph.refusals.len();
        }
        let batches = [
            self.identities_batches(graph, &since.reseen)?,
            self.records_batches()?,
            non_empty(&self.merges, || graph.merges_from(0))?,
            non_empty(&self.refused, || graph.refused_from(0))?,
        ];
        Ok((batches, changes))
    }

    fn records_batches(&self) -> Result<Vec<RecordBatch>, GraphError> {
        if self.records.chunks.is_empty() {
            return Ok(vec![RecordBatch::new_empty(records_schema())]);
        }
        self.records
            .chunks
            .iter()
            .map(|chunk| {
                let columns = vec![
                    Arc::clone(&chunk.fixed[0]),
                    self.profile_ids.column(&chunk.roots)?,
                ];
                batch_of("records", records_schema(), columns)
            })
            .collect()
    }

    /// First and last seen change whenever a value is seen again. A chunk published before
    /// keeps its columns when none of its values was seen again (`reseen`, one bit per value),
    /// else gets a copy of them with those rows rewritten; a new chunk reads every row's times
    /// from the graph. Reading them all, at random in `v_seen`, was most of a refresh's table
    /// time.
    fn identities_batches(
        &mut self,
        graph: &IdentityGraph,
        reseen: &Bits,
    ) -> Result<Vec<RecordBatch>, GraphError> {
        if self.identities.chunks.is_empty() {
            return Ok(vec![RecordBatch::new_empty(identities_schema())]);
        }
        let profile_ids = &self.profile_ids;
        self.identities
            .chunks
            .iter_mut()
            .map(|chunk| {
                let n = chunk.members.len();
                let (first, last) = match &chunk.spare.published_seen {
                    Some((first, last)) => {
                        let changed: Vec<usize> = (0..n)
                            .filter(|&row| reseen.get(chunk.members[row]))
                            .collect();
                        if changed.is_empty() {
                            (first.clone(), last.clone())
                        } else {
                            let (spare_first, spare_last) = chunk.spare.seen.take().unzip();
                            let mut new_first = recycled(spare_first, n * 8);
                            let mut new_last = recycled(spare_last, n * 8);
                            new_first.extend_from_slice(first.as_slice());
                            new_last.extend_from_slice(last.as_slice());
                            let firsts = new_first.typed_data_mut::<i64>();
                            for &row in &changed {
                                firsts[row] = graph.v_seen[chunk.members[row] as usize].0;
                            }
                            let lasts = new_last.typed_data_mut::<i64>();
                            for &row in &changed {
                                lasts[row] = graph.v_seen[chunk.members[row] as usize].1;
                            }
                            rotate(&mut chunk.spare, new_first, new_last)
                        }
                    }
                    None => {
                        let (spare_first, spare_last) = chunk.spare.seen.take().unzip();
                        let mut first = recycled(spare_first, n * 8);
                        let mut last = recycled(spare_last, n * 8);
                        for &value in &chunk.members {
                            let (seen_first, seen_last) = graph.v_seen[value as usize];
                            first.push(seen_first);
                            last.push(seen_last);
                        }
                        rotate(&mut chunk.spare, first, last)
                    }
                };
                let timestamps = |buffer: Buffer| -> ArrayRef {
                    Arc::new(
                        TimestampMicrosecondArray::new(ScalarBuffer::new(buffer, 0, n), None)
                            .with_timezone("UTC"),
                    )
                };
                let columns = vec![
                    profile_ids.column(&chunk.roots)?,
                    Arc::clone(&chunk.fixed[0]),
                    Arc::clone(&chunk.fixed[1]),
                    timestamps(first),
                    timestamps(last),
                ];
                batch_of("identities", identities_schema(), columns)
            })
            .collect()
    }
}

/// A buffer for `bytes` of a new version of a column, in the allocation of `spare` (the
/// version before last) when no reader holds that any more. A refresh rewrites hundreds of
/// megabytes of columns; memory the process already has is filled at memory speed, where
/// fresh pages must first be faulted in and zeroed by the kernel, which perf showed taking
/// most of a refresh.
fn recycled(spare: Option<Buffer>, bytes: usize) -> MutableBuffer {
    match spare.map(Buffer::into_mutable) {
        Some(Ok(mut buffer)) if buffer.capacity() >= bytes => {
            buffer.clear();
            buffer
        }
        _ => MutableBuffer::with_capacity(bytes),
    }
}

/// Publishes new first and last seen columns for a chunk: the ones published until now become
/// the spare buffers the next rewrite fills (once no reader holds them).
fn rotate(spare: &mut Spare, first: MutableBuffer, last: MutableBuffer) -> (Buffer, Buffer) {
    let (first, last) = (Buffer::from(first), Buffer::from(last));
    spare.seen = spare.published_seen.replace((first.clone(), last.clone()));
    (first, last)
}

/// The profile-id column of each table, as its batches lay them out.
const RECORDS_PROFILE_ID: usize = 1;
const IDENTITIES_PROFILE_ID: usize = 0;

impl Chunked {
    /// Moves roots along the new merges, and re-reads the root of rows flagged in `again`
    /// (clearing their flags), patching the profile ids that changed; then appends the
    /// positions up to `len`. A flagged row that lost its profile has its chunk rebuilt.
    /// Returns the changes, the profile ids being column `profile_column` of the batches.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        graph: &IdentityGraph,
        profile_column: usize,
        chunk_rows: usize,
        len: usize,
        moved: &Bits,
        mut again: Option<&mut Bits>,
        rows: &Rows<'_>,
        profiles: &Profiles<'_>,
        columns: &Columns<'_>,
    ) -> Result<Changes, GraphError> {
        // Chunks are patched on as many threads as there are cores: a refresh touches nearly
        // every chunk (a merged profile's rows are spread over all of them), and following
        // every row's root was most of a refresh's table time. The threads only read
        // `again`; the flags they found are cleared after.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = self.chunks.len().div_ceil(threads.max(1)).max(1);
        let flags = again.as_deref();
        let mut bases = Vec::with_capacity(self.chunks.len() / per_thread + 1);
        let mut row_base = 0usize;
        for part in self.chunks.chunks(per_thread) {
            bases.push(row_base);
            row_base += part.iter().map(|chunk| chunk.members.len()).sum::<usize>();
        }
        let patch_part = |first_index: usize, row_base: usize, part: &mut [Chunk]| {
            let mut patched = PatchedPart::default();
            let mut row_base = row_base;
            for (offset, chunk) in part.iter_mut().enumerate() {
                let (changed, lost) =
                    chunk.reroot(graph, moved, flags, profiles, &mut patched.taken);
                if lost {
                    patched.stale.push(first_index + offset);
                } else if !changed.is_empty() {
                    patched
                        .changed_rows
                        .extend(changed.iter().map(|&row| (row_base + row) as u32));
                }
                row_base += chunk.members.len();
            }
            patched
        };
        let parts: Vec<PatchedPart> = if threads < 2 || self.chunks.len() < 2 * per_thread {
            vec![patch_part(0, 0, &mut self.chunks)]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = self
                    .chunks
                    .chunks_mut(per_thread)
                    .zip(&bases)
                    .enumerate()
                    .map(|(i, (part, &base))| {
                        let patch_part = &patch_part;
                        scope.spawn(move || patch_part(i * per_thread, base, part))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| {
                        handle.join().map_err(|_| GraphError::Arrow {
                            table: "identity tables".into(),
                            message: "patching a chunk panicked".into(),
                        })
                    })
                    .collect::<Result<Vec<_>, GraphError>>()
            })?
        };
        let mut changed_rows: Vec<u32> = Vec::new();
        let mut stale: Vec<usize> = Vec::new();
        for part in parts {
            changed_rows.extend(part.changed_rows);
            stale.extend(part.stale);
            if let Some(bits) = again.as_mut() {
                for member in part.taken {
                    bits.take(member);
                }
            }
        }
        let mut kept_rows = self.rebuild(graph, &stale, rows, profiles, columns)?;
        // A short last chunk is rebuilt with the new positions, so chunks stay full.
        if let Some(last) = self.chunks.last()
            && last.end - last.first < chunk_rows
            && len > self.covered
        {
            self.covered = last.first;
            self.chunks.pop();
        }
        // Rows appended from here on are new: the kept ones end where the chunks now end.
        kept_rows = kept_rows.min(self.chunks.iter().map(|chunk| chunk.members.len()).sum());
        let ranges: Vec<(usize, usize)> = (self.covered..len)
            .step_by(chunk_rows)
            .map(|first| (first, (first + chunk_rows).min(len)))
            .collect();
        self.chunks
            .extend(build_chunks(graph, &ranges, rows, profiles, columns)?);
        self.covered = self.covered.max(len);
        changed_rows.retain(|&row| (row as usize) < kept_rows);
        Ok(Changes {
            kept_rows,
            changed: vec![(profile_column, changed_rows)],
        })
    }

    /// Builds the chunks at `indexes` (ascending) again from the graph. Returns the number of
    /// rows before the first of them: the rows whose numbering is kept.
    fn rebuild(
        &mut self,
        graph: &IdentityGraph,
        indexes: &[usize],
        rows: &Rows<'_>,
        profiles: &Profiles<'_>,
        columns: &Columns<'_>,
    ) -> Result<usize, GraphError> {
        let kept = match indexes.first() {
            Some(&first) => self.chunks[..first.min(self.chunks.len())]
                .iter()
                .map(|chunk| chunk.members.len())
                .sum(),
            None => usize::MAX,
        };
        for &index in indexes {
            if let Some(chunk) = self.chunks.get_mut(index) {
                *chunk = build_chunk(graph, chunk.first, chunk.end, rows, profiles, columns)?;
            }
        }
        Ok(kept)
    }
}

/// What patching a run of chunks found: rows whose profile id changed (numbered across the
/// table), chunks to build again, and the flagged members seen (to clear after).
#[derive(Default)]
struct PatchedPart {
    changed_rows: Vec<u32>,
    stale: Vec<usize>,
    taken: Vec<u32>,
}

impl Chunk {
    /// Moves the chunk's roots along the new merges and re-reads the roots of members flagged
    /// in `again` (noting them in `taken`). Returns the rows whose root changed, and whether a
    /// flagged member lost its profile (the chunk must then be built again). Roots that move
    /// are written to a copy: readers may still hold the published ones.
    fn reroot(
        &mut self,
        graph: &IdentityGraph,
        moved: &Bits,
        again: Option<&Bits>,
        profiles: &Profiles<'_>,
        taken: &mut Vec<u32>,
    ) -> (Vec<usize>, bool) {
        let mut changed = Vec::new();
        let mut lost = false;
        let mut moved_roots: Option<Vec<u32>> = None;
        for (row, (&root, &member)) in self.roots.iter().zip(&self.members).enumerate() {
            let now = if again.is_some_and(|bits| bits.get(member)) {
                taken.push(member);
                match (profiles.slot)(member) {
                    NONE => {
                        lost = true;
                        continue;
                    }
                    slot => graph.root(slot),
                }
            } else if moved.get(root) {
                graph.root(root)
            } else {
                continue;
            };
            if now != root {
                moved_roots.get_or_insert_with(|| self.roots.to_vec())[row] = now;
                changed.push(row);
            }
        }
        if let Some(roots) = moved_roots {
            self.roots = roots.into();
        }
        (changed, lost)
    }
}

/// A table's rows for positions `first..end` of its order.
type Rows<'a> = dyn Fn(usize, usize) -> Vec<u32> + Sync + 'a;
/// Where a table's rows find their profiles.
struct Profiles<'a> {
    /// A row's profile slot (follow `p_parent` to its root), `NONE` if it has no profile.
    slot: &'a (dyn Fn(u32) -> u32 + Sync),
    /// Asks for what `slot` reads of a row, some rows before it is read: chunks read tens of
    /// thousands of rows' slots at random, and then their slots' parents.
    ask: &'a (dyn Fn(u32) + Sync),
}
/// The unchanging columns of rows.
type Columns<'a> = dyn Fn(&[u32]) -> Result<Vec<ArrayRef>, GraphError> + Sync + 'a;

/// The chunks of `ranges`, in order, built on as many threads as there are cores: a full
/// build's tables are hundreds of chunks, each formatting and copying its rows' text.
fn build_chunks(
    graph: &IdentityGraph,
    ranges: &[(usize, usize)],
    rows: &Rows<'_>,
    profiles: &Profiles<'_>,
    columns: &Columns<'_>,
) -> Result<Vec<Chunk>, GraphError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let build = |ranges: &[(usize, usize)]| {
        ranges
            .iter()
            .map(|&(first, end)| build_chunk(graph, first, end, rows, profiles, columns))
            .collect::<Result<Vec<Chunk>, GraphError>>()
    };
    if threads < 2 || ranges.len() < 4 {
        return build(ranges);
    }
    let per_thread = ranges.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parts: Vec<_> = ranges
            .chunks(per_thread)
            .map(|part| scope.spawn(move || build(part)))
            .collect();
        let mut chunks = Vec::with_capacity(ranges.len());
        for part in parts {
            let built = part.join().map_err(|_| GraphError::Arrow {
                table: "identity tables".into(),
                message: "building a chunk panicked".into(),
            })??;
            chunks.extend(built);
        }
        Ok(chunks)
    })
}

/// The chunk of positions `first..end`.
fn build_chunk(
    graph: &IdentityGraph,
    first: usize,
    end: usize,
    rows: &Rows<'_>,
    profiles: &Profiles<'_>,
    columns: &Columns<'_>,
) -> Result<Chunk, GraphError> {
    let members = rows(first, end);
    let slots: Vec<u32> = members
        .iter()
        .enumerate()
        .map(|(i, &member)| {
            if let Some(&ahead) = members.get(i + AHEAD_FAST) {
                (profiles.ask)(ahead);
            }
            (profiles.slot)(member)
        })
        .collect();
    let roots: Vec<u32> = slots
        .iter()
        .enumerate()
        .map(|(i, &slot)| {
            if let Some(&ahead) = slots.get(i + AHEAD_FAST) {
                prefetch(&graph.p_parent, ahead as usize);
            }
            if slot == NONE { NONE } else { graph.root(slot) }
        })
        .collect();
    Ok(Chunk {
        first,
        end,
        fixed: columns(&members)?,
        spare: Spare::default(),
        members,
        roots: roots.into(),
    })
}

/// The text of every profile's id, by slot: the dictionary that both tables' profile-id
/// columns index with their rows' roots. Slots of merged profiles keep their text, unused:
/// a slot is never reused, and a few megabytes spare rebuilding the dictionary each merge.
#[derive(Default)]
struct ProfileIdText {
    ids: Option<Arc<StringArray>>,
}

impl ProfileIdText {
    /// Extends the text to every slot of `graph`: the ids had before are copied, only the new
    /// slots' are formatted (a refresh founds a few thousand profiles among millions).
    fn cover(&mut self, graph: &IdentityGraph) -> Result<(), GraphError> {
        let had = self
            .ids
            .as_ref()
            .map_or(&[][..], |ids| ids.values().as_slice());
        let slots = graph.p_hash.len();
        if had.len() == slots * ID_LEN {
            return Ok(());
        }
        let too_many = || GraphError::Capacity {
            what: "profiles (their ids' text)",
        };
        let bytes = slots
            .checked_mul(ID_LEN)
            .filter(|&bytes| bytes <= i32::MAX as usize);
        let bytes = bytes.ok_or_else(too_many)?;
        let mut text = MutableBuffer::with_capacity(bytes);
        text.extend_from_slice(had);
        let mut format = super::output::IdFormatter::new();
        for &hash in &graph.p_hash[had.len() / ID_LEN..] {
            text.extend_from_slice(format.format(hash).as_bytes());
        }
        let offsets: ScalarBuffer<i32> = (0..=slots).map(|slot| (slot * ID_LEN) as i32).collect();
        // Safety: the offsets ascend by `ID_LEN` over text of exactly `slots * ID_LEN` bytes,
        // all ASCII (whole ids from `IdFormatter`), so every value is valid UTF-8. `try_new`
        // would check it all again on each refresh.
        let ids = unsafe {
            StringArray::new_unchecked(OffsetBuffer::new_unchecked(offsets), text.into(), None)
        };
        self.ids = Some(Arc::new(ids));
        Ok(())
    }

    /// The profile-id column of rows with these roots.
    fn column(&self, roots: &ScalarBuffer<u32>) -> Result<ArrayRef, GraphError> {
        let ids: ArrayRef = match &self.ids {
            Some(ids) => Arc::clone(ids) as ArrayRef,
            None => Arc::new(StringArray::new_null(0)),
        };
        let keys = UInt32Array::new(roots.clone(), None);
        // Checks each key against the dictionary: a pass over 4-byte keys, cheap beside what
        // a wrong key would do to a reader.
        let column = DictionaryArray::<UInt32Type>::try_new(keys, ids).map_err(arrow_error)?;
        Ok(Arc::new(column))
    }
}

fn arrow_error(e: datafusion::arrow::error::ArrowError) -> GraphError {
    GraphError::Arrow {
        table: "identity tables".into(),
        message: e.to_string(),
    }
}

/// The kept batches, or the table's (empty) batch when nothing was kept yet, so that readers
/// always see the schema.
fn non_empty(
    kept: &[RecordBatch],
    empty: impl FnOnce() -> Result<Vec<RecordBatch>, GraphError>,
) -> Result<Vec<RecordBatch>, GraphError> {
    if kept.is_empty() {
        empty()
    } else {
        Ok(kept.to_vec())
    }
}
