//! `COPY (query) TO STDOUT` and `COPY table TO STDOUT`, in text or CSV: what psql's `\copy …
//! to 'file'` sends, so that a segment exports to a file. `COPY … FROM` is not supported:
//! data lands through sources and loads, not through the wire.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};
use datafusion_postgres::arrow_pg::datatypes::arrow_schema_to_pg_fields;
use datafusion_postgres::arrow_pg::encoder::encode_value;
use futures::SinkExt;
use futures::StreamExt;
use pgwire::api::portal::Format;
use pgwire::api::results::{
    CopyCsvOptions, CopyEncoder, CopyResponse, CopyTextOptions, FieldInfo, Response, Tag,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyOutResponse};

use super::errors;
use super::limits::QueryGuard;

/// A `COPY … TO STDOUT`, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyOut {
    /// The query whose rows are copied.
    pub query: String,
    pub csv: bool,
    pub header: bool,
    pub delimiter: Option<char>,
    pub null: Option<String>,
}

/// Reads a parsed `COPY` statement; `None` when `statement` is not a `COPY`.
pub fn parse(statement: &Statement) -> Option<PgWireResult<CopyOut>> {
    let Statement::Copy {
        source,
        to,
        target,
        options,
        legacy_options,
        ..
    } = statement
    else {
        return None;
    };
    Some(copy_out(source, *to, target, options, legacy_options))
}

fn copy_out(
    source: &CopySource,
    to: bool,
    target: &CopyTarget,
    options: &[CopyOption],
    legacy_options: &[CopyLegacyOption],
) -> PgWireResult<CopyOut> {
    if !to {
        return Err(errors::not_supported(
            "COPY FROM is not supported: load data through sources (see README)",
        ));
    }
    if !matches!(target, CopyTarget::Stdout) {
        // A file on the server's disk would be written with the server's rights.
        return Err(errors::not_supported(
            "COPY TO a server file or program is not supported; use COPY … TO STDOUT \
             (psql: \\copy … to 'file')",
        ));
    }
    let query = match source {
        CopySource::Query(query) => query.to_string(),
        CopySource::Table {
            table_name,
            columns,
        } if columns.is_empty() => format!("SELECT * FROM {table_name}"),
        CopySource::Table {
            table_name,
            columns,
        } => {
            let columns: Vec<String> = columns.iter().map(ToString::to_string).collect();
            format!("SELECT {} FROM {table_name}", columns.join(", "))
        }
    };
    let mut copy = CopyOut {
        query,
        csv: false,
        header: false,
        delimiter: None,
        null: None,
    };
    for option in options {
        match option {
            CopyOption::Format(format) => match format.value.to_ascii_lowercase().as_str() {
                "csv" => copy.csv = true,
                "text" => copy.csv = false,
                other => {
                    return Err(errors::not_supported(format!(
                        "COPY format {other} is not supported (text and csv are)"
                    )));
                }
            },
            CopyOption::Header(header) => copy.header = *header,
            CopyOption::Delimiter(delimiter) => copy.delimiter = Some(*delimiter),
            CopyOption::Null(null) => copy.null = Some(null.clone()),
            other => {
                return Err(errors::not_supported(format!(
                    "COPY option {other} is not supported"
                )));
            }
        }
    }
    for option in legacy_options {
        match option {
            CopyLegacyOption::Csv(csv_options) => {
                copy.csv = true;
                for csv_option in csv_options {
                    match csv_option {
                        CopyLegacyCsvOption::Header => copy.header = true,
                        other => {
                            return Err(errors::not_supported(format!(
                                "COPY option {other} is not supported"
                            )));
                        }
                    }
                }
            }
            CopyLegacyOption::Header => copy.header = true,
            CopyLegacyOption::Delimiter(delimiter) => copy.delimiter = Some(*delimiter),
            CopyLegacyOption::Null(null) => copy.null = Some(null.clone()),
            other => {
                return Err(errors::not_supported(format!(
                    "COPY option {other} is not supported"
                )));
            }
        }
    }
    if copy.header && !copy.csv {
        return Err(errors::not_supported(
            "COPY HEADER is available only in CSV mode",
        ));
    }
    Ok(copy)
}

/// Rows of a COPY, each with whether it carries a data row (the header alone does not).
type Lines = futures::stream::BoxStream<'static, PgWireResult<(CopyData, bool)>>;

/// Runs the query and gives its rows as CopyData, under the session's guard.
async fn lines(
    ctx: &SessionContext,
    copy: CopyOut,
    guard: &QueryGuard,
) -> PgWireResult<(usize, Lines)> {
    let frame = guard
        .run(async {
            ctx.sql(&copy.query)
                .await
                .map_err(|e| PgWireError::ApiError(Box::new(e)))
        })
        .await?;
    let arrow_schema = Arc::new(frame.schema().as_arrow().clone());
    let fields = Arc::new(arrow_schema_to_pg_fields(
        &arrow_schema,
        &Format::UnifiedText,
        None,
    )?);
    let batches = guard
        .run(async {
            frame
                .execute_stream()
                .await
                .map_err(|e| PgWireError::ApiError(Box::new(e)))
        })
        .await?;
    // Shared with the end of the stream, which sends the header alone when there is no row.
    let header = Arc::new(std::sync::Mutex::new(
        copy.header.then(|| header_line(&fields, &copy)),
    ));
    let unsent_header = Arc::clone(&header);
    let columns = fields.len();
    let mut encoder = if copy.csv {
        let mut options = CopyCsvOptions::default();
        if let Some(delimiter) = copy.delimiter {
            options.delimiter = delimiter.to_string().into();
        }
        if let Some(null) = &copy.null {
            options.null_string = null.as_str().into();
        }
        CopyEncoder::new_csv(Arc::clone(&fields), options)
    } else {
        let mut options = CopyTextOptions::default();
        if let Some(delimiter) = copy.delimiter {
            options.delimiter = delimiter.to_string().into();
        }
        if let Some(null) = &copy.null {
            options.null_string = null.as_str().into();
        }
        CopyEncoder::new_text(Arc::clone(&fields), options)
    };
    let lines = batches
        .map(move |batch| {
            let rows = match (batch, header.lock()) {
                (Ok(batch), Ok(mut header)) => {
                    encode_batch(&mut encoder, &batch, &fields, &mut header)
                }
                (Err(e), _) => vec![Err(PgWireError::ApiError(Box::new(e)))],
                (Ok(_), Err(_)) => vec![Err(errors::error("XX000", "COPY header lock poisoned"))],
            };
            futures::stream::iter(rows.into_iter().map(|row| row.map(|data| (data, true))))
        })
        .flatten()
        .chain(futures::stream::iter(std::iter::from_fn(move || {
            let header = unsent_header.lock().ok()?.take()?;
            Some(Ok((CopyData::new(header), false)))
        })))
        .boxed();
    Ok((columns, guard.stream(lines).boxed()))
}

/// Runs a COPY and sends its CopyOutResponse, CopyData and CopyDone itself; the
/// CommandComplete (`COPY n`) follows from the returned response.
///
/// pgwire's own COPY OUT answers an error in the middle (a cancel, a timeout) with a
/// CopyFail, which is a frontend message that psql reports as garbage; here the error goes
/// out as the ErrorResponse that PostgreSQL sends, which clients expect during COPY OUT.
/// The messages are sent while the statement runs, so only a COPY that comes first in its
/// query string goes this way (see [`execute`] for the others).
pub async fn send<C>(
    client: &mut C,
    ctx: &SessionContext,
    copy: CopyOut,
    guard: &QueryGuard,
) -> PgWireResult<Response>
where
    C: futures::Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as futures::Sink<PgWireBackendMessage>>::Error>,
{
    let (columns, mut lines) = lines(ctx, copy, guard).await?;
    let columns = i16::try_from(columns)
        .map_err(|_| errors::not_supported("COPY of more than 32767 columns"))?;
    client
        .send(PgWireBackendMessage::CopyOutResponse(CopyOutResponse::new(
            0,
            columns,
            vec![0; columns as usize],
        )))
        .await?;
    let mut rows = 0;
    while let Some(line) = lines.next().await {
        let (data, is_row) = line?;
        rows += usize::from(is_row);
        client.feed(PgWireBackendMessage::CopyData(data)).await?;
    }
    client
        .send(PgWireBackendMessage::CopyDone(CopyDone::new()))
        .await?;
    Ok(Response::Execution(Tag::new("COPY").with_rows(rows)))
}

/// Runs a COPY as a response for pgwire to send (after the statements before it).
pub async fn execute(
    ctx: &SessionContext,
    copy: CopyOut,
    guard: &QueryGuard,
) -> PgWireResult<Response> {
    let (columns, lines) = lines(ctx, copy, guard).await?;
    Ok(Response::CopyOut(CopyResponse::new(
        0,
        columns,
        lines.map(|line| line.map(|(data, _)| data)),
    )))
}

/// Encodes a batch's rows; the header, still unsent, goes in front of the first row.
fn encode_batch(
    encoder: &mut CopyEncoder,
    batch: &RecordBatch,
    fields: &[FieldInfo],
    header: &mut Option<Bytes>,
) -> Vec<PgWireResult<CopyData>> {
    let schema = batch.schema();
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        for (column, pg_field) in fields.iter().enumerate() {
            if let Err(e) = encode_value(
                encoder,
                batch.column(column),
                row,
                schema.field(column),
                pg_field,
            ) {
                rows.push(Err(e));
                return rows;
            }
        }
        let line = encoder.take_copy();
        rows.push(Ok(match header.take() {
            Some(header) => {
                let mut both = BytesMut::from(header.as_ref());
                both.extend_from_slice(&line.data);
                CopyData::new(both.freeze())
            }
            None => line,
        }));
    }
    rows
}

fn header_line(fields: &[FieldInfo], copy: &CopyOut) -> Bytes {
    let delimiter = copy.delimiter.unwrap_or(',').to_string();
    let names: Vec<String> = fields
        .iter()
        .map(|field| {
            let name = field.name();
            if name.contains(['"', '\n', '\r']) || name.contains(delimiter.as_str()) {
                format!("\"{}\"", name.replace('"', "\"\""))
            } else {
                name.to_string()
            }
        })
        .collect();
    Bytes::from(format!("{}\n", names.join(&delimiter)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn parsed(sql: &str) -> PgWireResult<CopyOut> {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        parse(&statements[0]).expect("a COPY")
    }

    #[test]
    fn psql_copy_forms_are_read() {
        // What psql sends for \copy (select …) to 'f.csv' csv header
        let copy = parsed("COPY ( select 1 as a ) TO STDOUT csv header").unwrap();
        assert!(copy.csv && copy.header);
        assert_eq!(copy.query, "SELECT 1 AS a");
        let copy = parsed("COPY stores (store_id, name) TO STDOUT WITH (FORMAT csv, HEADER true)")
            .unwrap();
        assert_eq!(copy.query, "SELECT store_id, name FROM stores");
        let copy = parsed("COPY stores TO STDOUT").unwrap();
        assert!(!copy.csv && !copy.header);
    }

    #[test]
    fn other_copies_are_refused_with_0a000() {
        for sql in ["COPY stores FROM STDIN", "COPY stores TO '/etc/x'"] {
            let PgWireError::UserError(info) = parsed(sql).unwrap_err() else {
                panic!("user error");
            };
            assert_eq!(info.code, "0A000", "{sql}");
        }
    }
}
