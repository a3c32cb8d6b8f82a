//! The command line as an operator meets it: output formats, and one-line errors that
//! leave state untouched.

mod common;

use common::{run_c360, stderr_of, stdout_of};

fn one_error_line(out: &std::process::Output) -> String {
    let stderr = stderr_of(out);
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{stderr}"
    );
    lines[0].to_string()
}

#[test]
fn query_prints_an_aligned_table() {
    let out = run_c360(&[
        "query",
        "SELECT store_id, latitude > 40 AS north FROM stores ORDER BY store_id LIMIT 2",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(
        stdout_of(&out),
        " store_id | north\n----------+-------\n S01      | true\n S02      | true\n(2 rows)\n\n"
    );
}

#[test]
fn query_formats_csv_and_json_for_scripts() {
    let csv = run_c360(&["query", "--format", "csv", "SELECT 1 AS a, 'x,y' AS b"]);
    assert_eq!(stdout_of(&csv), "a,b\n1,\"x,y\"\n");
    let json = run_c360(&["query", "--format", "json", "SELECT 1 AS a, 'x' AS b"]);
    assert_eq!(stdout_of(&json), "[{\"a\":1,\"b\":\"x\"}]\n");
}

#[test]
fn a_bad_query_is_one_line_and_exit_1() {
    let out = run_c360(&["query", "SELECT * FROM nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out).contains("nowhere"));
}

#[test]
fn an_unknown_flag_is_one_line_and_exit_2() {
    let out = run_c360(&["serve", "--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(one_error_line(&out).contains("--frobnicate"));
}

#[test]
fn a_broken_workspace_file_names_file_and_line() {
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(
        workspace.path().join("10_ok.sql"),
        "CREATE VIEW v AS SELECT 1 AS x;\n",
    )
    .unwrap();
    std::fs::write(
        workspace.path().join("20_broken.sql"),
        "-- a typo on line 3\n\nCREATE VIEW w AS SELEC 2;\n",
    )
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = run_c360(&[
        "query",
        "--workspace",
        workspace.path().to_str().unwrap(),
        "--data",
        data.path().to_str().unwrap(),
        "SELECT 1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let line = one_error_line(&out);
    assert!(line.contains("20_broken.sql:3:"), "{line}");
    assert!(line.contains("SELEC"), "{line}");
}

#[test]
fn an_unwritable_data_directory_is_refused() {
    // Root ignores permission bits, so use a path below a regular file.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let bad = file.join("data");
    let out = run_c360(&["query", "--data", bad.to_str().unwrap(), "SELECT 1"]);
    assert_eq!(out.status.code(), Some(1));
    let line = one_error_line(&out);
    assert!(
        line.contains("not writable") && line.contains("not-a-dir"),
        "{line}"
    );
    assert!(
        std::fs::read(&file).unwrap() == b"x",
        "the file is untouched"
    );
}

#[test]
fn a_missing_workspace_variable_is_named() {
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("10.sql"), "SELECT '${nope}';\n").unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = run_c360(&[
        "query",
        "--workspace",
        workspace.path().to_str().unwrap(),
        "--data",
        data.path().to_str().unwrap(),
        "SELECT 1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(one_error_line(&out).contains("unknown variable ${nope}"));
}

#[test]
fn generate_writes_every_source_and_the_ground_truth() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = run_c360(&[
        "generate",
        "--customers",
        "200",
        "--out",
        out_dir.path().to_str().unwrap(),
        "--seed",
        "7",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    for entry in [
        "events",
        "pos_sales",
        "pos_sale_items",
        "crm_contacts.csv",
        "support_tickets.ndjson",
        "products.csv",
        "stores.csv",
        "ground_truth",
    ] {
        assert!(out_dir.path().join(entry).exists(), "{entry} missing");
    }
    // The demo workspace reads generated data through the `sources` variable, and sees
    // exactly the rows the generator reported.
    let reported: u64 = stdout_of(&out)
        .lines()
        .find_map(|line| line.trim().strip_prefix("events "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no events count in:\n{}", stdout_of(&out)));
    let data = tempfile::tempdir().unwrap();
    let sources = format!("sources={}", out_dir.path().display());
    let q = run_c360(&[
        "query",
        "--data",
        data.path().to_str().unwrap(),
        "--var",
        &sources,
        "--format",
        "csv",
        "SELECT count(*) AS n FROM events",
    ]);
    assert!(q.status.success(), "{}", stderr_of(&q));
    assert_eq!(stdout_of(&q), format!("n\n{reported}\n"));
}

#[test]
fn generate_refuses_zero_customers() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = run_c360(&[
        "generate",
        "--customers",
        "0",
        "--out",
        out_dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    one_error_line(&out);
}
