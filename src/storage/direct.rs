//! A file writer that sends large files to the disk past the page cache (`O_DIRECT`), on a
//! thread of its own while the caller goes on filling the next buffer.
//!
//! Why direct: a full identity build writes over a gigabyte of state. Through the page cache,
//! each byte was copied into a fresh cache page that the kernel had to find and, on the
//! virtual machines c360 runs on, the host had to back: perf put that copy at a tenth of the
//! build's CPU, on the thread the build waited for, and the dirty pages then cost the flusher
//! threads as much again. Written direct, the disk reads the bytes out of reused buffers.
//!
//! Why a thread: a direct write is synchronous. Written in turn with the encoding, the 1.2 GB
//! of a million-customer state kept its thread waiting on the disk (525 MB/s here) for about
//! two of the seven seconds the state took; handed off, the disk writes one buffer while the
//! next is filled.
//!
//! Small files never fill a buffer and are written the usual way, with no thread: a direct
//! write is a trip to the disk, dearer than a page-cache copy for a few kilobytes. Where the
//! file system refuses direct writes (tmpfs, some network file systems) the writer falls back
//! to the page cache without failing.

use std::fs::File;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Bytes gathered per direct write: large enough that the disk streams, small enough to stay
/// under the allocator's direct-mapping threshold.
const CHUNK: usize = 8 << 20;
/// Buffer address, length and file offset of a direct write must be multiples of the
/// device's logical block size; a page covers every device in use.
const ALIGN: usize = 4096;
/// Buffers in all: one being filled while one is written.
const BUFFERS: usize = 2;

/// Writes through buffers of [`CHUNK`] bytes; every full buffer goes to the disk direct, on
/// the writer's disk thread. Call [`DirectWriter::finish`] to write the rest and learn whether
/// everything was written: dropping it unfinished loses the tail.
pub struct DirectWriter {
    filling: Buffer,
    /// Buffers allocated so far, up to [`BUFFERS`].
    buffers: usize,
    /// The file until the first full buffer, when the disk thread takes it.
    file: Option<Disk>,
    thread: Option<DiskThread>,
}

/// An aligned buffer: `raw[start..start + CHUNK]` is the part written.
struct Buffer {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buffer {
    fn new() -> Self {
        let raw = vec![0u8; CHUNK + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        Buffer { raw, start, len: 0 }
    }

    /// No buffer: after a failed hand-off, nothing more can be written.
    fn none() -> Self {
        Buffer {
            raw: Vec::new(),
            start: 0,
            len: 0,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
}

/// The disk thread: full buffers go to it, written ones come back.
struct DiskThread {
    full: SyncSender<Buffer>,
    written: Receiver<Buffer>,
    handle: JoinHandle<io::Result<Disk>>,
}

/// The file and how it is being written.
struct Disk {
    file: File,
    direct: bool,
    /// Set once direct writes failed or were refused: the rest goes through the page cache.
    refused: bool,
}

impl DirectWriter {
    pub fn new(file: File) -> Self {
        DirectWriter {
            filling: Buffer::new(),
            buffers: 1,
            file: Some(Disk::new(file)),
            thread: None,
        }
    }

    /// Waits for the disk thread to write what it was given, writes what is buffered through
    /// the page cache (its length is not aligned), and returns the file.
    pub fn finish(mut self) -> io::Result<File> {
        let mut disk = match self.thread.take() {
            Some(thread) => thread.join()?,
            None => self.file.take().ok_or_else(stopped)?,
        };
        if self.filling.len > 0 {
            if disk.direct {
                set_direct(&disk.file, false)?;
                disk.direct = false;
            }
            disk.file.write_all(self.filling.bytes())?;
            self.filling.len = 0;
        }
        Ok(disk.file)
    }

    /// Gives the full buffer to the disk thread (started the first time) and takes an empty
    /// one, waiting for the disk only when every buffer is in use.
    fn hand_off(&mut self) -> io::Result<()> {
        let fresh = (self.buffers < BUFFERS).then(|| {
            self.buffers += 1;
            Buffer::new()
        });
        let thread = match &mut self.thread {
            Some(thread) => thread,
            None => {
                let disk = self.file.take().ok_or_else(stopped)?;
                self.thread.insert(DiskThread::start(disk)?)
            }
        };
        let full = std::mem::replace(&mut self.filling, Buffer::none());
        let sent = thread.full.send(full).is_ok();
        let next = match fresh {
            Some(buffer) => sent.then_some(buffer),
            None if sent => thread.written.recv().ok(),
            None => None,
        };
        match next {
            Some(mut buffer) => {
                buffer.len = 0;
                self.filling = buffer;
                Ok(())
            }
            // The thread stopped, having failed to write: its error is the one to report.
            None => Err(match self.thread.take().map(DiskThread::join) {
                Some(Err(e)) => e,
                _ => stopped(),
            }),
        }
    }
}

/// The disk thread ended before it was asked to, or the file went with a failed hand-off.
fn stopped() -> io::Error {
    io::Error::other("direct file writer: the disk thread stopped")
}

impl DiskThread {
    fn start(mut disk: Disk) -> io::Result<DiskThread> {
        let (full, to_write) = sync_channel::<Buffer>(BUFFERS);
        let (done, written) = sync_channel::<Buffer>(BUFFERS);
        let handle = std::thread::Builder::new()
            .name("c360-disk-write".into())
            .spawn(move || {
                for buffer in to_write {
                    disk.write_chunk(buffer.bytes())?;
                    // The writer may have finished or been dropped: then the buffer is freed.
                    let _ = done.send(buffer);
                }
                Ok(disk)
            })?;
        Ok(DiskThread {
            full,
            written,
            handle,
        })
    }

    /// Lets the thread write what it was given and end; returns the file or the first error.
    fn join(self) -> io::Result<Disk> {
        let DiskThread { full, handle, .. } = self;
        drop(full);
        handle.join().unwrap_or_else(|_| {
            Err(io::Error::other(
                "direct file writer: the disk thread panicked",
            ))
        })
    }
}

impl Disk {
    fn new(file: File) -> Self {
        Disk {
            file,
            direct: false,
            refused: false,
        }
    }

    /// Writes a full buffer, direct unless the file system will not.
    fn write_chunk(&mut self, bytes: &[u8]) -> io::Result<()> {
        if !self.direct && !self.refused {
            self.direct = set_direct(&self.file, true).is_ok();
            self.refused = !self.direct;
        }
        let mut rest = bytes;
        if self.direct {
            match self.file.write(bytes) {
                Ok(written) if written == bytes.len() => return Ok(()),
                // A short direct write leaves the offset unaligned: the rest, and everything
                // after, goes through the page cache.
                Ok(written) => rest = &bytes[written..],
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
            set_direct(&self.file, false)?;
            self.direct = false;
            self.refused = true;
        }
        self.file.write_all(rest)
    }
}

impl Write for DirectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.filling.raw.is_empty() {
            return Err(stopped());
        }
        let buffer = &mut self.filling;
        let taken = data.len().min(CHUNK - buffer.len);
        let at = buffer.start + buffer.len;
        buffer.raw[at..at + taken].copy_from_slice(&data[..taken]);
        buffer.len += taken;
        if buffer.len == CHUNK {
            self.hand_off()?;
        }
        Ok(taken)
    }

    /// Writes nothing early: a partial buffer cannot go direct. [`DirectWriter::finish`] does.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // Safety: `fd` is open for the life of `file`; F_GETFL and F_SETFL touch only its flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let wanted = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // Safety: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, wanted) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_file: &File, on: bool) -> io::Result<()> {
    if on {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files of every size around the buffer's, written in writes of awkward sizes, read back
    /// byte for byte: the direct chunks, the buffered tail and the switch between them.
    #[test]
    fn files_read_back_whole_across_direct_chunks() {
        let dir = tempfile::tempdir().expect("temporary directory");
        for size in [
            0,
            1,
            ALIGN + 3,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK + 4097,
            6 * CHUNK + 1,
        ] {
            let expected: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
            let path = dir.path().join(format!("f{size}"));
            let mut writer = DirectWriter::new(File::create(&path).expect("create"));
            for piece in expected.chunks(1_000_003) {
                writer.write_all(piece).expect("write");
            }
            writer.finish().expect("finish").sync_all().expect("sync");
            let read = std::fs::read(&path).expect("read back");
            assert_eq!(read.len(), size, "size {size}");
            assert!(read == expected, "contents of size {size}");
        }
    }

    /// A full buffer goes direct wherever the file system takes `O_DIRECT`, and a file past
    /// the buffer's size has its every byte.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_file_is_written_direct_where_the_file_system_allows() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().expect("temporary directory");
        let probe = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.path().join("probe"));
        let mut disk = Disk::new(File::create(dir.path().join("chunk")).expect("create"));
        let mut buffer = Buffer::new();
        buffer.len = CHUNK;
        disk.write_chunk(buffer.bytes()).expect("write");
        assert_eq!(disk.direct, probe.is_ok(), "direct where O_DIRECT opens");
        assert_eq!(disk.refused, probe.is_err());

        let mut writer = DirectWriter::new(File::create(dir.path().join("big")).expect("create"));
        writer.write_all(&vec![1u8; CHUNK + 10]).expect("write");
        writer.finish().expect("finish");
        let size = std::fs::metadata(dir.path().join("big"))
            .expect("stat")
            .len();
        assert_eq!(size, (CHUNK + 10) as u64);
    }

    /// A write the disk thread fails is reported to the writer, by a later write or by
    /// `finish`, never lost: here the file is open only for reading.
    #[test]
    fn a_failed_disk_write_is_reported() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("read-only");
        std::fs::write(&path, b"").expect("create");
        let file = File::open(&path).expect("open for reading");
        let mut writer = DirectWriter::new(file);
        let written = writer
            .write_all(&vec![1u8; 4 * CHUNK])
            .and_then(|()| writer.finish().map(|_| ()));
        assert!(written.is_err(), "the failed write went unreported");
    }
}
