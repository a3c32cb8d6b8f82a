//! The `pg_catalog` rows c360 fills in over datafusion-pg-catalog's: `pg_views` lists the
//! session's views with their definitions, and `pg_proc` lists c360's and DataFusion's
//! functions beside PostgreSQL's, with the signature functions psql's `\df` calls.
//!
//! Without them psql's `\d+ some_view` fails (`pg_get_viewdef` is unknown), `\df` fails
//! (`pg_function_is_visible`), and a BI tool showing a view's SQL shows nothing. The functions
//! are listed in `pg_catalog`, as PostgreSQL lists its built-ins: they come with c360, so
//! `\df normalize*` finds them and plain `\df` (user functions only) finds none, as on a
//! fresh PostgreSQL database.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float32Array, Int16Array, Int32Array, RecordBatch,
    StringArray, new_empty_array, new_null_array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Int64Type, SchemaRef, TimeUnit};
use datafusion::catalog::{CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::{MemTable, ViewTable};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarUDF, TableType, TypeSignature, TypeSignatureClass,
    Volatility, create_udf,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::{Dialect, GenericDialect, PostgreSqlDialect};
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::PgCatalogStaticTables;

use crate::error::{C360Error, Result};

/// `pg_catalog`'s namespace oid, which every built-in's `pronamespace` is.
const PG_CATALOG_NAMESPACE: i32 = 11;
/// Oids given to functions PostgreSQL does not have: above the highest built-in's (13636 in
/// the shipped catalog) and below the first oid handed to tables and schemas (16384).
const FIRST_FUNCTION_OID: i32 = 14_000;
const LAST_FUNCTION_OID: i32 = 16_383;
/// PostgreSQL's pseudo-type `"any"`: what a DataFusion function accepting anything takes.
const ANY: i32 = 2276;
const ANYELEMENT: i32 = 2283;

/// Replaces the session's `pg_catalog` schema (installed by `setup_pg_catalog`) with one that
/// answers `pg_views` and `pg_proc` itself, and registers the function-signature functions.
pub(super) fn install(ctx: &SessionContext, database: &str) -> Result<()> {
    let catalog_error =
        |what: &str| C360Error::Query(DataFusionError::Internal(format!("pg_catalog: {what}")));
    let catalog = ctx
        .catalog(database)
        .ok_or_else(|| catalog_error("no catalog for the database"))?;
    let inner = catalog
        .schema("pg_catalog")
        .ok_or_else(|| catalog_error("not installed"))?;
    let statics = PgCatalogStaticTables::try_new()?;
    let builtin = batches_of(statics.pg_proc.try_into_memtable()?.as_ref())?;
    let type_names = type_names(&batches_of(statics.pg_type.try_into_memtable()?.as_ref())?);
    let schema = builtin
        .first()
        .map(RecordBatch::schema)
        .ok_or_else(|| catalog_error("the built-in pg_proc is empty"))?;
    let known: HashSet<String> = builtin
        .iter()
        .flat_map(|batch| strings(batch, "proname"))
        .collect();
    let ours = session_functions(ctx, &known);
    let mut procs = builtin;
    procs.push(proc_batch(&schema, &ours)?);
    let signatures = Arc::new(Signatures::of(&procs, &type_names));
    let pg_proc = Arc::new(MemTable::try_new(schema, vec![procs])?);

    // c360 has one search path, so every function is visible.
    ctx.register_udf(oid_function(
        "pg_function_is_visible",
        DataType::Boolean,
        |_| ScalarValue::Boolean(Some(true)),
    ));
    for (name, result) in [
        ("pg_get_function_result", true),
        ("pg_get_function_arguments", false),
        ("pg_get_function_identity_arguments", false),
    ] {
        let signatures = Arc::clone(&signatures);
        ctx.register_udf(oid_function(name, DataType::Utf8, move |oid| {
            let texts = i32::try_from(oid)
                .ok()
                .and_then(|oid| signatures.by_oid.get(&oid));
            ScalarValue::Utf8(texts.map(|(r, a)| if result { r.clone() } else { a.clone() }))
        }));
    }
    // The Postgres frontend rewrites `pg_get_viewdef(oid, …)` into this, around the
    // definition it looks up in `pg_views` (see `rewrite`), which this returns as it is.
    ctx.register_udf(create_udf(
        "pg_get_viewdef",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            args.first()
                .cloned()
                .ok_or_else(|| DataFusionError::Internal("pg_get_viewdef: no argument".into()))
        }),
    ));
    let ours = C360PgCatalog {
        inner,
        catalogs: Arc::clone(ctx.state().catalog_list()),
        database: database.to_string(),
        pg_proc,
    };
    catalog.register_schema("pg_catalog", Arc::new(ours))?;
    Ok(())
}

fn batches_of(table: &MemTable) -> Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    for partition in &table.batches {
        let partition = partition.try_read().map_err(|_| {
            C360Error::Query(DataFusionError::Internal(
                "pg_catalog: a built-in table is being written".into(),
            ))
        })?;
        batches.extend(partition.iter().cloned());
    }
    Ok(batches)
}

/// Column `name` of `batch` as text, row by row (empty where NULL or absent).
fn strings(batch: &RecordBatch, name: &str) -> Vec<String> {
    let Some(column) = batch.column_by_name(name) else {
        return Vec::new();
    };
    let Ok(text) = cast(column, &DataType::Utf8) else {
        return Vec::new();
    };
    let text = text.as_string::<i32>();
    (0..text.len())
        .map(|i| {
            if text.is_valid(i) {
                text.value(i).to_string()
            } else {
                String::new()
            }
        })
        .collect()
}

/// Column `name` of `batch` as 32-bit integers (0 where NULL or absent).
fn integers(batch: &RecordBatch, name: &str) -> Vec<i32> {
    let Some(column) = batch.column_by_name(name) else {
        return Vec::new();
    };
    let Ok(numbers) = cast(column, &DataType::Int32) else {
        return Vec::new();
    };
    let numbers = numbers.as_primitive::<Int32Type>();
    (0..numbers.len())
        .map(|i| {
            if numbers.is_valid(i) {
                numbers.value(i)
            } else {
                0
            }
        })
        .collect()
}

/// Type names as `format_type` prints them, by oid, from the built-in `pg_type`.
fn type_names(pg_type: &[RecordBatch]) -> HashMap<i32, String> {
    let mut names = HashMap::new();
    for batch in pg_type {
        for (oid, name) in integers(batch, "oid")
            .into_iter()
            .zip(strings(batch, "typname"))
        {
            names.insert(oid, name);
        }
    }
    let sql_name = |name: &str| -> String {
        match name {
            "bool" => "boolean".into(),
            "int2" => "smallint".into(),
            "int4" => "integer".into(),
            "int8" => "bigint".into(),
            "float4" => "real".into(),
            "float8" => "double precision".into(),
            "varchar" => "character varying".into(),
            "bpchar" => "character".into(),
            "timestamp" => "timestamp without time zone".into(),
            "timestamptz" => "timestamp with time zone".into(),
            "time" => "time without time zone".into(),
            "timetz" => "time with time zone".into(),
            // Pseudo-types whose names are keywords are quoted, as PostgreSQL prints them.
            "any" | "char" => format!("\"{name}\""),
            other => other.into(),
        }
    };
    names
        .iter()
        .map(|(&oid, name)| {
            let shown = match name.strip_prefix('_') {
                Some(element) => format!("{}[]", sql_name(element)),
                None => sql_name(name),
            };
            (oid, shown)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// pg_proc

/// A function PostgreSQL's catalog does not list, as one `pg_proc` row.
#[derive(Debug, Clone, PartialEq)]
struct Function {
    oid: i32,
    name: String,
    /// `f` (function) or `a` (aggregate).
    kind: &'static str,
    arguments: Vec<i32>,
    /// The type of the last argument when it repeats (`VARIADIC`), else 0.
    variadic: i32,
    result: i32,
    volatility: &'static str,
}

/// The session's scalar and aggregate functions whose names PostgreSQL's catalog lacks, one
/// row per argument list, in name order.
fn session_functions(ctx: &SessionContext, known: &HashSet<String>) -> Vec<Function> {
    let state = ctx.state();
    let mut found: BTreeMap<(String, Vec<i32>, i32), Function> = BTreeMap::new();
    let mut add = |function: Function| {
        let key = (
            function.name.clone(),
            function.arguments.clone(),
            function.variadic,
        );
        found.entry(key).or_insert(function);
    };
    for (name, udf) in state.scalar_functions() {
        if known.contains(name) {
            continue;
        }
        let signature = udf.signature();
        for (arguments, variadic) in argument_lists(&signature.type_signature) {
            let result = scalar_result(udf, &arguments);
            add(Function {
                oid: 0,
                name: name.clone(),
                kind: "f",
                arguments,
                variadic,
                result,
                volatility: volatility(signature.volatility),
            });
        }
    }
    for (name, udaf) in state.aggregate_functions() {
        if known.contains(name) {
            continue;
        }
        let signature = udaf.signature();
        for (arguments, variadic) in argument_lists(&signature.type_signature) {
            let result = arrow_types(&arguments)
                .and_then(|types| udaf.return_type(&types).ok())
                .map_or(ANYELEMENT, |t| type_oid(&t));
            add(Function {
                oid: 0,
                name: name.clone(),
                kind: "a",
                arguments,
                variadic,
                result,
                volatility: volatility(signature.volatility),
            });
        }
    }
    found
        .into_values()
        .zip(FIRST_FUNCTION_OID..=LAST_FUNCTION_OID)
        .map(|(function, oid)| Function { oid, ..function })
        .collect()
}

fn volatility(volatility: Volatility) -> &'static str {
    match volatility {
        Volatility::Immutable => "i",
        Volatility::Stable => "s",
        Volatility::Volatile => "v",
    }
}

/// The argument lists a DataFusion signature accepts, as PostgreSQL type oids with the
/// variadic type (or 0): one per alternative of a `OneOf`.
fn argument_lists(signature: &TypeSignature) -> Vec<(Vec<i32>, i32)> {
    let fixed = |types: Vec<i32>| vec![(types, 0)];
    match signature {
        TypeSignature::Exact(types) => fixed(types.iter().map(type_oid).collect()),
        TypeSignature::Uniform(count, types) => {
            let one = types.first().map_or(ANY, type_oid);
            fixed(vec![if types.len() == 1 { one } else { ANY }; *count])
        }
        TypeSignature::String(count) => fixed(vec![25; *count]),
        TypeSignature::Numeric(count) => fixed(vec![1700; *count]),
        TypeSignature::Comparable(count) | TypeSignature::Any(count) => fixed(vec![ANY; *count]),
        TypeSignature::Nullary => fixed(Vec::new()),
        TypeSignature::Coercible(coercions) => fixed(
            coercions
                .iter()
                .map(|coercion| class_oid(coercion.desired_type()))
                .collect(),
        ),
        TypeSignature::Variadic(types) => {
            let element = match types.as_slice() {
                [one] => type_oid(one),
                _ => ANY,
            };
            vec![(vec![element], element)]
        }
        TypeSignature::OneOf(alternatives) => {
            let mut lists = Vec::new();
            for list in alternatives.iter().flat_map(argument_lists) {
                if !lists.contains(&list) {
                    lists.push(list);
                }
            }
            lists
        }
        TypeSignature::UserDefined
        | TypeSignature::VariadicAny
        | TypeSignature::ArraySignature(_) => vec![(vec![ANY], ANY)],
    }
}

fn class_oid(class: &TypeSignatureClass) -> i32 {
    use datafusion::common::types::NativeType;
    match class {
        TypeSignatureClass::Timestamp => 1184,
        TypeSignatureClass::Time => 1083,
        TypeSignatureClass::Interval | TypeSignatureClass::Duration => 1186,
        TypeSignatureClass::Integer => 20,
        TypeSignatureClass::Float => 701,
        TypeSignatureClass::Decimal | TypeSignatureClass::Numeric => 1700,
        TypeSignatureClass::Native(logical) => match logical.native() {
            NativeType::String => 25,
            NativeType::Boolean => 16,
            NativeType::Int16 => 21,
            NativeType::Int32 => 23,
            NativeType::Int64 => 20,
            NativeType::Float32 => 700,
            NativeType::Float64 => 701,
            NativeType::Date => 1082,
            NativeType::Binary => 17,
            _ => ANY,
        },
        _ => ANY,
    }
}

/// The PostgreSQL type clients see for an Arrow type.
fn type_oid(data_type: &DataType) -> i32 {
    match data_type {
        DataType::Boolean => 16,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => 21,
        DataType::Int32 | DataType::UInt16 => 23,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => 20,
        DataType::Float16 | DataType::Float32 => 700,
        DataType::Float64 => 701,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => 25,
        DataType::Dictionary(_, value) => type_oid(value),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => 17,
        DataType::Date32 | DataType::Date64 => 1082,
        DataType::Timestamp(_, Some(_)) => 1184,
        DataType::Timestamp(_, None) => 1114,
        DataType::Time32(_) | DataType::Time64(_) => 1083,
        DataType::Interval(_) | DataType::Duration(_) => 1186,
        DataType::Decimal128(..) | DataType::Decimal256(..) => 1700,
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => 2277,
        _ => ANY,
    }
}

/// Arrow types for PostgreSQL oids, where every one is a concrete type.
fn arrow_types(oids: &[i32]) -> Option<Vec<DataType>> {
    oids.iter()
        .map(|&oid| {
            Some(match oid {
                16 => DataType::Boolean,
                21 => DataType::Int16,
                23 => DataType::Int32,
                20 => DataType::Int64,
                700 => DataType::Float32,
                701 => DataType::Float64,
                25 => DataType::Utf8,
                17 => DataType::Binary,
                1082 => DataType::Date32,
                1184 => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                1114 => DataType::Timestamp(TimeUnit::Microsecond, None),
                1700 => DataType::Decimal128(38, 10),
                _ => return None,
            })
        })
        .collect()
}

/// A scalar function's result type for these arguments, `anyelement` when it depends on
/// more than their types.
fn scalar_result(udf: &ScalarUDF, arguments: &[i32]) -> i32 {
    let Some(types) = arrow_types(arguments) else {
        return ANYELEMENT;
    };
    if let Ok(result) = udf.return_type(&types) {
        return type_oid(&result);
    }
    let fields: Vec<_> = types
        .iter()
        .enumerate()
        .map(|(i, t)| Arc::new(Field::new(format!("arg{i}"), t.clone(), true)))
        .collect();
    let scalars = vec![None; fields.len()];
    udf.return_field_from_args(ReturnFieldArgs {
        arg_fields: &fields,
        scalar_arguments: &scalars,
    })
    .map_or(ANYELEMENT, |field| type_oid(field.data_type()))
}

/// `functions` as a batch of `pg_proc`'s schema (the built-in table's).
fn proc_batch(schema: &SchemaRef, functions: &[Function]) -> Result<RecordBatch> {
    let text = |values: Vec<String>| -> ArrayRef { Arc::new(StringArray::from(values)) };
    let int32 = |values: Vec<i32>| -> ArrayRef { Arc::new(Int32Array::from(values)) };
    let flag =
        |value: bool| -> ArrayRef { Arc::new(BooleanArray::from(vec![value; functions.len()])) };
    let each = |f: &dyn Fn(&Function) -> String| functions.iter().map(f).collect::<Vec<_>>();
    let each_oid = |f: &dyn Fn(&Function) -> i32| functions.iter().map(f).collect::<Vec<_>>();
    let n = functions.len();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column: ArrayRef = match field.name().as_str() {
            "oid" => int32(each_oid(&|f| f.oid)),
            "proname" => text(each(&|f| f.name.clone())),
            "pronamespace" => int32(vec![PG_CATALOG_NAMESPACE; n]),
            // The bootstrap superuser and the `internal` language, as for built-ins.
            "proowner" => int32(vec![10; n]),
            "prolang" => int32(vec![12; n]),
            "procost" => Arc::new(Float32Array::from(vec![1.0; n])),
            "prorows" => Arc::new(Float32Array::from(vec![0.0; n])),
            "provariadic" => int32(each_oid(&|f| f.variadic)),
            "prosupport" => text(vec!["-".into(); n]),
            "prokind" => text(each(&|f| f.kind.into())),
            "prosecdef" | "proleakproof" | "proisstrict" | "proretset" => flag(false),
            "provolatile" => text(each(&|f| f.volatility.into())),
            "proparallel" => text(vec!["s".into(); n]),
            "pronargs" => Arc::new(Int16Array::from(
                functions
                    .iter()
                    .map(|f| f.arguments.len() as i16)
                    .collect::<Vec<_>>(),
            )),
            "pronargdefaults" => Arc::new(Int16Array::from(vec![0i16; n])),
            "prorettype" => int32(each_oid(&|f| f.result)),
            "proargtypes" => text(each(&|f| {
                let oids: Vec<String> = f.arguments.iter().map(i32::to_string).collect();
                oids.join(" ")
            })),
            "prosrc" => text(each(&|f| f.name.clone())),
            _ => new_null_array(field.data_type(), n),
        };
        let column = if column.data_type() == field.data_type() {
            column
        } else {
            cast(&column, field.data_type())
                .map_err(|e| C360Error::arrow("pg_proc's c360 functions", e))?
        };
        columns.push(column);
    }
    RecordBatch::try_new(Arc::clone(schema), columns)
        .map_err(|e| C360Error::arrow("pg_proc's c360 functions", e))
}

/// Each function's result and argument list as text, by oid.
struct Signatures {
    by_oid: HashMap<i32, (String, String)>,
}

impl Signatures {
    fn of(pg_proc: &[RecordBatch], type_names: &HashMap<i32, String>) -> Signatures {
        let name = |oid: i32| {
            type_names
                .get(&oid)
                .cloned()
                .unwrap_or_else(|| oid.to_string())
        };
        let mut by_oid = HashMap::new();
        for batch in pg_proc {
            let oids = integers(batch, "oid");
            let results = integers(batch, "prorettype");
            let variadic = integers(batch, "provariadic");
            let arguments = strings(batch, "proargtypes");
            let sets = strings(batch, "proretset");
            for i in 0..oids.len() {
                let mut result = name(results[i]);
                if sets.get(i).is_some_and(|set| set == "true") {
                    result = format!("SETOF {result}");
                }
                let types: Vec<i32> = arguments[i]
                    .split_whitespace()
                    .filter_map(|oid| oid.parse().ok())
                    .collect();
                let mut shown: Vec<String> = types.iter().map(|&oid| name(oid)).collect();
                if variadic[i] != 0
                    && let Some(last) = shown.last_mut()
                {
                    *last = format!("VARIADIC {last}");
                }
                by_oid.insert(oids[i], (result, shown.join(", ")));
            }
        }
        Signatures { by_oid }
    }
}

/// A catalog function of one oid: `answer` for each oid, NULL for NULL.
fn oid_function(
    name: &str,
    return_type: DataType,
    answer: impl Fn(i64) -> ScalarValue + Send + Sync + 'static,
) -> ScalarUDF {
    let output = return_type.clone();
    create_udf(
        name,
        vec![DataType::Int64],
        return_type,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let all_scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let [oids] = arrays.as_slice() else {
                return datafusion::common::exec_err!("expected one oid argument");
            };
            let oids = cast(oids, &DataType::Int64)?;
            let answers = oids
                .as_primitive::<Int64Type>()
                .iter()
                .map(|oid| match oid {
                    Some(oid) => Ok(answer(oid)),
                    None => ScalarValue::try_from(&output),
                })
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            if answers.is_empty() {
                return Ok(ColumnarValue::Array(new_empty_array(&output)));
            }
            let answers = ScalarValue::iter_to_array(answers)?;
            Ok(if all_scalar {
                ColumnarValue::Scalar(ScalarValue::try_from_array(&answers, 0)?)
            } else {
                ColumnarValue::Array(answers)
            })
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// pg_views and the schema

/// datafusion-pg-catalog's `pg_catalog`, with `pg_views` and `pg_proc` answered here.
#[derive(Debug)]
struct C360PgCatalog {
    inner: Arc<dyn SchemaProvider>,
    catalogs: Arc<dyn CatalogProviderList>,
    database: String,
    pg_proc: Arc<MemTable>,
}

#[async_trait]
impl SchemaProvider for C360PgCatalog {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        match name.to_ascii_lowercase().as_str() {
            "pg_proc" => Ok(Some(Arc::clone(&self.pg_proc) as Arc<dyn TableProvider>)),
            "pg_views" => Ok(Some(Arc::new(self.views().await?))),
            _ => self.inner.table(name).await,
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

impl C360PgCatalog {
    /// `pg_views` now: every view of the database outside the system schemas.
    async fn views(&self) -> datafusion::error::Result<MemTable> {
        let mut rows: Vec<[Option<String>; 4]> = Vec::new();
        if let Some(catalog) = self.catalogs.catalog(&self.database) {
            let mut schemas = catalog.schema_names();
            schemas.sort();
            for schema_name in schemas {
                if schema_name == "pg_catalog" || schema_name == "information_schema" {
                    continue;
                }
                let Some(schema) = catalog.schema(&schema_name) else {
                    continue;
                };
                let mut names = schema.table_names();
                names.sort();
                for name in names {
                    let Some(table) = schema.table(&name).await? else {
                        continue;
                    };
                    if table.table_type() != TableType::View {
                        continue;
                    }
                    let any: &dyn Any = table.as_ref();
                    let definition = any
                        .downcast_ref::<ViewTable>()
                        .and_then(ViewTable::definition)
                        .map(|text| view_query(text));
                    rows.push([
                        Some(schema_name.clone()),
                        Some(name),
                        Some("postgres".to_string()),
                        definition,
                    ]);
                }
            }
        }
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(
            ["schemaname", "viewname", "viewowner", "definition"]
                .map(|name| Field::new(name, DataType::Utf8, true))
                .to_vec(),
        ));
        let columns: Vec<ArrayRef> = (0..4)
            .map(|c| {
                Arc::new(StringArray::from(
                    rows.iter().map(|row| row[c].clone()).collect::<Vec<_>>(),
                )) as ArrayRef
            })
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        MemTable::try_new(schema, vec![vec![batch]])
    }
}

/// The query of a `CREATE VIEW` statement, laid out as PostgreSQL's `pg_get_viewdef` lays it
/// out (one clause per line, ending in `;`); the statement as stored when it does not parse.
fn view_query(definition: &str) -> String {
    let dialects: [&dyn Dialect; 2] = [&PostgreSqlDialect {}, &GenericDialect {}];
    for dialect in dialects {
        if let Ok(statements) = Parser::parse_sql(dialect, definition)
            && let [Statement::CreateView(view)] = statements.as_slice()
        {
            return format!(" {:#};", view.query);
        }
    }
    definition.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_definition_is_its_query() {
        let query = view_query("CREATE VIEW v AS SELECT a, b FROM t WHERE a > 1");
        assert!(query.starts_with(" SELECT"), "{query}");
        assert!(query.contains("FROM"), "{query}");
        assert!(query.ends_with(';'), "{query}");
        assert!(!query.contains("CREATE"), "{query}");
    }

    #[test]
    fn signatures_become_postgres_argument_lists() {
        assert_eq!(
            argument_lists(&TypeSignature::OneOf(vec![
                TypeSignature::Exact(vec![DataType::Utf8, DataType::Utf8]),
                TypeSignature::Exact(vec![DataType::Utf8View, DataType::Utf8View]),
                TypeSignature::Exact(vec![DataType::Int64]),
            ])),
            vec![(vec![25, 25], 0), (vec![20], 0)]
        );
        assert_eq!(
            argument_lists(&TypeSignature::VariadicAny),
            vec![(vec![ANY], ANY)]
        );
    }
}
