//! A WAL object that another writer stored first, with other bytes: two
//! streams over one range (which walvault's own writers avoid, see
//! `backup::wal`), or two readers of a standby sent different bytes. The
//! stream does not stop for it: the stored version is read as WAL
//! ([`crate::format::wal_pages`]) and, when every page says what it must, kept;
//! the conflict is logged with both versions' details, counted in the
//! metrics and recorded under `conflicts/wal/` for `check`. A stored
//! version that is not valid WAL is damage, not a race: the stream stops
//! with both described, and nothing past it is reported durable.

use std::sync::atomic::Ordering::Relaxed;

use tracing::{error, warn};

use crate::format::conflict::{CONFLICT_VERSION, ObjectVersion, WalConflict};
use crate::format::manifest::RepositoryManifest;
use crate::format::wal_pages::{PageExpect, check_pages, check_part_pages, page_magic};
use crate::storage::layout::{self, WalObject};
use crate::storage::{self, Repository};

use super::upload::{UploadJob, UploadStats};

/// What a repository's WAL pages must say, for reading a stored version.
#[derive(Clone, Copy, Debug)]
pub struct WalCheck {
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// The server major's page magic, if known.
    pub magic: Option<u16>,
    /// The segment size.
    pub segment_size_bytes: u64,
}

impl WalCheck {
    /// The expectations of the repository `manifest` describes.
    pub fn of(manifest: &RepositoryManifest) -> Self {
        WalCheck {
            system_identifier: manifest.system_identifier.parse().unwrap_or(0),
            magic: page_magic(manifest.pg_major),
            segment_size_bytes: manifest.wal_segment_size,
        }
    }
}

/// After [`storage::Error::Conflict`] on `job`: `Ok` with the stored
/// version's size when that version is valid WAL (kept, counted and
/// recorded), else the conflict, with what is wrong with the stored
/// version added.
///
/// # Errors
/// The conflict for objects other than WAL segments and deltas, or whose
/// stored version is not valid WAL; store errors reading it.
pub async fn keep_stored_wal(
    repo: &Repository,
    job: &UploadJob,
    check: &WalCheck,
    difference: String,
    stats: &UploadStats,
) -> Result<u64, storage::Error> {
    let conflict = |difference: String| storage::Error::Conflict {
        key: job.key.clone(),
        difference,
    };
    let (segment, from) = match layout::parse_wal_key(&job.key, check.segment_size_bytes) {
        Some(WalObject::Segment { segment }) => (segment, None),
        Some(WalObject::Delta { segment, start, .. }) => (segment, Some(start)),
        _ => return Err(conflict(difference)),
    };
    let Some(stored) = repo.get_opened(&job.key).await? else {
        return Err(conflict(format!(
            "{difference}; then the stored version vanished"
        )));
    };
    let expect = PageExpect {
        timeline: segment.timeline.get(),
        start: segment.start_lsn(check.segment_size_bytes).0,
        segment_size_bytes: check.segment_size_bytes,
        system_identifier: check.system_identifier,
        magic: check.magic,
    };
    let problems = match from {
        None => check_pages(&stored, stored.len() as u64, &expect),
        Some(from) => check_part_pages(&stored, from, &expect),
    };
    let record = WalConflict {
        version: CONFLICT_VERSION,
        key: job.key.clone(),
        difference: difference.clone(),
        kept: ObjectVersion::of(&[&stored]),
        other: ObjectVersion::of(&job.pieces),
        host: crate::telemetry::hostname(),
        pid: std::process::id(),
        at: chrono::Utc::now(),
    };
    if !problems.is_empty() {
        error!(key = job.key, difference, stored = ?record.kept, ours = ?record.other,
            problems = problems.join("; "),
            "a WAL object is stored with other bytes, and the stored version is not valid WAL: stopping");
        return Err(conflict(format!(
            "{difference}; the stored version is not valid WAL: {}",
            problems.join("; ")
        )));
    }
    stats.wal_conflicts.fetch_add(1, Relaxed);
    warn!(key = job.key, difference, stored = ?record.kept, ours = ?record.other,
        "a WAL object is stored with other bytes by another writer; the stored version is valid WAL and kept");
    let body = serde_json::to_vec_pretty(&record).expect("a record serializes");
    let key = layout::conflict_key(&record.at, rand::random());
    if let Err(e) = repo.put_sealed(&key, vec![body.into()]).await {
        warn!(key, error = %crate::error::chain(&e), "could not record the WAL conflict for check");
    }
    Ok(stored.len() as u64)
}

/// The WAL conflict records of `repo`, oldest first.
///
/// # Errors
/// Store errors, or a record that does not open.
pub async fn read_conflicts(repo: &Repository) -> Result<Vec<WalConflict>, storage::Error> {
    let mut out = Vec::new();
    for o in repo.list(layout::CONFLICTS_PREFIX).await? {
        if let Some(c) = repo.read_document::<WalConflict>(&o.key).await? {
            out.push(c);
        }
    }
    Ok(out)
}
