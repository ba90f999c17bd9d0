//! `walvault record-upgrade`: continue the repository with the cluster
//! `pg_upgrade` made.

use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use crate::protocol::ConnInfo;

use super::args::RepoArgs;

/// Arguments of `record-upgrade`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Record in the repository that its cluster was upgraded with pg_upgrade, which gives the cluster \
a new system identifier. Until this is run, walvault refuses to write the new cluster's WAL and backups \
into the repository, as it refuses any other cluster. Afterwards the stream, backups and wal-push write \
the new system, whose WAL is stored under systems/{system identifier}/; the backups and WAL of the \
earlier system stay listed, restorable (with that major's binaries), verified and counted by retention. \
The old cluster can never write into the repository again. Connect to the upgraded server (a replication \
connection, as for `stream`), then restart the sidecar.",
    after_long_help = "Examples:\
\n  pg_upgrade -b /usr/lib/postgresql/17/bin -B /usr/lib/postgresql/18/bin -d /srv/pg17 -D /srv/pg18\
\n  (start PostgreSQL 18 on /srv/pg18)\
\n  walvault record-upgrade --config walvault.toml --pg 'host=/run/postgresql user=walvault'\
\n  walvault backup --config walvault.toml     # the first backup of the new system"
)]
pub struct Args {
    /// PostgreSQL connection string of the upgraded server, as for `stream`.
    #[arg(long, env = "WALVAULT_PG", default_value = "")]
    pub pg: String,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct System {
    system_identifier: String,
    pg_major: u32,
    wal_segment_size: u64,
    /// Where its WAL is stored, relative to the repository.
    wal_prefix: String,
}

#[derive(Serialize)]
struct Output {
    current: System,
    earlier: Vec<System>,
}

/// Records the upgrade and prints the repository's systems.
///
/// # Errors
/// A server that is not a later system of this repository (exit 2); server
/// and store failures.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let conninfo = ConnInfo::parse(&args.pg, &|k| std::env::var(k).ok()).context("parse --pg")?;
    let (repo, _) = args.repo.open_existing().await?;
    let (conn, server) = crate::protocol::server::connect(&conninfo)
        .await
        .context("connect to the upgraded server")?;
    conn.terminate().await;
    let result = repo
        .record_upgrade(
            &server.identity.system_identifier,
            server.major,
            server.segment_size_bytes,
        )
        .await;
    let outcome = match &result {
        Ok(_) => Ok(format!(
            "recorded system {} (PostgreSQL {}) from {}",
            server.identity.system_identifier, server.major, server.target
        )),
        Err(e) => Err(crate::error::chain(e)),
    };
    repo.audit(
        "record-upgrade",
        Some(&server.identity.system_identifier),
        outcome,
    )
    .await;
    let manifest = result.context("record the upgrade")?;
    let systems: Vec<System> = manifest
        .systems()
        .into_iter()
        .map(|(id, pg_major, wal_segment_size)| {
            let wal_prefix = manifest
                .system_view(&id)
                .and_then(|v| v.wal_namespace())
                .unwrap_or_default()
                + crate::storage::layout::WAL_PREFIX;
            System {
                system_identifier: id,
                pg_major,
                wal_segment_size,
                wal_prefix,
            }
        })
        .collect();
    let mut earlier = systems;
    let current = earlier.pop().expect("the current system is listed");
    if args.json {
        let out = Output { current, earlier };
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializes")
        );
    } else {
        println!(
            "recorded the upgrade: the repository continues with system identifier {} (PostgreSQL {}), WAL under {}",
            current.system_identifier, current.pg_major, current.wal_prefix
        );
        for e in &earlier {
            println!(
                "earlier system {} (PostgreSQL {}): backups and WAL under {} stay restorable",
                e.system_identifier, e.pg_major, e.wal_prefix
            );
        }
        println!("restart the sidecar so that it streams the new system");
    }
    Ok(ExitCode::SUCCESS)
}
