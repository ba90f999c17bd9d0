//! `walvault list`: what the repository holds (its identity, the backups,
//! and the WAL range on each timeline), and the `list --json` schema.
//!
//! The WAL older than the last expire run comes from that run's WAL index
//! unless a full listing is asked for ([`WalInventory::scan_latest`]).

use serde::Serialize;

use crate::format::manifest::RepositoryManifest;
use crate::lsn::Lsn;
use crate::storage::{self, Repository, layout};
use crate::wal::index::ScanError;
use crate::wal::inventory::WalInventory;
use crate::wal::summary::{WalSummary, summarize};

/// `list --json` output, version 1.
#[derive(Debug, Serialize)]
pub struct ListOutput {
    pub version: u32,
    pub repository: String,
    pub system_identifier: String,
    pub pg_major: u32,
    pub encryption: String,
    pub backups: Vec<BackupSummary>,
    /// Backups sealed with a key the reader lacks, with the key each needs.
    pub locked_backups: Vec<crate::storage::LockedBackup>,
    pub wal: WalSummary,
    pub wal_listing: WalListing,
    /// The systems held before upgrades, oldest first, with their WAL
    /// (empty unless the cluster was upgraded).
    pub earlier_systems: Vec<EarlierSystemSummary>,
}

/// A system the repository held before an upgrade, in `list --json`.
#[derive(Debug, Serialize)]
pub struct EarlierSystemSummary {
    pub system_identifier: String,
    pub pg_major: u32,
    /// Where its WAL is stored.
    pub wal_prefix: String,
    pub wal: WalSummary,
}

/// How `list` learned the WAL part.
#[derive(Debug, Serialize)]
pub struct WalListing {
    /// `index` (the index of the last expire run, and a listing after it) or `full`.
    pub source: &'static str,
    /// When the expire run that stored the index listed `wal/`.
    pub index_time: Option<String>,
    /// WAL objects listed from the store (the rest came from the index).
    pub listed_objects: usize,
}

/// One backup in `list --json`.
#[derive(Debug, Serialize)]
pub struct BackupSummary {
    pub id: String,
    /// The system it is a backup of (an earlier one's after an upgrade).
    pub system_identifier: String,
    /// Its major: restore it with that major's binaries.
    pub pg_major: u32,
    pub label: String,
    pub start_time: String,
    pub stop_time: String,
    pub duration_seconds: f64,
    pub size_bytes: u64,
    pub stored_bytes: u64,
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub wal_first_segment: String,
    pub wal_last_segment: String,
    pub source_server: String,
    pub source_role: String,
    pub server_version: String,
    /// `backup --annotate` metadata (empty when none).
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// Why the listing could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The newest expire run's WAL index does not open, parse or hold together.
    #[error(
        "the WAL index ({}) is unusable: `walvault list --full` lists every WAL object \
         without it, and the next expire run replaces it",
        layout::WAL_INDEX
    )]
    Index(#[source] storage::Error),
    /// Listing the WAL failed.
    #[error("list WAL")]
    Wal(#[source] storage::Error),
    /// Reading the backups failed.
    #[error("list backups")]
    Backups(#[source] storage::Error),
}

/// Gathers the listing of `repo` (whose `walvault.json` is `manifest`);
/// `full` lists every WAL object instead of reading the WAL index.
///
/// # Errors
/// [`ListError`].
pub async fn gather(
    repo: &Repository,
    manifest: &RepositoryManifest,
    full: bool,
) -> Result<ListOutput, ListError> {
    let (inv, wal_listing) = scan_wal(repo, manifest.wal_segment_size, full).await?;
    let crate::storage::BackupList {
        backups,
        locked: locked_backups,
    } = repo
        .list_backups_readable()
        .await
        .map_err(ListError::Backups)?;
    let backups: Vec<BackupSummary> = backups
        .into_iter()
        .map(|b| BackupSummary {
            id: b.id,
            system_identifier: b.system_identifier,
            pg_major: b.pg_major,
            label: b.label,
            start_time: crate::format::time::to_text(&b.start_time),
            stop_time: crate::format::time::to_text(&b.stop_time),
            duration_seconds: b.duration_seconds,
            size_bytes: b.plain_bytes,
            stored_bytes: b.stored_bytes,
            timeline: b.timeline.get(),
            start_lsn: b.start_lsn,
            stop_lsn: b.stop_lsn,
            wal_first_segment: b.wal_range.first_segment,
            wal_last_segment: b.wal_range.last_segment,
            source_server: b.source.server,
            source_role: b.source.role,
            server_version: b.server_version,
            annotations: b.annotations,
        })
        .collect();
    let mut earlier_systems = Vec::new();
    let stored = repo.stored_identity().cloned();
    for e in stored.iter().flat_map(|m| &m.earlier_systems) {
        let handle = repo
            .for_system(&e.system_identifier)
            .map_err(ListError::Wal)?;
        let inv = WalInventory::scan(&handle, e.wal_segment_size)
            .await
            .map_err(ListError::Wal)?;
        earlier_systems.push(EarlierSystemSummary {
            system_identifier: e.system_identifier.clone(),
            pg_major: e.pg_major,
            wal_prefix: handle.stored_key(layout::WAL_PREFIX),
            wal: summarize(&inv, e.wal_segment_size),
        });
    }
    let out = ListOutput {
        version: 1,
        repository: repo.display().to_string(),
        system_identifier: manifest.system_identifier.clone(),
        pg_major: manifest.pg_major,
        encryption: manifest.encryption.clone(),
        backups,
        locked_backups,
        wal: summarize(&inv, manifest.wal_segment_size),
        wal_listing,
        earlier_systems,
    };
    Ok(out)
}

/// The archive's inventory: from the WAL index of the last expire run
/// unless `full` (see [`WalInventory::scan_latest`]).
async fn scan_wal(
    repo: &Repository,
    segment_size_bytes: u64,
    full: bool,
) -> Result<(WalInventory, WalListing), ListError> {
    let (inv, source) = match WalInventory::scan_latest(repo, segment_size_bytes, !full).await {
        Ok(scanned) => scanned,
        Err(ScanError::Index(e)) => return Err(ListError::Index(e)),
        Err(ScanError::Store(e)) => return Err(ListError::Wal(e)),
    };
    let listing = WalListing {
        source: if source.index_time.is_some() {
            "index"
        } else {
            "full"
        },
        index_time: source.index_time.map(|t| crate::format::time::to_text(&t)),
        listed_objects: source.listed_objects,
    };
    Ok((inv, listing))
}
