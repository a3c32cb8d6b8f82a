//! `FORGET PROFILE`: a person's landed events go, in SQL and in the live data files; the
//! audit row holds no personal data; other people's rows stay.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::http::post_json;
use common::{Server, stderr_of, stdout_of};

fn sql(server: &Server, query: &str) -> String {
    let out = server.psql(&["-At", "-c", query]);
    assert!(out.status.success(), "{query}: {}", stderr_of(&out));
    stdout_of(&out).trim().to_string()
}

/// The data files the table's log names now (adds minus removes), by replaying it.
fn live_files(table: &Path) -> BTreeSet<String> {
    let mut commits: Vec<_> = std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    commits.sort();
    let mut live = BTreeSet::new();
    for commit in commits {
        for line in std::fs::read_to_string(commit).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(path) = action["add"]["path"].as_str() {
                live.insert(path.to_string());
            }
            if let Some(path) = action["remove"]["path"].as_str() {
                live.remove(path);
            }
        }
    }
    live
}

fn contains(path: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn forget_profile_erases_landed_events_and_audits_without_personal_data() {
    let server = Server::start_demo();
    let addr = &server.http_addr;
    let calls = [
        (
            "identify",
            r#"{"userId":"forget-me-1","anonymousId":"anon-forget","traits":{"email":" Forget.Me@Example.org "}}"#,
        ),
        (
            "track",
            r#"{"anonymousId":"anon-forget","event":"Product Viewed","properties":{"sku":"S1"}}"#,
        ),
        (
            "track",
            r#"{"userId":"forget-me-1","event":"Order Completed","properties":{"revenue":10}}"#,
        ),
        (
            "track",
            r#"{"userId":"keep-me-1","event":"Product Viewed"}"#,
        ),
    ];
    for (kind, body) in calls {
        assert_eq!(
            post_json(addr, &format!("/v1/{kind}"), "any", body).status,
            200
        );
    }
    sql(&server, "REFRESH IDENTITY GRAPH customers");
    let profile = sql(
        &server,
        "SELECT profile_id FROM customers_identities WHERE id_type = 'user_id' AND id_value = 'forget-me-1'",
    );
    assert!(!profile.is_empty());

    let unknown = server.psql(&["-c", "FORGET PROFILE 'p_nobody'"]);
    assert!(!unknown.status.success());
    assert!(
        stderr_of(&unknown).contains("p_nobody"),
        "{}",
        stderr_of(&unknown)
    );

    sql(&server, &format!("FORGET PROFILE '{profile}' IN customers"));
    assert_eq!(
        sql(
            &server,
            "SELECT count(*) FROM events WHERE user_id = 'forget-me-1' OR anonymous_id = 'anon-forget'"
        ),
        "0"
    );
    assert_eq!(
        sql(
            &server,
            "SELECT count(*) FROM landed.events WHERE user_id = 'keep-me-1'"
        ),
        "1"
    );
    let audit = sql(
        &server,
        "SELECT graph, tables, rows_deleted FROM landed.erasures",
    );
    assert_eq!(audit, "customers|events: 3|3");
    let whole_audit = sql(&server, "SELECT * FROM landed.erasures");
    for personal in ["forget", "Forget", &profile] {
        assert!(!whole_audit.contains(personal), "{whole_audit}");
    }

    // The files the table now consists of hold none of the person's bytes; the replaced
    // files still do until vacuum passes the retention period.
    let table = server.data.path().join("tables/events");
    let live = live_files(&table);
    assert!(!live.is_empty());
    for file in &live {
        assert!(!contains(&table.join(file), "anon-forget"), "{file}");
        assert!(!contains(&table.join(file), "forget-me-1"), "{file}");
    }
    let replaced = std::fs::read_dir(&table)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .filter(|p| !live.contains(p.file_name().unwrap().to_str().unwrap()))
        .any(|p| contains(&p, "anon-forget"));
    assert!(
        replaced,
        "the scan must find the bytes in the replaced files"
    );
}
