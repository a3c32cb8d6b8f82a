//! Query results as text for the CLI: psql's aligned table for people, CSV and JSON for
//! scripts.

use std::io::Write;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::QueryResult;
use crate::error::{C360Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned table, as psql prints it.
    Table,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON array of row objects per statement.
    Json,
}

/// Writes `result` to `out` in `format`. Statements without columns (DDL) print nothing.
pub fn write_result(out: &mut dyn Write, result: &QueryResult, format: OutputFormat) -> Result<()> {
    if result.schema.fields().is_empty() {
        return Ok(());
    }
    let io = |e: std::io::Error| C360Error::io("stdout", e);
    match format {
        OutputFormat::Table => write_table(out, result).map_err(io),
        OutputFormat::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            if result.batches.is_empty() {
                let empty = RecordBatch::new_empty(result.schema.clone());
                writer
                    .write(&empty)
                    .map_err(|e| C360Error::arrow("writing CSV", e))?;
            }
            for batch in &result.batches {
                writer
                    .write(batch)
                    .map_err(|e| C360Error::arrow("writing CSV", e))?;
            }
            Ok(())
        }
        OutputFormat::Json => {
            let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut *out);
            let batches: Vec<&RecordBatch> = result.batches.iter().collect();
            writer
                .write_batches(&batches)
                .map_err(|e| C360Error::arrow("writing JSON", e))?;
            writer
                .finish()
                .map_err(|e| C360Error::arrow("writing JSON", e))?;
            writeln!(out).map_err(io)
        }
    }
}

fn write_table(out: &mut dyn Write, result: &QueryResult) -> std::io::Result<()> {
    let fields = result.schema.fields();
    let right_aligned: Vec<bool> = fields
        .iter()
        .map(|field| is_numeric(field.data_type()))
        .collect();
    let mut cells: Vec<Vec<String>> = Vec::with_capacity(result.row_count());
    let options = FormatOptions::default().with_null("");
    for batch in &result.batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(std::io::Error::other)?;
        for row in 0..batch.num_rows() {
            cells.push(
                formatters
                    .iter()
                    .map(|formatter| formatter.value(row).to_string().replace('\n', "\\n"))
                    .collect(),
            );
        }
    }

    let mut widths: Vec<usize> = fields.iter().map(|f| f.name().chars().count()).collect();
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }

    let header: Vec<String> = fields
        .iter()
        .zip(&widths)
        .map(|(field, &width)| centered(field.name(), width))
        .collect();
    writeln!(out, " {}", header.join(" | ").trim_end())?;
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w + 2)).collect();
    writeln!(out, "{}", rule.join("+"))?;
    for row in &cells {
        let padded: Vec<String> = row
            .iter()
            .zip(&widths)
            .zip(&right_aligned)
            .map(|((cell, &width), &right)| {
                if right {
                    format!("{cell:>width$}")
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        writeln!(out, " {}", padded.join(" | ").trim_end())?;
    }
    let n = cells.len();
    writeln!(out, "({n} {})", if n == 1 { "row" } else { "rows" })?;
    writeln!(out)
}

fn centered(text: &str, width: usize) -> String {
    let len = text.chars().count();
    let left = (width.saturating_sub(len)) / 2;
    let right = width.saturating_sub(len) - left;
    format!("{}{}{}", " ".repeat(left), text, " ".repeat(right))
}

fn is_numeric(data_type: &DataType) -> bool {
    data_type.is_numeric()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn sample() -> QueryResult {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("first_name", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 22])),
                Arc::new(StringArray::from(vec![Some("Zoé"), None])),
            ],
        )
        .unwrap();
        QueryResult {
            schema,
            batches: vec![batch],
        }
    }

    fn render(result: &QueryResult, format: OutputFormat) -> String {
        let mut out = Vec::new();
        write_result(&mut out, result, format).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn table_looks_like_psql() {
        assert_eq!(
            render(&sample(), OutputFormat::Table),
            " id | first_name\n----+------------\n  1 | Zoé\n 22 |\n(2 rows)\n\n"
        );
    }

    #[test]
    fn csv_has_a_header_and_empty_nulls() {
        assert_eq!(
            render(&sample(), OutputFormat::Csv),
            "id,first_name\n1,Zoé\n22,\n"
        );
    }

    #[test]
    fn json_is_an_array_of_objects_even_when_empty() {
        assert_eq!(
            render(&sample(), OutputFormat::Json),
            "[{\"id\":1,\"first_name\":\"Zoé\"},{\"id\":22}]\n"
        );
        let empty = QueryResult {
            schema: sample().schema,
            batches: vec![],
        };
        assert_eq!(render(&empty, OutputFormat::Json), "[]\n");
    }
}
