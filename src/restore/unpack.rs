//! Fetching a backup's parts in parallel and unpacking its tar streams in
//! order, then syncing everything to disk.

use std::io::Read;
use std::path::{Path, PathBuf};

use futures::StreamExt;

use crate::format::backup::BackupMetadata;
use crate::progress::Progress;
use crate::storage::{self, Repository, layout};

/// Parts fetched and opened ahead of the unpacker. Worst case in memory:
/// this many parts (16 MiB each by default) plus the one being unpacked.
pub const FETCH_WINDOW: usize = 4;

/// An unpack failure.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// A part is missing.
    #[error("part {0} of the backup is missing")]
    MissingPart(String),
    /// A part does not match backup.json.
    #[error("part {key} holds {got} bytes, backup.json says {want}")]
    PartSize {
        /// The part.
        key: String,
        /// Bytes found.
        got: usize,
        /// Bytes expected.
        want: u64,
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

/// Reads the chunks a channel delivers as one stream.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.current = next;
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
) -> Result<(), UnpackError> {
    let mut done: u64 = 0;
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
        let unpacker = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let reader = ChannelReader {
                rx,
                current: Vec::new(),
                pos: 0,
            };
            let reader: Box<dyn Read> = if server_zstd {
                Box::new(zstd::stream::read::Decoder::new(reader)?)
            } else {
                Box::new(reader)
            };
            unpack_tar(reader, &target)
        });
        let mut parts = futures::stream::iter(ts.parts.iter().map(|p| {
            let key = layout::backup_part_key(&meta.id, &ts.name, p.index);
            let want = p.plain_bytes;
            async move {
                let bytes = repo
                    .get_opened(&key)
                    .await?
                    .ok_or_else(|| UnpackError::MissingPart(key.clone()))?;
                if bytes.len() as u64 != want {
                    return Err(UnpackError::PartSize {
                        key,
                        got: bytes.len(),
                        want,
                    });
                }
                Ok::<_, UnpackError>(bytes)
            }
        }))
        .buffered(FETCH_WINDOW);
        let mut failure = None;
        while let Some(part) = parts.next().await {
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
        unpacked.map_err(|source| UnpackError::Io {
            dir: dir.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Buffer for writing restored files: large writes, few system calls.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Unpacks a tar stream into `target`. Regular files are written through a
/// large buffer (the tar crate writes 8 KiB at a time); everything else
/// (directories, symbolic links) goes through the tar crate, which also
/// refuses paths that leave `target`.
fn unpack_tar(reader: impl Read, target: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            entry.unpack_in(target)?;
            continue;
        }
        let rel = entry.path()?.into_owned();
        if rel.as_os_str().is_empty()
            || !rel.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            })
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("refusing to unpack {} outside the target", rel.display()),
            ));
        }
        let dst = target.join(&rel);
        if let Some(parent) = dst.parent()
            && !parent.is_dir()
        {
            std::fs::create_dir_all(parent)?;
        }
        let mode = entry.header().mode()? & 0o7777;
        let size = entry.size();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&dst)
            .map_err(|e| std::io::Error::new(e.kind(), format!("create {}: {e}", dst.display())))?;
        let mut w = std::io::BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
        let written = std::io::copy(&mut entry, &mut w)?;
        w.flush()?;
        if written != size {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{} ends after {written} of {size} bytes", rel.display()),
            ));
        }
    }
    Ok(())
}

/// fsyncs every file and directory under `root` (and `root` itself).
///
/// # Errors
/// File system errors.
pub fn sync_tree(root: &Path) -> std::io::Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let ft = entry.file_type()?;
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                std::fs::File::open(entry.path())?.sync_all()?;
            }
        }
        std::fs::File::open(&dir)?.sync_all()?;
    }
    Ok(())
}
