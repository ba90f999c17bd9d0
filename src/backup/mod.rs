//! Base backups: BASE_BACKUP over walvault's own replication connection,
//! the tar streams cut into parts and stored through the one upload stage,
//! the server's manifest, the backup's WAL range, and `backup.json` last.
//!
//! [`run`] is a sequence of named steps: check the server, clean up and
//! choose an id, hold the WAL on a temporary slot, store the data
//! ([`data`]), store the manifest, secure the WAL range ([`wal`]), write
//! the metadata.
//!
//! Invariants:
//! - `backup.json` is written only after every part, the manifest and every
//!   WAL byte from the start LSN to the stop LSN are stored;
//! - memory does not grow with the database: parts in flight are bounded by
//!   the upload concurrency, and a slow store stops the socket reads.

pub mod catalog;
mod data;
pub mod parts;
pub mod protocol;
pub mod tar;
pub mod wal;

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::format::backup::{
    BACKUP_METADATA_VERSION, BackupMetadata, BackupSource, TablespaceRecord, WalRange,
};
use crate::lsn::{Lsn, SegmentName};
use crate::protocol::server::{self, ServerInfo};
use crate::protocol::{ConnInfo, ReplicationConnection};
use crate::storage::{self, Repository, layout};
use crate::wal::receiver::{self, StreamOptions};

pub use catalog::{Unfinished, clean_orphans, unfinished};

/// Default plaintext bytes per part: large enough for few objects, small
/// enough that parts in flight stay well inside the memory budget.
pub const DEFAULT_PART_SIZE_BYTES: u64 = 16 << 20;
/// Smallest part size accepted.
pub const MIN_PART_SIZE_BYTES: u64 = 1 << 20;
/// An unfinished backup whose newest object is older than this is an
/// orphan of an interrupted run and is deleted by the next backup (a running
/// backup stores a part every few seconds).
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(60);
/// How often a running backup stores a heartbeat object, so that cleanup
/// (after [`DEFAULT_ORPHAN_GRACE`], four heartbeats) never takes it for an
/// interrupted one, even while it waits minutes for its WAL.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// How often the backup's own WAL stream stores the open segment's tail.
const WAL_FLUSH_INTERVAL: Duration = Duration::from_millis(500);
/// How long the backup's own WAL stream may take to store its tail.
const WAL_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(120);

/// The rates BASE_BACKUP's MAX_RATE accepts, in bytes per second (the
/// server takes whole KiB per second from 32 KiB to 1 GiB).
pub const MAX_RATE_BYTES: std::ops::RangeInclusive<u64> = (32 << 10)..=(1 << 30);

/// Checks a backup rate limit given in bytes per second.
///
/// # Errors
/// A message naming the allowed range.
pub fn check_max_rate(bytes: u64) -> Result<u64, String> {
    if MAX_RATE_BYTES.contains(&bytes) {
        Ok(bytes)
    } else {
        Err(format!(
            "{bytes} bytes per second is outside what the server accepts: from 32KiB to 1GiB per second"
        ))
    }
}

/// A rate in bytes per second as BASE_BACKUP's MAX_RATE takes it: KiB per
/// second, rounded down.
fn max_rate_kib(bytes: u64) -> u32 {
    u32::try_from(bytes / 1024).unwrap_or(u32::MAX)
}

/// Settings of one backup.
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// The server.
    pub conninfo: ConnInfo,
    /// Label (default `walvault <id>`).
    pub label: Option<String>,
    /// Fast (immediate) checkpoint at the start.
    pub fast_checkpoint: bool,
    /// Ask the server to zstd-compress the tar streams at this level
    /// (PostgreSQL 15+); the parts are then sealed without compression.
    pub server_zstd_level: Option<i32>,
    /// Plaintext bytes per part.
    pub part_size_bytes: u64,
    /// Parts uploaded at once.
    pub upload_concurrency: usize,
    /// The server sends the backup at most this fast (bytes per second,
    /// within [`MAX_RATE_BYTES`]; BASE_BACKUP's MAX_RATE).
    pub max_rate_bytes: Option<u64>,
    /// Settings for streaming the backup's WAL range.
    pub stream: StreamOptions,
    /// Unfinished backups untouched for this long are deleted as orphans.
    pub orphan_grace: Duration,
    /// User metadata stored in `backup.json` (`backup --annotate`).
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl BackupOptions {
    /// The settings shared by `walvault backup` and the sidecar's schedule;
    /// the rest keep their defaults.
    pub fn new(
        conninfo: ConnInfo,
        fast_checkpoint: bool,
        part_size_bytes: u64,
        upload_concurrency: usize,
        memory_budget_bytes: u64,
    ) -> Self {
        BackupOptions {
            stream: StreamOptions {
                conninfo: conninfo.clone(),
                slot: String::new(),
                flush_interval: WAL_FLUSH_INTERVAL,
                synchronous: false,
                memory_budget_bytes,
                upload_concurrency: upload_concurrency.max(1),
                shutdown_timeout: WAL_SHUTDOWN_TIMEOUT,
            },
            conninfo,
            label: None,
            fast_checkpoint,
            server_zstd_level: None,
            max_rate_bytes: None,
            part_size_bytes: part_size_bytes.max(MIN_PART_SIZE_BYTES),
            upload_concurrency: upload_concurrency.max(1),
            orphan_grace: DEFAULT_ORPHAN_GRACE,
            annotations: std::collections::BTreeMap::new(),
        }
    }
}

/// Where the backup's WAL comes from.
#[derive(Clone, Debug)]
pub enum WalSource {
    /// No sidecar: stream the range on a temporary slot, as `pg_basebackup -X stream`.
    Standalone,
    /// A sidecar stream runs; wait for its durable LSN (and fill any gap before its start).
    Sidecar(watch::Receiver<Lsn>),
    /// Another process holds the repository's writer lease (a sidecar
    /// beside this backup): wait for the archive to hold the range, fill
    /// only a gap before that writer's first WAL, and stream the rest only
    /// if the writer goes away.
    Archive(crate::format::lease::Lease),
}

impl WalSource {
    /// The source for a backup run on its own: [`WalSource::Archive`] when
    /// another process streams into `repo`, else [`WalSource::Standalone`].
    ///
    /// # Errors
    /// Store errors.
    pub async fn for_repository(repo: &Repository) -> Result<Self, storage::Error> {
        Ok(match repo.live_lease_holder().await? {
            Some(holder) => WalSource::Archive(holder),
            None => WalSource::Standalone,
        })
    }
}

/// A backup failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the server failed.
    #[error(transparent)]
    Protocol(#[from] crate::protocol::Error),
    /// The server is not one walvault can back up.
    #[error(transparent)]
    Server(#[from] server::Error),
    /// The repository failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// Streaming the backup's WAL failed.
    #[error("streaming the backup's WAL failed")]
    Stream(#[source] receiver::Error),
    /// The server cannot be backed up with these settings.
    #[error("{0}")]
    Unsupported(String),
    /// The WAL range is not complete in the repository.
    #[error("the backup's WAL is not all in the repository: missing {0}")]
    WalMissing(String),
    /// Cancelled.
    #[error("backup cancelled")]
    Cancelled,
    /// Objects of this backup disappeared while it ran.
    #[error(
        "{0} disappeared while the backup ran (another walvault took the backup for an interrupted one): the backup is abandoned"
    )]
    Interrupted(String),
}

impl Error {
    /// Whether settings must change to fix it.
    pub fn is_configuration(&self) -> bool {
        match self {
            Error::Storage(e) => e.is_configuration(),
            Error::Stream(e) => e.is_configuration(),
            Error::Server(e) => e.is_configuration(),
            Error::Unsupported(_) => true,
            _ => false,
        }
    }
}

/// Takes one base backup into `repo`.
///
/// # Errors
/// On server, store or WAL failures; nothing is listed as a backup then.
///
/// # Cancel safety
/// Not cancel safe; use `cancel` (parts already stored are cleaned up by a later run).
pub async fn run(
    opts: &BackupOptions,
    repo: &Repository,
    wal: WalSource,
    cancel: &CancellationToken,
) -> Result<BackupMetadata, Error> {
    let result = take(opts, repo, wal, cancel).await;
    match &result {
        Ok(m) => {
            let detail = format!(
                "{} bytes read, {} stored, WAL {}..{} on timeline {}, {:.1}s",
                m.plain_bytes,
                m.stored_bytes,
                m.start_lsn,
                m.stop_lsn,
                m.timeline,
                m.duration_seconds
            );
            repo.audit("backup", Some(&m.id), Ok(detail)).await;
        }
        Err(e) => {
            repo.audit("backup", None, Err(crate::error::chain(e)))
                .await
        }
    }
    result
}

async fn take(
    opts: &BackupOptions,
    repo: &Repository,
    wal: WalSource,
    cancel: &CancellationToken,
) -> Result<BackupMetadata, Error> {
    let started = Instant::now();
    let start_time = Utc::now();
    let (conn, server) = check_server(opts, repo).await?;

    clean_orphans(repo, opts.orphan_grace).await?;
    let id = catalog::unused_backup_id(repo).await?;
    let label = opts
        .label
        .clone()
        .unwrap_or_else(|| format!("walvault {id}"));
    info!(id, label, server = %server.target, role = server.role.as_str(), "backup starting");
    let heartbeat_cancel = cancel.child_token();
    let heartbeat = tokio::spawn(heartbeat(
        repo.clone(),
        id.clone(),
        heartbeat_cancel.clone(),
    ));
    let result = run_steps(
        opts, repo, wal, cancel, conn, &server, &id, label, started, start_time,
    )
    .await;
    heartbeat_cancel.cancel();
    let last_beat = heartbeat.await.unwrap_or(0);
    if result.is_ok() {
        // Best effort: a leftover heartbeat of a complete backup is harmless.
        let _ = repo
            .delete(&layout::backup_heartbeat_key(&id, last_beat))
            .await;
    }
    result
}

/// The steps of a backup after its id is chosen.
#[allow(clippy::too_many_arguments)]
async fn run_steps(
    opts: &BackupOptions,
    repo: &Repository,
    wal: WalSource,
    cancel: &CancellationToken,
    conn: ReplicationConnection,
    server: &ServerInfo,
    id: &str,
    label: String,
    started: Instant,
    start_time: DateTime<Utc>,
) -> Result<BackupMetadata, Error> {
    let id = id.to_string();

    // The WAL connection holds a temporary slot from before the backup's
    // checkpoint, so the server keeps the backup's WAL until it is stored.
    let slot = format!("walvault_backup_{}", std::process::id());
    let mut wal_conn = ReplicationConnection::connect(&opts.conninfo).await?;
    wal_conn.identify_system().await?;
    wal_conn.create_temporary_physical_slot(&slot).await?;
    let mut wal_conn = Some(wal_conn);

    let wal_cancel = cancel.child_token();
    let wal_shutdown = wal::wal_shutdown(&wal_cancel);
    let stop = watch::channel(None);
    let mut wal_task = None;
    let standalone = matches!(wal, WalSource::Standalone);
    let stored = data::store_data(
        opts,
        repo,
        (&id, &label),
        conn,
        server.major,
        cancel,
        |start_lsn, timeline| {
            if standalone && let Some(c) = wal_conn.take() {
                wal_task = Some(wal::spawn_wal_stream(
                    opts,
                    repo,
                    c,
                    &slot,
                    (timeline, start_lsn),
                    None,
                    stop.1.clone(),
                    &wal_shutdown,
                ));
            }
        },
    )
    .await;
    let mut stored = match stored {
        Ok(s) => s,
        Err(e) => {
            wal_cancel.cancel();
            return Err(e);
        }
    };
    let (start_lsn, timeline) = stored.start;
    let manifest_bytes = stored.manifest.len() as u64;
    let manifest = std::mem::take(&mut stored.manifest);
    let manifest_stored = data::store_manifest(repo, &id, manifest, cancel).await?;
    info!(end = %stored.end.end_lsn, "backup data stored; waiting for its WAL");

    wal::secure_wal_range(
        opts,
        repo,
        wal,
        wal_task,
        wal_conn,
        &slot,
        (start_lsn, timeline, stored.end.end_lsn),
        server.segment_size_bytes,
        stop,
        &wal_shutdown,
    )
    .await?;

    let meta = metadata(
        &id,
        label,
        server,
        stored,
        (start_time, Utc::now(), started.elapsed()),
        (manifest_bytes, manifest_stored),
        opts,
    );
    check_still_whole(repo, &meta).await?;
    write_metadata(repo, &meta, cancel).await?;
    info!(
        id,
        bytes = meta.plain_bytes,
        stored = meta.stored_bytes,
        seconds = meta.duration_seconds,
        "backup complete"
    );
    Ok(meta)
}

/// Stores a heartbeat object every [`HEARTBEAT_INTERVAL`] until cancelled,
/// deleting the one before; returns the number of the last one.
async fn heartbeat(repo: Repository, id: String, cancel: CancellationToken) -> u64 {
    let mut n = 0;
    loop {
        let key = layout::backup_heartbeat_key(&id, n);
        let beat = Bytes::from(crate::format::time::to_text(&Utc::now()));
        if let Err(e) = repo.put_sealed(&key, vec![beat]).await {
            tracing::warn!(key, error = %crate::error::chain(&e), "could not store a backup heartbeat");
        } else if n > 0 {
            let _ = repo.delete(&layout::backup_heartbeat_key(&id, n - 1)).await;
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return n,
            () = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
        }
        n += 1;
    }
}

/// Checks, before `backup.json` makes the backup exist, that every part and
/// the manifest are still there: a backup stalled past the orphan grace
/// could have been cleaned up by another run, and must then fail, not
/// describe objects that are gone.
async fn check_still_whole(repo: &Repository, meta: &BackupMetadata) -> Result<(), Error> {
    let held: std::collections::BTreeSet<String> = repo
        .list(&layout::backup_prefix(&meta.id))
        .await?
        .into_iter()
        .map(|o| o.key)
        .collect();
    let wanted = meta
        .tablespaces
        .iter()
        .flat_map(|t| {
            t.parts
                .iter()
                .map(|p| layout::backup_part_key(&meta.id, &t.name, p.index))
        })
        .chain(std::iter::once(layout::backup_manifest_key(&meta.id)));
    for key in wanted {
        if !held.contains(&key) {
            return Err(Error::Interrupted(key));
        }
    }
    Ok(())
}

/// Connects through the shared handshake and checks that the server and
/// repository fit the settings.
async fn check_server(
    opts: &BackupOptions,
    repo: &Repository,
) -> Result<(ReplicationConnection, ServerInfo), Error> {
    let (conn, server) = server::connect(&opts.conninfo).await?;
    if opts.server_zstd_level.is_some() && server.major < 15 {
        return Err(Error::Unsupported(format!(
            "server-side compression needs PostgreSQL 15 or newer; {} runs {}",
            server.target, server.major
        )));
    }
    repo.ensure_manifest(
        &server.identity.system_identifier,
        server.major,
        server.segment_size_bytes,
    )
    .await?;
    Ok((conn, server))
}

/// Builds `backup.json` from what was stored.
fn metadata(
    id: &str,
    label: String,
    server: &ServerInfo,
    stored: data::DataStored,
    (start_time, stop_time, elapsed): (DateTime<Utc>, DateTime<Utc>, Duration),
    (manifest_bytes, manifest_stored): (u64, u64),
    opts: &BackupOptions,
) -> BackupMetadata {
    let data::DataStored {
        start: (start_lsn, timeline),
        end,
        tablespaces,
        plain_by_tablespace,
        mut parts,
        received,
        head,
        ..
    } = stored;
    let size = server.segment_size_bytes;
    let mut ts_records = Vec::new();
    let mut stored_total = manifest_stored;
    for (i, t) in tablespaces.iter().enumerate() {
        let parts = parts.remove(&i).unwrap_or_default();
        let stored: u64 = parts.iter().map(|p| p.stored_bytes).sum();
        stored_total += stored;
        ts_records.push(TablespaceRecord {
            name: t.name(),
            oid: t.oid,
            location: t.location.clone(),
            parts,
            plain_bytes: plain_by_tablespace.get(i).copied().unwrap_or(0),
            stored_bytes: stored,
        });
    }
    let name = |lsn: Lsn| SegmentName::from_lsn(timeline, lsn, size).to_file_name(size);
    BackupMetadata {
        version: BACKUP_METADATA_VERSION,
        id: id.to_string(),
        label,
        system_identifier: server.identity.system_identifier.clone(),
        server_version: server.version.clone(),
        pg_major: server.major,
        source: BackupSource {
            server: server.target.clone(),
            role: server.role.as_str().to_string(),
        },
        timeline,
        start_lsn,
        stop_lsn: end.end_lsn,
        start_time,
        stop_time,
        duration_seconds: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        wal_segment_size: size,
        wal_range: WalRange {
            timeline,
            start_lsn,
            stop_lsn: end.end_lsn,
            first_segment: name(start_lsn),
            last_segment: name(Lsn(end.end_lsn.0.saturating_sub(1)).max(start_lsn)),
        },
        tablespaces: ts_records,
        manifest_bytes,
        plain_bytes: received,
        stored_bytes: stored_total,
        part_size_bytes: opts.part_size_bytes,
        server_compression: opts.server_zstd_level.map(|_| "zstd".to_string()),
        backup_label: backup_label(&head, opts.server_zstd_level.is_some()),
        annotations: opts.annotations.clone(),
    }
}

/// The `backup_label` at the start of the main directory's stream
/// (decompressed first when the server compressed it), if it is there and
/// whole: recorded for operators, never relied on by restore, which reads
/// the one in the restored directory.
fn backup_label(head: &[u8], server_compressed: bool) -> Option<String> {
    const MAX_LABEL_BYTES: u64 = 16 * 1024;
    let plain;
    let tar = if server_compressed {
        let mut out = Vec::new();
        let mut reader = zstd::stream::read::Decoder::new(head).ok()?;
        // A prefix of the stream: read what decompresses, then stop.
        let _ = std::io::Read::read_to_end(
            &mut std::io::Read::take(&mut reader, data::HEAD_BYTES as u64),
            &mut out,
        );
        plain = out;
        &plain[..]
    } else {
        head
    };
    let bytes = tar::leading_file(tar, "backup_label", MAX_LABEL_BYTES)?;
    String::from_utf8(bytes).ok()
}

/// Writes `backup.json`: from now on the backup exists.
async fn write_metadata(
    repo: &Repository,
    meta: &BackupMetadata,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let key = layout::backup_json_key(&meta.id);
    let body = Bytes::from(serde_json::to_vec_pretty(meta).expect("metadata serializes"));
    storage::retry(&key, cancel, || repo.put_sealed(&key, vec![body.clone()])).await?;
    Ok(())
}
