//! Real drivers against `c360 serve`: each runs a small program under tests/clients/ that
//! exercises its catalog and protocol paths, and fails if any of them fails. `.ci/run`
//! installs the drivers (psycopg 3, SQLAlchemy and asyncpg from PyPI; pgjdbc and a JDK from
//! Debian; node-postgres from npm, into tests/clients/node_modules).

mod common;

use std::process::Command;

use common::{Server, repo_path, stderr_of, stdout_of};

fn run_check(program: &str, args: &[&str], server: &Server, expected: &str) {
    let port = server.pg_port.to_string();
    let out = Command::new(program)
        .args(args)
        .args([server.pg_host.as_str(), port.as_str()])
        .current_dir(repo_path("tests/clients"))
        .output()
        .unwrap_or_else(|e| panic!("{program} runs (see .ci/run): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        stdout_of(&out),
        stderr_of(&out)
    );
    assert!(stdout_of(&out).contains(expected), "{}", stdout_of(&out));
}

#[test]
fn psycopg_and_sqlalchemy_reflection() {
    let server = Server::start_demo();
    run_check(
        "python3",
        &["psycopg_check.py"],
        &server,
        "psycopg and SQLAlchemy: ok",
    );
}

#[test]
fn asyncpg_prepares_and_introspects() {
    let server = Server::start_demo();
    run_check("python3", &["asyncpg_check.py"], &server, "asyncpg: ok");
}

#[test]
fn pgjdbc_metadata_and_prepared_statements() {
    let server = Server::start_demo();
    run_check(
        "java",
        &["-cp", "/usr/share/java/postgresql.jar", "JdbcCheck.java"],
        &server,
        "pgjdbc: ok",
    );
}

#[test]
fn node_postgres_prepares_and_lists_tables() {
    let server = Server::start_demo();
    run_check("node", &["node_pg_check.js"], &server, "node-postgres: ok");
}
