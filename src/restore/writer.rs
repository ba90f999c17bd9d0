//! Writing restored files from several threads.
//!
//! The tar stream is read on one thread, in order. The reader copies the
//! contents of each file, in 1 MiB chunks, into page-aligned buffers and
//! hands them to a small pool of writer threads that write them at their
//! offsets (`pwrite`), so a large relation file is written by several
//! threads at once.
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
//! without waiting). The final `fsync` of every file (in
//! [`super::unpack::sync_tree`]) is still what makes the restore durable.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Bytes the reader hands to a writer at a time: large writes, few
/// system calls, and a 1 GiB relation file spread over every writer.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Chunks waiting for each writer. With [`CHUNK_BYTES`], this bounds the
/// memory between the reader and a writer to this many MiB.
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

/// Alignment of direct I/O: buffer addresses, offsets and lengths are
/// multiples of it (the page size; disks' logical blocks are 512 or 4096).
const DIRECT_ALIGN: usize = 4096;

/// Buffers kept for reuse: the queue, one per writer, one for the reader.
const POOL_SPARE: usize = 2;

/// One aligned block; a buffer is a vector of them, so its start is aligned.
#[repr(C, align(4096))]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Block([u8; DIRECT_ALIGN]);

/// A chunk's buffer: [`CHUNK_BYTES`], page-aligned.
pub struct ChunkBuf {
    blocks: Vec<Block>,
    len: usize,
}

impl ChunkBuf {
    fn new() -> Self {
        ChunkBuf {
            blocks: vec![Block([0; DIRECT_ALIGN]); CHUNK_BYTES / DIRECT_ALIGN],
            len: 0,
        }
    }

    /// The first `len` bytes, to be filled; they become the chunk.
    pub fn fill(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= CHUNK_BYTES, "a chunk holds at most CHUNK_BYTES");
        self.len = len;
        &mut bytemuck::cast_slice_mut(&mut self.blocks)[..len]
    }

    fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.blocks)[..self.len]
    }
}

/// A file being restored, shared by the reader and its writer; closed when
/// the last chunk is written.
pub struct OutFile {
    /// The writer that writes every chunk of this file: one file is never
    /// written by two threads at once, which on ext4 would make them queue
    /// (spinning) on the file's lock.
    writer: usize,
    file: File,
    /// The same file opened for direct I/O, when it is large and the file
    /// system takes it.
    direct: Option<File>,
    path: PathBuf,
}

struct Job {
    file: Arc<OutFile>,
    offset: u64,
    data: ChunkBuf,
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

    /// Creates `path` (it must not exist) with `mode`, for `size` bytes.
    ///
    /// # Errors
    /// The creation's error, naming the file.
    pub fn create(&self, path: &Path, mode: u32, size: u64) -> std::io::Result<Arc<OutFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("create {}: {e}", path.display()))
            })?;
        let direct = (size >= DIRECT_MIN_BYTES && self.shared.direct_ok.load(Ordering::Relaxed))
            .then(|| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(direct_flag())
                    .open(path)
                    .ok()
            })
            .flatten();
        let n = self.created.get();
        self.created.set(n + 1);
        Ok(Arc::new(OutFile {
            writer: n % self.queues.len(),
            file,
            direct,
            path: path.to_path_buf(),
        }))
    }

    /// A buffer for the next chunk (reused once written).
    pub fn buffer(&self) -> ChunkBuf {
        self.shared
            .pool
            .lock()
            .expect("not poisoned")
            .pop()
            .unwrap_or_else(ChunkBuf::new)
    }

    /// Queues `data` to be written at `offset` of `file` (a multiple of
    /// [`CHUNK_BYTES`]); waits while the queue is full.
    ///
    /// # Errors
    /// The first error any writer met (the restore stops there).
    pub fn write(&self, file: &Arc<OutFile>, offset: u64, data: ChunkBuf) -> std::io::Result<()> {
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
            && let Err(e) = write_job(&job, shared)
        {
            let mut slot = shared.failure.lock().expect("not poisoned");
            if slot.is_none() {
                *slot = Some(std::io::Error::new(
                    e.kind(),
                    format!("write {}: {e}", job.file.path.display()),
                ));
            }
            shared.failed.store(true, Ordering::Release);
        }
        let mut pool = shared.pool.lock().expect("not poisoned");
        if pool.len() < shared.pool_max {
            pool.push(job.data);
        }
    }
}

fn write_job(job: &Job, shared: &Shared) -> std::io::Result<()> {
    let data = job.data.bytes();
    let mut done = 0;
    if let Some(direct) = &job.file.direct
        && shared.direct_ok.load(Ordering::Relaxed)
    {
        let whole = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        match direct.write_all_at(&data[..whole], job.offset) {
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
        let at = job.offset + done as u64;
        job.file.file.write_all_at(rest, at)?;
        if rest.len() >= WRITEBACK_MIN_BYTES {
            start_writeback(&job.file.file, at, rest.len() as u64);
        }
    }
    Ok(())
}

/// Writes `data` as the new file `path` (which must not exist), with direct
/// I/O where the file system takes it: the bytes go from an aligned buffer
/// to the disk without a copy into the page cache. A tail that is not a
/// whole number of blocks, and a file system that refuses direct I/O, go
/// through the page cache. Not synced.
///
/// # Errors
/// I/O errors; the file may then be left partly written.
pub fn write_new_file_direct(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(path)?;
    let direct = std::fs::File::options()
        .write(true)
        .custom_flags(direct_flag())
        .open(path)
        .ok();
    let mut done = 0;
    if let Some(direct) = direct {
        let mut buf = ChunkBuf::new();
        let whole = data.len() / DIRECT_ALIGN * DIRECT_ALIGN;
        while done < whole {
            let n = (whole - done).min(CHUNK_BYTES);
            buf.fill(n).copy_from_slice(&data[done..done + n]);
            match direct.write_all_at(buf.bytes(), done as u64) {
                Ok(()) => done += n,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    file.write_all_at(&data[done..], done as u64)
}

/// Places `data` at `dest` for a reader that comes soon (PostgreSQL asking
/// for a WAL segment): written with direct I/O under `tmp` (mode 0600),
/// renamed into place, then handed to the kernel's readahead
/// (`POSIX_FADV_WILLNEED`), which reads it back into the page cache by DMA.
/// On this kind of machine the copy into the page cache is the slow part
/// of a buffered write (at times 16 MiB took over 100 ms of kernel CPU);
/// the disk's own copy costs no CPU. Not synced.
///
/// # Errors
/// I/O errors; `tmp` is removed on failure.
pub fn place_direct(dest: &Path, tmp: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(tmp);
    let placed = (|| {
        write_new_file_direct(tmp, data)?;
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(tmp, dest)
    })();
    if placed.is_err() {
        let _ = std::fs::remove_file(tmp);
        return placed;
    }
    if let Ok(f) = File::open(dest) {
        // Advisory: a file it does not bring in is read from disk.
        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::WillNeed);
    }
    Ok(())
}

/// `O_DIRECT`.
fn direct_flag() -> i32 {
    i32::try_from(rustix::fs::OFlags::DIRECT.bits()).expect("O_DIRECT fits an int")
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

    #[test]
    fn whole_files_are_written_direct_with_any_tail() {
        let dir = tempfile::tempdir().unwrap();
        // A WAL segment's size, and sizes with a tail of part of a block.
        for len in [CHUNK_BYTES * 3, CHUNK_BYTES + 4096 * 3 + 100, 700, 0] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            write_new_file_direct(&path, &data).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data, "{len} bytes");
            // Never over a file that is there.
            let err = write_new_file_direct(&path, b"other").unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
            assert_eq!(std::fs::read(&path).unwrap(), data);
        }
    }

    #[test]
    fn placed_files_replace_the_destination_and_leave_no_temporary() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (dest, tmp) = (dir.path().join("RECOVERYXLOG"), dir.path().join(".tmp"));
        let segment: Vec<u8> = (0..CHUNK_BYTES * 16).map(|i| (i % 253) as u8).collect();
        // A leftover temporary and an earlier file at the destination.
        std::fs::write(&tmp, b"leftover").unwrap();
        std::fs::write(&dest, b"the previous segment").unwrap();
        place_direct(&dest, &tmp, &segment).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), segment);
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!tmp.exists());
        // A destination that cannot be made: the error, and no temporary.
        let nowhere = dir.path().join("missing").join("RECOVERYXLOG");
        assert!(place_direct(&nowhere, &tmp, &segment).is_err());
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&dest).unwrap(), segment);
    }

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
        // Created new, never over an existing file.
        let w = FileWriter::new(1, true);
        assert!(w.create(&dir.path().join("f-true-0"), 0o600, 0).is_err());
    }

    #[test]
    fn a_failed_write_stops_the_restore() {
        // /dev/full takes the open and refuses every write (ENOSPC).
        let w = FileWriter::new(2, false);
        let full = Arc::new(OutFile {
            writer: 0,
            file: std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
            direct: None,
            path: PathBuf::from("/dev/full"),
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
