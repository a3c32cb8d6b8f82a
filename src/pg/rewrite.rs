//! Rewrites of clients' catalog queries that DataFusion cannot plan as written.
//!
//! Drivers' reflection queries (SQLAlchemy's `get_columns`, pgjdbc's `getColumns`) read a
//! column's default or type details with correlated scalar subqueries such as
//! `(SELECT typcollation FROM pg_type WHERE pg_type.oid = attribute.atttypid)`. DataFusion
//! only decorrelates scalar subqueries that aggregate, so such a subquery over a `pg_catalog`
//! table gets its one column wrapped in `max(…)`: the same answer when the subquery has at
//! most one row, which these lookups by key have. Queries over users' tables are left alone,
//! so that they keep PostgreSQL's error for a subquery returning several rows.
//!
//! DataFusion also cannot decorrelate a subquery whose WHERE has a condition on the outer
//! row only (`WHERE attribute.atthasdef AND …`); such conditions move out, as
//! `CASE WHEN outer_condition THEN (subquery) END`, which is the same for an aggregate that
//! is NULL over no rows. And `pg_get_serial_sequence(…)` is NULL: c360 has no sequences, and
//! the regclass cast around it would nest one more correlated subquery; for the same reason a
//! subquery over `pg_sequence`, which is always empty, is NULL. What is replaced by NULL keeps
//! its parameters (`$n IS NULL`), so that the numbering of the others does not shift.
//! psql's `\d+` joins storage options (`reloptions`) that no c360 relation has: the empty
//! string PostgreSQL prints for them. `pg_get_viewdef(oid)` becomes a lookup in `pg_views`.
//!
//! `ARRAY(subquery)`, which DataFusion does not know, becomes an `array_agg` subquery: psql's
//! `\du` lists a role's memberships so, and `\dp` a relation's column privileges and policies
//! (of which c360 has none, nor per-relation privileges: `relacl` reads NULL, and a lookup in
//! `pg_policy` a NULL list). Over no rows it is an empty array, as in PostgreSQL.

use std::ops::ControlFlow;

use std::collections::HashSet;

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, FunctionArguments, GroupByExpr, Query, SelectItem, SetExpr, Statement,
    TableFactor, visit_expressions, visit_expressions_mut, visit_relations,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// Names a query's unnamed result columns as PostgreSQL does, where DataFusion would name
/// them after the whole expression: `count(*)` is `count`, `lower(name)` is `lower`, `1` and
/// `a + b` are `?column?`, `CASE …` is `case`. BI tools show these names as headers, and
/// clients look columns up by them. A name that would repeat another column's is left as
/// DataFusion has it (DataFusion refuses duplicate names), as is every name in a `SELECT *`.
pub fn postgres_column_names(statement: &mut Statement) -> bool {
    let Statement::Query(query) = statement else {
        return false;
    };
    let mut body = query.body.as_mut();
    // The leftmost SELECT of a UNION names its columns.
    while let SetExpr::SetOperation { left, .. } = body {
        body = left.as_mut();
    }
    let SetExpr::Select(select) = body else {
        return false;
    };
    if select.projection.iter().any(|item| {
        !matches!(
            item,
            SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }
        )
    }) {
        return false;
    }
    let existing: Vec<Option<String>> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
            SelectItem::UnnamedExpr(Expr::Identifier(ident)) => Some(ident.value.clone()),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
                parts.last().map(|p| p.value.clone())
            }
            _ => None,
        })
        .collect();
    let mut taken: HashSet<String> = existing.iter().flatten().cloned().collect();
    let mut changed = false;
    for item in &mut select.projection {
        let SelectItem::UnnamedExpr(expr) = item else {
            continue;
        };
        let Some(name) = figure_column_name(expr) else {
            continue;
        };
        if !taken.insert(name.clone()) {
            continue;
        }
        *item = SelectItem::ExprWithAlias {
            expr: expr.clone(),
            alias: datafusion::sql::sqlparser::ast::Ident::with_quote('"', name),
        };
        changed = true;
    }
    changed
}

/// PostgreSQL's FigureColname for the expressions whose names differ from DataFusion's;
/// `None` where DataFusion's name is already PostgreSQL's (columns, casts of columns).
fn figure_column_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) => None,
        Expr::Nested(inner) => figure_column_name(inner),
        Expr::Cast { expr, .. } => match expr.as_ref() {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => None,
            inner => figure_column_name(inner),
        },
        Expr::Function(function) => function
            .name
            .0
            .last()
            .map(|part| part.to_string().trim_matches('"').to_ascii_lowercase()),
        Expr::Case { .. } => Some("case".to_string()),
        Expr::Value(_)
        | Expr::BinaryOp { .. }
        | Expr::UnaryOp { .. }
        | Expr::IsNull(_)
        | Expr::IsNotNull(_)
        | Expr::Like { .. }
        | Expr::ILike { .. }
        | Expr::Between { .. }
        | Expr::InList { .. } => Some("?column?".to_string()),
        _ => None,
    }
}

/// Rewrites `statement` in place; true when anything changed.
pub fn catalog_subqueries(statement: &mut Statement) -> bool {
    let mut changed = false;
    let _ = visit_expressions_mut(statement, |expr| {
        // pg_policy is always empty in c360 (no row security): psql's `\dp` lists a
        // relation's policies from it (as an `ARRAY(subquery)`), which is a list of none.
        if subquery_of(expr).is_some_and(|query| reads_relation(query, "pg_policy"))
            && let Ok(none) = parse_expr("CAST(NULL AS TEXT[])")
        {
            *expr = none;
            changed = true;
        }
        if let Some(aggregated) = array_of_subquery(expr) {
            *expr = aggregated;
            changed = true;
        }
        if call_of(expr, "pg_get_serial_sequence").is_some() {
            *expr = null_keeping_parameters(expr);
            changed = true;
        }
        // c360's relations have no storage options, so psql's `\d+` line joining a table's
        // and its TOAST table's `reloptions` (an `ARRAY(subquery)`, which DataFusion cannot
        // plan, over a column pg_class does not have) is the empty string PostgreSQL prints.
        if call_of(expr, "array_to_string").is_some() && names_column(expr, "reloptions") {
            *expr = Expr::value(datafusion::sql::sqlparser::ast::Value::SingleQuotedString(
                String::new(),
            ));
            changed = true;
        }
        // A view's definition is looked up by its oid in `pg_views` (which c360 fills, see
        // `catalog_rows`): DataFusion has no oid of its own to resolve. The aliases are ones
        // no client uses, so that `pg_get_viewdef(c.oid)` still means the caller's `c`. The
        // lookup is passed to `pg_get_viewdef(text)`, which returns it: the column keeps its
        // name, and datafusion-pg-catalog, which empties correlated subqueries standing
        // alone in a select list, leaves it be.
        if let Some(function) = call_of(expr, "pg_get_viewdef")
            && let Some(oid) = first_argument(function)
            && !matches!(oid, Expr::Subquery(_))
            && let Ok(lookup) = parse_expr(&format!(
                "pg_catalog.pg_get_viewdef((SELECT max(c360_view.definition) FROM pg_catalog.pg_views c360_view \
                 JOIN pg_catalog.pg_namespace c360_ns ON c360_ns.nspname = c360_view.schemaname \
                 JOIN pg_catalog.pg_class c360_rel ON c360_rel.relnamespace = c360_ns.oid \
                 AND c360_rel.relname = c360_view.viewname WHERE c360_rel.oid = {oid}))"
            ))
        {
            *expr = lookup;
            changed = true;
        }
        // Access privileges (`proacl`, `relacl`, …) are text in datafusion-pg-catalog, not
        // arrays (and NULL: c360 grants by role, not per object); psql's `\df+` and `\dp`
        // join them into lines, which for text is the text itself.
        if let Some(function) = call_of(expr, "array_to_string")
            && let Some(privileges @ (Expr::Identifier(_) | Expr::CompoundIdentifier(_))) =
                first_argument(function)
            && privileges.to_string().to_ascii_lowercase().ends_with("acl")
        {
            *expr = privileges.clone();
            changed = true;
        }
        // pg_sequence is always empty in c360, so any lookup in it is NULL.
        if let Expr::Subquery(query) = expr
            && reads_relation(query, "pg_sequence")
        {
            *expr = null_keeping_parameters(expr);
            changed = true;
        }
        ControlFlow::<()>::Continue(())
    });
    // Any other reading of `pg_class.reloptions` (psql's `\sv` strips check options out of
    // it) reads NULL: no c360 relation has options.
    if reads_pg_class(statement) {
        let _ = visit_expressions_mut(statement, |expr| {
            let name = match &*expr {
                Expr::Identifier(ident) => Some(ident),
                Expr::CompoundIdentifier(parts) => parts.last(),
                _ => None,
            };
            let is_named =
                |column: &str| name.is_some_and(|ident| ident.value.eq_ignore_ascii_case(column));
            let null = if is_named("reloptions") {
                parse_expr("CAST(NULL AS TEXT[])").ok()
            } else if is_named("relacl") {
                parse_expr("CAST(NULL AS TEXT)").ok()
            } else {
                None
            };
            if let Some(null) = null {
                *expr = null;
                changed = true;
            }
            ControlFlow::<()>::Continue(())
        });
    }
    let _ = visit_expressions_mut(statement, |expr| {
        if let Expr::Subquery(query) = expr
            && aggregate_lookup(query)
        {
            changed = true;
            if let Some(condition) = hoist_outer_conditions(query)
                && let Ok(case) = parse_expr(&format!(
                    "CASE WHEN {condition} THEN ({query}) ELSE NULL END"
                ))
            {
                *expr = case;
            }
        }
        ControlFlow::<()>::Continue(())
    });
    changed
}

/// `ARRAY(SELECT x FROM … [ORDER BY …])` as
/// `coalesce((SELECT array_agg(x [ORDER BY …]) FROM …), make_array())`: a scalar subquery,
/// which DataFusion can decorrelate; `ORDER BY 1` orders by `x`. `None` for anything else,
/// and for a subquery that groups, is DISTINCT or has a LIMIT.
fn array_of_subquery(expr: &Expr) -> Option<Expr> {
    use datafusion::sql::sqlparser::ast::{OrderByKind, Value};
    let Expr::Function(function) = expr else {
        return None;
    };
    let FunctionArguments::Subquery(query) = &function.args else {
        return None;
    };
    if !function.name.to_string().eq_ignore_ascii_case("array")
        || query.limit_clause.is_some()
        || query.fetch.is_some()
        || query.with.is_some()
    {
        return None;
    }
    let mut query = query.clone();
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(by, _) if by.is_empty());
    if grouped || select.distinct.is_some() || select.having.is_some() {
        return None;
    }
    let [item] = select.projection.as_slice() else {
        return None;
    };
    let element = match item {
        SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => expr.clone(),
        _ => return None,
    };
    let order = match query.order_by.take().map(|order| order.kind) {
        None => String::new(),
        Some(OrderByKind::Expressions(mut by)) => {
            for key in &mut by {
                if matches!(&key.expr, Expr::Value(v) if v.value == Value::Number("1".into(), false))
                {
                    key.expr = element.clone();
                }
            }
            let by: Vec<String> = by.iter().map(ToString::to_string).collect();
            format!(" ORDER BY {}", by.join(", "))
        }
        Some(OrderByKind::All(_)) => return None,
    };
    let aggregated = parse_expr(&format!("array_agg({element}{order})")).ok()?;
    select.projection = vec![SelectItem::UnnamedExpr(aggregated)];
    // array_agg over no rows is NULL; ARRAY() over none is an empty array.
    parse_expr(&format!("coalesce(({query}), make_array())")).ok()
}

/// The query of a scalar subquery or of an `ARRAY(subquery)`.
fn subquery_of(expr: &Expr) -> Option<&Query> {
    match expr {
        Expr::Subquery(query) => Some(query),
        Expr::Function(function) => match &function.args {
            FunctionArguments::Subquery(query) => Some(query),
            _ => None,
        },
        _ => None,
    }
}

fn reads_pg_class(statement: &Statement) -> bool {
    let found = visit_relations(statement, |name| {
        if name
            .0
            .last()
            .is_some_and(|last| last.to_string().eq_ignore_ascii_case("pg_class"))
        {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    found.is_break()
}

/// The call `expr` is, if it calls the function `name` (qualified or not).
fn call_of<'e>(
    expr: &'e Expr,
    name: &str,
) -> Option<&'e datafusion::sql::sqlparser::ast::Function> {
    match expr {
        Expr::Function(function)
            if function
                .name
                .to_string()
                .to_ascii_lowercase()
                .ends_with(name) =>
        {
            Some(function)
        }
        _ => None,
    }
}

/// A function call's first positional argument.
fn first_argument(function: &datafusion::sql::sqlparser::ast::Function) -> Option<&Expr> {
    use datafusion::sql::sqlparser::ast::{FunctionArg, FunctionArgExpr};
    let FunctionArguments::List(list) = &function.args else {
        return None;
    };
    match list.args.first()? {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => Some(expr),
        _ => None,
    }
}

/// NULL, still naming the parameters `expr` had, each with the cast it had.
fn null_keeping_parameters(expr: &Expr) -> Expr {
    use datafusion::sql::sqlparser::ast::Value;
    let is_parameter =
        |e: &Expr| matches!(e, Expr::Value(v) if matches!(v.value, Value::Placeholder(_)));
    let mut cast = Vec::new();
    let _ = visit_expressions(expr, |e| {
        if let Expr::Cast { expr: inner, .. } = e
            && is_parameter(inner)
        {
            cast.push((inner.to_string(), e.to_string()));
        }
        ControlFlow::<()>::Continue(())
    });
    let mut kept: Vec<String> = cast
        .iter()
        .map(|(_, text)| format!("{text} IS NULL"))
        .collect();
    let _ = visit_expressions(expr, |e| {
        if is_parameter(e) && !cast.iter().any(|(name, _)| *name == e.to_string()) {
            kept.push(format!("{e} IS NULL"));
        }
        ControlFlow::<()>::Continue(())
    });
    let null = Expr::value(Value::Null);
    if kept.is_empty() {
        return null;
    }
    parse_expr(&format!("CASE WHEN {} THEN NULL END", kept.join(" AND "))).unwrap_or(null)
}

/// Whether `expr` reads a column called `column`, qualified or not.
fn names_column(expr: &Expr, column: &str) -> bool {
    let mut found = false;
    let _ = visit_expressions(expr, |e| {
        let name = match e {
            Expr::Identifier(ident) => Some(ident),
            Expr::CompoundIdentifier(parts) => parts.last(),
            _ => None,
        };
        found |= name.is_some_and(|ident| ident.value.eq_ignore_ascii_case(column));
        ControlFlow::<()>::Continue(())
    });
    found
}

fn reads_relation(query: &Query, relation_name: &str) -> bool {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    select.from.iter().any(|from| {
        std::iter::once(&from.relation)
            .chain(from.joins.iter().map(|join| &join.relation))
            .any(|relation| match relation {
                TableFactor::Table { name, .. } => name
                    .0
                    .last()
                    .is_some_and(|last| last.to_string().eq_ignore_ascii_case(relation_name)),
                _ => false,
            })
    })
}

fn parse_expr(text: &str) -> Result<Expr, datafusion::sql::sqlparser::parser::ParserError> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .and_then(|mut parser| parser.parse_expr())
}

/// Takes the WHERE conditions of `query` that only name relations from outside it, and
/// gives them back ANDed.
fn hoist_outer_conditions(query: &mut Query) -> Option<String> {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return None;
    };
    let mut local = HashSet::new();
    for from in &select.from {
        for relation in
            std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation))
        {
            if let TableFactor::Table { name, alias, .. } = relation {
                local.insert(name.to_string().to_ascii_lowercase());
                if let Some(last) = name.0.last() {
                    local.insert(last.to_string().to_ascii_lowercase());
                }
                if let Some(alias) = alias {
                    local.insert(alias.name.value.to_ascii_lowercase());
                }
            }
        }
    }
    let selection = select.selection.take()?;
    let mut conjuncts = Vec::new();
    split_and(selection, &mut conjuncts);
    let (outer, inner): (Vec<Expr>, Vec<Expr>) = conjuncts
        .into_iter()
        .partition(|conjunct| outer_only(conjunct, &local));
    select.selection = inner.into_iter().reduce(|a, b| Expr::BinaryOp {
        left: Box::new(a),
        op: BinaryOperator::And,
        right: Box::new(b),
    });
    if outer.is_empty() {
        return None;
    }
    let texts: Vec<String> = outer.iter().map(|c| format!("({c})")).collect();
    Some(texts.join(" AND "))
}

fn split_and(expr: Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(*left, out);
            split_and(*right, out);
        }
        Expr::Nested(inner)
            if matches!(
                *inner,
                Expr::BinaryOp {
                    op: BinaryOperator::And,
                    ..
                }
            ) =>
        {
            split_and(*inner, out)
        }
        other => out.push(other),
    }
}

/// True when every column `expr` names is qualified by a relation not in `local`.
fn outer_only(expr: &Expr, local: &HashSet<String>) -> bool {
    let mut columns = 0;
    let mut outer = true;
    let _ = visit_expressions(expr, |e| {
        match e {
            Expr::Identifier(_)
            | Expr::Subquery(_)
            | Expr::Exists { .. }
            | Expr::InSubquery { .. } => outer = false,
            Expr::CompoundIdentifier(parts) => {
                columns += 1;
                let qualifier = parts[..parts.len().saturating_sub(1)]
                    .iter()
                    .map(|p| p.value.to_ascii_lowercase())
                    .collect::<Vec<_>>();
                let full = qualifier.join(".");
                let last = qualifier.last().cloned().unwrap_or_default();
                if local.contains(&full) || local.contains(&last) {
                    outer = false;
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    outer && columns > 0
}

/// Wraps the single projected column of a catalog lookup subquery in `max`.
fn aggregate_lookup(query: &mut Query) -> bool {
    if query.limit_clause.is_some() || query.fetch.is_some() || query.with.is_some() {
        return false;
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return false;
    };
    let grouped = match &select.group_by {
        GroupByExpr::Expressions(expressions, _) => !expressions.is_empty(),
        GroupByExpr::All(_) => true,
    };
    if grouped || select.having.is_some() || select.distinct.is_some() {
        return false;
    }
    let reads_catalog = select.from.iter().any(|from| {
        std::iter::once(&from.relation)
            .chain(from.joins.iter().map(|join| &join.relation))
            .any(|relation| match relation {
                TableFactor::Table { name, .. } => {
                    let name = name.to_string().to_ascii_lowercase();
                    name.starts_with("pg_catalog.") || name.starts_with("pg_")
                }
                _ => false,
            })
    });
    let [item] = select.projection.as_mut_slice() else {
        return false;
    };
    if !reads_catalog {
        return false;
    }
    let expr = match item {
        SelectItem::UnnamedExpr(expr) => expr,
        SelectItem::ExprWithAlias { expr, .. } => expr,
        _ => return false,
    };
    if is_aggregate(expr) {
        return false;
    }
    let Ok(wrapped) = parse_expr(&format!("max({expr})")) else {
        return false;
    };
    *expr = wrapped;
    true
}

fn is_aggregate(expr: &Expr) -> bool {
    let Expr::Function(function) = expr else {
        return false;
    };
    let name = function.name.to_string().to_ascii_lowercase();
    matches!(
        name.as_str(),
        "max"
            | "min"
            | "count"
            | "sum"
            | "avg"
            | "array_agg"
            | "string_agg"
            | "bool_and"
            | "bool_or"
            | "json_agg"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> String {
        let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        catalog_subqueries(&mut statements[0]);
        statements[0].to_string()
    }

    #[test]
    fn catalog_lookups_are_aggregated() {
        assert_eq!(
            rewritten(
                "SELECT a.attname, (SELECT t.typcollation FROM pg_catalog.pg_type t \
                 WHERE t.oid = a.atttypid) AS c FROM pg_catalog.pg_attribute a"
            ),
            "SELECT a.attname, (SELECT max(t.typcollation) FROM pg_catalog.pg_type t \
             WHERE t.oid = a.atttypid) AS c FROM pg_catalog.pg_attribute a"
        );
    }

    #[test]
    fn outer_conditions_move_out_of_the_subquery() {
        assert_eq!(
            rewritten(
                "SELECT (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d \
                 WHERE a.atthasdef AND d.adrelid = a.attrelid) FROM pg_catalog.pg_attribute a"
            ),
            "SELECT CASE WHEN (a.atthasdef) THEN (SELECT max(pg_get_expr(d.adbin, d.adrelid)) \
             FROM pg_catalog.pg_attrdef d WHERE d.adrelid = a.attrelid) ELSE NULL END \
             FROM pg_catalog.pg_attribute a"
        );
    }

    #[test]
    fn columns_are_named_as_postgresql_names_them() {
        let named = |sql: &str| {
            let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
            postgres_column_names(&mut statements[0]);
            statements[0].to_string()
        };
        assert_eq!(
            named("SELECT 1, count(*), lower(s.name), s.city, a + b FROM s"),
            "SELECT 1 AS \"?column?\", count(*) AS \"count\", lower(s.name) AS \"lower\", \
             s.city, a + b FROM s"
        );
        // No duplicate names; SELECT * and aliases are left alone.
        assert_eq!(
            named("SELECT count(*), count(DISTINCT x) AS n, count(y) FROM t"),
            "SELECT count(*) AS \"count\", count(DISTINCT x) AS n, count(y) FROM t"
        );
        assert_eq!(
            named("SELECT *, count(*) FROM t"),
            "SELECT *, count(*) FROM t"
        );
    }

    #[test]
    fn view_definitions_are_looked_up_by_oid_once() {
        let once = rewritten(
            "SELECT c.relname, pg_catalog.pg_get_viewdef(c.oid, true) FROM pg_catalog.pg_class c",
        );
        assert!(
            once.contains("pg_catalog.pg_get_viewdef((SELECT max(c360_view.definition)"),
            "{once}"
        );
        // The caller's `c`, not the lookup's own pg_class.
        assert!(
            once.ends_with("WHERE c360_rel.oid = c.oid)) FROM pg_catalog.pg_class c"),
            "{once}"
        );
        assert_eq!(rewritten(&once), once);
    }

    #[test]
    fn view_options_and_privileges_read_as_nothing() {
        let sql = "SELECT pg_catalog.array_remove(c.reloptions, 'check_option=local'), \
                   pg_catalog.array_to_string(p.proacl, E'\\n') \
                   FROM pg_catalog.pg_class c, pg_catalog.pg_proc p";
        assert_eq!(
            rewritten(sql),
            "SELECT pg_catalog.array_remove(CAST(NULL AS TEXT[]), 'check_option=local'), \
             p.proacl FROM pg_catalog.pg_class c, pg_catalog.pg_proc p"
        );
    }

    #[test]
    fn storage_options_are_empty() {
        let sql = "SELECT c.relkind, pg_catalog.array_to_string(c.reloptions || array(select \
                   'toast.' || x from pg_catalog.unnest(tc.reloptions) x), ', ') \
                   FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_class tc \
                   ON (c.reltoastrelid = tc.oid) WHERE c.oid = '16384'";
        assert_eq!(
            rewritten(sql),
            "SELECT c.relkind, '' FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_class tc \
             ON (c.reltoastrelid = tc.oid) WHERE c.oid = '16384'"
        );
        // Other lists are still joined.
        let other = "SELECT array_to_string(make_array('a', 'b'), ', ')";
        let parsed = Parser::parse_sql(&PostgreSqlDialect {}, other).unwrap();
        assert_eq!(rewritten(other), parsed[0].to_string());
    }

    #[test]
    fn array_of_a_subquery_is_aggregated() {
        assert_eq!(
            rewritten(
                "SELECT r.rolname, ARRAY(SELECT b.rolname FROM pg_catalog.pg_auth_members m \
                 JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid) WHERE m.member = r.oid) \
                 AS memberof FROM pg_catalog.pg_roles r"
            ),
            "SELECT r.rolname, coalesce((SELECT array_agg(b.rolname) FROM \
             pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid) \
             WHERE m.member = r.oid), make_array()) AS memberof FROM pg_catalog.pg_roles r"
        );
        assert_eq!(
            rewritten("SELECT ARRAY(SELECT name FROM t ORDER BY 1 DESC)"),
            "SELECT coalesce((SELECT array_agg(name ORDER BY name DESC) FROM t), make_array())"
        );
        // A limit or a grouping would change what is aggregated: left as written.
        for sql in [
            "SELECT ARRAY(SELECT name FROM t LIMIT 2)",
            "SELECT ARRAY(SELECT name FROM t GROUP BY name)",
        ] {
            let parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
            assert_eq!(rewritten(sql), parsed[0].to_string(), "{sql}");
        }
    }

    #[test]
    fn user_queries_and_aggregates_are_left_alone() {
        for sql in [
            "SELECT (SELECT name FROM stores s WHERE s.store_id = p.last_store) FROM profiles p",
            "SELECT (SELECT count(*) FROM pg_class) AS n",
            "SELECT (SELECT relname FROM pg_class LIMIT 1)",
        ] {
            let parsed = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
            assert_eq!(rewritten(sql), parsed[0].to_string(), "{sql}");
        }
    }
}
