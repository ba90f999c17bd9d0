//! `walvault expire`: remove what the retention policy no longer keeps.

use std::process::ExitCode;

use anyhow::Context;

use crate::progress::human_bytes;
use crate::retention::expire::{ExpireOptions, ExpireReport};

use super::args::{RepoArgs, RetentionArgs};

/// Arguments of `expire`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Remove the backups and WAL that the retention policy no longer keeps. Policies add up \
(a backup stays if any keeps it): --retain-full N, --retain-window 30d, --retain-daily/weekly/monthly/yearly N. \
The newest restorable backup, backups pinned with `walvault keep` and the WAL each kept backup needs always stay; \
point-in-time recovery stays possible from the oldest backup kept by --retain-full or --retain-window (else the \
newest) to the end of the archive. History files are never removed. Nothing is removed while a backup runs. \
Leftovers of interrupted backups and deltas superseded by whole segments are collected. --dry-run prints the \
same plan and removes nothing.",
    after_long_help = "Examples:\
\n  walvault expire --config walvault.toml --retain-window 30d --retain-monthly 12 --dry-run\
\n  walvault expire --config walvault.toml --retain-full 7 --json"
)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Print what would be removed, and why, without removing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: apply the policy as at this time (RFC 3339), to see what a later run removes.
    #[arg(long, requires = "dry_run", value_parser = parse_time)]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// Print JSON (schema version 1).
    #[arg(long)]
    pub json: bool,
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{text:?}: {e} (use RFC 3339, e.g. 2026-05-01T00:00:00Z)"))
}

/// Applies the policy and prints what went.
///
/// # Errors
/// No policy given (configuration); store errors.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let policy = args.retention.policy();
    if policy.is_empty() {
        return Err(crate::config::Error::Missing(
            "a retention policy: --retain-full, --retain-window or --retain-daily/weekly/monthly/yearly",
        )
        .into());
    }
    let (repo, manifest) = args.repo.open_existing().await?;
    let opts = ExpireOptions {
        policy,
        now: args.at.unwrap_or_else(chrono::Utc::now),
        dry_run: args.dry_run,
        orphan_grace: crate::backup::DEFAULT_ORPHAN_GRACE,
    };
    let report = crate::retention::expire::run(&repo, manifest.wal_segment_size, &opts)
        .await
        .context("expire")?;
    tracing::info!(requests = repo.requests().summary(), "store requests");
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serializes")
        );
    } else {
        print_report(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &ExpireReport) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    if let Some(why) = &r.skipped {
        println!("expire skipped: {why}");
        return;
    }
    println!(
        "expire at {}{}",
        r.time,
        if r.dry_run { " (dry run)" } else { "" }
    );
    for k in &r.kept {
        println!("keep    {:<20} {}", k.id, k.reasons.join(", "));
    }
    for b in &r.removed {
        println!(
            "{verb:<7} {:<20} stopped {}, {}",
            b.id,
            b.stop_time,
            human_bytes(b.stored_bytes)
        );
    }
    println!(
        "WAL: {verb} {} objects ({}) below {}; {} superseded deltas; recovery possible from {}",
        r.wal_objects_removed,
        human_bytes(r.wal_bytes_removed),
        r.floor_lsn.map_or("-".into(), |l| l.to_string()),
        r.superseded_deltas_removed,
        r.horizon_lsn
            .map_or("the archive's start".into(), |l| l.to_string()),
    );
    for id in &r.interrupted_backups_removed {
        println!("{verb} the leftovers of interrupted backup {id}");
    }
    for id in &r.pins_removed {
        println!("{verb} the lapsed pin of {id}");
    }
}
