//! `walvault stream`: the sidecar.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tracing::info;

use crate::config::parse_duration;
use crate::protocol::ConnInfo;
use crate::shutdown::Shutdown;
use crate::sidecar::{self, SidecarSettings};

use super::args::{
    Checkpoint, RepoArgs, RetentionArgs, parse_flush_interval, parse_listen_addr,
    parse_memory_budget, parse_schedule, parse_slot_name,
};

/// Default memory budget for WAL held in memory.
const DEFAULT_MEMORY_BUDGET: &str = "256MiB";
/// Default time to store the tail at shutdown.
const DEFAULT_SHUTDOWN_TIMEOUT: &str = "60s";

/// Arguments of `stream`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Stream WAL from PostgreSQL over a physical replication slot into the repository. \
Complete segments are stored whole; every --flush-interval the not-yet-stored tail of the open segment is stored \
as a small delta object, so committed WAL reaches the store within about that interval. The server is told a \
position is flushed only once it is in the store, so the slot keeps everything else. SIGINT/SIGTERM store the tail \
and exit 0. With --synchronous and synchronous_standby_names = 'walvault' on the server, commits wait until \
their WAL is stored.",
    after_long_help = "Examples:\
\n  walvault stream --pg 'host=/run/postgresql user=walvault' --repo s3://bucket/cluster-1 --key-file /etc/walvault/walvault.key\
\n  walvault stream --config /etc/walvault/walvault.toml --backup-schedule '0 3 * * *' --retain-window 30d --metrics-addr 127.0.0.1:9187\
\n  walvault stream --config walvault.toml --synchronous   # with synchronous_standby_names = 'walvault'"
)]
pub struct Args {
    /// PostgreSQL connection string (URI or key=value). Missing parts come from PGHOST, PGPORT,
    /// PGUSER, PGPASSWORD, PGSSLMODE, PGSSLROOTCERT and the other PG* variables, as libpq reads them.
    #[arg(long, env = "WALVAULT_PG", default_value = "")]
    pub pg: String,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Physical replication slot to use (created if missing).
    #[arg(long, env = "WALVAULT_SLOT", default_value = "walvault", value_parser = parse_slot_name)]
    pub slot: String,
    /// How often the open segment's new WAL is stored (the data-loss window).
    #[arg(long, env = "WALVAULT_FLUSH_INTERVAL", default_value = "1s", value_parser = parse_flush_interval)]
    pub flush_interval: Duration,
    /// Store every batch as soon as it arrives, for synchronous_standby_names.
    #[arg(long, env = "WALVAULT_SYNCHRONOUS")]
    pub synchronous: bool,
    /// Memory for WAL held before it is stored; reads pause when it is full.
    #[arg(long, env = "WALVAULT_MEMORY_BUDGET", default_value = DEFAULT_MEMORY_BUDGET, value_parser = parse_memory_budget)]
    pub memory_budget: u64,
    /// Uploads in flight at once.
    #[arg(long, env = "WALVAULT_UPLOAD_CONCURRENCY", default_value_t = 4)]
    pub upload_concurrency: usize,
    /// How long a graceful shutdown may spend storing the tail.
    #[arg(long, env = "WALVAULT_SHUTDOWN_TIMEOUT", default_value = DEFAULT_SHUTDOWN_TIMEOUT, value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Take base backups on this cron schedule (UTC, five fields, e.g. "0 3 * * *"), on their own
    /// connection while WAL keeps streaming; also one at start if the repository has none.
    #[arg(long, env = "WALVAULT_BACKUP_SCHEDULE", value_parser = parse_schedule)]
    pub backup_schedule: Option<String>,
    /// Checkpoint mode of scheduled backups.
    #[arg(
        long,
        value_enum,
        default_value = "spread",
        env = "WALVAULT_BACKUP_CHECKPOINT"
    )]
    pub backup_checkpoint: Checkpoint,
    /// Rate limit of scheduled backups, per second (as `backup --max-rate`).
    #[arg(long, value_name = "BYTES", value_parser = super::backup::parse_max_rate, env = "WALVAULT_BACKUP_MAX_RATE")]
    pub backup_max_rate: Option<u64>,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Time between expire runs (besides the run after each scheduled backup).
    #[arg(long, env = "WALVAULT_EXPIRE_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub expire_interval: Duration,
    /// Serve Prometheus metrics on /metrics and a health verdict on /health at this address
    /// (e.g. 127.0.0.1:9187).
    #[arg(long, env = "WALVAULT_METRICS_ADDR", value_parser = parse_listen_addr)]
    pub metrics_addr: Option<String>,
    /// The recovery point objective: a lag (unstored WAL older than this) over it makes /health
    /// answer 503.
    #[arg(long, env = "WALVAULT_RPO", default_value = "60s", value_parser = parse_duration)]
    pub rpo: Duration,
    /// A newest backup older than this makes /health answer 207 (degraded).
    #[arg(long, env = "WALVAULT_BACKUP_MAX_AGE", default_value = "26h", value_parser = parse_duration)]
    pub backup_max_age: Duration,
    /// Post a JSON message (Slack-compatible "text") to this URL when an incident opens and when
    /// it resolves: a failed backup, a stalled stream, lag over the RPO, an unreachable store, a
    /// failed drill, a slot at risk, a failed expire. One message per incident, not per retry.
    /// The URL is a credential: give it in the environment or the configuration file, not here.
    #[arg(long, env = "WALVAULT_NOTIFY_WEBHOOK")]
    pub notify_webhook: Option<String>,
    /// Run a restore drill (walvault drill) on this cron schedule, e.g. monthly "0 4 1 * *";
    /// off unless given. The sidecar must run as a user that can run PostgreSQL.
    #[arg(long, env = "WALVAULT_DRILL_SCHEDULE", value_parser = parse_schedule)]
    pub drill_schedule: Option<String>,
    /// Where drills make their scratch directory (room for the database).
    #[arg(long, env = "WALVAULT_DRILL_SCRATCH")]
    pub drill_scratch: Option<std::path::PathBuf>,
    /// Directory of pg_ctl and pg_amcheck for drills.
    #[arg(long, env = "WALVAULT_PG_BIN")]
    pub pg_bin: Option<std::path::PathBuf>,
}

/// Runs the stream until SIGINT/SIGTERM.
///
/// # Errors
/// Configuration errors, or a stream failure that reconnecting cannot fix.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let conninfo = ConnInfo::parse(&args.pg, &|k| std::env::var(k).ok()).context("parse --pg")?;
    let source = args.repo.source()?;
    let settings = SidecarSettings {
        conninfo,
        slot: args.slot,
        flush_interval: args.flush_interval,
        synchronous: args.synchronous,
        memory_budget_bytes: args.memory_budget,
        upload_concurrency: args.upload_concurrency,
        shutdown_timeout: args.shutdown_timeout,
        backup_schedule: args.backup_schedule,
        backup_fast_checkpoint: args.backup_checkpoint == Checkpoint::Fast,
        backup_max_rate_bytes: args.backup_max_rate,
        retention: args.retention.policy(),
        expire_interval: args.expire_interval,
        metrics_addr: args.metrics_addr,
        rpo: args.rpo,
        backup_max_age: args.backup_max_age,
        notify_webhook: args.notify_webhook,
        drill_schedule: args.drill_schedule,
        drill_scratch: args.drill_scratch,
        pg_bin: args.pg_bin,
    };
    // Every argument is checked before a new repository is created.
    settings.check()?;
    let repo = source.open_for_writing().await?;
    let sidecar = settings.assemble(&repo, &source).await?;
    let opts = &sidecar.stream;
    info!(server = %opts.conninfo.describe(), repo = repo.display(), slot = opts.slot,
          synchronous = opts.synchronous, "walvault stream starting");
    let shutdown = Shutdown::new();
    shutdown.cancel_on_signals();
    let (summary, scheduled) = sidecar::run(sidecar, &repo, &shutdown)
        .await
        .context("stream WAL")?;
    info!(durable = %summary.durable, objects = summary.objects, bytes = summary.plain_bytes,
          backups = scheduled.completed, failed_backups = scheduled.failed,
          requests = repo.requests().summary(), "walvault stream stopped");
    Ok(ExitCode::SUCCESS)
}
