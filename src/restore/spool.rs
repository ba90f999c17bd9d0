//! The wal-fetch spool: segments fetched ahead of replay.
//!
//! `restore_command` runs one `wal-fetch` per file, so prefetching happens in
//! a detached worker process that shares nothing with it but a directory:
//!
//! - `.requested` holds the newest segment name PostgreSQL asked for;
//! - `.lock` is held (flock) by the one running worker;
//! - `<name>.fetching` marks a segment being fetched, `<name>` a complete
//!   one (written to a temporary name and renamed, so never seen half-made);
//! - `.stop` asks the worker to quit; the spool is removed after it has;
//! - `.served` gets a line per file `wal-fetch` served (name, where from,
//!   microseconds): at the end of recovery `--clean-spool` sums it up in
//!   PostgreSQL's log, the time recovery spent in `restore_command`.
//!
//! Only complete segments are spooled: a segment held as deltas may still
//! grow in the archive, so it is always fetched fresh.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::local_file::{Durability, write_atomically};
use crate::lsn::{SegmentName, WalFileName};
use crate::storage::Repository;
use crate::wal::fetch::{FetchedWal, fetch_wal_file};

/// How far ahead the worker fetches.
#[derive(Clone, Copy, Debug)]
pub struct PrefetchSettings {
    /// Segments fetched ahead of the one asked for (and at once).
    pub depth: u64,
    /// Most bytes the spool may hold (at least one segment is always allowed).
    pub max_bytes: u64,
}

/// How long a worker with nothing to do waits for a new request before it exits.
const IDLE_EXIT: Duration = Duration::from_secs(2);

/// A spool directory.
#[derive(Clone, Debug)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// The spool in `dir` (created on first use).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn marker(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.fetching"))
    }

    /// Records that PostgreSQL asked for `name` and starts a worker unless
    /// one runs: this program again, with the same arguments and
    /// `--prefetch-worker`, in its own process group, logging to
    /// `prefetch.log` in the spool. Prefetching is an optimisation: failures
    /// are logged, never returned.
    pub fn start_worker(&self, name: &str) {
        let started = (|| -> std::io::Result<()> {
            self.create()?;
            self.request(name)?;
            if self.worker_running() {
                return Ok(());
            }
            let log = std::fs::File::options()
                .create(true)
                .append(true)
                .open(self.dir.join("prefetch.log"))?;
            use std::os::unix::process::CommandExt;
            std::process::Command::new(std::env::current_exe()?)
                .args(std::env::args_os().skip(1))
                .arg("--prefetch-worker")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .process_group(0)
                .spawn()?;
            Ok(())
        })();
        if let Err(e) = started {
            warn!(spool = %self.dir.display(), error = %e, "could not start prefetching");
        }
    }

    /// Appends what one `wal-fetch` did to the spool's record (best effort:
    /// the record only informs). `from` is one word: `spool`, `repository`
    /// or `missing`.
    pub fn record_served(&self, name: &str, from: &str, took: Duration) {
        use std::io::Write;
        if self.create().is_err() {
            return;
        }
        if let Ok(mut f) = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.path(".served"))
        {
            let _ = writeln!(f, "{name} {from} {}", took.as_micros());
        }
    }

    /// The record of what `wal-fetch` served, summed up: one line for
    /// PostgreSQL's log, or `None` if nothing was recorded.
    pub fn served_summary(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.path(".served")).ok()?;
        let mut counts: BTreeMap<String, (u64, u128)> = BTreeMap::new();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(_), Some(from), Some(us)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Ok(us) = us.parse::<u128>() else { continue };
            let e = counts.entry(from.to_string()).or_default();
            e.0 += 1;
            e.1 += us;
        }
        if counts.is_empty() {
            return None;
        }
        let files: u64 = counts.values().map(|c| c.0).sum();
        let total_us: u128 = counts.values().map(|c| c.1).sum();
        let parts: Vec<String> = counts
            .iter()
            .map(|(from, (n, us))| {
                let what = match from.as_str() {
                    "spool" => "from the prefetch spool",
                    "repository" => "from the repository",
                    "missing" => "not in the archive",
                    other => other,
                };
                format!("{n} {what} in {:.3} s", *us as f64 / 1e6)
            })
            .collect();
        Some(format!(
            "recovery ran restore_command {files} times for {:.3} s in all ({})",
            total_us as f64 / 1e6,
            parts.join(", ")
        ))
    }

    /// Puts a complete segment into the spool (written under a temporary
    /// name and renamed). Direct I/O: on two cores, copying each segment
    /// into the page cache took CPU from the replay it runs beside. The
    /// kernel is then asked to read it back into the page cache in the
    /// background (the disk does the copy), so PostgreSQL reads it from
    /// memory, as it reads the segments already in `pg_wal`
    /// ([`crate::local_file::place_direct`]).
    ///
    /// # Errors
    /// I/O errors.
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> std::io::Result<()> {
        let (dest, tmp) = (self.path(name), self.dir.join(format!("{name}.part")));
        tokio::task::spawn_blocking(move || crate::local_file::place_direct(&dest, &tmp, &bytes))
            .await
            .expect("spool writes do not panic")
    }

    /// Whether the spool is being shut down (recovery has ended).
    pub fn is_stopping(&self) -> bool {
        self.path(".stop").exists()
    }

    /// Creates the directory (mode 0700).
    ///
    /// # Errors
    /// I/O errors.
    pub fn create(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => Err(e),
            _ => Ok(()),
        }
    }

    /// Records that PostgreSQL asked for `name`: the worker fetches after it.
    ///
    /// # Errors
    /// I/O errors.
    pub fn request(&self, name: &str) -> std::io::Result<()> {
        write_atomically(
            &self.path(".requested"),
            name.as_bytes(),
            Durability::Replaceable,
        )
    }

    fn requested(&self) -> Option<String> {
        std::fs::read_to_string(self.path(".requested")).ok()
    }

    fn lock_file(&self) -> std::io::Result<std::fs::File> {
        std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path(".lock"))
    }

    /// Whether a worker holds the lock.
    pub fn worker_running(&self) -> bool {
        let Ok(f) = self.lock_file() else {
            return false;
        };
        match f.try_lock() {
            Ok(()) => {
                let _ = f.unlock();
                false
            }
            Err(_) => true,
        }
    }

    /// Moves `name` from the spool to `dest` if it is there. While a live
    /// worker is fetching it, waits up to `wait` for it to land.
    ///
    /// # Errors
    /// I/O errors other than the file being absent.
    pub fn take(&self, name: &str, dest: &Path, wait: Duration) -> std::io::Result<bool> {
        let deadline = Instant::now() + wait;
        let src = self.path(name);
        loop {
            match std::fs::rename(&src, dest) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) if e.kind() == ErrorKind::CrossesDevices => {
                    write_atomically(dest, &std::fs::read(&src)?, Durability::Replaceable)?;
                    std::fs::remove_file(&src)?;
                    return Ok(true);
                }
                Err(e) => return Err(e),
            }
            if !self.marker(name).exists() || Instant::now() > deadline || !self.worker_running() {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the worker and removes the spool (at the end of recovery).
    ///
    /// # Errors
    /// I/O errors, or a worker that does not stop within `wait`.
    pub fn clean(&self, wait: Duration) -> std::io::Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        std::fs::write(self.path(".stop"), b"")?;
        let deadline = Instant::now() + wait;
        let lock = self.lock_file()?;
        while lock.try_lock().is_err() {
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "the prefetch worker of {} did not stop within {wait:?}",
                    self.dir.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::remove_dir_all(&self.dir)
    }

    /// The complete segments in the spool and their sizes.
    fn held(&self, segment_size_bytes: u64) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if SegmentName::parse(&name, segment_size_bytes).is_ok()
                && let Ok(m) = e.metadata()
            {
                out.insert(name, m.len());
            }
        }
        out
    }

    /// Runs the prefetch worker until it has been idle for a while, or the
    /// spool is stopped. Returns the number of segments it spooled; returns
    /// at once if another worker holds the lock.
    ///
    /// # Errors
    /// I/O errors on the spool itself; fetch errors are logged and retried
    /// by a later request.
    pub async fn run_worker(
        &self,
        repo: &Repository,
        segment_size_bytes: u64,
        settings: PrefetchSettings,
    ) -> std::io::Result<u64> {
        let mut lock = self.lock_file()?;
        if lock.try_lock().is_err() {
            return Ok(0);
        }
        let mut tasks: JoinSet<(String, Result<Option<FetchedWal>, crate::storage::Error>)> =
            JoinSet::new();
        let mut in_flight: BTreeSet<String> = BTreeSet::new();
        // A segment not complete in the archive: nothing past it is fetched
        // until PostgreSQL asks for something new.
        let mut frontier: Option<(String, SegmentName)> = None;
        let mut idle_since: Option<Instant> = None;
        let mut spooled = 0;
        loop {
            if self.is_stopping() {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                for name in &in_flight {
                    let _ = std::fs::remove_file(self.marker(name));
                }
                break;
            }
            let requested = self.requested();
            let wanted = match requested
                .as_deref()
                .and_then(|r| SegmentName::parse(r.trim(), segment_size_bytes).ok())
            {
                Some(req) => {
                    if frontier
                        .as_ref()
                        .is_some_and(|(r, _)| Some(r) != requested.as_ref())
                    {
                        frontier = None;
                    }
                    let held = self.held(segment_size_bytes);
                    // Segments before the one asked for are behind replay.
                    for name in held.keys() {
                        if let Ok(s) = SegmentName::parse(name, segment_size_bytes)
                            && s.number < req.number
                        {
                            let _ = std::fs::remove_file(self.path(name));
                        }
                    }
                    let mut bytes: u64 = held.values().sum();
                    let mut wanted = Vec::new();
                    for number in req.number + 1..=req.number + settings.depth {
                        let seg = SegmentName {
                            timeline: req.timeline,
                            number,
                        };
                        if frontier.as_ref().is_some_and(|(_, f)| number >= f.number) {
                            break;
                        }
                        let name = seg.to_file_name(segment_size_bytes);
                        if held.contains_key(&name) || in_flight.contains(&name) {
                            continue;
                        }
                        let in_use = bytes + in_flight.len() as u64 * segment_size_bytes;
                        if in_use > 0 && in_use + segment_size_bytes > settings.max_bytes {
                            break;
                        }
                        bytes += segment_size_bytes;
                        wanted.push((name, seg));
                    }
                    wanted
                }
                None => Vec::new(),
            };
            for (name, seg) in wanted {
                if in_flight.len() as u64 >= settings.depth {
                    break;
                }
                std::fs::write(self.marker(&name), b"")?;
                in_flight.insert(name.clone());
                let repo = repo.clone();
                tasks.spawn(async move {
                    let r =
                        fetch_wal_file(&repo, WalFileName::Segment(seg), segment_size_bytes).await;
                    (name, r)
                });
            }
            if tasks.is_empty() {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() > IDLE_EXIT {
                    // Let go, then look once more: a request made while we
                    // held the lock must not be missed.
                    let _ = lock.unlock();
                    if self.requested() != requested || self.is_stopping() {
                        lock = self.lock_file()?;
                        if lock.try_lock().is_ok() {
                            idle_since = None;
                            continue;
                        }
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            idle_since = None;
            let done = tokio::select! {
                d = tasks.join_next() => d,
                () = tokio::time::sleep(Duration::from_millis(20)) => None,
            };
            let Some(done) = done else { continue };
            let (name, result) = done.expect("fetch tasks do not panic");
            in_flight.remove(&name);
            let seg = SegmentName::parse(&name, segment_size_bytes).expect("spooled name");
            match result {
                Ok(Some(FetchedWal::Complete(bytes))) => {
                    self.put(&name, bytes).await?;
                    spooled += 1;
                    debug!(segment = name, "prefetched");
                }
                Ok(_) => {
                    info!(
                        segment = name,
                        "prefetch stops here: the segment is not complete in the archive"
                    );
                    if frontier.as_ref().is_none_or(|(_, f)| seg.number < f.number) {
                        frontier = requested.clone().map(|r| (r, seg));
                    }
                }
                Err(e) => {
                    warn!(segment = name, error = %crate::error::chain(&e), "prefetch failed; wal-fetch will fetch it itself");
                    if frontier.as_ref().is_none_or(|(_, f)| seg.number < f.number) {
                        frontier = requested.clone().map(|r| (r, seg));
                    }
                }
            }
            let _ = std::fs::remove_file(self.marker(&name));
        }
        Ok(spooled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_files_are_summed_up() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("spool"));
        assert_eq!(spool.served_summary(), None);
        spool.record_served(
            "000000010000000000000003",
            "repository",
            Duration::from_millis(40),
        );
        spool.record_served(
            "000000010000000000000004",
            "spool",
            Duration::from_millis(2),
        );
        spool.record_served(
            "000000010000000000000005",
            "spool",
            Duration::from_millis(3),
        );
        spool.record_served(
            "000000010000000000000006",
            "missing",
            Duration::from_millis(5),
        );
        assert_eq!(
            spool.served_summary().unwrap(),
            "recovery ran restore_command 4 times for 0.050 s in all (1 not in the archive in 0.005 s, \
             1 from the repository in 0.040 s, 2 from the prefetch spool in 0.005 s)"
        );
    }

    #[test]
    fn take_moves_a_spooled_file_and_misses_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("spool"));
        spool.create().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        let name = "000000010000000000000003";
        assert!(!spool.take(name, &dest, Duration::from_secs(1)).unwrap());
        std::fs::write(spool.dir().join(name), b"wal").unwrap();
        assert!(spool.take(name, &dest, Duration::from_secs(1)).unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), b"wal");
        assert!(!spool.dir().join(name).exists());
        // A marker without a live worker is not waited for.
        std::fs::write(spool.dir().join(format!("{name}.fetching")), b"").unwrap();
        let t = Instant::now();
        assert!(!spool.take(name, &dest, Duration::from_secs(5)).unwrap());
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn clean_removes_the_spool_once_no_worker_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path().join("spool"));
        spool.create().unwrap();
        spool.request("000000010000000000000003").unwrap();
        let held = spool.lock_file().unwrap();
        held.try_lock().unwrap();
        assert!(spool.worker_running());
        assert!(spool.clean(Duration::from_millis(100)).is_err());
        drop(held);
        spool.clean(Duration::from_secs(1)).unwrap();
        assert!(!spool.dir().exists());
        // Cleaning twice is fine.
        spool.clean(Duration::from_secs(1)).unwrap();
    }
}
