//! `walvault wal-fetch FILENAME DEST`: the read path for restore_command.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::restore::serve::{FetchAction, FetchRequest, Served, wal_fetch};

use super::args::RepoArgs;

/// Arguments of `wal-fetch`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Fetch one WAL segment or timeline history file from the repository and write it \
to DEST, as restore_command = 'walvault wal-fetch %f %p' expects. A segment held only as deltas is written \
with its known bytes and zero-padded to the segment size. Exits 1 when the file is not in the archive, and 200 when it cannot be served (a store that stayed \
unreachable for --fetch-timeout, a damaged object, a wrong key): PostgreSQL stops recovery on a status above 125 \
instead of ending it early.\n\n\
With --spool DIR, each segment served starts a background worker that fetches the next --prefetch \
segments in parallel into DIR (at most --spool-max bytes), so replay finds them there. \
`walvault wal-fetch --spool DIR --clean-spool` (as recovery_end_command) stops the worker and removes DIR; \
walvault restore sets both up.",
    after_long_help = "Examples (postgresql.conf; walvault restore writes these):\
\n  restore_command = 'walvault wal-fetch --repo-config /srv/pg/restored.walvault.json %f %p'\
\n  restore_command = 'walvault wal-fetch --repo-config /srv/pg/restored.walvault.json --spool pg_wal/walvault-spool --prefetch 8 %f %p'\
\n  recovery_end_command = 'walvault wal-fetch --repo-config /srv/pg/restored.walvault.json --spool pg_wal/walvault-spool --clean-spool'\
\n  pg_rewind --restore-target-wal with restore_command = 'walvault wal-fetch --exact --repo-config /etc/walvault/repository.json %f %p'\
\n\
\nExit codes: 0 the file is written to DEST; 1 it is not in the archive; 200 anything else (a bad flag, an\
\nunreachable store after --fetch-timeout, a damaged object, a wrong key): PostgreSQL stops recovery on a status\
\nabove 125 instead of ending it early."
)]
pub struct Args {
    /// The file name PostgreSQL asks for (%f): a 24-hex segment or 0000000N.history.
    #[arg(required_unless_present_any = ["clean_spool", "prefetch_worker"])]
    pub file_name: Option<String>,
    /// Where to write it (%p).
    #[arg(required_unless_present_any = ["clean_spool", "prefetch_worker"])]
    pub dest: Option<PathBuf>,
    /// Spool directory for segments fetched ahead of replay.
    #[arg(long)]
    pub spool: Option<PathBuf>,
    /// How many segments after the one asked for are fetched ahead, in parallel (0: none).
    #[arg(long, default_value_t = 8, requires = "spool")]
    pub prefetch: u64,
    /// Most bytes the spool may hold.
    #[arg(long, default_value = "512MiB", value_parser = parse_size, requires = "spool")]
    pub spool_max: u64,
    /// How long a store that fails or does not answer is retried before wal-fetch gives up
    /// (exit 200, and PostgreSQL stops recovery).
    #[arg(long, default_value = "5m", value_parser = crate::config::parse_duration)]
    pub fetch_timeout: std::time::Duration,
    /// Serve exactly the file asked for, as pg_rewind --restore-target-wal needs: only what the
    /// archive holds whole (a segment held only in part is not in the archive, exit 1), no
    /// prefetch, no spool, and no restore plan from the settings file.
    #[arg(long, conflicts_with_all = ["spool", "clean_spool", "prefetch_worker"])]
    pub exact: bool,
    /// Stop the prefetch worker and remove the spool (recovery_end_command), then exit.
    #[arg(long, requires = "spool")]
    pub clean_spool: bool,
    /// Internal: run as the prefetch worker.
    #[arg(long, hide = true, requires = "spool")]
    pub prefetch_worker: bool,
    #[command(flatten)]
    pub repo: RepoArgs,
}

fn parse_size(s: &str) -> Result<u64, String> {
    crate::config::parse_byte_size(s).map_err(|e| e.to_string())
}

/// Fetches and writes the file.
///
/// # Errors
/// Store or integrity errors; a missing file is exit code 1, not an error.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let action = if args.clean_spool {
        FetchAction::CleanSpool
    } else if args.prefetch_worker {
        FetchAction::PrefetchWorker
    } else {
        FetchAction::Serve {
            name: args.file_name.clone().expect("required by clap"),
            dest: args.dest.clone().expect("required by clap"),
        }
    };
    let request = FetchRequest {
        action,
        spool: args.spool.clone(),
        prefetch: args.prefetch,
        spool_max_bytes: args.spool_max,
        fetch_timeout: args.fetch_timeout,
        exact: args.exact,
    };
    let source = args.repo.source()?;
    match wal_fetch(&request, &source).await? {
        Served::NotInArchive => {
            if let Some(name) = &args.file_name {
                eprintln!("walvault wal-fetch: {name} is not in the archive");
            }
            Ok(ExitCode::from(1))
        }
        Served::Fetched => Ok(ExitCode::SUCCESS),
    }
}
