//! Who may run what: analysts read, admins do everything.
//!
//! The decision is made on the parsed statement, never on its text: an allow-list of the
//! statement kinds that only read, so that a statement kind added to the parser later is
//! refused to analysts until someone decides otherwise. A read may still call a table
//! function that writes: `claim_actions` and `ack_actions` change the action queue, so a
//! statement that names either anywhere (a subquery, a CTE, an `EXPLAIN`) is an admin's.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, SetExpr, Statement};
use pgwire::error::PgWireError;

pub use crate::config::Role;

use super::errors;

/// Checks a parsed SQL statement against a role.
pub fn check(role: Role, statement: &Statement) -> Result<(), PgWireError> {
    match role {
        Role::Admin => Ok(()),
        Role::Analyst => {
            if let Some(function) = queue_function(statement) {
                return Err(refused(&format!("{function}()")));
            }
            if reads_only(statement) {
                Ok(())
            } else {
                Err(refused(&statement_kind(statement)))
            }
        }
    }
}

/// Table functions that change the action queue (a claim hides actions from others).
const QUEUE_FUNCTIONS: [&str; 2] = ["claim_actions", "ack_actions"];

/// The first queue-changing table function the statement calls, wherever it is.
fn queue_function(statement: &Statement) -> Option<String> {
    let found = ast::visit_relations(statement, |name| {
        // Case-folded and unquoted: refusing `"CLAIM_ACTIONS"` too errs on the safe side.
        let last = name.0.last().map(ToString::to_string).unwrap_or_default();
        let bare = last.trim_matches('"').to_ascii_lowercase();
        if QUEUE_FUNCTIONS.contains(&bare.as_str()) {
            ControlFlow::Break(bare)
        } else {
            ControlFlow::Continue(())
        }
    });
    match found {
        ControlFlow::Break(function) => Some(function),
        ControlFlow::Continue(()) => None,
    }
}

/// Checks one of c360's own statements (`CREATE IDENTITY GRAPH` …): admins only.
pub fn check_c360(role: Role, tag: &str) -> Result<(), PgWireError> {
    match role {
        Role::Admin => Ok(()),
        Role::Analyst => Err(refused(tag)),
    }
}

fn refused(what: &str) -> PgWireError {
    errors::insufficient_privilege(format!(
        "permission denied: {what} needs the admin role (this session is an analyst's, \
         which reads only)"
    ))
}

fn reads_only(statement: &Statement) -> bool {
    match statement {
        Statement::Query(query) => query_reads_only(query),
        Statement::Explain { statement, .. } => reads_only(statement),
        Statement::Declare { stmts } => stmts
            .iter()
            .all(|declare| declare.for_query.as_deref().is_none_or(query_reads_only)),
        Statement::Prepare { statement, .. } => reads_only(statement),
        // COPY … TO STDOUT reads; COPY FROM writes.
        Statement::Copy { to, target, .. } => *to && matches!(target, ast::CopyTarget::Stdout),
        // Session settings, except DataFusion's runtime ones: those would replace the
        // session's memory pool and escape the per-query limit.
        Statement::Set(set) => !sets_runtime(set),
        Statement::ExplainTable { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowCollation { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowObjects(_)
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Discard { .. }
        | Statement::Deallocate { .. }
        | Statement::Execute { .. }
        | Statement::Reset(_) => true,
        _ => false,
    }
}

/// A query reads only unless it is `SELECT … INTO new_table`, which creates a table.
fn query_reads_only(query: &ast::Query) -> bool {
    set_expr_reads_only(&query.body)
}

fn set_expr_reads_only(body: &SetExpr) -> bool {
    match body {
        SetExpr::Select(select) => select.into.is_none(),
        SetExpr::Query(query) => query_reads_only(query),
        SetExpr::SetOperation { left, right, .. } => {
            set_expr_reads_only(left) && set_expr_reads_only(right)
        }
        SetExpr::Values(_) | SetExpr::Table(_) => true,
        _ => false,
    }
}

fn sets_runtime(set: &ast::Set) -> bool {
    match set {
        ast::Set::SingleAssignment { variable, .. } => variable
            .to_string()
            .to_ascii_lowercase()
            .starts_with("datafusion.runtime"),
        ast::Set::MultipleAssignments { assignments } => assignments.iter().any(|a| {
            a.name
                .to_string()
                .to_ascii_lowercase()
                .starts_with("datafusion.runtime")
        }),
        _ => false,
    }
}

/// The statement's kind as a user would name it in an error message ("INSERT", "CREATE TABLE").
fn statement_kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(3).collect();
    match words.as_slice() {
        [first, second, ..]
            if matches!(
                first.to_ascii_uppercase().as_str(),
                "CREATE" | "DROP" | "ALTER"
            ) =>
        {
            format!(
                "{} {}",
                first.to_ascii_uppercase(),
                second.to_ascii_uppercase()
            )
        }
        [first, ..] => first.to_ascii_uppercase(),
        [] => "this statement".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn analyst_may(sql: &str) -> bool {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        statements.iter().all(|s| check(Role::Analyst, s).is_ok())
    }

    #[test]
    fn analysts_read() {
        for sql in [
            "SELECT * FROM profiles WHERE profile_id = $1",
            "WITH x AS (SELECT 1) SELECT * FROM x UNION SELECT 2",
            "EXPLAIN SELECT 1",
            "SET application_name = 'x'",
            "SET statement_timeout = '5s'",
            "SHOW search_path",
            "BEGIN",
            "COMMIT",
            "ROLLBACK",
            "COPY (SELECT 1) TO STDOUT WITH (FORMAT csv)",
            "COPY stores TO STDOUT",
        ] {
            assert!(analyst_may(sql), "{sql}");
        }
    }

    #[test]
    fn analysts_do_not_write() {
        for sql in [
            "CREATE TABLE t (a int)",
            "CREATE VIEW v AS SELECT 1",
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "DROP TABLE t",
            "COPY t FROM STDIN",
            "SELECT * INTO t2 FROM t",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            "SET datafusion.runtime.memory_limit = '100G'",
            "TRUNCATE t",
            "SELECT * FROM claim_actions('push', 10)",
            "SELECT action_id FROM CLAIM_ACTIONS('push', 10) WHERE channel = 'push'",
            "SELECT * FROM public.ack_actions('1,2')",
            "SELECT * FROM actions WHERE action_id IN (SELECT action_id FROM claim_actions('push', 1))",
            "WITH c AS (SELECT * FROM claim_actions('push', 1)) SELECT * FROM c",
            "EXPLAIN SELECT * FROM claim_actions('push', 1)",
            "SELECT 1 UNION ALL SELECT acknowledged FROM ack_actions('3')",
        ] {
            assert!(!analyst_may(sql), "{sql}");
        }
        // Reading the queue is fine.
        assert!(analyst_may(
            "SELECT * FROM actions WHERE status = 'pending' LIMIT 10"
        ));
        let statements = Parser::parse_sql(
            &PostgreSqlDialect {},
            "SELECT * FROM claim_actions('push', 1)",
        )
        .unwrap();
        let PgWireError::UserError(info) = check(Role::Analyst, &statements[0]).unwrap_err() else {
            panic!("a user error");
        };
        assert_eq!(info.code, "42501");
        assert!(info.message.contains("claim_actions()"), "{}", info.message);
        assert!(check(Role::Admin, &statements[0]).is_ok());
        let statements =
            Parser::parse_sql(&PostgreSqlDialect {}, "INSERT INTO t VALUES (1)").unwrap();
        let PgWireError::UserError(info) = check(Role::Analyst, &statements[0]).unwrap_err() else {
            panic!("a user error");
        };
        assert_eq!(info.code, "42501");
        assert!(info.message.contains("INSERT"), "{}", info.message);
        assert!(check(Role::Admin, &statements[0]).is_ok());
    }
}
