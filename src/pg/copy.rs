//! `COPY (query) TO STDOUT` and `COPY table TO STDOUT`, in text or CSV: what psql's `\copy …
//! to 'file'` sends, so that a segment exports to a file.
//!
//! `COPY table FROM STDIN` (psql's `\copy table from 'file'`, drivers' `copy_in`) loads
//! rows into an existing landed table, for admins. The rows go through the loader of
//! `c360 load`: decoded as they arrive, checked and written in batches, and published by
//! one commit at CopyDone; a bad row fails the whole COPY and commits nothing.

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
use crate::Engine;
use crate::sources::copy::{CopyDecoder, CopyFormat, CopyFormatError};
use crate::sources::load::Loader;

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

/// A `COPY table [(columns)] FROM STDIN`, before it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyInRequest {
    /// The table as written: `t` or `landed.t`.
    pub table: Vec<String>,
    /// The columns the rows give, in order; empty for all of the table's.
    pub columns: Vec<String>,
    pub format: CopyFormat,
}

/// A parsed `COPY`, either way.
#[derive(Debug, Clone, PartialEq)]
pub enum Copy {
    Out(CopyOut),
    In(CopyInRequest),
}

/// Reads a parsed `COPY` statement; `None` when `statement` is not a `COPY`.
pub fn parse(statement: &Statement) -> Option<PgWireResult<Copy>> {
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
    Some(parse_copy(source, *to, target, options, legacy_options))
}

fn parse_copy(
    source: &CopySource,
    to: bool,
    target: &CopyTarget,
    options: &[CopyOption],
    legacy_options: &[CopyLegacyOption],
) -> PgWireResult<Copy> {
    let stdio = if to {
        matches!(target, CopyTarget::Stdout)
    } else {
        matches!(target, CopyTarget::Stdin)
    };
    if !stdio {
        // A file on the server's disk would be read or written with the server's rights.
        return Err(errors::not_supported(
            "COPY with a server file or program is not supported; use COPY … TO STDOUT or \
             COPY … FROM STDIN (psql: \\copy … to/from 'file')",
        ));
    }
    let options = copy_options(options, legacy_options)?;
    if to {
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
        return Ok(Copy::Out(CopyOut {
            query,
            csv: options.csv,
            header: options.header,
            delimiter: options.delimiter,
            null: options.null,
        }));
    }
    let CopySource::Table {
        table_name,
        columns,
    } = source
    else {
        return Err(errors::syntax("COPY FROM needs a table, not a query"));
    };
    let mut format = if options.csv {
        CopyFormat::csv()
    } else {
        CopyFormat::text()
    };
    format.header = options.header;
    if let Some(delimiter) = options.delimiter {
        format.delimiter = u8::try_from(delimiter)
            .ok()
            .filter(u8::is_ascii)
            .ok_or_else(|| errors::not_supported("COPY delimiter must be one ASCII character"))?;
    }
    if let Some(null) = options.null {
        format.null = null;
    }
    Ok(Copy::In(CopyInRequest {
        table: table_name
            .0
            .iter()
            .map(|part| ident_text(&part.to_string()))
            .collect(),
        columns: columns.iter().map(|c| ident_text(&c.to_string())).collect(),
        format,
    }))
}

/// A name as SQL means it: unquoted names fold to lower case, quoted ones are kept.
fn ident_text(part: &str) -> String {
    match part.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => part.to_ascii_lowercase(),
    }
}

/// The options both directions share.
#[derive(Default)]
struct Options {
    csv: bool,
    header: bool,
    delimiter: Option<char>,
    null: Option<String>,
}

fn copy_options(
    options: &[CopyOption],
    legacy_options: &[CopyLegacyOption],
) -> PgWireResult<Options> {
    let mut copy = Options::default();
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

/// A `COPY … FROM STDIN` under way on a session.
pub struct CopyIn {
    decoder: CopyDecoder,
    loader: Loader,
    /// `COPY t`, the prefix of error messages, as PostgreSQL's context line has it.
    label: String,
}

impl CopyIn {
    /// Checks the target and starts the load; the response puts the client in copy-in mode.
    pub fn start(engine: &Engine, request: CopyInRequest) -> PgWireResult<(CopyIn, Response)> {
        let (name, columns) = target(engine, &request)?;
        let name = name.as_str();
        let loader = engine
            .loader(name)
            .map_err(errors::from_c360)?
            .counting_lines();
        let response = Response::CopyIn(CopyResponse::new(
            0,
            columns.len(),
            futures::stream::empty(),
        ));
        Ok((
            CopyIn {
                decoder: CopyDecoder::new(&columns, request.format),
                loader,
                label: format!("COPY {name}"),
            },
            response,
        ))
    }

    /// Decodes one CopyData message, writing the batches it completes.
    pub async fn data(&mut self, bytes: &[u8]) -> PgWireResult<()> {
        let full = self
            .decoder
            .feed(bytes)
            .map_err(|e| bad_format(&self.label, e))?;
        for rows in full {
            self.loader
                .push(rows.batch, &self.label, rows.first_line)
                .await
                .map_err(errors::from_c360)?;
        }
        Ok(())
    }

    /// Writes the last rows and commits them all; gives the number of rows.
    pub async fn done(mut self, engine: &Engine) -> PgWireResult<u64> {
        let last = self
            .decoder
            .finish()
            .map_err(|e| bad_format(&self.label, e))?;
        for rows in last {
            self.loader
                .push(rows.batch, &self.label, rows.first_line)
                .await
                .map_err(errors::from_c360)?;
        }
        let rows = self.loader.rows();
        if rows == 0 {
            // Nothing to publish: an empty commit would only add a version.
            return Ok(0);
        }
        self.loader
            .commit(engine)
            .await
            .map_err(errors::from_c360)?;
        Ok(rows)
    }
}

/// The landed table a `COPY … FROM STDIN` loads, and the columns its rows give. Checked
/// when the statement is prepared too, so that a driver learns of a wrong name before it
/// starts sending rows.
pub fn target(engine: &Engine, request: &CopyInRequest) -> PgWireResult<(String, Vec<String>)> {
    let name = match request.table.as_slice() {
        [name] => name,
        [schema, name] if schema == "landed" || schema == "public" => name,
        _ => return Err(no_table(&request.table.join("."))),
    };
    let table = engine.landed().get(name).ok_or_else(|| no_table(name))?;
    let schema = table.schema();
    if request.columns.is_empty() {
        let all = schema.fields().iter().map(|f| f.name().clone()).collect();
        return Ok((name.clone(), all));
    }
    for (i, column) in request.columns.iter().enumerate() {
        if schema.field_with_name(column).is_err() {
            return Err(errors::error(
                "42703",
                format!("column \"{column}\" of relation \"{name}\" does not exist"),
            ));
        }
        if request.columns[..i].contains(column) {
            return Err(errors::error(
                "42701",
                format!("column \"{column}\" specified more than once"),
            ));
        }
    }
    Ok((name.clone(), request.columns.clone()))
}

fn no_table(name: &str) -> PgWireError {
    errors::error(
        "42P01",
        format!(
            "relation \"{name}\" does not exist: COPY FROM loads into an existing landed \
             table (c360 load creates one from a file)"
        ),
    )
}

fn bad_format(label: &str, e: CopyFormatError) -> PgWireError {
    errors::error("22P04", format!("{label}: {e}"))
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

    fn parsed(sql: &str) -> PgWireResult<Copy> {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        parse(&statements[0]).expect("a COPY")
    }

    fn copy_out(sql: &str) -> CopyOut {
        match parsed(sql).unwrap() {
            Copy::Out(copy) => copy,
            other => panic!("not a COPY TO: {other:?}"),
        }
    }

    fn copy_in(sql: &str) -> CopyInRequest {
        match parsed(sql).unwrap() {
            Copy::In(copy) => copy,
            other => panic!("not a COPY FROM: {other:?}"),
        }
    }

    #[test]
    fn psql_copy_forms_are_read() {
        // What psql sends for \copy (select …) to 'f.csv' csv header
        let copy = copy_out("COPY ( select 1 as a ) TO STDOUT csv header");
        assert!(copy.csv && copy.header);
        assert_eq!(copy.query, "SELECT 1 AS a");
        let copy =
            copy_out("COPY stores (store_id, name) TO STDOUT WITH (FORMAT csv, HEADER true)");
        assert_eq!(copy.query, "SELECT store_id, name FROM stores");
        let copy = copy_out("COPY stores TO STDOUT");
        assert!(!copy.csv && !copy.header);
    }

    #[test]
    fn copy_from_stdin_forms_are_read() {
        // What psql sends for \copy landed.Crm from 'f.csv' csv header
        let copy = copy_in("COPY landed.Crm FROM STDIN csv header");
        assert_eq!(copy.table, ["landed", "crm"]);
        assert!(copy.format.csv && copy.format.header);
        let copy = copy_in("COPY crm (id, \"Email\") FROM STDIN WITH (FORMAT csv, HEADER true)");
        assert_eq!(copy.columns, ["id", "Email"]);
        let copy = copy_in("COPY crm FROM STDIN");
        assert_eq!(copy.format, CopyFormat::text());
    }

    #[test]
    fn server_files_are_refused_with_0a000() {
        for sql in ["COPY stores FROM '/etc/passwd'", "COPY stores TO '/etc/x'"] {
            let PgWireError::UserError(info) = parsed(sql).unwrap_err() else {
                panic!("user error");
            };
            assert_eq!(info.code, "0A000", "{sql}");
        }
    }
}
