//! The checks a restore makes before it writes anything: the data directory
//! is empty (or absent), the plan holds (a backup before the target, the
//! keys, the WAL path without a gap), every tablespace has an empty
//! directory, and the repository settings `restore_command` reads stay
//! outside the data and tablespace directories (they hold the key and store
//! credentials).

use std::path::PathBuf;

use super::plan::{PlanError, RecoveryTarget, RestorePlan, TimelineTarget, plan_restore};
use super::tablespaces::{self, TablespaceError};
use crate::storage::{self, Repository};

/// What the user asked to restore, and where.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// The data directory to create (must be empty or absent).
    pub pgdata: PathBuf,
    /// This backup instead of the newest one before the target.
    pub backup: Option<String>,
    /// Only backups carrying this annotation (`backup --annotate`).
    pub annotation: Option<(String, String)>,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// Which timeline recovery follows.
    pub timeline: TimelineTarget,
    /// Tablespaces put elsewhere than where they were: OID and directory.
    pub tablespace_map: Vec<(String, PathBuf)>,
    /// Every tablespace not in the map goes into `tablespace-OID` under
    /// this directory, instead of where it was (a drill's scratch directory).
    pub tablespaces_under: Option<PathBuf>,
    /// Where the repository settings go (default beside the data directory).
    pub settings_file: Option<PathBuf>,
}

/// A restore that may go ahead: every path absolute (`restore_command`
/// runs in the data directory).
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The plan.
    pub plan: RestorePlan,
    /// The data directory.
    pub pgdata: PathBuf,
    /// Each tablespace and its (empty) directory.
    pub tablespace_dirs: Vec<(String, PathBuf)>,
    /// Where the repository settings are written.
    pub settings_file: PathBuf,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// Which timeline recovery follows.
    pub timeline: TimelineTarget,
}

impl Prepared {
    /// The plan in one line: the backup, the WAL path and the target.
    pub fn summary(&self) -> String {
        let (plan, b) = (&self.plan, &self.plan.backup);
        format!(
            "plan: backup {} ({} taken {} .. {}, {}, timeline {}), WAL on timeline {} from {} to {} (archive end {}), target {}",
            b.id,
            crate::progress::human_bytes(b.plain_bytes),
            crate::format::time::to_text(&b.start_time),
            crate::format::time::to_text(&b.stop_time),
            b.source.role,
            b.timeline,
            plan.path
                .iter()
                .map(|s| s.timeline.to_string())
                .collect::<Vec<_>>()
                .join(" -> "),
            plan.first_segment,
            plan.last_segment,
            plan.wal_end,
            self.target,
        )
    }
}

/// Why a restore is refused before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// A path cannot be made absolute.
    #[error("resolve {what}")]
    Resolve {
        /// The flag.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A directory or file choice that cannot be used (exit code 2).
    #[error(transparent)]
    Usage(#[from] crate::config::Error),
    /// A tablespace directory that cannot be used (exit code 2).
    #[error(transparent)]
    Tablespace(#[from] TablespaceError),
    /// Listing the backups failed.
    #[error("list backups")]
    ListBackups(#[source] storage::Error),
    /// The plan does not hold.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The backup asked for is sealed with a key the reader lacks.
    #[error(
        "backup {} is sealed with key {}, which the given keys lack: give a key file that holds it",
        .0.id,
        .0.key_id
    )]
    Locked(crate::storage::LockedBackup),
}

impl PrepareError {
    /// Whether the user must change what they asked for (exit code 2).
    pub fn is_usage(&self) -> bool {
        match self {
            PrepareError::Usage(_) | PrepareError::Tablespace(_) | PrepareError::Locked(_) => true,
            PrepareError::Plan(e) => e.is_usage(),
            PrepareError::Resolve { .. } | PrepareError::ListBackups(_) => false,
        }
    }
}

fn usage(what: &'static str, value: &std::path::Path, reason: &str) -> PrepareError {
    PrepareError::Usage(crate::config::Error::Invalid {
        what,
        value: value.display().to_string(),
        reason: reason.to_string(),
    })
}

/// Checks everything a restore of `repo` as `opts` asks can be checked
/// before writing, and plans it.
///
/// # Errors
/// [`PrepareError`]: nothing has been written.
pub async fn prepare(repo: &Repository, opts: &RestoreOptions) -> Result<Prepared, PrepareError> {
    let absolute = |what, path: &PathBuf| {
        std::path::absolute(path).map_err(|source| PrepareError::Resolve { what, source })
    };
    let pgdata = absolute("--pgdata", &opts.pgdata)?;
    let settings_file = match &opts.settings_file {
        Some(f) => Some(absolute("--settings-file", f)?),
        None => None,
    };
    if pgdata.exists() && !pgdata.is_dir() {
        return Err(usage(
            "--pgdata",
            &pgdata,
            "it is a file, not a directory; give a directory to create, or an empty one",
        ));
    }
    if !tablespaces::is_empty_dir(&pgdata) {
        return Err(usage(
            "--pgdata",
            &pgdata,
            "the directory is not empty; restore into an empty or new directory",
        ));
    }
    let listed = repo
        .list_backups_readable()
        .await
        .map_err(PrepareError::ListBackups)?;
    if let Some(locked) = opts
        .backup
        .as_ref()
        .and_then(|id| listed.locked.iter().find(|l| &l.id == id))
    {
        return Err(PrepareError::Locked(locked.clone()));
    }
    for locked in &listed.locked {
        tracing::warn!(backup = locked.id, key = %locked.key_id,
            "a backup is sealed with a key the key file lacks; it is left out of the choice");
    }
    let mut backups = listed.backups;
    if let Some((key, value)) = &opts.annotation {
        backups.retain(|b| b.annotations.get(key) == Some(value));
        if backups.is_empty() {
            return Err(PrepareError::Usage(crate::config::Error::Invalid {
                what: "--backup-annotation",
                value: format!("{key}={value}"),
                reason: "no backup in the repository carries it (see walvault list)".into(),
            }));
        }
    }
    let plan = plan_restore(
        repo,
        backups,
        opts.backup.as_deref(),
        &opts.target,
        opts.timeline,
    )
    .await?;
    let system_repo = repo
        .for_system(&plan.backup.system_identifier)
        .map_err(PrepareError::ListBackups)?;
    super::reach::check_reachable(&system_repo, &plan, &opts.target).await?;
    let mut map = opts.tablespace_map.clone();
    if let Some(root) = &opts.tablespaces_under {
        for oid in plan.backup.tablespaces.iter().filter_map(|t| t.oid) {
            if !map.iter().any(|(o, _)| *o == oid.to_string()) {
                map.push((oid.to_string(), root.join(format!("tablespace-{oid}"))));
            }
        }
    }
    let tablespace_dirs = tablespaces::choose_dirs(&plan.backup, &map)?;
    let settings_file = settings_file.unwrap_or_else(|| super::default_settings_file(&pgdata));
    if settings_file.starts_with(&pgdata)
        || tablespace_dirs
            .iter()
            .any(|(_, d)| settings_file.starts_with(d))
    {
        return Err(usage(
            "--settings-file",
            &settings_file,
            "it holds the key and store credentials and must not be inside the data or a tablespace directory",
        ));
    }
    Ok(Prepared {
        plan,
        pgdata,
        tablespace_dirs,
        settings_file,
        target: opts.target.clone(),
        timeline: opts.timeline,
    })
}
