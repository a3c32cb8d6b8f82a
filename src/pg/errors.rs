//! SQLSTATEs: every failure reaches the client as an ErrorResponse with a code it can act on.

use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;
use pgwire::error::{ErrorInfo, PgWireError};

use crate::error::C360Error;
use crate::storage::table::MisfitKind;

pub fn error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".to_string(),
        code.to_string(),
        message.into(),
    )))
}

/// An error that ends the connection (authentication, limits).
pub fn fatal(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_string(),
        code.to_string(),
        message.into(),
    )))
}

pub fn query_canceled(message: &str) -> PgWireError {
    error("57014", message)
}

pub fn insufficient_privilege(message: impl Into<String>) -> PgWireError {
    error("42501", message)
}

pub fn syntax(message: impl Into<String>) -> PgWireError {
    error("42601", message)
}

pub fn not_supported(message: impl Into<String>) -> PgWireError {
    error("0A000", message)
}

/// A panic caught while running a query: the query fails, the session and server go on.
pub fn internal(panic: Box<dyn std::any::Any + Send>) -> PgWireError {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown cause");
    tracing::error!(panic = what, "query panicked");
    error(
        "XX000",
        format!("internal error: the engine failed on this query ({what})"),
    )
}

/// Gives DataFusion's errors, which pgwire reports as XX000, their Postgres SQLSTATE.
pub fn classify(error: PgWireError) -> PgWireError {
    match error {
        PgWireError::ApiError(source) => match source.downcast::<DataFusionError>() {
            Ok(df) => from_datafusion(*df),
            Err(other) => match other.downcast::<ParserError>() {
                Ok(parse) => syntax(parse.to_string()),
                Err(other) => PgWireError::ApiError(other),
            },
        },
        other => other,
    }
}

pub fn from_datafusion(error: DataFusionError) -> PgWireError {
    let message = error.to_string();
    let code = match error.find_root() {
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::SQL(..) => "42601",
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::SchemaError(e, _) => match e.as_ref() {
            datafusion::common::SchemaError::FieldNotFound { .. } => "42703",
            datafusion::common::SchemaError::AmbiguousReference { .. } => "42702",
            _ => "42P16",
        },
        DataFusionError::Plan(text) => plan_code(text),
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            datafusion::arrow::error::ArrowError::DivideByZero => "22012",
            datafusion::arrow::error::ArrowError::CastError(_)
            | datafusion::arrow::error::ArrowError::ParseError(_) => "22P02",
            _ => "XX000",
        },
        _ => "XX000",
    };
    self::error(code, message)
}

/// DataFusion's planning errors carry their kind only in their text.
fn plan_code(text: &str) -> &'static str {
    if text.contains("not found") && (text.contains("table") || text.contains("Table")) {
        "42P01"
    } else if text.contains("Invalid function") || text.contains("No function matches") {
        "42883"
    } else {
        "42000"
    }
}

/// The SQLSTATE a client can act on for each kind of engine error.
pub fn from_c360(error: C360Error) -> PgWireError {
    let error = match error {
        C360Error::Query(df) => return from_datafusion(df),
        other => other,
    };
    let code = match &error {
        C360Error::Syntax(_) => "42601",
        C360Error::AlreadyExists(_) => "42P07",
        C360Error::NotFound(_) => "42704",
        C360Error::DependentObjects(_) => "2BP01",
        C360Error::Identity(_) | C360Error::InvalidArgument(_) => "22023",
        C360Error::BadRow { kind, .. } => match kind {
            MisfitKind::UnknownColumn => "42703",
            MisfitKind::InvalidValue => "22P02",
            MisfitKind::InvalidDatetime => "22007",
            MisfitKind::Null => "23502",
        },
        _ => "58000",
    };
    self::error(code, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(error: PgWireError) -> String {
        match error {
            PgWireError::UserError(info) => info.code,
            other => panic!("not a user error: {other:?}"),
        }
    }

    #[test]
    fn datafusion_errors_get_their_sqlstate() {
        let exhausted = DataFusionError::ResourcesExhausted("Failed to allocate".into());
        let wrapped = DataFusionError::Context("query".into(), Box::new(exhausted));
        assert_eq!(
            code(classify(PgWireError::ApiError(Box::new(wrapped)))),
            "53200"
        );
        let missing = DataFusionError::Plan("table 'c360.public.nope' not found".into());
        assert_eq!(
            code(classify(PgWireError::ApiError(Box::new(missing)))),
            "42P01"
        );
    }
}
