//! `walvault list`: what the repository holds.

use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use crate::wal::archive::{WalInventory, WalSummary, summarize};

use super::RepoArgs;

/// Arguments of `list`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Show the repository's identity, its timelines and the WAL range held on each, \
including the end of the newest delta (the newest WAL stored). --json gives a stable schema (version 1)."
)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
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
    wal: WalSummary,
}

/// Prints the listing.
///
/// # Errors
/// Store errors, or an empty repository.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let repo = args.repo.open()?;
    let manifest = repo
        .open_manifest()
        .await?
        .with_context(|| format!("repository {} is empty (no walvault.json)", repo.display()))?;
    let inv = WalInventory::scan(&repo, manifest.wal_segment_size)
        .await
        .context("list WAL")?;
    let out = ListOutput {
        version: 1,
        repository: repo.display().to_string(),
        system_identifier: manifest.system_identifier.clone(),
        pg_major: manifest.pg_major,
        encryption: manifest.encryption.clone(),
        wal: summarize(&inv, manifest.wal_segment_size),
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
    Ok(ExitCode::SUCCESS)
}
