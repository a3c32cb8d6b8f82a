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

/// Every file under `root` whose raw bytes hold `needle`.
fn files_holding(root: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if contains(&path, needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

async fn rows(engine: &c360::Engine, sql: &str) -> usize {
    let results = engine.query(sql).await.unwrap();
    results[0].batches.iter().map(|b| b.num_rows()).sum()
}

/// Everything derived from a person goes with them: identity graph state, materialized
/// views, segment members and history, queued actions. After vacuum, no file of the storage
/// root holds their e-mail address or profile id.
#[tokio::test]
async fn forget_profile_purges_derived_state_down_to_the_bytes() {
    use c360::{Engine, Settings};
    let data = tempfile::tempdir().unwrap();
    let settings = Settings {
        data: data.path().display().to_string(),
        ..Settings::default()
    };
    let engine = Engine::open_without_workspace(settings).await.unwrap();
    let email = "gone.for.good@example.org";
    let files = tempfile::tempdir().unwrap();
    let crm = files.path().join("crm.csv");
    std::fs::write(
        &crm,
        format!(
            "contact_id,email,first_name,created_at\n\
             c1,{email},Gina,2024-01-01T00:00:00Z\n\
             c2,stay@example.org,Sam,2024-01-02T00:00:00Z\n\
             c3,{email},Gina,2024-01-03T00:00:00Z\n"
        ),
    )
    .unwrap();
    engine
        .load("crm", &[crm.display().to_string()], &|_| {})
        .await
        .unwrap();
    engine
        .query(
            "CREATE VIEW identifiers AS SELECT 'crm:' || contact_id AS record_key, \
               'email' AS id_type, normalize_email(email) AS id_value, created_at AS seen_at \
             FROM landed.crm;
             CREATE IDENTITY GRAPH customers FROM identifiers WITH (priority = 'email');
             CREATE MATERIALIZED VIEW profiles AS SELECT r.profile_id, \
               max(c.email) AS email, max(c.first_name) AS first_name \
             FROM customers_records r JOIN landed.crm c ON r.record_key = 'crm:' || c.contact_id \
             GROUP BY r.profile_id;
             CREATE SEGMENT everyone AS SELECT profile_id FROM profiles;
             CREATE TRIGGER welcome CHANNEL email WITH (require = 'first_name', consent = 'none') \
             AS SELECT profile_id, email, first_name FROM profiles;
             REFRESH TRIGGER welcome",
        )
        .await
        .unwrap();
    let profile = c360::identity::graph::profile_id_for("email", email);
    let of_profile = |table: &str| format!("SELECT * FROM {table} WHERE profile_id = '{profile}'");
    for table in [
        "profiles",
        "segment_members",
        "segment_changes",
        "actions",
        "customers_identities",
    ] {
        assert!(
            rows(&engine, &of_profile(table)).await > 0,
            "{table} before"
        );
    }
    assert!(!files_holding(data.path(), email).is_empty());

    engine
        .query(&format!("FORGET PROFILE '{profile}'"))
        .await
        .unwrap();
    for table in [
        "profiles",
        "segment_members",
        "segment_changes",
        "actions",
        "customers_identities",
        "customers_merges",
    ] {
        let sql = if table == "customers_merges" {
            format!(
                "SELECT * FROM {table} WHERE from_profile = '{profile}' OR into_profile = '{profile}'"
            )
        } else {
            of_profile(table)
        };
        assert_eq!(rows(&engine, &sql).await, 0, "{table} after FORGET");
    }
    assert_eq!(rows(&engine, "SELECT * FROM profiles").await, 1);
    assert_eq!(rows(&engine, "SELECT * FROM segment_members").await, 1);
    assert_eq!(
        rows(
            &engine,
            "SELECT * FROM customers_records WHERE record_key IN ('crm:c1', 'crm:c3')"
        )
        .await,
        0
    );

    for name in engine.landed().names() {
        if let Some(table) = engine.landed().get(&name) {
            table.vacuum(std::time::Duration::ZERO).await.unwrap();
        }
    }
    for needle in [email, profile.as_str()] {
        let left = files_holding(data.path(), needle);
        let listing = std::process::Command::new("find")
            .arg(data.path())
            .output()
            .unwrap();
        assert!(
            left.is_empty(),
            "{needle} is still in {left:?}\n{}",
            String::from_utf8_lossy(&listing.stdout)
        );
    }
}
