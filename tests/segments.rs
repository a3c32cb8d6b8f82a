//! Segments in a running server: people entering and leaving as data lands, history kept
//! across restarts, and a refresh killed with SIGKILL leaving the last membership intact.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::Server;

/// A workspace whose `scores` source is a folder of CSV files, and a segment over each
/// person's latest score, refreshed every second. `slow` adds work that makes each refresh
/// last a few hundred milliseconds, so that a kill lands inside one.
fn workspace(dir: &Path, slow: bool) -> std::path::PathBuf {
    let sources = dir.join("scores");
    std::fs::create_dir_all(&sources).unwrap();
    let sql = dir.join("sql");
    std::fs::create_dir_all(&sql).unwrap();
    std::fs::write(
        sql.join("10_scores.sql"),
        format!(
            "CREATE EXTERNAL TABLE scores (profile_id VARCHAR, score INT, at TIMESTAMP)\n\
             STORED AS CSV LOCATION '{}/' OPTIONS ('format.has_header' 'true');\n\
             CREATE SEGMENT high_scorers REFRESH EVERY '1 second' AS\n\
             SELECT profile_id, score FROM (\n\
               SELECT profile_id, last_value(score ORDER BY at) AS score FROM scores GROUP BY profile_id\n\
             ) WHERE score > 40 {};\n",
            sources.display(),
            if slow {
                "AND (SELECT count(*) FROM generate_series(1, 3000000) WHERE value % 7 = 0) > 0"
            } else {
                ""
            }
        ),
    )
    .unwrap();
    land(
        dir,
        "0001.csv",
        &[("p_a", 10, "2026-01-01"), ("p_b", 50, "2026-01-01")],
    );
    sql
}

/// Lands a new file of scores, as an export from a source system would.
fn land(dir: &Path, file: &str, rows: &[(&str, i32, &str)]) {
    let mut text = String::from("profile_id,score,at\n");
    for (id, score, day) in rows {
        text.push_str(&format!("{id},{score},{day}T00:00:00\n"));
    }
    let folder = dir.join("scores");
    // Written aside and renamed, so that a scan never sees half a file.
    std::fs::write(folder.join(format!(".{file}.tmp")), text).unwrap();
    std::fs::rename(folder.join(format!(".{file}.tmp")), folder.join(file)).unwrap();
}

async fn members(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT profile_id FROM high_scorers ORDER BY profile_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn wait_for_members(client: &tokio_postgres::Client, expected: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = members(client).await;
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members are {now:?}, expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn history(client: &tokio_postgres::Client) -> Vec<(String, String, i64)> {
    client
        .query(
            "SELECT profile_id, change, CAST(refresh_id AS BIGINT) AS refresh FROM segment_changes \
             WHERE segment = 'high_scorers' ORDER BY refresh_id, change, profile_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

#[tokio::test]
async fn people_enter_and_leave_as_data_lands_and_history_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sql = workspace(dir.path(), false);
    let sql_arg = sql.display().to_string();
    let server = Server::start(&["--workspace", &sql_arg]);
    let client = server.connect().await;
    assert_eq!(members(&client).await, ["p_b"]);

    // p_a scores high: the scheduler's next refresh lets p_a in.
    land(dir.path(), "0002.csv", &[("p_a", 99, "2026-01-02")]);
    wait_for_members(&client, &["p_a", "p_b"]).await;
    // Then p_b's latest score drops: p_b leaves.
    land(dir.path(), "0003.csv", &[("p_b", 5, "2026-01-03")]);
    wait_for_members(&client, &["p_a"]).await;

    let changes = history(&client).await;
    let kinds: Vec<(&str, &str)> = changes
        .iter()
        .map(|(id, change, _)| (id.as_str(), change.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [("p_b", "entered"), ("p_a", "entered"), ("p_b", "exited")]
    );
    assert!(
        changes.windows(2).all(|w| w[0].2 < w[1].2),
        "each change came from its own refresh: {changes:?}"
    );
    let before: String = client
        .query_one(
            "SELECT CAST(entered_at AS VARCHAR) FROM high_scorers WHERE profile_id = 'p_a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);

    // A segment made over the wire (not in the workspace) survives the restart too.
    client
        .simple_query("CREATE SEGMENT everyone AS SELECT DISTINCT profile_id FROM scores")
        .await
        .unwrap();

    drop(client);
    let data = server.stop_keeping_data();
    let server = Server::start_in(data, &["--workspace", &sql_arg]);
    let client = server.connect().await;
    assert_eq!(members(&client).await, ["p_a"]);
    assert_eq!(
        history(&client).await,
        changes,
        "history kept across the restart"
    );
    let after: String = client
        .query_one(
            "SELECT CAST(entered_at AS VARCHAR) FROM high_scorers WHERE profile_id = 'p_a'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, after, "entered_at kept across the restart");
    let everyone: i64 = client
        .query_one("SELECT count(*) FROM everyone", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(everyone, 2);
}

/// The members must be exactly what the history says: everyone who entered and did not
/// exit since. Checked after each SIGKILL.
async fn assert_consistent(client: &tokio_postgres::Client) -> Vec<String> {
    let now = members(client).await;
    let mut replayed = std::collections::BTreeSet::new();
    for (id, change, _) in history(client).await {
        if change == "entered" {
            assert!(replayed.insert(id.clone()), "{id} entered twice in a row");
        } else {
            assert!(replayed.remove(&id), "{id} exited without entering");
        }
    }
    assert_eq!(
        now,
        replayed.into_iter().collect::<Vec<_>>(),
        "members match the history"
    );
    now
}

#[tokio::test]
async fn a_refresh_killed_mid_way_leaves_the_last_membership_and_the_next_one_completes() {
    let dir = tempfile::tempdir().unwrap();
    let sql = workspace(dir.path(), true);
    let sql_arg = sql.display().to_string();
    let mut data = tempfile::tempdir().unwrap();
    let mut landed = 1;
    for round in 0..3 {
        let server = Server::start_in(data, &["--workspace", &sql_arg]);
        let client = server.connect().await;
        let before = assert_consistent(&client).await;
        // New people land; the scheduler refreshes every second: kill at a moment that
        // varies each round, before, during or after one of those refreshes.
        landed += 1;
        let id = format!("p_{round}");
        land(
            dir.path(),
            &format!("{landed:04}.csv"),
            &[(id.as_str(), 70, "2026-02-01")],
        );
        tokio::time::sleep(Duration::from_millis(300 + 450 * round)).await;
        drop(client);
        data = server.kill_keeping_data();

        let server = Server::start_in(data, &["--workspace", &sql_arg]);
        let client = server.connect().await;
        let after = assert_consistent(&client).await;
        assert!(
            after == before || after.contains(&id),
            "either the old membership or the new one, never a mix: {before:?} → {after:?}"
        );
        // The next refresh completes and lets the new person in.
        client
            .simple_query("REFRESH SEGMENT high_scorers")
            .await
            .unwrap();
        assert!(members(&client).await.contains(&id));
        assert_consistent(&client).await;
        drop(client);
        data = server.kill_keeping_data();
    }
}
