//! Profile lookups over the Postgres wire: by profile id and by e-mail, with prepared
//! statements as an app sends them. Each lookup is answered three ways — the prepared fast
//! path, DataFusion with the index, and a full scan the index cannot serve — and the three
//! must return the same bytes, before and after a refresh that changes the data.

mod common;

use common::Server;
use common::http::post_json;
use tokio_postgres::Client;
use tokio_postgres::types::{FromSql, ToSql, Type};

const KEY: &str = "wk_lookup";

/// A column's value as the server encoded it, whatever its type: the three ways of answering
/// must agree byte for byte.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Raw, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

type Rows = Result<Vec<Vec<Option<Raw>>>, String>;

/// The rows of a prepared `sql` with `params`, in a stable order, or the error's SQLSTATE.
async fn rows(client: &Client, sql: &str, types: &[Type], params: &[&(dyn ToSql + Sync)]) -> Rows {
    let statement = client
        .prepare_typed(sql, types)
        .await
        .map_err(|e| format!("prepare {sql}: {e}"))?;
    let found = client.query(&statement, params).await.map_err(|e| {
        e.code()
            .map_or_else(|| e.to_string(), |c| c.code().to_string())
    })?;
    let mut rows: Vec<Vec<Option<Raw>>> = found
        .iter()
        .map(|row| (0..row.len()).map(|i| row.get(i)).collect())
        .collect();
    rows.sort();
    Ok(rows)
}

const BY_ID: &str = "SELECT * FROM profiles WHERE profile_id = $1";
/// Not a shape the fast path takes (a LIMIT): DataFusion plans it, with the index.
const BY_ID_PLANNED: &str = "SELECT * FROM profiles WHERE profile_id = $1 LIMIT 1000";
/// An expression on the column: no index can answer it, every row is read.
const BY_ID_SCANNED: &str = "SELECT * FROM profiles WHERE profile_id || '' = $1";

const BY_EMAIL: &str = "SELECT p.* FROM profiles p JOIN customers_identities i \
                        ON i.profile_id = p.profile_id WHERE i.id_type = 'email' AND i.id_value = $1";
const BY_EMAIL_PLANNED: &str = "SELECT p.* FROM profiles p JOIN customers_identities i \
                        ON i.profile_id = p.profile_id WHERE i.id_type = 'email' AND i.id_value = $1 \
                        LIMIT 1000";
const BY_EMAIL_SCANNED: &str = "SELECT p.* FROM profiles p JOIN customers_identities i \
                        ON i.profile_id = p.profile_id WHERE i.id_type = 'email' \
                        AND i.id_value || '' = $1";

/// Runs each key through the three forms of a lookup and checks they agree; returns how
/// many keys found rows.
async fn agree(client: &Client, forms: [&str; 3], keys: &[Option<String>]) -> usize {
    let mut found = 0;
    for key in keys {
        let answers = [
            rows(client, forms[0], &[], &[key]).await,
            rows(client, forms[1], &[], &[key]).await,
            rows(client, forms[2], &[], &[key]).await,
        ];
        assert_eq!(answers[0], answers[2], "{} for {key:?}", forms[0]);
        assert_eq!(answers[1], answers[2], "{} for {key:?}", forms[1]);
        if answers[0].as_ref().is_ok_and(|r| !r.is_empty()) {
            found += 1;
        }
    }
    found
}

async fn column(client: &Client, sql: &str) -> Vec<Option<String>> {
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn start() -> Server {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("lookup.toml");
    std::fs::write(&config, format!("[http]\nwrite_keys = ['{KEY}']\n")).unwrap();
    let config = config.display().to_string();
    Server::start_in(data, &["--config", &config])
}

async fn explain(client: &Client, sql: &str) -> String {
    client
        .simple_query(&format!("EXPLAIN {sql}"))
        .await
        .unwrap()
        .iter()
        .filter_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(format!(
                "{} {}",
                row.get(0).unwrap_or(""),
                row.get(1).unwrap_or("")
            )),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn lookups_by_id_and_email_agree_with_a_scan_before_and_after_a_refresh() {
    let server = start();
    let client = server.connect().await;

    let mut ids = column(
        &client,
        "SELECT profile_id FROM profiles ORDER BY profile_id LIMIT 25",
    )
    .await;
    let mut emails = column(
        &client,
        "SELECT id_value FROM customers_identities WHERE id_type = 'email' \
         ORDER BY id_value LIMIT 25",
    )
    .await;
    assert_eq!((ids.len(), emails.len()), (25, 25));
    // Keys that find nothing, and a NULL, which equals nothing.
    for keys in [&mut ids, &mut emails] {
        keys.extend([Some("nobody".to_string()), Some(String::new()), None]);
    }
    assert_eq!(
        agree(&client, [BY_ID, BY_ID_PLANNED, BY_ID_SCANNED], &ids).await,
        25
    );
    assert_eq!(
        agree(
            &client,
            [BY_EMAIL, BY_EMAIL_PLANNED, BY_EMAIL_SCANNED],
            &emails
        )
        .await,
        25
    );

    // A parameter sent as an integer for a text column is not the index's to judge: both
    // ways give DataFusion's answer.
    let as_integer = [Type::INT8];
    assert_eq!(
        rows(&client, BY_ID, &as_integer, &[&5_i64]).await,
        rows(&client, BY_ID_PLANNED, &as_integer, &[&5_i64]).await,
    );

    // EXPLAIN shows the access path: the index, not a scan and a filter.
    let plan = explain(&client, "SELECT * FROM profiles WHERE profile_id = 'x'").await;
    assert!(plan.contains("IndexLookupExec"), "{plan}");
    assert!(!plan.contains("FilterExec"), "{plan}");
    let plan = explain(
        &client,
        "SELECT * FROM customers_identities WHERE id_value = 'a@b.c'",
    )
    .await;
    assert!(plan.contains("IndexLookupExec"), "{plan}");

    // Prepared before the refresh, used after it.
    let by_email = client.prepare(BY_EMAIL).await.unwrap();
    let new_email = "lookup.new@example.org".to_string();
    assert!(
        client
            .query(&by_email, &[&new_email])
            .await
            .unwrap()
            .is_empty()
    );

    // A new person identifies: after the refresh, the lookups find them.
    let response = post_json(
        &server.http_addr,
        "/v1/identify",
        KEY,
        r#"{"userId":"lookup-new-1","messageId":"lookup-i1","traits":{"email":"Lookup.New@Example.org"}}"#,
    );
    assert_eq!(response.status, 200, "{}", response.body);
    client
        .batch_execute("REFRESH IDENTITY GRAPH customers; REFRESH MATERIALIZED VIEW profiles")
        .await
        .unwrap();
    let found = client.query(&by_email, &[&new_email]).await.unwrap();
    assert_eq!(found.len(), 1, "the new e-mail finds its profile");
    let new_id: String = found[0].get("profile_id");
    let by_id = client.prepare(BY_ID).await.unwrap();
    assert_eq!(client.query(&by_id, &[&new_id]).await.unwrap().len(), 1);
    let mut ids = ids;
    ids.push(Some(new_id));
    let mut emails = emails;
    emails.push(Some(new_email));
    assert_eq!(
        agree(&client, [BY_ID, BY_ID_PLANNED, BY_ID_SCANNED], &ids).await,
        26
    );
    assert_eq!(
        agree(
            &client,
            [BY_EMAIL, BY_EMAIL_PLANNED, BY_EMAIL_SCANNED],
            &emails
        )
        .await,
        26
    );
}

#[tokio::test]
async fn other_shapes_of_lookup_agree_with_datafusion() {
    let server = start();
    let client = server.connect().await;
    let id: String = client
        .query_one(
            "SELECT min(profile_id) FROM customers_identities WHERE id_type = 'email'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let id = Some(id);
    // Aliases, a subset of the columns, a literal next to the parameter, the join written
    // the other way round: each against the same query that DataFusion plans.
    for (fast, planned) in [
        (
            "SELECT profile_id AS id, first_seen FROM profiles AS p WHERE p.profile_id = $1",
            "SELECT profile_id AS id, first_seen FROM profiles AS p WHERE p.profile_id || '' = $1",
        ),
        (
            "SELECT i.id_type, i.id_value FROM customers_identities i \
             WHERE i.profile_id = $1 AND i.id_type = 'email'",
            "SELECT i.id_type, i.id_value FROM customers_identities i \
             WHERE i.profile_id || '' = $1 AND i.id_type = 'email'",
        ),
        (
            "SELECT p.profile_id, i.id_value FROM customers_identities i, profiles p \
             WHERE p.profile_id = i.profile_id AND p.profile_id = $1",
            "SELECT p.profile_id, i.id_value FROM customers_identities i, profiles p \
             WHERE p.profile_id = i.profile_id AND p.profile_id || '' = $1",
        ),
    ] {
        assert_eq!(
            rows(&client, fast, &[], &[&id]).await,
            rows(&client, planned, &[], &[&id]).await,
            "{fast}"
        );
        assert!(
            rows(&client, fast, &[], &[&id])
                .await
                .is_ok_and(|r| !r.is_empty()),
            "{fast}"
        );
    }
}
