//! `walvault check`: one line per part that must work, and an exit code a
//! monitoring system can use.

use std::process::ExitCode;

use serde::Serialize;

use crate::inspect::check::{self, Check, Status};
use crate::protocol::ConnInfo;

use super::args::{RepoArgs, parse_slot_name};

/// Arguments of `check`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Check that everything walvault needs is in place: the configuration, the server (version, \
role, wal_level, max_wal_senders, the slot's wal_status and safe_wal_size), the repository (credential source, \
write, read and delete of a probe object, create-only writes), the key, and that the newest backup restores to \
the archive's end without a gap. One line per check; exit 0 when all are ok, 1 on a warning, 2 on a critical \
finding. --json prints the same (schema version 1).",
    after_long_help = "Examples:\
\n  walvault check --config walvault.toml                       # exit 0 ok, 1 warning, 2 critical\
\n  walvault check --config walvault.toml --no-server --json    # the repository only"
)]
pub struct Args {
    /// PostgreSQL connection string, as for `stream` (PG* variables fill the gaps).
    #[arg(long, env = "WALVAULT_PG", default_value = "")]
    pub pg: String,
    /// The replication slot the sidecar uses.
    #[arg(long, env = "WALVAULT_SLOT", default_value = "walvault", value_parser = parse_slot_name)]
    pub slot: String,
    /// Check only the repository, not the server.
    #[arg(long)]
    pub no_server: bool,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Print JSON instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// `check --json`, version 1.
#[derive(Serialize)]
struct Output {
    version: u32,
    status: Status,
    checks: Vec<Check>,
}

/// Runs every check and prints them.
///
/// # Errors
/// None of its own: every problem is a finding, reflected in the exit code.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut checks = Vec::new();
    let conninfo = if args.no_server {
        None
    } else {
        match ConnInfo::parse(&args.pg, &|k| std::env::var(k).ok()) {
            Ok(c) => Some(c),
            Err(e) => {
                checks.push(Check {
                    name: "config",
                    status: Status::Critical,
                    message: format!("--pg: {e}"),
                });
                None
            }
        }
    };
    let repo = match args.repo.open() {
        Ok(r) => Some(r),
        Err(e) => {
            checks.push(Check {
                name: "config",
                status: Status::Critical,
                message: format!("repository settings: {}", crate::error::chain(e.as_ref())),
            });
            None
        }
    };
    if checks.is_empty() {
        checks.push(Check {
            name: "config",
            status: Status::Ok,
            message: "settings parse".into(),
        });
    }
    let mut system = None;
    if let Some(c) = &conninfo {
        let (server, identity) = check::check_server(c, &args.slot).await;
        checks.extend(server);
        system = identity;
    }
    if let Some(r) = &repo {
        checks.extend(check::check_repository(r).await);
        if let Some((id, size)) = &system {
            checks.extend(check::system_check(r, id, *size));
        }
    }
    let status = check::worst(&checks);
    if args.json {
        let out = Output {
            version: 1,
            status,
            checks,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializes")
        );
    } else {
        for c in &checks {
            println!("{:<8} {:<15} {}", c.status.label(), c.name, c.message);
        }
    }
    Ok(ExitCode::from(status.exit_code()))
}
