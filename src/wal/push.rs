//! `wal-push`: one file of PostgreSQL's `archive_command` into the
//! repository, in the same format and layout as the stream writes.
//!
//! A file the stream (or an earlier push) already stored is compared and
//! acknowledged; other bytes at its key are an error naming both, never
//! overwritten. A segment is read as WAL first (page headers, timeline,
//! address, this cluster's system identifier): another cluster's file, or
//! a recycled one, is refused before anything is stored. The first push
//! into an empty repository creates `walvault.json` from the segment's
//! long page header.

use std::path::Path;

use bytes::Bytes;

use crate::format::wal_pages::{self, PageExpect};
use crate::lsn::{SegmentName, WalFileName};
use crate::storage::{self, Repository, layout};

/// What a push did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    /// The file is now stored.
    Stored,
    /// The repository held the same bytes already (the stream stored it).
    AlreadyStored,
    /// A backup history file: acknowledged, not stored (restore never
    /// reads one; `backup.json` records the same facts).
    NotNeeded,
}

/// Why a file was not archived (PostgreSQL keeps it and retries).
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The file name is not one PostgreSQL archives.
    #[error(
        "{0:?} is not a WAL segment, .partial segment, timeline history or backup history file name"
    )]
    Name(String),
    /// The file cannot be read.
    #[error("read {path}")]
    Read {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not this cluster's WAL of that name.
    #[error("{name} is not WAL this repository can hold: {reason}")]
    NotThisWal {
        /// The file.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The repository holds other bytes under the file's name.
    #[error(
        "{name}: the repository holds other bytes at {key} ({stored}); this file is {offered}: \
nothing was overwritten. Find out which is this cluster's WAL before archiving goes on"
    )]
    Differs {
        /// The file.
        name: String,
        /// The object.
        key: String,
        /// The stored version (bytes and CRC-32C).
        stored: String,
        /// This file's version.
        offered: String,
    },
    /// The repository has no `walvault.json` and the file cannot create it.
    #[error(
        "the repository is empty, and {0} cannot create it: the first file archived into a new repository must be a WAL segment"
    )]
    Empty(String),
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
}

/// The kinds of file `archive_command` is given.
enum PushedFile {
    Segment(SegmentName),
    Partial(SegmentName),
    History(crate::lsn::TimelineId),
    BackupHistory,
}

fn classify(name: &str, segment_size_bytes: u64) -> Option<PushedFile> {
    if let Some(segment) = name.strip_suffix(".partial") {
        return match WalFileName::parse(segment, segment_size_bytes).ok()? {
            WalFileName::Segment(s) => Some(PushedFile::Partial(s)),
            WalFileName::History(_) => None,
        };
    }
    // 000000010000000000000002.00000028.backup
    if let Some(rest) = name.strip_suffix(".backup") {
        let (segment, offset) = rest.split_once('.')?;
        return (WalFileName::parse(segment, segment_size_bytes).is_ok()
            && offset.len() == 8
            && offset.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(PushedFile::BackupHistory);
    }
    match WalFileName::parse(name, segment_size_bytes).ok()? {
        WalFileName::Segment(s) => Some(PushedFile::Segment(s)),
        WalFileName::History(t) => Some(PushedFile::History(t)),
    }
}

/// The system identifier, segment size and major a segment's long page
/// header names.
fn header_identity(bytes: &[u8]) -> Option<(u64, u64, u32)> {
    let magic = u16::from_le_bytes(bytes.get(0..2)?.try_into().ok()?);
    let system = wal_pages::first_page_system_identifier(bytes)?;
    let size = u32::from_le_bytes(bytes.get(32..36)?.try_into().ok()?);
    let major = (14..=18).find(|&m| wal_pages::page_magic(m) == Some(magic))?;
    Some((system, u64::from(size), major))
}

/// Archives the file at `path` (`%p`, relative to the data directory
/// where PostgreSQL runs `archive_command`) into `repo`.
///
/// # Errors
/// [`PushError`]: nothing was overwritten, and PostgreSQL retries.
pub async fn push(repo: &Repository, path: &Path) -> Result<Pushed, PushError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| PushError::Name(path.display().to_string()))?
        .to_string();
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| PushError::Read {
            path: path.display().to_string(),
            source,
        })?;
    let not_this = |reason: String| PushError::NotThisWal {
        name: name.clone(),
        reason,
    };
    let manifest = match repo.open_manifest().await? {
        Some(m) => m,
        None => {
            // Only a segment names the cluster it belongs to.
            let (system, size, major) = header_identity(&bytes)
                .filter(|_| !name.contains('.'))
                .ok_or_else(|| PushError::Empty(name.clone()))?;
            repo.ensure_manifest(&system.to_string(), major, size)
                .await?
        }
    };
    let size = manifest.wal_segment_size;
    let file = classify(&name, size).ok_or_else(|| PushError::Name(name.clone()))?;
    let expect = |segment: SegmentName| PageExpect {
        timeline: segment.timeline.get(),
        start: segment.start_lsn(size).0,
        segment_size_bytes: size,
        system_identifier: manifest.system_identifier.parse().unwrap_or(0),
        magic: wal_pages::page_magic(manifest.pg_major),
    };
    let key = match file {
        PushedFile::BackupHistory => return Ok(Pushed::NotNeeded),
        PushedFile::History(t) => layout::history_key(t),
        PushedFile::Segment(segment) => {
            if bytes.len() as u64 != size {
                return Err(not_this(format!(
                    "it holds {} bytes; the repository's segments are {size} bytes",
                    bytes.len()
                )));
            }
            let problems = wal_pages::check_pages(&bytes, size, &expect(segment));
            if !problems.is_empty() {
                let mut reason = problems.join("; ");
                if let Some((system, _, _)) = header_identity(&bytes)
                    && let Err(e) = manifest.check_server(&system.to_string(), size)
                {
                    reason = format!("{reason}; {e}");
                }
                return Err(not_this(reason));
            }
            layout::segment_key(segment, size)
        }
        PushedFile::Partial(segment) => {
            // The old timeline's last segment at a promotion: WAL up to the
            // switch, then whatever the file held. Its first page must be
            // this cluster's; restore never reads it (the new timeline's
            // segment holds the same WAL up to the switch).
            let first = bytes
                .get(..wal_pages::PAGE_BYTES as usize)
                .unwrap_or(&bytes);
            let problems = wal_pages::check_part_pages(first, 0, &expect(segment));
            if bytes.len() as u64 != size || !problems.is_empty() {
                return Err(not_this(format!(
                    "a .partial segment of {} bytes: {}",
                    bytes.len(),
                    problems.join("; ")
                )));
            }
            format!("{}.partial", layout::segment_key(segment, size))
        }
    };
    store_once(repo, &name, &key, bytes).await
}

/// Stores `bytes` at `key` unless it is there already: the same bytes are
/// a success, others an error naming both.
async fn store_once(
    repo: &Repository,
    name: &str,
    key: &str,
    bytes: Vec<u8>,
) -> Result<Pushed, PushError> {
    let version = |b: &[u8]| format!("{} bytes, CRC-32C {:08x}", b.len(), crc32c::crc32c(b));
    let compare = |stored: &[u8], bytes: &[u8]| {
        if stored == bytes {
            Ok(Pushed::AlreadyStored)
        } else {
            Err(PushError::Differs {
                name: name.to_string(),
                key: key.to_string(),
                stored: version(stored),
                offered: version(bytes),
            })
        }
    };
    if let Some(stored) = repo.get_opened(key).await? {
        return compare(&stored, &bytes);
    }
    let body = Bytes::from(bytes);
    match storage::retry(key, &tokio_util::sync::CancellationToken::new(), || {
        repo.put_sealed(key, vec![body.clone()])
    })
    .await
    {
        Ok(_) => Ok(Pushed::Stored),
        // Stored meanwhile by another writer: the same bytes are a success.
        Err(storage::Error::Conflict { .. }) => match repo.get_opened(key).await? {
            Some(stored) => compare(&stored, &body),
            None => Err(PushError::Differs {
                name: name.to_string(),
                key: key.to_string(),
                stored: "an object that vanished".into(),
                offered: version(&body),
            }),
        },
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_postgresql_archives() {
        const MIB16: u64 = 16 << 20;
        assert!(matches!(
            classify("000000010000000000000003", MIB16),
            Some(PushedFile::Segment(_))
        ));
        assert!(matches!(
            classify("000000010000000000000003.partial", MIB16),
            Some(PushedFile::Partial(_))
        ));
        assert!(matches!(
            classify("00000002.history", MIB16),
            Some(PushedFile::History(_))
        ));
        assert!(matches!(
            classify("000000010000000000000002.00000028.backup", MIB16),
            Some(PushedFile::BackupHistory)
        ));
        for bad in [
            "00000002.history.partial",
            "000000010000000000000002.0000002.backup",
            "postgresql.conf",
            "00000001000000000000000G",
        ] {
            assert!(classify(bad, MIB16).is_none(), "{bad}");
        }
    }
}
