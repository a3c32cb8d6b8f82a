//! The rows of a `COPY … FROM STDIN`: PostgreSQL's text format (tab-separated, `\N` for
//! NULL, backslash escapes) and its CSV format, as a client sends them: in chunks cut
//! anywhere, even inside a quoted field.
//!
//! [`CopyDecoder`] turns the chunks into batches of text columns named after the target
//! columns; [`super::load::Loader`] then casts them to the table's types and names the line
//! and column of a value that does not fit, as it does for files. Parsing stays here,
//! casting stays there: one set of type rules for every way data lands.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// Rows per batch handed to the loader: large enough that casting is vectorised, small
/// enough that a COPY's memory stays bounded whatever its size.
const BATCH_ROWS: usize = 8192;

/// How the rows are written, from the COPY's options.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyFormat {
    pub csv: bool,
    /// CSV only: the first line names columns and is skipped.
    pub header: bool,
    pub delimiter: u8,
    /// The text of a NULL: `\N` in text format, an unquoted empty field in CSV.
    pub null: String,
    pub quote: u8,
    pub escape: u8,
}

impl CopyFormat {
    pub fn text() -> CopyFormat {
        CopyFormat {
            csv: false,
            header: false,
            delimiter: b'\t',
            null: "\\N".into(),
            quote: b'"',
            escape: b'"',
        }
    }

    pub fn csv() -> CopyFormat {
        CopyFormat {
            csv: true,
            delimiter: b',',
            null: String::new(),
            ..CopyFormat::text()
        }
    }
}

/// A line that cannot be read as a row (PostgreSQL's `bad_copy_file_format`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct CopyFormatError {
    pub line: u64,
    pub message: String,
}

/// Rows read so far, with the input line the first of them started on.
pub struct Rows {
    pub batch: RecordBatch,
    pub first_line: u64,
}

/// Reads COPY data chunk by chunk.
pub struct CopyDecoder {
    format: CopyFormat,
    schema: SchemaRef,
    /// Bytes of a record not yet complete.
    pending: Vec<u8>,
    /// Input lines consumed so far (a quoted CSV field can span several).
    line: u64,
    header_pending: bool,
    /// The `\.` end-of-data marker was read: anything after it is ignored, as PostgreSQL does.
    ended: bool,
    builders: Vec<StringBuilder>,
    rows: usize,
    first_line: u64,
}

impl CopyDecoder {
    /// A decoder for rows of `columns`, in that order.
    pub fn new(columns: &[String], format: CopyFormat) -> CopyDecoder {
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|name| Field::new(name, DataType::Utf8, true))
                .collect::<Vec<_>>(),
        ));
        CopyDecoder {
            header_pending: format.csv && format.header,
            format,
            builders: columns.iter().map(|_| StringBuilder::new()).collect(),
            schema,
            pending: Vec::new(),
            line: 0,
            ended: false,
            rows: 0,
            first_line: 1,
        }
    }

    /// Reads the complete records of `chunk` (and of what earlier chunks left), and gives
    /// the batches that filled up.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Rows>, CopyFormatError> {
        if self.ended {
            return Ok(Vec::new());
        }
        self.pending.extend_from_slice(chunk);
        let pending = std::mem::take(&mut self.pending);
        let mut full = Vec::new();
        let mut start = 0;
        while let Some(end) = self.record_end(&pending[start..]) {
            let record = &pending[start..start + end];
            start += end + 1;
            self.record(record, &mut full)?;
            if self.ended {
                return Ok(full);
            }
        }
        self.pending = pending[start..].to_vec();
        Ok(full)
    }

    /// Reads what is left after the last chunk (a last line without its newline) and gives
    /// the last batches.
    pub fn finish(&mut self) -> Result<Vec<Rows>, CopyFormatError> {
        let mut full = Vec::new();
        if !self.ended && !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            if self.format.csv && self.in_quotes(&rest) {
                return Err(CopyFormatError {
                    line: self.line + 1,
                    message: "unterminated CSV quoted field".into(),
                });
            }
            self.record(&rest, &mut full)?;
        }
        if let Some(rows) = self.flush() {
            full.push(rows);
        }
        Ok(full)
    }

    /// Where the first complete record of `bytes` ends (its newline), if it does.
    fn record_end(&self, bytes: &[u8]) -> Option<usize> {
        if !self.format.csv {
            // Text format escapes newlines in values, so every newline ends a record.
            return bytes.iter().position(|&b| b == b'\n');
        }
        let mut quoted = false;
        for (i, &b) in bytes.iter().enumerate() {
            if b == self.format.quote {
                // A doubled quote inside quotes toggles twice: still inside, as it should.
                quoted = !quoted;
            } else if b == b'\n' && !quoted {
                return Some(i);
            }
        }
        None
    }

    fn in_quotes(&self, bytes: &[u8]) -> bool {
        bytes.iter().filter(|&&b| b == self.format.quote).count() % 2 == 1
    }

    /// Reads one record (without its newline) into the builders.
    fn record(&mut self, record: &[u8], full: &mut Vec<Rows>) -> Result<(), CopyFormatError> {
        let start_line = self.line + 1;
        self.line += 1 + record.iter().filter(|&&b| b == b'\n').count() as u64;
        let record = record.strip_suffix(b"\r").unwrap_or(record);
        if record == b"\\." {
            self.ended = true;
            return Ok(());
        }
        if std::mem::take(&mut self.header_pending) {
            return Ok(());
        }
        let fields = if self.format.csv {
            csv_fields(record, &self.format)
        } else {
            text_fields(record, &self.format)
        }
        .map_err(|message| CopyFormatError {
            line: start_line,
            message,
        })?;
        if fields.len() != self.builders.len() {
            let message = if fields.len() > self.builders.len() {
                "extra data after last expected column".to_string()
            } else {
                format!(
                    "missing data for column \"{}\"",
                    self.schema.field(fields.len()).name()
                )
            };
            return Err(CopyFormatError {
                line: start_line,
                message,
            });
        }
        if self.rows == 0 {
            self.first_line = start_line;
        }
        for (builder, field) in self.builders.iter_mut().zip(fields) {
            builder.append_option(field);
        }
        self.rows += 1;
        if self.rows == BATCH_ROWS
            && let Some(rows) = self.flush()
        {
            full.push(rows);
        }
        Ok(())
    }

    fn flush(&mut self) -> Option<Rows> {
        if self.rows == 0 {
            return None;
        }
        let columns: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        self.rows = 0;
        // The columns are built from the schema's own list, so they always fit it.
        RecordBatch::try_new(Arc::clone(&self.schema), columns)
            .ok()
            .map(|batch| Rows {
                batch,
                first_line: self.first_line,
            })
    }
}

/// Splits a text-format line at the delimiter and undoes its backslash escapes.
fn text_fields(line: &[u8], format: &CopyFormat) -> Result<Vec<Option<String>>, String> {
    let mut fields = Vec::new();
    let mut raw_start = 0;
    let mut value = Vec::new();
    let mut i = 0;
    let finish = |raw: &[u8], value: &mut Vec<u8>| -> Result<Option<String>, String> {
        let taken = std::mem::take(value);
        if raw == format.null.as_bytes() {
            return Ok(None);
        }
        String::from_utf8(taken)
            .map(Some)
            .map_err(|_| "invalid byte sequence for encoding \"UTF8\"".to_string())
    };
    while i < line.len() {
        let b = line[i];
        if b == format.delimiter {
            fields.push(finish(&line[raw_start..i], &mut value)?);
            i += 1;
            raw_start = i;
            continue;
        }
        if b != b'\\' || i + 1 == line.len() {
            value.push(b);
            i += 1;
            continue;
        }
        let next = line[i + 1];
        i += 2;
        match next {
            b'b' => value.push(0x08),
            b'f' => value.push(0x0c),
            b'n' => value.push(b'\n'),
            b'r' => value.push(b'\r'),
            b't' => value.push(b'\t'),
            b'v' => value.push(0x0b),
            b'0'..=b'7' => {
                let mut code = u32::from(next - b'0');
                let mut digits = 1;
                while digits < 3 && i < line.len() && (b'0'..=b'7').contains(&line[i]) {
                    code = code * 8 + u32::from(line[i] - b'0');
                    i += 1;
                    digits += 1;
                }
                value.push((code & 0xff) as u8);
            }
            b'x' if i < line.len() && line[i].is_ascii_hexdigit() => {
                let mut code = 0u32;
                let mut digits = 0;
                while digits < 2 && i < line.len() && line[i].is_ascii_hexdigit() {
                    code = code * 16 + char::from(line[i]).to_digit(16).unwrap_or(0);
                    i += 1;
                    digits += 1;
                }
                value.push(code as u8);
            }
            other => value.push(other),
        }
    }
    fields.push(finish(&line[raw_start..], &mut value)?);
    Ok(fields)
}

/// Splits a CSV record. An unquoted field equal to the NULL text (empty by default) is NULL;
/// a quoted one never is, as in PostgreSQL, so `""` loads an empty string.
fn csv_fields(record: &[u8], format: &CopyFormat) -> Result<Vec<Option<String>>, String> {
    let mut fields = Vec::new();
    let mut value = Vec::new();
    let mut quoted_any = false;
    let mut in_quotes = false;
    let mut i = 0;
    let utf8 = |bytes: Vec<u8>| {
        String::from_utf8(bytes).map_err(|_| "invalid byte sequence for encoding \"UTF8\"")
    };
    loop {
        if i == record.len() {
            if in_quotes {
                return Err("unterminated CSV quoted field".into());
            }
            let bytes = std::mem::take(&mut value);
            fields.push(if !quoted_any && bytes == format.null.as_bytes() {
                None
            } else {
                Some(utf8(bytes)?)
            });
            return Ok(fields);
        }
        let b = record[i];
        i += 1;
        if in_quotes {
            if b == format.escape && i < record.len() && record[i] == format.quote {
                value.push(format.quote);
                i += 1;
            } else if b == format.quote {
                in_quotes = false;
            } else {
                value.push(b);
            }
        } else if b == format.quote {
            in_quotes = true;
            quoted_any = true;
        } else if b == format.delimiter {
            let bytes = std::mem::take(&mut value);
            fields.push(if !quoted_any && bytes == format.null.as_bytes() {
                None
            } else {
                Some(utf8(bytes)?)
            });
            quoted_any = false;
        } else {
            value.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};

    fn columns(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn values(rows: &Rows, column: usize) -> Vec<Option<String>> {
        let array = rows.batch.column(column).as_string::<i32>();
        (0..array.len())
            .map(|i| array.is_valid(i).then(|| array.value(i).to_string()))
            .collect()
    }

    #[test]
    fn text_format_unescapes_and_reads_nulls() {
        let mut decoder = CopyDecoder::new(&columns(&["a", "b"]), CopyFormat::text());
        assert!(
            decoder
                .feed(b"1\tx\\ty\n2\t\\N\n3\ta\\\\b\\nc")
                .unwrap()
                .is_empty()
        );
        let rows = decoder.finish().unwrap().remove(0);
        assert_eq!(rows.first_line, 1);
        assert_eq!(
            values(&rows, 1),
            vec![Some("x\ty".into()), None, Some("a\\b\nc".into())]
        );
    }

    #[test]
    fn csv_records_may_be_cut_anywhere_and_span_lines() {
        let data = b"id,note\n1,\"a, \"\"quoted\"\"\nline\"\n2,\n3,\"\"\n";
        for cut in 0..data.len() {
            let mut decoder = CopyDecoder::new(
                &columns(&["id", "note"]),
                CopyFormat {
                    header: true,
                    ..CopyFormat::csv()
                },
            );
            decoder.feed(&data[..cut]).unwrap();
            decoder.feed(&data[cut..]).unwrap();
            let rows = decoder.finish().unwrap().remove(0);
            assert_eq!(rows.first_line, 2, "cut at {cut}");
            assert_eq!(
                values(&rows, 1),
                vec![
                    Some("a, \"quoted\"\nline".into()),
                    None,
                    Some(String::new())
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn wrong_field_counts_name_the_line() {
        let mut decoder = CopyDecoder::new(&columns(&["a", "b"]), CopyFormat::csv());
        let error = decoder.feed(b"1,2\n3\n").err().unwrap();
        assert_eq!(error.line, 2);
        assert!(error.message.contains("missing data for column \"b\""));
        let mut decoder = CopyDecoder::new(&columns(&["a"]), CopyFormat::text());
        let error = decoder.feed(b"1\t2\n").err().unwrap();
        assert_eq!(
            (error.line, error.message.as_str()),
            (1, "extra data after last expected column")
        );
    }

    #[test]
    fn end_marker_stops_the_data() {
        let mut decoder = CopyDecoder::new(&columns(&["a"]), CopyFormat::text());
        decoder.feed(b"1\n\\.\ngarbage\tmore\n").unwrap();
        assert_eq!(
            values(&decoder.finish().unwrap().remove(0), 0),
            vec![Some("1".into())]
        );
    }
}
