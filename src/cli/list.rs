//! `walvault list`: what the repository holds.

use std::process::ExitCode;

use crate::progress::human_bytes;

use super::args::RepoArgs;

/// Arguments of `list`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Show the repository's identity, its timelines and the WAL range held on each, \
including the end of the newest delta (the newest WAL stored). --json gives a stable schema (version 1).\n\n\
The WAL older than the last expire run is read from the WAL index that run stored (index/wal.json, \
sealed), and only the WAL written since is listed: the answer costs a few requests however large the \
archive. --full lists every WAL object instead, and so sees what changed in the store since that run.",
    after_long_help = "Examples:\
\n  walvault list --config walvault.toml\
\n  walvault list --repo s3://bucket/cluster-1 --key-file walvault.key --json\
\n  walvault list --config walvault.toml --full                 # list every WAL object, not the index"
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

/// Prints the listing.
///
/// # Errors
/// Store errors, or an empty repository.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (repo, manifest) = args.repo.open_existing().await?;
    let out = crate::inspect::list::gather(&repo, &manifest, args.full).await?;
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
        if b.system_identifier != out.system_identifier {
            println!(
                "{:<18} system {} (PostgreSQL {}), before the upgrade",
                "", b.system_identifier, b.pg_major
            );
        }
        if !b.annotations.is_empty() {
            println!(
                "{:<18} {}",
                "",
                super::info::annotation_text(&b.annotations)
            );
        }
    }
    for l in &out.locked_backups {
        println!(
            "{:<18} sealed with key {}, which the key file lacks",
            l.id, l.key_id
        );
    }
    if out.backups.is_empty() && out.locked_backups.is_empty() {
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
    for e in &out.earlier_systems {
        println!();
        println!(
            "system {} (PostgreSQL {}), before the upgrade: WAL under {}",
            e.system_identifier, e.pg_major, e.wal_prefix
        );
        for t in &e.wal.timelines {
            println!(
                "{:<9} {:<14} {:<14} {:>9} {:>8} {:>12}",
                t.timeline,
                t.start_lsn,
                t.end_lsn,
                t.complete_segments,
                t.partial_segments,
                t.stored_bytes
            );
        }
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
