//! `walvault wal-fetch FILENAME DEST`: the read path for restore_command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::lsn::WalFileName;
use crate::restore::spool::{PrefetchSettings, Spool};
use crate::wal::archive::{FetchedWal, fetch_wal_file};

use super::RepoArgs;

/// Arguments of `wal-fetch`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Fetch one WAL segment or timeline history file from the repository and write it \
to DEST, as restore_command = 'walvault wal-fetch %f %p' expects. A segment held only as deltas is written \
with its known bytes and zero-padded to the segment size. Exits 1 when the file is not in the archive.\n\n\
With --spool DIR, each segment served starts a background worker that fetches the next --prefetch \
segments in parallel into DIR (at most --spool-max bytes), so replay finds them there. \
`walvault wal-fetch --spool DIR --clean-spool` (as recovery_end_command) stops the worker and removes DIR; \
walvault restore sets both up."
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

/// How long a wal-fetch waits for a segment the worker is fetching.
const SPOOL_WAIT: Duration = Duration::from_secs(60);

/// Fetches and writes the file.
///
/// # Errors
/// Store or integrity errors; a missing file is exit code 1, not an error.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let spool = args
        .spool
        .as_ref()
        .filter(|_| args.prefetch > 0 || args.clean_spool)
        .map(Spool::new);
    if args.clean_spool {
        let spool = spool.expect("--clean-spool requires --spool");
        tokio::task::spawn_blocking(move || spool.clean(SPOOL_WAIT))
            .await
            .expect("cleaning does not panic")
            .context("clean the spool")?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.prefetch_worker {
        let Some(spool) = spool else {
            return Ok(ExitCode::SUCCESS);
        };
        let (repo, manifest) = args.repo.open_existing().await?;
        let settings = PrefetchSettings {
            depth: args.prefetch,
            max_bytes: args.spool_max,
        };
        let n = spool
            .run_worker(&repo, manifest.wal_segment_size, settings)
            .await
            .with_context(|| format!("prefetch into {}", spool.dir().display()))?;
        tracing::debug!(segments = n, "prefetch worker done");
        return Ok(ExitCode::SUCCESS);
    }
    let name = args.file_name.clone().expect("required by clap");
    let dest = args.dest.clone().expect("required by clap");
    // Segments only: history files are small and asked for once.
    let spool = spool.filter(|s| {
        name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit()) && !s.is_stopping()
    });
    if let Some(spool) = &spool {
        let (s, n, d) = (spool.clone(), name.clone(), dest.clone());
        let hit = tokio::task::spawn_blocking(move || s.take(&n, &d, SPOOL_WAIT))
            .await
            .expect("take does not panic")
            .unwrap_or(false);
        if hit {
            start_prefetch(spool, &name);
            return Ok(ExitCode::SUCCESS);
        }
    }
    let (repo, manifest) = args.repo.open_existing().await?;
    let file = WalFileName::parse(&name, manifest.wal_segment_size).map_err(|e| {
        crate::config::Error::Invalid {
            what: "file name",
            value: name.clone(),
            reason: e.to_string(),
        }
    })?;
    let Some(fetched) = fetch_wal_file(&repo, file, manifest.wal_segment_size)
        .await
        .with_context(|| format!("fetch {name}"))?
    else {
        eprintln!("walvault wal-fetch: {name} is not in the archive");
        return Ok(ExitCode::from(1));
    };
    let bytes = match fetched {
        FetchedWal::Complete(b) | FetchedWal::History(b) => b,
        FetchedWal::Partial { bytes, .. } => bytes,
    };
    write_atomically(&dest, &bytes).with_context(|| format!("write {}", dest.display()))?;
    if let Some(spool) = &spool {
        start_prefetch(spool, &name);
    }
    Ok(ExitCode::SUCCESS)
}

/// Records the request and starts a worker unless one runs. Prefetching is
/// an optimisation: failures are logged, never returned.
fn start_prefetch(spool: &Spool, name: &str) {
    let started = (|| -> std::io::Result<()> {
        spool.create()?;
        spool.request(name)?;
        if spool.worker_running() {
            return Ok(());
        }
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(spool.dir().join("prefetch.log"))?;
        use std::os::unix::process::CommandExt;
        std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .arg("--prefetch-worker")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()?;
        Ok(())
    })();
    if let Err(e) = started {
        tracing::warn!(spool = %spool.dir().display(), error = %e, "could not start prefetching");
    }
}

/// Writes to a temporary file beside `dest` and renames it into place, so
/// PostgreSQL never sees a half-written file. No fsync: the file is a copy
/// of what the archive holds, and PostgreSQL syncs what it keeps.
fn write_atomically(dest: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.walvault-tmp",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal")
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dest)
}
