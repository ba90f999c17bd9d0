//! `walvault restore`: rebuild a cluster from the repository to a target.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::config::ByteSize;
use crate::lsn::Lsn;
use crate::progress::human_bytes;
use crate::restore::start::StartOptions;
use crate::restore::{RecoveryOptions, RecoveryTarget, RestoreOptions, TimelineTarget, prepare};

use super::args::{
    RepoArgs, SettingsOutput, TargetActionArg, parse_byte_size_arg, parse_target_lsn,
    parse_target_time, parse_target_timeline, parse_target_xid,
};

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Restore a base backup into an empty directory and configure recovery to replay the \
archive to the target (default: the end of the archive). Before anything is written, walvault picks the newest \
backup that ends before the target (or --backup), checks that the directory is empty, that the key fits, and \
that the WAL from the backup's start has no gap. It writes recovery.signal (standby.signal with --standby), \
restore_command and the target settings in postgresql.auto.conf, and the repository settings in \
DATADIR.walvault.json beside the data directory (mode 0600, never inside it) for restore_command. Start PostgreSQL on the directory to recover.",
    after_long_help = "Examples:\
\n  walvault restore --config walvault.toml --pgdata /var/lib/postgresql/15/restored --dry-run\
\n  walvault restore --config walvault.toml --pgdata /srv/pg/restored --target-time '2026-12-07 10:15:00+00'\
\n  sudo -u postgres walvault restore --config walvault.toml --pgdata /srv/pg/restored --target-name before-migration --start"
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
    /// Choose among the backups carrying this annotation (backup --annotate): the newest of
    /// them that ends before the target.
    #[arg(long, value_name = "KEY=VALUE", conflicts_with = "backup",
          value_parser = crate::format::backup::parse_annotation)]
    pub backup_annotation: Option<(String, String)>,
    /// Recover to this time (with an explicit UTC offset, e.g. "2026-11-21 10:15:00+00").
    #[arg(long, conflicts_with_all = ["target_lsn", "target_xid", "target_name"], value_parser = parse_target_time)]
    pub target_time: Option<DateTime<Utc>>,
    /// Recover to this LSN.
    #[arg(long, conflicts_with_all = ["target_xid", "target_name"], value_parser = parse_target_lsn)]
    pub target_lsn: Option<Lsn>,
    /// Recover to this transaction id.
    #[arg(long, conflicts_with = "target_name", value_parser = parse_target_xid)]
    pub target_xid: Option<u64>,
    /// Recover to this restore point (pg_create_restore_point, walvault mark).
    #[arg(long, conflicts_with = "target_immediate")]
    pub target_name: Option<String>,
    /// Recover only to the backup's consistency point (recovery_target = 'immediate'): restores a
    /// backup that retention kept without the WAL after it (a daily/weekly/monthly or pinned one).
    #[arg(long, conflicts_with_all = ["target_time", "target_lsn", "target_xid"])]
    pub target_immediate: bool,
    /// recovery_target_timeline: latest, current, or a number.
    #[arg(long, default_value = "latest", value_parser = parse_target_timeline)]
    pub target_timeline: TimelineTarget,
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
    #[arg(long, default_value = "512MiB", value_parser = parse_byte_size_arg)]
    pub spool_max: ByteSize,
    /// How long restore_command retries a store that fails or does not answer before
    /// recovery stops (rather than ending early).
    #[arg(long, default_value = "5m", value_parser = crate::config::parse_duration)]
    pub fetch_timeout: std::time::Duration,
    /// Where to write the repository settings restore_command reads (mode 0600; default
    /// DATADIR.walvault.json beside the data directory). Never inside the data directory:
    /// it holds the key and store credentials.
    #[arg(long)]
    pub settings_file: Option<PathBuf>,
    /// Where walvault's recovery settings go: `write` appends them to postgresql.auto.conf;
    /// `print` (postgresql.conf lines) and `json` print them on stdout instead, for platforms
    /// that render the configuration themselves (docs/operations.md). With --dry-run: print only.
    #[arg(long, value_enum, default_value = "write", conflicts_with = "start")]
    pub recovery_settings: SettingsOutput,
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

impl Args {
    /// Where recovery stops, from the one target flag given (clap refuses two).
    fn target(&self) -> RecoveryTarget {
        match (
            self.target_time,
            self.target_lsn,
            self.target_xid,
            &self.target_name,
        ) {
            (Some(t), ..) => RecoveryTarget::Time(t),
            (_, Some(l), ..) => RecoveryTarget::Lsn(l),
            (_, _, Some(x), _) => RecoveryTarget::Xid(x),
            (.., Some(n)) => RecoveryTarget::Name(n.clone()),
            _ if self.target_immediate => RecoveryTarget::Immediate,
            _ => RecoveryTarget::End,
        }
    }
}

/// Restores, and prints where recovery will stop.
///
/// # Errors
/// Refusals before writing (usage errors, exit 2, or plan errors, exit 1)
/// and failures while fetching.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let options = RestoreOptions {
        pgdata: args.pgdata.clone(),
        backup: args.backup.clone(),
        annotation: args.backup_annotation.clone(),
        target: args.target(),
        timeline: args.target_timeline,
        tablespace_map: crate::restore::tablespaces::parse_map(&args.tablespace_map)?,
        tablespaces_under: None,
        settings_file: args.settings_file.clone(),
    };
    let (repo, _) = args.repo.open_existing().await?;
    let prepared = prepare(&repo, &options).await?;
    let b = &prepared.plan.backup;
    // stdout carries only the settings when they are printed.
    let to_stdout = args.recovery_settings == SettingsOutput::Write;
    let say = |line: String| {
        if to_stdout {
            println!("{line}");
        } else {
            eprintln!("{line}");
        }
    };
    say(prepared.summary());
    let start = StartOptions {
        pgdata: prepared.pgdata.clone(),
        pg_bin: args.pg_bin.clone(),
        port: args.port,
        socket_dir: args.socket_dir.clone(),
        user: args.user.clone(),
        action: args.target_action.into(),
        settings: Vec::new(),
    };
    if args.start {
        // Before anything is written: a restore that cannot be started is refused.
        crate::restore::start::check_can_start(&start, b.pg_major)?;
    }
    if args.dry_run && to_stdout {
        return Ok(ExitCode::SUCCESS);
    }
    let recovery = RecoveryOptions {
        settings: args.repo.settings()?,
        walvault: std::env::current_exe().context("find the walvault binary")?,
        exclusive: args.exclusive,
        action: args.target_action.into(),
        standby: args.standby,
        prefetch: args.prefetch,
        spool_max: args.spool_max,
        fetch_timeout: args.fetch_timeout,
        leave_settings_out: !to_stdout,
    };
    let print_settings = || {
        let settings = crate::restore::recovery_settings(&prepared, &recovery);
        if args.recovery_settings == SettingsOutput::Json {
            let doc = crate::restore::recovery::settings_document(
                args.standby,
                &prepared.settings_file,
                &settings,
            );
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).expect("serializes")
            );
        } else {
            print!("{}", crate::restore::recovery::render_settings(&settings));
        }
    };
    if args.dry_run {
        print_settings();
        return Ok(ExitCode::SUCCESS);
    }
    // A signal stops the restore and removes what it wrote.
    let shutdown = crate::shutdown::Shutdown::new();
    shutdown.cancel_on_signals();
    let restored = crate::restore::execute(&repo, &prepared, &recovery, &shutdown.graceful).await?;
    tracing::info!(requests = repo.requests().summary(), "store requests");
    say(format!(
        "restored backup {} into {}: {} unpacked in {:.1}s, synced in {:.1}s",
        b.id,
        prepared.pgdata.display(),
        human_bytes(b.plain_bytes),
        restored.unpacked.as_secs_f64(),
        restored.synced.as_secs_f64()
    ));
    if !to_stdout {
        say("add these recovery settings to the configuration, then start PostgreSQL".into());
        print_settings();
        return Ok(ExitCode::SUCCESS);
    }
    if !args.start {
        println!("start PostgreSQL on it to recover");
        return Ok(ExitCode::SUCCESS);
    }
    let outcome = crate::restore::start::start_and_wait(&start, b.pg_major, |s| {
        println!(
            "PostgreSQL started on port {} (socket {}), log {}",
            s.port,
            s.socket_dir.display(),
            s.log.display()
        );
    })
    .await?;
    println!("{outcome}");
    Ok(ExitCode::SUCCESS)
}
