//! `walvault list`: what the repository holds.

use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use crate::progress::human_bytes;
use crate::storage::{Repository, layout};
use crate::wal::index::ScanError;
use crate::wal::inventory::WalInventory;
use crate::wal::summary::{WalSummary, summarize};

use super::RepoArgs;

/// Arguments of `list`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Show the repository's identity, its timelines and the WAL range held on each, \
including the end of the newest delta (the newest WAL stored). --json gives a stable schema (version 1).\n\n\
The WAL older than the last expire run is read from the WAL index that run stored (index/wal.json, \
sealed), and only the WAL written since is listed: the answer costs a few requests however large the \
archive. --full lists every WAL object instead, and so sees what changed in the store since that run."
)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// List every WAL object instead of reading the WAL index for the older ones.
    #[arg(long)]
    pub full: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `list --json` output, version 1.
#[derive(Debug, Serialize)]
struct ListOutput {
    version: u32,
    repository: String,
    system_identifier: String,
    pg_major: u32,
    encryption: String,
    backups: Vec<BackupSummary>,
    wal: WalSummary,
    wal_listing: WalListing,
}

/// How `list` learned the WAL part.
#[derive(Debug, Serialize)]
struct WalListing {
    /// `index` (the index of the last expire run, and a listing after it) or `full`.
    source: &'static str,
    /// When the expire run that stored the index listed `wal/`.
    index_time: Option<String>,
    /// WAL objects listed from the store (the rest came from the index).
    listed_objects: usize,
}

/// One backup in `list --json`.
#[derive(Debug, Serialize)]
struct BackupSummary {
    id: String,
    label: String,
    start_time: String,
    stop_time: String,
    duration_seconds: f64,
    size_bytes: u64,
    stored_bytes: u64,
    timeline: u32,
    start_lsn: String,
    stop_lsn: String,
    wal_first_segment: String,
    wal_last_segment: String,
    source_server: String,
    source_role: String,
    server_version: String,
}

/// Prints the listing.
///
/// # Errors
/// Store errors, or an empty repository.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (repo, manifest) = args.repo.open_existing().await?;
    let (inv, wal_listing) = scan_wal(&repo, manifest.wal_segment_size, args.full).await?;
    let backups = crate::backup::list_backups(&repo)
        .await
        .context("list backups")?;
    let backups: Vec<BackupSummary> = backups
        .into_iter()
        .map(|b| BackupSummary {
            id: b.id,
            label: b.label,
            start_time: crate::format::time::to_text(&b.start_time),
            stop_time: crate::format::time::to_text(&b.stop_time),
            duration_seconds: b.duration_seconds,
            size_bytes: b.plain_bytes,
            stored_bytes: b.stored_bytes,
            timeline: b.timeline.get(),
            start_lsn: b.start_lsn.to_string(),
            stop_lsn: b.stop_lsn.to_string(),
            wal_first_segment: b.wal_range.first_segment,
            wal_last_segment: b.wal_range.last_segment,
            source_server: b.source.server,
            source_role: b.source.role,
            server_version: b.server_version,
        })
        .collect();
    let out = ListOutput {
        version: 1,
        repository: repo.display().to_string(),
        system_identifier: manifest.system_identifier.clone(),
        pg_major: manifest.pg_major,
        encryption: manifest.encryption.clone(),
        backups,
        wal: summarize(&inv, manifest.wal_segment_size),
        wal_listing,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializes")
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("repository  {}", out.repository);
    println!(
        "system id   {}   PostgreSQL {}   encryption {}",
        out.system_identifier, out.pg_major, out.encryption
    );
    println!("segment     {} bytes", out.wal.wal_segment_size);
    println!();
    println!(
        "{:<18} {:<20} {:>10} {:>10} {:>9}  {:<27} from",
        "backup", "started", "size", "stored", "duration", "WAL"
    );
    for b in &out.backups {
        println!(
            "{:<18} {:<20} {:>10} {:>10} {:>8.1}s  {:<27} {} ({})",
            b.id,
            b.start_time,
            human_bytes(b.size_bytes),
            human_bytes(b.stored_bytes),
            b.duration_seconds,
            format!("{}..{}", b.start_lsn, b.stop_lsn),
            b.source_server,
            b.source_role
        );
    }
    if out.backups.is_empty() {
        println!("(no backups yet)");
    }
    println!();
    println!(
        "{:<9} {:<14} {:<14} {:>9} {:>8} {:>12}  gaps",
        "timeline", "start", "end", "segments", "partial", "stored"
    );
    for t in &out.wal.timelines {
        println!(
            "{:<9} {:<14} {:<14} {:>9} {:>8} {:>12}  {}",
            t.timeline,
            t.start_lsn,
            t.end_lsn,
            t.complete_segments,
            t.partial_segments,
            t.stored_bytes,
            if t.missing_segments.is_empty() {
                "none".to_string()
            } else {
                t.missing_segments.join(",")
            }
        );
    }
    if out.wal.timelines.is_empty() {
        println!("(no WAL yet)");
    }
    if let Some(time) = &out.wal_listing.index_time {
        println!();
        println!(
            "WAL before the last expire run ({time}) from its index; {} objects listed after it (--full lists all)",
            out.wal_listing.listed_objects
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The archive's inventory: from the WAL index of the last expire run
/// unless `full` (see [`WalInventory::scan_latest`]).
async fn scan_wal(
    repo: &Repository,
    segment_size_bytes: u64,
    full: bool,
) -> anyhow::Result<(WalInventory, WalListing)> {
    let (inv, source) = match WalInventory::scan_latest(repo, segment_size_bytes, !full).await {
        Ok(scanned) => scanned,
        Err(ScanError::Index(e)) => {
            return Err(anyhow::Error::new(e).context(format!(
                "the WAL index ({}) is unusable: `walvault list --full` lists every WAL object \
                 without it, and the next expire run replaces it",
                layout::WAL_INDEX
            )));
        }
        Err(ScanError::Store(e)) => return Err(anyhow::Error::new(e).context("list WAL")),
    };
    let listing = WalListing {
        source: if source.index_time.is_some() {
            "index"
        } else {
            "full"
        },
        index_time: source.index_time.map(|t| crate::format::time::to_text(&t)),
        listed_objects: source.listed_objects,
    };
    Ok((inv, listing))
}
