//! c360's own statements, recognised before DataFusion sees the SQL.
//!
//! They read like Postgres DDL so that they sit naturally in `sql/` files and psql:
//!
//! ```sql
//! CREATE [OR REPLACE] IDENTITY GRAPH [IF NOT EXISTS] customers FROM identifiers
//!   WITH (priority = 'user_id, email, phone', limits = 'user_id: 1, email: 5',
//!         blocked = '^test@', hub_threshold = 10, lookback = '1 day')
//!   [EVERY '5 minutes'];
//! REFRESH IDENTITY GRAPH customers;
//! DROP IDENTITY GRAPH [IF EXISTS] customers;
//!
//! CREATE [OR REPLACE] SEGMENT [IF NOT EXISTS] high_value
//!   [REFRESH EVERY '5 minutes' | REFRESH CRON '0 6 * * *']
//!   AS SELECT profile_id FROM profiles WHERE lifetime_value > 500;
//! CREATE [OR REPLACE] MATERIALIZED VIEW [IF NOT EXISTS] name [REFRESH …] AS query;
//! REFRESH SEGMENT high_value;            REFRESH MATERIALIZED VIEW name;
//! DROP SEGMENT [IF EXISTS] high_value;   DROP MATERIALIZED VIEW [IF EXISTS] name;
//!
//! CREATE [OR REPLACE] TRIGGER [IF NOT EXISTS] welcome EVERY '1 minute' CHANNEL email
//!   [WITH (cap = '1 per 7 days', holdout = '10%', require = 'first_name', priority = 5, …)]
//!   AS SELECT profile_id, first_name FROM …;
//! REFRESH TRIGGER welcome;   EXPLAIN TRIGGER welcome;   DROP TRIGGER [IF EXISTS] welcome;
//! FORGET PROFILE 'p_…' [IN customers];
//! ```
//!
//! [`parse`] answers `Ok(None)` for anything else, which then goes to DataFusion unchanged.

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::SetExpr;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Word};

pub use crate::refresh::schedule::Schedule;

/// A statement c360 executes itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    CreateIdentityGraph(IdentityGraphDefinition),
    RefreshIdentityGraph {
        name: String,
    },
    DropIdentityGraph {
        name: String,
        if_exists: bool,
    },
    CreateQuery(QueryDefinition),
    RefreshQuery {
        kind: QueryKind,
        name: String,
    },
    DropQuery {
        kind: QueryKind,
        name: String,
        if_exists: bool,
    },
    /// A dry run of a trigger: what would fire and what would be suppressed, and why.
    ExplainTrigger {
        name: String,
    },
    /// Erase a person's landed records (see `erasure.rs`).
    ForgetProfile {
        profile_id: String,
        graph: Option<String>,
    },
}

/// The kinds of named, refreshed queries (see `refresh`): one mechanism, several uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryKind {
    MaterializedView,
    Segment,
    Trigger,
}

impl QueryKind {
    /// As written in SQL: `MATERIALIZED VIEW`, `SEGMENT`.
    pub fn sql_name(self) -> &'static str {
        match self {
            QueryKind::MaterializedView => "materialized view",
            QueryKind::Segment => "segment",
            QueryKind::Trigger => "trigger",
        }
    }

    fn keywords(self) -> &'static [&'static str] {
        match self {
            QueryKind::MaterializedView => &["MATERIALIZED", "VIEW"],
            QueryKind::Segment => &["SEGMENT"],
            QueryKind::Trigger => &["TRIGGER"],
        }
    }
}

const QUERY_KINDS: [QueryKind; 3] = [
    QueryKind::MaterializedView,
    QueryKind::Segment,
    QueryKind::Trigger,
];

/// `CREATE SEGMENT` / `CREATE MATERIALIZED VIEW`, as written.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueryDefinition {
    pub kind: QueryKind,
    pub name: String,
    /// The query's SQL text, exactly as written after `AS`.
    pub query: String,
    pub schedule: Option<Schedule>,
    /// A trigger's channel (`email`, `sms`, `push`, `webhook`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// A trigger's policy options, as written in `WITH (…)`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    #[serde(skip)]
    pub or_replace: bool,
    #[serde(skip)]
    pub if_not_exists: bool,
}

/// `CREATE IDENTITY GRAPH`, as written: the rules are validated by the identity module.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IdentityGraphDefinition {
    pub name: String,
    /// The view or table with `(record_key, id_type, id_value, seen_at)` rows.
    pub source: String,
    /// Option name → value, as written in `WITH (…)`.
    pub options: BTreeMap<String, String>,
    /// Refresh period, from `EVERY '…'`.
    pub every: Option<Duration>,
    #[serde(skip)]
    pub or_replace: bool,
    #[serde(skip)]
    pub if_not_exists: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct DdlError(pub String);

impl From<ParserError> for DdlError {
    fn from(e: ParserError) -> Self {
        DdlError(e.to_string())
    }
}

/// Recognises and parses one of c360's statements; `Ok(None)` when `sql` is not one.
pub fn parse(sql: &str) -> Result<Option<Statement>, DdlError> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect).try_with_sql(sql)?;
    let statement = if word_is(&parser, 0, "CREATE") {
        let or_replace = word_is(&parser, 1, "OR") && word_is(&parser, 2, "REPLACE");
        let at = if or_replace { 3 } else { 1 };
        if let Some(kind) = kind_at(&parser, at) {
            for _ in 0..at + kind.keywords().len() {
                parser.next_token();
            }
            return parse_create_query(sql, parser, kind, or_replace).map(Some);
        }
        if !(word_is(&parser, at, "IDENTITY") && word_is(&parser, at + 1, "GRAPH")) {
            return Ok(None);
        }
        for _ in 0..at + 2 {
            parser.next_token();
        }
        let if_not_exists = words(&mut parser, &["IF", "NOT", "EXISTS"]);
        let name = parse_name(&mut parser)?;
        expect_word(&mut parser, "FROM")?;
        let source = parse_name(&mut parser)?;
        let options = if words(&mut parser, &["WITH"]) {
            parse_options(&mut parser)?
        } else {
            BTreeMap::new()
        };
        let every = if words(&mut parser, &["EVERY"]) {
            Some(parse_interval(&parser.parse_literal_string()?)?)
        } else {
            None
        };
        Statement::CreateIdentityGraph(IdentityGraphDefinition {
            name,
            source,
            options,
            every,
            or_replace,
            if_not_exists,
        })
    } else if word_is(&parser, 0, "REFRESH")
        && word_is(&parser, 1, "IDENTITY")
        && word_is(&parser, 2, "GRAPH")
    {
        words(&mut parser, &["REFRESH", "IDENTITY", "GRAPH"]);
        Statement::RefreshIdentityGraph {
            name: parse_name(&mut parser)?,
        }
    } else if word_is(&parser, 0, "DROP")
        && word_is(&parser, 1, "IDENTITY")
        && word_is(&parser, 2, "GRAPH")
    {
        words(&mut parser, &["DROP", "IDENTITY", "GRAPH"]);
        let if_exists = words(&mut parser, &["IF", "EXISTS"]);
        Statement::DropIdentityGraph {
            name: parse_name(&mut parser)?,
            if_exists,
        }
    } else if let (true, Some(kind)) = (word_is(&parser, 0, "REFRESH"), kind_at(&parser, 1)) {
        for _ in 0..1 + kind.keywords().len() {
            parser.next_token();
        }
        Statement::RefreshQuery {
            kind,
            name: parse_name(&mut parser)?,
        }
    } else if word_is(&parser, 0, "EXPLAIN") && word_is(&parser, 1, "TRIGGER") {
        words(&mut parser, &["EXPLAIN", "TRIGGER"]);
        Statement::ExplainTrigger {
            name: parse_name(&mut parser)?,
        }
    } else if let (true, Some(kind)) = (word_is(&parser, 0, "DROP"), kind_at(&parser, 1)) {
        for _ in 0..1 + kind.keywords().len() {
            parser.next_token();
        }
        let if_exists = words(&mut parser, &["IF", "EXISTS"]);
        Statement::DropQuery {
            kind,
            name: parse_name(&mut parser)?,
            if_exists,
        }
    } else if word_is(&parser, 0, "FORGET") && word_is(&parser, 1, "PROFILE") {
        words(&mut parser, &["FORGET", "PROFILE"]);
        let found = parser.next_token();
        let Token::SingleQuotedString(profile_id) = found.token else {
            return Err(DdlError(format!(
                "expected the profile id as a quoted string, found {} at {}",
                found.token, found.span.start
            )));
        };
        let graph = if words(&mut parser, &["IN"]) {
            Some(parse_name(&mut parser)?)
        } else {
            None
        };
        Statement::ForgetProfile { profile_id, graph }
    } else {
        return Ok(None);
    };
    expect_end(&mut parser)?;
    Ok(Some(statement))
}

fn expect_end(parser: &mut Parser) -> Result<(), DdlError> {
    let _ = parser.consume_token(&Token::SemiColon);
    let rest = parser.peek_token();
    if rest.token != Token::EOF {
        return Err(DdlError(format!(
            "unexpected {} after the end of the statement at {}",
            rest.token, rest.span.start
        )));
    }
    Ok(())
}

/// The kind of named query whose keywords start at token `at`, if any.
fn kind_at(parser: &Parser, at: usize) -> Option<QueryKind> {
    QUERY_KINDS.into_iter().find(|kind| {
        kind.keywords()
            .iter()
            .enumerate()
            .all(|(i, word)| word_is(parser, at + i, word))
    })
}

/// The rest of `CREATE … SEGMENT|MATERIALIZED VIEW`: `[IF NOT EXISTS] name [REFRESH EVERY
/// '…' | REFRESH CRON '…'] AS query`. The query is kept as written, so that what `segments`
/// shows and what is stored is what the analyst typed.
fn parse_create_query(
    sql: &str,
    mut parser: Parser,
    kind: QueryKind,
    or_replace: bool,
) -> Result<Statement, DdlError> {
    let if_not_exists = words(&mut parser, &["IF", "NOT", "EXISTS"]);
    let name = parse_name(&mut parser)?;
    // Triggers read `EVERY '…'` as the issue of a schedule is their point; `REFRESH` is
    // accepted before it everywhere.
    let refresh = words(&mut parser, &["REFRESH"]);
    let schedule = if words(&mut parser, &["EVERY"]) {
        Some(Schedule::every(&parser.parse_literal_string()?)?)
    } else if words(&mut parser, &["CRON"]) {
        Some(Schedule::cron(&parser.parse_literal_string()?)?)
    } else if refresh {
        return Err(DdlError(format!(
            "{} {name}: expected EVERY or CRON after REFRESH",
            kind.sql_name()
        )));
    } else {
        None
    };
    let (channel, options) = if kind == QueryKind::Trigger {
        if !words(&mut parser, &["CHANNEL"]) {
            return Err(DdlError(format!(
                "trigger {name}: expected CHANNEL email|sms|push|webhook"
            )));
        }
        let channel = parse_name(&mut parser)?;
        let options = if words(&mut parser, &["WITH"]) {
            parse_options(&mut parser)?
        } else {
            BTreeMap::new()
        };
        (Some(channel), options)
    } else {
        (None, BTreeMap::new())
    };
    expect_word(&mut parser, "AS")?;
    let start = parser.peek_token().span.start;
    if parser.peek_token().token == Token::EOF {
        return Err(DdlError(format!(
            "{} {name}: expected a query after AS",
            kind.sql_name()
        )));
    }
    // Refuses anything but a query (INSERT, DDL …) here, with the parser's own message.
    let not_a_query = |reason: String| {
        DdlError(format!(
            "{} {name} must be defined by a query (SELECT, VALUES, WITH …): {reason}",
            kind.sql_name()
        ))
    };
    let query = parser
        .parse_query()
        .map_err(|e| not_a_query(e.to_string()))?;
    if matches!(
        *query.body,
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
    ) {
        return Err(not_a_query("it writes".into()));
    }
    expect_end(&mut parser)?;
    let query = sql[byte_offset(sql, start)..]
        .trim()
        .trim_end_matches(';')
        .trim_end()
        .to_string();
    Ok(Statement::CreateQuery(QueryDefinition {
        kind,
        name,
        query,
        schedule,
        channel,
        options,
        or_replace,
        if_not_exists,
    }))
}

/// The byte offset of a token's (1-based line, 1-based character column) location.
fn byte_offset(sql: &str, location: Location) -> usize {
    let mut line = 1;
    let mut column = 1;
    for (offset, c) in sql.char_indices() {
        if line == location.line && column == location.column {
            return offset;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    sql.len()
}

fn word_is(parser: &Parser, nth: usize, expected: &str) -> bool {
    matches!(&parser.peek_nth_token(nth).token, Token::Word(Word { value, quote_style: None, .. }) if value.eq_ignore_ascii_case(expected))
}

/// Consumes `expected` words if they all come next; consumes nothing otherwise.
fn words(parser: &mut Parser, expected: &[&str]) -> bool {
    let all = expected
        .iter()
        .enumerate()
        .all(|(i, word)| word_is(parser, i, word));
    if all {
        for _ in expected {
            parser.next_token();
        }
    }
    all
}

fn expect_word(parser: &mut Parser, expected: &str) -> Result<(), DdlError> {
    if words(parser, &[expected]) {
        Ok(())
    } else {
        let found = parser.peek_token();
        Err(DdlError(format!(
            "expected {expected}, found {} at {}",
            found.token, found.span.start
        )))
    }
}

/// A table-like name: lower-cased unless quoted, as Postgres does.
fn parse_name(parser: &mut Parser) -> Result<String, DdlError> {
    let ident = parser.parse_identifier()?;
    Ok(match ident.quote_style {
        Some(_) => ident.value,
        None => ident.value.to_lowercase(),
    })
}

/// `( name = 'value' | number | word, … )`
fn parse_options(parser: &mut Parser) -> Result<BTreeMap<String, String>, DdlError> {
    parser.expect_token(&Token::LParen)?;
    let mut options = BTreeMap::new();
    loop {
        let name = parse_name(parser)?;
        parser.expect_token(&Token::Eq)?;
        let value = parser.next_token();
        let value = match value.token {
            Token::SingleQuotedString(s) => s,
            Token::Number(n, _) => n,
            Token::Word(w) => w.value,
            other => {
                return Err(DdlError(format!(
                    "option {name}: expected a quoted string or a number, found {other} at {}",
                    value.span.start
                )));
            }
        };
        if options.insert(name.clone(), value).is_some() {
            return Err(DdlError(format!("option {name} is given twice")));
        }
        if parser.consume_token(&Token::RParen) {
            return Ok(options);
        }
        parser.expect_token(&Token::Comma)?;
    }
}

/// `'30 seconds'`, `'5 minutes'`, `'1 hour'`, `'2 days'`, `'90s'`, `'5m'`, `'1h'`.
pub fn parse_interval(text: &str) -> Result<Duration, DdlError> {
    let bad = || {
        DdlError(format!(
            "cannot read '{text}' as an interval: write e.g. '30 seconds', '5 minutes', '1 hour', '1 day'"
        ))
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let count: u64 = number.parse().map_err(|_| bad())?;
    let seconds_per_unit = match unit.trim().to_ascii_lowercase().as_str() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3_600,
        "d" | "day" | "days" => 86_400,
        _ => return Err(bad()),
    };
    if count == 0 {
        return Err(DdlError(format!(
            "interval '{text}' must be longer than zero"
        )));
    }
    count
        .checked_mul(seconds_per_unit)
        .map(Duration::from_secs)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_sql_is_not_ours() {
        for sql in [
            "SELECT 1",
            "CREATE VIEW v AS SELECT 1",
            "CREATE TABLE graph (x int)",
            "DROP VIEW v",
        ] {
            assert_eq!(parse(sql).unwrap(), None, "{sql}");
        }
    }

    #[test]
    fn create_identity_graph_with_everything() {
        let sql = "create or replace identity graph Customers from identifiers with (\n\
                   priority = 'user_id, email', limits = 'user_id: 1', hub_threshold = 10)\n\
                   every '5 minutes';";
        let Some(Statement::CreateIdentityGraph(def)) = parse(sql).unwrap() else {
            panic!("not parsed as CREATE IDENTITY GRAPH");
        };
        assert_eq!(def.name, "customers");
        assert_eq!(def.source, "identifiers");
        assert!(def.or_replace && !def.if_not_exists);
        assert_eq!(def.options["priority"], "user_id, email");
        assert_eq!(def.options["hub_threshold"], "10");
        assert_eq!(def.every, Some(Duration::from_secs(300)));
    }

    #[test]
    fn refresh_and_drop() {
        assert_eq!(
            parse("REFRESH IDENTITY GRAPH customers").unwrap(),
            Some(Statement::RefreshIdentityGraph {
                name: "customers".into()
            })
        );
        assert_eq!(
            parse("drop identity graph if exists customers").unwrap(),
            Some(Statement::DropIdentityGraph {
                name: "customers".into(),
                if_exists: true
            })
        );
    }

    #[test]
    fn forget_profile_with_and_without_a_graph() {
        assert_eq!(
            parse("FORGET PROFILE 'p_1'").unwrap(),
            Some(Statement::ForgetProfile {
                profile_id: "p_1".into(),
                graph: None
            })
        );
        assert_eq!(
            parse("forget profile 'p_1' in Customers;").unwrap(),
            Some(Statement::ForgetProfile {
                profile_id: "p_1".into(),
                graph: Some("customers".into())
            })
        );
        let err = parse("FORGET PROFILE p_1").unwrap_err();
        assert!(err.0.contains("quoted string"), "{err}");
    }

    #[test]
    fn malformed_statements_say_what_is_wrong() {
        let err = parse("CREATE IDENTITY GRAPH g identifiers").unwrap_err();
        assert!(err.0.contains("expected FROM"), "{err}");
        let err = parse("CREATE IDENTITY GRAPH g FROM v WITH (a = 1, a = 2)").unwrap_err();
        assert!(err.0.contains("given twice"), "{err}");
        let err = parse("CREATE IDENTITY GRAPH g FROM v EVERY 'often'").unwrap_err();
        assert!(err.0.contains("'often'"), "{err}");
        let err = parse("REFRESH IDENTITY GRAPH g extra").unwrap_err();
        assert!(err.0.contains("unexpected"), "{err}");
    }

    #[test]
    fn segments_and_materialized_views() {
        let sql = "CREATE OR REPLACE SEGMENT High_Value REFRESH EVERY '5 minutes' AS\n  \
                   SELECT profile_id FROM profiles WHERE lifetime_value > 500;";
        let Some(Statement::CreateQuery(def)) = parse(sql).unwrap() else {
            panic!("not parsed as CREATE SEGMENT");
        };
        assert_eq!(def.kind, QueryKind::Segment);
        assert_eq!(def.name, "high_value");
        assert!(def.or_replace);
        assert_eq!(
            def.query,
            "SELECT profile_id FROM profiles WHERE lifetime_value > 500"
        );
        assert_eq!(def.schedule, Some(Schedule::every("5 minutes").unwrap()));

        let Some(Statement::CreateQuery(def)) = parse(
            "create materialized view if not exists mv refresh cron '0 6 * * *' as with x as (select 1 as a) select * from x",
        )
        .unwrap() else {
            panic!("not parsed as CREATE MATERIALIZED VIEW");
        };
        assert_eq!(def.kind, QueryKind::MaterializedView);
        assert!(def.if_not_exists && !def.or_replace);
        assert_eq!(def.query, "with x as (select 1 as a) select * from x");
        assert_eq!(def.schedule, Some(Schedule::cron("0 6 * * *").unwrap()));

        assert_eq!(
            parse("REFRESH MATERIALIZED VIEW mv").unwrap(),
            Some(Statement::RefreshQuery {
                kind: QueryKind::MaterializedView,
                name: "mv".into()
            })
        );
        assert_eq!(
            parse("drop segment if exists s").unwrap(),
            Some(Statement::DropQuery {
                kind: QueryKind::Segment,
                name: "s".into(),
                if_exists: true
            })
        );
        let err = parse("CREATE SEGMENT s AS DELETE FROM profiles").unwrap_err();
        assert!(err.0.contains("must be defined by a query"), "{err}");
        let err = parse("CREATE SEGMENT s AS").unwrap_err();
        assert!(err.0.contains("expected a query"), "{err}");
        let err = parse("CREATE SEGMENT s SELECT 1").unwrap_err();
        assert!(err.0.contains("expected AS"), "{err}");
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("1 second").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_interval("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_interval(" 2 Hours ").unwrap(),
            Duration::from_secs(7200)
        );
        assert!(parse_interval("0 minutes").is_err());
        assert!(parse_interval("5 fortnights").is_err());
        assert!(parse_interval("").is_err());
    }
}
