//! The Segment-compatible HTTP collector, driven over real sockets against `c360 serve`:
//! every call type lands in the `events` table and reaches SQL and the identity graph; bad
//! input is refused with a reason and writes nothing; duplicates are stored once, across
//! restarts too.

mod common;

use std::time::{Duration, Instant};

use common::http::{self, get, gzip, post_json, request};
use common::{Server, stderr_of, stdout_of};

const KEY: &str = "wk_test";

/// Starts `c360 serve` with a write key and a small body limit, on `data` if given.
fn start(data: Option<tempfile::TempDir>) -> Server {
    let data = data.unwrap_or_else(|| tempfile::tempdir().unwrap());
    let config = data.path().join("collector.toml");
    std::fs::write(
        &config,
        format!("[http]\nwrite_keys = ['{KEY}']\nmax_body_bytes = 4000\n"),
    )
    .unwrap();
    let config = config.display().to_string();
    Server::start_in(data, &["--config", &config])
}

fn sql(server: &Server, query: &str) -> String {
    let out = server.psql(&["-At", "-c", query]);
    assert!(out.status.success(), "{query}: {}", stderr_of(&out));
    stdout_of(&out).trim().to_string()
}

/// An identify call reaches the identity graph by itself, once the graph's `on_new_data`
/// check (every ten seconds by default) sees the landed table's new version: no `REFRESH`,
/// and no wait for the demo graph's `EVERY '5 minutes'`.
#[test]
fn landed_events_reach_the_identity_graph_without_a_refresh() {
    let server = start(None);
    let body = r#"{"userId":"c360-auto-1","messageId":"auto-i1","traits":{"email":"auto.person@example.org"}}"#;
    let response = post_json(&server.http_addr, "/v1/identify", KEY, body);
    assert_eq!(response.status, 200, "{}", response.body);
    let linked = "SELECT count(*) FROM customers_identities a JOIN customers_identities b \
                  ON a.profile_id = b.profile_id \
                  WHERE a.id_type = 'email' AND a.id_value = 'auto.person@example.org' \
                  AND b.id_type = 'user_id' AND b.id_value = 'c360-auto-1'";
    let deadline = Instant::now() + Duration::from_secs(90);
    while sql(&server, linked) != "1" {
        assert!(
            Instant::now() < deadline,
            "the graph never took the call in: {}",
            sql(
                &server,
                "SELECT last_refresh, last_error FROM identity_graphs"
            )
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn every_call_type_lands_and_reaches_sql_and_the_identity_graph() {
    let server = start(None);
    let addr = &server.http_addr;
    let calls = [
        (
            "track",
            r#"{"userId":"c360-new-1","event":"Product Viewed","messageId":"t1","properties":{"sku":"SKU-9","price":12.5}}"#,
        ),
        (
            "identify",
            r#"{"userId":"c360-new-1","messageId":"i1","traits":{"email":"  New.Person@Example.org "}}"#,
        ),
        (
            "page",
            r#"{"anonymousId":"anon-1","messageId":"p1","name":"Home"}"#,
        ),
        (
            "screen",
            r#"{"anonymousId":"anon-1","messageId":"s1","name":"Cart"}"#,
        ),
        (
            "group",
            r#"{"userId":"c360-new-1","messageId":"g1","groupId":"acme"}"#,
        ),
        (
            "alias",
            r#"{"userId":"c360-new-1","messageId":"a1","previousId":"anon-1"}"#,
        ),
    ];
    for (kind, body) in calls {
        let response = post_json(addr, &format!("/v1/{kind}"), KEY, body);
        assert_eq!(response.status, 200, "{kind}: {}", response.body);
        assert_eq!(response.json()["success"], true);
    }
    // A gzip'd batch, with the write key in the body as some SDKs send it.
    let batch = format!(
        r#"{{"writeKey":"{KEY}","sentAt":"2030-01-01T00:00:10Z","batch":[
            {{"type":"track","anonymousId":"anon-2","event":"Cart Viewed","messageId":"b1","timestamp":"2030-01-01T00:00:00Z"}},
            {{"type":"track","anonymousId":"anon-2","event":"Cart Viewed","messageId":"b2"}}]}}"#
    );
    let response = request(
        addr,
        "POST",
        "/v1/batch",
        &[
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
        ],
        &gzip(batch.as_bytes()),
    )
    .unwrap();
    assert_eq!(response.status, 200, "{}", response.body);

    assert_eq!(
        sql(
            &server,
            "SELECT type, count(*) FROM landed.events GROUP BY 1 ORDER BY 1"
        ),
        "alias|1\ngroup|1\nidentify|1\npage|1\nscreen|1\ntrack|3"
    );
    // Through the demo's `events` view, with the JSON operators.
    assert_eq!(
        sql(
            &server,
            "SELECT properties ->> 'sku', user_id FROM events WHERE message_id = 't1'"
        ),
        "SKU-9|c360-new-1"
    );
    // The device clock was in 2030: the skew between its timestamp and sentAt (10 s) is
    // kept, the skew of its clock is not.
    assert_eq!(
        sql(
            &server,
            "SELECT abs(extract(epoch FROM received_at - \"timestamp\") - 10) < 5, \
             original_timestamp = TIMESTAMP '2030-01-01T00:00:00Z' \
             FROM landed.events WHERE message_id = 'b1'"
        ),
        "t|t"
    );
    // The next refresh of the identity graph sees the identify call.
    sql(&server, "REFRESH IDENTITY GRAPH customers");
    assert_eq!(
        sql(
            &server,
            "SELECT count(*) FROM customers_identities a JOIN customers_identities b \
             ON a.profile_id = b.profile_id \
             WHERE a.id_type = 'email' AND a.id_value = 'new.person@example.org' \
             AND b.id_type = 'user_id' AND b.id_value = 'c360-new-1'"
        ),
        "1"
    );
    let metrics = get(addr, "/metrics");
    assert_eq!(metrics.status, 200);
    // The identity graph's gauges agree with its system table, and its refresh succeeded.
    let profiles = sql(
        &server,
        "SELECT profiles FROM identity_graphs WHERE name = 'customers' AND last_error IS NULL",
    );
    assert!(
        metrics.body.contains(&format!(
            "c360_identity_profiles{{graph=\"customers\"}} {profiles}\n"
        )),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("c360_identity_refresh_failing{graph=\"customers\"} 0\n"),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("c360_collector_events_committed_total 8"),
        "{}",
        metrics.body
    );
    assert!(
        metrics.body.contains("c360_collector_commit_seconds_count"),
        "{}",
        metrics.body
    );
}

#[test]
fn bad_requests_get_a_reason_naming_the_field_and_write_nothing() {
    let server = start(None);
    let addr = &server.http_addr;
    let ok = r#"{"userId":"u","event":"e"}"#;
    let big = format!(
        r#"{{"userId":"u","event":"e","properties":{{"x":"{}"}}}}"#,
        "a".repeat(5000)
    );
    let bomb = gzip(format!(r#"{{"userId":"u","event":"{}"}}"#, "b".repeat(50_000)).as_bytes());
    let auth = http::basic(KEY);
    let wrong = http::basic("wk_wrong");
    let json = ("Content-Type", "application/json");
    let cases: Vec<(&str, Vec<(&str, &str)>, Vec<u8>, u16, &str)> = vec![
        ("bad JSON", vec![json, ("Authorization", &auth)], b"{\"userId\":".to_vec(), 400, "body"),
        ("wrong type", vec![json, ("Authorization", &auth)], br#"{"userId":"u","event":"e","properties":[1]}"#.to_vec(), 400, "properties"),
        ("no id", vec![json, ("Authorization", &auth)], br#"{"event":"e"}"#.to_vec(), 400, "userId"),
        ("bad time", vec![json, ("Authorization", &auth)], br#"{"userId":"u","event":"e","timestamp":"noon"}"#.to_vec(), 400, "timestamp"),
        ("bad batch item", vec![json, ("Authorization", &auth)], br#"{"batch":[{"type":"track","userId":"u","event":"e"},{"type":"track","event":"e"}]}"#.to_vec(), 400, "batch[1].userId"),
        ("too large", vec![json, ("Authorization", &auth)], big.into_bytes(), 413, "body"),
        ("inflates past the limit", vec![json, ("Authorization", &auth), ("Content-Encoding", "gzip")], bomb, 413, "body"),
        ("bad gzip", vec![json, ("Authorization", &auth), ("Content-Encoding", "gzip")], b"not gzip at all".to_vec(), 400, "body"),
        ("bad key", vec![json, ("Authorization", &wrong)], ok.as_bytes().to_vec(), 401, "writeKey"),
        ("no key", vec![json], ok.as_bytes().to_vec(), 401, "writeKey"),
    ];
    let path_of = |name: &str| {
        if name == "bad batch item" {
            "/v1/batch"
        } else {
            "/v1/track"
        }
    };
    for (name, headers, body, status, field) in &cases {
        let response = request(addr, "POST", path_of(name), headers, body).unwrap();
        assert_eq!(response.status, *status, "{name}: {}", response.body);
        let reason = response.json();
        assert_eq!(reason["success"], false, "{name}");
        assert_eq!(reason["field"], *field, "{name}: {reason}");
        assert!(
            reason["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{name}"
        );
    }
    assert_eq!(sql(&server, "SELECT count(*) FROM landed.events"), "0");
    let metrics = get(addr, "/metrics").body;
    assert!(
        metrics.contains(&format!(
            "c360_collector_requests_rejected_total {}",
            cases.len()
        )),
        "{metrics}"
    );
    // The server is still up and accepts good input.
    assert_eq!(post_json(addr, "/v1/track", KEY, ok).status, 200);
    assert_eq!(sql(&server, "SELECT count(*) FROM landed.events"), "1");
}

#[test]
fn a_message_id_is_stored_once_even_across_a_restart() {
    let server = start(None);
    let body = r#"{"userId":"u","event":"e","messageId":"dup-1"}"#;
    for _ in 0..3 {
        assert_eq!(
            post_json(&server.http_addr, "/v1/track", KEY, body).status,
            200
        );
    }
    let batch = r#"{"batch":[{"type":"track","userId":"u","event":"e","messageId":"dup-1"},
                             {"type":"track","userId":"u","event":"e","messageId":"dup-2"},
                             {"type":"track","userId":"u","event":"e","messageId":"dup-2"}]}"#;
    assert_eq!(
        post_json(&server.http_addr, "/v1/batch", KEY, batch).status,
        200
    );
    assert_eq!(
        sql(
            &server,
            "SELECT message_id, count(*) FROM landed.events GROUP BY 1 ORDER BY 1"
        ),
        "dup-1|1\ndup-2|1"
    );
    let metrics = get(&server.http_addr, "/metrics").body;
    assert!(
        metrics.contains("c360_collector_events_deduplicated_total 4"),
        "{metrics}"
    );

    let server = start(Some(server.stop_keeping_data()));
    assert_eq!(
        post_json(&server.http_addr, "/v1/track", KEY, body).status,
        200
    );
    assert_eq!(
        sql(
            &server,
            "SELECT message_id, count(*) FROM landed.events GROUP BY 1 ORDER BY 1"
        ),
        "dup-1|1\ndup-2|1"
    );
}

#[test]
fn small_commits_are_compacted_in_the_background() {
    let server = start(None);
    // Sequential requests: one group commit, hence one small file, each.
    for i in 0..20 {
        let body = format!(r#"{{"userId":"u","event":"e","messageId":"small-{i}"}}"#);
        assert_eq!(
            post_json(&server.http_addr, "/v1/track", KEY, &body).status,
            200
        );
    }
    let log = server.data.path().join("tables/events/_delta_log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let compacted = || {
        std::fs::read_dir(&log).unwrap().any(|entry| {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap_or_default();
            text.contains(r#""operation":"OPTIMIZE""#)
        })
    };
    while !compacted() {
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction within a minute"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(
        sql(
            &server,
            "SELECT count(*), count(DISTINCT message_id) FROM landed.events"
        ),
        "20|20"
    );
}

#[test]
fn a_failing_commit_gets_503_and_degraded_health_and_nothing_is_lost() {
    let server = start(None);
    let addr = &server.http_addr;
    let first = r#"{"userId":"u","event":"e","messageId":"before"}"#;
    assert_eq!(post_json(addr, "/v1/track", KEY, first).status, 200);
    assert_eq!(get(addr, "/health").status, 200);

    // Break the log: where the next commit must go there is now a plain file.
    let log = server.data.path().join("tables/events/_delta_log");
    let aside = server.data.path().join("tables/events/log-aside");
    std::fs::rename(&log, &aside).unwrap();
    std::fs::write(&log, b"not a directory").unwrap();
    let during = r#"{"userId":"u","event":"e","messageId":"during"}"#;
    let refused = post_json(addr, "/v1/track", KEY, during);
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.header("Retry-After").is_some());
    let health = get(addr, "/health");
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["status"], "degraded");

    // Repaired: the client's retry of the same message is accepted and stored once.
    std::fs::remove_file(&log).unwrap();
    std::fs::rename(&aside, &log).unwrap();
    assert_eq!(post_json(addr, "/v1/track", KEY, during).status, 200);
    assert_eq!(get(addr, "/health").status, 200);
    assert_eq!(
        sql(&server, "SELECT message_id FROM landed.events ORDER BY 1"),
        "before\nduring"
    );
}

/// psql-style readers query `landed.events` while it grows: every count they see is a
/// whole number of 25-event requests (never part of a commit), and counts never go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_whole_commits_while_the_table_grows() {
    let server = start(None);
    let addr = server.http_addr.clone();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                for seq in 0..15 {
                    let batch: Vec<String> = (0..25)
                        .map(|i| {
                            format!(
                                r#"{{"type":"track","userId":"w{w}","event":"e","messageId":"w{w}-{seq}-{i}"}}"#
                            )
                        })
                        .collect();
                    let body = format!(r#"{{"batch":[{}]}}"#, batch.join(","));
                    assert_eq!(post_json(&addr, "/v1/batch", KEY, &body).status, 200);
                }
            })
        })
        .collect();
    let client = server.connect().await;
    let mut seen = Vec::new();
    while writers.iter().any(|w| !w.is_finished()) {
        let row = client
            .query_one("SELECT count(*) FROM landed.events", &[])
            .await
            .unwrap();
        seen.push(row.get::<_, i64>(0));
    }
    for writer in writers {
        writer.join().unwrap();
    }
    let last = client
        .query_one("SELECT count(*) FROM landed.events", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    seen.push(last);
    assert_eq!(last, 4 * 15 * 25);
    assert!(
        seen.len() > 3,
        "the readers raced the writers only {} times",
        seen.len()
    );
    assert!(
        seen.iter().all(|n| n % 25 == 0),
        "a partial commit was visible: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "a count went back: {seen:?}"
    );
}
