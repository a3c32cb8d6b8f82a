//! The identity graph's four output tables (identities, records, merges, refused) as Arrow.
//!
//! Rows come out in the order the graph made them: values in the order they joined a profile,
//! merges and refusals as they happened, which depend only on the data, so the same rows give
//! byte-identical tables; records batch by batch in the order their keys were first read, the
//! order of their text in the graph's scratch file (see `Interner::spilling`), so that the
//! table is built in one pass over it.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use super::batch::{OUTPUT_ROWS, TableWriter};
use super::graph::{GraphError, IdentityGraph, NONE, Refused};
use crate::prefetch::{AHEAD, prefetch};

fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// `profile_id` in the identities and records tables: tens of millions of rows share a
/// million or so ids, so each row holds a 4-byte key into one dictionary of their text (see
/// `tables.rs`). SQL sees text: DataFusion compares, joins and groups dictionaries by value,
/// and clients get `text` over the wire.
pub fn profile_id_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::UInt32), Box::new(DataType::Utf8))
}

pub fn identities_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("profile_id", profile_id_type(), false),
        Field::new("id_type", DataType::Utf8, false),
        // Views into the graph's own copy of the text (see `Interner::key_views`).
        Field::new("id_value", DataType::Utf8View, false),
        Field::new("first_seen", timestamp(), false),
        Field::new("last_seen", timestamp(), false),
    ]))
}

pub fn records_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("record_key", DataType::Utf8View, false),
        Field::new("profile_id", profile_id_type(), false),
    ]))
}

pub fn merges_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("from_profile", DataType::Utf8, false),
        Field::new("into_profile", DataType::Utf8, false),
        Field::new("merged_at", timestamp(), false),
        Field::new("via_type", DataType::Utf8, false),
        Field::new("via_value", DataType::Utf8, false),
    ]))
}

pub fn refused_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("record_key", DataType::Utf8, false),
        Field::new("id_type", DataType::Utf8, false),
        Field::new("id_value", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("seen_at", timestamp(), false),
        Field::new("detail", DataType::Utf8, true),
    ]))
}

/// Formats profile ids (`p_` and 16 hex digits) into one reused buffer: millions of rows, no
/// allocation and no formatting machinery for each.
pub(super) struct IdFormatter([u8; 18]);

impl IdFormatter {
    pub(super) fn new() -> Self {
        IdFormatter(*b"p_0000000000000000")
    }

    pub(super) fn format(&mut self, hash: u64) -> &str {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, digit) in self.0[2..].iter_mut().enumerate() {
            *digit = HEX[((hash >> (60 - 4 * i)) & 0xF) as usize];
        }
        // Safety: the buffer holds ASCII only (its initial text and hex digits). Checking it
        // cost a call per row of both tables, tens of millions at scale.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }
}

impl IdentityGraph {
    /// `profile_id, id_type, id_value, first_seen, last_seen`: every linked value and the
    /// profile it belongs to now, in the order values joined profiles. `first_seen` and
    /// `last_seen` span every row that carried the value, refused or not.
    pub fn identities(&self) -> Result<Vec<RecordBatch>, GraphError> {
        let mut out = TableWriter::new("identities", identities_schema(), OUTPUT_ROWS)?;
        let mut ids = IdFormatter::new();
        for &value in &self.linked {
            let v = value as usize;
            out.str(
                0,
                ids.format(self.p_hash[self.root(self.v_profile[v]) as usize]),
            );
            out.str(1, self.rules.type_name(self.type_of(value)));
            out.str(2, &self.value_text(value));
            out.i64(3, self.v_seen[v].0);
            out.i64(4, self.v_seen[v].1);
            out.end_row()?;
        }
        out.finish()
    }

    /// `record_key, profile_id`: each record's current profile. Records none of whose
    /// identifiers linked (all refused) have no profile and are left out.
    pub fn records(&self) -> Result<Vec<RecordBatch>, GraphError> {
        let mut out = TableWriter::new("records", records_schema(), OUTPUT_ROWS)?;
        let mut ids = IdFormatter::new();
        for &record in &self.record_order {
            let profile = self.record_profile(record);
            if profile == NONE {
                continue;
            }
            out.str(0, &self.record_text(record));
            out.str(1, ids.format(self.p_hash[self.root(profile) as usize]));
            out.end_row()?;
        }
        out.finish()
    }

    /// `from_profile, into_profile, merged_at, via_type, via_value`, in merge order.
    pub fn merges(&self) -> Result<Vec<RecordBatch>, GraphError> {
        self.merges_from(0)
    }

    /// The merges table from its row `start` on.
    pub(super) fn merges_from(&self, start: usize) -> Result<Vec<RecordBatch>, GraphError> {
        let mut out = TableWriter::new("merges", merges_schema(), OUTPUT_ROWS)?;
        let mut ids = IdFormatter::new();
        let merges = self.merges.get(start..).unwrap_or_default();
        for (i, merge) in merges.iter().enumerate() {
            // Profiles and values are read at random.
            if let Some(ahead) = merges.get(i + AHEAD) {
                prefetch(&self.p_hash, ahead.from as usize);
                prefetch(&self.p_hash, ahead.into as usize);
                prefetch(&self.v_meta, ahead.via as usize);
            }
            out.str(0, ids.format(self.p_hash[merge.from as usize]));
            out.str(1, ids.format(self.p_hash[merge.into as usize]));
            out.i64(2, merge.at);
            out.str(3, self.rules.type_name(self.type_of(merge.via)));
            out.str(4, &self.value_text(merge.via));
            out.end_row()?;
        }
        out.finish()
    }

    /// `record_key, id_type, id_value, reason, seen_at, detail`: identifiers refused on a
    /// record, in the order refused. `seen_at` is the record's.
    pub fn refused(&self) -> Result<Vec<RecordBatch>, GraphError> {
        self.refused_from(0)
    }

    /// The refused table from its row `start` on.
    pub(super) fn refused_from(&self, start: usize) -> Result<Vec<RecordBatch>, GraphError> {
        let mut out = TableWriter::new("refused", refused_schema(), OUTPUT_ROWS)?;
        let refusals = self.refusals.get(start..).unwrap_or_default();
        let records: Vec<u32> = refusals.iter().map(|refusal| refusal.record).collect();
        let record_keys = self
            .records
            .key_texts(&records)
            .map_err(GraphError::spill)?;
        for (row, refusal) in refusals.iter().enumerate() {
            out.str(0, record_keys.value(row));
            match refusal.what {
                Refused::Value(value) => {
                    out.str(1, self.rules.type_name(self.type_of(value)));
                    out.str(2, &self.value_text(value));
                }
                Refused::Unknown(id) => {
                    let (id_type, id_value) = self.unknown_parts(id);
                    out.str(1, &id_type);
                    out.str(2, &id_value);
                }
            }
            out.str(3, refusal.reason.as_str());
            out.i64(4, refusal.seen_at);
            out.opt_str(5, refusal.detail.as_deref());
            out.end_row()?;
        }
        out.finish()
    }
}
