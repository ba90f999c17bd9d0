//! Reading WAL back from a repository: a complete segment, a segment
//! assembled from its deltas and zero-padded (as `restore_command` must
//! deliver it), or a history file; and the delta chain a restarted stream
//! resumes from.

use bytes::Bytes;

use crate::lsn::SegmentName;
use crate::storage::layout::{self, WalObject};
use crate::storage::{self, Repository};

/// Reads back the bytes `[0, chain end)` of a segment from its deltas.
///
/// # Errors
/// Store or integrity errors (naming the object).
pub async fn read_delta_chain(
    repo: &Repository,
    segment: SegmentName,
    segment_size_bytes: u64,
) -> Result<Vec<u8>, storage::Error> {
    Ok(read_chain(repo, segment, segment_size_bytes).await?.0)
}

/// How many times a delta chain that changed while it was read (a delta
/// deleted because the complete segment landed) is read again.
const CHAIN_READS: usize = 3;

/// The bytes of a segment's delta chain, and whether a listed delta was
/// gone when read (the chain changed: read it again).
async fn read_chain(
    repo: &Repository,
    segment: SegmentName,
    segment_size_bytes: u64,
) -> Result<(Vec<u8>, bool), storage::Error> {
    let objects = repo
        .list(&layout::delta_prefix(segment, segment_size_bytes))
        .await?;
    let mut ranges: Vec<(u64, u64, String)> = objects
        .into_iter()
        .filter_map(
            |o| match layout::parse_wal_key(&o.key, segment_size_bytes) {
                Some(WalObject::Delta { start, end, .. }) => Some((start, end, o.key)),
                _ => None,
            },
        )
        .collect();
    ranges.sort();
    let mut out: Vec<u8> = Vec::new();
    for (start, end, key) in ranges {
        let have = out.len() as u64;
        if start > have {
            break;
        }
        if end <= have {
            continue;
        }
        let Some(bytes) = repo.get_opened(&key).await? else {
            // Deleted meanwhile: the complete segment replaced it.
            return Ok((out, true));
        };
        if bytes.len() as u64 != end - start {
            return Err(storage::Error::BadManifest {
                key,
                reason: format!("holds {} bytes, its name says {}", bytes.len(), end - start),
            });
        }
        out.extend_from_slice(&bytes[(have - start) as usize..]);
    }
    Ok((out, false))
}

/// A WAL file as `restore_command` must deliver it.
#[derive(Debug)]
pub enum FetchedWal {
    /// A complete segment.
    Complete(Vec<u8>),
    /// A segment assembled from deltas: `known` bytes, then zeros to the segment size.
    Partial {
        /// The segment, zero-padded to full size.
        bytes: Vec<u8>,
        /// How many bytes came from the archive.
        known: u64,
    },
    /// A history file.
    History(Vec<u8>),
}

/// Fetches a segment (complete, or assembled from deltas and zero-padded) or
/// a history file; `None` when the archive does not have it.
///
/// # Errors
/// Store or integrity errors.
pub async fn fetch_wal_file(
    repo: &Repository,
    file: crate::lsn::WalFileName,
    segment_size_bytes: u64,
) -> Result<Option<FetchedWal>, storage::Error> {
    match file {
        crate::lsn::WalFileName::History(tli) => Ok(repo
            .get_opened(&layout::history_key(tli))
            .await?
            .map(FetchedWal::History)),
        crate::lsn::WalFileName::Segment(seg) => {
            let key = layout::segment_key(seg, segment_size_bytes);
            for _ in 0..CHAIN_READS {
                if let Some(bytes) = repo.get_opened(&key).await? {
                    if bytes.len() as u64 != segment_size_bytes {
                        return Err(storage::Error::BadManifest {
                            key,
                            reason: format!(
                                "segment holds {} bytes, expected {segment_size_bytes}",
                                bytes.len()
                            ),
                        });
                    }
                    check_cluster(repo, &key, &bytes)?;
                    return Ok(Some(FetchedWal::Complete(bytes)));
                }
                let (mut bytes, changed) = read_chain(repo, seg, segment_size_bytes).await?;
                // A delta gone while the chain was read, or no delta at
                // all: the complete segment may have landed meanwhile.
                if changed {
                    continue;
                }
                if bytes.is_empty() {
                    let complete = repo.get_opened(&key).await?;
                    if let Some(bytes) = &complete {
                        check_cluster(repo, &key, bytes)?;
                    }
                    return Ok(complete.map(FetchedWal::Complete));
                }
                check_cluster(repo, &key, &bytes)?;
                let known = bytes.len() as u64;
                bytes.resize(segment_size_bytes as usize, 0);
                return Ok(Some(FetchedWal::Partial { bytes, known }));
            }
            Err(storage::Error::BadManifest {
                key,
                reason: format!(
                    "its deltas kept changing while read ({CHAIN_READS} times), and no complete segment is there"
                ),
            })
        }
    }
}

/// Refuses WAL whose first page names another cluster than the
/// repository's `walvault.json`: sealed with the same key elsewhere and
/// re-sealed here, it is still not this cluster's history.
fn check_cluster(repo: &Repository, key: &str, segment: &[u8]) -> Result<(), storage::Error> {
    let (Some(identity), Some(found)) = (
        repo.identity(),
        crate::format::wal_pages::first_page_system_identifier(segment),
    ) else {
        return Ok(());
    };
    if identity.system_identifier == found.to_string() {
        return Ok(());
    }
    Err(storage::Error::BadManifest {
        key: key.to_string(),
        reason: format!(
            "it is WAL of system identifier {found}, but the repository belongs to {}: another cluster's WAL",
            identity.system_identifier
        ),
    })
}

/// Keeps `Bytes` out of the public API of callers that only need a Vec.
pub fn into_pieces(bytes: Vec<u8>) -> Vec<Bytes> {
    if bytes.is_empty() {
        Vec::new()
    } else {
        vec![Bytes::from(bytes)]
    }
}
