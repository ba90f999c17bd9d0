//! `walvault mark NAME`: a named restore point, stored before it is reported.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::config::parse_duration;
use crate::lsn::Lsn;
use crate::protocol::ConnInfo;

use super::args::RepoArgs;

/// Arguments of `mark`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Create a named restore point on the server (pg_create_restore_point), wait until its WAL is \
stored in the repository by the running `walvault stream`, record it, and print its name, LSN and time. Run it \
before a schema migration: `walvault restore --target-name NAME` brings the cluster back to that moment, from a \
backup that ends before it. Names: 1-63 letters, digits, '.', '_' or '-', each used once. The role needs \
EXECUTE on pg_create_restore_point (superusers have it).",
    after_long_help = "Examples:\
\n  walvault mark --config walvault.toml before-migration-42\
\n  walvault restore --config walvault.toml --pgdata /srv/pg/undo --target-name before-migration-42"
)]
pub struct Args {
    /// The restore point's name.
    pub name: String,
    /// PostgreSQL connection string, as for `stream` (an SQL session to `dbname`, default postgres).
    #[arg(long, env = "WALVAULT_PG", default_value = "")]
    pub pg: String,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// How long to wait for the restore point's WAL to be stored.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Output {
    name: String,
    lsn: Lsn,
    timeline: u32,
    time: String,
}

/// Creates the mark and prints it.
///
/// # Errors
/// A bad or taken name (exit 2), a server or store failure, or WAL not
/// stored in time (exit 1; nothing recorded).
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let conninfo = ConnInfo::parse(&args.pg, &|k| std::env::var(k).ok()).context("parse --pg")?;
    crate::format::mark::validate_name(&args.name).map_err(|reason| {
        crate::config::Error::Invalid {
            what: "mark name",
            value: args.name.clone(),
            reason,
        }
    })?;
    let repo = args.repo.open()?;
    let mark = crate::wal::mark::create(&conninfo, &repo, &args.name, args.timeout)
        .await
        .context("mark")?;
    let out = Output {
        name: mark.name,
        lsn: mark.lsn,
        timeline: mark.timeline.get(),
        time: crate::format::time::to_text(&mark.time),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializes")
        );
    } else {
        println!(
            "mark {} at {} (timeline {}), {}: stored; undo what follows with walvault restore --target-name {}",
            out.name, out.lsn, out.timeline, out.time, out.name
        );
    }
    Ok(ExitCode::SUCCESS)
}
