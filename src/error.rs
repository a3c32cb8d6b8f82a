//! The one error type of c360. Each variant names the thing that failed (a file, a statement,
//! an address) so that the message a user sees is enough to act on.

use std::path::PathBuf;

use datafusion::error::DataFusionError;

pub type Result<T, E = C360Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum C360Error {
    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("cannot read config file {path}: {message}")]
    ConfigFile { path: PathBuf, message: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("data directory {path} is not writable: {source}")]
    DataDirNotWritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "storage root {path} is in use by another c360 process (query the running server with psql, or use another --data)"
    )]
    StorageBusy { path: PathBuf },

    #[error("invalid storage URL {url}: {message}")]
    StorageUrl { url: String, message: String },

    #[error("{file}:{line}: {message}")]
    Workspace {
        file: PathBuf,
        line: usize,
        message: String,
    },

    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },

    #[error("refusing to listen on {addr}: {reason}")]
    UnsafeListen { addr: String, reason: String },

    /// TLS is configured but cannot start: the server refuses to run rather than serve
    /// plaintext.
    #[error("cannot start TLS with {path}: {message}")]
    Tls { path: PathBuf, message: String },

    /// A `[[pg.users]]` entry that cannot be used (bad verifier, duplicate name…).
    #[error("pg user {user}: {message}")]
    PgUser { user: String, message: String },

    #[error("writing {path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: datafusion::parquet::errors::ParquetError,
    },

    #[error("{context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: datafusion::arrow::error::ArrowError,
    },

    #[error("{0}")]
    Query(#[from] DataFusionError),

    #[error("{0}")]
    InvalidArgument(String),

    #[error("{0} already exists")]
    AlreadyExists(String),

    #[error("{0} does not exist")]
    NotFound(String),

    /// The action queue's store failed.
    #[error("action queue: {0}")]
    Queue(String),

    /// Refused because other objects depend on the one named.
    #[error("{0}")]
    DependentObjects(String),

    /// A c360 statement that does not parse.
    #[error("{0}")]
    Syntax(String),

    /// A definition or rule of an identity graph that cannot be used, or a failed build.
    #[error("{0}")]
    Identity(String),

    /// A commit that lost a race it cannot retry (a file it rewrites was removed meanwhile).
    #[error("commit conflict: {0}")]
    Conflict(String),

    /// A loaded row (or header) that does not fit its table: where it is, which column, why.
    #[error("{input}: {place}: column {column}: {message} (table {table})")]
    BadRow {
        input: String,
        /// `row 12`, `line 13`, or `header` when no single value is to blame.
        place: String,
        column: String,
        message: String,
        table: String,
        kind: crate::storage::table::MisfitKind,
    },

    /// Work c360 moved to a blocking thread (a segment's diff, a Parquet encoding) that
    /// panicked or was cancelled: a bug or a shutdown, never bad input.
    #[error("{what} did not finish: {message}")]
    Task { what: String, message: String },

    /// State in the storage root that c360 cannot read back.
    #[error("corrupt state: {0}")]
    Corrupt(String),
}

impl C360Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        C360Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn parquet(
        path: impl Into<PathBuf>,
        source: datafusion::parquet::errors::ParquetError,
    ) -> Self {
        C360Error::Parquet {
            path: path.into(),
            source,
        }
    }

    pub fn arrow(context: impl Into<String>, source: datafusion::arrow::error::ArrowError) -> Self {
        C360Error::Arrow {
            context: context.into(),
            source,
        }
    }
}
