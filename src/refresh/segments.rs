//! A segment's membership: the diff of a refresh's result against the previous members, which
//! gives the new members table (with `entered_at` kept for those who stay) and the history rows
//! (`entered` / `exited`).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, StringBuilder, TimestampMicrosecondArray,
    UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::{C360Error, Result};
// DataFusion's maps (hashbrown with a fast hasher): a diff hashes every member twice.
use datafusion::common::{HashMap, HashSet};

pub const PROFILE_ID: &str = "profile_id";

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// `segment_changes(segment, profile_id, change, at, refresh_id)`.
pub fn changes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("segment", DataType::Utf8, false),
        Field::new(PROFILE_ID, DataType::Utf8, false),
        Field::new("change", DataType::Utf8, false),
        Field::new("at", timestamp_type(), false),
        Field::new("refresh_id", DataType::UInt64, false),
    ]))
}

/// `segment_members(segment, profile_id, entered_at)`.
pub fn all_members_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("segment", DataType::Utf8, false),
        Field::new(PROFILE_ID, DataType::Utf8, false),
        Field::new("entered_at", timestamp_type(), false),
    ]))
}

/// The members table of one segment: `profile_id, entered_at`, then the query's other columns.
pub fn members_schema(query_schema: &Schema) -> Result<SchemaRef> {
    let mut fields = vec![
        Field::new(PROFILE_ID, DataType::Utf8, false),
        Field::new("entered_at", timestamp_type(), false),
    ];
    let mut found = false;
    for field in query_schema.fields() {
        if field.name() == PROFILE_ID {
            found = true;
        } else if field.name() == "entered_at" {
            return Err(C360Error::InvalidArgument(
                "a segment's query must not return a column named entered_at: c360 adds it".into(),
            ));
        } else {
            fields.push(field.as_ref().clone().with_nullable(true));
        }
    }
    if !found {
        let names: Vec<&str> = query_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        return Err(C360Error::InvalidArgument(format!(
            "a segment's query must return a profile_id column; this one returns {}",
            if names.is_empty() {
                "no columns".to_string()
            } else {
                names.join(", ")
            }
        )));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The current members of a segment, as committed: batches of `profile_id, entered_at`
/// (then the query's other columns), each id once. Kept as the arrays the members table
/// publishes rather than as owned strings, so that a refresh allocates nothing per member
/// that stays.
#[derive(Debug, Clone, Default)]
pub struct Members {
    batches: Vec<RecordBatch>,
    len: usize,
}

impl Members {
    pub fn new() -> Members {
        Members::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Each member's id and entry time (µs since epoch), in table order.
    fn entries(&self) -> impl Iterator<Item = (&str, i64)> {
        self.batches.iter().flat_map(|batch| {
            // Checked by `members_of` and built by `diff`: column 0 is a string, 1 a timestamp.
            let ids = batch.column(0).as_string::<i32>();
            let entered = batch
                .column(1)
                .as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>();
            (0..batch.num_rows()).map(move |i| (ids.value(i), entered.value(i)))
        })
    }

    /// When `profile_id` entered, if it is a member (a scan: for tests and rare lookups).
    pub fn entered_at(&self, profile_id: &str) -> Option<i64> {
        self.entries()
            .find(|(id, _)| *id == profile_id)
            .map(|(_, at)| at)
    }
}

/// Reads the members of a committed members table back.
pub fn members_of(batches: &[RecordBatch]) -> Result<Members> {
    for batch in batches {
        let ids = batch.column(0).as_string_opt::<i32>();
        let entered = batch
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>();
        let (Some(ids), Some(entered)) = (ids, entered) else {
            return Err(C360Error::Corrupt(
                "a segment's members file does not start with profile_id, entered_at".into(),
            ));
        };
        if ids.null_count() > 0 || entered.null_count() > 0 {
            return Err(C360Error::Corrupt(
                "a segment's members file has a NULL profile_id or entered_at".into(),
            ));
        }
    }
    Ok(Members {
        len: batches.iter().map(RecordBatch::num_rows).sum(),
        batches: batches.to_vec(),
    })
}

/// What one refresh of a segment produced.
pub struct Diff {
    pub schema: SchemaRef,
    pub members: Vec<RecordBatch>,
    pub current: Members,
    /// History rows, `None` when nobody entered or left.
    pub changes: Option<RecordBatch>,
    pub entered: usize,
    pub exited: usize,
}

/// Diffs `result` (the segment query's rows) against `previous`. A profile id that appears on
/// several rows is one member, with the first row's columns; a NULL profile id is no one.
///
/// Costs one hash of each previous member's id and one of each result row's, and allocates
/// nothing per member: the maps borrow the ids from the arrays.
pub fn diff(
    segment: &str,
    previous: &Members,
    result: &[RecordBatch],
    refresh_id: u64,
    now_micros: i64,
) -> Result<Diff> {
    let query_schema = match result.first() {
        Some(batch) => batch.schema(),
        None => Arc::new(Schema::new(vec![Field::new(
            PROFILE_ID,
            DataType::Utf8,
            true,
        )])),
    };
    let schema = members_schema(&query_schema)?;
    let id_index = query_schema
        .index_of(PROFILE_ID)
        .map_err(|e| C360Error::Arrow {
            context: format!("segment {segment}"),
            source: e,
        })?;
    let arrow = |e| C360Error::Arrow {
        context: format!("segment {segment}"),
        source: e,
    };

    let mut before: HashMap<&str, i64> =
        HashMap::with_capacity_and_hasher(previous.len(), Default::default());
    before.extend(previous.entries());
    let id_columns = result
        .iter()
        .map(|batch| cast(batch.column(id_index), &DataType::Utf8))
        .collect::<std::result::Result<Vec<ArrayRef>, _>>()
        .map_err(arrow)?;
    let rows: usize = result.iter().map(RecordBatch::num_rows).sum();
    let mut now_in: HashSet<&str> =
        HashSet::with_capacity_and_hasher(rows.min(before.len() * 2 + 1024), Default::default());
    let mut entered_ids: Vec<&str> = Vec::new();
    let mut members = Vec::with_capacity(result.len());
    for (batch, ids) in result.iter().zip(&id_columns) {
        let ids = ids.as_string::<i32>();
        let mut keep = Vec::new();
        let mut entered_at = Vec::new();
        for i in 0..batch.num_rows() {
            if ids.is_null(i) {
                continue;
            }
            let id = ids.value(i);
            if !now_in.insert(id) {
                continue;
            }
            let since = match before.get(id) {
                Some(&since) => since,
                None => {
                    entered_ids.push(id);
                    now_micros
                }
            };
            keep.push(i as u32);
            entered_at.push(since);
        }
        if keep.is_empty() {
            continue;
        }
        let all_kept = keep.len() == batch.num_rows();
        let indices = UInt32Array::from(keep);
        // A batch whose every row is kept (the usual case) is shared, not copied.
        let pick = |column: &ArrayRef| -> Result<ArrayRef> {
            if all_kept {
                Ok(Arc::clone(column))
            } else {
                take(column, &indices, None).map_err(arrow)
            }
        };
        let ids_column: ArrayRef = Arc::new(ids.clone());
        let mut columns: Vec<ArrayRef> = vec![
            pick(&ids_column)?,
            Arc::new(TimestampMicrosecondArray::from(entered_at).with_timezone("UTC")),
        ];
        for (index, column) in batch.columns().iter().enumerate() {
            if index != id_index {
                columns.push(pick(column)?);
            }
        }
        members.push(RecordBatch::try_new(schema.clone(), columns).map_err(arrow)?);
    }

    let mut exited_ids: Vec<&str> = before
        .keys()
        .copied()
        .filter(|id| !now_in.contains(id))
        .collect();
    exited_ids.sort_unstable();
    let (entered, exited) = (entered_ids.len(), exited_ids.len());
    let changes = if entered + exited == 0 {
        None
    } else {
        let rows = entered + exited;
        let mut ids = StringBuilder::with_capacity(rows, rows * 18);
        let mut kinds = StringBuilder::with_capacity(rows, rows * 7);
        for id in &entered_ids {
            ids.append_value(id);
            kinds.append_value("entered");
        }
        for id in exited_ids {
            ids.append_value(id);
            kinds.append_value("exited");
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![segment; rows])),
            Arc::new(ids.finish()),
            Arc::new(kinds.finish()),
            Arc::new(TimestampMicrosecondArray::from(vec![now_micros; rows]).with_timezone("UTC")),
            Arc::new(UInt64Array::from(vec![refresh_id; rows])),
        ];
        Some(RecordBatch::try_new(changes_schema(), columns).map_err(arrow)?)
    };
    let len = now_in.len();
    Ok(Diff {
        schema,
        current: Members {
            batches: members.clone(),
            len,
        },
        members,
        changes,
        entered,
        exited,
    })
}

/// `segment_members` rows for one segment: its name, then `profile_id, entered_at` (the
/// arrays are shared with the segment's own table, not copied).
pub fn tagged_members(segment: &str, members: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
    members
        .iter()
        .map(|batch| {
            let columns: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from(vec![segment; batch.num_rows()])),
                Arc::clone(batch.column(0)),
                Arc::clone(batch.column(1)),
            ];
            RecordBatch::try_new(all_members_schema(), columns).map_err(|e| C360Error::Arrow {
                context: format!("segment {segment}"),
                source: e,
            })
        })
        .collect()
}

/// `batch` (history or members) without the rows of `profile_id`.
pub fn without_profile(batch: &RecordBatch, profile_id: &str) -> Result<RecordBatch> {
    use datafusion::arrow::array::Scalar;
    let failed = |e| C360Error::arrow("erasing a profile from a segment", e);
    let Some(column) = batch.column_by_name(PROFILE_ID) else {
        return Ok(batch.clone());
    };
    let column = cast(column, &DataType::Utf8).map_err(failed)?;
    let other = datafusion::arrow::compute::kernels::cmp::neq(
        &column,
        &Scalar::new(StringArray::from(vec![profile_id])),
    )
    .map_err(failed)?;
    datafusion::arrow::compute::filter_record_batch(batch, &other).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    fn result(ids: &[Option<&str>], score: &[i64]) -> Vec<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("score", DataType::Int64, false),
            Field::new(PROFILE_ID, DataType::Utf8, true),
        ]));
        vec![
            RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(Int64Array::from(score.to_vec())),
                    Arc::new(StringArray::from(ids.to_vec())),
                ],
            )
            .unwrap(),
        ]
    }

    #[test]
    fn entering_staying_and_leaving() {
        let first = diff(
            "s",
            &Members::new(),
            &result(&[Some("a"), Some("b"), None, Some("a")], &[1, 2, 3, 4]),
            1,
            100,
        )
        .unwrap();
        assert_eq!((first.entered, first.exited), (2, 0));
        assert_eq!(first.current.len(), 2);
        let members = &first.members[0];
        assert_eq!(members.schema().field(0).name(), PROFILE_ID);
        assert_eq!(members.schema().field(2).name(), "score");
        // The first row of a duplicated id wins.
        assert_eq!(
            members
                .column(2)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values(),
            &[1, 2]
        );

        let second = diff(
            "s",
            &first.current,
            &result(&[Some("b"), Some("c")], &[5, 6]),
            2,
            200,
        )
        .unwrap();
        assert_eq!((second.entered, second.exited), (1, 1));
        assert_eq!(
            second.current.entered_at("b"),
            Some(100),
            "b stays with its first entry time"
        );
        assert_eq!(second.current.entered_at("c"), Some(200));
        assert_eq!(second.current.entered_at("a"), None);
        let changes = second.changes.unwrap();
        let change = changes.column(2).as_string::<i32>();
        let who = changes.column(1).as_string::<i32>();
        assert_eq!((who.value(0), change.value(0)), ("c", "entered"));
        assert_eq!((who.value(1), change.value(1)), ("a", "exited"));

        let third = diff(
            "s",
            &second.current,
            &result(&[Some("c"), Some("b")], &[0, 0]),
            3,
            300,
        )
        .unwrap();
        assert!(third.changes.is_none(), "same members, no history rows");
    }

    #[test]
    fn a_query_without_profile_id_is_refused() {
        let schema = Schema::new(vec![Field::new("email", DataType::Utf8, true)]);
        let err = members_schema(&schema).unwrap_err().to_string();
        assert!(err.contains("profile_id") && err.contains("email"), "{err}");
    }
}
