//! Operator-facing tables: what the engine is doing, queryable in SQL from any client.
//!
//! Each table is published whole whenever what it shows changes, so a reader always sees one
//! consistent snapshot.

mod actions;
mod identity_graphs;
mod named_queries;

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;

use crate::actions::{Queue, RunOutcome};
use crate::error::Result;
use crate::identity::manager::IdentityGraphs;
use crate::refresh::{Status, segments};
use crate::storage::published::PublishedTable;

/// The tables the refresh engine keeps current.
pub struct Tables {
    segments: Arc<PublishedTable>,
    materialized_views: Arc<PublishedTable>,
    triggers: Arc<PublishedTable>,
    segment_members: Arc<PublishedTable>,
    segment_changes: Arc<PublishedTable>,
}

impl Tables {
    /// Registers every table, and the queue's pull functions (`claim_actions`,
    /// `ack_actions`; a claim stays invisible to others for `visibility_micros`).
    pub fn register(
        ctx: &SessionContext,
        queue: &Arc<Queue>,
        visibility_micros: i64,
    ) -> Result<Tables> {
        let table = |schema| PublishedTable::new(schema, Vec::new()).map(Arc::new);
        ctx.register_table(
            "actions",
            Arc::new(actions::QueueTable::actions(Arc::clone(queue))),
        )?;
        ctx.register_table(
            "trigger_runs",
            Arc::new(actions::QueueTable::runs(Arc::clone(queue))),
        )?;
        ctx.register_udtf(
            "claim_actions",
            Arc::new(actions::QueueFunction::claim(
                Arc::clone(queue),
                visibility_micros,
            )),
        );
        ctx.register_udtf(
            "ack_actions",
            Arc::new(actions::QueueFunction::ack(Arc::clone(queue))),
        );
        let tables = Tables {
            segments: table(named_queries::segments_schema())?,
            materialized_views: table(named_queries::materialized_views_schema())?,
            triggers: table(named_queries::triggers_schema())?,
            segment_members: table(segments::all_members_schema())?,
            segment_changes: table(segments::changes_schema())?,
        };
        for (name, table) in [
            ("segments", &tables.segments),
            ("materialized_views", &tables.materialized_views),
            ("triggers", &tables.triggers),
            ("segment_members", &tables.segment_members),
            ("segment_changes", &tables.segment_changes),
        ] {
            ctx.register_table(name, Arc::clone(table) as _)?;
        }
        Ok(tables)
    }

    pub fn publish(
        &self,
        statuses: &[Status],
        members: Vec<RecordBatch>,
        changes: Vec<RecordBatch>,
    ) -> Result<()> {
        self.segments
            .publish(vec![named_queries::segments(statuses)?])?;
        self.materialized_views
            .publish(vec![named_queries::materialized_views(statuses)?])?;
        self.triggers
            .publish(vec![named_queries::triggers(statuses)?])?;
        self.segment_members.publish(members)?;
        self.segment_changes.publish(changes)?;
        Ok(())
    }
}

/// Registers `identity_graphs`, read from `graphs` at each scan.
pub fn register_identity_graphs(ctx: &SessionContext, graphs: Arc<IdentityGraphs>) -> Result<()> {
    ctx.register_table(
        "identity_graphs",
        Arc::new(identity_graphs::IdentityGraphsTable::new(graphs)),
    )?;
    Ok(())
}

/// The rows of `EXPLAIN TRIGGER`.
pub fn explain_trigger(
    outcome: &RunOutcome,
    payloads: &[String],
    now: i64,
) -> Result<crate::QueryResult> {
    actions::explain(outcome, payloads, now)
}
