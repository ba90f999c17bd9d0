//! `walvault wal-push %p`: PostgreSQL's `archive_command`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::wal::push::{Pushed, push};

use super::args::RepoArgs;

/// Arguments of `wal-push`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Archive one file PostgreSQL hands to archive_command (a WAL segment, a .partial segment or \
timeline history file at a promotion, a backup history file) into the repository, in the same format and \
layout as walvault stream. Beside the sidecar it is belt and braces: a segment the stream already stored is \
compared and acknowledged at once (other bytes are an error naming both, never overwritten), and one it has \
not stored yet is stored here, so PostgreSQL keeps every segment until it is in the repository, whatever \
happens to the slot or the sidecar. Alone it is a per-file archiver (the data-loss window is one segment, or \
archive_timeout). A segment is read as this cluster's WAL before it is stored. The repository settings come \
from the configuration file (--config) or the environment, never from archive_command's command line. Exit 0: \
stored (or held already); anything else: PostgreSQL keeps the file and retries.",
    after_long_help = "Examples (postgresql.conf):\
\n  archive_mode = on\
\n  archive_command = 'walvault --config /etc/walvault/walvault.toml wal-push %p'\
\n  archive_command = 'walvault wal-push --repo-config /etc/walvault/repository.json %p'"
)]
pub struct Args {
    /// The file to archive (%p: its path relative to the data directory).
    pub path: PathBuf,
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// Archives the file.
///
/// # Errors
/// Configuration, store and integrity errors: PostgreSQL retries.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let repo = args.repo.source()?.open_for_writing().await?;
    let pushed = push(&repo, &args.path)
        .await
        .with_context(|| format!("archive {}", args.path.display()))?;
    match pushed {
        Pushed::Stored => tracing::info!(file = %args.path.display(), "archived"),
        Pushed::AlreadyStored => {
            tracing::info!(file = %args.path.display(), "already in the repository, same bytes");
        }
        Pushed::NotNeeded => {
            tracing::info!(file = %args.path.display(), "a backup history file: not needed, acknowledged");
        }
    }
    Ok(ExitCode::SUCCESS)
}
