//! The Postgres wire frontend, through real clients: tokio-postgres and the `psql` binary.

mod common;

use common::{Server, run_c360, stderr_of, stdout_of};

#[tokio::test]
async fn tokio_postgres_queries_the_demo_sources() {
    let server = Server::start_demo();
    let client = server.connect().await;

    let row = client
        .query_one("SELECT count(*) FROM crm_contacts", &[])
        .await
        .unwrap();
    let contacts: i64 = row.get(0);
    assert!(contacts > 100, "demo has contacts, got {contacts}");

    // Extended protocol with a parameter.
    let rows = client
        .query(
            "SELECT store_id, name FROM stores WHERE store_id = $1",
            &[&"S01"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let name: String = rows[0].get(1);
    assert!(!name.is_empty());

    // An error leaves the session usable.
    let err = client
        .simple_query("SELECT * FROM no_such_table")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no_such_table") || format!("{err:?}").contains("no_such_table"),
        "{err:?}"
    );
    let again: i64 = client
        .query_one("SELECT count(*) FROM stores", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, 40);
}

#[test]
fn psql_lists_and_queries_the_demo_sources() {
    let server = Server::start_demo();

    let count = server.psql(&["-At", "-c", "SELECT count(*) FROM crm_contacts"]);
    assert!(count.status.success(), "psql failed: {}", stderr_of(&count));
    let from_psql: u64 = stdout_of(&count).trim().parse().unwrap();

    // The same number as the CLI reads, without the server.
    let cli = run_c360(&[
        "query",
        "--format",
        "csv",
        "SELECT count(*) AS n FROM crm_contacts",
    ]);
    assert!(cli.status.success(), "{}", stderr_of(&cli));
    assert_eq!(stdout_of(&cli), format!("n\n{from_psql}\n"));

    let tables = server.psql(&[
        "-At",
        "-c",
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    ]);
    assert!(tables.status.success(), "{}", stderr_of(&tables));
    let listed = stdout_of(&tables);
    for table in [
        "crm_contacts",
        "events",
        "pos_sales",
        "products",
        "stores",
        "support_tickets",
        "web_orders",
    ] {
        assert!(
            listed.lines().any(|line| line == table),
            "{table} missing from:\n{listed}"
        );
    }

    // psql's own catalog query behind \dt.
    let dt = server.psql(&["-c", "\\dt"]);
    assert!(dt.status.success(), "\\dt failed: {}", stderr_of(&dt));
    assert!(stdout_of(&dt).contains("pos_sales"), "{}", stdout_of(&dt));
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut server = Server::start_demo();
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn a_port_in_use_fails_start_up_with_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = tempfile::tempdir().unwrap();
    let out = run_c360(&[
        "serve",
        "--pg",
        &addr,
        "--http",
        "127.0.0.1:0",
        "--data",
        data.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = stderr_of(&out);
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: cannot listen on") && last.contains(&addr),
        "{stderr}"
    );
    assert!(
        stdout_of(&out).is_empty(),
        "no banner on failure: {}",
        stdout_of(&out)
    );
}

#[test]
fn non_loopback_addresses_are_refused_until_auth_exists() {
    let data = tempfile::tempdir().unwrap();
    let out = run_c360(&[
        "serve",
        "--pg",
        "0.0.0.0:0",
        "--http",
        "127.0.0.1:0",
        "--data",
        data.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("refusing to listen on 0.0.0.0:0"),
        "{}",
        stderr_of(&out)
    );
}

#[tokio::test]
async fn health_answers_over_http() {
    let server = Server::start_demo();
    let mut stream = tokio::net::TcpStream::connect(&server.http_addr)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"status\":\"ok\""), "{response}");
}

#[tokio::test]
async fn identity_statements_run_over_the_wire_with_sqlstates() {
    let server = Server::start_demo();
    let client = server.connect().await;
    client
        .batch_execute(
            "CREATE VIEW wire_ids AS SELECT 'r1' AS record_key, 'email' AS id_type, \
             'a@b.fr' AS id_value, TIMESTAMP '2026-01-01 00:00:00' AS seen_at; \
             CREATE IDENTITY GRAPH wire FROM wire_ids WITH (priority = 'email')",
        )
        .await
        .unwrap();
    let records: i64 = client
        .query_one("SELECT count(*) FROM wire_records", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(records, 1);

    let code = |e: tokio_postgres::Error| e.code().map(|c| c.code().to_string());
    let again = client
        .batch_execute("CREATE IDENTITY GRAPH wire FROM wire_ids WITH (priority = 'email')")
        .await
        .unwrap_err();
    assert_eq!(code(again).as_deref(), Some("42P07"));
    let bad_rule = client
        .batch_execute(
            "CREATE IDENTITY GRAPH x FROM wire_ids WITH (priority = 'email', limits = 'phone: 1')",
        )
        .await
        .unwrap_err();
    assert_eq!(code(bad_rule).as_deref(), Some("22023"));
    let bad_syntax = client
        .batch_execute("CREATE IDENTITY GRAPH x wire_ids")
        .await
        .unwrap_err();
    assert_eq!(code(bad_syntax).as_deref(), Some("42601"));

    // The demo's profiles are there, and the session is still usable after the errors.
    let profiles: i64 = client
        .query_one("SELECT count(*) FROM profiles", &[])
        .await
        .unwrap()
        .get(0);
    assert!(profiles > 1000, "{profiles}");
}

#[test]
fn profile_ids_survive_a_restart() {
    let server = Server::start_demo();
    let query = "SELECT record_key || '=' || profile_id FROM customers_records ORDER BY record_key LIMIT 50";
    let before = server.psql(&["-At", "-c", query]);
    assert!(before.status.success(), "{}", stderr_of(&before));
    let data = server.stop_keeping_data();

    // The committed state is one version and a pointer to it.
    let graph_dir = data.path().join("identity/customers");
    let mut entries: Vec<String> = std::fs::read_dir(&graph_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0], "CURRENT");

    let restarted = Server::start_in(data, &[]);
    let after = restarted.psql(&["-At", "-c", query]);
    assert!(after.status.success(), "{}", stderr_of(&after));
    assert_eq!(stdout_of(&before), stdout_of(&after));
    assert_eq!(stdout_of(&before).lines().count(), 50);
}
