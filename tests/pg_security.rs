//! Who gets in, and what they may do: SCRAM-SHA-256 users, roles and TLS, with real clients.

mod common;

use common::{Server, hash_password, run_c360, sqlstate, stderr_of, stdout_of};

/// A config with an analyst `ana` and an admin `root`, plus `extra` TOML for `[pg]`.
fn users_config(extra: &str) -> String {
    format!(
        "[pg]\n{extra}\n\
         [[pg.users]]\nname = 'ana'\nrole = 'analyst'\nscram = '{}'\n\
         [[pg.users]]\nname = 'root'\nrole = 'admin'\nscram = '{}'\n",
        hash_password("ana-secret"),
        hash_password("root secret, with spaces"),
    )
}

#[tokio::test]
async fn passwords_are_checked_with_scram() {
    let server = Server::start_with_config(&users_config(""));

    let client = server.connect_as("ana", "ana-secret").await.unwrap();
    let stores: i64 = client
        .query_one("SELECT count(*) FROM stores", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stores, 40);
    server
        .connect_as("root", "root secret, with spaces")
        .await
        .unwrap();

    for (user, password) in [("ana", "wrong"), ("ana", ""), ("nobody", "ana-secret")] {
        let err = server.connect_as(user, password).await.err();
        let err = err.unwrap_or_else(|| panic!("{user}/{password} got in"));
        assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{user}: {err:?}");
    }

    // psql too, and it says why.
    let wrong = server.psql_as("ana", "nope", "disable", &["-c", "SELECT 1"]);
    assert!(!wrong.status.success());
    assert!(
        stderr_of(&wrong).contains("password authentication failed for user \"ana\""),
        "{}",
        stderr_of(&wrong)
    );
    let right = server.psql_as("ana", "ana-secret", "disable", &["-Atc", "SELECT 41 + 1"]);
    assert!(right.status.success(), "{}", stderr_of(&right));
    assert_eq!(stdout_of(&right).trim(), "42");
}

#[tokio::test]
async fn analysts_read_and_admins_write() {
    let server = Server::start_with_config(&users_config(""));
    let analyst = server.connect_as("ana", "ana-secret").await.unwrap();
    let admin = server
        .connect_as("root", "root secret, with spaces")
        .await
        .unwrap();

    let refused = [
        "CREATE VIEW mine AS SELECT 1 AS one",
        "CREATE TABLE t AS SELECT 1 AS one",
        "INSERT INTO stores SELECT * FROM stores",
        "DROP VIEW profiles",
        "COPY stores FROM STDIN",
        "CREATE IDENTITY GRAPH g FROM identifiers WITH (priority = 'email')",
        "REFRESH IDENTITY GRAPH customers",
        "DROP IDENTITY GRAPH customers",
        // Reads that change the action queue: a claim hides actions from other consumers.
        "SELECT * FROM claim_actions('email', 10)",
        "SELECT count(*) FROM actions WHERE action_id IN (SELECT action_id FROM claim_actions('push', 1))",
        "SELECT * FROM ack_actions('1,2')",
    ];
    for sql in refused {
        // Simple protocol...
        let err = analyst.batch_execute(sql).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{sql}: {err:?}");
        // ...and extended.
        let err = analyst.execute(sql, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some("42501"), "{sql}: {err:?}");
    }
    // A write hidden behind a read in one query string is refused, and nothing ran.
    let err = analyst
        .batch_execute("SELECT 1; CREATE VIEW sneaky AS SELECT 2 AS two")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"));

    // Tools that ask are told the analyst's session is read-only.
    let read_only = analyst
        .simple_query("SHOW transaction_read_only")
        .await
        .unwrap();
    assert!(
        read_only.iter().any(
            |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("on"))
        ),
        "{read_only:?}"
    );

    // The analyst's session is still usable and reads.
    let profiles: i64 = analyst
        .query_one("SELECT count(*) FROM profiles", &[])
        .await
        .unwrap()
        .get(0);
    assert!(profiles > 1000);
    // The queue itself is readable.
    analyst
        .query("SELECT action_id, status FROM actions LIMIT 5", &[])
        .await
        .unwrap();

    // The admin does what the analyst could not, and the analyst sees it.
    admin
        .batch_execute("CREATE VIEW big_stores AS SELECT store_id FROM stores")
        .await
        .unwrap();
    admin
        .execute("REFRESH IDENTITY GRAPH customers", &[])
        .await
        .unwrap();
    let big: i64 = analyst
        .query_one("SELECT count(*) FROM big_stores", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big, 40);
    let acked: i64 = admin
        .query_one(
            "SELECT CAST(acknowledged AS BIGINT) FROM ack_actions('999999')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(acked, 0, "nothing to acknowledge, and the admin may try");
    let err = analyst
        .batch_execute("CREATE VIEW sneaky AS SELECT 2 AS two")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("42501"));
    let sneaky = analyst
        .simple_query("SELECT * FROM sneaky")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&sneaky).as_deref(), Some("42P01"), "{sneaky:?}");
}

/// A self-signed certificate and key, made with the openssl CLI (see .ci/run).
fn self_signed(dir: &std::path::Path) -> (String, String) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed (see .ci/run)");
    assert!(made.status.success(), "{}", stderr_of(&made));
    (cert.display().to_string(), key.display().to_string())
}

#[test]
fn tls_serves_encrypted_sessions_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let tls = format!("[pg.tls]\ncert = '{cert}'\nkey = '{key}'\n");
    let server = Server::start_with_config(&format!("{}{tls}", users_config("")));

    let encrypted = server.psql_as(
        "ana",
        "ana-secret",
        "require",
        &["-Atc", "SELECT count(*) FROM stores", "-c", "\\conninfo"],
    );
    assert!(encrypted.status.success(), "{}", stderr_of(&encrypted));
    let out = stdout_of(&encrypted);
    assert!(out.starts_with("40\n"), "{out}");
    assert!(out.contains("SSL connection"), "{out}");

    // No plaintext, even with the right password.
    let plain = server.psql_as("ana", "ana-secret", "disable", &["-c", "SELECT 1"]);
    assert!(!plain.status.success());
    assert!(stderr_of(&plain).contains("TLS"), "{}", stderr_of(&plain));

    // The password is still checked over TLS.
    let wrong = server.psql_as("ana", "nope", "require", &["-c", "SELECT 1"]);
    assert!(!wrong.status.success());
    assert!(
        stderr_of(&wrong).contains("password authentication failed"),
        "{}",
        stderr_of(&wrong)
    );
}

#[test]
fn broken_tls_config_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let missing = dir.path().join("missing.pem").display().to_string();
    let garbage = garbage.display().to_string();
    for (cert, key, named) in [
        (missing.as_str(), key.as_str(), missing.as_str()),
        (garbage.as_str(), key.as_str(), garbage.as_str()),
        (cert.as_str(), cert.as_str(), cert.as_str()),
    ] {
        let config = dir.path().join("c360.toml");
        std::fs::write(
            &config,
            format!(
                "{}[pg.tls]\ncert = '{cert}'\nkey = '{key}'\n",
                users_config("")
            ),
        )
        .unwrap();
        let data = tempfile::tempdir().unwrap();
        let out = run_c360(&[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--pg",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data",
            data.path().to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
        let stderr = stderr_of(&out);
        let last = stderr.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: cannot start TLS with") && last.contains(named),
            "{stderr}"
        );
        assert!(stdout_of(&out).is_empty(), "no banner: {}", stdout_of(&out));
    }
}

#[test]
fn bad_verifiers_stop_start_up_and_hash_password_needs_a_password() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("c360.toml");
    std::fs::write(
        &config,
        "[[pg.users]]\nname = 'ana'\nrole = 'analyst'\nscram = 'ana-secret'\n",
    )
    .unwrap();
    let out = run_c360(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--pg",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("error: pg user ana: expected SCRAM-SHA-256$"),
        "{stderr}"
    );

    // hash-password with nothing on stdin: one line, non-zero exit.
    let empty = run_c360(&["hash-password"]);
    assert!(!empty.status.success());
    assert_eq!(
        stderr_of(&empty).trim().lines().count(),
        1,
        "{}",
        stderr_of(&empty)
    );
    // Two runs salt differently.
    assert_ne!(hash_password("same"), hash_password("same"));
}

#[test]
fn an_open_loopback_listener_says_so_in_its_log() {
    use std::io::BufRead;
    let data = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(common::c360_bin())
        .args([
            "serve",
            "--pg",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data",
        ])
        .arg(data.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("C360_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    // Read on a thread, so that a missing warning fails the test instead of hanging it.
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut warned = None;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match received.recv_timeout(left) {
            Ok(line) if line.contains("WARN") && line.contains("open without authentication") => {
                warned = Some(line);
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned.is_some(), "no warning about the open listener");
}
