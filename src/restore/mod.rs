//! `walvault restore` and `restore_command`: plan, fetch and unpack a base
//! backup, write the recovery configuration that replays the archive to the
//! target, and serve WAL to PostgreSQL while it recovers.
//!
//! - [`plan`]: choosing the backup and checking the WAL path, before
//!   anything is written;
//! - [`prepare`]: every other check before writing (an empty directory,
//!   the tablespaces' directories, where the repository settings go);
//! - [`tablespaces`]: where each tablespace goes;
//! - [`unpack`]: parallel fetch, in-order untar, sync;
//! - [`writer`]: the threads that write the restored files;
//! - [`recovery`] (pure): `postgresql.auto.conf` and the signal file; this
//!   is where the recovery configuration is written;
//! - [`start`]: `--start`, PostgreSQL supervised to the target;
//! - [`serve`]: `wal-fetch`, the `restore_command` side;
//! - [`spool`]: the prefetch worker behind `wal-fetch --spool`;
//! - [`drill`]: a restore test, through the same prepare, execute and
//!   start, recorded in the repository.
//!
//! Invariants: nothing is written before the plan holds (empty directory,
//! keys, a backup before the target, WAL without a gap on the timeline);
//! files are synced before success is reported.

pub mod drill;
pub mod plan;
pub mod prepare;
pub mod reach;
pub mod recovery;
pub mod serve;
pub mod spool;
pub mod start;
pub mod tablespaces;
pub mod unpack;
pub mod writer;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use plan::{RecoveryTarget, RestorePlan, TargetAction, TimelineTarget, plan_restore};
pub use prepare::{Prepared, RestoreOptions, prepare};

use crate::config::ByteSize;
use crate::config::settings_file::{
    PlannedStep, PlannedWal, RepositoryConfigFile, write_repository_config,
};
use tokio_util::sync::CancellationToken;

use crate::progress::Progress;
use crate::storage::Repository;

/// The prefetch spool's name; it lives in `pg_wal` ([`spool_dir`]).
pub const SPOOL_DIR: &str = "walvault-spool";

/// The prefetch spool of the data directory `pgdata`: in `pg_wal`, which
/// `pg_verifybackup` and base backups leave out and PostgreSQL only scans
/// for WAL file names, and on the same file system as the segments
/// recovery renames out of it.
pub fn spool_dir(pgdata: &Path) -> PathBuf {
    pgdata.join("pg_wal").join(SPOOL_DIR)
}
/// The repository settings file `restore_command` reads, by default beside
/// the data directory (never inside it: it holds the key and credentials,
/// and everything in the data directory reaches later base backups,
/// standby clones and `pg_read_file`).
pub fn default_settings_file(pgdata: &Path) -> PathBuf {
    let name = pgdata
        .file_name()
        .map_or_else(|| "pgdata".into(), |n| n.to_string_lossy().into_owned());
    pgdata.with_file_name(format!("{name}.walvault.json"))
}

/// Why a restore failed after its plan held.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A signal (SIGINT, SIGTERM) stopped it; what it wrote is removed.
    #[error(
        "the restore was interrupted by a signal: everything it wrote is removed; run it again"
    )]
    Interrupted,
    /// Fetching or unpacking failed.
    #[error("restore the backup")]
    Unpack(#[from] unpack::UnpackError),
    /// A file could not be written.
    #[error("{what} failed")]
    Io {
        /// The step.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::Io { what, source }
}

/// How the restored cluster recovers: how `restore_command` reaches the
/// repository and fetches ahead, and what PostgreSQL does at the target.
#[derive(Clone, Debug)]
pub struct RecoveryOptions {
    /// The repository settings restore_command uses.
    pub settings: RepositoryConfigFile,
    /// The walvault binary restore_command runs.
    pub walvault: PathBuf,
    /// Stop just before the target.
    pub exclusive: bool,
    /// What PostgreSQL does at the target.
    pub action: TargetAction,
    /// Standby mode.
    pub standby: bool,
    /// Segments fetched ahead.
    pub prefetch: u64,
    /// The spool's limit.
    pub spool_max: ByteSize,
    /// How long restore_command retries a failing store.
    pub fetch_timeout: Duration,
    /// Leave walvault's recovery settings out of `postgresql.auto.conf`
    /// (the caller prints them for a platform that renders the server's
    /// configuration itself); the source's are still disabled there.
    pub leave_settings_out: bool,
}

/// How long the steps of a restore took.
#[derive(Clone, Copy, Debug)]
pub struct Restored {
    /// Fetching, opening and unpacking.
    pub unpacked: Duration,
    /// Syncing every file.
    pub synced: Duration,
}

/// Unpacks the planned backup, writes the recovery configuration and syncs
/// everything. A restore that fails (a damaged, moved or missing part, say)
/// or that `cancel` stops (a signal) leaves nothing behind: the data
/// directory and tablespace directories, empty or absent before, are
/// emptied or removed again.
///
/// # Errors
/// Fetch, integrity or file system errors; [`RestoreError::Interrupted`].
///
/// # Cancel safety
/// Use `cancel`, not dropping: the writer threads are joined first.
pub async fn execute(
    repo: &Repository,
    prepared: &Prepared,
    recovery: &RecoveryOptions,
    cancel: &CancellationToken,
) -> Result<Restored, RestoreError> {
    let mut dirs = vec![prepared.pgdata.clone()];
    dirs.extend(prepared.tablespace_dirs.iter().map(|(_, d)| d.clone()));
    let existed: Vec<bool> = dirs.iter().map(|d| d.exists()).collect();
    let result = match restore_into(repo, prepared, recovery, cancel).await {
        Err(RestoreError::Unpack(unpack::UnpackError::Interrupted)) => {
            Err(RestoreError::Interrupted)
        }
        Ok(_) if cancel.is_cancelled() => Err(RestoreError::Interrupted),
        other => other,
    };
    if result.is_err() {
        for (dir, existed) in dirs.iter().zip(existed) {
            if std::fs::remove_dir_all(dir).is_ok() && existed {
                let _ = std::fs::create_dir(dir);
            }
        }
    }
    result
}

async fn restore_into(
    repo: &Repository,
    req: &Prepared,
    recovery: &RecoveryOptions,
    cancel: &CancellationToken,
) -> Result<Restored, RestoreError> {
    let plan = &req.plan;
    let b = &plan.backup;
    std::fs::create_dir_all(&req.pgdata).map_err(io(format!("create {}", req.pgdata.display())))?;
    set_mode(&req.pgdata, 0o700).map_err(io(format!("chmod {}", req.pgdata.display())))?;
    let started = Instant::now();
    let progress = Progress::new(&format!("restore {}", b.id), b.plain_bytes);
    unpack::unpack_backup(
        repo,
        b,
        &req.pgdata,
        &req.tablespace_dirs,
        &progress,
        cancel,
    )
    .await?;
    progress.finish();
    tablespaces::point_tablespaces(&req.pgdata, &req.tablespace_dirs)
        .map_err(io("point the tablespaces at their directories"))?;
    write_recovery_config(req, recovery)?;
    let mut dirs = vec![req.pgdata.clone()];
    dirs.extend(req.tablespace_dirs.iter().map(|(_, d)| d.clone()));
    let unpacked = started.elapsed();
    // The spool is filled meanwhile, and holds copies: not synced.
    let spool = spool_dir(&req.pgdata);
    let skip = spool.clone();
    let sync = tokio::task::spawn_blocking(move || {
        dirs.iter()
            .try_for_each(|d| unpack::sync_tree(d, Some(&skip)))
    });
    // While the files sync, the first segments recovery asks for go into
    // the spool, so that it does not start by waiting on the repository.
    if recovery.prefetch > 0
        && let Ok(system_repo) = repo.for_system(&b.system_identifier)
    {
        prefill_spool(&system_repo, plan, &spool, recovery.prefetch).await;
    }
    sync.await
        .expect("sync does not panic")
        .map_err(io("sync the restored files"))?;
    Ok(Restored {
        unpacked,
        synced: started.elapsed() - unpacked,
    })
}

/// Segments put in the spool before recovery starts, at most.
const PREFILL_SEGMENTS: u64 = 4;

/// Puts the first segments recovery will ask for (complete ones, on the
/// backup's timeline) into the spool. The spool is only a shortcut: what
/// cannot be fetched here, `wal-fetch` fetches when asked, so failures are
/// logged, not returned.
async fn prefill_spool(repo: &Repository, plan: &RestorePlan, dir: &Path, prefetch: u64) {
    let size = plan.backup.wal_segment_size;
    let Ok(first) = crate::lsn::SegmentName::parse(&plan.first_segment, size) else {
        return;
    };
    let spool = spool::Spool::new(dir);
    if let Err(e) = spool.create() {
        tracing::warn!(error = %e, "could not create the prefetch spool");
        return;
    }
    let count = prefetch.min(PREFILL_SEGMENTS);
    let fetches = (first.number..first.number + count).map(|number| {
        let seg = crate::lsn::SegmentName {
            timeline: first.timeline,
            number,
        };
        async move {
            let fetched = crate::wal::fetch::fetch_wal_file(
                repo,
                crate::lsn::WalFileName::Segment(seg),
                size,
            )
            .await;
            (seg.to_file_name(size), fetched)
        }
    });
    for (name, fetched) in futures::future::join_all(fetches).await {
        match fetched {
            Ok(Some(crate::wal::fetch::FetchedWal::Complete(bytes))) => {
                if let Err(e) = spool.put(&name, bytes).await {
                    tracing::warn!(segment = name, error = %e, "could not spool a segment");
                    return;
                }
            }
            // Not complete in the archive (or not there): wal-fetch asks
            // the repository when recovery gets there.
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(segment = name, error = %crate::error::chain(&e), "could not prefetch a segment");
                return;
            }
        }
    }
}

/// Writes the signal file, the repository settings for restore_command and
/// the recovery settings; drops the source's standby settings.
fn write_recovery_config(req: &Prepared, options: &RecoveryOptions) -> Result<(), RestoreError> {
    let dir = &req.pgdata;
    // A backup of a standby brings its signal file and replication settings.
    let _ = std::fs::remove_file(dir.join(recovery::STANDBY_SIGNAL));
    let _ = std::fs::remove_file(dir.join(recovery::RECOVERY_SIGNAL));
    std::fs::write(dir.join(recovery::signal_file(options.standby)), "")
        .map_err(io("write the signal file"))?;
    let settings_file = &req.settings_file;
    // What was planned goes with the settings: restore_command stops
    // recovery on a file missing inside it, instead of ending it early.
    let mut settings = options.settings.clone();
    settings.recovery = Some(PlannedWal {
        path: req
            .plan
            .path
            .iter()
            .map(|s| PlannedStep {
                timeline: s.timeline,
                begin: s.begin,
                end: s.end,
            })
            .collect(),
        end: req.plan.wal_end,
        system_identifier: Some(req.plan.backup.system_identifier.clone()),
    });
    write_repository_config(settings_file, &settings)
        .map_err(io(format!("create {}", settings_file.display())))?;
    let auto = dir.join("postgresql.auto.conf");
    let existing = std::fs::read_to_string(&auto).unwrap_or_default();
    let text = if options.leave_settings_out {
        recovery::disable_source_settings(&existing)
    } else {
        recovery::render_auto_conf(&existing, &recovery_settings(req, options))
    };
    std::fs::write(&auto, text).map_err(io("write postgresql.auto.conf"))
}

/// The recovery settings a restore writes into `postgresql.auto.conf` (or
/// leaves for the caller to print).
pub fn recovery_settings(req: &Prepared, options: &RecoveryOptions) -> Vec<recovery::Setting> {
    let spool = spool_dir(&req.pgdata);
    recovery::recovery_settings(&recovery::RecoverySettings {
        walvault: &options.walvault,
        settings_file: &req.settings_file,
        spool: Some(&spool),
        prefetch: options.prefetch,
        spool_max: options.spool_max,
        fetch_timeout: options.fetch_timeout,
        target: &req.target,
        exclusive: options.exclusive,
        action: options.action,
        timeline: req.timeline,
        standby: options.standby,
    })
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
