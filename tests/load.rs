//! `c360 load`: CSV, NDJSON and Parquet files into landed tables, one atomic commit per
//! load; a bad row names its file, row and column, and leaves the table as it was.

mod common;

use std::path::Path;

use common::{repo_path, stderr_of, stdout_of};

fn c360(data: &Path, args: &[&str]) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend(["--data", data.to_str().unwrap()]);
    common::run_c360(&all)
}

fn count(data: &Path, table: &str) -> String {
    let out = c360(
        data,
        &[
            "query",
            "--format",
            "csv",
            &format!("SELECT count(*) AS n FROM landed.{table}"),
        ],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    stdout_of(&out).trim().trim_start_matches("n\n").to_string()
}

fn one_error_line(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(1), "stdout: {}", stdout_of(out));
    let err = stderr_of(out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    err
}

#[test]
fn csv_ndjson_and_parquet_files_load_into_landed_tables() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let csv = files.path().join("people.csv");
    std::fs::write(
        &csv,
        "id,age,joined\np1,31,2024-01-02T10:00:00Z\np2,,2024-02-03T11:00:00Z\n",
    )
    .unwrap();
    let out = c360(data.path(), &["load", "people", csv.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("created landed.people: 2 rows"),
        "{}",
        stdout_of(&out)
    );

    // The same table again, from NDJSON with the columns in another order.
    let ndjson = files.path().join("more.ndjson");
    std::fs::write(
        &ndjson,
        "{\"joined\":\"2024-03-01T00:00:00Z\",\"id\":\"p3\",\"age\":40}\n",
    )
    .unwrap();
    let out = c360(data.path(), &["load", "people", ndjson.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(count(data.path(), "people"), "3");
    let out = c360(
        data.path(),
        &[
            "query",
            "--format",
            "csv",
            "SELECT id, age FROM landed.people ORDER BY id",
        ],
    );
    assert_eq!(stdout_of(&out), "id,age\np1,31\np2,\np3,40\n");

    // Parquet: the demo's till receipts, into a new table.
    let parquet = repo_path("data/demo/pos_sales");
    let parquet_file = std::fs::read_dir(&parquet)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let out = c360(
        data.path(),
        &["load", "receipts", parquet_file.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = c360(
        data.path(),
        &[
            "query",
            "--format",
            "csv",
            "SELECT (SELECT count(*) FROM landed.receipts) = (SELECT count(*) FROM pos_sales) AS same",
        ],
    );
    assert_eq!(stdout_of(&out), "same\ntrue\n", "{}", stderr_of(&out));
}

#[test]
fn a_bad_row_names_file_row_and_column_and_commits_nothing() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let good = files.path().join("good.csv");
    std::fs::write(&good, "id,age\np1,31\np2,32\n").unwrap();
    let out = c360(data.path(), &["load", "people", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));

    // Two files in one load: the first is fine, the second has a bad third row. Nothing of
    // either may land.
    let more = files.path().join("more.csv");
    std::fs::write(&more, "id,age\np3,33\n").unwrap();
    let bad = files.path().join("bad.csv");
    std::fs::write(&bad, "id,age\np4,34\np5,35\np6,thirty-six\n").unwrap();
    let out = c360(
        data.path(),
        &[
            "load",
            "people",
            more.to_str().unwrap(),
            bad.to_str().unwrap(),
        ],
    );
    let err = one_error_line(&out);
    assert!(err.contains("bad.csv: row 3: column age"), "{err}");
    assert!(err.contains("thirty-six"), "{err}");
    assert_eq!(count(data.path(), "people"), "2");

    // A column the table does not have, and a file that is not what its name says.
    let extra = files.path().join("extra.csv");
    std::fs::write(&extra, "id,age,shoe_size\np7,40,44\n").unwrap();
    let err = one_error_line(&c360(
        data.path(),
        &["load", "people", extra.to_str().unwrap()],
    ));
    assert!(err.contains("column shoe_size"), "{err}");
    let broken = files.path().join("broken.parquet");
    std::fs::write(&broken, "this is not parquet").unwrap();
    let err = one_error_line(&c360(
        data.path(),
        &["load", "people", broken.to_str().unwrap()],
    ));
    assert!(err.contains("broken.parquet"), "{err}");
    let err = one_error_line(&c360(data.path(), &["load", "people", "/nowhere/x.csv"]));
    assert!(err.contains("/nowhere/x.csv"), "{err}");
    assert_eq!(count(data.path(), "people"), "2");

    // A failed load into a new table does not create it.
    let err = one_error_line(&c360(
        data.path(),
        &[
            "load",
            "fresh",
            good.to_str().unwrap(),
            bad.to_str().unwrap(),
        ],
    ));
    assert!(err.contains("bad.csv"), "{err}");
    let out = c360(data.path(), &["query", "SELECT * FROM landed.fresh"]);
    assert!(!out.status.success());
}

#[test]
fn a_load_killed_midway_commits_nothing() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let small = files.path().join("small.csv");
    std::fs::write(&small, "id,n\na,1\nb,2\n").unwrap();
    let out = c360(data.path(), &["load", "numbers", small.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));

    // Large enough that a first data file is written (every million rows) well before
    // the end of the load.
    let big = files.path().join("big.csv");
    let mut text = String::from("id,n\n");
    for i in 0..2_500_000u64 {
        text.push_str(&format!("r{i},{i}\n"));
    }
    std::fs::write(&big, text).unwrap();
    let mut child = std::process::Command::new(common::c360_bin())
        .args(["load", "numbers", big.to_str().unwrap(), "--data"])
        .arg(data.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let table = data.path().join("tables/numbers");
    let parquet_files = || {
        std::fs::read_dir(&table)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "parquet")
            })
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while parquet_files() < 2 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the load ended before it could be killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no data file written in time"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The written file is an orphan: the table is as it was before the load.
    assert_eq!(count(data.path(), "numbers"), "2");
}

/// A file large enough to be read as several partitions in parallel: a bad row in the last
/// part is still reported by its row number in the whole file, and nothing lands.
#[test]
fn a_bad_row_deep_in_a_large_file_is_numbered_in_the_whole_file() {
    let data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let good = files.path().join("good.csv");
    std::fs::write(&good, "id,age,note\np0,30,first\n").unwrap();
    let out = c360(data.path(), &["load", "people", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));

    let big = files.path().join("big.csv");
    let mut text = String::from("id,age,note\n");
    let rows = 600_000;
    let bad = 543_210;
    for i in 1..=rows {
        if i == bad {
            text.push_str("px,not-a-number,padding padding padding\n");
        } else {
            text.push_str(&format!("p{i},{},padding padding padding\n", i % 90));
        }
    }
    assert!(text.len() > 20_000_000, "{} bytes", text.len());
    std::fs::write(&big, &text).unwrap();
    let out = c360(data.path(), &["load", "people", big.to_str().unwrap()]);
    let err = one_error_line(&out);
    assert!(err.contains(&format!("row {bad}: column age")), "{err}");
    assert_eq!(count(data.path(), "people"), "1");

    // The same file without the bad row lands whole.
    let fixed = text.replace("px,not-a-number", "px,1");
    std::fs::write(&big, fixed).unwrap();
    let out = c360(data.path(), &["load", "people", big.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(count(data.path(), "people"), (rows + 1).to_string());
}
