//! Hash indexes over a published table's key columns, so that a lookup by key (a profile id,
//! an e-mail) reads the matching rows instead of scanning the whole result.
//!
//! An index is built once per publication, before the contents are swapped in, and is never
//! changed afterwards: readers share it without locks, and a refresh publishes contents and
//! index together (see [`super::published`]). It maps a 64-bit hash of each row's key to the
//! row, with a chain through rows of equal hash (see `Heads` for the rare other key that
//! shares one); a lookup compares the candidates' values, so a hash collision costs a
//! comparison, never a wrong row. It stores no copy of the keys:
//! an 8-byte hash table slot per distinct key (the table has room for every row and is at
//! most 3/4 full) and 4 bytes of chain per row, about 15 bytes a row in all.
//!
//! Keys are strings (`Utf8`, `LargeUtf8`, `Utf8View`) or integers, plain or dictionary-encoded.
//! They compare by value within their kind, as SQL's `=` does once types are coerced; a string never equals an
//! integer here, and callers leave such comparisons to DataFusion (see [`Key::of_scalar`]).

use std::hash::Hash;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::{cast, interleave_record_batch};
use datafusion::arrow::datatypes::{
    DataType, Int8Type, Int16Type, Int32Type, Int64Type, SchemaRef, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::scalar::ScalarValue;

/// A row of a table's batches: (batch, row within the batch).
pub type RowId = (usize, usize);

/// One key value, borrowed from an array or a literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key<'a> {
    Str(&'a str),
    Int(i64),
    /// Only for unsigned values above `i64::MAX`, so that `5_u64` and `5_i64` are one key.
    Big(u64),
}

impl<'a> Key<'a> {
    /// The key of a literal, or `None` for a NULL (which equals nothing) or a type that is not
    /// a key type.
    pub fn of_scalar(value: &'a ScalarValue) -> Option<Key<'a>> {
        match value {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => Some(Key::Str(s)),
            ScalarValue::Int8(Some(v)) => Some(Key::Int(i64::from(*v))),
            ScalarValue::Int16(Some(v)) => Some(Key::Int(i64::from(*v))),
            ScalarValue::Int32(Some(v)) => Some(Key::Int(i64::from(*v))),
            ScalarValue::Int64(Some(v)) => Some(Key::Int(*v)),
            ScalarValue::UInt8(Some(v)) => Some(Key::Int(i64::from(*v))),
            ScalarValue::UInt16(Some(v)) => Some(Key::Int(i64::from(*v))),
            ScalarValue::UInt32(Some(v)) => Some(Key::Int(i64::from(*v))),
            ScalarValue::UInt64(Some(v)) => Some(unsigned(*v)),
            ScalarValue::Dictionary(_, value) => Key::of_scalar(value),
            _ => None,
        }
    }

    fn hash64(&self) -> u64 {
        // Fixed seeds: an index and its lookups always agree on a key's hash. aHash rather
        // than SipHash: hashing was a sixth of an identity refresh's index builds (4.1M rows,
        // twice), and an index lives in memory only, so no stored hash depends on it.
        const KEY_HASHER: ahash::RandomState = ahash::RandomState::with_seeds(
            0x243f_6a88_85a3_08d3,
            0x1319_8a2e_0370_7344,
            0xa409_3822_299f_31d0,
            0x082e_fa98_ec4e_6c89,
        );
        KEY_HASHER.hash_one(self)
    }
}

fn unsigned(v: u64) -> Key<'static> {
    i64::try_from(v).map_or(Key::Big(v), Key::Int)
}

/// The two kinds of keys; a literal can be looked up in a column only within its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    String,
    Integer,
}

impl KeyKind {
    pub fn of(data_type: &DataType) -> Option<KeyKind> {
        match data_type {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(KeyKind::String),
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64 => Some(KeyKind::Integer),
            // Keyed by the values the dictionary's keys stand for, as SQL compares them.
            DataType::Dictionary(_, value) => KeyKind::of(value),
            _ => None,
        }
    }
}

/// The key at `row` of `array`, `None` for a NULL. `array`'s type must be a key type.
pub fn key_at(array: &dyn Array, row: usize) -> Option<Key<'_>> {
    if array.is_null(row) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Utf8 => Key::Str(array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => Key::Str(array.as_string::<i64>().value(row)),
        DataType::Utf8View => Key::Str(array.as_string_view().value(row)),
        DataType::Int8 => Key::Int(i64::from(array.as_primitive::<Int8Type>().value(row))),
        DataType::Int16 => Key::Int(i64::from(array.as_primitive::<Int16Type>().value(row))),
        DataType::Int32 => Key::Int(i64::from(array.as_primitive::<Int32Type>().value(row))),
        DataType::Int64 => Key::Int(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => Key::Int(i64::from(array.as_primitive::<UInt8Type>().value(row))),
        DataType::UInt16 => Key::Int(i64::from(array.as_primitive::<UInt16Type>().value(row))),
        DataType::UInt32 => Key::Int(i64::from(array.as_primitive::<UInt32Type>().value(row))),
        DataType::UInt64 => unsigned(array.as_primitive::<UInt64Type>().value(row)),
        DataType::Dictionary(_, _) => {
            let dictionary = array.as_any_dictionary();
            let Key::Int(index) = key_at(dictionary.keys(), row)? else {
                return None;
            };
            return key_at(dictionary.values().as_ref(), usize::try_from(index).ok()?);
        }
        _ => return None,
    })
}

const END: u32 = u32::MAX;

/// How a publication's rows relate to the previous publication's, so that its indexes can be
/// carried over and extended instead of built again over every row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Rows numbered below this (across batches, in order) are the previous publication's
    /// rows, at the same numbers; rows from here on are new or moved.
    pub kept_rows: usize,
    /// Per column, the kept rows whose value in that column may differ from the previous
    /// publication's. A column not listed is unchanged in kept rows, or of a type no index
    /// holds (timestamps, floats).
    pub changed: Vec<(usize, Vec<u32>)>,
}

impl Changes {
    fn changed_in(&self, column: usize) -> &[u32] {
        self.changed
            .iter()
            .find(|(c, _)| *c == column)
            .map_or(&[][..], |(_, rows)| rows)
    }
}

/// Entries chained by key hash: `heads` maps a hash to its last entry, `next` links each
/// entry to the previous one of equal hash.
#[derive(Debug)]
struct Chains {
    heads: Heads,
    next: Vec<u32>,
    /// The row number of each entry; empty when entry `i` is row `i` (an index of all rows).
    rows: Vec<u32>,
}

/// Rows hashed together before any is inserted, so that their slots' cache misses overlap.
const STAGE: usize = 16;

impl Chains {
    /// Chains `rows` (all rows when `None`) of `column`, numbered from `starts`.
    fn build(
        batches: &[RecordBatch],
        column: usize,
        starts: &[usize],
        rows: Option<Vec<u32>>,
    ) -> Result<Chains> {
        let arrays = batches
            .iter()
            .map(|batch| {
                let array = batch.columns().get(column).ok_or_else(|| {
                    DataFusionError::Internal(format!("no column {column} to index"))
                })?;
                match KeyKind::of(array.data_type()) {
                    Some(_) => Ok(array.as_ref()),
                    None => Err(DataFusionError::Plan(format!(
                        "cannot index a column of type {}",
                        array.data_type()
                    ))),
                }
            })
            .collect::<Result<Vec<&dyn Array>>>()?;
        let entries = rows.as_ref().map_or_else(|| total(batches), Vec::len);
        let mut chains = Chains {
            heads: Heads::with_capacity(entries),
            next: vec![END; entries],
            rows: Vec::new(),
        };
        // `(entry, hash)` of the rows staged; NULLs equal nothing and are left out.
        let mut staged: Vec<(u32, u64)> = Vec::with_capacity(STAGE);
        let mut add = |chains: &mut Chains, entry: usize, array: &dyn Array, row: usize| {
            if let Some(key) = key_at(array, row) {
                let hash = key.hash64();
                chains.heads.prefetch(hash);
                staged.push((entry as u32, hash));
            }
            if staged.len() == STAGE {
                chains.insert_staged(&mut staged);
            }
        };
        match rows {
            None => {
                let mut entry = 0;
                for array in &arrays {
                    for row in 0..array.len() {
                        add(&mut chains, entry, *array, row);
                        entry += 1;
                    }
                }
            }
            Some(ref rows) => {
                for (entry, &number) in rows.iter().enumerate() {
                    let (batch, row) = row_id(starts, number as usize);
                    if let Some(array) = arrays.get(batch).filter(|a| row < a.len()) {
                        add(&mut chains, entry, *array, row);
                    }
                }
            }
        }
        chains.insert_staged(&mut staged);
        chains.rows = rows.unwrap_or_default();
        Ok(chains)
    }

    /// Inserts the staged entries, in order, and empties the stage.
    fn insert_staged(&mut self, staged: &mut Vec<(u32, u64)>) {
        for &(entry, hash) in staged.iter() {
            self.next[entry as usize] = self.heads.insert(hash, entry);
        }
        staged.clear();
    }

    /// The row numbers chained under `hash` (candidates: their keys may differ).
    fn candidates(&self, hash: u64, out: &mut Vec<u32>) {
        let mut at = self.heads.get(hash);
        while at != END {
            out.push(if self.rows.is_empty() {
                at
            } else {
                self.rows[at as usize]
            });
            at = self.next[at as usize];
        }
    }

    fn len(&self) -> usize {
        self.next.len()
    }
}

/// A hash's last entry: open addressing with linear probing over `(tag, entry + 1)` slots,
/// `entry + 1 == 0` marking an empty one, at most three quarters full. Not a `HashMap`: a
/// build inserts millions of rows at random places, and staging them (see `Chains::build`)
/// needs the slot of a hash before inserting it, which std's map does not tell.
///
/// A slot is 8 bytes, and the table is sized to the entries rather than to a power of two:
/// at 16 bytes a slot and rounded up, the index a join keeps on 15M record keys was 540 MB,
/// most of it empty. A slot keeps 32 bits of its hash (the tag), and its home is set by the
/// others, so that two keys share a chain only if they share a tag and meet while probing:
/// rare, and harmless, since lookups compare every candidate's value.
#[derive(Debug)]
struct Heads {
    slots: Vec<(u32, u32)>,
}

impl Heads {
    fn with_capacity(entries: usize) -> Heads {
        Heads {
            slots: vec![(0, 0); (entries + entries / 3 + 1).max(16)],
        }
    }

    /// The slot a hash probes from: its high bits scaled to the table (a multiply, not a
    /// modulo), leaving the low bits to the tag.
    #[inline]
    fn home(&self, hash: u64) -> usize {
        ((u128::from(hash) * self.slots.len() as u128) >> 64) as usize
    }

    #[inline]
    fn tag(hash: u64) -> u32 {
        hash as u32
    }

    /// Asks for the line of `hash`'s home slot ahead of `insert`.
    #[inline]
    fn prefetch(&self, hash: u64) {
        crate::prefetch::prefetch(&self.slots, self.home(hash));
    }

    /// The slot after `slot`, wrapping at the end of the table.
    #[inline]
    fn next_slot(&self, slot: usize) -> usize {
        if slot + 1 == self.slots.len() {
            0
        } else {
            slot + 1
        }
    }

    /// Makes `entry` the last of `hash`; returns the previous last entry, or `END`.
    fn insert(&mut self, hash: u64, entry: u32) -> u32 {
        let tag = Heads::tag(hash);
        let mut slot = self.home(hash);
        loop {
            let (slot_tag, stored) = self.slots[slot];
            if stored == 0 {
                self.slots[slot] = (tag, entry + 1);
                return END;
            }
            if slot_tag == tag {
                self.slots[slot].1 = entry + 1;
                return stored - 1;
            }
            slot = self.next_slot(slot);
        }
    }

    /// The last entry of `hash`, or `END`.
    fn get(&self, hash: u64) -> u32 {
        let tag = Heads::tag(hash);
        let mut slot = self.home(hash);
        loop {
            let (slot_tag, stored) = self.slots[slot];
            if stored == 0 {
                return END;
            }
            if slot_tag == tag {
                return stored - 1;
            }
            slot = self.next_slot(slot);
        }
    }
}

fn total(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

fn row_id(starts: &[usize], number: usize) -> RowId {
    let batch = starts
        .partition_point(|start| *start <= number)
        .saturating_sub(1);
    (batch, number - starts.get(batch).copied().unwrap_or(0))
}

/// A hash index on one column of a set of batches.
///
/// Built over every row once, then carried from publication to publication: the rows a
/// publication adds or changes go into a small `delta`, and the full `base` is shared, not
/// rebuilt, until the delta grows past an eighth of it. Entries of `base` whose row has since
/// changed are stale; lookups compare every candidate's current value, so a stale entry is
/// never returned.
#[derive(Debug)]
pub struct KeyIndex {
    column: usize,
    base: Arc<Chains>,
    delta: Chains,
    /// Where each batch's rows start in the numbering.
    starts: Vec<usize>,
}

fn starts_of(batches: &[RecordBatch]) -> Vec<usize> {
    let mut number = 0;
    batches
        .iter()
        .map(|batch| {
            let start = number;
            number += batch.num_rows();
            start
        })
        .collect()
}

impl KeyIndex {
    /// Indexes `column` of `batches`; an error if its type is not a key type or the batches
    /// hold more rows than a `u32` numbers.
    pub fn build(batches: &[RecordBatch], column: usize) -> Result<KeyIndex> {
        let total = total(batches);
        if total >= END as usize {
            return Err(DataFusionError::Plan(format!(
                "cannot index {total} rows: at most {} per table",
                END - 1
            )));
        }
        let starts = starts_of(batches);
        Ok(KeyIndex {
            column,
            base: Arc::new(Chains::build(batches, column, &starts, None)?),
            delta: Chains::build(batches, column, &starts, Some(Vec::new()))?,
            starts,
        })
    }

    /// This index, carried over to `batches`, a publication that followed the indexed one
    /// with `changes`: the base is shared and the delta covers every row changed or added
    /// since the base was built. Built again from scratch once that delta is large.
    pub fn carried(&self, batches: &[RecordBatch], changes: &Changes) -> Result<KeyIndex> {
        let total = total(batches);
        if total >= END as usize {
            return KeyIndex::build(batches, self.column);
        }
        let kept = changes.kept_rows.min(total);
        let mut rows: Vec<u32> = self
            .delta
            .rows
            .iter()
            .copied()
            .filter(|&row| (row as usize) < kept)
            .collect();
        rows.extend(
            changes
                .changed_in(self.column)
                .iter()
                .copied()
                .filter(|&row| (row as usize) < kept),
        );
        if (rows.len() + total - kept) * 8 > self.base.len().max(1 << 16) {
            return KeyIndex::build(batches, self.column);
        }
        rows.extend(kept as u32..total as u32);
        rows.sort_unstable();
        rows.dedup();
        let starts = starts_of(batches);
        Ok(KeyIndex {
            column: self.column,
            base: Arc::clone(&self.base),
            delta: Chains::build(batches, self.column, &starts, Some(rows))?,
            starts,
        })
    }

    pub fn column(&self) -> usize {
        self.column
    }

    /// The rows of `batches` (those the index was built or carried on) whose key equals
    /// `key`, in table order.
    pub fn lookup(&self, batches: &[RecordBatch], key: Key<'_>) -> Vec<RowId> {
        let hash = key.hash64();
        let mut numbers = Vec::new();
        self.base.candidates(hash, &mut numbers);
        self.delta.candidates(hash, &mut numbers);
        // A row changed since the base may sit in both, under the same key.
        numbers.sort_unstable();
        numbers.dedup();
        numbers
            .into_iter()
            .map(|number| row_id(&self.starts, number as usize))
            .filter(|&(batch, row)| {
                batches.get(batch).is_some_and(|batch| {
                    row < batch.num_rows()
                        && key_at(batch.column(self.column).as_ref(), row) == Some(key)
                })
            })
            .collect()
    }
}

/// The batches `rows` touch, in order of first use, and `rows` renumbered against that list:
/// a lookup then copies from the one or two batches it needs, not from all of a large
/// table's hundreds.
pub fn touched(rows: &[RowId]) -> (Vec<usize>, Vec<RowId>) {
    let mut batches: Vec<usize> = Vec::new();
    let renumbered = rows
        .iter()
        .map(|(batch, row)| {
            let at = match batches.iter().position(|b| b == batch) {
                Some(at) => at,
                None => {
                    batches.push(*batch);
                    batches.len() - 1
                }
            };
            (at, *row)
        })
        .collect();
    (batches, renumbered)
}

/// The rows `rows` of `batches`, as one batch of `schema` with the columns `projection`.
pub fn take_rows(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    rows: &[RowId],
    projection: Option<&[usize]>,
) -> Result<RecordBatch> {
    let projected = match projection {
        Some(columns) => Arc::new(schema.project(columns)?),
        None => Arc::clone(schema),
    };
    if rows.is_empty() {
        return Ok(RecordBatch::new_empty(projected));
    }
    let (used, rows) = touched(rows);
    let sources: Vec<RecordBatch> = used
        .iter()
        .map(|at| {
            let batch = batches.get(*at).ok_or_else(|| {
                DataFusionError::Internal(format!("no batch {at} to take rows from"))
            })?;
            Ok(match projection {
                Some(columns) => batch.project(columns)?,
                None => batch.clone(),
            })
        })
        .collect::<Result<_>>()?;
    let refs: Vec<&RecordBatch> = sources.iter().collect();
    let taken = interleave_record_batch(&refs, &rows)?;
    // Dictionary-encoded columns come out as the type `schema` gives them (see
    // `PublishedTable::stored`).
    let columns = taken
        .columns()
        .iter()
        .zip(projected.fields())
        .map(|(column, field)| as_type(column, field.data_type()))
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(projected, columns)?)
}

/// `column` as `data_type`: a taken dictionary-encoded column as the values' type SQL sees
/// (see `PublishedTable::stored`), any other column as it is.
pub fn as_type(column: &ArrayRef, data_type: &DataType) -> Result<ArrayRef> {
    if column.data_type() == data_type {
        Ok(Arc::clone(column))
    } else {
        Ok(cast(column, data_type)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{
        DictionaryArray, Int64Array, StringArray, StringViewArray, UInt64Array,
    };
    use datafusion::arrow::datatypes::{Field, Schema};

    fn batches() -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let first = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec![Some("a"), Some("b"), None])),
                Arc::new(Int64Array::from(vec![1, 2, 3])),
            ],
        )
        .unwrap();
        let second = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec![Some("c"), Some("a")])),
                Arc::new(Int64Array::from(vec![4, 1])),
            ],
        )
        .unwrap();
        (schema, vec![first, second])
    }

    #[test]
    fn finds_every_row_of_a_key_across_batches_in_table_order() {
        let (_, batches) = batches();
        let index = KeyIndex::build(&batches, 0).unwrap();
        assert_eq!(index.lookup(&batches, Key::Str("a")), vec![(0, 0), (1, 1)]);
        assert_eq!(index.lookup(&batches, Key::Str("c")), vec![(1, 0)]);
        assert!(index.lookup(&batches, Key::Str("z")).is_empty());
    }

    fn strings(schema: &SchemaRef, ids: Vec<Option<&str>>) -> RecordBatch {
        let n = ids.len() as i64;
        RecordBatch::try_new(
            Arc::clone(schema),
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(Int64Array::from_iter_values(0..n)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn a_carried_index_follows_changed_added_and_moved_rows() {
        let (schema, batches) = batches();
        let index = KeyIndex::build(&batches, 0).unwrap();
        // Row 1 changes b → a, row 0 a → c; one row is added after the kept five.
        let next = vec![
            strings(&schema, vec![Some("c"), Some("a"), None]),
            strings(&schema, vec![Some("c"), Some("a"), Some("b")]),
        ];
        let changes = Changes {
            kept_rows: 5,
            changed: vec![(0, vec![0, 1])],
        };
        let carried = index.carried(&next, &changes).unwrap();
        assert_eq!(carried.lookup(&next, Key::Str("a")), vec![(0, 1), (1, 1)]);
        assert_eq!(carried.lookup(&next, Key::Str("c")), vec![(0, 0), (1, 0)]);
        assert_eq!(carried.lookup(&next, Key::Str("b")), vec![(1, 2)]);
        // Without the changes listed, the changed rows would be missed: the list is what
        // the carried index relies on.
        let blind = index
            .carried(
                &next,
                &Changes {
                    kept_rows: 5,
                    changed: vec![],
                },
            )
            .unwrap();
        assert_eq!(blind.lookup(&next, Key::Str("c")), vec![(1, 0)]);

        // Carried again with rows from 2 on replaced: the first delta's rows still count.
        let again = vec![
            strings(&schema, vec![Some("c"), Some("a")]),
            strings(&schema, vec![Some("b"), Some("b")]),
        ];
        let moved = Changes {
            kept_rows: 2,
            changed: vec![],
        };
        let twice = carried.carried(&again, &moved).unwrap();
        assert_eq!(twice.lookup(&again, Key::Str("c")), vec![(0, 0)]);
        assert_eq!(twice.lookup(&again, Key::Str("a")), vec![(0, 1)]);
        assert_eq!(twice.lookup(&again, Key::Str("b")), vec![(1, 0), (1, 1)]);
    }

    #[test]
    fn integers_compare_by_value_whatever_their_width() {
        let (_, batches) = batches();
        let index = KeyIndex::build(&batches, 1).unwrap();
        let five = ScalarValue::UInt64(Some(1));
        assert_eq!(
            index.lookup(&batches, Key::of_scalar(&five).unwrap()),
            vec![(0, 0), (1, 1)]
        );
        assert_eq!(
            Key::of_scalar(&ScalarValue::Int32(Some(1))),
            Key::of_scalar(&ScalarValue::Int64(Some(1)))
        );
        let big = UInt64Array::from(vec![u64::MAX]);
        assert_eq!(key_at(&big, 0), Some(Key::Big(u64::MAX)));
    }

    #[test]
    fn nulls_are_not_keys_and_strings_never_equal_integers() {
        assert_eq!(Key::of_scalar(&ScalarValue::Utf8(None)), None);
        assert_ne!(
            Key::of_scalar(&ScalarValue::Utf8(Some("1".into()))),
            Key::of_scalar(&ScalarValue::Int64(Some(1)))
        );
        let (_, batches) = batches();
        let index = KeyIndex::build(&batches, 0).unwrap();
        // The NULL in row 2 is not indexed; every other row is.
        let found: usize = ["a", "b", "c"]
            .iter()
            .map(|k| index.lookup(&batches, Key::Str(k)).len())
            .sum();
        assert_eq!(found, 4);
    }

    #[test]
    fn dictionary_keys_are_their_values() {
        let dictionary: DictionaryArray<UInt32Type> = vec![Some("b"), None, Some("a"), Some("b")]
            .into_iter()
            .collect();
        let plain = StringArray::from(vec!["a", "b"]);
        assert_eq!(KeyKind::of(dictionary.data_type()), Some(KeyKind::String));
        assert_eq!(key_at(&dictionary, 0), key_at(&plain, 1));
        assert_eq!(key_at(&dictionary, 1), None);
        assert_eq!(key_at(&dictionary, 2), key_at(&plain, 0));
        let literal = ScalarValue::Dictionary(
            Box::new(DataType::UInt32),
            Box::new(ScalarValue::Utf8(Some("b".into()))),
        );
        assert_eq!(Key::of_scalar(&literal), key_at(&plain, 1));
        let schema = Arc::new(Schema::new(vec![Field::new(
            "id",
            dictionary.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(schema, vec![Arc::new(dictionary)]).unwrap();
        let batches = vec![batch];
        let index = KeyIndex::build(&batches, 0).unwrap();
        assert_eq!(index.lookup(&batches, Key::Str("b")).len(), 2);
        assert_eq!(index.lookup(&batches, Key::Str("a")).len(), 1);
    }

    #[test]
    fn string_kinds_share_keys() {
        let view = StringViewArray::from(vec!["x"]);
        let plain = StringArray::from(vec!["x"]);
        assert_eq!(key_at(&view, 0), key_at(&plain, 0));
        assert_eq!(
            Key::of_scalar(&ScalarValue::Utf8View(Some("x".into()))),
            key_at(&plain, 0)
        );
    }

    #[test]
    fn refuses_columns_that_are_not_keys() {
        let schema = Arc::new(Schema::new(vec![Field::new("f", DataType::Float64, false)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(datafusion::arrow::array::Float64Array::from(
                vec![1.0],
            ))],
        )
        .unwrap();
        assert!(KeyIndex::build(&[batch], 0).is_err());
    }

    #[test]
    fn takes_rows_with_a_projection() {
        let (schema, batches) = batches();
        let taken = take_rows(&schema, &batches, &[(1, 1), (0, 1)], Some(&[1])).unwrap();
        assert_eq!(taken.num_columns(), 1);
        let n = taken.column(0).as_primitive::<Int64Type>();
        assert_eq!(n.values().to_vec(), vec![1, 2]);
        assert_eq!(
            touched(&[(4, 0), (2, 7), (4, 1)]),
            (vec![4, 2], vec![(0, 0), (1, 7), (0, 1)])
        );
        let none = take_rows(&schema, &batches, &[], None).unwrap();
        assert_eq!((none.num_rows(), none.num_columns()), (0, 2));
    }

    /// Probing wraps at the table's end, and each hash finds its own last entry while tags
    /// differ; a hash shares a chain only with one of the same tag met on the way.
    #[test]
    fn heads_wrap_at_the_end_and_chain_by_tag() {
        let mut heads = Heads::with_capacity(12);
        let slots = heads.slots.len();
        // Every one of these starts at the last slot, so all but one wrap to the front.
        let hashes: Vec<u64> = (1..=10).map(|tag| u64::MAX - (1 << 40) + tag).collect();
        assert!(hashes.iter().all(|&hash| heads.home(hash) == slots - 1));
        for (entry, &hash) in hashes.iter().enumerate() {
            assert_eq!(heads.insert(hash, entry as u32), END);
        }
        for (entry, &hash) in hashes.iter().enumerate() {
            assert_eq!(heads.get(hash), entry as u32);
        }
        // Inserting a hash again chains the new entry to its previous one.
        assert_eq!(heads.insert(hashes[3], 20), 3);
        assert_eq!(heads.get(hashes[3]), 20);
        // Another hash with the tag of `hashes[0]` whose probe meets it joins its chain.
        let same_tag = (hashes[0] & 0xFFFF_FFFF) | (u64::MAX << 40);
        assert_eq!(heads.insert(same_tag, 21), 0);
        assert_eq!(heads.get(hashes[0]), 21);
        assert_eq!(heads.get(0x1234_5678_0000_0099), END);
    }

    /// A table filled to its limit finds every key at its row, and no key it does not hold.
    #[test]
    fn every_key_of_a_full_table_is_found_at_its_row() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, true)]));
        let keys: Vec<String> = (0..5000).map(|i| format!("key-{i}")).collect();
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(StringArray::from_iter_values(&keys))],
        )
        .unwrap();
        let batches = vec![batch];
        let index = KeyIndex::build(&batches, 0).unwrap();
        for (row, key) in keys.iter().enumerate() {
            assert_eq!(index.lookup(&batches, Key::Str(key)), vec![(0, row)]);
        }
        assert!(index.lookup(&batches, Key::Str("key-5000")).is_empty());
    }
}
