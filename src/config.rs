//! Settings: one typed struct with a default for every field.
//!
//! Sources, weakest first: the defaults here, then `c360.toml` (or the file named by
//! `--config`), then `C360_*` environment variables and command-line flags (clap reads both,
//! so `--help` names each variable). The same field names appear in all three.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{C360Error, Result};

/// The name of the config file looked for in the working directory when none is given.
pub const DEFAULT_CONFIG_FILE: &str = "c360.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Storage root: a local directory or an object store URL (`s3://bucket/prefix`,
    /// `gs://…`, `az://…`). c360 keeps its own tables and state here.
    pub data: String,
    /// Directory of `.sql` files applied in name order at start-up.
    pub workspace: PathBuf,
    /// Values for `${name}` placeholders in workspace files. The demo workspace reads its
    /// sources from `${sources}`, so `sources = "/data/big"` points it at generated data.
    pub variables: std::collections::BTreeMap<String, String>,
    /// Options passed to the object store builder (credentials, region, endpoint…), by the
    /// names object_store uses, e.g. `aws_region`, `aws_endpoint`.
    pub storage_options: std::collections::BTreeMap<String, String>,
    pub pg: PgSettings,
    pub http: HttpSettings,
    pub actions: ActionSettings,
    pub maintenance: MaintenanceSettings,
}

/// Background upkeep of landed tables (`c360 serve` only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaintenanceSettings {
    /// Seconds between compaction rounds, which merge a table's small files (16 or more
    /// under 16 MiB) into one; 0 turns compaction off (vacuum still runs hourly).
    pub compact_interval_secs: u64,
    /// Most MiB of small files one compaction round merges: it bounds the round's memory,
    /// its CPU burst and the size of its final fsync, which share the disk with group
    /// commits. A table with more waits for the next rounds.
    pub compact_max_mb: u64,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        MaintenanceSettings {
            compact_interval_secs: 10,
            compact_max_mb: crate::storage::maintenance::COMPACT_MAX_BYTES / (1024 * 1024),
        }
    }
}

/// The outbound action queue and its delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionSettings {
    /// The queue's file (an embedded ACID store on local disk). Empty: `actions.redb` in the
    /// storage root when it is a local directory (required otherwise).
    pub queue: String,
    /// The global pressure cap, per profile and channel, over every trigger: `N per <interval>`.
    pub pressure_cap: String,
    /// The time zone for quiet hours when a profile has none (`time_zone` column).
    pub time_zone: String,
    /// How long a claimed action stays invisible to other consumers before it is handed out
    /// again, unless acknowledged.
    pub visibility_timeout: String,
    /// How long finished actions (delivered, dead, suppressed, held out) and trigger runs
    /// are kept; pending ones are kept until delivered.
    pub retention: String,
    /// Where each channel's actions are delivered; a channel without one waits for pull
    /// consumers (`claim_actions` / `ack_actions`). A URL that starts with `/` is a path on
    /// this server's own HTTP listener (e.g. `/sink`, the built-in receiver).
    pub destinations: Vec<Destination>,
}

/// A webhook receiving one channel's actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub channel: String,
    pub url: String,
    /// Key of the `X-C360-Signature` HMAC-SHA256 of each body.
    #[serde(default)]
    pub secret: String,
    /// Attempts before an action is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// At most this many actions per second to this destination.
    #[serde(default = "default_rate")]
    pub rate_per_second: u32,
    /// Actions per request: 1 posts each action alone (with an `Idempotency-Key` header);
    /// more posts `{"actions": [...]}`, for receivers that take batches.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

fn default_batch_size() -> usize {
    1
}

fn default_max_attempts() -> u32 {
    8
}

fn default_rate() -> u32 {
    1_000
}

impl Default for ActionSettings {
    fn default() -> Self {
        ActionSettings {
            queue: String::new(),
            pressure_cap: "3 per 7 days".to_string(),
            time_zone: "Europe/Paris".to_string(),
            visibility_timeout: "30 seconds".to_string(),
            retention: "30 days".to_string(),
            destinations: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PgSettings {
    /// Address of the Postgres wire protocol listener.
    pub listen: SocketAddr,
    /// The database name clients connect to.
    pub database: String,
    /// Who may connect (`[[pg.users]]`). With none, the listener serves loopback only and
    /// lets anyone in as admin; with some, every client authenticates with SCRAM-SHA-256.
    pub users: Vec<PgUser>,
    /// TLS certificate and key (`[pg.tls]`). When set, clients must use TLS, and a
    /// certificate or key that cannot be loaded stops start-up.
    pub tls: Option<TlsSettings>,
    /// Most sessions open at once; one more is refused with SQLSTATE 53300.
    pub max_connections: usize,
    /// Time a new connection has to authenticate before it is closed, in milliseconds, so
    /// that connections left half-open cannot hold every place.
    pub authentication_timeout_ms: u64,
    /// Default `statement_timeout` of each session, in milliseconds (0: none). A session
    /// changes its own with `SET statement_timeout`. Expiry fails the query with 57014.
    pub statement_timeout_ms: u64,
    /// Memory one query may hold, in MiB (0: unlimited); past it the query spills where it
    /// can, else fails with SQLSTATE 53200 while other sessions carry on.
    pub query_memory_mb: u64,
    /// Memory all sessions' queries may hold together, in MiB (0: unlimited): each session
    /// is held to `query_memory_mb` and all of them to this, so that many sessions cannot
    /// together exhaust the machine.
    pub memory_mb: u64,
}

/// One account of the Postgres listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgUser {
    pub name: String,
    pub role: Role,
    /// A SCRAM-SHA-256 verifier, `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
    /// (the format PostgreSQL keeps in pg_authid), as printed by `c360 hash-password`. It
    /// lets the server check a password without being able to log in with it.
    pub scram: String,
}

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads anything; any statement that changes data or definitions is refused (42501).
    Analyst,
    /// Everything, including c360's own DDL.
    Admin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file with the server certificate (and its chain).
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of the HTTP listener: the Segment-compatible event collector, health, metrics.
    pub listen: SocketAddr,
    /// Segment write keys the collector accepts (as the Basic-auth user, or `writeKey` in the
    /// body). Empty: any key is accepted, and the listener stays on loopback.
    pub write_keys: Vec<String>,
    /// Largest request body, in bytes, before and after gzip decompression (413 beyond).
    pub max_body_bytes: usize,
    /// A `messageId` seen within this many seconds is acknowledged but not stored again.
    pub dedup_window_secs: u64,
    /// At most this many message ids are remembered for deduplication: a fixed memory
    /// budget of about 30 bytes each (50 MiB for the default 2,000,000), filled within
    /// `dedup_max_ids / rate` seconds of sustained load. Past it the oldest are forgotten
    /// first, so memory stays flat under any load.
    pub dedup_max_ids: usize,
    /// Events waiting for the next group commit; when full, requests get 503 + Retry-After.
    pub buffer_events: usize,
    /// A request not durable after this many milliseconds gets 503 + Retry-After (its events
    /// may still land; the retry is then deduplicated by `messageId`).
    pub ack_timeout_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data: "c360-data".to_string(),
            workspace: PathBuf::from("sql"),
            variables: default_variables(),
            storage_options: Default::default(),
            pg: PgSettings::default(),
            http: HttpSettings::default(),
            actions: ActionSettings::default(),
            maintenance: MaintenanceSettings::default(),
        }
    }
}

/// The demo workspace's sources sit in the repository, next to `sql/`.
fn default_variables() -> std::collections::BTreeMap<String, String> {
    [("sources".to_string(), "../data/demo".to_string())].into()
}

impl Default for PgSettings {
    fn default() -> Self {
        PgSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 5433)),
            database: "c360".to_string(),
            users: Vec::new(),
            tls: None,
            max_connections: 100,
            authentication_timeout_ms: 60_000,
            statement_timeout_ms: 0,
            query_memory_mb: 4096,
            memory_mb: 0,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            write_keys: Vec::new(),
            // Segment's own limit for a batch call.
            max_body_bytes: 500 * 1024,
            dedup_window_secs: 3600,
            dedup_max_ids: 2_000_000,
            buffer_events: 200_000,
            ack_timeout_ms: 10_000,
        }
    }
}

impl Settings {
    /// Loads `path` if given (it must exist), else `./c360.toml` if present, else defaults.
    pub fn load(path: Option<&Path>) -> Result<Settings> {
        match path {
            Some(path) => Settings::from_file(path),
            None => {
                let default_path = Path::new(DEFAULT_CONFIG_FILE);
                if default_path.exists() {
                    Settings::from_file(default_path)
                } else {
                    Ok(Settings::default())
                }
            }
        }
    }

    pub fn from_file(path: &Path) -> Result<Settings> {
        let text = std::fs::read_to_string(path).map_err(|e| C360Error::ConfigFile {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Settings::from_toml(&text).map_err(|message| C360Error::ConfigFile {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn from_toml(text: &str) -> std::result::Result<Settings, String> {
        // toml's messages already carry line and column, and name the unknown key.
        let mut settings: Settings =
            toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))?;
        // A file that sets one variable keeps the defaults of the others.
        for (name, value) in default_variables() {
            settings.variables.entry(name).or_insert(value);
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Settings::from_toml("").unwrap(), Settings::default());
    }

    #[test]
    fn file_overrides_only_what_it_names() {
        let settings =
            Settings::from_toml("data = 's3://bucket/c360'\n[pg]\nlisten = '127.0.0.1:6000'\n")
                .unwrap();
        assert_eq!(settings.data, "s3://bucket/c360");
        assert_eq!(settings.pg.listen.port(), 6000);
        assert_eq!(settings.pg.database, "c360");
        assert_eq!(settings.http, HttpSettings::default());
    }

    #[test]
    fn compaction_can_be_turned_off_and_bounded() {
        let settings =
            Settings::from_toml("[maintenance]\ncompact_interval_secs = 0\ncompact_max_mb = 8\n")
                .unwrap();
        assert_eq!(settings.maintenance.compact_interval_secs, 0);
        assert_eq!(settings.maintenance.compact_max_mb, 8);
        assert_eq!(MaintenanceSettings::default().compact_interval_secs, 10);
        assert_eq!(MaintenanceSettings::default().compact_max_mb, 64);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = Settings::from_toml("[pg]\nlisen = '127.0.0.1:6000'\n").unwrap_err();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn users_and_tls_are_read() {
        let settings = Settings::from_toml(
            "[pg]\nmax_connections = 5\n[pg.tls]\ncert = 'c.pem'\nkey = 'k.pem'\n\
             [[pg.users]]\nname = 'ana'\nrole = 'analyst'\nscram = 'SCRAM-SHA-256$4096:c2FsdA==$YQ==:Yg=='\n",
        )
        .unwrap();
        assert_eq!(settings.pg.max_connections, 5);
        assert_eq!(settings.pg.users[0].role, Role::Analyst);
        assert_eq!(settings.pg.tls.unwrap().key, PathBuf::from("k.pem"));
        let err = Settings::from_toml("[[pg.users]]\nname = 'x'\nrole = 'root'\nscram = ''\n")
            .unwrap_err();
        assert!(err.contains("root"), "{err}");
    }

    #[test]
    fn bad_address_is_refused() {
        assert!(Settings::from_toml("[pg]\nlisten = 'nowhere'\n").is_err());
    }
}
