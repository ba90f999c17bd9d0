//! `walvault drill`: a restore test, recorded in the repository.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::restore::plan::RecoveryTarget;

use super::args::{RepoArgs, parse_target_time};

/// Arguments of `drill`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Test a restore: restore a backup to a target (default: the end of the archive) into a scratch \
directory, start PostgreSQL on it (socket only, no archiving), wait until recovery ends, check every heap and \
B-tree index with amcheck (pg_amcheck, or the same checks in SQL where pg_amcheck is not installed) or run \
--check-sql, record the outcome under drills/ in the repository (metrics and info show it), stop the server and \
remove the scratch directory. The report gives the measured RTO: restore plus recovery. Run it as the operating \
system user that runs PostgreSQL. Exit 0 when the drill succeeded, 1 when it failed.",
    after_long_help = "Examples:\
\n  sudo -u postgres walvault drill --config walvault.toml --scratch /var/tmp\
\n  sudo -u postgres walvault drill --config walvault.toml --target-name before-migration --check-sql 'SELECT count(*) > 0 FROM orders'"
)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Restore this backup (default: the newest one before the target).
    #[arg(long)]
    pub backup: Option<String>,
    /// Recover to this time (with its UTC offset) instead of the end of the archive.
    #[arg(long, conflicts_with = "target_name", value_parser = parse_target_time)]
    pub target_time: Option<DateTime<Utc>>,
    /// Recover to this restore point (a mark).
    #[arg(long)]
    pub target_name: Option<String>,
    /// The directory the scratch directory is made in (it needs room for the database).
    #[arg(long, env = "WALVAULT_DRILL_SCRATCH")]
    pub scratch: Option<PathBuf>,
    /// Directory of pg_ctl and pg_amcheck (default: /usr/lib/postgresql/<major>/bin, then PATH).
    #[arg(long, env = "WALVAULT_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// Port number of the drill's server (it listens only on a socket in the scratch directory).
    #[arg(long, default_value_t = 5432)]
    pub port: u16,
    /// Role to connect to the restored server as.
    #[arg(long, default_value = "postgres")]
    pub user: String,
    /// Run this SQL instead of amcheck; the drill fails if it errors or returns false.
    #[arg(long)]
    pub check_sql: Option<String>,
    /// Print the record as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the drill and prints its record.
///
/// # Errors
/// Bad arguments or settings (exit 2); a failed drill is exit 1 with its record printed.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let target = match (args.target_time, &args.target_name) {
        (Some(t), _) => RecoveryTarget::Time(t),
        (None, Some(n)) => RecoveryTarget::Name(n.clone()),
        (None, None) => RecoveryTarget::End,
    };
    let (repo, _) = args.repo.open_existing().await?;
    // A signal stops the drill's restore, which removes what it wrote.
    let shutdown = crate::shutdown::Shutdown::new();
    shutdown.cancel_on_signals();
    let opts = crate::restore::drill::DrillOptions {
        backup: args.backup.clone(),
        target,
        scratch_parent: std::path::absolute(
            args.scratch.clone().unwrap_or_else(std::env::temp_dir),
        )
        .context("resolve --scratch")?,
        pg_bin: args.pg_bin.clone(),
        port: args.port,
        user: args.user.clone(),
        check_sql: args.check_sql.clone(),
        settings: args.repo.settings()?,
        walvault: std::env::current_exe().context("find the walvault binary")?,
    };
    let record = crate::restore::drill::run(&repo, &opts, &shutdown.graceful).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&record).expect("serializes")
        );
    } else if record.success {
        println!(
            "drill succeeded: backup {} to {}: restore {:.1}s + recovery {:.1}s = RTO {:.1}s; {}",
            record.backup_id.as_deref().unwrap_or("-"),
            record.target,
            record.restore_seconds,
            record.recovery_seconds,
            record.rto_seconds,
            record.message
        );
    } else {
        // A failed drill measured no recovery time.
        println!(
            "drill FAILED: backup {} to {}: {}",
            record.backup_id.as_deref().unwrap_or("-"),
            record.target,
            record.message
        );
    }
    Ok(if record.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
