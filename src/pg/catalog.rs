//! What Postgres clients read about the server: `pg_catalog` (from datafusion-pg-catalog)
//! and a `version()` in PostgreSQL's format.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;

use crate::error::{C360Error, Result};

/// What `version()` answers. Drivers parse it (SQLAlchemy reads "PostgreSQL X.Y"), so it
/// starts the way PostgreSQL's does, with the version of the protocol and catalog c360 mimics.
pub const VERSION: &str = concat!(
    "PostgreSQL 16.6 on x86_64-pc-linux-gnu (c360 ",
    env!("CARGO_PKG_VERSION"),
    ", Apache DataFusion 55)"
);

/// Registers `pg_catalog`, its functions and `version()`, once per context.
pub fn install(ctx: &SessionContext, database: &str) -> Result<()> {
    let already = ctx
        .catalog(database)
        .and_then(|catalog| catalog.schema("pg_catalog"))
        .is_some();
    if already {
        return Ok(());
    }
    setup_pg_catalog(ctx, database, EmptyContextProvider).map_err(|e| C360Error::Query(*e))?;
    // Replaces DataFusion's own version(), which answers "Apache DataFusion …".
    ctx.register_udf(create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|_| Ok(ColumnarValue::Scalar(ScalarValue::from(VERSION)))),
    ));
    ctx.register_udf(to_regtype());
    // c360 has no sequences or serial columns: SQLAlchemy's column reflection asks anyway.
    ctx.register_udf(constant(
        "pg_get_serial_sequence",
        2,
        ScalarValue::Utf8(None),
    ));
    // Every collation is visible: c360 has the one default collation.
    ctx.register_udf(constant(
        "pg_collation_is_visible",
        1,
        ScalarValue::Boolean(Some(true)),
    ));
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
        JsonBuildObject::new(),
    ));
    // psql's `\dt+`, `\d+` and `\l+` ask these. c360 keeps no per-oid sizes (a table's files are
    // its storage root's, a view has none) nor comments: unknown, as PostgreSQL says NULL.
    for name in [
        "pg_table_size",
        "pg_total_relation_size",
        "pg_relation_size",
    ] {
        ctx.register_udf(constant(name, 1, ScalarValue::Int64(None)));
    }
    ctx.register_udf(constant("pg_database_size", 1, ScalarValue::Int64(None)));
    ctx.register_udf(constant("obj_description", 2, ScalarValue::Utf8(None)));
    ctx.register_udf(constant("col_description", 2, ScalarValue::Utf8(None)));
    ctx.register_udf(constant("shobj_description", 2, ScalarValue::Utf8(None)));
    // psql's `\df+` shows a SQL-language function's body; c360's functions are built in.
    ctx.register_udf(constant(
        "pg_get_function_sqlbody",
        1,
        ScalarValue::Utf8(None),
    ));
    ctx.register_udf(size_pretty());
    super::catalog_rows::install(ctx, database)
}

/// `pg_size_pretty(bigint)`, with PostgreSQL's units and rounding: BI tools show sizes with it.
fn size_pretty() -> datafusion::logical_expr::ScalarUDF {
    use datafusion::arrow::array::{Array, AsArray, StringBuilder};
    use datafusion::arrow::datatypes::Int64Type;

    create_udf(
        "pg_size_pretty",
        vec![DataType::Int64],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| match &args[0] {
            ColumnarValue::Scalar(value) => {
                let bytes = match value.cast_to(&DataType::Int64)? {
                    ScalarValue::Int64(bytes) => bytes,
                    _ => None,
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(
                    bytes.map(pretty_size),
                )))
            }
            ColumnarValue::Array(array) => {
                let bytes = datafusion::arrow::compute::cast(array, &DataType::Int64)?;
                let bytes = bytes.as_primitive::<Int64Type>();
                let mut out = StringBuilder::with_capacity(bytes.len(), bytes.len() * 8);
                for i in 0..bytes.len() {
                    out.append_option((!bytes.is_null(i)).then(|| pretty_size(bytes.value(i))));
                }
                Ok(ColumnarValue::Array(Arc::new(out.finish())))
            }
        }),
    )
}

/// PostgreSQL 15's `pg_size_pretty`: bytes below 10 kB, then the largest unit that keeps the
/// number under 20,480 (rounded half away from zero), up to PB.
fn pretty_size(bytes: i64) -> String {
    // (unit, limit, rounded, bits)
    const UNITS: [(&str, i64, bool, u32); 6] = [
        ("bytes", 10 * 1024, false, 0),
        ("kB", 20 * 1024 - 1, true, 10),
        ("MB", 20 * 1024 - 1, true, 20),
        ("GB", 20 * 1024 - 1, true, 30),
        ("TB", 20 * 1024 - 1, true, 40),
        ("PB", 20 * 1024 - 1, true, 50),
    ];
    let half_rounded = |x: i64| (x + if x < 0 { -1 } else { 1 }) / 2;
    let mut size = bytes;
    for (i, (unit, limit, rounded, bits)) in UNITS.iter().enumerate() {
        let Some((_, _, next_rounded, next_bits)) = UNITS.get(i + 1) else {
            let size = if *rounded { half_rounded(size) } else { size };
            return format!("{size} {unit}");
        };
        if size.unsigned_abs() < limit.unsigned_abs() {
            let size = if *rounded { half_rounded(size) } else { size };
            return format!("{size} {unit}");
        }
        // One bit fewer when the next unit rounds by halves, one more if this one did.
        let shift = next_bits - bits - u32::from(*next_rounded) + u32::from(*rounded);
        size /= 1_i64 << shift;
    }
    format!("{bytes} bytes")
}

/// `json_build_object(key, value, …)`, as in PostgreSQL: SQLAlchemy's column reflection
/// builds its identity and collation details with it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: datafusion::logical_expr::Signature,
}

impl JsonBuildObject {
    fn new() -> JsonBuildObject {
        JsonBuildObject {
            signature: datafusion::logical_expr::Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        if args.args.len() % 2 != 0 {
            return datafusion::common::exec_err!(
                "json_build_object: argument list must have even number of elements"
            );
        }
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let mut out = datafusion::arrow::array::StringBuilder::with_capacity(rows, rows * 32);
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                let value = ScalarValue::try_from_array(&pair[1], row)?;
                object.insert(json_key(&key), json_value(&value));
            }
            out.append_value(serde_json::Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

fn json_key(value: &ScalarValue) -> String {
    match value {
        ScalarValue::Utf8(Some(text))
        | ScalarValue::LargeUtf8(Some(text))
        | ScalarValue::Utf8View(Some(text)) => text.clone(),
        other => other.to_string(),
    }
}

fn json_value(value: &ScalarValue) -> serde_json::Value {
    if value.is_null() {
        return serde_json::Value::Null;
    }
    match value {
        ScalarValue::Boolean(Some(b)) => serde_json::Value::Bool(*b),
        ScalarValue::Utf8(Some(text))
        | ScalarValue::LargeUtf8(Some(text))
        | ScalarValue::Utf8View(Some(text)) => serde_json::Value::String(text.clone()),
        other if other.data_type().is_numeric() => serde_json::from_str(&other.to_string())
            .unwrap_or_else(|_| serde_json::Value::String(other.to_string())),
        other => serde_json::Value::String(other.to_string()),
    }
}

/// A function that exists for clients' catalog queries and always gives the same answer,
/// because what it asks about does not vary in c360 (no sequences, one collation…).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Constant {
    name: &'static str,
    signature: datafusion::logical_expr::Signature,
    value: ScalarValue,
}

fn constant(
    name: &'static str,
    arity: usize,
    value: ScalarValue,
) -> datafusion::logical_expr::ScalarUDF {
    datafusion::logical_expr::ScalarUDF::new_from_impl(Constant {
        name,
        signature: datafusion::logical_expr::Signature::any(arity, Volatility::Immutable),
        value,
    })
}

impl datafusion::logical_expr::ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.value.data_type())
    }

    fn invoke_with_args(
        &self,
        _: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

/// `to_regtype(name)`: the oid of a built-in type, or NULL (psycopg and SQLAlchemy look
/// types up with it at connect time, e.g. for `hstore`, which c360 does not have).
fn to_regtype() -> datafusion::logical_expr::ScalarUDF {
    use std::collections::HashMap;

    use datafusion::arrow::array::{Array, AsArray, Int32Builder};
    use pgwire::api::Type;

    let mut oids: HashMap<String, i32> = HashMap::new();
    // postgres-types knows every built-in type by oid; none is above 10 000.
    for oid in 0..10_000u32 {
        if let Some(ty) = Type::from_oid(oid) {
            oids.insert(ty.name().to_string(), oid as i32);
        }
    }
    for (alias, name) in [
        ("integer", "int4"),
        ("int", "int4"),
        ("bigint", "int8"),
        ("smallint", "int2"),
        ("boolean", "bool"),
        ("real", "float4"),
        ("double precision", "float8"),
        ("character varying", "varchar"),
        ("character", "bpchar"),
        ("timestamp without time zone", "timestamp"),
        ("timestamp with time zone", "timestamptz"),
        ("time without time zone", "time"),
        ("decimal", "numeric"),
    ] {
        if let Some(oid) = oids.get(name).copied() {
            oids.insert(alias.to_string(), oid);
        }
    }
    create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let lookup = |name: &str| {
                let name = name.trim().to_ascii_lowercase();
                let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
                oids.get(name.trim_matches('"')).copied()
            };
            match &args[0] {
                ColumnarValue::Scalar(value) => {
                    let name = match value {
                        ScalarValue::Utf8(name) | ScalarValue::LargeUtf8(name) => name.clone(),
                        _ => None,
                    };
                    Ok(ColumnarValue::Scalar(ScalarValue::Int32(
                        name.as_deref().and_then(lookup),
                    )))
                }
                ColumnarValue::Array(array) => {
                    let names = datafusion::arrow::compute::cast(array, &DataType::Utf8)?;
                    let names = names.as_string::<i32>();
                    let mut out = Int32Builder::with_capacity(names.len());
                    for i in 0..names.len() {
                        out.append_option(
                            (!names.is_null(i))
                                .then(|| lookup(names.value(i)))
                                .flatten(),
                        );
                    }
                    Ok(ColumnarValue::Array(Arc::new(out.finish())))
                }
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_print_as_postgresql_15_prints_them() {
        // Each pair as PostgreSQL 15's pg_size_pretty answered it.
        for (bytes, expected) in [
            (0, "0 bytes"),
            (-1, "-1 bytes"),
            (10239, "10239 bytes"),
            (10240, "10 kB"),
            (10751, "10 kB"),
            (10752, "11 kB"),
            (-10752, "-11 kB"),
            (20479, "20 kB"),
            (1_000_000, "977 kB"),
            (10_485_759, "10 MB"),
            (123_456_789, "118 MB"),
            (-123_456_789, "-118 MB"),
            (1_073_741_824, "1024 MB"),
            (20_971_520_000, "20 GB"),
            (1_099_511_627_776, "1024 GB"),
            (10_995_116_277_760, "10 TB"),
            (i64::MAX, "8192 PB"),
        ] {
            assert_eq!(super::pretty_size(bytes), expected, "{bytes}");
        }
    }
}
