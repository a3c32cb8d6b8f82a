//! `COPY table FROM STDIN` over the wire, with real clients: psql's `\copy … from 'file'` and
//! tokio-postgres's `copy_in`. Rows land in one commit through the loader of `c360 load`; a
//! bad row fails the COPY with a SQLSTATE naming its line and column, and lands nothing.

mod common;

use bytes::Bytes;
use futures::SinkExt;

use common::{Server, hash_password, run_c360, sqlstate, stderr_of, stdout_of};

/// A storage root with landed table `people(id, age, joined)` holding one row, and a server
/// on it (configured with `config`, if any).
fn server_with_people(config: Option<&str>) -> Server {
    let data = tempfile::tempdir().unwrap();
    let seed = data.path().join("seed.csv");
    std::fs::write(&seed, "id,age,joined\np0,30,2024-01-01T00:00:00Z\n").unwrap();
    let out = run_c360(&[
        "load",
        "people",
        seed.to_str().unwrap(),
        "--data",
        data.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    match config {
        None => Server::start_in(data, &[]),
        Some(toml) => {
            let path = data.path().join("c360.toml");
            std::fs::write(&path, toml).unwrap();
            let path = path.display().to_string();
            Server::start_in(data, &["--config", &path])
        }
    }
}

async fn people(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT id || ':' || coalesce(CAST(age AS VARCHAR), 'null') FROM landed.people \
             ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect()
}

async fn copy_in(
    client: &tokio_postgres::Client,
    statement: &str,
    data: &str,
) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in(statement).await?;
    futures::pin_mut!(sink);
    sink.send(Bytes::from(data.to_string())).await?;
    sink.finish().await
}

/// The error of a COPY that must be refused before any data is sent.
async fn refused(client: &tokio_postgres::Client, statement: &str) -> tokio_postgres::Error {
    match client.copy_in::<_, Bytes>(statement).await {
        Ok(_) => panic!("{statement} was accepted"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn psql_copies_a_csv_file_into_a_landed_table() {
    let server = server_with_people(None);
    let files = tempfile::tempdir().unwrap();
    let csv = files.path().join("more people.csv");
    // Columns in another order than the table's, a quoted comma, an empty (NULL) age.
    std::fs::write(
        &csv,
        "joined,id,age\n2024-02-01T00:00:00Z,\"p1, jr\",41\n2024-03-01T00:00:00Z,p2,\n",
    )
    .unwrap();
    let copy = format!(
        "\\copy people (joined, id, age) from '{}' csv header",
        csv.display()
    );
    let out = server.psql(&["-c", &copy]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out).trim(), "COPY 2");

    let client = server.connect().await;
    assert_eq!(people(&client).await, ["p0:30", "p1, jr:41", "p2:null"]);
}

#[tokio::test]
async fn tokio_postgres_copies_text_and_csv() {
    let server = server_with_people(None);
    let client = server.connect().await;
    let rows = copy_in(
        &client,
        "COPY people (id, age) FROM STDIN",
        "p1\t41\np2\t\\N\n",
    )
    .await
    .unwrap();
    assert_eq!(rows, 2);
    let rows = copy_in(
        &client,
        "COPY landed.people FROM STDIN WITH (FORMAT csv, HEADER true)",
        "id,age,joined\np3,43,2024-05-01T00:00:00Z\n",
    )
    .await
    .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(
        people(&client).await,
        ["p0:30", "p1:41", "p2:null", "p3:43"]
    );

    // Statements after a COPY FROM in one query string would run before its rows arrive.
    let err = client
        .simple_query("COPY people FROM STDIN; SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{err:?}");
    client.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn a_bad_row_fails_the_copy_commits_nothing_and_names_line_and_column() {
    let server = server_with_people(None);
    let client = server.connect().await;

    // A value that is not a number, on line 3 (the header is line 1).
    let err = copy_in(
        &client,
        "COPY people FROM STDIN (FORMAT csv, HEADER true)",
        "id,age,joined\np1,41,2024-02-01T00:00:00Z\np2,forty,2024-02-01T00:00:00Z\n",
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22P02"), "{err:?}");
    let message = err.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains("line 3") && message.contains("column age"),
        "{message}"
    );
    assert!(message.contains("forty"), "{message}");

    // A bad timestamp, a short line: the connection stays usable after each.
    let err = copy_in(
        &client,
        "COPY people FROM STDIN (FORMAT csv)",
        "p1,41,2024-02-01T00:00:00Z\np2,42,yesterday\n",
    )
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22007"), "{err:?}");
    let err = copy_in(&client, "COPY people FROM STDIN", "p1\t41\n")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("22P04"), "{err:?}");
    let message = err.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains("line 1") && message.contains("joined"),
        "{message}"
    );
    assert_eq!(people(&client).await, ["p0:30"]);

    // psql with a bad file: an error, and nothing committed; then a good one goes in.
    let files = tempfile::tempdir().unwrap();
    let bad = files.path().join("bad.csv");
    let mut text = String::from("id,age,joined\n");
    for i in 0..20_000 {
        text.push_str(&format!("q{i},{i},2024-02-01T00:00:00Z\n"));
    }
    text.push_str("q-last,not-a-number,2024-02-01T00:00:00Z\n");
    std::fs::write(&bad, &text).unwrap();
    let out = server.psql(&[
        "-c",
        &format!("\\copy people from '{}' csv header", bad.display()),
    ]);
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("line 20002") && stderr.contains("column age"),
        "{stderr}"
    );
    assert_eq!(people(&client).await, ["p0:30"]);
    client.simple_query("SELECT 1").await.unwrap();

    // Unknown tables and columns are refused before any row is sent.
    let err = refused(&client, "COPY nope FROM STDIN").await;
    assert_eq!(sqlstate(&err).as_deref(), Some("42P01"), "{err:?}");
    let err = refused(&client, "COPY people (id, shoe_size) FROM STDIN").await;
    assert_eq!(sqlstate(&err).as_deref(), Some("42703"), "{err:?}");
}

#[tokio::test]
async fn analysts_may_not_copy_in() {
    let config = format!(
        "[[pg.users]]\nname = 'ana'\nrole = 'analyst'\nscram = '{}'\n\
         [[pg.users]]\nname = 'root'\nrole = 'admin'\nscram = '{}'\n",
        hash_password("ana-secret"),
        hash_password("root-secret"),
    );
    let server = server_with_people(Some(&config));
    let analyst = server.connect_as("ana", "ana-secret").await.unwrap();
    let err = refused(&analyst, "COPY people FROM STDIN").await;
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{err:?}");
    let out = server.psql_as(
        "ana",
        "ana-secret",
        "disable",
        &["-c", "COPY people FROM STDIN"],
    );
    assert!(
        stderr_of(&out).contains("permission denied"),
        "{}",
        stderr_of(&out)
    );

    let admin = server.connect_as("root", "root-secret").await.unwrap();
    assert_eq!(
        copy_in(&admin, "COPY people (id) FROM STDIN", "p9\n")
            .await
            .unwrap(),
        1
    );
    assert_eq!(people(&analyst).await, ["p0:30", "p9:null"]);
}
