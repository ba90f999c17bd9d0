//! `walvault backup`: one base backup, with its WAL, into the repository.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::backup::{self, BackupOptions, WalSource};
use crate::config::{parse_byte_size, parse_duration};
use crate::progress::human_bytes;
use crate::protocol::ConnInfo;
use crate::wal::receiver::StreamOptions;

use super::RepoArgs;

/// Checkpoint mode at the start of a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Checkpoint {
    /// Immediate checkpoint: the backup starts at once, with an I/O burst.
    Fast,
    /// Spread checkpoint: gentle on the server, may take up to checkpoint_timeout.
    Spread,
}

/// Arguments of `backup`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Take a base backup over the replication protocol (BASE_BACKUP) into the repository: \
each tablespace's tar stream is cut into parts, sealed and uploaded in parallel, with the server's backup \
manifest. The WAL from the backup's start to its end is streamed on a temporary slot and stored too, so the \
backup is restorable with nothing else running. backup.json is written last: a backup without it does not \
exist, and the parts of an interrupted backup are removed by a later run."
)]
pub struct Args {
    /// PostgreSQL connection string (URI or key=value); missing parts come from the PG* variables.
    #[arg(long, env = "WALVAULT_PG", default_value = "")]
    pub pg: String,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Backup label (default "walvault <id>").
    #[arg(long)]
    pub label: Option<String>,
    /// Checkpoint mode at the start.
    #[arg(
        long,
        value_enum,
        default_value = "spread",
        env = "WALVAULT_CHECKPOINT"
    )]
    pub checkpoint: Checkpoint,
    /// Plaintext bytes per stored part.
    #[arg(long, default_value = "16MiB", value_parser = parse_byte_size, env = "WALVAULT_PART_SIZE")]
    pub part_size: u64,
    /// Parts uploaded at once.
    #[arg(long, default_value_t = 4, env = "WALVAULT_UPLOAD_CONCURRENCY")]
    pub upload_concurrency: usize,
    /// Memory for the backup's WAL stream.
    #[arg(long, default_value = "256MiB", value_parser = parse_byte_size, env = "WALVAULT_MEMORY_BUDGET")]
    pub memory_budget: u64,
    /// Ask the server to compress the tar streams with zstd at this level (PostgreSQL 15+).
    /// Off by default: walvault's own zstd (level 1) runs beside the upload and leaves the
    /// server's CPU to the database.
    #[arg(long, value_name = "LEVEL", env = "WALVAULT_SERVER_ZSTD")]
    pub server_zstd: Option<i32>,
    /// Print the backup's metadata as JSON.
    #[arg(long)]
    pub json: bool,
    /// Unfinished backups whose newest object is older than this are deleted first.
    #[arg(long, default_value = "60s", value_parser = parse_duration, hide = true)]
    pub orphan_grace: Duration,
}

/// Builds the backup settings shared by `backup` and the sidecar's schedule.
pub fn backup_options(
    conninfo: ConnInfo,
    label: Option<String>,
    fast: bool,
    part_size: u64,
    upload_concurrency: usize,
    memory_budget: u64,
) -> BackupOptions {
    BackupOptions {
        stream: StreamOptions {
            conninfo: conninfo.clone(),
            slot: String::new(),
            flush_interval: Duration::from_millis(500),
            synchronous: false,
            memory_budget_bytes: memory_budget,
            upload_concurrency: upload_concurrency.max(1),
            shutdown_timeout: parse_duration("120s").expect("valid"),
        },
        conninfo,
        label,
        fast_checkpoint: fast,
        server_zstd_level: None,
        part_size_bytes: part_size.max(1 << 20),
        upload_concurrency: upload_concurrency.max(1),
        orphan_grace: backup::DEFAULT_ORPHAN_GRACE,
    }
}

/// Takes the backup.
///
/// # Errors
/// Configuration, server or store failures.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let conninfo = ConnInfo::parse(&args.pg, &|k| std::env::var(k).ok()).context("parse --pg")?;
    let repo = args.repo.open()?;
    let mut opts = backup_options(
        conninfo,
        args.label,
        args.checkpoint == Checkpoint::Fast,
        args.part_size,
        args.upload_concurrency,
        args.memory_budget,
    );
    opts.orphan_grace = args.orphan_grace;
    opts.server_zstd_level = args.server_zstd;
    let cancel = CancellationToken::new();
    super::stream::spawn_signal_handler(cancel.clone());
    let meta = backup::run(&opts, &repo, WalSource::Standalone, &cancel)
        .await
        .context("take a base backup")?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&meta).expect("serializes")
        );
    } else {
        println!(
            "backup {} complete: {} read, {} stored, WAL {}..{} on timeline {}, {:.1}s",
            meta.id,
            human_bytes(meta.plain_bytes),
            human_bytes(meta.stored_bytes),
            meta.start_lsn,
            meta.stop_lsn,
            meta.timeline,
            meta.duration_seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
