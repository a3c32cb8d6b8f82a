//! One session's queries, simple and extended: role checks on the parsed statement, c360's
//! own statements, `COPY … TO STDOUT`, and everything else through datafusion-postgres, with
//! the session's timeout, cancellation and SQLSTATEs around it.

use std::sync::Arc;

use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::{DfSessionService, Parser};
use futures::{Sink, SinkExt};
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{ClientInfo, ClientPortalStore, DEFAULT_NAME, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::extendedquery::{Bind, BindComplete};

use super::errors;
use super::limits::{self, QueryGuard};
use super::roles::{self, Role};
use super::{copy, lookup, rewrite, settings, transactions};
use crate::{Engine, ddl, workspace};

/// datafusion-postgres's prepared statement: the SQL, and its parsed form and plan (none for
/// c360's own statements and `COPY`, which are run from their text).
pub type Statement = (String, Option<(ast::Statement, LogicalPlan)>);

/// The query side of one connection.
pub struct Queries {
    engine: Arc<Engine>,
    /// The session's own context (its memory pool; see [`super::limits::session_context`]).
    ctx: Arc<SessionContext>,
    datafusion: Arc<DfSessionService>,
    parser: Arc<CheckedParser>,
    /// The `COPY … FROM STDIN` in progress, between its CopyInResponse and CopyDone.
    copy_in: std::sync::Mutex<Option<copy::CopyIn>>,
}

impl Queries {
    pub fn new(engine: Arc<Engine>, ctx: SessionContext) -> Queries {
        let ctx = Arc::new(ctx);
        let datafusion = Arc::new(DfSessionService::new(Arc::clone(&ctx)));
        let parser = Arc::new(CheckedParser {
            engine: Arc::clone(&engine),
            inner: ExtendedQueryHandler::query_parser(&*datafusion),
            sql: PostgresCompatibilityParser::new(),
        });
        Queries {
            engine,
            ctx,
            datafusion,
            parser,
            copy_in: std::sync::Mutex::new(None),
        }
    }

    /// Runs a parsed COPY: out, it streams rows (sending them itself when `first`); in, it
    /// starts a load and leaves the session in copy-in mode.
    async fn copy<C>(
        &self,
        client: &mut C,
        copy: PgWireResult<copy::Copy>,
        guard: &QueryGuard,
        first: bool,
    ) -> PgWireResult<Response>
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match copy? {
            copy::Copy::Out(out) if first => copy::send(client, &self.ctx, out, guard).await,
            copy::Copy::Out(out) => copy::execute(&self.ctx, out, guard).await,
            copy::Copy::In(request) => {
                let (copy_in, response) = copy::CopyIn::start(&self.engine, request)?;
                *self.copy_in_slot() = Some(copy_in);
                Ok(response)
            }
        }
    }

    /// The copy-in slot; a panic while it was held leaves nothing worth keeping in it.
    fn copy_in_slot(&self) -> std::sync::MutexGuard<'_, Option<copy::CopyIn>> {
        self.copy_in
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs one statement of a simple query; `first` when no statement of the string came
    /// before it (a COPY then sends its rows itself).
    async fn simple_statement<C>(
        &self,
        client: &mut C,
        sql: &str,
        first: bool,
    ) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let role = role_of(client);
        if let Some(own) = ddl::parse(sql).map_err(|e| errors::syntax(e.0))? {
            return Ok(vec![self.run_c360(role, own).await?]);
        }
        let parsed = self.parser.checked(role, sql)?;
        let guard = QueryGuard::start(client);
        if let [statement] = parsed.as_slice() {
            if let Some(response) = transactions::savepoint(statement) {
                return Ok(vec![response]);
            }
            if let Some((name, value)) = settings::assignment(statement) {
                return Ok(vec![settings::set(client, &name, value).await?]);
            }
            if let Some(name) = settings::shown(statement) {
                return Ok(vec![settings::show(client, &name)?]);
            }
            if let Some(copy) = copy::parse(statement) {
                return Ok(vec![self.copy(client, copy, &guard, first).await?]);
            }
        }
        let sql = rewritten(parsed).unwrap_or_else(|| sql.to_string());
        let responses = guard
            .run(SimpleQueryHandler::do_query(
                &*self.datafusion,
                client,
                &sql,
            ))
            .await?;
        Ok(responses
            .into_iter()
            .map(|response| guarded(response, &guard))
            .collect())
    }

    /// c360's own statements run on the engine, for admins. They are not interrupted by a
    /// timeout or a cancel: an identity refresh commits by switching a pointer at its end,
    /// and is better finished than abandoned half-written.
    async fn run_c360(&self, role: Role, statement: ddl::Statement) -> PgWireResult<Response> {
        let tag = command_tag(&statement);
        // A dry run reads only; everything else changes the catalog or the data.
        let reads_only = matches!(statement, ddl::Statement::ExplainTrigger { .. });
        if !reads_only {
            roles::check_c360(role, tag)?;
        }
        let result = self
            .engine
            .execute_c360(statement, false)
            .await
            .map_err(errors::from_c360)?;
        if result.schema.fields().is_empty() {
            return Ok(Response::Execution(Tag::new(tag)));
        }
        // Statements with rows (EXPLAIN TRIGGER) answer like a query.
        let frame = self
            .ctx
            .read_batches(result.batches)
            .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
        Ok(Response::Query(
            datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe(
                frame,
                &Format::UnifiedText,
                None,
            )
            .await?,
        ))
    }
}

/// The text to run instead of a single statement that [`rewrite`] changed: catalog
/// subqueries DataFusion can plan, and PostgreSQL's column names.
fn rewritten(mut parsed: Vec<ast::Statement>) -> Option<String> {
    match parsed.as_mut_slice() {
        [statement] => {
            let subqueries = rewrite::catalog_subqueries(statement);
            let names = rewrite::postgres_column_names(statement);
            (subqueries || names).then(|| statement.to_string())
        }
        _ => None,
    }
}

/// Puts a query's row stream under the guard; other responses are complete already.
fn guarded(response: Response, guard: &QueryGuard) -> Response {
    match response {
        Response::Query(query) => {
            let mut wrapped = QueryResponse::new(query.row_schema, guard.stream(query.data_rows));
            wrapped.set_command_tag(&query.command_tag);
            Response::Query(wrapped)
        }
        other => other,
    }
}

/// The session's role, set at authentication; a session without one reads only.
fn role_of<C: ClientInfo + ?Sized>(client: &C) -> Role {
    client
        .session_extensions()
        .get::<Role>()
        .map_or(Role::Analyst, |role| *role)
}

fn command_tag(statement: &ddl::Statement) -> &'static str {
    match statement {
        ddl::Statement::CreateIdentityGraph(_) => "CREATE IDENTITY GRAPH",
        ddl::Statement::RefreshIdentityGraph { .. } => "REFRESH IDENTITY GRAPH",
        ddl::Statement::DropIdentityGraph { .. } => "DROP IDENTITY GRAPH",
        ddl::Statement::CreateQuery(definition) => match definition.kind {
            ddl::QueryKind::Segment => "CREATE SEGMENT",
            ddl::QueryKind::MaterializedView => "CREATE MATERIALIZED VIEW",
            ddl::QueryKind::Trigger => "CREATE TRIGGER",
        },
        ddl::Statement::RefreshQuery { kind, .. } => match kind {
            ddl::QueryKind::Segment => "REFRESH SEGMENT",
            ddl::QueryKind::MaterializedView => "REFRESH MATERIALIZED VIEW",
            ddl::QueryKind::Trigger => "REFRESH TRIGGER",
        },
        ddl::Statement::DropQuery { kind, .. } => match kind {
            ddl::QueryKind::Segment => "DROP SEGMENT",
            ddl::QueryKind::MaterializedView => "DROP MATERIALIZED VIEW",
            ddl::QueryKind::Trigger => "DROP TRIGGER",
        },
        ddl::Statement::ExplainTrigger { .. } => "EXPLAIN",
        ddl::Statement::ForgetProfile { .. } => "FORGET PROFILE",
    }
}

#[async_trait::async_trait]
impl SimpleQueryHandler for Queries {
    /// Runs the statements of a query string one by one, as PostgreSQL does: each one's
    /// results are sent, and the first error ends the string with its ErrorResponse.
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Err(error) = limits::check_query_length(query) {
            let info: ErrorInfo = error.into();
            return Ok(vec![Response::Error(Box::new(info))]);
        }
        let mut responses = Vec::new();
        let statements = workspace::split_statements(query);
        let count = statements.len();
        for (i, statement) in statements.into_iter().enumerate() {
            let first = responses.is_empty();
            match self.simple_statement(client, &statement.sql, first).await {
                Ok(more)
                    if i + 1 < count && more.iter().any(|r| matches!(r, Response::CopyIn(_))) =>
                {
                    // The client sends the rows after the whole string is answered, so the
                    // statements after the COPY would run before it: refuse the string.
                    self.copy_in_slot().take();
                    let info: ErrorInfo = errors::not_supported(
                        "COPY FROM STDIN must be the last statement of its query string",
                    )
                    .into();
                    responses.push(Response::Error(Box::new(info)));
                    break;
                }
                Ok(more) => responses.extend(more),
                Err(error) => {
                    let info: ErrorInfo = errors::classify(error).into();
                    responses.push(Response::Error(Box::new(info)));
                    break;
                }
            }
        }
        if responses.is_empty() {
            responses.push(Response::EmptyQuery);
        }
        Ok(responses)
    }
}

#[async_trait::async_trait]
impl ExtendedQueryHandler for Queries {
    type Statement = Statement;
    type QueryParser = CheckedParser;

    fn query_parser(&self) -> Arc<CheckedParser> {
        Arc::clone(&self.parser)
    }

    /// pgwire's own bind, except that BindComplete is queued, not flushed: it goes out with
    /// the rows at the next Sync or Flush, as PostgreSQL sends it. A prepared lookup is then
    /// two writes to the socket instead of three, which at thousands of lookups a second is
    /// a good share of the server's work.
    async fn on_bind<C>(&self, client: &mut C, message: Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement_name = message.statement_name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal_name = message.portal_name.as_deref().unwrap_or(DEFAULT_NAME);
        match client.portal_store().get_statement(statement_name) {
            Some(Entry::Value(statement)) => {
                let portal = Portal::try_new(&message, statement)?;
                client.portal_store().put_portal(Arc::new(portal));
            }
            Some(Entry::Empty) => {
                if !message.parameters.is_empty() {
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "ERROR".to_owned(),
                        "08P01".to_owned(),
                        format!(
                            "bind message supplies {} parameters, but prepared statement \
                             {statement_name:?} requires 0",
                            message.parameters.len()
                        ),
                    ))));
                }
                client.portal_store().put_empty_portal(portal_name);
            }
            None => return Err(PgWireError::StatementNotFound(statement_name.to_owned())),
        }
        client
            .feed(PgWireBackendMessage::BindComplete(BindComplete::new()))
            .await?;
        Ok(())
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (sql, plan) = &portal.statement.statement;
        let role = role_of(client);
        let guard = QueryGuard::start(client);
        if plan.is_none() {
            // Statements that datafusion-postgres cannot plan; the parser let them through.
            if let Some(own) = ddl::parse(sql).map_err(|e| errors::syntax(e.0))? {
                return self.run_c360(role, own).await;
            }
            let parsed = self.parser.checked(role, sql)?;
            if let Some(response) = parsed.first().and_then(transactions::savepoint) {
                return Ok(response);
            }
            if let Some((name, value)) = parsed.first().and_then(settings::assignment) {
                return settings::set(client, &name, value).await;
            }
            if let Some(copy) = parsed.first().and_then(copy::parse) {
                return self.copy(client, copy, &guard, true).await;
            }
        }
        if let Some((statement, _)) = plan
            && let Some(name) = settings::shown(statement)
        {
            return settings::show(client, &name);
        }
        if let Some((_, plan)) = plan
            && let Some(response) = lookup::answer(&self.ctx, plan, portal, client).await?
        {
            return Ok(response);
        }
        let response = guard
            .run(ExtendedQueryHandler::do_query(
                &*self.datafusion,
                client,
                portal,
                max_rows,
            ))
            .await?;
        Ok(guarded(response, &guard))
    }
}

/// datafusion-postgres's parser, behind the role check; c360's statements and `COPY` are
/// kept as text for [`Queries`] to run.
pub struct CheckedParser {
    engine: Arc<Engine>,
    inner: Arc<Parser>,
    sql: PostgresCompatibilityParser,
}

impl CheckedParser {
    /// Parses `sql` and refuses it unless `role` may run every statement in it.
    fn checked(&self, role: Role, sql: &str) -> PgWireResult<Vec<ast::Statement>> {
        let parsed = self
            .sql
            .parse(sql)
            .map_err(|e| errors::syntax(e.to_string()))?;
        for statement in &parsed {
            roles::check(role, statement)?;
        }
        Ok(parsed)
    }
}

#[async_trait::async_trait]
impl QueryParser for CheckedParser {
    type Statement = Statement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        limits::check_query_length(sql)?;
        let role = role_of(client);
        if let Some(own) = ddl::parse(sql).map_err(|e| errors::syntax(e.0))? {
            roles::check_c360(role, command_tag(&own))?;
            return Ok(Some((sql.to_string(), None)));
        }
        let parsed = self.checked(role, sql)?;
        if let Some(statement) = parsed.first() {
            // A COPY that cannot run fails here, before a driver starts sending rows.
            match copy::parse(statement) {
                Some(Ok(copy::Copy::In(request))) => {
                    copy::target(&self.engine, &request)?;
                }
                Some(Err(e)) => return Err(e),
                _ => {}
            }
            if matches!(statement, ast::Statement::Copy { .. })
                || settings::assignment(statement).is_some()
                || transactions::savepoint(statement).is_some()
            {
                return Ok(Some((sql.to_string(), None)));
            }
            if let Some(name) = settings::shown(statement) {
                let plan = settings::show_plan(&name)?;
                return Ok(Some((sql.to_string(), Some((statement.clone(), plan)))));
            }
        }
        let sql = rewritten(parsed).unwrap_or_else(|| sql.to_string());
        self.inner
            .parse_sql(client, &sql, types)
            .await
            .map_err(errors::classify)
    }

    fn get_parameter_types(&self, statement: &Statement) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(statement)
    }

    fn get_result_schema(
        &self,
        statement: &Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.inner.get_result_schema(statement, column_format)
    }
}

#[async_trait::async_trait]
impl CopyHandler for Queries {
    /// Rows are decoded and written as they arrive, so a COPY's memory stays bounded. On an
    /// error the load is dropped (its files are orphans no snapshot names) and pgwire drops
    /// the rest of the client's data, as PostgreSQL does.
    async fn on_copy_data<C>(&self, _client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(mut copy_in) = self.copy_in_slot().take() else {
            return Err(errors::error("08P01", "CopyData without a COPY FROM STDIN"));
        };
        copy_in.data(&copy_data.data).await?;
        *self.copy_in_slot() = Some(copy_in);
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(copy_in) = self.copy_in_slot().take() else {
            return Err(errors::error("08P01", "CopyDone without a COPY FROM STDIN"));
        };
        let rows = copy_in.done(&self.engine).await?;
        let rows = usize::try_from(rows).unwrap_or(usize::MAX);
        client
            .send(PgWireBackendMessage::CommandComplete(
                Tag::new("COPY").with_rows(rows).into(),
            ))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.copy_in_slot().take();
        errors::error("57014", format!("COPY from stdin failed: {}", fail.message))
    }
}
