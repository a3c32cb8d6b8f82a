//! The stitch: links identifier rows into one profile per person, under rules, deterministically.
//!
//! **Input.** Rows `(record_key, id_type, id_value, seen_at)`: a source record (a CRM contact,
//! an order, a web session) and one identifier it carries. Identifiers on the same record belong
//! to the same person, and records that carry the same identifier (same type *and* value,
//! compared byte for byte, so normalize upstream) belong to the same person. Followed blindly,
//! those two facts fuse strangers: one `test@test.com`, one family tablet, one `0000000000`
//! typed at a till joins everyone who touched it. So the graph follows them under [`Rules`]:
//!
//! - **priority**: identifier types, most trusted first (`user_id, email, phone, …`);
//! - **limits**: at most N distinct values of a type per profile (one `user_id`, five emails);
//! - **blocked**: regular expressions; a matching value is refused (`reason = 'blocked'`);
//! - **hubs**: a value seen on records with more than `hub_threshold` distinct values of some
//!   *limited* type (one email with 300 loyalty cards) is refused (`reason = 'hub'`) and links
//!   nothing. The graph decides this over all data it has seen, before stitching each batch;
//! - rows of a type not in priority are refused (`reason = 'unknown_type'`); rows whose value or
//!   record key is empty or only whitespace (pass `""` for SQL NULL) are ignored: they are
//!   noise, not evidence, and listing them would drown the refusals worth reading.
//!
//! **Algorithm** (Segment's). Records are processed in `(seen_at, record_key)` order, where a
//! record's `seen_at` is the earliest of its rows in the batch. A record's usable identifiers
//! are sorted by type priority, then value. The first one *anchors* the record: its profile, or
//! a new profile it founds. Each further identifier, in order: already in the anchor's profile,
//! nothing to do; in another profile P, the two merge if and only if every limited type still
//! fits (each value belongs to exactly one profile, so counts add), otherwise this record's link
//! through it is refused (`reason = 'limit'`); in no profile yet, it joins the anchor's profile if
//! its type has room, else it is refused. So when a link would break a limit, the *lower
//! priority* identifier is the one dropped: a shared tablet (`anonymous_id`) seen with user A
//! and later user B does not fuse A and B under `user_id: 1`; B's login anchors on B.
//!
//! **Outputs**, as Arrow batches the SQL layer registers as tables: [`IdentityGraph::identities`]
//! (which values make up each profile), [`IdentityGraph::records`] (each source record's current
//! profile), [`IdentityGraph::merges`] (the merge log) and [`IdentityGraph::refused`] (every
//! refused identifier and why).
//!
//! **Guarantees.**
//! - *Deterministic*: the same rows in any order give the same tables, row order included.
//!   Split into batches, they give the same tables as one full build as long as each batch's
//!   new records come after the previous batches' in `(seen_at, record_key)` order, with two
//!   exceptions that are limitations, not accidents: a value that becomes a hub in a later
//!   batch keeps the links it made before (profiles merged through it stay merged, since
//!   merges are never undone, only logged); and rows added to an already-known record are
//!   stitched as that record's next step, not re-sorted into its past.
//! - *Stable ids*: a profile id is `p_` and 16 hex digits of [`stable_hash`] of its founding
//!   identifier, the same across runs, machines and versions. When two profiles merge, the
//!   older one (earlier founding `seen_at`, then smaller id) survives with its id, and the merge
//!   is logged so that downstream systems can follow it.
//! - *Incremental and idempotent*: [`IdentityGraph::apply`] takes only the new rows; a record
//!   key seen before gets the new identifiers added to it, and re-applying rows already applied
//!   changes nothing. [`IdentityGraph::to_state`] / [`IdentityGraph::from_state`] persist
//!   everything needed to continue after a restart.
//!
//! **Cost.** Memory is about 70 bytes per distinct identifier value and 30 per record, plus
//! their text, and 12 bytes plus 4 per identifier for a record with several; hub detection
//! keeps at most `hub_threshold + 1` co-occurring values per limited type and value. While a
//! batch is applied it takes about 30 bytes more per row. Time is a few hash lookups per row
//! and a few cache misses per record: the memory layout (dense ids, batched lookups, the
//! batch laid out in processing order, one word per single-identifier record) is what the
//! code is organised around.
//!
//! **Limits.** Up to 2^30 distinct values and records and 4 GiB of text each (32-bit indexes
//! with flag bits), 64 identifier types. Profile ids are 64-bit hashes: two founders colliding (odds about
//! 1 in 400 000 at 10 million profiles) would share an id.

use std::borrow::Cow;

use super::bits::Bits;
use super::intern::{FastSet, Interner, heap_of, trim};
use super::load::{Batch, Loader};
pub use super::output::{identities_schema, merges_schema, records_schema, refused_schema};
pub use super::rules::{DEFAULT_HUB_THRESHOLD, MAX_HUB_THRESHOLD, MAX_TYPES, Rules};
use crate::prefetch::{AHEAD, prefetch};

/// Rows worth passing to [`Applying::feed`] at once: fewer rows make shorter interning rounds,
/// each of which costs a thread start and a wait for the slower core.
pub const FEED_ROWS: usize = 1 << 18;

/// "No profile" / "no entry" in the graph's index vectors.
pub(super) const NONE: u32 = u32::MAX;
/// Top bit of an id in a record's identifier list: this record's link through it was refused.
pub(super) const REFUSED_BIT: u32 = 1 << 31;
/// In `IdentityGraph::r`: the record has several identifiers (see `multi`).
pub(super) const MULTI: u32 = 1 << 31;
/// In `IdentityGraph::r`: the record's one identifier was refused.
pub(super) const SINGLE_REFUSED: u32 = 1 << 30;
/// A value's meta byte: its type index, and two flags.
pub(super) const TYPE_MASK: u8 = 0x3F;
pub(super) const BLOCKED: u8 = 0x40;
pub(super) const HUB: u8 = 0x80;

/// What can go wrong: rules that make no sense (caught when the graph is defined), persisted
/// state that does not fit the rules or is damaged, and a graph past its 32-bit indexes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("rules: priority names no identifier type")]
    EmptyPriority,
    #[error(
        "rules: {0:?} is not a valid identifier type name (use letters, digits, '_', '.', ':' or '-')"
    )]
    BadTypeName(String),
    #[error("rules: identifier type {0:?} appears twice in priority")]
    DuplicateType(String),
    #[error("rules: priority lists {0} identifier types, at most 64 are supported")]
    TooManyTypes(usize),
    #[error("rules: limits name {id_type:?}, which is not in priority ({priority})")]
    LimitOnUnknownType { id_type: String, priority: String },
    #[error(
        "rules: the limit on {0:?} is 0; a limit must be at least 1 (to ignore a type, leave it out of priority)"
    )]
    ZeroLimit(String),
    #[error("rules: blocked pattern {pattern:?} is not a valid regular expression: {message}")]
    BadPattern { pattern: String, message: String },
    #[error("rules: hub_threshold {0} is out of range (1 to 10000)")]
    BadHubThreshold(u32),
    #[error("identity graph state, part {part:?}: {message}")]
    State { part: String, message: String },
    #[error(
        "identity graph state was built with other rules ({stored}) than the graph's ({given}); rebuild the graph from its source"
    )]
    RulesChanged { stored: String, given: String },
    #[error(
        "identity graph is full: too many {what} for its 32-bit indexes; reload the graph from its last state"
    )]
    Capacity { what: &'static str },
    #[error("identity graph: building table {table}: {message}")]
    Arrow { table: String, message: String },
    #[error("identity graph: reading keys back from its scratch file: {0}")]
    Spill(String),
}

impl GraphError {
    /// Keys could not be read back from a spilling interner's scratch file.
    pub(super) fn spill(e: datafusion::arrow::error::ArrowError) -> GraphError {
        GraphError::Spill(e.to_string())
    }
}

/// Why an identifier was refused, as shown in the `reason` column of [`IdentityGraph::refused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Blocked,
    Hub,
    Limit,
    UnknownType,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Blocked => "blocked",
            Reason::Hub => "hub",
            Reason::Limit => "limit",
            Reason::UnknownType => "unknown_type",
        }
    }

    pub(super) fn parse(text: &str) -> Option<Reason> {
        [
            Reason::Blocked,
            Reason::Hub,
            Reason::Limit,
            Reason::UnknownType,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }
}

/// One identifier on one source record. Pass `""` as `id_value` for SQL NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityRow<'a> {
    pub record_key: &'a str,
    pub id_type: &'a str,
    pub id_value: &'a str,
    /// Microseconds since the Unix epoch.
    pub seen_at: i64,
}

/// What one [`IdentityGraph::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplySummary {
    /// Rows given.
    pub rows: u64,
    /// Rows with an empty value or record key.
    pub ignored: u64,
    /// Records that carried identifiers not seen on them before.
    pub records: u64,
    pub new_profiles: u64,
    pub merges: u64,
    /// New entries in the refused table.
    pub refused: u64,
    /// Values found to be hubs in this batch.
    pub new_hubs: u64,
    /// Rows that moved an identifier's first or last seen past what the graph held: a change
    /// to publish and keep even when nothing else changed.
    pub reseen: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// An interned value of a type in priority.
    Value(u32),
    /// An entry of the unknown-type interner.
    Unknown(u32),
}

/// One row of the refused table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) record: u32,
    pub(super) what: Refused,
    pub(super) reason: Reason,
    pub(super) seen_at: i64,
    pub(super) detail: Option<Box<str>>,
}

/// One row of the merges table: profile slots, the record's time, and the value linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Merge {
    pub(super) from: u32,
    pub(super) into: u32,
    pub(super) at: i64,
    pub(super) via: u32,
}

/// The identity graph: interned values and records, a union-find forest of profiles, and logs.
///
/// Vectors prefixed `v_` are indexed by value id, `p_` by profile slot, and `r` by record id.
/// Ids are dense and only meaningful inside one graph; all ordering decisions compare keys,
/// times and stable hashes, never ids, which is what makes the result independent of input
/// order.
pub struct IdentityGraph {
    pub(super) rules: Rules,
    /// Key: one byte of type index, then the value's bytes.
    pub(super) values: Interner,
    /// Type index (`TYPE_MASK`) and the `BLOCKED` / `HUB` flags: one byte, so that the whole
    /// vector stays in cache while records are stitched.
    pub(super) v_meta: Vec<u8>,
    /// The profile slot the value joined (follow `p_parent` to its current profile).
    pub(super) v_profile: Vec<u32>,
    /// First and last `seen_at` of any row carrying the value.
    pub(super) v_seen: Vec<(i64, i64)>,
    /// `(start, len)` in `co_pool` of the distinct limited-type values seen on a record with
    /// this one (hub detection). A list lives in a block of `block_size(len)` entries.
    pub(super) v_co: Vec<(u32, u32)>,
    pub(super) co_pool: Vec<u32>,
    /// Values in the order they joined a profile: the row order of `identities`.
    pub(super) linked: Vec<u32>,
    pub(super) records: Interner,
    /// By record id, one word (most records carry one identifier, and there are tens of
    /// millions of them): `NONE` for a record with no identifier yet; a value id, flagged
    /// with `SINGLE_REFUSED` if its link was refused, for a record with exactly that one
    /// identifier (its profile is the value's); else `MULTI` and an index into `multi`.
    pub(super) r: Vec<u32>,
    pub(super) multi: Vec<RecordEntry>,
    /// Identifier lists of `multi` records, each id flagged with `REFUSED_BIT` if the record's
    /// link through it was refused.
    pub(super) r_ids: Vec<u32>,
    /// Records stitched, in batches in the order applied and by id within one (so ascending):
    /// the row order of `records`.
    pub(super) record_order: Vec<u32>,
    pub(super) p_parent: Vec<u32>,
    pub(super) p_founder: Vec<u32>,
    /// When the profile was founded (its founding record's `seen_at`): older survives a merge.
    pub(super) p_born: Vec<i64>,
    pub(super) p_hash: Vec<u64>,
    /// `counted_types()` counts per slot, valid at roots: values of each limited type.
    pub(super) p_counts: Vec<u32>,
    pub(super) merges: Vec<Merge>,
    pub(super) refusals: Vec<Refusal>,
    /// Key: type, 0x1F, value, for rows whose type is not in priority.
    pub(super) unknown: Interner,
    /// `(record << 32) | unknown id` already refused, so that re-applied rows add nothing.
    pub(super) unknown_seen: FastSet<u64>,
    /// Known records stitched again since `take_since_tables`: their profile may have changed
    /// other than by a merge (see `tables.rs`).
    pub(super) restitched: Vec<u32>,
    /// One bit per value whose first or last `seen_at` changed since the tables last took
    /// these changes: the only rows of `identities` whose times a refresh must rewrite.
    pub(super) reseen: Bits,
}

/// What changed in a graph since its tables were last brought up to date, besides new rows and
/// merges (see `tables.rs`).
pub(super) struct SinceTables {
    pub(super) restitched: Vec<u32>,
    pub(super) reseen: Bits,
}

/// Whether a refresh's log must hold a row it read, so that replaying the log onto the state
/// before gives the graph the refresh made (see [`Applying::log_need`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogNeed {
    /// The row may change the graph.
    Always,
    /// Applying the row changes nothing: a blank key or value.
    Never,
    /// A repeat of what the graph holds: this record, known before the batch, already
    /// carries the identifier, whose first and last seen span the row's time. Needed only if
    /// the batch changes the record anyway, because a record's rows together decide where it
    /// is processed; otherwise the record is passed over and the row does nothing.
    IfRecordChanges(u32),
}

/// One batch of rows being applied in parts (see [`IdentityGraph::begin_apply`]). Dropping it
/// without `finish` leaves the rows fed so far interned but unlinked, as a failed `apply` does.
pub struct Applying<'g> {
    graph: &'g mut IdentityGraph,
    loader: Loader,
}

impl<'g> Applying<'g> {
    /// Interns these rows into the batch; nothing is stitched until `finish`.
    pub fn feed<'a>(
        &mut self,
        rows: impl IntoIterator<Item = IdentityRow<'a>>,
    ) -> Result<(), GraphError> {
        self.graph.load_rows(&mut self.loader, rows)
    }

    /// What a log of this batch needs of `row`, asked before the row is fed. Only rows seen
    /// at or before `repeats_until` (the newest time applied before) can be repeats: the
    /// others are never looked up.
    pub fn log_need(&self, row: &IdentityRow<'_>, repeats_until: Option<i64>) -> LogNeed {
        self.graph
            .log_need(self.loader.old_records(), row, repeats_until)
    }

    /// Heap the graph and the rows fed so far hold (capacity, not bytes written).
    pub fn heap_bytes(&self) -> usize {
        self.graph.heap_bytes() + self.loader.heap_bytes()
    }

    /// Stitches everything fed, in processing order.
    pub fn finish(self) -> Result<ApplySummary, GraphError> {
        self.stitch_fed().map(|(summary, _)| summary)
    }

    /// [`Applying::finish`], also naming the records known before the batch that it
    /// changed: what decides which [`LogNeed::IfRecordChanges`] rows a log needs.
    pub fn finish_changed(self) -> Result<(ApplySummary, Vec<u32>), GraphError> {
        let mark = self.graph.restitched.len();
        let (summary, graph) = self.stitch_fed()?;
        Ok((summary, graph.restitched[mark..].to_vec()))
    }

    /// [`Applying::finish`], running `beside` meanwhile on a thread of its own with the
    /// records interner, which nothing changes once the rows are laid out: the stitch runs on
    /// one core, and a full build writes its record keys' state on the other (see
    /// `state::record_keys_part`). `beside` does not run when laying the rows out fails.
    pub(super) fn finish_beside<R: Send>(
        self,
        beside: impl FnOnce(&Interner) -> R + Send,
    ) -> (Result<ApplySummary, GraphError>, Option<R>) {
        let (stitched, aside) = self.stitch_fed_beside(Some(beside));
        (stitched.map(|(summary, _)| summary), aside)
    }

    fn stitch_fed(self) -> Result<(ApplySummary, &'g mut IdentityGraph), GraphError> {
        self.stitch_fed_beside(None::<fn(&Interner)>).0
    }

    #[allow(clippy::type_complexity)]
    fn stitch_fed_beside<R: Send>(
        self,
        beside: Option<impl FnOnce(&Interner) -> R + Send>,
    ) -> (
        Result<(ApplySummary, &'g mut IdentityGraph), GraphError>,
        Option<R>,
    ) {
        let graph = self.graph;
        let started = std::time::Instant::now();
        let (mut batch, mut summary) = match graph.finish_load(self.loader) {
            Ok(loaded) => loaded,
            Err(e) => return (Err(e), None),
        };
        let laid_out = started.elapsed();
        let mut stitch = |graph: &mut IdentityGraph| {
            graph.observe(&mut batch, &mut summary);
            let observed = started.elapsed();
            graph.stitch(&batch, &mut summary);
            (observed, started.elapsed())
        };
        let ((observed, stitched), aside) = match beside {
            None => (stitch(graph), None),
            Some(beside) => {
                // Lent out whole: observing and stitching read only the records' count,
                // which `r` also gives.
                let records = std::mem::replace(&mut graph.records, Interner::new());
                let (times, aside) = std::thread::scope(|scope| {
                    let aside = scope.spawn(|| beside(&records));
                    let times = stitch(graph);
                    let aside = aside
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                    (times, aside)
                });
                graph.records = records;
                (times, Some(aside))
            }
        };
        drop(batch);
        graph.flatten();
        graph.trim();
        // Where a large apply's time goes past loading, for benches and slow refreshes.
        tracing::debug!(
            rows = summary.rows,
            layout_ms = laid_out.as_millis() as u64,
            observe_ms = (observed - laid_out).as_millis() as u64,
            stitch_ms = (stitched - observed).as_millis() as u64,
            flatten_ms = (started.elapsed() - stitched).as_millis() as u64,
            heap_mb = graph.heap_bytes() >> 20,
            "identity batch stitched"
        );
        (Ok((summary, graph)), aside)
    }
}

/// A record with several identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecordEntry {
    /// The profile slot of the record's anchor when last stitched, or `NONE` if nothing on
    /// the record linked.
    pub(super) profile: u32,
    /// The record's identifiers are `r_ids[start..start + len]`.
    pub(super) start: u32,
    pub(super) len: u32,
}

/// A record's identifiers, each flagged with `REFUSED_BIT` if its link was refused.
pub(super) enum RecordIds<'a> {
    Single(u32),
    Multi(&'a [u32]),
}

impl RecordIds<'_> {
    pub(super) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let (single, list) = match self {
            RecordIds::Single(id) => (Some(*id), &[][..]),
            RecordIds::Multi(list) => (None, *list),
        };
        single.into_iter().chain(list.iter().copied())
    }

    pub(super) fn len(&self) -> usize {
        match self {
            RecordIds::Single(_) => 1,
            RecordIds::Multi(list) => list.len(),
        }
    }
}

impl IdentityGraph {
    pub fn new(rules: Rules) -> Self {
        IdentityGraph {
            rules,
            values: Interner::new(),
            v_meta: Vec::new(),
            v_profile: Vec::new(),
            v_seen: Vec::new(),
            v_co: Vec::new(),
            co_pool: Vec::new(),
            linked: Vec::new(),
            records: Interner::spilling(),
            r: Vec::new(),
            multi: Vec::new(),
            r_ids: Vec::new(),
            record_order: Vec::new(),
            p_parent: Vec::new(),
            p_founder: Vec::new(),
            p_born: Vec::new(),
            p_hash: Vec::new(),
            p_counts: Vec::new(),
            merges: Vec::new(),
            refusals: Vec::new(),
            unknown: Interner::new(),
            unknown_seen: FastSet::default(),
            restitched: Vec::new(),
            reseen: Bits::default(),
        }
    }

    /// What changed since the last call, for the tables to catch up on.
    pub(super) fn take_since_tables(&mut self) -> SinceTables {
        SinceTables {
            restitched: std::mem::take(&mut self.restitched),
            reseen: std::mem::take(&mut self.reseen),
        }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Number of profiles (current, after merges).
    pub fn profile_count(&self) -> usize {
        (0..self.p_parent.len())
            .filter(|&p| self.p_parent[p] == p as u32)
            .count()
    }

    /// Number of source records that carried identifiers.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// Number of distinct identifiers (type and value) of a type in priority.
    pub fn identifier_count(&self) -> usize {
        self.values.len()
    }

    /// Rows of the merges table.
    pub fn merge_count(&self) -> usize {
        self.merges.len()
    }

    /// Rows of the refused table.
    pub fn refusal_count(&self) -> usize {
        self.refusals.len()
    }

    /// Where the graph's sealed key blocks are, which the output tables' text columns point
    /// into rather than copy (see `Interner::key_views`): for memory accounting that counts
    /// each buffer once (and spilled blocks, page cache, as no heap at all).
    pub fn shared_block_addresses(&self) -> Vec<usize> {
        let mut addresses = self.records.sealed_addresses();
        addresses.extend(self.values.sealed_addresses());
        addresses
    }

    /// Approximate bytes of heap the graph holds (for logs and system tables).
    pub fn heap_bytes(&self) -> usize {
        let details: usize = self
            .refusals
            .iter()
            .map(|r| r.detail.as_ref().map_or(0, |d| d.len()))
            .sum();
        self.values.heap_bytes()
            + self.records.heap_bytes()
            + self.unknown.heap_bytes()
            + heap_of(&self.v_meta)
            + heap_of(&self.v_profile)
            + heap_of(&self.v_seen)
            + heap_of(&self.v_co)
            + heap_of(&self.co_pool)
            + heap_of(&self.linked)
            + heap_of(&self.r)
            + heap_of(&self.multi)
            + heap_of(&self.r_ids)
            + heap_of(&self.record_order)
            + heap_of(&self.p_parent)
            + heap_of(&self.p_founder)
            + heap_of(&self.p_born)
            + heap_of(&self.p_hash)
            + heap_of(&self.p_counts)
            + heap_of(&self.merges)
            + heap_of(&self.refusals)
            + details
            + self.unknown_seen.capacity() * 16
    }

    /// Applies a batch of rows: all of them for a full build, only new ones for a refresh.
    ///
    /// Rows are consumed once, as they come. For input that arrives in parts (a query's
    /// stream of batches), use [`IdentityGraph::begin_apply`] and feed each part as it
    /// arrives, so that the whole input is never held at once. The only error is
    /// [`GraphError::Capacity`] (over a billion distinct values or records, or 4 GiB of their
    /// text); it is raised before any stitching, but values and records interned up to that
    /// point stay as unlinked entries, so the graph should be reloaded from its last state.
    ///
    /// Three steps: `load` interns the rows and lays them out by record in processing order;
    /// `observe` drops identifiers a record already had and updates hub detection; `stitch`
    /// runs the algorithm of the module documentation.
    pub fn apply<'a>(
        &mut self,
        rows: impl IntoIterator<Item = IdentityRow<'a>>,
    ) -> Result<ApplySummary, GraphError> {
        let mut applying = self.begin_apply();
        applying.feed(rows)?;
        applying.finish()
    }

    /// Starts applying one batch of rows given in parts: [`Applying::feed`] each part, then
    /// [`Applying::finish`]. The result is the same as one [`IdentityGraph::apply`] of all
    /// the parts' rows, in any split.
    pub fn begin_apply(&mut self) -> Applying<'_> {
        let loader = self.start_load();
        Applying {
            graph: self,
            loader,
        }
    }

    fn trim(&mut self) {
        self.values.trim();
        self.records.trim();
        trim(&mut self.v_meta);
        trim(&mut self.v_profile);
        trim(&mut self.v_seen);
        trim(&mut self.v_co);
        trim(&mut self.co_pool);
        trim(&mut self.linked);
        trim(&mut self.r);
        trim(&mut self.multi);
        trim(&mut self.r_ids);
        trim(&mut self.record_order);
        trim(&mut self.p_parent);
        trim(&mut self.p_founder);
        trim(&mut self.p_born);
        trim(&mut self.p_hash);
        trim(&mut self.p_counts);
        trim(&mut self.merges);
        trim(&mut self.refusals);
    }

    pub(super) fn type_of(&self, value: u32) -> u8 {
        self.v_meta[value as usize] & TYPE_MASK
    }

    /// A value's text (its key without the type byte). Read once per profile founded, on
    /// the stitch's one thread: checking it as UTF-8 again was a percent of a full build.
    pub(super) fn value_text(&self, value: u32) -> Cow<'_, str> {
        self.values.key_text(value, 1)
    }

    pub(super) fn record_text(&self, record: u32) -> Cow<'_, str> {
        self.records.key_text(record, 0)
    }

    /// Priority order: type, then value bytes (the key's first byte is the type index, so a
    /// key comparison is the whole order; comparing types first avoids most key reads).
    pub(super) fn priority_order(&self, a: u32, b: u32) -> std::cmp::Ordering {
        self.type_of(a)
            .cmp(&self.type_of(b))
            .then_with(|| self.values.key(a).cmp(self.values.key(b)))
    }

    /// The record's identifier list (ids flagged with `REFUSED_BIT`).
    pub(super) fn record_ids(&self, record: u32) -> RecordIds<'_> {
        match self.r[record as usize] {
            NONE => RecordIds::Multi(&[]),
            entry if entry & MULTI != 0 => {
                let entry = self.multi[(entry & !MULTI) as usize];
                RecordIds::Multi(
                    &self.r_ids[entry.start as usize..(entry.start + entry.len) as usize],
                )
            }
            value if value & SINGLE_REFUSED != 0 => {
                RecordIds::Single(value & !SINGLE_REFUSED | REFUSED_BIT)
            }
            value => RecordIds::Single(value),
        }
    }

    /// Index in `multi` of a record with several identifiers (none past the last record).
    fn multi_index(&self, record: usize) -> Option<usize> {
        match self.r.get(record) {
            Some(&entry) if entry != NONE && entry & MULTI != 0 => Some((entry & !MULTI) as usize),
            _ => None,
        }
    }

    /// Asks for what [`IdentityGraph::record_profile`] of `record` reads, some iterations
    /// before a loop over records in id order gets to it (their entries are read at random).
    pub(super) fn prefetch_record_profile(&self, record: usize) {
        match (self.multi_index(record), self.r.get(record)) {
            (Some(index), _) => prefetch(&self.multi, index),
            (None, Some(&value)) if value & SINGLE_REFUSED == 0 => {
                prefetch(&self.v_profile, value as usize)
            }
            _ => {}
        }
    }

    /// Asks for the `multi` entry of `record`, the first of two steps before
    /// [`IdentityGraph::record_ids`] of it (see [`IdentityGraph::prefetch_record_ids`]).
    pub(super) fn prefetch_multi_entry(&self, record: usize) {
        if let Some(index) = self.multi_index(record) {
            prefetch(&self.multi, index);
        }
    }

    /// Asks for the identifier list of `record`: reads its `multi` entry, which
    /// [`IdentityGraph::prefetch_multi_entry`] should have asked for some iterations before.
    pub(super) fn prefetch_record_ids(&self, record: usize) {
        if let Some(index) = self.multi_index(record) {
            prefetch(&self.r_ids, self.multi[index].start as usize);
        }
    }

    /// The record's profile slot (follow `p_parent` for its current profile), or `NONE`.
    pub(super) fn record_profile(&self, record: u32) -> u32 {
        match self.r[record as usize] {
            NONE => NONE,
            entry if entry & MULTI != 0 => self.multi[(entry & !MULTI) as usize].profile,
            value if value & SINGLE_REFUSED != 0 => NONE,
            value => self.v_profile[value as usize],
        }
    }

    /// Pass 2: Segment's algorithm, record by record in processing order.
    fn stitch(&mut self, batch: &Batch, summary: &mut ApplySummary) {
        let mut unknown_at = 0;
        let mut candidates: Vec<u32> = Vec::new();
        let mut additions: Vec<u32> = Vec::new();
        let mut new_stitched = Bits::new(self.r.len());
        for (position, &(seen_at, record)) in batch.order.iter().enumerate() {
            // The records ahead: their values' flags and profiles now, and the profiles'
            // parents once those profile ids have arrived, half as far ahead.
            if position + AHEAD < batch.order.len() {
                for &value in &batch.values[batch.range(position + AHEAD)] {
                    prefetch(&self.v_meta, value as usize);
                    prefetch(&self.v_profile, value as usize);
                }
            }
            if position + AHEAD / 2 < batch.order.len() {
                for &value in &batch.values[batch.range(position + AHEAD / 2)] {
                    if let Some(&slot) = self.v_profile.get(value as usize) {
                        prefetch(&self.p_parent, slot as usize);
                    }
                }
            }
            let fresh = &batch.values[batch.range(position)];
            let fresh = &fresh[..fresh.iter().position(|&v| v == NONE).unwrap_or(fresh.len())];
            let mut changed = !fresh.is_empty();
            while let Some(&(at, u)) = batch.unknown.get(unknown_at) {
                if at as usize != position {
                    break;
                }
                unknown_at += 1;
                if self
                    .unknown_seen
                    .insert((u64::from(record) << 32) | u64::from(u))
                {
                    changed = true;
                    let detail = format!(
                        "not one of the graph's types ({})",
                        self.rules.priority.join(", ")
                    );
                    let what = Refused::Unknown(u);
                    self.refuse(
                        record,
                        what,
                        Reason::UnknownType,
                        seen_at,
                        Some(detail),
                        summary,
                    );
                }
            }
            if !changed {
                continue;
            }
            summary.records += 1;
            if record >= batch.old_records {
                new_stitched.set(record);
            }
            candidates.clear();
            additions.clear();
            for &value in fresh {
                let meta = self.v_meta[value as usize];
                let what = Refused::Value(value);
                if meta & BLOCKED != 0 {
                    let detail = self.blocked_detail(value);
                    self.refuse(record, what, Reason::Blocked, seen_at, detail, summary);
                    additions.push(value | REFUSED_BIT);
                } else if meta & HUB != 0 {
                    let detail = self.hub_detail(value);
                    self.refuse(record, what, Reason::Hub, seen_at, detail, summary);
                    additions.push(value | REFUSED_BIT);
                } else {
                    candidates.push(value);
                    additions.push(value);
                }
            }
            // Identifiers the record already had take part again: a new, higher-priority one
            // may now anchor it. Hubs found since stop linking.
            if record < batch.old_records {
                let before = candidates.len();
                for id in self.record_ids(record).iter() {
                    if id & REFUSED_BIT == 0 && self.v_meta[id as usize] & HUB == 0 {
                        candidates.push(id);
                    }
                }
                if candidates.len() > before {
                    candidates.sort_unstable_by(|&a, &b| self.priority_order(a, b));
                }
            }
            let mut profile = NONE;
            if let Some((&anchor, rest)) = candidates.split_first() {
                profile = match self.v_profile[anchor as usize] {
                    NONE => self.found(anchor, seen_at, summary),
                    slot => self.find(slot),
                };
                for &value in rest {
                    if let Some(detail) = self.link(&mut profile, value, seen_at, summary) {
                        let what = Refused::Value(value);
                        self.refuse(record, what, Reason::Limit, seen_at, Some(detail), summary);
                        self.mark_refused(record, value, &mut additions);
                    }
                }
            }
            if record >= batch.old_records {
                // A new record's entry is written whole, never read: a store does not wait
                // for its cache line the way a load does.
                self.r[record as usize] = self.new_entry(profile, &additions);
            } else {
                self.grow_record(record, profile, &additions);
                self.restitched.push(record);
            }
        }
        // New rows in id order, which is the order of the spilled keys in their file: the
        // records table then reads them in one pass (see `Interner::key_views`).
        self.record_order
            .extend((batch.old_records..self.r.len() as u32).filter(|&r| new_stitched.get(r)));
    }

    /// Links `value` into `profile` (merging its own profile in if limits allow); on refusal,
    /// returns the detail for the refused table.
    fn link(
        &mut self,
        profile: &mut u32,
        value: u32,
        at: i64,
        summary: &mut ApplySummary,
    ) -> Option<String> {
        let t = self.type_of(value);
        let n = self.rules.counted_types();
        match self.v_profile[value as usize] {
            NONE => {
                if let Some(slot) = self.rules.slot_of(t) {
                    let limit = self.rules.limits[t as usize].unwrap_or(u32::MAX);
                    if self.p_counts[*profile as usize * n + slot] >= limit {
                        return Some(format!(
                            "{} limit {limit} reached in {}",
                            self.rules.type_name(t),
                            self.profile_id(*profile)
                        ));
                    }
                }
                self.join(value, *profile);
                None
            }
            slot => {
                let other = self.find(slot);
                if other == *profile {
                    return None;
                }
                for (i, &limited) in self.rules.limited.iter().enumerate() {
                    let limit = self.rules.limits[limited as usize].unwrap_or(u32::MAX);
                    let sum = u64::from(self.p_counts[*profile as usize * n + i])
                        + u64::from(self.p_counts[other as usize * n + i]);
                    if sum > u64::from(limit) {
                        return Some(format!(
                            "merging {} with {} would exceed {} limit {limit}",
                            self.profile_id(other),
                            self.profile_id(*profile),
                            self.rules.type_name(limited)
                        ));
                    }
                }
                *profile = self.union(*profile, other, at, value);
                summary.merges += 1;
                None
            }
        }
    }

    fn found(&mut self, founder: u32, born: i64, summary: &mut ApplySummary) -> u32 {
        let slot = self.p_parent.len() as u32;
        let hash = stable_hash(
            self.rules.type_name(self.type_of(founder)),
            &self.value_text(founder),
        );
        self.p_parent.push(slot);
        self.p_founder.push(founder);
        self.p_born.push(born);
        self.p_hash.push(hash);
        self.p_counts
            .extend(std::iter::repeat_n(0, self.rules.counted_types()));
        self.join(founder, slot);
        summary.new_profiles += 1;
        slot
    }

    fn join(&mut self, value: u32, profile: u32) {
        self.v_profile[value as usize] = profile;
        if let Some(slot) = self.rules.slot_of(self.type_of(value)) {
            self.p_counts[profile as usize * self.rules.counted_types() + slot] += 1;
        }
        self.linked.push(value);
    }

    /// Merges two roots; the older survives. Returns the survivor.
    fn union(&mut self, a: u32, b: u32, at: i64, via: u32) -> u32 {
        let age = |p: u32| (self.p_born[p as usize], self.p_hash[p as usize], p);
        let (into, from) = if age(a) <= age(b) { (a, b) } else { (b, a) };
        self.p_parent[from as usize] = into;
        let n = self.rules.counted_types();
        for i in 0..n {
            self.p_counts[into as usize * n + i] += self.p_counts[from as usize * n + i];
        }
        self.merges.push(Merge {
            from,
            into,
            at,
            via,
        });
        into
    }

    pub(super) fn find(&mut self, slot: u32) -> u32 {
        let root = self.root(slot);
        let mut node = slot;
        while node != root {
            let next = self.p_parent[node as usize];
            self.p_parent[node as usize] = root;
            node = next;
        }
        root
    }

    /// The current profile of a slot without path compression (for `&self` readers; after
    /// `apply` every slot points straight at its root).
    pub(super) fn root(&self, slot: u32) -> u32 {
        let mut root = slot;
        while self.p_parent[root as usize] != root {
            root = self.p_parent[root as usize];
        }
        root
    }

    fn flatten(&mut self) {
        for slot in 0..self.p_parent.len() as u32 {
            self.find(slot);
        }
    }

    fn refuse(
        &mut self,
        record: u32,
        what: Refused,
        reason: Reason,
        seen_at: i64,
        detail: Option<String>,
        summary: &mut ApplySummary,
    ) {
        let detail = detail.map(String::into_boxed_str);
        self.refusals.push(Refusal {
            record,
            what,
            reason,
            seen_at,
            detail,
        });
        summary.refused += 1;
    }

    /// Flags `value` refused on `record`, whether it is being added now or was already there.
    fn mark_refused(&mut self, record: u32, value: u32, additions: &mut [u32]) {
        if let Some(id) = additions.iter_mut().find(|id| **id == value) {
            *id |= REFUSED_BIT;
            return;
        }
        match self.r[record as usize] {
            NONE => {}
            entry if entry & MULTI != 0 => {
                let entry = self.multi[(entry & !MULTI) as usize];
                let list =
                    &mut self.r_ids[entry.start as usize..(entry.start + entry.len) as usize];
                if let Some(id) = list.iter_mut().find(|id| **id == value) {
                    *id |= REFUSED_BIT;
                }
            }
            single if single == value => self.r[record as usize] = value | SINGLE_REFUSED,
            _ => {}
        }
    }

    /// The `r` word of a record with these identifiers (flagged with `REFUSED_BIT`), stitched
    /// into `profile`.
    pub(super) fn new_entry(&mut self, profile: u32, ids: &[u32]) -> u32 {
        match *ids {
            [] => NONE,
            [id] if id & REFUSED_BIT != 0 => id & !REFUSED_BIT | SINGLE_REFUSED,
            // The one identifier anchored the record: its profile is the record's.
            [id] => id,
            _ => {
                // `load` checked that `r_ids` stays below u32::MAX entries, and `multi` is
                // smaller than the records.
                let entry = RecordEntry {
                    profile,
                    start: self.r_ids.len() as u32,
                    len: ids.len() as u32,
                };
                self.r_ids.extend_from_slice(ids);
                self.multi.push(entry);
                MULTI | (self.multi.len() - 1) as u32
            }
        }
    }

    /// Adds identifiers to a known record and sets its profile (unless `NONE`: nothing new
    /// linked, it keeps its profile). The list moves to the end of `r_ids` unless it is
    /// already there; records rarely grow, so the holes left behind stay few.
    fn grow_record(&mut self, record: u32, profile: u32, additions: &[u32]) {
        let profile = if profile == NONE {
            self.record_profile(record)
        } else {
            profile
        };
        match self.r[record as usize] {
            entry if entry != NONE && entry & MULTI != 0 => {
                let at = (entry & !MULTI) as usize;
                let RecordEntry { start, len, .. } = self.multi[at];
                let (start, len) = (start as usize, len as usize);
                if !additions.is_empty() && start + len != self.r_ids.len() {
                    self.r_ids.extend_from_within(start..start + len);
                }
                let start = if additions.is_empty() {
                    start
                } else {
                    self.r_ids.len() - len
                };
                self.r_ids.extend_from_slice(additions);
                self.multi[at] = RecordEntry {
                    profile,
                    start: start as u32,
                    len: (len + additions.len()) as u32,
                };
            }
            _ => {
                let mut ids: Vec<u32> = self.record_ids(record).iter().collect();
                ids.extend_from_slice(additions);
                self.r[record as usize] = self.new_entry(profile, &ids);
            }
        }
    }

    fn blocked_detail(&self, value: u32) -> Option<String> {
        let text = self.value_text(value);
        let pattern = self.rules.blocked_set.matches(&text).iter().next()?;
        Some(format!(
            "matches blocked pattern {:?}",
            self.rules.blocked.get(pattern)?
        ))
    }

    pub(super) fn profile_id(&self, slot: u32) -> String {
        format_profile_id(self.p_hash[slot as usize])
    }

    pub(super) fn unknown_parts(&self, id: u32) -> (String, String) {
        let key = self.unknown.key(id);
        let split = key.iter().position(|&b| b == 0x1F).unwrap_or(key.len());
        (
            String::from_utf8_lossy(&key[..split]).into_owned(),
            String::from_utf8_lossy(key.get(split + 1..).unwrap_or_default()).into_owned(),
        )
    }
}

/// The stable 64-bit hash behind profile ids. Fixed forever, because ids are shown to users and
/// stored downstream: FNV-1a 64 over the type's bytes, one 0x1F byte and the value's bytes,
/// then the SplitMix64 finalizer (FNV alone leaves similar keys with similar high bits).
pub fn stable_hash(id_type: &str, id_value: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in id_type
        .as_bytes()
        .iter()
        .chain(&[0x1F])
        .chain(id_value.as_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// The id of the profile founded by `(id_type, id_value)`: `p_` and 16 lower-case hex digits.
pub fn profile_id_for(id_type: &str, id_value: &str) -> String {
    format_profile_id(stable_hash(id_type, id_value))
}

pub(super) fn format_profile_id(hash: u64) -> String {
    format!("p_{hash:016x}")
}

#[cfg(test)]
#[path = "graph_tests.rs"]
mod tests;
