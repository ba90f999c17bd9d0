//! `wal-fetch`: one WAL segment or history file for PostgreSQL's
//! `restore_command`, from the prefetch spool when it is there, else from
//! the repository (a segment held only as deltas is zero-padded), written
//! whole to `%p`. Exit code 1 ("not in the archive") is the caller's to
//! give when this returns [`Served::NotInArchive`].
//!
//! [`wal_fetch`] is the whole command: cleaning the spool at the end of
//! recovery, the prefetch worker, and serving one file (spool first, then
//! the repository, opened only when needed and within the same deadline).

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::RepositorySource;
use crate::config::settings_file::PlannedWal;
use crate::format::manifest::RepositoryManifest;
use crate::local_file::{Durability, write_atomically};
use crate::lsn::Lsn;
use crate::lsn::WalFileName;
use crate::storage::{self, Repository};
use crate::wal::fetch::{FetchedWal, fetch_wal_file};

use super::spool::{PrefetchSettings, Spool};

/// How long a wal-fetch waits for a segment the prefetch worker is fetching.
pub const SPOOL_WAIT: Duration = Duration::from_secs(60);
/// How long a wal-fetch keeps retrying a store that fails or stalls before
/// it gives up, and recovery stops with the reason in the server log
/// (`--fetch-timeout`).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(300);
/// The exit status of a wal-fetch that failed (a store that stayed down, a
/// damaged object, a wrong key): above 125, so PostgreSQL stops recovery
/// instead of taking the file as missing, ending recovery early and
/// promoting. Exit status 1 means only "not in the archive".
pub const EXIT_FAILED: u8 = 200;

/// What `wal-fetch` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// Written from the repository.
    Fetched,
    /// The archive has no such file.
    NotInArchive,
}

/// What `wal-fetch` was asked to do.
#[derive(Clone, Debug)]
pub enum FetchAction {
    /// Serve one file.
    Serve {
        /// The file name PostgreSQL asks for (`%f`).
        name: String,
        /// Where to write it (`%p`).
        dest: std::path::PathBuf,
    },
    /// Stop the prefetch worker and remove the spool (recovery_end_command).
    CleanSpool,
    /// Run as the prefetch worker.
    PrefetchWorker,
}

/// A `wal-fetch` run.
#[derive(Clone, Debug)]
pub struct FetchRequest {
    /// What to do.
    pub action: FetchAction,
    /// The spool directory, if prefetching.
    pub spool: Option<std::path::PathBuf>,
    /// Segments fetched ahead (0: none).
    pub prefetch: u64,
    /// Most bytes the spool may hold.
    pub spool_max_bytes: u64,
    /// How long a failing store is retried in all.
    pub fetch_timeout: Duration,
    /// Serve only what the archive holds whole (`--exact`, for `pg_rewind
    /// --restore-target-wal`): a segment held only in part is not in the
    /// archive, and neither a spool nor a restore's plan is used.
    pub exact: bool,
}

/// Runs `wal-fetch` as `req` asks, opening the repository of `source` only
/// when the file is not in the spool.
///
/// # Errors
/// [`ServeError`]; a file the archive lacks is [`Served::NotInArchive`].
pub async fn wal_fetch(
    req: &FetchRequest,
    source: &RepositorySource,
) -> Result<Served, ServeError> {
    let started = std::time::Instant::now();
    let spool = req
        .spool
        .as_ref()
        .filter(|_| !req.exact)
        .filter(|_| req.prefetch > 0 || matches!(req.action, FetchAction::CleanSpool))
        .map(Spool::new);
    let (name, dest) = match &req.action {
        FetchAction::CleanSpool => {
            let spool = spool.expect("--clean-spool requires --spool");
            if let Some(summary) = spool.served_summary() {
                // recovery_end_command's stderr goes to PostgreSQL's log.
                eprintln!("walvault wal-fetch: {summary}");
            }
            tokio::task::spawn_blocking(move || spool.clean(SPOOL_WAIT))
                .await
                .expect("cleaning does not panic")
                .map_err(|source| ServeError::Spool {
                    what: "clean the spool",
                    source,
                })?;
            return Ok(Served::Fetched);
        }
        FetchAction::PrefetchWorker => {
            let Some(spool) = spool else {
                return Ok(Served::Fetched);
            };
            let (repo, manifest) = source.open_existing().await?;
            let settings = PrefetchSettings {
                depth: req.prefetch,
                max_bytes: req.spool_max_bytes,
            };
            let n = spool
                .run_worker(&repo, manifest.wal_segment_size, settings)
                .await
                .map_err(|source| ServeError::Prefetch {
                    dir: spool.dir().display().to_string(),
                    source,
                })?;
            tracing::debug!(segments = n, "prefetch worker done");
            return Ok(Served::Fetched);
        }
        FetchAction::Serve { name, dest } => (name, dest),
    };
    if let Some(spool) = &spool
        && serve_from_spool(name, dest, spool).await
    {
        spool.record_served(name, "spool", started.elapsed());
        return Ok(Served::Fetched);
    }
    // Opening the repository reads walvault.json: it counts against the
    // same deadline as the fetch.
    let (repo, manifest) = tokio::time::timeout(req.fetch_timeout, source.open_existing())
        .await
        .map_err(|_| ServeError::OpenTimeout {
            after: req.fetch_timeout,
        })??;
    // No signal handler: PostgreSQL stops restore_command with SIGTERM and
    // expects it to die of that signal.
    let cancel = CancellationToken::new();
    let plan = source
        .planned_wal()
        .map_err(crate::config::resolve::OpenError::from)?
        .filter(|_| !req.exact);
    let served = serve_from_repository(
        &repo,
        &manifest,
        (name, dest),
        spool.as_ref(),
        plan.as_ref(),
        req.exact,
        req.fetch_timeout,
        &cancel,
    )
    .await?;
    if let Some(spool) = &spool {
        let from = match served {
            Served::NotInArchive => "missing",
            Served::Fetched => "repository",
        };
        spool.record_served(name, from, started.elapsed());
    }
    Ok(served)
}

/// Why a file could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The repository cannot be opened.
    #[error(transparent)]
    Open(#[from] crate::config::resolve::OpenError),
    /// The repository did not answer in time.
    #[error("the repository did not answer within --fetch-timeout ({after:?})")]
    OpenTimeout {
        /// The limit.
        after: Duration,
    },
    /// The spool could not be cleaned.
    #[error("{what}")]
    Spool {
        /// The step.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The prefetch worker failed.
    #[error("prefetch into {dir}")]
    Prefetch {
        /// The spool.
        dir: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a WAL segment or history file name.
    #[error(transparent)]
    FileName(#[from] crate::lsn::ParseWalFileError),
    /// A file the restore planned to replay is not in the archive now.
    #[error(
        "{name} is not in the archive, but the restore planned to replay the WAL to {end}, and this file with it: it was removed after the restore was planned. Recovery stops here instead of ending early; put the file back (from another copy) or restore again"
    )]
    MissingInPlan {
        /// The file.
        name: String,
        /// The planned end.
        end: Lsn,
    },
    /// A segment the restore planned to replay is held only in part now.
    #[error(
        "{name} is held only up to byte {known} in the archive, but the restore planned to replay it to byte {need} (the WAL to {end}): recovery stops here instead of ending early; put the segment back or restore again"
    )]
    ShortInPlan {
        /// The segment.
        name: String,
        /// The bytes held.
        known: u64,
        /// The bytes planned.
        need: u64,
        /// The planned end.
        end: Lsn,
    },
    /// The store failed or an object does not open.
    #[error("fetch {name}")]
    Storage {
        /// The file.
        name: String,
        /// The cause.
        #[source]
        source: storage::Error,
    },
    /// Writing the file failed.
    #[error("write {dest}")]
    Write {
        /// The destination.
        dest: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Whether the restore's plan replays `file`, and how many of its bytes
/// (0 for a history file): a segment recovery reads from its timeline (the
/// newest step of the path begun by then), starting before the planned end;
/// a history file of a timeline on the path after the first.
pub fn planned_bytes(plan: &PlannedWal, file: WalFileName, segment_size_bytes: u64) -> Option<u64> {
    match file {
        WalFileName::History(tli) => plan
            .path
            .iter()
            .skip(1)
            .any(|s| s.timeline == tli)
            .then_some(0),
        WalFileName::Segment(seg) => {
            let start = seg.start_lsn(segment_size_bytes);
            if start >= plan.end {
                return None;
            }
            let step = plan
                .path
                .iter()
                .rev()
                .find(|s| s.begin.segment_number(segment_size_bytes) <= seg.number)
                .or(plan.path.first())?;
            (step.timeline == seg.timeline).then(|| (plan.end.0 - start.0).min(segment_size_bytes))
        }
    }
}

/// Serves a segment from the prefetch spool, if it is there (or lands
/// there within [`SPOOL_WAIT`] while the worker fetches it). History files
/// are never spooled.
pub async fn serve_from_spool(name: &str, dest: &Path, spool: &Spool) -> bool {
    // Segments only: history files are small and asked for once.
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) || spool.is_stopping() {
        return false;
    }
    let (s, n, d) = (spool.clone(), name.to_string(), dest.to_path_buf());
    let hit = tokio::task::spawn_blocking(move || s.take(&n, &d, SPOOL_WAIT))
        .await
        .expect("take does not panic")
        .unwrap_or(false);
    if hit {
        spool.start_worker(name);
    }
    hit
}

/// Serves `name` into `dest` from the repository, and (with a spool) starts
/// prefetching what follows. A store that fails is retried by the one
/// retry policy, within `timeout` in all (default [`DEFAULT_FETCH_TIMEOUT`]).
///
/// # Errors
/// [`ServeError`]; a file the archive lacks is [`Served::NotInArchive`].
#[allow(clippy::too_many_arguments)]
pub async fn serve_from_repository(
    repo: &Repository,
    manifest: &RepositoryManifest,
    (name, dest): (&str, &Path),
    spool: Option<&Spool>,
    plan: Option<&PlannedWal>,
    whole_only: bool,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Served, ServeError> {
    let file = WalFileName::parse(name, manifest.wal_segment_size)?;
    let planned = plan.and_then(|p| planned_bytes(p, file, manifest.wal_segment_size));
    let fetch = storage::retry(name, cancel, || {
        fetch_wal_file(repo, file, manifest.wal_segment_size)
    });
    let fetched = tokio::time::timeout(timeout, fetch)
        .await
        .unwrap_or_else(|_| {
            Err(storage::Error::Timeout {
                key: name.to_string(),
                after: timeout,
            })
        })
        .map_err(|source| ServeError::Storage {
            name: name.to_string(),
            source,
        })?;
    let Some(fetched) = fetched else {
        if planned.is_some() {
            return Err(ServeError::MissingInPlan {
                name: name.to_string(),
                end: plan.expect("planned").end,
            });
        }
        return Ok(Served::NotInArchive);
    };
    if let (FetchedWal::Partial { known, .. }, Some(need)) = (&fetched, planned)
        && *known < need
    {
        return Err(ServeError::ShortInPlan {
            name: name.to_string(),
            known: *known,
            need,
            end: plan.expect("planned").end,
        });
    }
    let bytes = match fetched {
        FetchedWal::Complete(b) | FetchedWal::History(b) => b,
        // pg_rewind reads what it is given as the segment: never a padded one.
        FetchedWal::Partial { .. } if whole_only => return Ok(Served::NotInArchive),
        FetchedWal::Partial { bytes, .. } => bytes,
    };
    // Not synced: the file is a copy of the archive, and PostgreSQL syncs
    // what it keeps. Segments go the way spooled ones do (direct I/O, then
    // read back by the kernel); history files are small.
    let written = if matches!(file, WalFileName::Segment(_)) {
        let tmp = dest.with_file_name(format!(".{name}.walvault-direct"));
        crate::local_file::place_direct(dest, &tmp, &bytes)
    } else {
        write_atomically(dest, &bytes, Durability::Replaceable)
    };
    written.map_err(|source| ServeError::Write {
        dest: dest.display().to_string(),
        source,
    })?;
    if let Some(spool) = spool.filter(|_| matches!(file, WalFileName::Segment(_))) {
        spool.start_worker(name);
    }
    Ok(Served::Fetched)
}
