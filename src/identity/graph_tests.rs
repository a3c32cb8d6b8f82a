//! Specification tests for the stitch: one case per rule, plus the graph's guarantees.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;

use super::*;

const TYPES: [&str; 5] = ["user_id", "email", "phone", "loyalty_card", "anonymous_id"];

fn rules_with(limits: &[(&str, u32)], blocked: &[&str], hub_threshold: u32) -> Rules {
    Rules::new(
        TYPES.map(String::from).to_vec(),
        limits.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
        blocked.iter().map(|p| p.to_string()).collect(),
        hub_threshold,
    )
    .unwrap()
}

/// The demo's rules.
fn rules() -> Rules {
    rules_with(
        &[
            ("user_id", 1),
            ("email", 5),
            ("phone", 3),
            ("loyalty_card", 2),
        ],
        &[],
        DEFAULT_HUB_THRESHOLD,
    )
}

type Row = (String, String, String, i64);

fn rows(spec: &[(&str, &str, &str, i64)]) -> Vec<Row> {
    spec.iter()
        .map(|(r, t, v, s)| (r.to_string(), t.to_string(), v.to_string(), *s))
        .collect()
}

fn apply(graph: &mut IdentityGraph, rows: &[Row]) -> ApplySummary {
    graph
        .apply(
            rows.iter()
                .map(|(record_key, id_type, id_value, seen_at)| IdentityRow {
                    record_key,
                    id_type,
                    id_value,
                    seen_at: *seen_at,
                }),
        )
        .unwrap()
}

fn build(rules: Rules, spec: &[(&str, &str, &str, i64)]) -> IdentityGraph {
    let mut graph = IdentityGraph::new(rules);
    apply(&mut graph, &rows(spec));
    graph
}

/// A table as rows of display strings ("NULL" for nulls), in output order.
fn table(batches: Vec<RecordBatch>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for batch in batches {
        let columns: Vec<_> = batch
            .columns()
            .iter()
            .map(|c| cast(c, &DataType::Utf8).unwrap())
            .collect();
        for i in 0..batch.num_rows() {
            out.push(
                columns
                    .iter()
                    .map(|c| {
                        if c.is_null(i) {
                            "NULL".to_string()
                        } else {
                            c.as_string::<i32>().value(i).to_string()
                        }
                    })
                    .collect(),
            );
        }
    }
    out
}

fn dump(graph: &IdentityGraph) -> [Vec<Vec<String>>; 4] {
    [
        table(graph.identities().unwrap()),
        table(graph.records().unwrap()),
        table(graph.merges().unwrap()),
        table(graph.refused().unwrap()),
    ]
}

/// [`dump`] with the records sorted: their rows follow the order keys were first read in (see
/// `output.rs`), which input order decides; the other tables' rows depend only on the data.
fn dump_in_any_input_order(graph: &IdentityGraph) -> [Vec<Vec<String>>; 4] {
    let mut tables = dump(graph);
    tables[1].sort();
    tables
}

fn profile_of(graph: &IdentityGraph, record: &str) -> Option<String> {
    table(graph.records().unwrap())
        .into_iter()
        .find(|row| row[0] == record)
        .map(|row| row[1].clone())
}

fn profiles(graph: &IdentityGraph) -> BTreeSet<String> {
    table(graph.records().unwrap())
        .into_iter()
        .map(|row| row[1].clone())
        .collect()
}

fn refused(graph: &IdentityGraph) -> Vec<(String, String, String, String)> {
    table(graph.refused().unwrap())
        .into_iter()
        .map(|row| {
            (
                row[0].clone(),
                row[1].clone(),
                row[2].clone(),
                row[3].clone(),
            )
        })
        .collect()
}

fn refused_row(
    record: &str,
    id_type: &str,
    id_value: &str,
    reason: &str,
) -> (String, String, String, String) {
    (
        record.into(),
        id_type.into(),
        id_value.into(),
        reason.into(),
    )
}

#[test]
fn records_sharing_an_identifier_are_one_profile() {
    let graph = build(
        rules(),
        &[
            ("crm:1", "email", "jane@x.com", 1),
            ("crm:1", "phone", "+33600000001", 1),
            ("pos:7", "phone", "+33600000001", 2),
            ("pos:7", "loyalty_card", "L1", 2),
            ("crm:2", "email", "john@x.com", 3),
        ],
    );
    assert_eq!(profile_of(&graph, "crm:1"), profile_of(&graph, "pos:7"));
    assert_ne!(profile_of(&graph, "crm:1"), profile_of(&graph, "crm:2"));
    assert_eq!(profiles(&graph).len(), 2);
    // The profile is named after its founding identifier: the first record's anchor.
    assert_eq!(
        profile_of(&graph, "pos:7").unwrap(),
        profile_id_for("email", "jane@x.com")
    );
    assert_eq!(table(graph.identities().unwrap()).len(), 4);
}

#[test]
fn links_are_transitive() {
    let graph = build(
        rules(),
        &[
            ("web:1", "anonymous_id", "d1", 1),
            ("web:1", "email", "a@x.com", 1),
            ("web:2", "anonymous_id", "d1", 2),
            ("web:2", "phone", "+331", 2),
            ("pos:1", "phone", "+331", 3),
            ("pos:1", "loyalty_card", "L9", 3),
            ("pos:2", "loyalty_card", "L9", 4),
        ],
    );
    let first = profile_of(&graph, "web:1");
    for record in ["web:2", "pos:1", "pos:2"] {
        assert_eq!(profile_of(&graph, record), first, "{record}");
    }
}

#[test]
fn limit_keeps_two_user_ids_apart_on_a_shared_tablet() {
    let spec = [
        ("app:1", "anonymous_id", "tablet", 1),
        ("app:1", "user_id", "alice", 1),
        ("app:2", "anonymous_id", "tablet", 2),
        ("app:2", "user_id", "bob", 2),
    ];
    let graph = build(rules(), &spec);
    let alice = profile_id_for("user_id", "alice");
    let bob = profile_id_for("user_id", "bob");
    assert_eq!(profile_of(&graph, "app:1"), Some(alice.clone()));
    assert_eq!(profile_of(&graph, "app:2"), Some(bob.clone()));
    let refusals = table(graph.refused().unwrap());
    assert_eq!(refusals.len(), 1);
    assert_eq!(
        refusals[0][..4],
        ["app:2", "anonymous_id", "tablet", "limit"].map(String::from)
    );
    assert_eq!(
        refusals[0][5],
        format!("merging {alice} with {bob} would exceed user_id limit 1")
    );
    assert!(table(graph.merges().unwrap()).is_empty());

    // Without the limit, the tablet fuses them: the rule is what keeps them apart.
    let unlimited = build(rules_with(&[], &[], DEFAULT_HUB_THRESHOLD), &spec);
    assert_eq!(profiles(&unlimited).len(), 1);
}

#[test]
fn lower_priority_identifier_is_the_one_dropped() {
    let graph = build(
        rules(),
        &[
            ("crm:1", "user_id", "u1", 1),
            ("crm:1", "email", "shared@x.com", 1),
            // Rows in any order: the record is still anchored on its user_id.
            ("crm:2", "email", "shared@x.com", 2),
            ("crm:2", "user_id", "u2", 2),
            // A second user_id on one record: the later value (by sort order) is dropped.
            ("crm:3", "user_id", "u1", 3),
            ("crm:3", "user_id", "u9", 3),
        ],
    );
    assert_eq!(
        profile_of(&graph, "crm:2"),
        Some(profile_id_for("user_id", "u2"))
    );
    assert_eq!(
        profile_of(&graph, "crm:3"),
        Some(profile_id_for("user_id", "u1"))
    );
    assert_eq!(
        refused(&graph),
        vec![
            refused_row("crm:2", "email", "shared@x.com", "limit"),
            refused_row("crm:3", "user_id", "u9", "limit")
        ]
    );
    let detail = &table(graph.refused().unwrap())[1][5];
    assert_eq!(
        detail,
        &format!(
            "user_id limit 1 reached in {}",
            profile_id_for("user_id", "u1")
        )
    );
    // u9 founded nothing and belongs nowhere.
    assert!(
        table(graph.identities().unwrap())
            .iter()
            .all(|row| row[2] != "u9")
    );
}

#[test]
fn blocked_values_link_nothing() {
    let spec = [
        ("crm:1", "email", "test@shop.com", 1),
        ("crm:1", "phone", "+331", 1),
        ("crm:2", "email", "test@shop.com", 2),
        ("crm:2", "phone", "+332", 2),
    ];
    let graph = build(
        rules_with(
            &[("user_id", 1)],
            &["^test@", "^n/a$"],
            DEFAULT_HUB_THRESHOLD,
        ),
        &spec,
    );
    assert_eq!(profiles(&graph).len(), 2);
    let refusals = table(graph.refused().unwrap());
    assert_eq!(refusals.len(), 2);
    assert!(
        refusals
            .iter()
            .all(|row| row[3] == "blocked" && row[5] == "matches blocked pattern \"^test@\"")
    );
    assert!(
        table(graph.identities().unwrap())
            .iter()
            .all(|row| row[2] != "test@shop.com")
    );

    let unblocked = build(
        rules_with(&[("user_id", 1)], &[], DEFAULT_HUB_THRESHOLD),
        &spec,
    );
    assert_eq!(profiles(&unblocked).len(), 1);
}

fn hub_rows(cards: usize) -> Vec<Row> {
    let mut rows = Vec::new();
    for i in 0..cards {
        let record = format!("pos:{i:02}");
        rows.push((
            record.clone(),
            "email".into(),
            "till@shop.com".into(),
            i as i64,
        ));
        rows.push((record, "loyalty_card".into(), format!("L{i:02}"), i as i64));
    }
    rows
}

#[test]
fn hub_value_links_nothing() {
    // One email typed at the till for 20 different loyalty cards: a hub (threshold 10).
    let mut graph = IdentityGraph::new(rules());
    let summary = apply(&mut graph, &hub_rows(20));
    assert_eq!(summary.new_hubs, 1);
    assert_eq!(profiles(&graph).len(), 20);
    let refusals = table(graph.refused().unwrap());
    assert_eq!(refusals.len(), 20);
    assert!(
        refusals
            .iter()
            .all(|row| row[2] == "till@shop.com" && row[3] == "hub")
    );
    assert_eq!(refusals[0][5], "seen with more than 10 loyalty_card values");
    assert!(
        table(graph.identities().unwrap())
            .iter()
            .all(|row| row[2] != "till@shop.com")
    );

    // Without hub protection (threshold out of reach) every record anchors on the email, and
    // twenty shoppers become one profile.
    let mut unprotected = IdentityGraph::new(rules_with(&[("loyalty_card", 2)], &[], 1000));
    apply(&mut unprotected, &hub_rows(20));
    assert_eq!(profiles(&unprotected).len(), 1);

    // Ten cards is not more than the threshold: the email links normally.
    let mut small = IdentityGraph::new(rules());
    apply(&mut small, &hub_rows(10));
    assert!(
        table(small.identities().unwrap())
            .iter()
            .any(|row| row[2] == "till@shop.com")
    );
    assert!(refused(&small).iter().all(|row| row.3 == "limit"));
}

#[test]
fn hub_found_in_a_later_batch_stops_linking_from_then_on() {
    let all = hub_rows(20);
    let mut graph = IdentityGraph::new(rules());
    apply(&mut graph, &all[..10 * 2]);
    let before = profile_of(&graph, "pos:00");
    assert!(
        table(graph.identities().unwrap())
            .iter()
            .any(|row| row[2] == "till@shop.com")
    );
    let summary = apply(&mut graph, &all[10 * 2..]);
    assert_eq!(summary.new_hubs, 1);
    // Links made before stay; new records do not join through the hub.
    assert_eq!(profile_of(&graph, "pos:00"), before);
    for i in 10..20 {
        assert_eq!(
            profile_of(&graph, &format!("pos:{i}")),
            Some(profile_id_for("loyalty_card", &format!("L{i}")))
        );
    }
}

#[test]
fn junk_record_with_thousands_of_identifiers_makes_hubs_without_quadratic_work() {
    // A till that files every sale under one default customer record.
    let mut spec: Vec<Row> = (0..20_000)
        .map(|i| ("pos:0".into(), "loyalty_card".into(), format!("L{i}"), 1))
        .collect();
    spec.extend(rows(&[
        ("pos:0", "anonymous_id", "till", 1),
        ("pos:1", "loyalty_card", "L1", 2),
        ("pos:1", "email", "a@x.com", 2),
    ]));
    let mut graph = IdentityGraph::new(rules());
    let summary = apply(&mut graph, &spec);
    assert_eq!(summary.new_hubs, 20_001);
    // Decided per record, not per pair: no co-occurrence lists were built.
    assert!(graph.co_pool.len() < 100, "{}", graph.co_pool.len());
    assert_eq!(profile_of(&graph, "pos:0"), None);
    assert_eq!(
        profile_of(&graph, "pos:1"),
        Some(profile_id_for("email", "a@x.com"))
    );
    let refusals = table(graph.refused().unwrap());
    assert_eq!(refusals.len(), 20_002);
    assert_eq!(
        refusals.last().unwrap()[5],
        "seen on a record with more than 10 values of a limited type"
    );
}

#[test]
fn hub_detected_through_a_record_that_grows() {
    // A kiosk session record that collects one more email at each refresh: its device id is
    // seen with more and more emails, through the identifiers the record already had.
    let mut graph = IdentityGraph::new(rules_with(&[("email", 50)], &[], DEFAULT_HUB_THRESHOLD));
    apply(&mut graph, &rows(&[("kiosk", "anonymous_id", "K", 0)]));
    for i in 0..11 {
        let summary = apply(
            &mut graph,
            &rows(&[("kiosk", "email", &format!("e{i}@x.com"), i)]),
        );
        assert_eq!(summary.new_hubs, u64::from(i == 10), "batch {i}");
    }
    let summary = apply(
        &mut graph,
        &rows(&[
            ("web:1", "anonymous_id", "K", 20),
            ("web:1", "email", "z@x.com", 20),
        ]),
    );
    assert_eq!(summary.refused, 1);
    assert_eq!(refused(&graph).last().unwrap().3, "hub");
    assert_eq!(
        profile_of(&graph, "web:1"),
        Some(profile_id_for("email", "z@x.com"))
    );
}

#[test]
fn empty_values_and_keys_are_ignored() {
    let mut graph = IdentityGraph::new(rules());
    let summary = apply(
        &mut graph,
        &rows(&[
            ("crm:1", "email", "", 1),
            ("crm:1", "phone", "+331", 1),
            ("crm:2", "email", "   ", 2),
            ("crm:2", "phone", "+331", 2),
            ("crm:3", "email", "", 3),
            ("", "email", "a@x.com", 4),
            // Whitespace beyond ASCII is whitespace too; a value that starts beyond ASCII
            // is a value.
            ("crm:4", "email", "\u{3000}\t", 5),
            ("\u{a0}", "email", "b@x.com", 6),
            ("crm:5", "email", "élise@x.fr", 7),
        ]),
    );
    assert_eq!(summary.rows, 9);
    assert_eq!(summary.ignored, 6);
    assert_eq!(profile_of(&graph, "crm:1"), profile_of(&graph, "crm:2"));
    assert_eq!(profile_of(&graph, "crm:3"), None);
    assert_eq!(profile_of(&graph, "crm:4"), None);
    assert!(profile_of(&graph, "crm:5").is_some());
    assert!(refused(&graph).is_empty());
    assert_eq!(table(graph.identities().unwrap()).len(), 2);
}

#[test]
fn unknown_types_are_refused_once() {
    let spec = rows(&[
        ("crm:1", "fax", "+3312", 1),
        ("crm:1", "email", "a@x.com", 1),
    ]);
    let mut graph = IdentityGraph::new(rules());
    apply(&mut graph, &spec);
    assert_eq!(
        refused(&graph),
        vec![refused_row("crm:1", "fax", "+3312", "unknown_type")]
    );
    let again = apply(&mut graph, &spec);
    assert_eq!((again.records, again.refused), (0, 0));
    assert_eq!(refused(&graph).len(), 1);
}

#[test]
fn merge_keeps_the_older_profile_and_is_logged() {
    let graph = build(
        rules(),
        &[
            ("pos:1", "phone", "+331", 1),
            ("web:1", "email", "a@x.com", 2),
            // Anchored on the email (higher priority), but the phone's profile is older.
            ("crm:1", "email", "a@x.com", 3),
            ("crm:1", "phone", "+331", 3),
        ],
    );
    let phone = profile_id_for("phone", "+331");
    let email = profile_id_for("email", "a@x.com");
    for record in ["pos:1", "web:1", "crm:1"] {
        assert_eq!(profile_of(&graph, record), Some(phone.clone()));
    }
    let merges = table(graph.merges().unwrap());
    assert_eq!(
        merges,
        vec![vec![
            email,
            phone,
            "1970-01-01T00:00:00.000003Z".into(),
            "phone".into(),
            "+331".into()
        ]]
    );
}

#[test]
fn known_record_gets_later_identifiers() {
    // Anonymous browsing, then a login on the same record: history is kept.
    let mut graph = IdentityGraph::new(rules());
    apply(
        &mut graph,
        &rows(&[
            ("web:s1", "anonymous_id", "d1", 1),
            ("web:s2", "anonymous_id", "d1", 2),
        ]),
    );
    let anonymous = profile_of(&graph, "web:s1");
    let summary = apply(&mut graph, &rows(&[("web:s2", "user_id", "u1", 5)]));
    assert_eq!((summary.records, summary.merges), (1, 1));
    assert_eq!(profile_of(&graph, "web:s2"), anonymous);
    assert!(
        table(graph.identities().unwrap())
            .iter()
            .any(|row| row[2] == "u1" && Some(&row[0]) == anonymous.as_ref())
    );
}

#[test]
fn a_link_refused_on_a_record_stays_refused_as_the_record_grows() {
    let mut graph = IdentityGraph::new(rules());
    apply(
        &mut graph,
        &rows(&[
            ("app:a", "user_id", "alice", 1),
            ("app:a", "anonymous_id", "tablet", 1),
        ]),
    );
    apply(&mut graph, &rows(&[("app:x", "anonymous_id", "tablet", 2)]));
    assert_eq!(
        profile_of(&graph, "app:x"),
        Some(profile_id_for("user_id", "alice"))
    );
    // Bob logs in on the session: it becomes his, and its tablet link to Alice is refused.
    apply(&mut graph, &rows(&[("app:x", "user_id", "bob", 3)]));
    assert_eq!(
        profile_of(&graph, "app:x"),
        Some(profile_id_for("user_id", "bob"))
    );
    assert_eq!(
        refused(&graph),
        vec![refused_row("app:x", "anonymous_id", "tablet", "limit")]
    );
    // The session grows again: the refused link is not tried (nor reported) again.
    let summary = apply(&mut graph, &rows(&[("app:x", "email", "bob@x.com", 4)]));
    assert_eq!(
        (summary.records, summary.refused, summary.merges),
        (1, 0, 0)
    );
    assert_eq!(refused(&graph).len(), 1);
    assert_eq!(
        profile_of(&graph, "app:x"),
        Some(profile_id_for("user_id", "bob"))
    );
    // And all of it survives a reload.
    let reloaded = IdentityGraph::from_state(rules(), graph.to_state().unwrap()).unwrap();
    assert_eq!(dump(&reloaded), dump(&graph));
}

/// Synthetic people: each has a few identifiers and several records carrying subsets of them,
/// plus the noise that matters: shared tablets, and (with `junk`) a till email seen with many
/// loyalty cards. Record `seen_at`s collide often, so ties are broken by record key.
fn people(persons: usize, junk: bool, seed: u64) -> Vec<Row> {
    let mut state = seed;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let mut rows = Vec::new();
    for p in 0..persons {
        let mut ids = vec![
            ("email", format!("p{p}@x.com")),
            ("anonymous_id", format!("d{p}")),
        ];
        if next(10) < 7 {
            ids.push(("user_id", format!("u{p}")));
        }
        if next(10) < 6 {
            ids.push(("phone", format!("+33{p:08}")));
        }
        if next(10) < 5 {
            ids.push(("loyalty_card", format!("L{p}")));
        }
        if next(10) < 2 {
            ids.push(("anonymous_id", format!("tablet{}", p / 3)));
        }
        for r in 0..1 + next(5) {
            let record = format!("r{p}-{r}");
            let seen = next(200) as i64;
            for (id_type, id_value) in &ids {
                if next(3) > 0 {
                    rows.push((record.clone(), id_type.to_string(), id_value.clone(), seen));
                }
            }
            if junk && next(4) == 0 {
                rows.push((record.clone(), "email".into(), "till@shop.com".into(), seen));
                rows.push((record.clone(), "loyalty_card".into(), format!("L{p}"), seen));
            }
        }
    }
    rows
}

fn shuffled(mut rows: Vec<Row>, seed: u64) -> Vec<Row> {
    let mut state = seed;
    for i in (1..rows.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        rows.swap(i, (state >> 33) as usize % (i + 1));
    }
    rows
}

#[test]
fn shuffled_input_gives_identical_outputs() {
    let data = people(400, true, 7);
    let mut a = IdentityGraph::new(rules());
    apply(&mut a, &data);
    let mut b = IdentityGraph::new(rules());
    apply(&mut b, &shuffled(data, 99));
    let (da, db) = (dump_in_any_input_order(&a), dump_in_any_input_order(&b));
    assert_eq!(da, db);
    // The data exercises every path.
    assert!(!da[2].is_empty(), "merges");
    assert!(da[3].iter().any(|r| r[3] == "limit") && da[3].iter().any(|r| r[3] == "hub"));
}

/// Splits rows by record time: all of a record's rows land in the same half.
fn split(rows: &[Row], at: i64) -> (Vec<Row>, Vec<Row>) {
    rows.iter().cloned().partition(|row| row.3 < at)
}

#[test]
fn incremental_build_equals_full_build() {
    // No junk: a value that turns into a hub halfway is the documented exception.
    let data = people(400, false, 11);
    let mut full = IdentityGraph::new(rules());
    apply(&mut full, &data);
    let (early, late) = split(&data, 120);
    let mut incremental = IdentityGraph::new(rules());
    apply(&mut incremental, &shuffled(early, 1));
    apply(&mut incremental, &shuffled(late, 2));
    assert_eq!(
        dump_in_any_input_order(&full),
        dump_in_any_input_order(&incremental)
    );
}

#[test]
fn reapplying_rows_is_a_no_op() {
    let data = people(200, true, 3);
    let mut graph = IdentityGraph::new(rules());
    apply(&mut graph, &data);
    let before = dump(&graph);
    let summary = apply(&mut graph, &shuffled(data, 5));
    assert_eq!(
        (
            summary.records,
            summary.new_profiles,
            summary.merges,
            summary.refused
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(dump(&graph), before);
}

fn to_views(parts: Vec<(String, Vec<RecordBatch>)>) -> Vec<(String, Vec<RecordBatch>)> {
    // As a Parquet reader may hand state back: strings as Utf8View, in small batches (so that
    // lists cross batch boundaries).
    parts
        .into_iter()
        .map(|(name, batches)| {
            let batches = batches
                .into_iter()
                .map(|batch| {
                    let fields: Vec<_> = batch
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| {
                            let t = match f.data_type() {
                                DataType::Utf8 => DataType::Utf8View,
                                DataType::Binary => DataType::BinaryView,
                                other => other.clone(),
                            };
                            datafusion::arrow::datatypes::Field::new(f.name(), t, f.is_nullable())
                        })
                        .collect();
                    let columns = batch
                        .columns()
                        .iter()
                        .zip(&fields)
                        .map(|(c, f)| cast(c, f.data_type()).unwrap())
                        .collect();
                    let batch = RecordBatch::try_new(
                        std::sync::Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
                        columns,
                    )
                    .unwrap();
                    let n = batch.num_rows();
                    if n == 0 {
                        return vec![batch];
                    }
                    (0..n)
                        .step_by(3)
                        .map(|at| batch.slice(at, 3.min(n - at)))
                        .collect()
                })
                .flatten()
                .collect();
            (name, batches)
        })
        .collect()
}

#[test]
fn state_round_trip_continues_as_if_never_persisted() {
    let data = people(300, true, 21);
    let (early, late) = split(&data, 100);
    let mut kept = IdentityGraph::new(rules());
    apply(&mut kept, &early);
    let state = kept.to_state().unwrap();
    assert_eq!(
        state.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        super::super::state::STATE_PARTS
    );
    let mut reloaded = IdentityGraph::from_state(rules(), to_views(state.clone())).unwrap();
    assert_eq!(reloaded.to_state().unwrap(), state);
    assert_eq!(dump(&reloaded), dump(&kept));
    let a = apply(&mut kept, &late);
    let b = apply(&mut reloaded, &late);
    assert_eq!(a, b);
    assert_eq!(dump(&reloaded), dump(&kept));
    assert_eq!(reloaded.to_state().unwrap(), kept.to_state().unwrap());
}

/// Work run beside the stitch sees every record of the batch, keys included, and the graph
/// comes out as a plain `finish` leaves it, in this batch and the next.
#[test]
fn work_beside_the_stitch_sees_all_records_and_changes_nothing() {
    let data = people(200, true, 5);
    let (early, late) = split(&data, 100);
    fn feed<'g>(graph: &'g mut IdentityGraph, rows: &[Row]) -> Applying<'g> {
        let mut applying = graph.begin_apply();
        applying
            .feed(
                rows.iter()
                    .map(|(record_key, id_type, id_value, seen_at)| IdentityRow {
                        record_key,
                        id_type,
                        id_value,
                        seen_at: *seen_at,
                    }),
            )
            .unwrap();
        applying
    }
    let mut plain = IdentityGraph::new(rules());
    let mut beside = IdentityGraph::new(rules());
    for rows in [&early, &late] {
        let expected = feed(&mut plain, rows).finish().unwrap();
        let (summary, keys) = feed(&mut beside, rows).finish_beside(|records| {
            (0..records.len() as u32)
                .map(|id| String::from_utf8(records.key(id).to_vec()).unwrap())
                .collect::<Vec<String>>()
        });
        assert_eq!(summary.unwrap(), expected);
        let keys = keys.unwrap();
        assert_eq!(keys.len(), plain.record_count());
        let mut given: Vec<&str> = data.iter().map(|row| row.0.as_str()).collect();
        given.sort_unstable();
        assert!(
            keys.iter()
                .all(|key| given.binary_search(&key.as_str()).is_ok())
        );
        assert_eq!(dump(&beside), dump(&plain));
    }
    assert_eq!(beside.to_state().unwrap(), plain.to_state().unwrap());
}

#[test]
fn state_is_checked_on_load() {
    let mut graph = IdentityGraph::new(rules());
    apply(&mut graph, &people(20, true, 1));
    let state = graph.to_state().unwrap();

    let other = rules_with(&[("user_id", 2)], &[], DEFAULT_HUB_THRESHOLD);
    assert!(matches!(
        IdentityGraph::from_state(other, state.clone()),
        Err(GraphError::RulesChanged { .. })
    ));

    let missing: Vec<_> = state
        .iter()
        .filter(|(n, _)| n != "records")
        .cloned()
        .collect();
    let err = IdentityGraph::from_state(rules(), missing).err().unwrap();
    assert_eq!(
        err.to_string(),
        "identity graph state, part \"records\": missing"
    );

    // A merge pointing past the profiles is an error, not a panic.
    let corrupt: Vec<_> = state
        .iter()
        .map(|(name, batches)| {
            if name != "profiles" {
                return (name.clone(), batches.clone());
            }
            (name.clone(), vec![batches[0].slice(0, 1)])
        })
        .collect();
    assert!(IdentityGraph::from_state(rules(), corrupt).is_err());

    // Value keys are stored as bytes, and the interner holds text only: bytes that are not
    // UTF-8 are refused as they load, so no output column can point at them.
    let not_text: Vec<_> = state
        .iter()
        .map(|(name, batches)| {
            if name != "values" {
                return (name.clone(), batches.clone());
            }
            let batch = &batches[0];
            let keys = batch.column(0).as_binary::<i32>();
            let mut damaged: Vec<Vec<u8>> = keys.iter().map(|k| k.unwrap().to_vec()).collect();
            damaged[0].push(0xFF);
            let damaged = datafusion::arrow::array::BinaryArray::from_iter_values(damaged);
            let mut columns = batch.columns().to_vec();
            columns[0] = std::sync::Arc::new(damaged);
            let batch = RecordBatch::try_new(batch.schema(), columns).unwrap();
            (name.clone(), vec![batch])
        })
        .collect();
    let err = IdentityGraph::from_state(rules(), not_text).err().unwrap();
    assert!(err.to_string().contains("is not UTF-8"), "{err}");
}

#[test]
fn rules_are_validated() {
    let priority = || TYPES.map(String::from).to_vec();
    let limits = |t: &str, n: u32| HashMap::from([(t.to_string(), n)]);
    let err = |r: Result<Rules, GraphError>| r.err().unwrap().to_string();
    assert!(
        err(Rules::new(priority(), limits("fax", 1), vec![], 10)).contains("limits name \"fax\"")
    );
    assert!(
        err(Rules::new(priority(), limits("email", 0), vec![], 10))
            .contains("limit on \"email\" is 0")
    );
    assert!(
        err(Rules::new(
            priority(),
            HashMap::new(),
            vec!["^ok$".into(), "(unclosed".into()],
            10
        ))
        .contains("blocked pattern \"(unclosed\"")
    );
    assert!(
        err(Rules::new(vec![], HashMap::new(), vec![], 10))
            .contains("priority names no identifier type")
    );
    assert!(
        err(Rules::new(
            vec!["email".into(), "email".into()],
            HashMap::new(),
            vec![],
            10
        ))
        .contains("twice")
    );
    assert!(
        err(Rules::new(
            vec!["e mail".into()],
            HashMap::new(),
            vec![],
            10
        ))
        .contains("not a valid identifier type")
    );
    assert!(err(Rules::new(priority(), HashMap::new(), vec![], 0)).contains("hub_threshold"));
    let ok = Rules::new(priority(), limits("email", 5), vec![], 10).unwrap();
    assert_eq!(ok.limit("email"), Some(5));
    assert_eq!(ok.limit("phone"), None);
}

#[test]
fn stable_hash_is_fixed() {
    // Profile ids are stored downstream: this value must never change.
    assert_eq!(
        profile_id_for("email", "jane@x.com"),
        format!("p_{:016x}", stable_hash("email", "jane@x.com"))
    );
    // Cross-checked with an independent FNV-1a + SplitMix64 implementation (Python).
    assert_eq!(profile_id_for("email", "jane@x.com"), "p_9f8c15538d5256ac");
    assert_ne!(stable_hash("email", "a"), stable_hash("emai", "la"));
}

/// Customers shaped like the demo's: per person, about 17 records and 20 identifier rows,
/// most of them web events carrying one anonymous id, some logins, a CRM contact and orders.
fn customers(persons: std::ops::Range<usize>, seed: u64) -> Vec<Row> {
    let mut state = seed;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let mut rows = Vec::new();
    let mut event = persons.start as u64 * 100;
    for p in persons {
        let devices: Vec<String> = (0..1 + next(3))
            .map(|d| format!("a-{p:07}-{d}-{:04x}", next(65536)))
            .collect();
        let email = format!("first.last{p}@example.com");
        let user = format!("u{p:08}");
        let start = p as i64 * 10_000_000 + next(1_000_000_000) as i64;
        for e in 0..14 + next(4) {
            event += 1;
            let record = format!("evt:{event:012x}{:04x}", next(65536));
            let at = start + e as i64 * 3_600_000_000;
            let device = &devices[next(devices.len() as u64) as usize];
            rows.push((record.clone(), "anonymous_id".into(), device.clone(), at));
            if e % 7 == 3 {
                rows.push((record, "user_id".into(), user.clone(), at));
            }
        }
        let crm = format!("crm:{p}");
        rows.push((crm.clone(), "email".into(), email.clone(), start));
        rows.push((crm.clone(), "user_id".into(), user.clone(), start));
        if next(2) == 0 {
            rows.push((crm, "phone".into(), format!("+336{p:08}"), start));
        }
        for o in 0..1 + next(2) {
            let order = format!("ord:{p}-{o}");
            let at = start + 86_400_000_000 * (o as i64 + 1);
            let email = if next(50) == 0 {
                "till@shop.com".to_string()
            } else {
                email.clone()
            };
            rows.push((order.clone(), "email".into(), email, at));
            rows.push((order, "loyalty_card".into(), format!("L{p:08}"), at));
        }
    }
    rows
}

/// `cargo test --lib identity -- --ignored --nocapture scale`
#[test]
#[ignore]
fn scale_smoke() {
    let data = customers(0..100_000, 42);
    let mut graph = IdentityGraph::new(rules());
    let start = Instant::now();
    let summary = apply(&mut graph, &data);
    let stitched = start.elapsed();
    let outputs = dump_counts(&graph);
    let total = start.elapsed();
    let state_start = Instant::now();
    let state = graph.to_state().unwrap();
    let saved = state_start.elapsed();
    let reloaded = IdentityGraph::from_state(rules(), state.clone()).unwrap();
    let loaded = state_start.elapsed() - saved;
    assert!(reloaded.to_state().unwrap() == state, "state round trip");
    // A refresh: 1% more customers, later in time.
    let late = customers(100_000..101_000, 43);
    let mut refreshed = reloaded;
    let refresh_start = Instant::now();
    apply(&mut refreshed, &late);
    let refresh = refresh_start.elapsed();
    println!(
        "scale: {} rows, {} records, {} profiles, {} merges, {} refused; apply {:?}, outputs {:?}, \
         to_state {:?}, from_state {:?}, refresh of {} rows {:?}; output rows {:?}; graph heap {} MB",
        summary.rows,
        summary.records,
        graph.profile_count(),
        summary.merges,
        summary.refused,
        stitched,
        total - stitched,
        saved,
        loaded,
        late.len(),
        refresh,
        outputs,
        graph.heap_bytes() >> 20
    );
    apply(&mut graph, &late);
    assert_eq!(refreshed.profile_count(), graph.profile_count());
}

fn dump_counts(graph: &IdentityGraph) -> [usize; 4] {
    let rows = |b: Vec<RecordBatch>| b.iter().map(RecordBatch::num_rows).sum();
    [
        rows(graph.identities().unwrap()),
        rows(graph.records().unwrap()),
        rows(graph.merges().unwrap()),
        rows(graph.refused().unwrap()),
    ]
}

use crate::storage::index::{KeyIndex, key_at};

fn dump_tables(tables: crate::identity::tables::TableBatches) -> [Vec<Vec<String>>; 4] {
    tables.map(table)
}

#[test]
fn tables_kept_across_refreshes_equal_tables_built_whole() {
    // Junk makes hubs and refusals; re-applying early records with more identifiers makes
    // records stitched again, which can change profile without a merge.
    let data = people(3000, true, 17);
    let mut graph = IdentityGraph::new(rules());
    let mut tables = crate::identity::tables::GraphTables::with_chunk_rows(97);
    let mut indexes: [Option<KeyIndex>; 2] = [None, None];
    let mut previous_rows = [0usize; 4];
    let mut restitched = 0;
    let mut reseen = 0;
    for (i, at) in [40, 80, 120, 160, 201].into_iter().enumerate() {
        let mut batch: Vec<Row> = data
            .iter()
            .filter(|row| row.3 < at && row.3 >= at - 40)
            .cloned()
            .collect();
        if i > 0 {
            // A known record gains identifiers of another person: restitched.
            batch.extend(rows(&[
                ("r5-0", "user_id", &format!("u-late-{i}"), at - 1),
                ("r7-0", "email", "p9@x.com", at - 1),
            ]));
        }
        apply(&mut graph, &shuffled(batch, i as u64));
        restitched += graph.restitched.len();
        // Values seen again in a later batch: their times are rewritten in kept chunks.
        if i > 0 {
            reseen += graph.reseen.count();
        }
        let (batches, changes) = tables.update(&mut graph).unwrap();
        for t in 0..4 {
            assert!(
                changes[t].kept_rows <= previous_rows[t],
                "table {t} after batch {i}: kept {} of {} rows",
                changes[t].kept_rows,
                previous_rows[t]
            );
            previous_rows[t] = batches[t].iter().map(RecordBatch::num_rows).sum();
        }
        // The changes let an index follow the tables: carried over, it finds what an index
        // built afresh finds, for every key.
        for (t, column) in [(0, 0), (1, 1)] {
            let fresh = KeyIndex::build(&batches[t], column).unwrap();
            if let Some(previous) = &indexes[t] {
                let carried: &KeyIndex = previous;
                let carried = carried.carried(&batches[t], &changes[t]).unwrap();
                for batch in &batches[t] {
                    for row in 0..batch.num_rows() {
                        let key = key_at(batch.column(column).as_ref(), row).unwrap();
                        assert_eq!(
                            carried.lookup(&batches[t], key),
                            fresh.lookup(&batches[t], key),
                            "table {t} after batch {i}, key {key:?}"
                        );
                    }
                }
                indexes[t] = Some(carried);
            } else {
                indexes[t] = Some(fresh);
            }
        }
        assert_eq!(dump_tables(batches), dump(&graph), "after batch {i}");
    }
    assert!(restitched > 0, "the data restitches known records");
    assert!(reseen > 0, "the data sees known values again");
    assert!(
        graph.records.len() > 97 * 20,
        "many chunks' worth of records"
    );
}

#[test]
fn applying_in_parts_equals_applying_at_once() {
    let data = shuffled(people(500, true, 23), 4);
    // The whole is interned on two threads (a round of more than 1024 rows), the parts of 37
    // rows on the calling thread alone.
    assert!(data.len() > 2000, "{} rows", data.len());
    let mut whole = IdentityGraph::new(rules());
    apply(&mut whole, &data);
    let mut parts = IdentityGraph::new(rules());
    let mut applying = parts.begin_apply();
    for part in data.chunks(37) {
        applying
            .feed(
                part.iter()
                    .map(|(record_key, id_type, id_value, seen_at)| IdentityRow {
                        record_key,
                        id_type,
                        id_value,
                        seen_at: *seen_at,
                    }),
            )
            .unwrap();
    }
    let summary = applying.finish().unwrap();
    assert_eq!(summary.rows, data.len() as u64);
    assert_eq!(dump(&parts), dump(&whole));
}

fn as_row((record_key, id_type, id_value, seen_at): &Row) -> IdentityRow<'_> {
    IdentityRow {
        record_key,
        id_type,
        id_value,
        seen_at: *seen_at,
    }
}

/// What a refresh logs (`LogNeed`): the rows it read, less repeats on records it did not
/// change. Replaying that onto the graph before must give the graph the refresh made.
#[test]
fn replaying_the_rows_a_log_needs_gives_the_refreshed_graph() {
    let data = people(400, true, 31);
    let (early, _) = split(&data, 120);
    let mut refreshed = IdentityGraph::new(rules());
    apply(&mut refreshed, &early);
    let mut replayed =
        IdentityGraph::from_state(rules(), to_views(refreshed.to_state().unwrap())).unwrap();
    // The refresh reads a window from 80 again, the rows from 120, and a new identifier on
    // some records of the window, which changes them.
    let mut read: Vec<Row> = data.iter().filter(|row| row.3 >= 80).cloned().collect();
    let changing: BTreeSet<String> = early
        .iter()
        .filter(|row| row.3 >= 80)
        .map(|row| row.0.clone())
        .step_by(7)
        .collect();
    for (i, record) in changing.iter().enumerate() {
        read.push((record.clone(), "phone".into(), format!("+4470{i:08}"), 150));
    }
    // Rows the graph holds, landed late with an earlier time: first seen moves.
    let moved: Vec<Row> = early
        .iter()
        .filter(|row| row.3 >= 80)
        .step_by(11)
        .map(|row| (row.0.clone(), row.1.clone(), row.2.clone(), 0))
        .collect();
    read.extend(moved);
    let read = shuffled(read, 8);

    // Asked part by part before each part is fed, as a refresh does.
    let mut applying = refreshed.begin_apply();
    let mut needs = Vec::new();
    for part in read.chunks(read.len() / 3 + 1) {
        needs.extend(
            part.iter()
                .map(|row| applying.log_need(&as_row(row), Some(119))),
        );
        applying.feed(part.iter().map(as_row)).unwrap();
    }
    let (_, changed) = applying.finish_changed().unwrap();
    let logged: Vec<Row> = read
        .iter()
        .zip(&needs)
        .filter(|(_, need)| match need {
            LogNeed::Always => true,
            LogNeed::Never => false,
            LogNeed::IfRecordChanges(record) => changed.contains(record),
        })
        .map(|(row, _)| row.clone())
        .collect();
    let repeats = |kept: bool| {
        needs
            .iter()
            .filter(
                |need| matches!(need, LogNeed::IfRecordChanges(r) if changed.contains(r) == kept),
            )
            .count()
    };
    assert!(repeats(false) > 100, "repeats left out: {}", repeats(false));
    assert!(
        repeats(true) > 10,
        "repeats on changed records: {}",
        repeats(true)
    );
    assert!(logged.len() < read.len());
    apply(&mut replayed, &logged);
    assert_eq!(dump(&replayed), dump(&refreshed));
    assert_eq!(replayed.to_state().unwrap(), refreshed.to_state().unwrap());
}
