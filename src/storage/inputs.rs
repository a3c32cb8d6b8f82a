//! What a query reads, and whether any of it changed since it last ran: a named query's
//! refresh is skipped when nothing changed, and an identity graph refreshes when its source
//! did.
//!
//! The query's logical plan (views expanded, subqueries included) names its base tables. Each
//! gets a version token where one can be known cheaply: a c360-published table (identity
//! graph outputs, segments, materialized views) counts its publications; a landed table gives
//! its Delta log version; a file-backed table hashes its files' names, sizes and times. The
//! fingerprint of the query is the hash of all tokens; when it matches the last one, nothing
//! the query reads has changed. A query that reads a table of unknown version (an in-memory
//! table) or calls a time-dependent function (`now()`, `random()`) has no fingerprint: it
//! counts as changed every time.

use std::any::Any;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::listing::ListingTable;
use datafusion::datasource::{ViewTable, source_as_provider};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;

use super::provider::LandedProvider;
use super::published::PublishedTable;

/// The tables and views a query reads.
pub struct Inputs {
    /// Base tables by name, with their providers.
    pub tables: BTreeMap<String, Arc<dyn TableProvider>>,
    /// Views by name (expanded: their own tables are in `tables`).
    pub views: BTreeMap<String, Arc<dyn TableProvider>>,
    /// Whether the query calls a function whose result depends on more than its arguments.
    pub time_dependent: bool,
}

impl Inputs {
    /// Every table and view name the query reads, directly or through views.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tables.keys().chain(self.views.keys())
    }
}

pub fn inputs_of(plan: &LogicalPlan) -> Result<Inputs> {
    let mut inputs = Inputs {
        tables: BTreeMap::new(),
        views: BTreeMap::new(),
        time_dependent: false,
    };
    collect(plan, &mut inputs)?;
    Ok(inputs)
}

fn collect(plan: &LogicalPlan, inputs: &mut Inputs) -> Result<()> {
    let mut views = Vec::new();
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let provider = source_as_provider(&scan.source)?;
            let name = scan.table_name.table().to_string();
            let any: &dyn Any = provider.as_ref();
            if let Some(view) = any.downcast_ref::<ViewTable>() {
                views.push(view.logical_plan().clone());
                inputs.views.insert(name, provider);
            } else {
                inputs.tables.insert(name, provider);
            }
        }
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && f.func.signature().volatility != Volatility::Immutable
                {
                    inputs.time_dependent = true;
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        Ok(TreeNodeRecursion::Continue)
    })?;
    for view in views {
        collect(&view, inputs)?;
    }
    Ok(())
}

/// The fingerprint of everything `inputs` reads, or `None` when it cannot be known.
pub async fn fingerprint(ctx: &SessionContext, inputs: &Inputs) -> Result<Option<u64>> {
    if inputs.time_dependent {
        return Ok(None);
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for (name, provider) in &inputs.tables {
        name.hash(&mut hasher);
        match version_token(ctx, provider.as_ref()).await? {
            Some(token) => token.hash(&mut hasher),
            None => return Ok(None),
        }
    }
    Ok(Some(hasher.finish()))
}

async fn version_token(ctx: &SessionContext, provider: &dyn TableProvider) -> Result<Option<u64>> {
    let any: &dyn Any = provider;
    if let Some(published) = any.downcast_ref::<PublishedTable>() {
        return Ok(Some(published.generation()));
    }
    if let Some(landed) = any.downcast_ref::<LandedProvider>() {
        // A landed table's Delta log version changes with every commit, and only then.
        let snapshot = landed
            .0
            .refresh()
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        landed.0.dir().hash(&mut hasher);
        snapshot.version.hash(&mut hasher);
        return Ok(Some(hasher.finish()));
    }
    if let Some(listing) = any.downcast_ref::<ListingTable>() {
        let state = ctx.state();
        let extension = listing.options().file_extension.clone();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for url in listing.table_paths() {
            let store = ctx.runtime_env().object_store(url.object_store())?;
            let mut files: Vec<_> = url
                .list_all_files(&state, store.as_ref(), &extension)
                .await?
                .try_collect()
                .await?;
            files.sort_by(|a, b| a.location.cmp(&b.location));
            for file in files {
                file.location.as_ref().hash(&mut hasher);
                file.size.hash(&mut hasher);
                file.last_modified.hash(&mut hasher);
                file.e_tag.hash(&mut hasher);
            }
        }
        return Ok(Some(hasher.finish()));
    }
    Ok(None)
}
