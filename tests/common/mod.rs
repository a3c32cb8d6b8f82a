//! Shared by the integration tests: run the real `c360` binary, as a user would.

#![allow(dead_code)]

pub mod http;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn c360_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_c360"))
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs `c360 ARGS` from the repository root and waits for it. Each run gets its own
/// storage root (through C360_DATA, which a `--data` argument overrides), so that tests
/// running in parallel never share state.
pub fn run_c360(args: &[&str]) -> Output {
    let data = tempfile::tempdir().expect("tempdir");
    Command::new(c360_bin())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("C360_LOG")
        .env("C360_DATA", data.path())
        .output()
        .expect("the c360 binary runs")
}

/// A `c360 serve` child process on free ports, killed when dropped.
pub struct Server {
    pub child: Child,
    pub pg_host: String,
    pub pg_port: u16,
    pub http_addr: String,
    pub data: tempfile::TempDir,
    /// Holds the `--config` file of [`Server::start_with_config`], if any.
    pub config_dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts the demo workspace and waits for the banner.
    pub fn start_demo() -> Server {
        Server::start(&[])
    }

    pub fn start(extra_args: &[&str]) -> Server {
        Server::start_in(tempfile::tempdir().expect("tempdir"), extra_args)
    }

    /// Starts the demo with `toml` as its config file.
    pub fn start_with_config(toml: &str) -> Server {
        let config_dir = tempfile::tempdir().expect("tempdir");
        let path = config_dir.path().join("c360.toml");
        std::fs::write(&path, toml).expect("config file written");
        let path = path.display().to_string();
        let mut server = Server::start(&["--config", &path]);
        server.config_dir = Some(config_dir);
        server
    }

    /// Starts on an existing storage root, as a restart does.
    pub fn start_in(data: tempfile::TempDir, extra_args: &[&str]) -> Server {
        let data_arg = data.path().display().to_string();
        let mut args = vec![
            "serve",
            "--pg",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data",
            &data_arg,
        ];
        args.extend_from_slice(extra_args);
        let mut child = Command::new(c360_bin())
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("c360 serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut pg, mut http) = (None, None);
        while pg.is_none() || http.is_none() {
            assert!(
                Instant::now() < deadline,
                "c360 serve printed no banner in time"
            );
            let Some(Ok(line)) = lines.next() else {
                panic!(
                    "c360 serve exited before printing its banner: {:?}",
                    child.wait()
                );
            };
            if let Some(rest) = line.trim().strip_prefix("connect:") {
                // "psql -h HOST -p PORT -d c360"
                let words: Vec<&str> = rest.split_whitespace().collect();
                let host = words[words.iter().position(|w| *w == "-h").unwrap() + 1];
                let port = words[words.iter().position(|w| *w == "-p").unwrap() + 1];
                pg = Some((host.to_string(), port.parse::<u16>().unwrap()));
            }
            if let Some(rest) = line.trim().strip_prefix("health:") {
                let url = rest.trim();
                http = Some(
                    url.trim_start_matches("http://")
                        .trim_end_matches("/health")
                        .to_string(),
                );
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let (pg_host, pg_port) = pg.unwrap();
        Server {
            child,
            pg_host,
            pg_port,
            http_addr: http.unwrap(),
            data,
            config_dir: None,
        }
    }

    pub fn pg_config(&self) -> String {
        format!(
            "host={} port={} dbname=c360 user=analyst",
            self.pg_host, self.pg_port
        )
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.pg_config(), tokio_postgres::NoTls)
                .await
                .expect("tokio-postgres connects");
        tokio::spawn(connection);
        client
    }

    /// Connects as `user` with `password` (SCRAM-SHA-256), without TLS.
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        // libpq-style quoting, so that passwords with spaces or quotes go through.
        let quoted = password.replace('\\', "\\\\").replace('\'', "\\'");
        let config = format!(
            "host={} port={} dbname=c360 user={user} password='{quoted}'",
            self.pg_host, self.pg_port
        );
        let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Runs `psql` as `user`, with `PGPASSWORD` and `PGSSLMODE` set.
    pub fn psql_as(&self, user: &str, password: &str, sslmode: &str, args: &[&str]) -> Output {
        Command::new("psql")
            .args(["-h", &self.pg_host, "-p", &self.pg_port.to_string()])
            .args(["-d", "c360", "-U", user, "-X", "-v", "ON_ERROR_STOP=1"])
            .args(args)
            .env("PGPASSWORD", password)
            .env("PGSSLMODE", sslmode)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql is installed (see .ci/run)")
    }

    /// Runs the real `psql` binary against the server.
    pub fn psql(&self, args: &[&str]) -> Output {
        Command::new("psql")
            .args([
                "-h",
                &self.pg_host,
                "-p",
                &self.pg_port.to_string(),
                "-d",
                "c360",
                "-U",
                "analyst",
            ])
            .args(["-X", "-v", "ON_ERROR_STOP=1"])
            .args(args)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql is installed (see .ci/run)")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Server {
    /// Stops the server with SIGTERM and hands back its storage root.
    pub fn stop_keeping_data(mut self) -> tempfile::TempDir {
        let status = self.terminate();
        assert!(status.success(), "exit status {status:?}");
        let placeholder = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.data, placeholder)
    }
}

impl Server {
    /// Kills the server with SIGKILL, as a crash would, and hands back its storage root.
    pub fn kill_keeping_data(mut self) -> tempfile::TempDir {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
        let placeholder = tempfile::tempdir().expect("tempdir");
        std::mem::replace(&mut self.data, placeholder)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A SCRAM verifier for `password`, made by the real `c360 hash-password`.
pub fn hash_password(password: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(c360_bin())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("c360 hash-password runs");
    let mut stdin = child.stdin.take().expect("piped stdin");
    writeln!(stdin, "{password}").expect("password written");
    drop(stdin);
    let out = child.wait_with_output().expect("c360 hash-password ends");
    assert!(out.status.success(), "{}", stderr_of(&out));
    stdout_of(&out).trim().to_string()
}

/// The SQLSTATE of a tokio-postgres error, if the server sent one.
pub fn sqlstate(error: &tokio_postgres::Error) -> Option<String> {
    error.code().map(|code| code.code().to_string())
}

pub fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}
