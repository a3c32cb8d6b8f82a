//! The graph's four SQL tables, kept between refreshes and rebuilt only where the graph changed.
//!
//! A full rebuild of the tables copies every record key and formats every profile id: tens of
//! millions of rows, seconds of work, for a refresh that added a few thousand. What a refresh
//! can change is narrow:
//! - rows are only ever added, at the end (records in the order first stitched, values in the
//!   order they joined a profile, merges and refusals as they happen);
//! - a row's profile changes only when its profile is merged into another, and then the row's
//!   old root is one of the `from` slots of the new merges;
//! - a record stitched again (new identifiers on a known key) may change profile, or get one.
//!
//! So rows are kept in chunks of positions, each with its unchanging columns (record keys,
//! identifier types and values) and the profile root of every row. A refresh follows the new
//! merges to move roots, rebuilds the profile-id column of the chunks where a root moved,
//! rebuilds whole only the chunks holding a re-stitched record, and appends chunks for the new
//! positions. The result is the same, row for row, as [`IdentityGraph::records`] and friends.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::buffer::Buffer;

use super::graph::{GraphError, IdentityGraph, NONE};
use super::output::{identities_schema, records_schema};

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
    /// Each row's profile root when the profile-id column was built.
    roots: Vec<u32>,
    /// Columns that never change for a row (record key; identifier type and value).
    fixed: Vec<ArrayRef>,
    profile_ids: ArrayRef,
}

/// The four tables of one graph, as Arrow batches ready to publish.
pub struct GraphTables {
    chunk_rows: usize,
    records: Chunked,
    identities: Chunked,
    merges: Vec<RecordBatch>,
    merges_rows: usize,
    refused: Vec<RecordBatch>,
    refused_rows: usize,
}

/// `[identities, records, merges, refused]`.
pub type TableBatches = [Vec<RecordBatch>; 4];

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
            records: Chunked::default(),
            identities: Chunked::default(),
            merges: Vec::new(),
            merges_rows: 0,
            refused: Vec::new(),
            refused_rows: 0,
        }
    }

    /// Brings the tables up to date with `graph` (all of it, the first time) and returns them.
    /// `graph` must be the graph these tables were last brought up to date with, or the first.
    pub fn update(&mut self, graph: &mut IdentityGraph) -> Result<TableBatches, GraphError> {
        let mut moved = vec![false; graph.p_parent.len()];
        for merge in &graph.merges[self.merges_rows.min(graph.merges.len())..] {
            moved[merge.from as usize] = true;
        }
        // A flag per record rather than a hash set: every row of every chunk is checked.
        let mut restitched = vec![false; graph.records.len()];
        let mut any_restitched = false;
        for record in graph.take_restitched() {
            restitched[record as usize] = true;
            any_restitched = true;
        }

        let graph = &*graph;
        let record_rows = |first: usize, end: usize| -> Vec<u32> {
            graph.record_order[first..end]
                .iter()
                .copied()
                .filter(|&record| graph.record_profile(record) != NONE)
                .collect()
        };
        let record_root = |record: u32| graph.root(graph.record_profile(record));
        let record_columns = |members: &[u32]| -> Result<Vec<ArrayRef>, GraphError> {
            let mut keys = StringBuilder::with_capacity(members.len(), members.len() * 40);
            for &record in members {
                keys.append_value(graph.record_text(record));
            }
            Ok(vec![Arc::new(keys.finish()) as ArrayRef])
        };
        self.records.update(
            graph,
            self.chunk_rows,
            graph.record_order.len(),
            &moved,
            &|chunk: &Chunk| {
                any_restitched && chunk.members.iter().any(|&r| restitched[r as usize])
            },
            &record_rows,
            &record_root,
            &record_columns,
        )?;

        let value_rows = |first: usize, end: usize| graph.linked[first..end].to_vec();
        let value_root = |value: u32| graph.root(graph.v_profile[value as usize]);
        let value_columns = |members: &[u32]| -> Result<Vec<ArrayRef>, GraphError> {
            let mut types = StringBuilder::with_capacity(members.len(), members.len() * 8);
            let mut values = StringBuilder::with_capacity(members.len(), members.len() * 24);
            for &value in members {
                types.append_value(graph.rules.type_name(graph.type_of(value)));
                values.append_value(graph.value_text(value));
            }
            Ok(vec![Arc::new(types.finish()), Arc::new(values.finish())])
        };
        self.identities.update(
            graph,
            self.chunk_rows,
            graph.linked.len(),
            &moved,
            &|_: &Chunk| false,
            &value_rows,
            &value_root,
            &value_columns,
        )?;

        if graph.merges.len() > self.merges_rows {
            self.merges.extend(graph.merges_from(self.merges_rows)?);
            self.merges_rows = graph.merges.len();
        }
        if graph.refusals.len() > self.refused_rows {
            self.refused.extend(graph.refused_from(self.refused_rows)?);
            self.refused_rows = graph.refusals.len();
        }
        Ok([
            self.identities_batches(graph)?,
            self.records_batches()?,
            non_empty(&self.merges, || graph.merges_from(0))?,
            non_empty(&self.refused, || graph.refused_from(0))?,
        ])
    }

    fn records_batches(&self) -> Result<Vec<RecordBatch>, GraphError> {
        if self.records.chunks.is_empty() {
            return Ok(vec![RecordBatch::new_empty(records_schema())]);
        }
        self.records
            .chunks
            .iter()
            .map(|chunk| {
                let columns = vec![Arc::clone(&chunk.fixed[0]), Arc::clone(&chunk.profile_ids)];
                batch("records", records_schema(), columns)
            })
            .collect()
    }

    /// First and last seen change whenever a value is seen again, so they are rebuilt each
    /// time: two integers per row, read in the order of `linked`.
    fn identities_batches(&self, graph: &IdentityGraph) -> Result<Vec<RecordBatch>, GraphError> {
        if self.identities.chunks.is_empty() {
            return Ok(vec![RecordBatch::new_empty(identities_schema())]);
        }
        self.identities
            .chunks
            .iter()
            .map(|chunk| {
                let n = chunk.members.len();
                let utc = Some(Arc::from("UTC"));
                let mut first =
                    TimestampMicrosecondBuilder::with_capacity(n).with_timezone_opt(utc.clone());
                let mut last = TimestampMicrosecondBuilder::with_capacity(n).with_timezone_opt(utc);
                for &value in &chunk.members {
                    let (seen_first, seen_last) = graph.v_seen[value as usize];
                    first.append_value(seen_first);
                    last.append_value(seen_last);
                }
                let columns = vec![
                    Arc::clone(&chunk.profile_ids),
                    Arc::clone(&chunk.fixed[0]),
                    Arc::clone(&chunk.fixed[1]),
                    Arc::new(first.finish()) as ArrayRef,
                    Arc::new(last.finish()) as ArrayRef,
                ];
                batch("identities", identities_schema(), columns)
            })
            .collect()
    }
}

impl Chunked {
    /// Moves roots along the new merges, rebuilds chunks `stale` says changed, and appends
    /// the positions up to `len`.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        graph: &IdentityGraph,
        chunk_rows: usize,
        len: usize,
        moved: &[bool],
        stale: &dyn Fn(&Chunk) -> bool,
        rows: &dyn Fn(usize, usize) -> Vec<u32>,
        root_of: &dyn Fn(u32) -> u32,
        columns: &dyn Fn(&[u32]) -> Result<Vec<ArrayRef>, GraphError>,
    ) -> Result<(), GraphError> {
        let build = |first: usize, end: usize| -> Result<Chunk, GraphError> {
            let members = rows(first, end);
            let roots: Vec<u32> = members.iter().map(|&m| root_of(m)).collect();
            Ok(Chunk {
                first,
                end,
                fixed: columns(&members)?,
                profile_ids: profile_ids(graph, &roots),
                members,
                roots,
            })
        };
        for chunk in &mut self.chunks {
            if stale(chunk) {
                *chunk = build(chunk.first, chunk.end)?;
                continue;
            }
            let mut changed = Vec::new();
            for (row, root) in chunk.roots.iter_mut().enumerate() {
                if moved.get(*root as usize).copied().unwrap_or(false) {
                    *root = graph.root(*root);
                    changed.push(row);
                }
            }
            if !changed.is_empty() {
                chunk.profile_ids =
                    patch_profile_ids(graph, &chunk.profile_ids, &chunk.roots, &changed);
            }
        }
        // A short last chunk is rebuilt with the new positions, so chunks stay full.
        if let Some(last) = self.chunks.last()
            && last.end - last.first < chunk_rows
            && len > self.covered
        {
            self.covered = last.first;
            self.chunks.pop();
        }
        while self.covered < len {
            let end = (self.covered + chunk_rows).min(len);
            self.chunks.push(build(self.covered, end)?);
            self.covered = end;
        }
        Ok(())
    }
}

/// `column` with the rows `changed` given the profile ids of their new `roots`. Every profile
/// id is `ID_LEN` bytes, so the offsets stay and the text is copied once and overwritten in
/// place: a merge touches a few rows of a chunk, and formatting all of them again cost
/// seconds per refresh at a million profiles.
fn patch_profile_ids(
    graph: &IdentityGraph,
    column: &ArrayRef,
    roots: &[u32],
    changed: &[usize],
) -> ArrayRef {
    let Some(ids) = column.as_string_opt::<i32>() else {
        return profile_ids(graph, roots);
    };
    let fixed_width = ids
        .value_offsets()
        .iter()
        .enumerate()
        .all(|(i, &offset)| offset as usize == i * ID_LEN);
    if !fixed_width || ids.null_count() > 0 || ids.len() != roots.len() {
        return profile_ids(graph, roots);
    }
    let mut text = ids.values().to_vec();
    let mut format = super::output::IdFormatter::new();
    for &row in changed {
        let id = format.format(graph.p_hash[roots[row] as usize]);
        text[row * ID_LEN..(row + 1) * ID_LEN].copy_from_slice(id.as_bytes());
    }
    // Only whole ASCII ids were written over whole ids: the text is still valid UTF-8.
    match StringArray::try_new(ids.offsets().clone(), Buffer::from_vec(text), None) {
        Ok(patched) => Arc::new(patched),
        Err(_) => profile_ids(graph, roots),
    }
}

/// The `profile_id` column for rows with these profile roots.
fn profile_ids(graph: &IdentityGraph, roots: &[u32]) -> ArrayRef {
    let mut ids = StringBuilder::with_capacity(roots.len(), roots.len() * 18);
    let mut text = super::output::IdFormatter::new();
    for &root in roots {
        ids.append_value(text.format(graph.p_hash[root as usize]));
    }
    Arc::new(ids.finish())
}

fn batch(
    table: &str,
    schema: datafusion::arrow::datatypes::SchemaRef,
    columns: Vec<ArrayRef>,
) -> Result<RecordBatch, GraphError> {
    RecordBatch::try_new(schema, columns).map_err(|e| GraphError::Arrow {
        table: table.to_string(),
        message: e.to_string(),
    })
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
