//! Writing restored files from several threads.
//!
//! The tar stream is read on one thread, in order. The reader copies the
//! contents of each file, in 1 MiB chunks, into page-aligned buffers and
//! hands them to a small pool of writer threads. Each file goes to one
//! writer, in turn, which creates it, writes its chunks at their offsets
//! (`pwrite`) and fsyncs it once its last byte is written: creating and
//! syncing a data directory's thousand-odd files happen on the writers,
//! beside the reader, not after it.
//!
//! Files of at least [`DIRECT_MIN_BYTES`] (relation files) are written with
//! direct I/O (`O_DIRECT`): the kernel sends the buffer to the disk without
//! copying it into the page cache, which on this kind of machine costs more
//! CPU than everything before it (fetching, opening, the tar walk), and
//! leaves no gigabytes of dirty pages for the final sync to wait on. A tail
//! that is not a whole number of 4 KiB blocks, small files, and any file
//! system that refuses direct I/O go through the page cache; for those,
//! chunks of [`WRITEBACK_MIN_BYTES`] or more start their own writeback at
//! once (`posix_fadvise(POSIX_FADV_DONTNEED)`, which on Linux starts it
//! without waiting). The final pass over the tree
//! ([`super::unpack::sync_tree`]), which fsyncs every file again (cheap for
//! one already synced) and every directory, is what the restore's
//! durability rests on.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::local_file::{ChunkBuf, DIRECT_ALIGN, direct_flag};

/// Chunks waiting for each writer. With chunks of
/// [`CHUNK_BYTES`](crate::local_file::CHUNK_BYTES), this bounds the memory
/// between the reader and a writer to this many MiB.
const QUEUE_CHUNKS: usize = 4;

/// Writer threads: at least four, so small files are copied on every core
/// while a large file's direct writes wait for the disk, and at most eight.
pub fn default_writer_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| (2 * n.get()).clamp(4, 8))
}

/// Buffered chunks smaller than this do not start writeback on their own:
/// many small files are cheaper to sync together at the end.
const WRITEBACK_MIN_BYTES: usize = 256 << 10;

/// Files this large are written with direct I/O: PostgreSQL's relation
/// files (1 GiB segments, in 8 KiB pages) are where the bytes are.
pub const DIRECT_MIN_BYTES: u64 = 1 << 20;

/// Buffers kept for reuse: the queue, one per writer, one for the reader.
const POOL_SPARE: usize = 2;

/// A file being restored, shared by the reader and its writer. Its writer
/// creates it (the first job on its queue), writes its chunks, and fsyncs
/// and closes it when the last byte is written, so creating and syncing
/// files happen on the writers, beside the reader's walk of the archive.
pub struct OutFile {
    /// The writer that writes every chunk of this file: one file is never
    /// written by two threads at once, which on ext4 would make them queue
    /// (spinning) on the file's lock.
    writer: usize,
    path: PathBuf,
    mode: u32,
    size: u64,
    /// Bytes not yet written.
    remaining: std::sync::atomic::AtomicU64,
    /// Set by the writer when it creates the file; taken (closed) once the
    /// file is synced.
    handles: Mutex<Option<Handles>>,
}

/// An open file being restored.
struct Handles {
    file: File,
    /// The same file opened for direct I/O, when it is large and the file
    /// system takes it.
    direct: Option<File>,
}

/// What a writer does next: create a file, or write a chunk of one.
struct Job {
    file: Arc<OutFile>,
    offset: u64,
    /// `None` creates the file.
    data: Option<ChunkBuf>,
}

/// What the writers share.
struct Shared {
    failure: Mutex<Option<std::io::Error>>,
    failed: AtomicBool,
    /// Direct I/O works here (cleared on the first refusal).
    direct_ok: AtomicBool,
    pool: Mutex<Vec<ChunkBuf>>,
    pool_max: usize,
}

/// The pool of writer threads, each with its own queue.
pub struct FileWriter {
    queues: Vec<SyncSender<Job>>,
    threads: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// Files created so far (they are spread over the writers in turn).
    created: std::cell::Cell<usize>,
}

impl FileWriter {
    /// Starts `threads` writers; `direct` allows direct I/O for large files.
    pub fn new(threads: usize, direct: bool) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            direct_ok: AtomicBool::new(direct),
            pool: Mutex::new(Vec::new()),
            pool_max: threads * (QUEUE_CHUNKS + 1) + POOL_SPARE,
        });
        let (queues, threads) = (0..threads)
            .map(|i| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE_CHUNKS);
                let shared = shared.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("restore-writer-{i}"))
                    .spawn(move || write_jobs(&rx, &shared))
                    .expect("a thread starts");
                (tx, thread)
            })
            .unzip();
        FileWriter {
            queues,
            threads,
            shared,
            created: std::cell::Cell::new(0),
        }
    }

    /// Queues the creation of `path` (it must not exist) with `mode`, for
    /// `size` bytes, on the next writer in turn.
    ///
    /// # Errors
    /// The first error any writer met (a failed creation names the file).
    pub fn create(&self, path: &Path, mode: u32, size: u64) -> std::io::Result<Arc<OutFile>> {
        let n = self.created.get();
        self.created.set(n + 1);
        let file = Arc::new(OutFile {
            writer: n % self.queues.len(),
            path: path.to_path_buf(),
            mode,
            size,
            remaining: std::sync::atomic::AtomicU64::new(size),
            handles: Mutex::new(None),
        });
        self.send(&file, 0, None)?;
        Ok(file)
    }

    /// A buffer for the next chunk (reused once written).
    pub fn buffer(&self) -> ChunkBuf {
        self.shared
            .pool
            .lock()
            .expect("not poisoned")
            .pop()
            .unwrap_or_default()
    }

    /// Queues `data` to be written at `offset` of `file` (a multiple of
    /// [`CHUNK_BYTES`](crate::local_file::CHUNK_BYTES)); waits while the
    /// queue is full.
    ///
    /// # Errors
    /// The first error any writer met (the restore stops there).
    pub fn write(&self, file: &Arc<OutFile>, offset: u64, data: ChunkBuf) -> std::io::Result<()> {
        self.send(file, offset, Some(data))
    }

    fn send(
        &self,
        file: &Arc<OutFile>,
        offset: u64,
        data: Option<ChunkBuf>,
    ) -> std::io::Result<()> {
        self.check()?;
        let job = Job {
            file: file.clone(),
            offset,
            data,
        };
        if self.queues[file.writer].send(job).is_err() {
            self.check()?;
            return Err(std::io::Error::other("the restore writers stopped"));
        }
        Ok(())
    }

    /// Waits for every queued write.
    ///
    /// # Errors
    /// The first error any writer met.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.queues.clear();
        for t in self.threads.drain(..) {
            t.join().expect("a writer does not panic");
        }
        self.check()
    }

    fn check(&self) -> std::io::Result<()> {
        if self.shared.failed.load(Ordering::Acquire)
            && let Some(e) = self.shared.failure.lock().expect("not poisoned").take()
        {
            return Err(e);
        }
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(std::io::Error::other("a restore writer failed"));
        }
        Ok(())
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        self.queues.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn write_jobs(rx: &Receiver<Job>, shared: &Shared) {
    while let Ok(job) = rx.recv() {
        // After a failure the queue is drained without writing.
        if !shared.failed.load(Ordering::Acquire)
            && let Err(e) = run_job(&job, shared)
        {
            let mut slot = shared.failure.lock().expect("not poisoned");
            if slot.is_none() {
                *slot = Some(e);
            }
            shared.failed.store(true, Ordering::Release);
        }
        if let Some(data) = job.data {
            let mut pool = shared.pool.lock().expect("not poisoned");
            if pool.len() < shared.pool_max {
                pool.push(data);
            }
        }
    }
}

/// Runs one job; the error names the file and what failed.
fn run_job(job: &Job, shared: &Shared) -> std::io::Result<()> {
    let file = &job.file;
    let context = |what: &str, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{what} {}: {e}", file.path.display()))
    };
    let mut handles = file.handles.lock().expect("not poisoned");
    let written = match &job.data {
        None => {
            *handles = Some(open(file, shared).map_err(|e| context("create", e))?);
            0
        }
        Some(data) => {
            let h = handles
                .as_ref()
                .expect("a file is created before its chunks");
            write_chunk(h, job.offset, data.bytes(), shared).map_err(|e| context("write", e))?;
            data.bytes().len() as u64
        }
    };
    let left = file.remaining.fetch_sub(written, Ordering::AcqRel) - written;
    if left == 0
        && let Some(h) = handles.take()
    {
        h.file.sync_all().map_err(|e| context("fsync", e))?;
    }
    Ok(())
}

fn open(file: &OutFile, shared: &Shared) -> std::io::Result<Handles> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(file.mode)
        .open(&file.path)?;
    let direct = (file.size >= DIRECT_MIN_BYTES && shared.direct_ok.load(Ordering::Relaxed))
        .then(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(direct_flag())
                .open(&file.path)
                .ok()
        })
        .flatten();
    Ok(Handles { file: f, direct })
}

fn write_chunk(h: &Handles, offset: u64, data: &[u8], shared: &Shared) -> std::io::Result<()> {
    let mut done = 0;
    if let Some(direct) = &h.direct
        && shared.direct_ok.load(Ordering::Relaxed)
    {
        let whole = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        match direct.write_all_at(&data[..whole], offset) {
            Ok(()) => done = whole,
            // A file system that takes O_DIRECT at open but not these
            // writes: everything goes through the page cache from now on.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                shared.direct_ok.store(false, Ordering::Relaxed);
            }
            Err(e) => return Err(e),
        }
    }
    let rest = &data[done..];
    if !rest.is_empty() {
        let at = offset + done as u64;
        h.file.write_all_at(rest, at)?;
        if rest.len() >= WRITEBACK_MIN_BYTES {
            start_writeback(&h.file, at, rest.len() as u64);
        }
    }
    Ok(())
}

/// Asks the kernel to start writing a range to disk, without waiting:
/// on Linux, `POSIX_FADV_DONTNEED` starts writeback of the range's dirty
/// pages and drops the ones already clean. Advisory: a failure here is
/// found by the final fsync.
fn start_writeback(file: &File, offset: u64, len: u64) {
    let _ = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_file::CHUNK_BYTES;

    fn write_file(w: &FileWriter, path: &Path, data: &[u8]) {
        let f = w.create(path, 0o600, data.len() as u64).unwrap();
        // Out of order, as several writers would.
        for (i, chunk) in data.chunks(CHUNK_BYTES).enumerate().rev() {
            let mut buf = w.buffer();
            buf.fill(chunk.len()).copy_from_slice(chunk);
            w.write(&f, (i * CHUNK_BYTES) as u64, buf).unwrap();
        }
    }

    #[test]
    fn chunks_land_at_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        for direct in [true, false] {
            let w = FileWriter::new(3, direct);
            let sizes = [
                0,
                1,
                4095,
                4096,
                8192 * 3,
                (1 << 20) + 17,
                5 * CHUNK_BYTES + 8192,
            ];
            let files: Vec<(PathBuf, Vec<u8>)> = sizes
                .iter()
                .map(|&n| {
                    let path = dir.path().join(format!("f-{direct}-{n}"));
                    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                    write_file(&w, &path, &data);
                    (path, data)
                })
                .collect();
            w.finish().unwrap();
            for (path, data) in files {
                assert_eq!(std::fs::read(&path).unwrap(), data, "{}", path.display());
            }
        }
        // Created new, never over an existing file: the error names it.
        let w = FileWriter::new(1, true);
        let existing = dir.path().join("f-true-0");
        w.create(&existing, 0o600, 0).unwrap();
        let err = w.finish().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert!(err.to_string().contains("f-true-0"), "{err}");
    }

    #[test]
    fn a_failed_write_stops_the_restore() {
        // /dev/full takes the open and refuses every write (ENOSPC).
        let w = FileWriter::new(2, false);
        let full = Arc::new(OutFile {
            writer: 0,
            path: PathBuf::from("/dev/full"),
            mode: 0o600,
            size: 1 << 20,
            remaining: std::sync::atomic::AtomicU64::new(1 << 20),
            handles: Mutex::new(Some(Handles {
                file: std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/full")
                    .unwrap(),
                direct: None,
            })),
        });
        let mut buf = w.buffer();
        buf.fill(10).copy_from_slice(b"0123456789");
        // The error comes back from a later write or from finish.
        let mut result = w.write(&full, 0, buf);
        for _ in 0..100 {
            if result.is_err() {
                break;
            }
            let mut buf = w.buffer();
            buf.fill(1);
            result = w.write(&full, 0, buf);
        }
        let err = match result {
            Err(e) => e,
            Ok(()) => w.finish().unwrap_err(),
        };
        assert!(err.to_string().contains("/dev/full"), "{err}");
    }
}
