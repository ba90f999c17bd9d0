//! `walvault copy`: a copy of the repository in another place.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use crate::config::settings_file::load_repository_config;
use crate::progress::Progress;
use crate::storage::{OpenMode, Repository};

use super::args::RepoArgs;

/// Arguments of `copy`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Copy the repository into another place (another bucket, region, account or store kind): \
every backup, WAL segment and delta, history file, retention and audit record, byte for byte under the same \
names, so the copy is the same repository and restore, verify, list and drill read it alone, with the same \
key. Resumable and idempotent: a rerun copies only what the copy lacks, and everything copied is written \
create-only and read back. Each backup.json is copied after its backup's parts, and walvault.json last, so \
a copy that was interrupted is never taken for a complete one. Objects removed from this repository stay in \
the copy: run `walvault expire` on the copy with its own policy. Running backups and the stream's lease are \
not copied.",
    after_long_help = "Examples:\
\n  walvault copy --config walvault.toml --to s3://backups-eu-west-2/cluster-1\
\n  walvault copy --config walvault.toml --to-repo-config /etc/walvault/copy.json --json\
\n  walvault restore --repo s3://backups-eu-west-2/cluster-1 --key-file walvault.key --pgdata /srv/pg --target-time '2026-12-07 10:00:00Z'"
)]
pub struct Args {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The copy's URL (s3://, gs://, az://, file:// or a path); its store's credentials come from
    /// the environment.
    #[arg(
        long,
        required_unless_present = "to_repo_config",
        conflicts_with = "to_repo_config"
    )]
    pub to: Option<String>,
    /// A JSON settings file for the copy (as --repo-config: "repo" and the store's "options"),
    /// for a copy whose store needs other credentials than this repository's.
    #[arg(long)]
    pub to_repo_config: Option<PathBuf>,
    /// Objects copied at once; each is held in memory twice (written, then read back), so with
    /// backup parts of 16 MiB the default holds up to 128 MiB.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Output<'a> {
    from: &'a str,
    to: &'a str,
    #[serde(flatten)]
    report: &'a crate::storage::CopyReport,
}

/// Copies and reports.
///
/// # Errors
/// A copy place that holds another repository (exit 2); an object the copy
/// holds with other content, named; store errors.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let source = args.repo.source()?;
    let (repo, _) = source.open_existing().await?;
    let (url, options) = match &args.to_repo_config {
        Some(path) => {
            let cfg = load_repository_config(path)?;
            (cfg.repo, cfg.options.into_iter().collect::<Vec<_>>())
        }
        None => (args.to.clone().expect("required by clap"), Vec::new()),
    };
    let to = Repository::open_with_mode(
        &url,
        &options,
        crate::format::Keyring::default(),
        crate::format::chunk::SealOptions::default(),
        OpenMode {
            create: true,
            instance_credentials: source.mode.instance_credentials,
        },
    )
    .context("open the copy")?
    .with_keys_of(&repo);
    let progress = Progress::new(&format!("copy to {}", to.display()), 0);
    let result = repo
        .copy_into(&to, usize::from(args.concurrency), &|n| {
            progress.set_done(n)
        })
        .await;
    progress.finish();
    let outcome = match &result {
        Ok(r) => Ok(format!(
            "copied {} objects ({} bytes) from {}; {} were there, {} replaced",
            r.copied,
            r.copied_bytes,
            repo.display(),
            r.present,
            r.replaced
        )),
        Err(e) => Err(crate::error::chain(e)),
    };
    // The copy changed: it records the run (once it is a repository).
    to.audit("copy", Some(repo.display()), outcome).await;
    let report = result.context("copy the repository")?;
    if args.json {
        let out = Output {
            from: repo.display(),
            to: to.display(),
            report: &report,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&out).expect("serializes")
        );
    } else {
        println!(
            "copied {} objects ({}) to {}; {} were there already, {} replaced",
            report.copied,
            crate::progress::human_bytes(report.copied_bytes),
            to.display(),
            report.present,
            report.replaced,
        );
    }
    Ok(ExitCode::SUCCESS)
}
