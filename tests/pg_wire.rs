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
