//! `walvault verify`: check backups object by object and file by file.

use std::process::ExitCode;

use anyhow::Context;

use crate::backup::list_backups;
use crate::verify::verify_backup;

use super::RepoArgs;

/// Arguments of `verify`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Read every part of a backup back, decrypt and check it, walk its tar streams and \
compare each file's size and CRC32C with the server's backup manifest, and check that the backup's WAL range \
is in the repository. Every problem is reported with the object and file it concerns. Exits 1 if anything \
fails."
)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Verify only this backup (default: all).
    #[arg(long)]
    pub backup: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Verifies and prints the report.
///
/// # Errors
/// Store errors, or an unknown backup id.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (repo, _) = args.repo.open_existing().await?;
    let mut backups = list_backups(&repo).await.context("list backups")?;
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
                    "backup {}: OK ({} parts, {} files match the server's manifest, WAL range present)",
                    report.id, report.parts_checked, report.files_checked
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
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).expect("serializes")
        );
    }
    if backups.is_empty() && !args.json {
        println!("no backups to verify");
    }
    let failed = reports.iter().any(|r| !r.failures.is_empty());
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
