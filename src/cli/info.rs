//! `walvault info`: the repository in one screen.

use std::process::ExitCode;

use anyhow::Context;

use crate::progress::human_bytes;
use crate::protocol::ConnInfo;

use super::args::RepoArgs;

/// Arguments of `info`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Show the repository for the operator in one screen: backups with sizes and durations, what can \
be restored on each timeline (from the earliest backup's stop to about when the newest WAL was stored), the \
archive's end and, with --pg, how many bytes of WAL the server holds that the archive does not, the retention in \
force, pinned backups and marks. --json gives the same (schema version 2, docs/operations.md).",
    after_long_help = "Examples:\
\n  walvault info --config walvault.toml\
\n  walvault info --config walvault.toml --pg 'host=db.internal user=walvault' --keys --json"
)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The server, to show the archive's lag behind it (as for `stream`).
    #[arg(long, env = "WALVAULT_PG")]
    pub pg: Option<String>,
    /// Count the objects and bytes each key seals (reads every object's header).
    #[arg(long)]
    pub keys: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints the information.
///
/// # Errors
/// Store errors, or an empty repository.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let repo = args.repo.open()?;
    let conninfo = match &args.pg {
        Some(text) => {
            Some(ConnInfo::parse(text, &|k| std::env::var(k).ok()).context("parse --pg")?)
        }
        None => None,
    };
    let info = crate::inspect::info::gather(&repo, conninfo.as_ref(), args.keys)
        .await
        .context("read the repository")?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&info).expect("serializes")
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "repository {}  (system {}, PostgreSQL {}, encryption {})",
        info.repository, info.system_identifier, info.pg_major, info.encryption
    );
    println!();
    println!(
        "{:<20} {:<21} {:>9} {:>10} {:>10}  notes",
        "backup", "restorable from", "took", "size", "stored"
    );
    for b in &info.backups {
        let mut notes = Vec::new();
        if !b.restorable {
            notes.push("WAL range incomplete");
        }
        if b.pinned {
            notes.push("pinned");
        }
        let earlier;
        if b.system_identifier != info.system_identifier {
            earlier = format!(
                "system {} (PostgreSQL {}, before the upgrade)",
                b.system_identifier, b.pg_major
            );
            notes.push(&earlier);
        }
        println!(
            "{:<20} {:<21} {:>8.1}s {:>10} {:>10}  {}",
            b.id,
            b.stop_time,
            b.duration_seconds,
            human_bytes(b.size_bytes),
            human_bytes(b.stored_bytes),
            notes.join(", ")
        );
        if !b.annotations.is_empty() {
            println!("{:<20} {}", "", annotation_text(&b.annotations));
        }
    }
    for l in &info.locked_backups {
        println!(
            "{:<20} sealed with key {}, which the key file lacks: give a key file that holds it",
            l.id, l.key_id
        );
    }
    if info.backups.is_empty() {
        println!("(no backups: nothing can be restored)");
    }
    println!();
    for t in &info.timelines {
        match (&t.earliest_restorable_time, &t.latest_restorable_time) {
            (Some(from), Some(to)) => println!(
                "timeline {}: restorable from {} (backup {}) to about {}; archive end {}",
                t.timeline,
                from,
                t.earliest_backup.as_deref().unwrap_or("-"),
                to,
                t.archive_end_lsn.map_or("-".into(), |l| l.to_string())
            ),
            _ => println!(
                "timeline {}: no backup restores onto it; archive end {}",
                t.timeline,
                t.archive_end_lsn.map_or("-".into(), |l| l.to_string())
            ),
        }
    }
    for e in &info.earlier_systems {
        match &e.earliest_restorable_time {
            Some(from) => println!(
                "system {} (PostgreSQL {}, until the upgrade on {}): restorable from {} (backup {}) to about {}, WAL under {}",
                e.system_identifier,
                e.pg_major,
                e.until,
                from,
                e.earliest_backup.as_deref().unwrap_or("-"),
                e.latest_wal_time.as_deref().unwrap_or("-"),
                e.wal_prefix
            ),
            None => println!(
                "system {} (PostgreSQL {}, until the upgrade on {}): {} backups, none restorable; WAL under {}",
                e.system_identifier, e.pg_major, e.until, e.backups, e.wal_prefix
            ),
        }
    }
    if let Some(f) = &info.last_failed_backup {
        println!(
            "last failed backup {} on {}: {}",
            f.time,
            f.host.as_deref().unwrap_or("-"),
            f.error.as_deref().unwrap_or("-")
        );
    }
    if let Some(age) = info.wal_age_seconds {
        println!("newest WAL stored {age}s ago");
    }
    if let Some(s) = &info.server {
        println!(
            "server {} at {} (timeline {}): {} behind",
            s.target,
            s.wal_lsn,
            s.timeline,
            s.lag_bytes.map_or("-".to_string(), human_bytes)
        );
    }
    match &info.retention {
        Some(r) => println!(
            "retention: last expire {} with {}; floor {}",
            r.last_run,
            serde_json::to_string(&r.policy).expect("serializes"),
            r.floor_lsn.map_or("-".into(), |l| l.to_string())
        ),
        None => println!("retention: expire has never run (everything is kept)"),
    }
    for p in &info.pins {
        println!(
            "pinned {}: {}{}",
            p.backup_id,
            p.reason.as_deref().unwrap_or("(no reason)"),
            p.until
                .as_ref()
                .map(|u| format!(" until {u}"))
                .unwrap_or_default()
        );
    }
    match &info.last_drill {
        Some(d) if d.success => println!(
            "last drill {}: succeeded (backup {}, RTO {:.1}s): {}",
            crate::format::time::to_text(&d.time),
            d.backup_id.as_deref().unwrap_or("-"),
            d.rto_seconds,
            d.message
        ),
        Some(d) => println!(
            "last drill {}: FAILED (backup {}): {}",
            crate::format::time::to_text(&d.time),
            d.backup_id.as_deref().unwrap_or("-"),
            d.message
        ),
        None => println!("last drill: none (walvault drill tests a restore)"),
    }
    for k in &info.keys {
        println!(
            "key {}{}{}",
            k.id,
            if k.seals_new_objects {
                " (seals new objects)"
            } else {
                ""
            },
            match (k.objects, k.bytes) {
                (Some(o), Some(b)) => format!(": {o} objects, {}", human_bytes(b)),
                _ => String::new(),
            }
        );
    }
    for m in &info.marks {
        println!(
            "mark {} at {} (timeline {}), {}",
            m.name, m.lsn, m.timeline, m.time
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A backup's annotations on one line: `key=value, key=value`.
pub(super) fn annotation_text(annotations: &std::collections::BTreeMap<String, String>) -> String {
    annotations
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
