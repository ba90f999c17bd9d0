//! `walvault backup`: one base backup, with its WAL, into the repository.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::backup::{self, BackupOptions, WalSource};
use crate::config::{parse_byte_size, parse_duration};
use crate::format::backup::{annotations_from, parse_annotation};
use crate::progress::human_bytes;
use crate::protocol::ConnInfo;
use crate::shutdown::Shutdown;

use super::args::{Checkpoint, RepoArgs};

/// Arguments of `backup`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Take a base backup over the replication protocol (BASE_BACKUP) into the repository: \
each tablespace's tar stream is cut into parts, sealed and uploaded in parallel, with the server's backup \
manifest. The WAL from the backup's start to its end is streamed on a temporary slot and stored too, so the \
backup is restorable with nothing else running. backup.json is written last: a backup without it does not \
exist, and the parts of an interrupted backup are removed by a later run.",
    after_long_help = "Examples:\
\n  walvault backup --pg 'host=db.internal user=walvault' --repo s3://bucket/cluster-1 --key-file walvault.key\
\n  walvault backup --config walvault.toml --checkpoint fast --label before-migration --json\
\n  walvault backup --config walvault.toml --annotate ticket=OPS-1234 --annotate reason=pre-migration"
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
    /// Ask the server to send the backup at most this fast, per second (e.g. 50MiB; from 32KiB
    /// to 1GiB), so a backup cannot saturate a shared disk or link. The backup's WAL is not
    /// limited.
    #[arg(long, value_name = "BYTES", value_parser = parse_max_rate, env = "WALVAULT_MAX_RATE")]
    pub max_rate: Option<u64>,
    /// Store user metadata with the backup (repeatable): shown by list and info, and
    /// `restore --backup-annotation KEY=VALUE` restores the newest backup that carries it.
    #[arg(long = "annotate", value_name = "KEY=VALUE", value_parser = parse_annotation)]
    pub annotations: Vec<(String, String)>,
    /// Print the backup's metadata as JSON (backup.json: id, label, start and stop times and
    /// LSNs, timeline, first and last WAL segment, sizes, the backup_label file, annotations).
    #[arg(long)]
    pub json: bool,
    /// Unfinished backups whose newest object is older than this are deleted first.
    #[arg(long, default_value = "60s", value_parser = parse_duration, hide = true)]
    pub orphan_grace: Duration,
}

/// A backup rate limit: a size per second, within what BASE_BACKUP takes.
pub(super) fn parse_max_rate(text: &str) -> Result<u64, String> {
    backup::check_max_rate(parse_byte_size(text)?)
}

/// Takes the backup.
///
/// # Errors
/// Configuration, server or store failures.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let conninfo = ConnInfo::parse(&args.pg, &|k| std::env::var(k).ok()).context("parse --pg")?;
    let annotations =
        annotations_from(&args.annotations).map_err(|reason| crate::config::Error::Invalid {
            what: "--annotate",
            value: String::new(),
            reason,
        })?;
    // Every argument is checked before a new repository is created.
    let repo = args.repo.source()?.open_for_writing().await?;
    let mut opts = BackupOptions::new(
        conninfo,
        args.checkpoint == Checkpoint::Fast,
        args.part_size,
        args.upload_concurrency,
        args.memory_budget,
    );
    opts.label = args.label;
    opts.orphan_grace = args.orphan_grace;
    opts.server_zstd_level = args.server_zstd;
    opts.max_rate_bytes = args.max_rate;
    opts.annotations = annotations;
    let shutdown = Shutdown::new();
    shutdown.cancel_on_signals();
    let wal = WalSource::for_repository(&repo)
        .await
        .context("look for a stream writing this repository")?;
    let meta = backup::run(&opts, &repo, wal, &shutdown.graceful)
        .await
        .context("take a base backup")?;
    tracing::info!(requests = repo.requests().summary(), "store requests");
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
