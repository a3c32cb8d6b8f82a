//! The storage root: where c360 keeps everything it owns (landed tables, identity state,
//! materialized results, the action queue).
//!
//! It is an object store addressed by a URL, a local directory by default, so that the same
//! code runs against S3, GCS or Azure when an operator sets `data = "s3://…"`. Opening a
//! root proves it is writable before the server announces itself, so that a bad `--data`
//! fails at start-up with the path in the message rather than at the first commit.

pub mod checkpoint;
pub mod delete;
pub mod delta;
mod direct;
pub mod index;
pub mod index_join;
pub mod inputs;
pub mod landed;
pub mod maintenance;
pub mod provider;
pub mod published;
pub mod table;
pub mod writer;

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::FileReader;
use datafusion::arrow::ipc::writer::FileWriter;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use url::Url;

use crate::error::{C360Error, Result};

/// An opened, writable storage root.
#[derive(Debug, Clone)]
pub struct Storage {
    url: Url,
    store: Arc<dyn ObjectStore>,
    root: Path,
    /// Held open for the life of the process: the OS lock on it keeps a second c360 from
    /// committing into the same local root (object stores have no such lock yet).
    _lock: Option<Arc<std::fs::File>>,
    /// A local root: commits fsync what they wrote there, because a local put only reaches
    /// the page cache (an object store's completed PUT is already durable).
    local: Option<LocalRoot>,
}

/// The URL under which the root's store is registered for scans of landed tables: one fixed
/// name whatever the root, so that plans need not know whether it is local or remote.
pub const SCAN_URL: &str = "c360://storage/";

/// Streamed uploads go in chunks of this size (S3's minimum part is 5 MiB), at most
/// `UPLOADS_IN_FLIGHT` at once: memory stays bounded whatever the object's size.
const UPLOAD_CHUNK_BYTES: usize = 16 << 20;
const UPLOADS_IN_FLIGHT: usize = 4;

impl Storage {
    /// Opens `location`: a URL with a scheme (`s3://`, `gs://`, `az://`, `file://`,
    /// `memory://`) or a local directory, created if missing.
    pub async fn open(location: &str, options: &BTreeMap<String, String>) -> Result<Storage> {
        let storage = match Url::parse(location) {
            Ok(url) if url.scheme().len() > 1 && url.scheme() != "file" => {
                Storage::open_url(url, options)?
            }
            Ok(url) if url.scheme() == "file" => {
                let dir = url.to_file_path().map_err(|()| C360Error::StorageUrl {
                    url: location.to_string(),
                    message: "not a local path".to_string(),
                })?;
                Storage::open_local(&dir)?
            }
            // No scheme (or a one-letter Windows drive): a local directory.
            _ => Storage::open_local(FsPath::new(location))?,
        };
        storage.check_writable().await?;
        Ok(storage)
    }

    fn open_local(dir: &FsPath) -> Result<Storage> {
        let not_writable = |source| C360Error::DataDirNotWritable {
            path: dir.to_path_buf(),
            source,
        };
        // The directories this creates, outermost last: each one's entry is fsync'd in the
        // directory above, so that a power cut cannot take the root from under what it holds.
        let created: Vec<PathBuf> = dir
            .ancestors()
            .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
            .map(FsPath::to_path_buf)
            .collect();
        std::fs::create_dir_all(dir).map_err(not_writable)?;
        for made in &created {
            let above = std::fs::canonicalize(made)
                .map_err(not_writable)?
                .parent()
                .map(FsPath::to_path_buf);
            if let Some(above) = above {
                std::fs::File::open(&above)
                    .and_then(|d| d.sync_all())
                    .map_err(not_writable)?;
            }
        }
        let absolute: PathBuf = std::fs::canonicalize(dir).map_err(not_writable)?;
        let url = Url::from_directory_path(&absolute).map_err(|()| C360Error::StorageUrl {
            url: absolute.display().to_string(),
            message: "cannot be expressed as a file:// URL".to_string(),
        })?;
        let store = LocalFileSystem::new_with_prefix(&absolute)
            .map_err(|e| not_writable(std::io::Error::other(e.to_string())))?;
        let lock = lock_root(&absolute)?;
        Ok(Storage {
            url,
            store: Arc::new(store),
            root: Path::default(),
            _lock: Some(Arc::new(lock)),
            local: Some(LocalRoot::new(absolute)),
        })
    }

    fn open_url(url: Url, options: &BTreeMap<String, String>) -> Result<Storage> {
        let (store, root) = object_store::parse_url_opts(&url, options.iter()).map_err(|e| {
            C360Error::StorageUrl {
                url: url.to_string(),
                message: e.to_string(),
            }
        })?;
        Ok(Storage {
            url,
            store: Arc::from(store),
            root,
            _lock: None,
            local: None,
        })
    }

    /// Writes and deletes a probe object: the cheapest proof that commits will succeed.
    async fn check_writable(&self) -> Result<()> {
        let probe = self.path(&format!("_c360/probe-{}", std::process::id()));
        let failed = |e: object_store::Error| C360Error::DataDirNotWritable {
            path: PathBuf::from(self.url.as_str()),
            source: std::io::Error::other(e.to_string()),
        };
        self.store
            .put(&probe, PutPayload::from_static(b"c360"))
            .await
            .map_err(failed)?;
        self.store.delete(&probe).await.map_err(failed)?;
        Ok(())
    }

    /// Makes the root readable from SQL (`LOCATION` URLs under it resolve to this store).
    pub fn register(&self, ctx: &SessionContext) {
        if self.url.scheme() != "file" {
            ctx.runtime_env()
                .register_object_store(&self.url, Arc::clone(&self.store));
        }
        if let Ok(url) = Url::parse(SCAN_URL) {
            ctx.runtime_env()
                .register_object_store(&url, Arc::clone(&self.store));
        }
    }

    /// Writes `bytes` at `relative` only if nothing is there yet: `Ok(false)` when another
    /// writer got there first. This is the one primitive a commit log needs on every store.
    /// Durable on return, as [`Storage::put`] is.
    pub async fn put_if_absent(&self, relative: &str, bytes: Vec<u8>) -> Result<bool> {
        let options = object_store::PutOptions::from(object_store::PutMode::Create);
        let written = self.written_path(relative);
        match self
            .store
            .put_opts(&self.path(relative), PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => {
                self.make_durable(written).await?;
                Ok(true)
            }
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(C360Error::StorageUrl {
                url: format!("{}{relative}", self.url),
                message: e.to_string(),
            }),
        }
    }

    /// Writes `bytes` at `relative` durably (fsync'd with its directory entry on a local
    /// root), at most `bytes_per_sec` on a local root: background rewrites (compaction) use
    /// it so that their data reaches the disk as a steady trickle, started chunk by chunk,
    /// rather than as one large flush at the final fsync that every group commit's fsync
    /// would queue behind. The file is written under its final name: until a commit names
    /// it, it is an orphan that no reader sees (and vacuum deletes, should a crash cut it).
    /// Object stores get one ordinary PUT, durable on completion.
    pub async fn put_paced(
        &self,
        relative: &str,
        bytes: Vec<u8>,
        bytes_per_sec: u64,
    ) -> Result<()> {
        let Some(local) = &self.local else {
            return self.put(relative, bytes).await;
        };
        let local = local.clone();
        let path = local.dir.join(relative);
        let written = path.clone();
        tokio::task::spawn_blocking(move || write_paced(&local, &path, &bytes, bytes_per_sec))
            .await
            .map_err(|e| C360Error::io(&written, std::io::Error::other(e)))?
            .map_err(|e| C360Error::io(&written, e))
    }

    /// What a write of `relative` must fsync on a local root (`None` elsewhere), found before
    /// the write: only then can it tell which directories the write creates.
    fn written_path(&self, relative: &str) -> Option<WrittenPath> {
        self.local
            .as_ref()
            .map(|local| local.before_writing(local.dir.join(relative)))
    }

    /// Makes a write durable once it is done (see [`WrittenPath`]). The file and its
    /// directories are independent: both are fsync'd at once, which halves the wait on disks
    /// that serve them in parallel (every group commit waits on this).
    async fn make_durable(&self, written: Option<WrittenPath>) -> Result<()> {
        let Some(written) = written else {
            return Ok(());
        };
        let task_failed =
            |e: tokio::task::JoinError| C360Error::io("fsync task", std::io::Error::other(e));
        let file = written.file.clone();
        let file_synced = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&file)
                .and_then(|f| f.sync_all())
                .map_err(|e| C360Error::io(&file, e))
        });
        let local = self.local.clone();
        tokio::task::spawn_blocking(move || match local {
            Some(local) => local.sync_directories(&written),
            None => Ok(()),
        })
        .await
        .map_err(task_failed)??;
        file_synced.await.map_err(task_failed)?
    }

    /// The objects directly under `prefix`: (name, size, last modified in ms since the epoch).
    pub async fn list_objects(&self, prefix: &str) -> Result<Vec<(String, u64, i64)>> {
        Ok(self
            .list(prefix)
            .await?
            .objects
            .iter()
            .filter_map(|o| {
                o.location
                    .filename()
                    .map(|n| (n.to_string(), o.size, o.last_modified.timestamp_millis()))
            })
            .collect())
    }

    pub async fn delete(&self, relative: &str) -> Result<()> {
        match self.store.delete(&self.path(relative)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(C360Error::StorageUrl {
                url: format!("{}{relative}", self.url),
                message: e.to_string(),
            }),
        }
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::clone(&self.store)
    }

    /// Writes `batches` as one Parquet object. The object appears whole or not at all: local
    /// files are written aside and renamed, object stores publish on completion.
    pub async fn put_parquet(
        &self,
        relative: &str,
        schema: SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<()> {
        // Encoding is CPU-bound (hundreds of milliseconds for a large result): it runs on a
        // blocking thread so that the async workers keep serving other refreshes and queries.
        let batches = batches.to_vec();
        let bytes = tokio::task::spawn_blocking(move || encode_parquet(schema, &batches))
            .await
            .map_err(|e| C360Error::Task {
                what: format!("writing {}{relative}", self.url),
                message: e.to_string(),
            })?
            .map_err(|message| self.failed(relative, message))?;
        self.put(relative, bytes).await
    }

    /// Writes an Arrow IPC file from batches built as they are taken, uploading it in chunks
    /// as it is encoded (on a local root, writing it to the file on the calling thread, as
    /// the batches are built there anyway): only one batch and a few chunks are in memory at
    /// once, where the whole file would be gigabytes (identity state). For data only c360 reads back: the IPC
    /// layout is Arrow's own, so it encodes at memory speed where Parquet's encodings take
    /// tens of seconds. The object appears whole or not at all, as with [`Storage::put`]; a
    /// failed batch or upload leaves nothing behind.
    pub async fn put_arrow_stream(
        &self,
        relative: &str,
        schema: SchemaRef,
        batches: impl Iterator<Item = Result<RecordBatch>>,
    ) -> Result<()> {
        if let Some(local) = &self.local {
            return write_arrow_file(local, &local.dir.join(relative), &schema, batches)
                .map_err(|message| self.failed(relative, message));
        }
        let upload = self
            .store
            .put_multipart(&self.path(relative))
            .await
            .map_err(|e| self.failed(relative, e.to_string()))?;
        let mut upload = WriteMultipart::new_with_chunk_size(upload, UPLOAD_CHUNK_BYTES);
        match self
            .stream_arrow(relative, &schema, batches, &mut upload)
            .await
        {
            Ok(()) => upload
                .finish()
                .await
                .map(|_| ())
                .map_err(|e| self.failed(relative, e.to_string())),
            Err(e) => {
                // The failure to report is the first one; a failed abort leaves at most a
                // staging object that nothing names.
                let _ = upload.abort().await;
                Err(e)
            }
        }
    }

    /// Whether the root is a local directory rather than an object store.
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// [`Storage::put_arrow_stream`] on the calling thread, without the async runtime, for a
    /// local root; `None` (nothing written) for an object store, whose uploads need the
    /// runtime. For writing beside CPU-bound work on a thread of its own.
    pub fn put_arrow_stream_here(
        &self,
        relative: &str,
        schema: &SchemaRef,
        batches: impl Iterator<Item = Result<RecordBatch>>,
    ) -> Option<Result<()>> {
        let local = self.local.as_ref()?;
        let path = local.dir.join(relative);
        Some(
            write_arrow_file(local, &path, schema, batches)
                .map_err(|message| self.failed(relative, message)),
        )
    }

    /// [`Storage::put_arrow_stream`] for several files, taken in the order given. On a local
    /// root, `writers` threads write them at once, each taking the next file when done with
    /// its last: encoding is CPU work and a file's tail waits on the disk, so one thread left
    /// a core idle through most of a full identity build's state. Object stores get them one
    /// after another. The first failure is returned; files not yet started are then skipped.
    pub async fn put_arrow_streams(
        &self,
        files: Vec<ArrowStream<'_>>,
        writers: usize,
    ) -> Result<()> {
        let Some(local) = &self.local else {
            for file in files {
                self.put_arrow_stream(&file.relative, file.schema, file.batches)
                    .await?;
            }
            return Ok(());
        };
        let queue = std::sync::Mutex::new(files.into_iter());
        let next = || {
            queue
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .next()
        };
        let writer = || -> Result<()> {
            while let Some(file) = next() {
                let path = local.dir.join(&file.relative);
                let written = write_arrow_file(local, &path, &file.schema, file.batches);
                if let Err(message) = written {
                    // Left unstarted: what is already failing need not be written on.
                    let mut unstarted = queue
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    unstarted.by_ref().for_each(drop);
                    return Err(self.failed(&file.relative, message));
                }
            }
            Ok(())
        };
        std::thread::scope(|scope| {
            let others: Vec<_> = (1..writers.max(1)).map(|_| scope.spawn(writer)).collect();
            let mut result = writer();
            for other in others {
                let theirs = other
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                result = result.and(theirs);
            }
            result
        })
    }

    async fn stream_arrow(
        &self,
        relative: &str,
        schema: &SchemaRef,
        batches: impl Iterator<Item = Result<RecordBatch>>,
        upload: &mut WriteMultipart,
    ) -> Result<()> {
        let ipc_failed =
            |e: datafusion::arrow::error::ArrowError| self.failed(relative, e.to_string());
        let mut writer = FileWriter::try_new(Vec::new(), schema).map_err(ipc_failed)?;
        for batch in batches {
            writer.write(&batch?).map_err(ipc_failed)?;
            upload
                .wait_for_capacity(UPLOADS_IN_FLIGHT)
                .await
                .map_err(|e| self.failed(relative, e.to_string()))?;
            // The upload copies the bytes into its own buffer; the encoding buffer is then
            // emptied and kept, so that each batch is encoded into pages already in memory.
            // A fresh buffer per batch had the kernel fault in and zero every byte of the
            // state once more (1.2 GB at a million customers).
            upload.write(writer.get_ref());
            writer.get_mut().clear();
        }
        writer.finish().map_err(ipc_failed)?;
        upload.write(writer.get_mut());
        Ok(())
    }

    /// Reads an Arrow IPC file written by [`Storage::put_arrow_stream`].
    pub async fn get_arrow(&self, relative: &str) -> Result<Vec<RecordBatch>> {
        let bytes = self.get(relative).await?;
        let reader = FileReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| self.failed(relative, e.to_string()))?;
        reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| self.failed(relative, e.to_string()))
    }

    fn failed(&self, relative: &str, message: String) -> C360Error {
        C360Error::StorageUrl {
            url: format!("{}{relative}", self.url),
            message,
        }
    }

    /// Reads a Parquet object written by [`Storage::put_parquet`].
    pub async fn get_parquet(&self, relative: &str) -> Result<Vec<RecordBatch>> {
        let bytes = self.get(relative).await?;
        let failed = |message: String| C360Error::StorageUrl {
            url: format!("{}{relative}", self.url),
            message,
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|builder| builder.build())
            .map_err(|e| failed(e.to_string()))?;
        reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| failed(e.to_string()))
    }

    /// Reads a Parquet object with its schema, which a file of zero rows still has.
    pub async fn get_parquet_with_schema(
        &self,
        relative: &str,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let bytes = self.get(relative).await?;
        let failed = |message: String| C360Error::StorageUrl {
            url: format!("{}{relative}", self.url),
            message,
        };
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| failed(e.to_string()))?;
        let schema = builder.schema().clone();
        let batches = builder
            .build()
            .map_err(|e| failed(e.to_string()))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| failed(e.to_string()))?;
        Ok((schema, batches))
    }

    /// Writes `bytes` at `relative`, whole or not at all, and durably: on a local root the
    /// file and the directory entries leading to it are fsync'd before this returns (a local
    /// put alone only reaches the page cache), as an object store's completed PUT is durable.
    /// So whatever a commit names has reached the disk before the commit does.
    pub async fn put(&self, relative: &str, bytes: Vec<u8>) -> Result<()> {
        let written = self.written_path(relative);
        self.store
            .put(&self.path(relative), PutPayload::from(bytes))
            .await
            .map_err(|e| C360Error::StorageUrl {
                url: format!("{}{relative}", self.url),
                message: e.to_string(),
            })?;
        self.make_durable(written).await
    }

    /// Writes `value` as one pretty-printed JSON object (a manifest), whole or not at all.
    pub async fn put_json<T: serde::Serialize>(&self, relative: &str, value: &T) -> Result<()> {
        let json = serde_json::to_vec_pretty(value)
            .map_err(|e| C360Error::Corrupt(format!("{}{relative}: {e}", self.url)))?;
        self.put(relative, json).await
    }

    /// Reads a JSON object written by [`Storage::put_json`], or `None` when there is none.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        relative: &str,
    ) -> Result<Option<T>> {
        let Some(bytes) = self.get_if_exists(relative).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| C360Error::Corrupt(format!("{}{relative} is unreadable: {e}", self.url)))
    }

    /// The object's bytes, or `None` when there is no such object.
    pub async fn get_if_exists(&self, relative: &str) -> Result<Option<bytes::Bytes>> {
        match self.store.get(&self.path(relative)).await {
            Ok(result) => result
                .bytes()
                .await
                .map(Some)
                .map_err(|e| C360Error::StorageUrl {
                    url: format!("{}{relative}", self.url),
                    message: e.to_string(),
                }),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(C360Error::StorageUrl {
                url: format!("{}{relative}", self.url),
                message: e.to_string(),
            }),
        }
    }

    pub async fn get(&self, relative: &str) -> Result<bytes::Bytes> {
        self.get_if_exists(relative)
            .await?
            .ok_or_else(|| C360Error::StorageUrl {
                url: format!("{}{relative}", self.url),
                message: "no such object".to_string(),
            })
    }

    /// Deletes every object under `prefix` (a folder of a superseded version).
    pub async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let failed = |e: object_store::Error| C360Error::StorageUrl {
            url: format!("{}{prefix}", self.url),
            message: e.to_string(),
        };
        let listed: Vec<_> = self
            .store
            .list(Some(&self.path(prefix)))
            .try_collect()
            .await
            .map_err(failed)?;
        for object in listed {
            self.store.delete(&object.location).await.map_err(failed)?;
        }
        Ok(())
    }

    /// Names of the direct children of `prefix` (versions of a state folder).
    pub async fn list_children(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .list(prefix)
            .await?
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    /// One level of listing under `prefix`: its objects and its sub-folders.
    async fn list(&self, prefix: &str) -> Result<object_store::ListResult> {
        self.store
            .list_with_delimiter(Some(&self.path(prefix)))
            .await
            .map_err(|e| C360Error::StorageUrl {
                url: format!("{}{prefix}", self.url),
                message: e.to_string(),
            })
    }

    /// Names of the objects directly under `prefix` (not in its sub-folders).
    pub async fn list_files(&self, prefix: &str) -> Result<Vec<String>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.path(prefix)))
            .await
            .map_err(|e| C360Error::StorageUrl {
                url: format!("{}{prefix}", self.url),
                message: e.to_string(),
            })?;
        Ok(listed
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .collect())
    }

    /// The object path of `relative` under the root.
    pub fn path(&self, relative: &str) -> Path {
        relative
            .split('/')
            .filter(|part| !part.is_empty())
            .fold(self.root.clone(), |path, part| path.join(part))
    }
}

/// One Arrow IPC file for [`Storage::put_arrow_streams`]: where it goes under the root, its
/// schema, and its batches, built as they are taken.
pub struct ArrowStream<'a> {
    pub relative: String,
    pub schema: SchemaRef,
    pub batches: Box<dyn Iterator<Item = Result<RecordBatch>> + Send + 'a>,
}

/// [`Storage::put_arrow_stream`] on a local root: encoded straight into the file, written
/// aside and renamed, large files past the page cache (see `direct.rs`). Going through the
/// object store's multipart upload copied every byte twice more, into an encoding buffer and
/// then into fresh 16 MiB chunks whose pages the kernel had to zero: at a million customers,
/// 1.2 GB of identity state took longer to write than the tables built beside it.
fn write_arrow_file(
    local: &LocalRoot,
    path: &FsPath,
    schema: &SchemaRef,
    batches: impl Iterator<Item = Result<RecordBatch>>,
) -> std::result::Result<(), String> {
    // The whole name and a suffix, so that no two objects share a file aside.
    let mut aside = path.as_os_str().to_owned();
    aside.push(".partial");
    let aside = std::path::PathBuf::from(aside);
    let written = (|| -> std::result::Result<(), String> {
        let durable = local.before_writing(path.to_path_buf());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let file = std::fs::File::create(&aside).map_err(|e| e.to_string())?;
        let mut writer = FileWriter::try_new(direct::DirectWriter::new(file), schema)
            .map_err(|e| e.to_string())?;
        for batch in batches {
            writer
                .write(&batch.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        writer.finish().map_err(|e| e.to_string())?;
        let file = writer.into_inner().map_err(|e| e.to_string())?;
        // Durable before it takes its name, so that the name never points at a torn file.
        file.finish()
            .and_then(|file| file.sync_all())
            .map_err(|e| e.to_string())?;
        std::fs::rename(&aside, path).map_err(|e| e.to_string())?;
        local.sync_directories(&durable).map_err(|e| e.to_string())
    })();
    if written.is_err() {
        // The failure to report is the write's; a file left aside is named by nothing.
        let _ = std::fs::remove_file(&aside);
    }
    written
}

/// See [`Storage::put_paced`]: chunks of 1 MiB, each handed to writeback at once
/// (`sync_file_range`), the next one not before the rate allows.
fn write_paced(
    local: &LocalRoot,
    path: &FsPath,
    bytes: &[u8],
    bytes_per_sec: u64,
) -> std::io::Result<()> {
    use std::io::Write;
    const CHUNK: usize = 1 << 20;
    let durable = local.before_writing(path.to_path_buf());
    let mut file = std::fs::File::create(path)?;
    let started = std::time::Instant::now();
    let mut offset = 0usize;
    for chunk in bytes.chunks(CHUNK) {
        file.write_all(chunk)?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: the descriptor is open for the life of `file`; the range is what was
            // just written. The call only starts writeback; a failure is seen by the fsync.
            unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    offset as libc::off64_t,
                    chunk.len() as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        offset += chunk.len();
        let due = std::time::Duration::from_secs_f64(offset as f64 / bytes_per_sec.max(1) as f64);
        if let Some(ahead) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
    file.sync_all()?;
    local
        .sync_directories(&durable)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// A file about to be written under a local root, and the directories whose entries must be
/// fsync'd for it to survive a power cut: its own directory (which gains its name) and, for
/// each directory on the way not yet known durable, the one above it. Renames and creates only
/// reach the page cache until then, and a commit that names a file its directory lost names
/// nothing.
struct WrittenPath {
    file: PathBuf,
    /// From the file's directory up to the first one known durable, or the root.
    directories: Vec<PathBuf>,
}

/// A local root's directory, and the directories under it whose own entries are known to be
/// on disk. Whether a directory exists says nothing of that: another write may have just
/// created it and not yet fsync'd its parent, and a write that stopped there would return
/// durable with its path hanging on an entry a power cut can lose. Nothing c360 does removes
/// a directory, so a directory once known durable stays so.
#[derive(Debug, Clone)]
struct LocalRoot {
    dir: PathBuf,
    durable: Arc<std::sync::Mutex<std::collections::HashSet<PathBuf>>>,
}

/// Directories remembered as durable before the set is emptied and learnt again (each then
/// costs one more fsync of its parent): it grows by a folder per version of a refreshed item.
const DURABLE_DIRECTORIES_KEPT: usize = 4096;

impl LocalRoot {
    fn new(dir: PathBuf) -> LocalRoot {
        LocalRoot {
            dir,
            durable: Arc::default(),
        }
    }

    fn known_durable(&self, dir: &FsPath) -> bool {
        self.durable
            .lock()
            .map(|durable| durable.contains(dir))
            .unwrap_or(false)
    }

    fn before_writing(&self, file: PathBuf) -> WrittenPath {
        let mut directories = Vec::new();
        let mut next = file.parent();
        while let Some(dir) = next {
            directories.push(dir.to_path_buf());
            if dir == self.dir || !dir.starts_with(&self.dir) || self.known_durable(dir) {
                break;
            }
            next = dir.parent();
        }
        WrittenPath { file, directories }
    }

    /// Fsyncs the written path's directories, then remembers those whose entries that made
    /// durable: all but the last, which was durable already (or is the root).
    fn sync_directories(&self, written: &WrittenPath) -> Result<()> {
        for dir in &written.directories {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| C360Error::io(dir, e))?;
        }
        let below_last = written.directories.len().saturating_sub(1);
        if below_last > 0
            && let Ok(mut durable) = self.durable.lock()
        {
            if durable.len() + below_last > DURABLE_DIRECTORIES_KEPT {
                durable.clear();
            }
            durable.extend(written.directories[..below_last].iter().cloned());
        }
        Ok(())
    }
}

/// Takes the exclusive lock of a local root, or says which root is busy.
fn lock_root(dir: &FsPath) -> Result<std::fs::File> {
    let lock_dir = dir.join("_c360");
    std::fs::create_dir_all(&lock_dir).map_err(|source| C360Error::DataDirNotWritable {
        path: lock_dir.clone(),
        source,
    })?;
    let lock_path = lock_dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| C360Error::DataDirNotWritable {
            path: lock_path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(C360Error::StorageBusy {
            path: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(C360Error::DataDirNotWritable {
            path: lock_path,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn creates_a_missing_local_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("nested/root");
        let storage = Storage::open(dir.to_str().unwrap(), &BTreeMap::new())
            .await
            .unwrap();
        assert!(dir.is_dir());
        assert_eq!(storage.url().scheme(), "file");
        // The probe leaves nothing behind but the lock.
        let left: Vec<_> = dir
            .join("_c360")
            .read_dir()
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("lock")]);
    }

    /// A write that creates directories on its way syncs the entry of each in the directory
    /// above, up to the first that existed: the file's own directory alone would leave a new
    /// version folder (and so everything in it) to a power cut.
    #[tokio::test]
    async fn writes_sync_every_directory_they_create() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = Storage::open(tmp.path().to_str().unwrap(), &BTreeMap::new())
            .await
            .unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let written = storage.written_path("identity/g/v1/part.arrow").unwrap();
        assert_eq!(written.file, root.join("identity/g/v1/part.arrow"));
        assert_eq!(
            written.directories,
            [
                root.join("identity/g/v1"),
                root.join("identity/g"),
                root.join("identity"),
                root.clone(),
            ]
        );
        storage
            .put("identity/g/v1/part.arrow", b"x".to_vec())
            .await
            .unwrap();
        // Once synced, the next file's own directory is all there is to sync.
        let next = storage.written_path("identity/g/v1/log.arrow").unwrap();
        assert_eq!(next.directories, [root.join("identity/g/v1")]);
        // A directory another writer created but has not synced yet is not taken as durable:
        // this write syncs its entry too.
        std::fs::create_dir_all(root.join("identity/g/v2")).unwrap();
        let racing = storage.written_path("identity/g/v2/part.arrow").unwrap();
        assert_eq!(
            racing.directories,
            [root.join("identity/g/v2"), root.join("identity/g")]
        );
        // The IPC writer, which creates its directories itself, finds them the same way.
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::empty());
        storage
            .put_arrow_stream("identity/h/v2/part.arrow", schema, std::iter::empty())
            .await
            .unwrap();
        assert!(root.join("identity/h/v2/part.arrow").is_file());
    }

    /// A paced write lands whole and durable, and takes as long as its rate says: a
    /// background rewrite cannot flood the disk that group commits fsync on.
    #[tokio::test]
    async fn paced_writes_land_whole_at_their_rate() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = Storage::open(tmp.path().to_str().unwrap(), &BTreeMap::new())
            .await
            .unwrap();
        let bytes: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        let started = std::time::Instant::now();
        storage
            .put_paced("t/part-1.parquet", bytes.clone(), 6 << 20)
            .await
            .unwrap_err();
        std::fs::create_dir_all(tmp.path().join("t")).unwrap();
        storage
            .put_paced("t/part-1.parquet", bytes.clone(), 6 << 20)
            .await
            .unwrap();
        assert!(started.elapsed() >= std::time::Duration::from_millis(450));
        assert_eq!(
            std::fs::read(tmp.path().join("t/part-1.parquet")).unwrap(),
            bytes
        );
    }

    /// An Arrow stream reads back as written, on a local root and an object store alike; one
    /// that fails midway leaves no object, and nothing aside, behind.
    #[tokio::test]
    async fn arrow_streams_land_whole_or_not_at_all() {
        use datafusion::arrow::array::{ArrayRef, UInt32Array};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::UInt32, false)]));
        let batch = |from: u32| {
            let column: ArrayRef = Arc::new(UInt32Array::from_iter_values(from..from + 1000));
            RecordBatch::try_new(Arc::clone(&schema), vec![column]).unwrap()
        };
        let tmp = tempfile::tempdir().unwrap();
        let roots = [tmp.path().to_str().unwrap(), "memory:///c360"];
        for root in roots {
            let storage = Storage::open(root, &BTreeMap::new()).await.unwrap();
            let whole = [batch(0), batch(1000)].into_iter().map(Ok);
            storage
                .put_arrow_stream("s/v1/part.arrow", Arc::clone(&schema), whole)
                .await
                .unwrap();
            let back = storage.get_arrow("s/v1/part.arrow").await.unwrap();
            let rows: Vec<u32> = back
                .iter()
                .flat_map(|b| {
                    b.column(0)
                        .as_any()
                        .downcast_ref::<UInt32Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                })
                .collect();
            assert_eq!(rows, (0..2000).collect::<Vec<u32>>(), "{root}");

            let broken = [
                Ok(batch(0)),
                Err(C360Error::Identity("the third batch failed".into())),
            ];
            let err = storage
                .put_arrow_stream("s/v2/part.arrow", Arc::clone(&schema), broken.into_iter())
                .await
                .unwrap_err();
            assert!(err.to_string().contains("the third batch failed"), "{err}");
            assert!(
                storage.get_arrow("s/v2/part.arrow").await.is_err(),
                "{root}"
            );
        }
        let left: Vec<_> = tmp
            .path()
            .join("s/v2")
            .read_dir()
            .map(|entries| entries.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{left:?}");
    }

    /// Several streams written by two writers each read back as written, on a local root and
    /// an object store alike. A failing stream fails the call and leaves no file, and the
    /// streams after it are not written; the one a writer had under way finishes.
    #[tokio::test]
    async fn arrow_streams_are_written_by_several_writers_and_the_first_failure_is_told() {
        use datafusion::arrow::array::{ArrayRef, UInt32Array};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::UInt32, false)]));
        let batch = |from: u32| {
            let column: ArrayRef = Arc::new(UInt32Array::from_iter_values(from..from + 100));
            RecordBatch::try_new(Arc::clone(&schema), vec![column]).unwrap()
        };
        let rows_of = |batches: &[RecordBatch]| -> Vec<u32> {
            batches
                .iter()
                .flat_map(|b| {
                    let column = b.column(0).as_any().downcast_ref::<UInt32Array>();
                    column.unwrap().values().to_vec()
                })
                .collect()
        };
        let stream = |relative: &str, first: u32, batches: u32| ArrowStream {
            relative: relative.to_string(),
            schema: Arc::clone(&schema),
            batches: Box::new((0..batches).map(move |b| Ok(batch(first + 100 * b)))),
        };
        let tmp = tempfile::tempdir().unwrap();
        for root in [tmp.path().to_str().unwrap(), "memory:///c360"] {
            let storage = Storage::open(root, &BTreeMap::new()).await.unwrap();
            let files: Vec<ArrowStream> = (0..5u32)
                .map(|i| stream(&format!("m/v1/part-{i}.arrow"), i * 10_000, i + 1))
                .collect();
            storage.put_arrow_streams(files, 2).await.unwrap();
            for i in 0..5u32 {
                let back = storage
                    .get_arrow(&format!("m/v1/part-{i}.arrow"))
                    .await
                    .unwrap();
                let expected: Vec<u32> = (i * 10_000..i * 10_000 + 100 * (i + 1)).collect();
                assert_eq!(rows_of(&back), expected, "{root} part {i}");
            }

            // One writer, so that what is written after the failure is known: nothing.
            let broken = ArrowStream {
                relative: "m/v2/broken.arrow".into(),
                schema: Arc::clone(&schema),
                batches: Box::new(
                    [
                        Ok(batch(0)),
                        Err(C360Error::Identity("the second batch failed".into())),
                    ]
                    .into_iter(),
                ),
            };
            let files = vec![
                stream("m/v2/before.arrow", 0, 1),
                broken,
                stream("m/v2/after.arrow", 0, 1),
            ];
            let err = storage.put_arrow_streams(files, 1).await.unwrap_err();
            assert!(err.to_string().contains("the second batch failed"), "{err}");
            assert!(
                storage.get_arrow("m/v2/before.arrow").await.is_ok(),
                "{root}"
            );
            assert!(
                storage.get_arrow("m/v2/broken.arrow").await.is_err(),
                "{root}"
            );
            assert!(
                storage.get_arrow("m/v2/after.arrow").await.is_err(),
                "{root}"
            );
        }
    }

    #[tokio::test]
    async fn a_path_below_a_file_is_refused_with_its_name() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let bad = file.join("root");
        let err = Storage::open(bad.to_str().unwrap(), &BTreeMap::new())
            .await
            .unwrap_err();
        assert!(matches!(err, C360Error::DataDirNotWritable { .. }));
        assert!(err.to_string().contains("plain-file"), "{err}");
    }

    #[tokio::test]
    async fn a_local_root_serves_one_process_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_str().unwrap();
        let first = Storage::open(root, &BTreeMap::new()).await.unwrap();
        let err = Storage::open(root, &BTreeMap::new()).await.unwrap_err();
        assert!(matches!(err, C360Error::StorageBusy { .. }), "{err}");
        drop(first);
        Storage::open(root, &BTreeMap::new()).await.unwrap();
    }

    #[tokio::test]
    async fn memory_urls_work_for_tests_and_ephemeral_runs() {
        let storage = Storage::open("memory:///c360", &BTreeMap::new())
            .await
            .unwrap();
        assert_eq!(storage.path("a/b").to_string(), "c360/a/b");
    }

    #[tokio::test]
    async fn unknown_schemes_are_refused() {
        let err = Storage::open("ftp://example/x", &BTreeMap::new())
            .await
            .unwrap_err();
        assert!(matches!(err, C360Error::StorageUrl { .. }), "{err}");
    }
}

/// One Parquet file's bytes.
fn encode_parquet(
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> std::result::Result<Vec<u8>, String> {
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, schema, None).map_err(|e| e.to_string())?;
    for batch in batches {
        writer.write(batch).map_err(|e| e.to_string())?;
    }
    writer.close().map_err(|e| e.to_string())?;
    Ok(buffer)
}
