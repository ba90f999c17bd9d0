//! `walvault keep`: pin a backup against retention, unpin it, or list pins.

use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use crate::format::retention::Pin;

use super::args::RepoArgs;

/// Arguments of `keep`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Pin a backup so that no retention policy removes it (expire keeps it and the WAL it \
needs to be consistent), optionally with a reason and an expiry. --unkeep removes the pin. Without a backup id, \
list the pins.",
    after_long_help = "Examples:\
\n  walvault keep --config walvault.toml 20261207T030000Z --reason 'audit 2026' --for 365d\
\n  walvault keep --config walvault.toml 20261207T030000Z --unkeep\
\n  walvault keep --config walvault.toml --json                 # list the pins"
)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The backup to pin (as `walvault list` shows it); omit to list the pins.
    pub backup: Option<String>,
    /// Why it is kept (shown by list, info and expire).
    #[arg(long, conflicts_with = "unkeep")]
    pub reason: Option<String>,
    /// The pin lapses after this long (e.g. 90d); default: never.
    #[arg(long = "for", value_name = "DURATION", value_parser = crate::config::parse_duration, conflicts_with = "unkeep")]
    pub for_duration: Option<std::time::Duration>,
    /// Remove the pin.
    #[arg(long, requires = "backup")]
    pub unkeep: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct PinOutput {
    backup_id: String,
    reason: Option<String>,
    created: String,
    until: Option<String>,
    holds: bool,
}

impl PinOutput {
    fn of(p: &Pin, now: chrono::DateTime<chrono::Utc>) -> Self {
        PinOutput {
            backup_id: p.backup_id.clone(),
            reason: p.reason.clone(),
            created: crate::format::time::to_text(&p.created),
            until: p.until.as_ref().map(crate::format::time::to_text),
            holds: p.holds_at(now),
        }
    }
}

/// Pins, unpins or lists.
///
/// # Errors
/// An unknown backup id (exit 2); store errors.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (repo, _) = args.repo.open_existing().await?;
    let now = chrono::Utc::now();
    let Some(id) = args.backup else {
        let pins = repo.read_pins().await.context("read pins")?;
        let out: Vec<PinOutput> = pins.iter().map(|p| PinOutput::of(p, now)).collect();
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&out).expect("serializes")
            );
        } else if out.is_empty() {
            println!("no backup is pinned");
        } else {
            for p in &out {
                println!(
                    "{:<20} {}{}{}",
                    p.backup_id,
                    p.reason.as_deref().unwrap_or("(no reason given)"),
                    p.until
                        .as_ref()
                        .map(|u| format!(", until {u}"))
                        .unwrap_or_default(),
                    if p.holds { "" } else { " (lapsed)" }
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    };
    if args.unkeep {
        crate::retention::pins::unpin(&repo, &id)
            .await
            .context("remove the pin")?;
        if !args.json {
            println!("backup {id} is no longer pinned");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let pin = crate::retention::pins::pin(&repo, &id, args.reason, args.for_duration, now).await?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&PinOutput::of(&pin, now)).expect("serializes")
        );
    } else {
        println!(
            "backup {id} is pinned{}",
            pin.until
                .map(|u| format!(" until {}", crate::format::time::to_text(&u)))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
