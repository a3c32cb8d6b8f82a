//! Persisted identity-graph state: the graph as named Arrow tables and back, to continue
//! incrementally after a restart.
//!
//! Each part is a plain table whose row `i` is entity `i` (value, record, profile slot, …), so
//! ids are positions and reloading re-interns keys in the same order to get the same ids.
//! Everything derivable (hash tables, profile hashes and counts) is rebuilt on load, and every
//! reference is range-checked: corrupt state is an error naming the part, never a panic.

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBufferBuilder, Int64Array, RecordBatch, UInt8Array,
    UInt32Array,
};
use datafusion::arrow::datatypes::{BinaryType, DataType, Field, Schema, SchemaRef};
use std::sync::Arc;

use super::batch::{ColumnReader, MAX_TEXT_BYTES, STATE_ROWS, TableWriter, batch_of, byte_column};
use super::graph::{
    GraphError, IdentityGraph, Merge, NONE, REFUSED_BIT, Reason, Refusal, Refused, Rules,
    stable_hash,
};
use super::hubs::block_size;
use super::intern::Interner;
use super::load::{type_prefix, unknown_body};
use crate::prefetch::{AHEAD_FAST, prefetch};

/// Keys whose hash-table slots are loaded together on reload, so that the cache misses of
/// inserting millions of keys overlap (see `Interner`).
const PREFETCH: usize = 32;

/// Where a value's flags sit in its meta byte (above the type index).
const FLAGS_SHIFT: u32 = 6;

/// Bumped whenever the layout of a part changes; older state then needs a rebuild.
/// 3: record keys moved out of `records` into a part of their own, `record_keys`.
pub const STATE_VERSION: u32 = 3;

/// The parts [`IdentityGraph::state_parts`] makes, in the order it makes them: the largest
/// first (see there).
pub const STATE_PARTS: [&str; 10] = [
    RECORD_KEYS,
    "record_ids",
    "values",
    "records",
    "cooccur",
    "profiles",
    "merges",
    "refused",
    "unknown",
    "meta",
];

/// The part holding every record's key, by id: it depends on nothing but the records
/// interner, so a full build can write it while the stitch runs (see [`record_keys_part`]).
pub const RECORD_KEYS: &str = "record_keys";

type Parts = Vec<(String, Vec<RecordBatch>)>;

fn schema(fields: &[(&str, DataType, bool)]) -> SchemaRef {
    Arc::new(Schema::new(
        fields
            .iter()
            .map(|(name, data_type, nullable)| Field::new(*name, data_type.clone(), *nullable))
            .collect::<Vec<_>>(),
    ))
}

fn part_schema(part: &str) -> SchemaRef {
    use DataType::{Binary, Boolean, Int64, UInt8, UInt32, Utf8};
    match part {
        "meta" => schema(&[("version", UInt32, false), ("rules", Utf8, false)]),
        "profiles" => schema(&[
            ("founder", UInt32, false),
            ("born", Int64, false),
            ("parent", UInt32, false),
        ]),
        "values" => schema(&[
            ("key", Binary, false),
            ("flags", UInt8, false),
            ("profile", UInt32, true),
            ("first_seen", Int64, false),
            ("last_seen", Int64, false),
            ("linked_rank", UInt32, true),
        ]),
        "cooccur" => schema(&[("value", UInt32, false), ("other", UInt32, false)]),
        RECORD_KEYS => schema(&[("record_key", Utf8, false)]),
        "records" => schema(&[("profile", UInt32, true), ("rank", UInt32, true)]),
        "record_ids" => schema(&[
            ("record", UInt32, false),
            ("value", UInt32, false),
            ("refused", Boolean, false),
        ]),
        "merges" => schema(&[
            ("from", UInt32, false),
            ("into", UInt32, false),
            ("at", Int64, false),
            ("via", UInt32, false),
        ]),
        "unknown" => schema(&[("id_type", Utf8, false), ("id_value", Utf8, false)]),
        _ => schema(&[
            ("record", UInt32, false),
            ("value", UInt32, true),
            ("unknown", UInt32, true),
            ("reason", Utf8, false),
            ("seen_at", Int64, false),
            ("detail", Utf8, true),
        ]),
    }
}

fn writer(part: &'static str) -> Result<TableWriter, GraphError> {
    TableWriter::new(part, part_schema(part), STATE_ROWS)
}

fn some(x: u32) -> Option<u32> {
    (x != NONE).then_some(x)
}

/// Inverts an order list into ranks by id.
fn ranks(order: &[u32], len: usize) -> Vec<u32> {
    let mut rank = vec![NONE; len];
    for (i, &id) in order.iter().enumerate() {
        rank[id as usize] = i as u32;
    }
    rank
}

impl IdentityGraph {
    /// Everything needed to continue incrementally, as named tables (see [`STATE_PARTS`]),
    /// each produced a batch at a time when iterated: the large parts hold a row per value,
    /// record and identifier, gigabytes at scale, and are meant to be written as they are
    /// built rather than held whole. Each part yields at least one batch. Commit all parts
    /// together (one atomic step): they reference each other by position. The largest come
    /// first, so that writers working through them in turn (see `manager::write_state`)
    /// finish close together.
    pub fn state_parts(&self) -> Vec<StatePart<'_>> {
        vec![
            record_keys_part(&self.records),
            streamed("record_ids", self.record_ids_part()),
            streamed("values", self.values_part()),
            streamed("records", self.records_part()),
            built("cooccur", || {
                let mut out = writer("cooccur")?;
                for (v, &(start, len)) in self.v_co.iter().enumerate() {
                    // Each value's list is a block of the pool, at random.
                    if let Some(&(ahead, _)) = self.v_co.get(v + AHEAD_FAST) {
                        prefetch(&self.co_pool, ahead as usize);
                    }
                    for &other in &self.co_pool[start as usize..(start + len) as usize] {
                        out.u32(0, Some(v as u32));
                        out.u32(1, Some(other));
                        out.end_row()?;
                    }
                }
                out.finish()
            }),
            built("profiles", || {
                let mut out = writer("profiles")?;
                for slot in 0..self.p_parent.len() {
                    // Parents are read at random (most are roots, one step up).
                    if let Some(&parent) = self.p_parent.get(slot + AHEAD_FAST) {
                        prefetch(&self.p_parent, parent as usize);
                    }
                    out.u32(0, Some(self.p_founder[slot]));
                    out.i64(1, self.p_born[slot]);
                    out.u32(2, Some(self.root(slot as u32)));
                    out.end_row()?;
                }
                out.finish()
            }),
            built("merges", || {
                let mut out = writer("merges")?;
                for merge in &self.merges {
                    out.u32(0, Some(merge.from));
                    out.u32(1, Some(merge.into));
                    out.i64(2, merge.at);
                    out.u32(3, Some(merge.via));
                    out.end_row()?;
                }
                out.finish()
            }),
            built("refused", || {
                let mut out = writer("refused")?;
                for refusal in &self.refusals {
                    let (value, unknown) = match refusal.what {
                        Refused::Value(v) => (Some(v), None),
                        Refused::Unknown(u) => (None, Some(u)),
                    };
                    out.u32(0, Some(refusal.record));
                    out.u32(1, value);
                    out.u32(2, unknown);
                    out.str(3, refusal.reason.as_str());
                    out.i64(4, refusal.seen_at);
                    out.opt_str(5, refusal.detail.as_deref());
                    out.end_row()?;
                }
                out.finish()
            }),
            built("unknown", || {
                let mut out = writer("unknown")?;
                for u in 0..self.unknown.len() {
                    let (id_type, id_value) = self.unknown_parts(u as u32);
                    out.str(0, &id_type);
                    out.str(1, &id_value);
                    out.end_row()?;
                }
                out.finish()
            }),
            built("meta", || {
                let mut out = writer("meta")?;
                out.u32(0, Some(STATE_VERSION));
                out.str(1, &self.rules.describe());
                out.end_row()?;
                out.finish()
            }),
        ]
    }

    /// [`IdentityGraph::state_parts`], each part built whole: for tests and small graphs.
    pub fn to_state(&self) -> Result<Vec<(String, Vec<RecordBatch>)>, GraphError> {
        self.state_parts()
            .into_iter()
            .map(|part| {
                Ok((
                    part.name.to_string(),
                    part.batches.collect::<Result<_, _>>()?,
                ))
            })
            .collect()
    }

    /// Rebuilds a graph from [`IdentityGraph::to_state`]'s parts. The rules must be the ones
    /// the state was built with ([`GraphError::RulesChanged`] otherwise: a rule change needs a
    /// full rebuild, since past links were decided under the old rules).
    pub fn from_state(
        rules: Rules,
        parts: Vec<(String, Vec<RecordBatch>)>,
    ) -> Result<Self, GraphError> {
        for (name, _) in &parts {
            if !STATE_PARTS.contains(&name.as_str()) {
                return Err(GraphError::State {
                    part: name.clone(),
                    message: "not a part of identity graph state".into(),
                });
            }
        }
        let part = |name: &'static str| readers(&parts, name);
        let rows = |name: &str| -> usize {
            let batches = parts.iter().filter(|(n, _)| n == name).flat_map(|(_, b)| b);
            batches.map(RecordBatch::num_rows).sum()
        };
        let mut graph = IdentityGraph::new(rules);
        // Size the hash tables once: growing them re-places every key, several times over.
        graph.values.reserve(rows("values"));
        graph.records.reserve(rows(RECORD_KEYS));

        let mut meta_rows = 0;
        for reader in part("meta")? {
            let version = reader.u32("version", false)?;
            let stored = reader.str("rules", false)?;
            for i in 0..reader.batch.num_rows() {
                meta_rows += 1;
                if version.value(i) != STATE_VERSION {
                    return Err(reader.error(format!(
                        "state version {} is not {STATE_VERSION}; rebuild the graph from its source",
                        version.value(i)
                    )));
                }
                let given = graph.rules.describe();
                // Compared as JSON values, not text, so that key order cannot matter.
                let parsed = serde_json::from_str::<serde_json::Value>(stored.value(i))
                    .map_err(|e| reader.error(format!("rules are not JSON: {e}")))?;
                if serde_json::from_str::<serde_json::Value>(&given).ok() != Some(parsed) {
                    return Err(GraphError::RulesChanged {
                        stored: stored.value(i).to_string(),
                        given,
                    });
                }
            }
        }
        if meta_rows != 1 {
            return Err(GraphError::State {
                part: "meta".into(),
                message: format!("{meta_rows} rows, expected 1"),
            });
        }

        let profiles = part("profiles")?;
        let mut founders = Vec::new();
        for reader in &profiles {
            let (founder, born, parent) = (
                reader.u32("founder", false)?,
                reader.i64("born")?,
                reader.u32("parent", false)?,
            );
            for i in 0..reader.batch.num_rows() {
                founders.push(founder.value(i));
                graph.p_born.push(born.value(i));
                graph.p_parent.push(parent.value(i));
            }
        }
        let n_profiles = graph.p_parent.len();
        for slot in 0..n_profiles {
            let parent = graph.p_parent[slot] as usize;
            if parent >= n_profiles || graph.p_parent[parent] as usize != parent {
                return Err(GraphError::State {
                    part: "profiles".into(),
                    message: format!("slot {slot}: parent is not a root"),
                });
            }
        }
        let check_profile = |reader: &ColumnReader, p: u32| {
            if (p as usize) < n_profiles {
                Ok(())
            } else {
                Err(reader.error(format!("profile slot {p} out of range")))
            }
        };

        let mut linked_rank: Vec<(u32, u32)> = Vec::new();
        for reader in part("values")? {
            let key = reader.binary("key")?;
            let flags = reader.u8("flags")?;
            let profile = reader.u32("profile", true)?;
            let (first, last) = (reader.i64("first_seen")?, reader.i64("last_seen")?);
            let rank = reader.u32("linked_rank", true)?;
            let types = graph.rules.priority.len();
            for i in 0..reader.batch.num_rows() {
                if i % PREFETCH == 0 {
                    let end = (i + PREFETCH).min(reader.batch.num_rows());
                    let keys = (i..end).map(|j| key.value(j).split_at(key.value(j).len().min(1)));
                    std::hint::black_box(graph.values.touch_slots(keys));
                }
                let (t, text) = match key.value(i).split_first() {
                    Some((&t, text)) if (t as usize) < types => (t, text),
                    _ => {
                        return Err(reader.error(format!(
                            "value key {:?} does not start with a type index",
                            key.value(i)
                        )));
                    }
                };
                // Keys are stored as bytes; the interner holds text only.
                let Ok(text) = std::str::from_utf8(text) else {
                    return Err(reader.error(format!(
                        "value {:?} is not UTF-8",
                        String::from_utf8_lossy(text)
                    )));
                };
                let id = graph.values.len() as u32;
                match graph.values.intern(type_prefix(t), text) {
                    Some((got, true)) if got == id => {}
                    _ => {
                        return Err(reader.error(format!("value {text:?} is duplicated")));
                    }
                }
                if flags.value(i) > (u8::MAX >> FLAGS_SHIFT) {
                    return Err(reader.error(format!("unknown flags {}", flags.value(i))));
                }
                let p = if profile.is_null(i) {
                    NONE
                } else {
                    profile.value(i)
                };
                if p != NONE {
                    check_profile(&reader, p)?;
                }
                if !rank.is_null(i) {
                    if p == NONE {
                        return Err(
                            reader.error(format!("value {text:?} is linked without a profile"))
                        );
                    }
                    linked_rank.push((rank.value(i), id));
                }
                graph.v_meta.push(t | (flags.value(i) << FLAGS_SHIFT));
                graph.v_profile.push(p);
                graph.v_seen.push((first.value(i), last.value(i)));
                graph.v_co.push((0, 0));
            }
        }
        let n_values = graph.v_meta.len();
        graph.linked = from_ranks("values", linked_rank)?;
        let check_value = |reader: &ColumnReader, v: u32| {
            if (v as usize) < n_values {
                Ok(())
            } else {
                Err(reader.error(format!("value id {v} out of range")))
            }
        };

        for &founder in &founders {
            if founder as usize >= n_values {
                return Err(GraphError::State {
                    part: "profiles".into(),
                    message: format!("founder {founder} out of range"),
                });
            }
            let t = graph.type_of(founder);
            graph.p_hash.push(stable_hash(
                graph.rules.type_name(t),
                &graph.value_text(founder),
            ));
        }
        graph.p_founder = founders;
        let n = graph.rules.counted_types();
        graph.p_counts = vec![0; n_profiles * n];
        for v in 0..n_values {
            let p = graph.v_profile[v];
            if p == NONE {
                continue;
            }
            let root = graph.p_parent[p as usize] as usize;
            if let Some(slot) = graph.rules.slot_of(graph.type_of(v as u32)) {
                graph.p_counts[root * n + slot] += 1;
            }
        }

        // Each value's list is contiguous in the part (as written), and reloads compacted
        // into blocks of the size `co_occur` expects.
        for reader in part("cooccur")? {
            let (value, other) = (reader.u32("value", false)?, reader.u32("other", false)?);
            for i in 0..reader.batch.num_rows() {
                let (v, w) = (value.value(i), other.value(i));
                check_value(&reader, v)?;
                check_value(&reader, w)?;
                let (start, len) = graph.v_co[v as usize];
                if len == 0 {
                    if graph.co_pool.len() + 2 >= u32::MAX as usize {
                        return Err(reader.error("too many rows"));
                    }
                    let start = graph.co_pool.len() as u32;
                    graph.co_pool.resize(start as usize + 2, NONE);
                    graph.v_co[v as usize] = (start, 0);
                } else if (start + block_size(len)) as usize != graph.co_pool.len() {
                    return Err(reader.error(format!("entries of value {v} are not contiguous")));
                } else if len == block_size(len) {
                    graph
                        .co_pool
                        .resize((start + block_size(len + 1)) as usize, NONE);
                }
                let (start, len) = graph.v_co[v as usize];
                graph.co_pool[(start + len) as usize] = w;
                graph.v_co[v as usize] = (start, len + 1);
            }
        }

        let mut record_rank: Vec<(u32, u32)> = Vec::new();
        let mut record_profiles: Vec<u32> = Vec::new();
        for reader in part(RECORD_KEYS)? {
            let key = reader.str("record_key", false)?;
            for i in 0..reader.batch.num_rows() {
                if i % PREFETCH == 0 {
                    let end = (i + PREFETCH).min(reader.batch.num_rows());
                    let keys = (i..end).map(|j| (&[][..], key.value(j).as_bytes()));
                    std::hint::black_box(graph.records.touch_slots(keys));
                }
                let id = graph.records.len() as u32;
                match graph.records.intern("", key.value(i)) {
                    Some((got, true)) if got == id => {}
                    _ => {
                        return Err(
                            reader.error(format!("record {:?} is duplicated", key.value(i)))
                        );
                    }
                }
                graph.r.push(NONE);
            }
        }
        for reader in part("records")? {
            let (profile, rank) = (reader.u32("profile", true)?, reader.u32("rank", true)?);
            for i in 0..reader.batch.num_rows() {
                let id = record_profiles.len() as u32;
                let p = if profile.is_null(i) {
                    NONE
                } else {
                    profile.value(i)
                };
                if p != NONE {
                    check_profile(&reader, p)?;
                }
                if !rank.is_null(i) {
                    record_rank.push((rank.value(i), id));
                }
                record_profiles.push(p);
            }
        }
        if record_profiles.len() != graph.r.len() {
            return Err(GraphError::State {
                part: "records".into(),
                message: format!(
                    "{} rows for {} record keys",
                    record_profiles.len(),
                    graph.r.len()
                ),
            });
        }
        let n_records = graph.r.len();
        graph.record_order = from_ranks("records", record_rank)?;
        let check_record = |reader: &ColumnReader, r: u32| {
            if (r as usize) < n_records {
                Ok(())
            } else {
                Err(reader.error(format!("record id {r} out of range")))
            }
        };

        // Each record's identifiers are contiguous in the part (as written).
        let mut seen_ids = vec![false; n_records];
        let mut current = NONE;
        let mut list: Vec<u32> = Vec::new();
        for reader in part("record_ids")? {
            let (record, value, refused) = (
                reader.u32("record", false)?,
                reader.u32("value", false)?,
                reader.bool("refused")?,
            );
            for i in 0..reader.batch.num_rows() {
                let (r, v) = (record.value(i), value.value(i));
                check_record(&reader, r)?;
                check_value(&reader, v)?;
                if r != current {
                    if seen_ids[r as usize] {
                        return Err(
                            reader.error(format!("identifiers of record {r} are not contiguous"))
                        );
                    }
                    seen_ids[r as usize] = true;
                    if current != NONE {
                        set_record(&mut graph, current, &list, &record_profiles)?;
                    }
                    current = r;
                    list.clear();
                }
                if graph.r_ids.len() + list.len() >= u32::MAX as usize {
                    return Err(reader.error("too many rows"));
                }
                list.push(if refused.value(i) { v | REFUSED_BIT } else { v });
            }
        }
        // A record's list may run across batches: the last one ends with the part.
        if current != NONE {
            set_record(&mut graph, current, &list, &record_profiles)?;
        }
        for (r, &has_ids) in seen_ids.iter().enumerate() {
            if !has_ids && record_profiles[r] != NONE {
                return Err(GraphError::State {
                    part: "records".into(),
                    message: format!("record {r} has a profile but no identifiers"),
                });
            }
        }

        for reader in part("merges")? {
            let (from, into, at, via) = (
                reader.u32("from", false)?,
                reader.u32("into", false)?,
                reader.i64("at")?,
                reader.u32("via", false)?,
            );
            for i in 0..reader.batch.num_rows() {
                check_profile(&reader, from.value(i))?;
                check_profile(&reader, into.value(i))?;
                check_value(&reader, via.value(i))?;
                graph.merges.push(Merge {
                    from: from.value(i),
                    into: into.value(i),
                    at: at.value(i),
                    via: via.value(i),
                });
            }
        }

        for reader in part("unknown")? {
            let (id_type, id_value) = (
                reader.str("id_type", false)?,
                reader.str("id_value", false)?,
            );
            for i in 0..reader.batch.num_rows() {
                let id = graph.unknown.len() as u32;
                let body = unknown_body(id_value.value(i));
                match graph.unknown.intern(id_type.value(i), &body) {
                    Some((got, true)) if got == id => {}
                    _ => {
                        return Err(reader
                            .error(format!("identifier {:?} is duplicated", id_value.value(i))));
                    }
                }
            }
        }
        let n_unknown = graph.unknown.len();

        for reader in part("refused")? {
            let record = reader.u32("record", false)?;
            let (value, unknown) = (reader.u32("value", true)?, reader.u32("unknown", true)?);
            let (reason, seen_at, detail) = (
                reader.str("reason", false)?,
                reader.i64("seen_at")?,
                reader.str("detail", true)?,
            );
            for i in 0..reader.batch.num_rows() {
                let r = record.value(i);
                check_record(&reader, r)?;
                let what = match (value.is_null(i), unknown.is_null(i)) {
                    (false, true) => {
                        check_value(&reader, value.value(i))?;
                        Refused::Value(value.value(i))
                    }
                    (true, false) if (unknown.value(i) as usize) < n_unknown => {
                        graph
                            .unknown_seen
                            .insert((u64::from(r) << 32) | u64::from(unknown.value(i)));
                        Refused::Unknown(unknown.value(i))
                    }
                    _ => {
                        return Err(reader.error(format!(
                            "row {i}: needs exactly one valid value or unknown id"
                        )));
                    }
                };
                let reason = Reason::parse(reason.value(i))
                    .ok_or_else(|| reader.error(format!("unknown reason {:?}", reason.value(i))))?;
                let detail = (!detail.is_null(i)).then(|| detail.value(i).into());
                graph.refusals.push(Refusal {
                    record: r,
                    what,
                    reason,
                    seen_at: seen_at.value(i),
                    detail,
                });
            }
        }
        Ok(graph)
    }
}

// The three large parts are built a column at a time from the graph's vectors and arenas,
// not row by row: they hold a row per value, record and identifier, tens of millions at scale.
impl IdentityGraph {
    /// Row `v`: value `v`'s key (type index byte, then the text), flags, profile slot, first
    /// and last seen, and rank in `linked`.
    fn values_part(&self) -> impl Iterator<Item = Result<RecordBatch, GraphError>> + Send + '_ {
        let mut linked_rank = None;
        let mut next = Some(0);
        std::iter::from_fn(move || {
            let first = next?;
            let linked_rank: &Vec<u32> =
                linked_rank.get_or_insert_with(|| ranks(&self.linked, self.v_meta.len()));
            let end = self.values.run_end(first, STATE_ROWS, MAX_TEXT_BYTES);
            next = (end < self.values.len()).then_some(end);
            let rows = first..end;
            let columns = || -> Result<Vec<ArrayRef>, GraphError> {
                let (offsets, bytes) =
                    self.values.key_run(first, end).map_err(GraphError::spill)?;
                Ok(vec![
                    byte_column::<BinaryType>(offsets, bytes)?,
                    Arc::new(UInt8Array::from_iter_values(
                        self.v_meta[rows.clone()].iter().map(|m| m >> FLAGS_SHIFT),
                    )),
                    Arc::new(UInt32Array::from_iter(
                        self.v_profile[rows.clone()].iter().map(|&p| some(p)),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        self.v_seen[rows.clone()].iter().map(|s| s.0),
                    )),
                    Arc::new(Int64Array::from_iter_values(
                        self.v_seen[rows.clone()].iter().map(|s| s.1),
                    )),
                    Arc::new(UInt32Array::from_iter(
                        linked_rank[rows.clone()].iter().map(|&r| some(r)),
                    )),
                ])
            };
            Some(columns().and_then(|columns| batch_of("values", part_schema("values"), columns)))
        })
    }

    /// Row `r`: record `r`'s profile slot and rank in `record_order` (its key is row `r` of
    /// [`RECORD_KEYS`]).
    fn records_part(&self) -> impl Iterator<Item = Result<RecordBatch, GraphError>> + Send + '_ {
        let mut record_rank = None;
        let mut next = Some(0);
        std::iter::from_fn(move || {
            let first = next?;
            let record_rank: &Vec<u32> =
                record_rank.get_or_insert_with(|| ranks(&self.record_order, self.r.len()));
            let end = (first + STATE_ROWS).min(self.r.len());
            next = (end < self.r.len()).then_some(end);
            let columns: Vec<ArrayRef> = vec![
                Arc::new(UInt32Array::from_iter((first..end).map(|r| {
                    self.prefetch_record_profile(r + AHEAD_FAST);
                    some(self.record_profile(r as u32))
                }))),
                Arc::new(UInt32Array::from_iter(
                    record_rank[first..end].iter().map(|&r| some(r)),
                )),
            ];
            Some(batch_of("records", part_schema("records"), columns))
        })
    }

    /// A row per identifier on a record, each record's rows together.
    fn record_ids_part(&self) -> impl Iterator<Item = Result<RecordBatch, GraphError>> + Send + '_ {
        let mut next = Some(0);
        std::iter::from_fn(move || {
            let mut r = next?;
            let mut records: Vec<u32> = Vec::with_capacity(STATE_ROWS);
            let mut values: Vec<u32> = Vec::with_capacity(STATE_ROWS);
            let mut refused = BooleanBufferBuilder::new(STATE_ROWS);
            while r < self.r.len() && records.len() < STATE_ROWS {
                // Lists of records with several identifiers are read at random, through
                // their entries: each in two steps, the entry first.
                self.prefetch_multi_entry(r + 2 * AHEAD_FAST);
                self.prefetch_record_ids(r + AHEAD_FAST);
                for id in self.record_ids(r as u32).iter() {
                    records.push(r as u32);
                    values.push(id & !REFUSED_BIT);
                    refused.append(id & REFUSED_BIT != 0);
                }
                r += 1;
            }
            next = (r < self.r.len()).then_some(r);
            let columns: Vec<ArrayRef> = vec![
                Arc::new(UInt32Array::from(records)),
                Arc::new(UInt32Array::from(values)),
                Arc::new(BooleanArray::new(refused.finish(), None)),
            ];
            Some(batch_of("record_ids", part_schema("record_ids"), columns))
        })
    }
}

/// One part of the state: its name and schema, and its batches, built as they are taken.
pub struct StatePart<'g> {
    pub name: &'static str,
    pub schema: SchemaRef,
    pub batches: Box<dyn Iterator<Item = Result<RecordBatch, GraphError>> + Send + 'g>,
}

/// A small part, built whole when its first batch is taken.
fn built<'g>(
    name: &'static str,
    build: impl FnOnce() -> Result<Vec<RecordBatch>, GraphError> + Send + 'g,
) -> StatePart<'g> {
    let batches = std::iter::once_with(build).flat_map(|built| match built {
        Ok(batches) => batches.into_iter().map(Ok).collect::<Vec<_>>(),
        Err(e) => vec![Err(e)],
    });
    StatePart {
        name,
        schema: part_schema(name),
        batches: Box::new(batches),
    }
}

fn streamed<'g>(
    name: &'static str,
    batches: impl Iterator<Item = Result<RecordBatch, GraphError>> + Send + 'g,
) -> StatePart<'g> {
    StatePart {
        name,
        schema: part_schema(name),
        batches: Box::new(batches),
    }
}

/// Row `r`: record `r`'s key. Only the records interner is read, which a batch no longer
/// changes once its rows are loaded: a full build writes this part while it stitches (see
/// `Applying::finish_beside`), on the core the stitch leaves idle.
pub(super) fn record_keys_part(records: &Interner) -> StatePart<'_> {
    let mut next = Some(0);
    let batches =
        std::iter::from_fn(move || {
            let first = next?;
            let end = records.run_end(first, STATE_ROWS, MAX_TEXT_BYTES);
            next = (end < records.len()).then_some(end);
            let keys = records.key_run_text(first, end).map_err(GraphError::spill);
            Some(keys.and_then(|keys| {
                batch_of(RECORD_KEYS, part_schema(RECORD_KEYS), vec![Arc::new(keys)])
            }))
        });
    streamed(RECORD_KEYS, batches)
}

fn readers<'p>(parts: &'p Parts, name: &'static str) -> Result<Vec<ColumnReader<'p>>, GraphError> {
    let (_, batches) = parts
        .iter()
        .find(|(n, _)| n == name)
        .ok_or_else(|| GraphError::State {
            part: name.to_string(),
            message: "missing".into(),
        })?;
    Ok(batches
        .iter()
        .map(|batch| ColumnReader { part: name, batch })
        .collect())
}

/// Sets a reloaded record's identifiers, checking that a record with one identifier belongs
/// to the profile the graph would have given it (that of its identifier, or none if refused).
fn set_record(
    graph: &mut IdentityGraph,
    record: u32,
    ids: &[u32],
    profiles: &[u32],
) -> Result<(), GraphError> {
    let profile = profiles[record as usize];
    if let [id] = *ids {
        let expected = if id & REFUSED_BIT != 0 {
            NONE
        } else {
            graph.v_profile[id as usize]
        };
        // The stored profile may be an older slot of the same person (slots merge); what
        // must hold is that both lead to the same current profile.
        let current = |p: u32| {
            if p == NONE {
                NONE
            } else {
                graph.p_parent[p as usize]
            }
        };
        if current(profile) != current(expected) {
            return Err(GraphError::State {
                part: "record_ids".into(),
                message: format!("record {record}: profile does not match its identifier"),
            });
        }
    }
    graph.r[record as usize] = graph.new_entry(profile, ids);
    Ok(())
}

/// Rebuilds an order list from `(rank, id)` pairs, checking the ranks are `0..n` exactly once.
fn from_ranks(part: &str, mut pairs: Vec<(u32, u32)>) -> Result<Vec<u32>, GraphError> {
    pairs.sort_unstable();
    pairs
        .iter()
        .enumerate()
        .map(|(i, &(rank, id))| {
            if rank as usize == i {
                Ok(id)
            } else {
                Err(GraphError::State {
                    part: part.to_string(),
                    message: format!("ranks are not 0..{} exactly once", pairs.len()),
                })
            }
        })
        .collect()
}
