//! A file writer that sends large files to the disk past the page cache (`O_DIRECT`).
//!
//! Why: a full identity build writes over a gigabyte of state. Through the page cache, each
//! byte was copied into a fresh cache page that the kernel had to find and, on the virtual
//! machines c360 runs on, the host had to back: perf put that copy at a tenth of the build's
//! CPU, on the thread the build waited for, and the dirty pages then cost the flusher threads
//! as much again. Written direct, the disk reads the bytes out of one reused buffer (1.6 GB/s
//! here, against 0.3–1.2 GB/s buffered), and the writing thread's core is free meanwhile.
//!
//! Small files never fill the buffer and are written the usual way: a direct write is a
//! synchronous trip to the disk, dearer than a page-cache copy for a few kilobytes. Where the
//! file system refuses direct writes (tmpfs, some network file systems) the writer falls back
//! to the page cache without failing.

use std::fs::File;
use std::io::{self, Write};

/// Bytes gathered per direct write: large enough that the disk streams, small enough to stay
/// under the allocator's direct-mapping threshold.
const CHUNK: usize = 8 << 20;
/// Buffer address, length and file offset of a direct write must be multiples of the
/// device's logical block size; a page covers every device in use.
const ALIGN: usize = 4096;

/// Writes through a buffer of [`CHUNK`] bytes; every full buffer goes to the disk direct.
/// Call [`DirectWriter::finish`] to write the rest: dropping it unfinished loses the tail.
pub struct DirectWriter {
    file: File,
    /// `CHUNK + ALIGN` bytes, of which `start..start + CHUNK` is the aligned buffer.
    raw: Vec<u8>,
    start: usize,
    len: usize,
    direct: bool,
    /// Set once direct writes failed or were refused: the rest goes through the page cache.
    refused: bool,
}

impl DirectWriter {
    pub fn new(file: File) -> Self {
        let raw = vec![0u8; CHUNK + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        DirectWriter {
            file,
            raw,
            start,
            len: 0,
            direct: false,
            refused: false,
        }
    }

    /// Writes what is buffered, through the page cache (its length is not aligned), and
    /// returns the file.
    pub fn finish(mut self) -> io::Result<File> {
        if self.len > 0 {
            if self.direct {
                set_direct(&self.file, false)?;
                self.direct = false;
            }
            let (start, len) = (self.start, self.len);
            self.file.write_all(&self.raw[start..start + len])?;
            self.len = 0;
        }
        Ok(self.file)
    }

    /// Writes the full buffer, direct unless the file system will not.
    fn write_chunk(&mut self) -> io::Result<()> {
        let (start, len) = (self.start, self.len);
        if !self.direct && !self.refused {
            self.direct = set_direct(&self.file, true).is_ok();
            self.refused = !self.direct;
        }
        if self.direct {
            match self.file.write(&self.raw[start..start + len]) {
                Ok(written) if written == len => {
                    self.len = 0;
                    return Ok(());
                }
                // A short direct write leaves the offset unaligned: the rest, and everything
                // after, goes through the page cache.
                Ok(written) => {
                    self.raw.copy_within(start + written..start + len, start);
                    self.len -= written;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
            set_direct(&self.file, false)?;
            self.direct = false;
            self.refused = true;
        }
        let (start, len) = (self.start, self.len);
        self.file.write_all(&self.raw[start..start + len])?;
        self.len = 0;
        Ok(())
    }
}

impl Write for DirectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let taken = data.len().min(CHUNK - self.len);
        let at = self.start + self.len;
        self.raw[at..at + taken].copy_from_slice(&data[..taken]);
        self.len += taken;
        if self.len == CHUNK {
            self.write_chunk()?;
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

    /// A file past the buffer's size goes direct wherever the file system takes `O_DIRECT`.
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
        let mut writer = DirectWriter::new(File::create(dir.path().join("big")).expect("create"));
        writer.write_all(&vec![1u8; CHUNK + 10]).expect("write");
        assert_eq!(writer.direct, probe.is_ok(), "direct where O_DIRECT opens");
        assert_eq!(writer.refused, probe.is_err());
        writer.finish().expect("finish");
        let size = std::fs::metadata(dir.path().join("big"))
            .expect("stat")
            .len();
        assert_eq!(size, (CHUNK + 10) as u64);
    }
}
