//! `walvault wal-fetch FILENAME DEST`: the read path for restore_command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::lsn::WalFileName;
use crate::wal::archive::{FetchedWal, fetch_wal_file};

use super::RepoArgs;

/// Arguments of `wal-fetch`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Fetch one WAL segment or timeline history file from the repository and write it \
to DEST, as restore_command = 'walvault wal-fetch %f %p' expects. A segment held only as deltas is written \
with its known bytes and zero-padded to the segment size. Exits 1 when the file is not in the archive."
)]
pub struct Args {
    /// The file name PostgreSQL asks for (%f): a 24-hex segment or 0000000N.history.
    pub file_name: String,
    /// Where to write it (%p).
    pub dest: PathBuf,
    #[command(flatten)]
    pub repo: RepoArgs,
}

/// Fetches and writes the file.
///
/// # Errors
/// Store or integrity errors; a missing file is exit code 1, not an error.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (repo, manifest) = args.repo.open_existing().await?;
    let file = WalFileName::parse(&args.file_name, manifest.wal_segment_size).map_err(|e| {
        crate::config::Error::Invalid {
            what: "file name",
            value: args.file_name.clone(),
            reason: e.to_string(),
        }
    })?;
    let Some(fetched) = fetch_wal_file(&repo, file, manifest.wal_segment_size)
        .await
        .with_context(|| format!("fetch {}", args.file_name))?
    else {
        eprintln!(
            "walvault wal-fetch: {} is not in the archive",
            args.file_name
        );
        return Ok(ExitCode::from(1));
    };
    let bytes = match fetched {
        FetchedWal::Complete(b) | FetchedWal::History(b) => b,
        FetchedWal::Partial { bytes, .. } => bytes,
    };
    write_atomically(&args.dest, &bytes)
        .with_context(|| format!("write {}", args.dest.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// Writes to a temporary file beside `dest`, syncs it and renames it into place,
/// so PostgreSQL never sees a half-written file.
fn write_atomically(dest: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.walvault-tmp",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("wal")
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dest)
}
