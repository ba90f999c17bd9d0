//! `walvault restore`: rebuild a cluster from the repository to a target.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::backup::list_backups;
use crate::progress::human_bytes;
use crate::restore::start::{StartOptions, StartOutcome};
use crate::restore::{RecoveryTarget, RestoreRequest, TargetAction, TimelineTarget, plan_restore};

use super::RepoArgs;

/// What PostgreSQL does at the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetActionArg {
    /// End recovery and open for writes.
    Promote,
    /// Stay paused in recovery.
    Pause,
    /// Shut down at the target.
    Shutdown,
}

impl From<TargetActionArg> for TargetAction {
    fn from(a: TargetActionArg) -> Self {
        match a {
            TargetActionArg::Promote => TargetAction::Promote,
            TargetActionArg::Pause => TargetAction::Pause,
            TargetActionArg::Shutdown => TargetAction::Shutdown,
        }
    }
}

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Restore a base backup into an empty directory and configure recovery to replay the \
archive to the target (default: the end of the archive). Before anything is written, walvault picks the newest \
backup that ends before the target (or --backup), checks that the directory is empty, that the key fits, and \
that the WAL from the backup's start has no gap. It writes recovery.signal (standby.signal with --standby), \
restore_command and the target settings in postgresql.auto.conf, and the repository settings in \
DATADIR.walvault.json beside the data directory (mode 0600, never inside it) for restore_command. Start PostgreSQL on the directory to recover."
)]
pub struct Args {
    /// The data directory to create (must be empty or absent).
    #[arg(long)]
    pub pgdata: PathBuf,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Restore this backup instead of the newest one before the target.
    #[arg(long)]
    pub backup: Option<String>,
    /// Recover to this time (with an explicit UTC offset, e.g. "2026-11-21 10:15:00+00").
    #[arg(long, conflicts_with_all = ["target_lsn", "target_xid", "target_name"])]
    pub target_time: Option<String>,
    /// Recover to this LSN.
    #[arg(long, conflicts_with_all = ["target_xid", "target_name"])]
    pub target_lsn: Option<String>,
    /// Recover to this transaction id.
    #[arg(long, conflicts_with = "target_name")]
    pub target_xid: Option<String>,
    /// Recover to this restore point (pg_create_restore_point, walvault mark).
    #[arg(long, conflicts_with = "target_immediate")]
    pub target_name: Option<String>,
    /// Recover only to the backup's consistency point (recovery_target = 'immediate'): restores a
    /// backup that retention kept without the WAL after it (a daily/weekly/monthly or pinned one).
    #[arg(long, conflicts_with_all = ["target_time", "target_lsn", "target_xid"])]
    pub target_immediate: bool,
    /// recovery_target_timeline: latest, current, or a number.
    #[arg(long, default_value = "latest")]
    pub target_timeline: String,
    /// What PostgreSQL does at the target.
    #[arg(long, value_enum, default_value = "promote")]
    pub target_action: TargetActionArg,
    /// Stop just before the target instead of just after it.
    #[arg(long)]
    pub exclusive: bool,
    /// Restore tablespace OID into DIR instead of its original location (repeatable).
    #[arg(long, value_name = "OID=DIR")]
    pub tablespace_map: Vec<String>,
    /// Restore as a standby that keeps following the archive.
    #[arg(long)]
    pub standby: bool,
    /// WAL segments restore_command fetches ahead of replay, in parallel (0: none).
    #[arg(long, default_value_t = 8)]
    pub prefetch: u64,
    /// Most bytes the prefetch spool (pg_wal/walvault-spool in the data directory) may hold.
    #[arg(long, default_value = "512MiB")]
    pub spool_max: String,
    /// How long restore_command retries a store that fails or does not answer before
    /// recovery stops (rather than ending early).
    #[arg(long, default_value = "5m", value_parser = crate::config::parse_duration)]
    pub fetch_timeout: std::time::Duration,
    /// Where to write the repository settings restore_command reads (mode 0600; default
    /// DATADIR.walvault.json beside the data directory). Never inside the data directory:
    /// it holds the key and store credentials.
    #[arg(long)]
    pub settings_file: Option<PathBuf>,
    /// Print the plan and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Start PostgreSQL on the restored directory, wait until recovery reaches the target and
    /// the target action has happened, print where it stopped, and leave the server running.
    #[arg(long)]
    pub start: bool,
    /// Directory holding pg_ctl and postgres (default: /usr/lib/postgresql/<major>/bin, then PATH).
    #[arg(long, requires = "start")]
    pub pg_bin: Option<PathBuf>,
    /// Port for the started server.
    #[arg(long, default_value_t = 5432, requires = "start")]
    pub port: u16,
    /// Unix socket directory for the started server (default: the data directory).
    #[arg(long, requires = "start")]
    pub socket_dir: Option<PathBuf>,
    /// Role to connect as while waiting for recovery.
    #[arg(long, default_value = "postgres", requires = "start")]
    pub user: String,
}

fn usage(what: &'static str, value: &str, reason: impl Into<String>) -> crate::config::Error {
    crate::config::Error::Invalid {
        what,
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn parse_target(args: &Args) -> Result<RecoveryTarget, crate::config::Error> {
    if let Some(t) = &args.target_time {
        let parsed =
            crate::restore::plan::parse_target_time(t).map_err(|e| usage("--target-time", t, e))?;
        return Ok(RecoveryTarget::Time(parsed));
    }
    if let Some(l) = &args.target_lsn {
        return Ok(RecoveryTarget::Lsn(l.parse().map_err(
            |e: crate::lsn::ParseLsnError| usage("--target-lsn", l, e.to_string()),
        )?));
    }
    if let Some(x) = &args.target_xid {
        if x.parse::<u64>().is_err() {
            return Err(usage("--target-xid", x, "a transaction id is a number"));
        }
        return Ok(RecoveryTarget::Xid(x.clone()));
    }
    if let Some(n) = &args.target_name {
        return Ok(RecoveryTarget::Name(n.clone()));
    }
    if args.target_immediate {
        return Ok(RecoveryTarget::Immediate);
    }
    Ok(RecoveryTarget::End)
}

/// Restores, and prints where recovery will stop.
///
/// # Errors
/// Refusals before writing (usage errors, exit 2, or plan errors, exit 1)
/// and failures while fetching.
pub async fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    // restore_command runs in the data directory: every path it names is absolute.
    args.pgdata = std::path::absolute(&args.pgdata).context("resolve --pgdata")?;
    if let Some(f) = &args.settings_file {
        args.settings_file = Some(std::path::absolute(f).context("resolve --settings-file")?);
    }
    let target = parse_target(&args)?;
    let timeline: TimelineTarget = args
        .target_timeline
        .parse()
        .map_err(|e: String| usage("--target-timeline", &args.target_timeline, e))?;
    if let Err(e) = crate::config::parse_byte_size(&args.spool_max) {
        anyhow::bail!(usage("--spool-max", &args.spool_max, e.to_string()));
    }
    let ts_map = crate::restore::tablespaces::parse_map(&args.tablespace_map)?;
    if !crate::restore::tablespaces::is_empty_dir(&args.pgdata) {
        anyhow::bail!(usage(
            "--pgdata",
            &args.pgdata.display().to_string(),
            "the directory is not empty; restore into an empty or new directory",
        ));
    }
    let (repo, _) = args.repo.open_existing().await?;
    let backups = list_backups(&repo).await.context("list backups")?;
    let plan = plan_restore(&repo, backups, args.backup.as_deref(), &target, timeline).await?;
    let b = &plan.backup;
    println!(
        "plan: backup {} ({} taken {} .. {}, {}, timeline {}), WAL on timeline {} from {} to {} (archive end {}), target {}",
        b.id,
        human_bytes(b.plain_bytes),
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
        match &target {
            RecoveryTarget::End => "end of the archive".to_string(),
            RecoveryTarget::Time(t) => format!("time {}", t.to_rfc3339()),
            RecoveryTarget::Lsn(l) => format!("LSN {l}"),
            RecoveryTarget::Xid(x) => format!("xid {x}"),
            RecoveryTarget::Name(n) => format!("restore point {n:?}"),
            RecoveryTarget::Immediate => "the backup's consistency point".to_string(),
        }
    );
    let tablespace_dirs = crate::restore::tablespaces::choose_dirs(b, &ts_map)?;
    let settings_file = args
        .settings_file
        .clone()
        .unwrap_or_else(|| crate::restore::default_settings_file(&args.pgdata));
    if settings_file.starts_with(&args.pgdata)
        || tablespace_dirs
            .iter()
            .any(|(_, d)| settings_file.starts_with(d))
    {
        anyhow::bail!(usage(
            "--settings-file",
            &settings_file.display().to_string(),
            "it holds the key and store credentials and must not be inside the data or a tablespace directory",
        ));
    }
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let request = RestoreRequest {
        pgdata: args.pgdata.clone(),
        tablespace_dirs,
        settings: args.repo.settings()?,
        settings_file,
        walvault: std::env::current_exe().context("find the walvault binary")?,
        target,
        exclusive: args.exclusive,
        action: args.target_action.into(),
        timeline: args.target_timeline.clone(),
        standby: args.standby,
        prefetch: args.prefetch,
        spool_max: args.spool_max.clone(),
        fetch_timeout: args.fetch_timeout,
    };
    let restored = crate::restore::execute(&repo, &plan, &request).await?;
    tracing::info!(requests = repo.requests().summary(), "store requests");
    println!(
        "restored backup {} into {}: {} unpacked in {:.1}s, synced in {:.1}s",
        b.id,
        args.pgdata.display(),
        human_bytes(b.plain_bytes),
        restored.unpacked.as_secs_f64(),
        restored.synced.as_secs_f64()
    );
    if !args.start {
        println!("start PostgreSQL on it to recover");
        return Ok(ExitCode::SUCCESS);
    }
    let start = StartOptions {
        pgdata: args.pgdata.clone(),
        pg_bin: args.pg_bin.clone(),
        port: args.port,
        socket_dir: args.socket_dir.clone(),
        user: args.user.clone(),
        action: args.target_action.into(),
        settings: Vec::new(),
    };
    let outcome = crate::restore::start::start_and_wait(&start, b.pg_major, |s| {
        println!(
            "PostgreSQL started on port {} (socket {}), log {}",
            s.port,
            s.socket_dir.display(),
            s.log.display()
        );
    })
    .await?;
    match outcome {
        StartOutcome::ShutDown { log } => {
            // recovery_end_command does not run when recovery shuts down at
            // its target: the prefetch spool goes here.
            let spool = crate::restore::spool::Spool::new(crate::restore::spool_dir(&args.pgdata));
            tokio::task::spawn_blocking(move || spool.clean(crate::restore::serve::SPOOL_WAIT))
                .await
                .expect("cleaning does not panic")
                .context("clean the prefetch spool")?;
            println!(
                "recovery reached the target and the server shut down as asked; see {}",
                log.display()
            );
        }
        StartOutcome::Stopped {
            promoted,
            lsn,
            timeline,
            last_commit,
        } => println!(
            "recovery {}: final LSN {lsn}, timeline {timeline}, last replayed commit at {last_commit}",
            if promoted {
                "promoted"
            } else {
                "paused at the target"
            }
        ),
    }
    Ok(ExitCode::SUCCESS)
}
