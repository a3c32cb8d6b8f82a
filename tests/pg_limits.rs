//! What one session may take: connections, time, memory, and the client's cancel.

mod common;

use std::time::{Duration, Instant};

use common::{Server, sqlstate};

/// Runs for minutes unless something stops it; needs no data.
const SLOW: &str = "SELECT sum(value) FROM generate_series(1, 100000000000)";

#[tokio::test]
async fn connections_past_the_limit_get_53300() {
    let server = Server::start_with_config("[pg]\nmax_connections = 2\n");
    let first = server.connect().await;
    let second = server.connect().await;
    let (third, connection) =
        match tokio_postgres::connect(&server.pg_config(), tokio_postgres::NoTls).await {
            Ok(pair) => pair,
            Err(e) => {
                assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e:?}");
                // The two admitted sessions are unaffected.
                first.simple_query("SELECT 1").await.unwrap();
                drop(second);
                // A place frees up when a session ends.
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    match tokio_postgres::connect(&server.pg_config(), tokio_postgres::NoTls).await
                    {
                        Ok((client, connection)) => {
                            tokio::spawn(connection);
                            client.simple_query("SELECT 1").await.unwrap();
                            return;
                        }
                        Err(e) if Instant::now() < deadline => {
                            assert_eq!(sqlstate(&e).as_deref(), Some("53300"));
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("no place freed: {e:?}"),
                    }
                }
            }
        };
    drop((third, connection));
    panic!("a third connection got in past max_connections = 2");
}

#[tokio::test]
async fn half_open_connections_do_not_hold_places_for_long() {
    let server =
        Server::start_with_config("[pg]\nmax_connections = 2\nauthentication_timeout_ms = 1000\n");
    let addr = format!("{}:{}", server.pg_host, server.pg_port);
    // Two connections that never send a startup packet take both places...
    let idle = [
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = tokio_postgres::connect(&server.pg_config(), tokio_postgres::NoTls)
        .await
        .err()
        .expect("no place left");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err:?}");
    // ...until the authentication timeout closes them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let client = server.connect().await;
    client.simple_query("SELECT 1").await.unwrap();
    drop(idle);
}

#[tokio::test]
async fn statement_timeout_cancels_with_57014_and_the_session_goes_on() {
    // From config...
    let server = Server::start_with_config("[pg]\nstatement_timeout_ms = 500\n");
    let client = server.connect().await;
    let shown = client.simple_query("SHOW statement_timeout").await.unwrap();
    let shown = shown
        .iter()
        .find_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row");
    assert_eq!(shown, "500ms");
    let started = Instant::now();
    let err = client.simple_query(SLOW).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let one: i64 = client
        .query_one("SELECT 1::bigint", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(one, 1);

    // ...from the client's startup options (libpq's PGOPTIONS)...
    let config = format!(
        "{} options='-c statement_timeout=300ms'",
        server.pg_config()
    );
    let (with_options, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let shown = with_options
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap();
    assert_eq!(shown.get::<_, String>(0), "300ms");
    let err = with_options.simple_query(SLOW).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");

    // ...and per session with SET, through the extended protocol too.
    client
        .batch_execute("SET statement_timeout = '200ms'")
        .await
        .unwrap();
    let err = client.query(SLOW, &[]).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .unwrap();
    let stores: i64 = client
        .query_one("SELECT count(*) FROM stores", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stores, 40);
}

#[tokio::test]
async fn a_cancelled_query_frees_the_session() {
    let server = Server::start_demo();
    let client = server.connect().await;
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let started = Instant::now();
    let err = client.simple_query(SLOW).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    canceller.await.unwrap().unwrap();
    let stores: i64 = client
        .query_one("SELECT count(*) FROM stores", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stores, 40);

    // A cancel sent while nothing runs does not hit the next query.
    client
        .cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn a_query_over_its_memory_limit_fails_alone_with_53200() {
    let server = Server::start_with_config("[pg]\nquery_memory_mb = 8\n");
    let greedy = server.connect().await;
    let other = server.connect().await;
    // A hash join keeps its build side in memory: 3M rows do not fit in 8 MiB.
    let join = "SELECT count(*) FROM generate_series(1, 3000000) a \
                JOIN generate_series(1, 3000000) b ON a.value = b.value";
    let (failed, fine) = tokio::join!(
        greedy.simple_query(join),
        other.query_one("SELECT count(*) FROM stores", &[])
    );
    let err = failed.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53200"), "{err:?}");
    assert_eq!(fine.unwrap().get::<_, i64>(0), 40);
    // Both sessions go on.
    greedy.simple_query("SELECT 1").await.unwrap();
    other.simple_query("SELECT 1").await.unwrap();
}

#[test]
fn ctrl_c_in_psql_cancels_the_query() {
    let server = Server::start_demo();
    let psql = std::process::Command::new("psql")
        .args(["-h", &server.pg_host, "-p", &server.pg_port.to_string()])
        .args(["-d", "c360", "-U", "analyst", "-X", "-c", SLOW])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql is installed (see .ci/run)");
    std::thread::sleep(Duration::from_millis(1500));
    // What the terminal sends psql on Ctrl-C.
    let sent = std::process::Command::new("kill")
        .args(["-INT", &psql.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let started = Instant::now();
    let out = psql.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_server_memory_limit_holds_whatever_the_session_limit() {
    let server = Server::start_with_config("[pg]\nquery_memory_mb = 0\nmemory_mb = 8\n");
    let client = server.connect().await;
    let join = "SELECT count(*) FROM generate_series(1, 3000000) a \
                JOIN generate_series(1, 3000000) b ON a.value = b.value";
    let err = client.simple_query(join).await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("53200"), "{err:?}");
    let stores: i64 = client
        .query_one("SELECT count(*) FROM stores", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stores, 40);
}
