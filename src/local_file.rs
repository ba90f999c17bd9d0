//! Local files written whole: the bytes go to a temporary name beside the
//! destination, which is then renamed over it, so a reader (PostgreSQL, a
//! prefetch worker) never sees a half-written file. This is the one place
//! that does so.
//!
//! Large files that nobody reads back soon (repository objects, restored
//! relation files, WAL segments for recovery) are written with direct I/O
//! (`O_DIRECT`) from page-aligned buffers: the disk copies the bytes
//! without the kernel copying them into the page cache first. On the
//! virtual machines measured in docs/benchmarks.md that copy was the
//! slowest part of a buffered write, and at times of the whole command.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes copied into an aligned buffer and written at a time: large
/// writes, few system calls (and the restore's unit of work per writer).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Alignment of direct I/O: buffer addresses, offsets and lengths are
/// multiples of it (the page size; disks' logical blocks are 512 or 4096).
pub const DIRECT_ALIGN: usize = 4096;

/// One aligned block; a buffer is a vector of them, so its start is aligned.
#[repr(C, align(4096))]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Block([u8; DIRECT_ALIGN]);

/// A buffer of [`CHUNK_BYTES`], page-aligned, for direct I/O.
pub struct ChunkBuf {
    blocks: Vec<Block>,
    len: usize,
}

impl ChunkBuf {
    pub fn new() -> Self {
        Self::with_capacity(CHUNK_BYTES)
    }

    /// A buffer for chunks of up to `len` bytes (whole blocks, at most
    /// [`CHUNK_BYTES`]).
    fn with_capacity(len: usize) -> Self {
        ChunkBuf {
            blocks: vec![Block([0; DIRECT_ALIGN]); len.min(CHUNK_BYTES).div_ceil(DIRECT_ALIGN)],
            len: 0,
        }
    }

    /// The first `len` bytes, to be filled; they become the chunk.
    pub fn fill(&mut self, len: usize) -> &mut [u8] {
        assert!(
            len <= self.blocks.len() * DIRECT_ALIGN,
            "a chunk holds at most its buffer's size"
        );
        self.len = len;
        &mut bytemuck::cast_slice_mut(&mut self.blocks)[..len]
    }

    /// The chunk's bytes.
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice(&self.blocks)[..self.len]
    }
}

impl Default for ChunkBuf {
    fn default() -> Self {
        Self::new()
    }
}

/// `O_DIRECT`.
pub fn direct_flag() -> i32 {
    i32::try_from(rustix::fs::OFlags::DIRECT.bits()).expect("O_DIRECT fits an int")
}

/// Writes `pieces`, one after another, as the new file `path` (which must
/// not exist), with direct I/O where the file system takes it. A tail that
/// is not a whole number of blocks, and a file system that refuses direct
/// I/O (tmpfs), go through the page cache. Not synced.
///
/// # Errors
/// I/O errors (`AlreadyExists` when `path` is there); the file may then be
/// left partly written.
pub fn write_new_file_direct(path: &Path, pieces: &[&[u8]]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = File::options().write(true).create_new(true).open(path)?;
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let whole = total / DIRECT_ALIGN * DIRECT_ALIGN;
    // Less than a block (a small WAL delta) is written through the page cache.
    let direct = (whole > 0)
        .then(|| {
            File::options()
                .write(true)
                .custom_flags(direct_flag())
                .open(path)
                .ok()
        })
        .flatten();
    let mut done = 0;
    if let Some(direct) = direct {
        let mut buf = ChunkBuf::with_capacity(whole);
        while done < whole {
            let n = (whole - done).min(CHUNK_BYTES);
            copy_range(pieces, done, buf.fill(n));
            match direct.write_all_at(buf.bytes(), done as u64) {
                Ok(()) => done += n,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    let mut at = 0;
    for piece in pieces {
        let end = at + piece.len();
        if end > done {
            let from = done.max(at);
            file.write_all_at(&piece[from - at..], from as u64)?;
        }
        at = end;
    }
    Ok(())
}

/// Copies the bytes of `pieces` (taken as one run) from `offset` into `out`.
fn copy_range(pieces: &[&[u8]], offset: usize, out: &mut [u8]) {
    let mut at = 0;
    let mut filled = 0;
    for piece in pieces {
        let end = at + piece.len();
        if filled < out.len() && end > offset + filled {
            let from = offset + filled - at;
            let n = (piece.len() - from).min(out.len() - filled);
            out[filled..filled + n].copy_from_slice(&piece[from..from + n]);
            filled += n;
        }
        at = end;
    }
    assert_eq!(filled, out.len(), "the range lies within the pieces");
}

/// Places `data` at `dest` for a reader that comes soon (PostgreSQL asking
/// for a WAL segment): written with direct I/O under `tmp` (mode 0600),
/// renamed into place, then handed to the kernel's readahead
/// (`POSIX_FADV_WILLNEED`), which reads it back into the page cache by DMA.
/// Not synced.
///
/// # Errors
/// I/O errors; `tmp` is removed on failure.
pub fn place_direct(dest: &Path, tmp: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(tmp);
    let placed = (|| {
        write_new_file_direct(tmp, &[data])?;
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(tmp, dest)
    })();
    if placed.is_err() {
        let _ = std::fs::remove_file(tmp);
        return placed;
    }
    if let Ok(f) = File::open(dest) {
        // Advisory: a file it does not bring in is read from disk.
        let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::WillNeed);
    }
    Ok(())
}

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

    #[test]
    fn whole_files_are_written_direct_with_any_tail() {
        let dir = tempfile::tempdir().unwrap();
        // A WAL segment's size, and sizes with a tail of part of a block.
        for len in [CHUNK_BYTES * 3, CHUNK_BYTES + 4096 * 3 + 100, 700, 0] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            write_new_file_direct(&path, &[&data]).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data, "{len} bytes");
            // The same bytes in pieces that straddle chunks and blocks.
            let cuts = [0, len / 3, (len / 3 + 1).min(len), len / 2, len];
            let pieces: Vec<&[u8]> = cuts.windows(2).map(|w| &data[w[0]..w[1]]).collect();
            let in_pieces = dir.path().join(format!("p{len}"));
            write_new_file_direct(&in_pieces, &pieces).unwrap();
            assert_eq!(
                std::fs::read(&in_pieces).unwrap(),
                data,
                "{len} bytes in pieces"
            );
            // Never over a file that is there.
            let err = write_new_file_direct(&path, &[b"other"]).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
            assert_eq!(std::fs::read(&path).unwrap(), data);
        }
    }

    #[test]
    fn placed_files_replace_the_destination_and_leave_no_temporary() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (dest, tmp) = (dir.path().join("RECOVERYXLOG"), dir.path().join(".tmp"));
        let segment: Vec<u8> = (0..CHUNK_BYTES * 16).map(|i| (i % 253) as u8).collect();
        // A leftover temporary and an earlier file at the destination.
        std::fs::write(&tmp, b"leftover").unwrap();
        std::fs::write(&dest, b"the previous segment").unwrap();
        place_direct(&dest, &tmp, &segment).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), segment);
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!tmp.exists());
        // A destination that cannot be made: the error, and no temporary.
        let nowhere = dir.path().join("missing").join("RECOVERYXLOG");
        assert!(place_direct(&nowhere, &tmp, &segment).is_err());
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&dest).unwrap(), segment);
    }
}
