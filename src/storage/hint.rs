//! A saved snapshot, so that opening a table whose log has grown long (a group commit per
//! collector flush) reads one file and the few commits after it, not the whole log.
//!
//! It is only a hint: the log stays the truth. The hint is written after the commit it
//! describes exists, names its version, and anything unreadable in it means a full replay.
//! It lives beside the log, not in it, so other Delta readers never see it.

use serde::{Deserialize, Serialize};

use super::Storage;
use super::delta::{Add, MetaData, Snapshot};
use crate::error::Result;

/// Save a hint every this many versions.
pub const EVERY: u64 = 100;

#[derive(Serialize, Deserialize)]
struct Hint {
    version: u64,
    metadata: MetaData,
    files: Vec<Add>,
}

fn path(dir: &str) -> String {
    format!("{dir}/_c360_snapshot.json")
}

/// The saved snapshot of the table in `dir`, if there is a usable one.
pub async fn load(storage: &Storage, dir: &str) -> Option<Snapshot> {
    let bytes = storage.get_if_exists(&path(dir)).await.ok()??;
    let hint: Hint = serde_json::from_slice(&bytes).ok()?;
    Snapshot::from_parts(hint.version, hint.metadata, hint.files).ok()
}

/// Saves `snapshot` as the table's hint (a whole-object put: readers see the old or the new).
pub async fn save(storage: &Storage, dir: &str, snapshot: &Snapshot) -> Result<()> {
    let hint = Hint {
        version: snapshot.version,
        metadata: snapshot.metadata.clone(),
        files: snapshot.files.values().cloned().collect(),
    };
    let bytes = serde_json::to_vec(&hint).map_err(|e| {
        crate::error::C360Error::Corrupt(format!("cannot encode the snapshot hint: {e}"))
    })?;
    storage.put(&path(dir), bytes).await
}
