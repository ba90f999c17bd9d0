//! `walvault log`: the audit trail, oldest first.

use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};

use crate::format::audit::OPERATIONS;

use super::args::{RepoArgs, parse_target_time};

/// Arguments of `log`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Show the audit trail: one sealed record per operation that changed the repository \
(backup, expire, keep, unkeep, mark, drill, key-add, key-retire), with when it ended, the host, the user and \
the result. Records are written create-only, sealed and bound to their name like every object: without the \
key nobody can forge, change or move one. A record that does not open is an error naming it.",
    after_long_help = "Examples:\
\n  walvault log --config walvault.toml\
\n  walvault log --config walvault.toml --operation backup --since '2026-12-01 00:00:00+00' --json"
)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Only records of this operation.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(OPERATIONS))]
    pub operation: Option<String>,
    /// Only records from this time on (with an explicit UTC offset).
    #[arg(long, value_parser = parse_target_time)]
    pub since: Option<DateTime<Utc>>,
    /// Only failures.
    #[arg(long)]
    pub failures: bool,
    /// Print JSON: {"version": 1, "records": [...], "unreadable_records": N}.
    #[arg(long)]
    pub json: bool,
}

/// Prints the records.
///
/// # Errors
/// Store errors; a record that does not open or parse.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (repo, _) = args.repo.open_existing().await?;
    let since = args.since.map(|t| t.format("%Y%m%dT%H%M%SZ").to_string());
    let (records, locked) = repo
        .read_audit(|stamp, operation| {
            since.as_deref().is_none_or(|s| stamp >= s)
                && args.operation.as_deref().is_none_or(|o| o == operation)
        })
        .await
        .context("read the audit trail")?;
    let records: Vec<_> = records
        .into_iter()
        .filter(|r| !args.failures || !r.succeeded())
        .collect();
    if args.json {
        let doc = serde_json::json!({
            "version": 1,
            "records": records,
            "unreadable_records": locked,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("serializes")
        );
        return Ok(ExitCode::SUCCESS);
    }
    for r in &records {
        println!(
            "{}  {:<10} {:<7}  {:<20}  {}@{}  {}",
            crate::format::time::to_text(&r.at),
            r.operation,
            r.result,
            r.target.as_deref().unwrap_or("-"),
            r.user,
            r.host,
            r.detail
        );
    }
    if records.is_empty() {
        println!("(no records)");
    }
    if locked > 0 {
        println!("{locked} records are sealed with a key the key file lacks (a retired key)");
    }
    Ok(ExitCode::SUCCESS)
}
