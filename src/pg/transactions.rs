//! Transaction statements, with c360's read-only semantics.
//!
//! c360 has no multi-statement transactions: every statement applies when it runs, as in
//! autocommit. `BEGIN`, `COMMIT` and `ROLLBACK` are accepted (datafusion-postgres tracks
//! the transaction state that clients expect), and so are savepoints, which drivers such as
//! psycopg open around their own catalog queries; `ROLLBACK` undoes nothing, which is
//! harmless for analysts, who cannot change anything, and is documented for admins.

use datafusion::sql::sqlparser::ast::Statement;
use pgwire::api::results::{Response, Tag};

/// Answers the savepoint statements; `None` for any other statement.
pub fn savepoint(statement: &Statement) -> Option<Response> {
    let tag = match statement {
        Statement::Savepoint { .. } => "SAVEPOINT",
        Statement::ReleaseSavepoint { .. } => "RELEASE",
        // ROLLBACK TO SAVEPOINT stays inside the transaction, unlike ROLLBACK.
        Statement::Rollback {
            savepoint: Some(_), ..
        } => "ROLLBACK",
        _ => return None,
    };
    Some(Response::Execution(Tag::new(tag)))
}
