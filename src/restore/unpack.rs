//! Fetching a backup's parts in parallel and unpacking its tar streams in
//! order, then syncing everything to disk.
//!
//! Restore checks what it writes: every part against the size and CRC-32C
//! that `backup.json` records, before its bytes are used; every file
//! unpacked against the server's `backup_manifest` (size and CRC-32C), and
//! every file of the manifest must have been restored. The manifest is left
//! in the data directory as `backup_manifest`, as `pg_basebackup -Fp` does,
//! for PostgreSQL's `pg_verifybackup`.

use std::io::Read;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use std::collections::BTreeMap;

use super::writer::{FileWriter, default_writer_threads};
use crate::backup::tar::{TarFile, TarWalker};
use crate::format::backup::{
    BackupMetadata, ManifestFile, check_against_manifest, parse_server_manifest,
};
use crate::local_file::CHUNK_BYTES;
use crate::progress::Progress;
use crate::storage::{self, Repository, layout};

/// Parts fetched and opened ahead of the unpacker. Worst case in memory:
/// this many parts (16 MiB each by default) plus the one being unpacked.
pub const FETCH_WINDOW: usize = 4;

/// An unpack failure.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// A signal stopped the restore.
    #[error("the restore was interrupted by a signal")]
    Interrupted,
    /// A part is missing.
    #[error("part {0} of the backup is missing")]
    MissingPart(String),
    /// A part does not match backup.json.
    #[error(
        "part {key} holds {got} bytes with CRC32C {got_crc}, backup.json says {want} bytes with {want_crc}"
    )]
    PartMismatch {
        /// The part.
        key: String,
        /// Bytes found.
        got: usize,
        /// Bytes expected.
        want: u64,
        /// CRC-32C found.
        got_crc: String,
        /// CRC-32C expected.
        want_crc: String,
    },
    /// The server's manifest is missing or unreadable.
    #[error("the backup's manifest {key} is missing or invalid: {reason}")]
    Manifest {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A restored file differs from the server's manifest.
    #[error("restored file {file} does not match the server's backup manifest: {problem}")]
    FileMismatch {
        /// The file (relative to the data directory).
        file: String,
        /// How.
        problem: String,
    },
    /// The store failed or an object does not open.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// Writing files failed.
    #[error("unpacking into {dir} failed")]
    Io {
        /// The directory.
        dir: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Part buffers kept for reuse: one per part in flight, the one being
/// unpacked and the one waiting for it. Reusing them keeps the process from
/// asking the kernel for fresh pages (and faulting them in) for every part.
type PartBuffers = std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>;

/// Reads the chunks a channel delivers as one stream.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    buffers: PartBuffers,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(next) => {
                    let used = std::mem::replace(&mut self.current, next);
                    let mut buffers = self.buffers.lock().expect("not poisoned");
                    if buffers.len() < FETCH_WINDOW + 2 {
                        buffers.push(used);
                    }
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Unpacks every tablespace of `meta` into its directory: the main one into
/// `pgdata`, the others into `tablespace_dirs` (by tablespace name).
///
/// # Errors
/// Missing or damaged parts (named), or file system errors.
pub async fn unpack_backup(
    repo: &Repository,
    meta: &BackupMetadata,
    pgdata: &Path,
    tablespace_dirs: &[(String, PathBuf)],
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<(), UnpackError> {
    let manifest_key = layout::backup_manifest_key(&meta.id);
    let manifest_bytes =
        repo.get_opened(&manifest_key)
            .await?
            .ok_or_else(|| UnpackError::Manifest {
                key: manifest_key.clone(),
                reason: "not in the repository".into(),
            })?;
    let mut expected: BTreeMap<String, ManifestFile> = parse_server_manifest(&manifest_bytes)
        .map_err(|e| UnpackError::Manifest {
            key: manifest_key.clone(),
            reason: e.to_string(),
        })?
        .into_iter()
        .map(|f| (f.path.clone(), f))
        .collect();
    let mut done: u64 = 0;
    let buffers = PartBuffers::default();
    for ts in &meta.tablespaces {
        let dir = if ts.oid.is_none() {
            pgdata.to_path_buf()
        } else {
            tablespace_dirs
                .iter()
                .find(|(n, _)| *n == ts.name)
                .map(|(_, d)| d.clone())
                .unwrap_or_else(|| PathBuf::from(ts.location.clone().unwrap_or_default()))
        };
        std::fs::create_dir_all(&dir).map_err(|source| UnpackError::Io {
            dir: dir.display().to_string(),
            source,
        })?;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let server_zstd = meta.server_compression.as_deref() == Some("zstd");
        let target = dir.clone();
        let is_main = ts.oid.is_none();
        let reader_buffers = buffers.clone();
        let unpacker = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<TarFile>> {
            let reader = ChannelReader {
                rx,
                current: Vec::new(),
                pos: 0,
                buffers: reader_buffers,
            };
            let reader: Box<dyn Read> = if server_zstd {
                Box::new(zstd::stream::read::Decoder::new(reader)?)
            } else {
                Box::new(reader)
            };
            let mut tee = Tee {
                inner: reader,
                walker: TarWalker::new(),
                files: Vec::new(),
            };
            unpack_tar(&mut tee, &target, is_main)?;
            // What the tar crate left unread (end blocks, padding).
            std::io::copy(&mut tee, &mut std::io::sink())?;
            tee.walker
                .finish()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            Ok(tee.files)
        });
        let mut parts = futures::stream::iter(ts.parts.iter().map(|p| {
            let key = layout::backup_part_key(&meta.id, &ts.name, p.index);
            let (want, want_crc) = (p.plain_bytes, p.crc32c.clone());
            let buffers = buffers.clone();
            async move {
                let buffer = buffers
                    .lock()
                    .expect("not poisoned")
                    .pop()
                    .unwrap_or_default();
                let bytes = repo
                    .get_opened_into(&key, buffer)
                    .await?
                    .ok_or_else(|| UnpackError::MissingPart(key.clone()))?;
                let (bytes, crc) = tokio::task::spawn_blocking(move || {
                    let crc = crc32c::crc32c(&bytes);
                    (bytes, crc)
                })
                .await
                .expect("crc does not panic");
                let got_crc = format!("{crc:08x}");
                if bytes.len() as u64 != want || got_crc != want_crc {
                    return Err(UnpackError::PartMismatch {
                        key,
                        got: bytes.len(),
                        want,
                        got_crc,
                        want_crc,
                    });
                }
                Ok::<_, UnpackError>(bytes)
            }
        }))
        .buffered(FETCH_WINDOW);
        let mut failure = None;
        loop {
            let part = tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    failure = Some(UnpackError::Interrupted);
                    break;
                }
                part = parts.next() => part,
            };
            let Some(part) = part else { break };
            match part {
                Ok(bytes) => {
                    done += bytes.len() as u64;
                    let sent = tokio::task::block_in_place(|| tx.send(bytes));
                    if sent.is_err() {
                        break;
                    }
                    progress.set_done(done);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let unpacked = unpacker.await.expect("unpacker does not panic");
        if let Some(e) = failure {
            return Err(e);
        }
        let files = unpacked.map_err(|source| UnpackError::Io {
            dir: dir.display().to_string(),
            source,
        })?;
        for f in files {
            let path = match ts.oid {
                Some(oid) => format!("pg_tblspc/{oid}/{}", f.path),
                None => f.path.clone(),
            };
            check_against_manifest(&mut expected, &path, f.size, f.crc32c).map_err(|problem| {
                UnpackError::FileMismatch {
                    file: path,
                    problem,
                }
            })?;
        }
    }
    if let Some(path) = expected.keys().next() {
        return Err(UnpackError::FileMismatch {
            file: path.clone(),
            problem: format!(
                "listed in the manifest but not in the backup ({} such files)",
                expected.len()
            ),
        });
    }
    let path = pgdata.join("backup_manifest");
    std::fs::write(&path, &manifest_bytes).map_err(|source| UnpackError::Io {
        dir: pgdata.display().to_string(),
        source,
    })?;
    Ok(())
}

/// Passes a stream through while the tar walker reads it too, collecting
/// each file's size and CRC-32C.
struct Tee<R> {
    inner: R,
    walker: TarWalker,
    files: Vec<TarFile>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let files = self
            .walker
            .feed(&buf[..n])
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        self.files.extend(files);
        Ok(n)
    }
}

/// Unpacks a tar stream into `target`, refusing anything that could write
/// outside it: a path with `..`, an absolute path, a hard link, a device or
/// FIFO, and any symbolic link but `pg_tblspc/<oid>` in the main data
/// directory (PostgreSQL's own tablespace links, which nothing is written
/// through: files beneath them are refused). Regular files are created new,
/// never opened over something already there, and their contents are
/// written by a pool of threads ([`FileWriter`]) in 1 MiB chunks.
pub(crate) fn unpack_tar(reader: impl Read, target: &Path, is_main: bool) -> std::io::Result<()> {
    let writer = FileWriter::new(default_writer_threads(), true);
    let refuse = |rel: &Path, why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("refusing tar entry {}: {why}", rel.display()),
        )
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let rel = entry.path()?.into_owned();
        let rel: PathBuf = rel
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        if rel.as_os_str().is_empty() {
            continue;
        }
        if !rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(refuse(&rel, "the path leaves the target directory"));
        }
        let tablespace_link = is_main && is_tablespace_link(&rel);
        if is_main
            && !tablespace_link
            && rel.starts_with("pg_tblspc")
            && rel.components().count() > 2
        {
            return Err(refuse(&rel, "nothing is written beneath a tablespace link"));
        }
        let dst = target.join(&rel);
        let mode = entry.header().mode()? & 0o7777;
        if kind.is_dir() {
            std::fs::create_dir_all(&dst)?;
            std::fs::set_permissions(
                &dst,
                std::os::unix::fs::PermissionsExt::from_mode(mode | 0o700),
            )?;
            continue;
        }
        if kind.is_symlink() {
            if !tablespace_link {
                return Err(refuse(&rel, "a symbolic link outside pg_tblspc"));
            }
            let link = entry
                .link_name()?
                .ok_or_else(|| refuse(&rel, "a symbolic link without a target"))?;
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::os::unix::fs::symlink(link.as_ref(), &dst)?;
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            return Err(refuse(
                &rel,
                &format!("entries of type {kind:?} are not restored"),
            ));
        }
        if let Some(parent) = dst.parent()
            && !parent.is_dir()
        {
            std::fs::create_dir_all(parent)?;
        }
        let size = entry.size();
        let file = writer.create(&dst, mode, size)?;
        let mut offset = 0u64;
        while offset < size {
            let want = (size - offset).min(CHUNK_BYTES as u64);
            let mut chunk = writer.buffer();
            entry.read_exact(chunk.fill(want as usize)).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("{} ends before its {size} bytes: {e}", rel.display()),
                )
            })?;
            writer.write(&file, offset, chunk)?;
            offset += want;
        }
    }
    writer.finish()?;
    Ok(())
}

/// Whether `rel` is `pg_tblspc/<oid>`.
fn is_tablespace_link(rel: &Path) -> bool {
    let mut c = rel.components();
    matches!(c.next(), Some(std::path::Component::Normal(d)) if d == "pg_tblspc")
        && matches!(c.next(), Some(std::path::Component::Normal(n)) if n.to_str().is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())))
        && c.next().is_none()
}

/// fsyncs every file and directory under `root` (and `root` itself), except
/// the directory `skip` and what it holds.
///
/// # Errors
/// File system errors.
pub fn sync_tree(root: &Path, skip: Option<&Path>) -> std::io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                if skip == Some(entry.path().as_path()) {
                    continue;
                }
                stack.push(entry.path());
            } else if ft.is_file() {
                std::fs::File::open(entry.path())?.sync_all()?;
            }
        }
        std::fs::File::open(&dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o600);
            h.set_size(data.len() as u64);
            // Write the name bytes raw: the builder would refuse `..`.
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn entries_that_leave_the_target_are_refused() {
        use tar::EntryType::{Link, Regular, Symlink};
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        let victim_s = victim.to_str().unwrap().to_string();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("dot-dot", archive(&[("../victim", Regular, b"x", None)])),
            ("absolute", archive(&[(&victim_s, Regular, b"x", None)])),
            (
                "symlink then a file beneath it",
                archive(&[
                    ("link", Symlink, b"", Some(outside.path().to_str().unwrap())),
                    ("link/victim", Regular, b"x", None),
                ]),
            ),
            (
                "a file beneath a tablespace link",
                archive(&[
                    (
                        "pg_tblspc/16384",
                        Symlink,
                        b"",
                        Some(outside.path().to_str().unwrap()),
                    ),
                    ("pg_tblspc/16384/victim", Regular, b"x", None),
                ]),
            ),
            ("hard link", archive(&[("hl", Link, b"", Some(&victim_s))])),
        ];
        for (what, bytes) in cases {
            let target = tempfile::tempdir().unwrap();
            let err = unpack_tar(&bytes[..], target.path(), true).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{what}: {err}");
            assert!(!victim.exists(), "{what} wrote outside the target");
            assert_eq!(
                std::fs::read_dir(outside.path()).unwrap().count(),
                0,
                "{what}"
            );
        }
        // What PostgreSQL sends is restored.
        let target = tempfile::tempdir().unwrap();
        let ok = archive(&[
            ("global", tar::EntryType::Directory, b"", None),
            ("global/pg_control", Regular, b"control", None),
            ("pg_tblspc/16384", Symlink, b"", Some("/srv/ts")),
        ]);
        unpack_tar(&ok[..], target.path(), true).unwrap();
        assert_eq!(
            std::fs::read(target.path().join("global/pg_control")).unwrap(),
            b"control"
        );
    }
}
