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
fn non_loopback_addresses_are_refused_without_users() {
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
        stderr_of(&out).contains("refusing to listen on 0.0.0.0:0: no [[pg.users]]"),
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

/// The text of every data row a simple query returned, statement after statement.
fn rows_of(messages: &[tokio_postgres::SimpleQueryMessage]) -> Vec<String> {
    messages
        .iter()
        .filter_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("NULL").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn several_statements_in_one_query_string() {
    let server = Server::start_demo();
    let client = server.connect().await;
    let messages = client
        .simple_query(
            "SELECT 1 AS a; SELECT count(*) FROM stores; \
             CREATE VIEW two_stores AS SELECT store_id FROM stores ORDER BY 1 LIMIT 2; \
             SELECT store_id FROM two_stores ORDER BY 1",
        )
        .await
        .unwrap();
    assert_eq!(rows_of(&messages), ["1", "40", "S01", "S02"]);

    // The first error ends the string with its SQLSTATE; what ran before it stays done.
    let err = client
        .simple_query(
            "CREATE VIEW before_error AS SELECT 1 AS one; SELECT * FROM no_such_table; \
             CREATE VIEW after_error AS SELECT 1 AS one",
        )
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&err).as_deref(), Some("42P01"), "{err:?}");
    client
        .simple_query("SELECT * FROM before_error")
        .await
        .unwrap();
    let after = client.simple_query("SELECT * FROM after_error").await;
    assert!(after.is_err(), "the statement after the error ran");

    // Syntax errors and unknown columns get their own codes, and the session goes on.
    let err = client.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(common::sqlstate(&err).as_deref(), Some("42601"), "{err:?}");
    let err = client
        .query("SELECT no_such_column FROM stores", &[])
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&err).as_deref(), Some("42703"), "{err:?}");
    let messages = client.simple_query("SELECT 2 AS b;;").await.unwrap();
    assert_eq!(rows_of(&messages), ["2"]);
}

#[tokio::test]
async fn transactions_are_accepted_and_statements_apply_at_once() {
    let server = Server::start_demo();
    let mut client = server.connect().await;
    let transaction = client.transaction().await.unwrap();
    let stores: i64 = transaction
        .query_one("SELECT count(*) FROM stores", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stores, 40);
    transaction.commit().await.unwrap();
    let transaction = client.transaction().await.unwrap();
    transaction.batch_execute("SELECT 1").await.unwrap();
    transaction.rollback().await.unwrap();
    let messages = client
        .simple_query("BEGIN; SELECT 3 AS c; COMMIT; ROLLBACK")
        .await
        .unwrap();
    assert_eq!(rows_of(&messages), ["3"]);
}

#[tokio::test]
async fn set_and_show_the_settings_clients_send() {
    let server = Server::start_demo();
    let client = server.connect().await;
    for (set, show, expected) in [
        (
            "SET application_name = 'report-42'",
            "SHOW application_name",
            "report-42",
        ),
        ("SET search_path = public", "SHOW search_path", "public"),
        ("SET DateStyle = 'ISO, MDY'", "SHOW DateStyle", "ISO, MDY"),
        ("SET extra_float_digits = 3", "SHOW extra_float_digits", "3"),
        (
            "SET client_encoding = 'UTF8'",
            "SHOW client_encoding",
            "UTF8",
        ),
        (
            "SET statement_timeout = '5s'",
            "SHOW statement_timeout",
            "5000ms",
        ),
    ] {
        client.batch_execute(set).await.unwrap();
        let shown = client.simple_query(show).await.unwrap();
        assert_eq!(rows_of(&shown), [expected], "{show}");
        // The extended protocol sees the same value.
        let row = client.query_one(show, &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), expected, "{show}");
    }
    let err = client
        .batch_execute("SET client_encoding = 'LATIN1'")
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&err).as_deref(), Some("0A000"), "{err:?}");
    let shown = client.simple_query("SHOW server_version").await.unwrap();
    assert_eq!(rows_of(&shown), ["16.6"]);
}

#[test]
fn psql_copies_query_results_to_files() {
    let server = Server::start_demo();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stores.csv");
    let copy = format!(
        "\\copy (SELECT store_id, name FROM stores WHERE store_id IN ('S01', 'S02') ORDER BY 1) \
         to '{}' csv header",
        file.display()
    );
    let out = server.psql(&["-c", &copy]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out).trim(), "COPY 2");
    let csv = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        csv,
        "store_id,name\nS01,Maison Lumière Paris Bercy\nS02,Maison Lumière Boulogne\n"
    );

    // Text format, with NULL as \N and tabs escaped, straight to stdout.
    let out = server.psql(&[
        "-c",
        "COPY (SELECT 'a\tb' AS t, NULL::text AS n, 7 AS i) TO STDOUT",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out), "a\\tb\t\\N\t7\n");

    // A whole table, in CSV with options.
    let out = server.psql(&[
        "-c",
        "COPY stores (store_id) TO STDOUT WITH (FORMAT csv, HEADER true)",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out).lines().count(), 41);

    // Stopped by the statement timeout midway: PostgreSQL's ErrorResponse, nothing else
    // that psql would not understand.
    let out = server.psql(&[
        "-c",
        "SET statement_timeout = 500",
        "-c",
        "COPY (SELECT value FROM generate_series(1, 100000000000)) TO STDOUT",
    ]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("canceling statement due to statement timeout")
            && !stderr.contains("unexpected response"),
        "{stderr}"
    );

    // No rows: the header alone.
    let out = server.psql(&[
        "-c",
        "COPY (SELECT store_id FROM stores WHERE false) TO STDOUT WITH (FORMAT csv, HEADER)",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out), "store_id\n");
}

#[test]
fn psql_meta_commands_describe_the_catalog() {
    let server = Server::start_demo();
    for (command, expected) in [
        ("\\l", "c360"),
        ("\\dt", "pos_sales"),
        ("\\dv", "web_orders"),
        ("\\dt", "profiles"),
        ("\\dn", "public"),
        ("\\d profiles", "lifetime_value"),
        ("\\d stores", "store_id"),
        // The `+` forms add sizes and descriptions (pg_size_pretty, obj_description).
        ("\\dt+", "pos_sales"),
        ("\\dv+", "web_orders"),
        // Storage, compression and the access method of each column and table.
        ("\\d+ stores", "Storage"),
        ("\\d+ profiles", "lifetime_value"),
        ("\\l+", "c360"),
        // A view's SQL, as `\\d+` shows it and as `\\sv` prints it to edit.
        ("\\d+ web_orders", "View definition:"),
        ("\\d+ web_orders", "'Order Completed'"),
        (
            "\\sv web_orders",
            "CREATE OR REPLACE VIEW public.web_orders AS",
        ),
        // c360's functions are built-ins, listed with their signatures.
        (
            "\\df normalize*",
            "normalize_phone | text             | text, text",
        ),
        ("\\df+ normalize_email", "immutable"),
        // Privileges (per role in c360, so none per relation) and roles: queries with
        // `ARRAY(subquery)`.
        ("\\dp", "customers_identities"),
        ("\\z stores", "Column privileges"),
        ("\\du", "Role name"),
        // ARRAY(subquery) in a user's query too.
        (
            "SELECT cardinality(ARRAY(SELECT store_id FROM stores ORDER BY 1)) AS n",
            "40",
        ),
        // Over no rows, an empty array as PostgreSQL gives, not NULL.
        (
            "SELECT ARRAY(SELECT store_id FROM stores WHERE store_id = 'none') AS none",
            " {}\n",
        ),
    ] {
        let out = server.psql(&["-c", command]);
        assert!(out.status.success(), "{command}: {}", stderr_of(&out));
        assert!(
            stdout_of(&out).contains(expected),
            "{command}: {}",
            stdout_of(&out)
        );
    }
    let expanded = server.psql(&[
        "-c",
        "\\x",
        "-c",
        "SELECT store_id FROM stores WHERE store_id = 'S01'",
    ]);
    assert!(expanded.status.success(), "{}", stderr_of(&expanded));
    assert!(
        stdout_of(&expanded).contains("-[ RECORD 1 ]"),
        "{}",
        stdout_of(&expanded)
    );
}

/// BI tools read a view's SQL from `pg_views` or with `pg_get_viewdef` per row of `pg_class`:
/// each view gets its own definition, tables none.
#[tokio::test]
async fn view_definitions_are_read_per_view() {
    let server = Server::start_demo();
    let client = server.connect().await;
    let definitions = client
        .query(
            "SELECT c.relname, pg_catalog.pg_get_viewdef(c.oid, true) FROM pg_catalog.pg_class c \
             WHERE c.relname IN ('web_orders', 'identifiers', 'stores') ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let by_name: Vec<(String, Option<String>)> = definitions
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(by_name.len(), 3, "{by_name:?}");
    let identifiers = by_name[0].1.as_deref().unwrap_or_default();
    assert!(identifiers.contains("normalize_email"), "{identifiers}");
    assert!(
        by_name[1].1.is_none(),
        "a table has no view definition: {by_name:?}"
    );
    let web_orders = by_name[2].1.as_deref().unwrap_or_default();
    assert!(web_orders.starts_with(" SELECT"), "{web_orders}");
    assert!(web_orders.contains("'Order Completed'"), "{web_orders}");
    assert!(!web_orders.contains("normalize_email"), "{web_orders}");

    let listed: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_views WHERE schemaname = 'public' \
             AND viewname IN ('web_orders', 'identifiers') AND definition LIKE ' SELECT%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(listed, 2);
}

#[tokio::test]
async fn result_columns_are_named_as_in_postgresql() {
    let server = Server::start_demo();
    let client = server.connect().await;
    let statement = client
        .prepare("SELECT 1, count(*), lower(city), city FROM stores GROUP BY city, lower(city)")
        .await
        .unwrap();
    let names: Vec<&str> = statement.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["?column?", "count", "lower", "city"]);
    let messages = client
        .simple_query("SELECT CASE WHEN true THEN 1 END, max(store_id) FROM stores")
        .await
        .unwrap();
    let row = messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .unwrap();
    let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["case", "max"]);
}

#[tokio::test]
async fn copy_out_through_the_extended_protocol_and_after_other_statements() {
    use futures::StreamExt;
    let server = Server::start_demo();
    let client = server.connect().await;
    let stream = client
        .copy_out("COPY (SELECT store_id FROM stores ORDER BY 1 LIMIT 2) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<_> = stream.map(|chunk| chunk.unwrap()).collect().await;
    let text: String = chunks
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    assert_eq!(text, "S01\nS02\n");
    client.simple_query("SELECT 1").await.unwrap();

    // A COPY after another statement of the same query string.
    let out = server.psql(&[
        "-c",
        "SELECT 7 AS seven; COPY (SELECT store_id FROM stores ORDER BY 1 LIMIT 1) TO STDOUT",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = stdout_of(&out);
    assert!(stdout.contains('7') && stdout.contains("S01"), "{stdout}");
}
