//! Local files written whole: the bytes go to a temporary name beside the
//! destination, which is then renamed over it, so a reader (PostgreSQL, a
//! prefetch worker) never sees a half-written file. This is the one place
//! that does so.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Whether a write must be on disk before it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Renamed into place, not fsynced: the file is a copy of something
    /// kept elsewhere (the archive), and whoever keeps it syncs it.
    Replaceable,
    /// The file and its directory are fsynced.
    Synced,
}

/// The temporary name a write to `dest` goes through.
fn temporary(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    dest.with_file_name(format!(".{name}.walvault-tmp"))
}

/// Writes `bytes` to `dest` (mode 0600, like the files of a data directory)
/// through a temporary file and a rename.
///
/// # Errors
/// I/O errors; the temporary file is removed on failure.
pub fn write_atomically(dest: &Path, bytes: &[u8], durability: Durability) -> std::io::Result<()> {
    write(dest, bytes, durability, 0o600)
}

/// Writes a file only its owner may read (mode 0600 from its creation on,
/// so no one else can open it even for a moment), synced.
///
/// # Errors
/// I/O errors; the temporary file is removed on failure.
pub fn write_private(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write(dest, bytes, Durability::Synced, 0o600)
}

fn write(dest: &Path, bytes: &[u8], durability: Durability, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = temporary(dest);
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if durability == Durability::Synced {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, dest)?;
        if durability == Durability::Synced {
            let dir = dest
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        write_atomically(&dest, b"one", Durability::Replaceable).unwrap();
        write_atomically(&dest, b"two", Durability::Synced).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = dir.path().join("no/such/dir/file");
        assert!(write_atomically(&missing, b"x", Durability::Synced).is_err());
    }
}
