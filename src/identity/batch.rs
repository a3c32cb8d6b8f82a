//! Chunked Arrow batch writing and typed column reading for the identity graph's tables.
//!
//! Outputs and persisted state can hold tens of millions of rows. One giant batch would
//! overflow `Utf8`'s 32-bit offsets past 2 GiB of text and gives a scan nothing to spread
//! across threads, so every table is written as a list of batches of bounded size.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, GenericByteArray, Int64Array,
    Int64Builder, RecordBatch, StringArray, StringBuilder, StringDictionaryBuilder,
    StringViewBuilder, TimestampMicrosecondBuilder, UInt8Array, UInt32Array, UInt32Builder,
};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    ByteArrayType, DataType, Int64Type, SchemaRef, TimeUnit, UInt8Type, UInt32Type,
};

use super::graph::GraphError;

/// Rows per output batch: large enough to amortise per-batch costs, small enough that a scan
/// of a few million rows has batches to share among threads.
pub(super) const OUTPUT_ROWS: usize = 65_536;
/// Rows per persisted-state batch. Small enough that a batch's buffers (a records batch holds
/// its keys' text, tens of bytes a row) stay below the allocator's direct-mapping threshold
/// (see `allocator.rs`), so each batch reuses the memory of the one before instead of having
/// the kernel fault in and zero fresh pages: at 1M customers, a quarter of these rows wrote the
/// records part in 2.0 s against 2.8 s for 1M.
pub(super) const STATE_ROWS: usize = 1 << 18;
/// Text bytes after which a batch is cut whatever its row count, far below `Utf8`'s 2 GiB.
pub(super) const MAX_TEXT_BYTES: usize = 256 << 20;

enum Col {
    Str(StringBuilder),
    View(StringViewBuilder),
    Dict(StringDictionaryBuilder<UInt32Type>),
    U32(UInt32Builder),
    I64(Int64Builder),
    Ts(TimestampMicrosecondBuilder),
}

/// Builds one table row by row, cutting it into batches of at most `max_rows` rows.
///
/// Setters address columns by position; a setter that does not match the column's type
/// appends nothing, so the batch fails to build with a length error instead of carrying a
/// wrong value.
pub(super) struct TableWriter {
    table: &'static str,
    schema: SchemaRef,
    cols: Vec<Col>,
    max_rows: usize,
    rows: usize,
    text_bytes: usize,
    done: Vec<RecordBatch>,
}

impl TableWriter {
    pub(super) fn new(
        table: &'static str,
        schema: SchemaRef,
        max_rows: usize,
    ) -> Result<Self, GraphError> {
        let cols = schema
            .fields()
            .iter()
            .map(|field| new_col(field.data_type()))
            .collect::<Option<Vec<Col>>>()
            .ok_or_else(|| GraphError::Arrow {
                table: table.to_string(),
                message: "unsupported column type".to_string(),
            })?;
        Ok(TableWriter {
            table,
            schema,
            cols,
            max_rows,
            rows: 0,
            text_bytes: 0,
            done: Vec::new(),
        })
    }

    pub(super) fn str(&mut self, col: usize, value: &str) {
        match self.cols.get_mut(col) {
            Some(Col::Str(b)) => b.append_value(value),
            Some(Col::View(b)) => b.append_value(value),
            Some(Col::Dict(b)) => {
                b.append_value(value);
            }
            _ => return,
        }
        self.text_bytes += value.len();
    }

    pub(super) fn opt_str(&mut self, col: usize, value: Option<&str>) {
        match value {
            Some(value) => self.str(col, value),
            None => match self.cols.get_mut(col) {
                Some(Col::Str(b)) => b.append_null(),
                Some(Col::View(b)) => b.append_null(),
                Some(Col::Dict(b)) => b.append_null(),
                _ => {}
            },
        }
    }

    pub(super) fn u32(&mut self, col: usize, value: Option<u32>) {
        if let Some(Col::U32(b)) = self.cols.get_mut(col) {
            b.append_option(value);
        }
    }

    pub(super) fn i64(&mut self, col: usize, value: i64) {
        match self.cols.get_mut(col) {
            Some(Col::I64(b)) => b.append_value(value),
            Some(Col::Ts(b)) => b.append_value(value),
            _ => {}
        }
    }

    /// Ends the current row, cutting a batch when it is full.
    pub(super) fn end_row(&mut self) -> Result<(), GraphError> {
        self.rows += 1;
        if self.rows >= self.max_rows || self.text_bytes >= MAX_TEXT_BYTES {
            self.cut()?;
        }
        Ok(())
    }

    fn cut(&mut self) -> Result<(), GraphError> {
        let arrays: Vec<ArrayRef> = self
            .cols
            .iter_mut()
            .map(|col| match col {
                Col::Str(b) => Arc::new(b.finish()) as ArrayRef,
                Col::View(b) => Arc::new(b.finish()),
                Col::Dict(b) => Arc::new(b.finish()),
                Col::U32(b) => Arc::new(b.finish()),
                Col::I64(b) => Arc::new(b.finish()),
                Col::Ts(b) => Arc::new(b.finish()),
            })
            .collect();
        let batch =
            RecordBatch::try_new(self.schema.clone(), arrays).map_err(|e| GraphError::Arrow {
                table: self.table.to_string(),
                message: e.to_string(),
            })?;
        self.done.push(batch);
        self.rows = 0;
        self.text_bytes = 0;
        Ok(())
    }

    /// The batches; at least one (possibly empty), so that readers always see the schema.
    pub(super) fn finish(mut self) -> Result<Vec<RecordBatch>, GraphError> {
        if self.rows > 0 || self.done.is_empty() {
            self.cut()?;
        }
        Ok(self.done)
    }
}

fn new_col(data_type: &DataType) -> Option<Col> {
    Some(match data_type {
        DataType::Utf8 => Col::Str(StringBuilder::new()),
        DataType::Utf8View => Col::View(StringViewBuilder::new()),
        DataType::Dictionary(key, value)
            if **key == DataType::UInt32 && **value == DataType::Utf8 =>
        {
            Col::Dict(StringDictionaryBuilder::new())
        }
        DataType::UInt32 => Col::U32(UInt32Builder::new()),
        DataType::Int64 => Col::I64(Int64Builder::new()),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            Col::Ts(TimestampMicrosecondBuilder::new().with_timezone_opt(tz.clone()))
        }
        _ => return None,
    })
}

/// Reads typed columns of one persisted-state batch, naming the part and column in errors.
///
/// Columns are cast to the type the graph wrote, so state read back through a reader that
/// changes representations (Parquet readers often return `Utf8View` or `LargeUtf8`) loads.
pub(super) struct ColumnReader<'a> {
    pub(super) part: &'a str,
    pub(super) batch: &'a RecordBatch,
}

impl ColumnReader<'_> {
    pub(super) fn error(&self, message: impl Into<String>) -> GraphError {
        GraphError::State {
            part: self.part.to_string(),
            message: message.into(),
        }
    }

    fn column(
        &self,
        name: &str,
        data_type: &DataType,
        nullable: bool,
    ) -> Result<ArrayRef, GraphError> {
        let column = self
            .batch
            .column_by_name(name)
            .ok_or_else(|| self.error(format!("missing column {name:?}")))?;
        let column = cast(column, data_type)
            .map_err(|e| self.error(format!("column {name:?} is not {data_type}: {e}")))?;
        if !nullable && column.null_count() > 0 {
            return Err(self.error(format!("column {name:?} has NULLs")));
        }
        Ok(column)
    }

    pub(super) fn str(&self, name: &str, nullable: bool) -> Result<StringArray, GraphError> {
        Ok(self
            .column(name, &DataType::Utf8, nullable)?
            .as_string::<i32>()
            .clone())
    }

    pub(super) fn binary(&self, name: &str) -> Result<BinaryArray, GraphError> {
        Ok(self
            .column(name, &DataType::Binary, false)?
            .as_binary::<i32>()
            .clone())
    }

    pub(super) fn u8(&self, name: &str) -> Result<UInt8Array, GraphError> {
        Ok(self
            .column(name, &DataType::UInt8, false)?
            .as_primitive::<UInt8Type>()
            .clone())
    }

    pub(super) fn u32(&self, name: &str, nullable: bool) -> Result<UInt32Array, GraphError> {
        Ok(self
            .column(name, &DataType::UInt32, nullable)?
            .as_primitive::<UInt32Type>()
            .clone())
    }

    pub(super) fn i64(&self, name: &str) -> Result<Int64Array, GraphError> {
        Ok(self
            .column(name, &DataType::Int64, false)?
            .as_primitive::<Int64Type>()
            .clone())
    }

    pub(super) fn bool(&self, name: &str) -> Result<BooleanArray, GraphError> {
        Ok(self
            .column(name, &DataType::Boolean, false)?
            .as_boolean()
            .clone())
    }
}

/// A batch of `columns`, naming `table` in the error.
pub(super) fn batch_of(
    table: &str,
    schema: SchemaRef,
    columns: Vec<ArrayRef>,
) -> Result<RecordBatch, GraphError> {
    RecordBatch::try_new(schema, columns).map_err(|e| GraphError::Arrow {
        table: table.to_string(),
        message: e.to_string(),
    })
}

/// A binary or text column (`T`) from offsets and bytes (see `Interner::key_run`); an error
/// if text bytes are not UTF-8.
pub(super) fn byte_column<T: ByteArrayType<Offset = i32>>(
    offsets: Vec<i32>,
    bytes: Buffer,
) -> Result<ArrayRef, GraphError> {
    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
    GenericByteArray::<T>::try_new(offsets, bytes, None)
        .map(|array| Arc::new(array) as ArrayRef)
        .map_err(|e| GraphError::Arrow {
            table: "state".into(),
            message: e.to_string(),
        })
}
