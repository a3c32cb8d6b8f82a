//! Every SQL function c360 adds to DataFusion, registered in one place.
//!
//! Keeping the list here (and not scattered across modules) is what lets a distributed
//! executor register exactly the same functions as the coordinator.

use datafusion::execution::FunctionRegistry;

use crate::error::Result;

/// Registers c360's functions on `registry` (a `SessionState`, or an executor's registry).
pub fn register_all(registry: &mut dyn FunctionRegistry) -> Result<()> {
    // JSON columns (event properties, traits, context) with Postgres-style `->`, `->>`.
    datafusion_functions_json::register_all(registry)?;
    crate::identity::normalize::register(registry)?;
    Ok(())
}
