//! `walvault verify`: check backups object by object and file by file.

use std::process::ExitCode;

use anyhow::Context;

use crate::inspect::verify::{WalReport, verify_backup, verify_wal};
use crate::progress::Progress;

use super::args::RepoArgs;

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Read every part of a backup back, decrypt and check it, walk its tar streams and \
compare each file's size and CRC32C with the server's backup manifest, and open every WAL segment and history \
file of the backup's range. With --wal, open every WAL object of the archive to its end and report its gaps. \
Every problem is reported with the object and file it concerns. Exits 1 if anything fails. --json prints the \
backups' reports (an array), or with --wal an object {\"backups\": [...], \"wal\": {...}}.",
    after_long_help = "Examples:\
\n  walvault verify --config walvault.toml                      # every backup\
\n  walvault verify --config walvault.toml --backup 20261207T030000Z --wal --json"
)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Verify only this backup (default: all).
    #[arg(long)]
    pub backup: Option<String>,
    /// Also open every WAL segment and history file of the archive, and report its gaps.
    #[arg(long)]
    pub wal: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Verifies and prints the report.
///
/// # Errors
/// Store errors, or an unknown backup id.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (repo, manifest) = args.repo.open_existing().await?;
    let mut backups = repo.list_backups().await.context("list backups")?;
    if let Some(id) = &args.backup {
        backups.retain(|b| &b.id == id);
        if backups.is_empty() {
            anyhow::bail!(crate::config::Error::Invalid {
                what: "--backup",
                value: id.clone(),
                reason: "no such backup in the repository (see walvault list)".into(),
            });
        }
    }
    let mut reports = Vec::new();
    for b in &backups {
        let report = verify_backup(&repo, b)
            .await
            .with_context(|| format!("verify backup {}", b.id))?;
        if !args.json {
            if report.failures.is_empty() {
                println!(
                    "backup {}: OK ({} parts, {} files match the server's manifest, WAL range present: {} WAL files open)",
                    report.id, report.parts_checked, report.files_checked, report.wal_files_checked
                );
            } else {
                println!("backup {}: {} problem(s)", report.id, report.failures.len());
                for f in &report.failures {
                    let place = [f.object.as_deref(), f.file.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" ");
                    println!("  FAILED {place}: {}", f.problem);
                }
            }
        }
        reports.push(report);
    }
    let wal = if args.wal {
        // Each system the repository holds (more than one after an upgrade).
        let mut report = WalReport {
            files_checked: 0,
            failures: Vec::new(),
        };
        let stored = repo.stored_identity().cloned().unwrap_or(manifest.clone());
        for (system, _, _) in stored.systems() {
            let system_repo = repo.for_system(&system)?;
            let view = stored.system_view(&system).expect("a system it holds");
            let progress = Progress::files(&format!("verify WAL of system {system}"), 0);
            let one = verify_wal(&system_repo, &view, &progress)
                .await
                .with_context(|| format!("verify the WAL of system {system}"))?;
            progress.finish();
            report.files_checked += one.files_checked;
            report.failures.extend(one.failures);
        }
        Some(report)
    } else {
        None
    };
    if args.json {
        let out = match &wal {
            None => serde_json::to_value(&reports),
            Some(w) => Ok(serde_json::json!({ "backups": reports, "wal": w })),
        }
        .expect("serializes");
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializes")
        );
    }
    if backups.is_empty() {
        // As check: nothing is restorable, a warning (exit 1).
        eprintln!(
            "walvault: no backups to verify: nothing can be restored from this repository (take one with walvault backup)"
        );
    }
    if let Some(w) = &wal
        && !args.json
    {
        if w.failures.is_empty() {
            println!("WAL: OK ({} files open, no gap)", w.files_checked);
        } else {
            println!(
                "WAL: {} problem(s) in {} files",
                w.failures.len(),
                w.files_checked
            );
            for f in &w.failures {
                println!(
                    "  FAILED {}: {}",
                    f.object.as_deref().unwrap_or(""),
                    f.problem
                );
            }
        }
    }
    let failed = backups.is_empty()
        || reports.iter().any(|r| !r.failures.is_empty())
        || wal.as_ref().is_some_and(|w| !w.failures.is_empty());
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
