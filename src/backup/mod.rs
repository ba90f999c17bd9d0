//! Base backups: BASE_BACKUP over walvault's own replication connection,
//! the tar streams cut into parts, sealed and uploaded in parallel, the
//! server's manifest, the backup's WAL range, and `backup.json` last.
//!
//! Invariants:
//! - `backup.json` is written only after every part, the manifest and every
//!   WAL byte from the start LSN to the stop LSN are stored;
//! - memory does not grow with the database: parts in flight are bounded by
//!   the upload concurrency, and a slow store stops the socket reads.

pub mod parts;
pub mod protocol;
pub mod tar;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::format::backup::{
    BACKUP_METADATA_VERSION, BackupMetadata, BackupSource, PartRecord, TablespaceRecord, WalRange,
};
use crate::lsn::{Lsn, SegmentName, TimelineId};
use crate::progress::Progress;
use crate::protocol::{ConnInfo, ReplicationConnection};
use crate::storage::{self, Repository, layout};
use crate::wal::archive::WalInventory;
use crate::wal::receiver::{self, StreamOptions, StreamPlan};

use self::parts::{BufferPool, Part, PartCutter};
use self::protocol::{BackupEvent, BaseBackupOptions, TablespaceInfo};

/// Default plaintext bytes per part: large enough for few objects, small
/// enough that parts in flight stay well inside the memory budget.
pub const DEFAULT_PART_SIZE_BYTES: u64 = 16 << 20;
/// Backup events buffered between the socket and the part cutter.
const EVENT_QUEUE_DEPTH: usize = 64;
/// An unfinished backup whose newest object is older than this is an
/// orphan of an interrupted run and is deleted by the next backup (a running
/// backup stores a part every few seconds).
pub const DEFAULT_ORPHAN_GRACE: Duration = Duration::from_secs(60);
/// How long a sidecar backup waits for the stream to store its WAL.
const SIDECAR_WAL_WAIT: Duration = Duration::from_secs(600);

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
    /// Settings for streaming the backup's WAL range.
    pub stream: StreamOptions,
    /// Unfinished backups untouched for this long are deleted as orphans.
    pub orphan_grace: Duration,
}

/// Where the backup's WAL comes from.
#[derive(Clone, Debug)]
pub enum WalSource {
    /// No sidecar: stream the range on a temporary slot, as `pg_basebackup -X stream`.
    Standalone,
    /// A sidecar stream runs; wait for its durable LSN (and fill any gap before its start).
    Sidecar(watch::Receiver<Lsn>),
}

/// A backup failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the server failed.
    #[error(transparent)]
    Protocol(#[from] crate::protocol::Error),
    /// The repository failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// Streaming the backup's WAL failed.
    #[error("streaming the backup's WAL failed")]
    Stream(#[source] receiver::Error),
    /// The server cannot be backed up by walvault.
    #[error("{0}")]
    Unsupported(String),
    /// The WAL range is not complete in the repository.
    #[error("the backup's WAL is not all in the repository: missing {0}")]
    WalMissing(String),
    /// Cancelled.
    #[error("backup cancelled")]
    Cancelled,
}

impl Error {
    /// Whether settings must change to fix it.
    pub fn is_configuration(&self) -> bool {
        match self {
            Error::Storage(e) => e.is_configuration(),
            Error::Stream(e) => e.is_configuration(),
            Error::Unsupported(_) => true,
            _ => false,
        }
    }
}

/// A new backup id from the current UTC time.
fn new_backup_id() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
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
    let started = Instant::now();
    let start_time = chrono::Utc::now();
    let mut conn = ReplicationConnection::connect(&opts.conninfo).await?;
    let major = conn.server_major().unwrap_or(0);
    if !receiver::SUPPORTED_MAJORS.contains(&major) {
        return Err(Error::Unsupported(format!(
            "server {} runs PostgreSQL {}, but walvault supports {} to {}",
            conn.target(),
            conn.parameter("server_version").unwrap_or("?"),
            receiver::SUPPORTED_MAJORS.start(),
            receiver::SUPPORTED_MAJORS.end()
        )));
    }
    if opts.server_zstd_level.is_some() && major < 15 {
        return Err(Error::Unsupported(format!(
            "server-side compression needs PostgreSQL 15 or newer; {} runs {major}",
            conn.target()
        )));
    }
    let identity = conn.identify_system().await?;
    let segment_size = conn.wal_segment_size().await?;
    repo.ensure_manifest(&identity.system_identifier, major, segment_size)
        .await?;
    let role = if conn.parameter("in_hot_standby") == Some("on") {
        "standby"
    } else {
        "primary"
    };
    let server_version = conn.parameter("server_version").unwrap_or("").to_string();
    let source = BackupSource {
        server: conn.target().to_string(),
        role: role.to_string(),
    };

    clean_orphans(repo, opts.orphan_grace).await?;
    let id = unused_backup_id(repo).await?;
    let label = opts
        .label
        .clone()
        .unwrap_or_else(|| format!("walvault {id}"));
    info!(id, label, server = %source.server, role, "backup starting");

    // The WAL connection holds a temporary slot from before the backup's
    // checkpoint, so the server keeps the backup's WAL until it is stored.
    let slot = format!("walvault_backup_{}", std::process::id());
    let mut wal_conn = ReplicationConnection::connect(&opts.conninfo).await?;
    wal_conn.identify_system().await?;
    wal_conn.create_temporary_physical_slot(&slot).await?;

    let (events_tx, mut events_rx) = mpsc::channel(EVENT_QUEUE_DEPTH);
    let bb_opts = BaseBackupOptions {
        label: label.clone(),
        fast_checkpoint: opts.fast_checkpoint,
        server_zstd_level: opts.server_zstd_level,
    };
    let base_backup = tokio::spawn(async move {
        let r = protocol::run_base_backup(&mut conn, major, &bb_opts, events_tx).await;
        (r, conn)
    });

    let progress = Progress::new(&format!("backup {id}"), 0);
    let mut uploader = PartUploader::new(
        repo,
        &id,
        opts.upload_concurrency,
        opts.server_zstd_level.is_some(),
    );
    let mut tablespaces: Vec<TablespaceInfo> = Vec::new();
    let mut plain_by_ts: Vec<u64> = Vec::new();
    let mut cutter: Option<(usize, PartCutter)> = None;
    // Part buffers: those in flight, the one filling and one spare.
    let pool = BufferPool::new(
        opts.part_size_bytes as usize,
        opts.upload_concurrency.max(1) + 2,
    );
    uploader.pool = Some(pool.clone());
    let mut manifest: Vec<u8> = Vec::new();
    let mut start: Option<(Lsn, TimelineId)> = None;
    let mut received: u64 = 0;
    let (stop_tx, stop_rx) = watch::channel(None);
    let mut wal_task: Option<
        tokio::task::JoinHandle<Result<receiver::StreamSummary, receiver::Error>>,
    > = None;
    let wal_cancel = cancel.child_token();
    let mut wal_conn = Some(wal_conn);

    let consume = async {
        while let Some(ev) = events_rx.recv().await {
            match ev {
                BackupEvent::Started {
                    start_lsn,
                    timeline,
                } => {
                    info!(start = %start_lsn, timeline, "backup checkpoint done");
                    start = Some((start_lsn, timeline));
                    if matches!(wal, WalSource::Standalone) {
                        wal_task = Some(spawn_wal_stream(
                            opts,
                            repo,
                            wal_conn.take().expect("WAL connection unused so far"),
                            &slot,
                            (timeline, start_lsn),
                            stop_rx.clone(),
                            &wal_cancel,
                        ));
                    }
                }
                BackupEvent::Tablespaces(list) => {
                    let total: u64 = list.iter().filter_map(|t| t.size_kib).sum::<u64>() * 1024;
                    progress.set_total(total);
                    plain_by_ts = vec![0; list.len()];
                    tablespaces = list;
                }
                BackupEvent::ArchiveStart(i) => cutter = Some((i, PartCutter::new(pool.clone()))),
                BackupEvent::ArchiveData(data) => {
                    let (i, c) = cutter
                        .as_mut()
                        .ok_or_else(|| Error::Unsupported("data before an archive".into()))?;
                    let i = *i;
                    received += data.len() as u64;
                    plain_by_ts[i] += data.len() as u64;
                    for part in c.push(&data) {
                        uploader.upload(&tablespaces[i].name(), i, part).await?;
                    }
                    progress.set_done(received);
                }
                BackupEvent::ArchiveEnd => {
                    if let Some((i, c)) = cutter.take()
                        && let Some(part) = c.finish()
                    {
                        uploader.upload(&tablespaces[i].name(), i, part).await?;
                    }
                }
                BackupEvent::Progress(n) => progress.set_done(n.max(received)),
                BackupEvent::ManifestData(d) => manifest.extend_from_slice(&d),
            }
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
        }
        Ok::<(), Error>(())
    };
    let consumed = consume.await;
    drop(events_rx);
    let (bb_result, conn) = base_backup.await.expect("base backup task does not panic");
    if let Err(e) = consumed {
        wal_cancel.cancel();
        return Err(e);
    }
    let end = bb_result?;
    conn.terminate().await;
    progress.finish();
    let (start_lsn, timeline) =
        start.ok_or_else(|| Error::Unsupported("backup ended without a start".into()))?;

    // Every part stored, with its checksum.
    let mut records = uploader.finish().await?;
    let manifest_bytes = manifest.len() as u64;
    let manifest_stored = repo
        .put_sealed(
            &layout::backup_manifest_key(&id),
            vec![Bytes::from(manifest)],
        )
        .await?;
    info!(end = %end.end_lsn, "backup data stored; waiting for its WAL");

    // The WAL from start to end.
    match wal {
        WalSource::Standalone => {
            let _ = stop_tx.send(Some(end.end_lsn));
            let task = wal_task.take().expect("spawned at the start");
            task.await
                .expect("WAL task does not panic")
                .map_err(Error::Stream)?;
        }
        WalSource::Sidecar(mut durable) => {
            let wait = async {
                tokio::time::timeout(SIDECAR_WAL_WAIT, durable.wait_for(|d| *d >= end.end_lsn))
                    .await
                    .is_ok_and(|r| r.is_ok())
            };
            let stored = tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(Error::Cancelled),
                ok = wait => ok,
            };
            if !stored {
                warn!(
                    "the sidecar stream did not store the backup's WAL in time; streaming it here"
                );
            }
            if missing_wal(repo, segment_size, timeline, start_lsn, end.end_lsn)
                .await?
                .is_some()
            {
                // The stream began after the backup's start (or fell behind): fill in on the temporary slot.
                let task = spawn_wal_stream(
                    opts,
                    repo,
                    wal_conn
                        .take()
                        .expect("WAL connection unused in sidecar mode"),
                    &slot,
                    (timeline, start_lsn),
                    stop_rx.clone(),
                    &wal_cancel,
                );
                let _ = stop_tx.send(Some(end.end_lsn));
                task.await
                    .expect("WAL task does not panic")
                    .map_err(Error::Stream)?;
            }
        }
    }
    if let Some(missing) = missing_wal(repo, segment_size, timeline, start_lsn, end.end_lsn).await?
    {
        return Err(Error::WalMissing(missing));
    }
    if let Some(c) = wal_conn.take() {
        c.terminate().await;
    }

    let mut ts_records = Vec::new();
    let mut stored_total = manifest_stored;
    for (i, t) in tablespaces.iter().enumerate() {
        let mut parts = records.remove(&i).unwrap_or_default();
        parts.sort_by_key(|p| p.index);
        let stored: u64 = parts.iter().map(|p| p.stored_bytes).sum();
        stored_total += stored;
        ts_records.push(TablespaceRecord {
            name: t.name(),
            oid: t.oid,
            location: t.location.clone(),
            parts,
            plain_bytes: plain_by_ts.get(i).copied().unwrap_or(0),
            stored_bytes: stored,
        });
    }
    let stop_time = chrono::Utc::now();
    let name =
        |lsn: Lsn| SegmentName::from_lsn(timeline, lsn, segment_size).to_file_name(segment_size);
    let meta = BackupMetadata {
        version: BACKUP_METADATA_VERSION,
        id: id.clone(),
        label,
        system_identifier: identity.system_identifier,
        server_version,
        pg_major: major,
        source,
        timeline,
        start_lsn: start_lsn.to_string(),
        stop_lsn: end.end_lsn.to_string(),
        start_time: start_time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        stop_time: stop_time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        duration_seconds: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        wal_segment_size: segment_size,
        wal_range: WalRange {
            timeline,
            start_lsn: start_lsn.to_string(),
            stop_lsn: end.end_lsn.to_string(),
            first_segment: name(start_lsn),
            last_segment: name(Lsn(end.end_lsn.0.saturating_sub(1)).max(start_lsn)),
        },
        tablespaces: ts_records,
        manifest_bytes,
        plain_bytes: received,
        stored_bytes: stored_total,
        part_size_bytes: opts.part_size_bytes,
        server_compression: opts.server_zstd_level.map(|_| "zstd".to_string()),
    };
    let body = serde_json::to_vec_pretty(&meta).expect("metadata serializes");
    repo.put_sealed(&layout::backup_json_key(&id), vec![Bytes::from(body)])
        .await?;
    info!(
        id,
        bytes = received,
        stored = stored_total,
        seconds = meta.duration_seconds,
        "backup complete"
    );
    Ok(meta)
}

fn spawn_wal_stream(
    opts: &BackupOptions,
    repo: &Repository,
    conn: ReplicationConnection,
    slot: &str,
    start: (TimelineId, Lsn),
    stop_at: watch::Receiver<Option<Lsn>>,
    cancel: &CancellationToken,
) -> tokio::task::JoinHandle<Result<receiver::StreamSummary, receiver::Error>> {
    let mut stream_opts = opts.stream.clone();
    stream_opts.slot = slot.to_string();
    let repo = repo.clone();
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let plan = StreamPlan {
            start: Some(start),
            stop_at: Some(stop_at),
            connection: Some(conn),
            slot_ready: true,
            durable: None,
        };
        receiver::run_plan(&stream_opts, &repo, &cancel, plan).await
    })
}

/// Deletes the objects of backups that never wrote `backup.json` and whose
/// newest object is older than `grace` (an interrupted run).
///
/// # Errors
/// Store errors.
pub async fn clean_orphans(repo: &Repository, grace: Duration) -> Result<usize, storage::Error> {
    let objects = repo.list(layout::BACKUPS_PREFIX).await?;
    let mut by_id: BTreeMap<String, Vec<storage::ObjectInfo>> = BTreeMap::new();
    for o in objects {
        if let Some(id) = layout::backup_id_of(&o.key) {
            by_id.entry(id.to_string()).or_default().push(o);
        }
    }
    let now = chrono::Utc::now();
    let mut deleted = 0;
    for (id, objs) in by_id {
        let complete = objs.iter().any(|o| o.key == layout::backup_json_key(&id));
        let newest = objs.iter().map(|o| o.last_modified).max().unwrap_or(now);
        let age = (now - newest).to_std().unwrap_or_default();
        if complete || age < grace {
            continue;
        }
        warn!(
            id,
            objects = objs.len(),
            "deleting the parts of an interrupted backup"
        );
        for o in objs {
            repo.delete(&o.key).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

async fn unused_backup_id(repo: &Repository) -> Result<String, storage::Error> {
    let base = new_backup_id();
    for n in 0..100 {
        let id = if n == 0 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        if repo.list(&layout::backup_prefix(&id)).await?.is_empty() {
            return Ok(id);
        }
    }
    Ok(format!("{base}-{}", std::process::id()))
}

/// The first WAL segment of `[start, end)` on `timeline` the repository
/// lacks (the last one may be held as deltas reaching `end`), if any.
///
/// # Errors
/// Store errors.
pub async fn missing_wal(
    repo: &Repository,
    segment_size: u64,
    timeline: TimelineId,
    start: Lsn,
    end: Lsn,
) -> Result<Option<String>, storage::Error> {
    let inv = WalInventory::scan(repo, segment_size).await?;
    Ok(first_missing_segment(
        &inv,
        segment_size,
        timeline,
        start,
        end,
    ))
}

/// Pure part of [`missing_wal`].
pub fn first_missing_segment(
    inv: &WalInventory,
    segment_size: u64,
    timeline: TimelineId,
    start: Lsn,
    end: Lsn,
) -> Option<String> {
    let first = start.segment_number(segment_size);
    let last = Lsn(end.0.saturating_sub(1).max(start.0)).segment_number(segment_size);
    let t = inv.timelines.get(&timeline);
    for n in first..=last {
        let seg = SegmentName {
            timeline,
            number: n,
        };
        let held = t.is_some_and(|t| {
            t.complete.contains(&n) || {
                let need = if n == last {
                    end.0 - n * segment_size
                } else {
                    segment_size
                };
                t.delta_chain_end(n) >= need
            }
        });
        if !held {
            return Some(seg.to_file_name(segment_size));
        }
    }
    None
}

/// Reads every `backup.json`, oldest first.
///
/// # Errors
/// Store or integrity errors (naming the object).
pub async fn list_backups(repo: &Repository) -> Result<Vec<BackupMetadata>, storage::Error> {
    let objects = repo.list(layout::BACKUPS_PREFIX).await?;
    let mut out = Vec::new();
    for o in objects {
        let Some(id) = layout::backup_id_of(&o.key) else {
            continue;
        };
        if o.key != layout::backup_json_key(id) {
            continue;
        }
        let Some(bytes) = repo.get_opened(&o.key).await? else {
            continue;
        };
        let meta: BackupMetadata =
            serde_json::from_slice(&bytes).map_err(|e| storage::Error::BadManifest {
                key: o.key.clone(),
                reason: e.to_string(),
            })?;
        out.push(meta);
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

/// Seals and uploads parts on the pool, at most `concurrency` at once, and
/// collects their records.
struct PartUploader {
    repo: Repository,
    id: String,
    semaphore: Arc<Semaphore>,
    uploads: JoinSet<Result<(usize, PartRecord), storage::Error>>,
    records: BTreeMap<usize, Vec<PartRecord>>,
    /// Seal without compression (the server compressed already).
    raw: bool,
    /// Where stored parts' buffers go back to.
    pool: Option<BufferPool>,
}

impl PartUploader {
    fn new(repo: &Repository, id: &str, concurrency: usize, raw: bool) -> Self {
        PartUploader {
            raw,
            repo: repo.clone(),
            id: id.to_string(),
            semaphore: Arc::new(Semaphore::new(concurrency.max(1))),
            uploads: JoinSet::new(),
            records: BTreeMap::new(),
            pool: None,
        }
    }

    /// Starts uploading a part; waits for a free slot first so that at most
    /// `concurrency` parts are held.
    ///
    /// # Errors
    /// The failure of an earlier upload.
    async fn upload(&mut self, tablespace: &str, ts_index: usize, part: Part) -> Result<(), Error> {
        // Surface failures of finished uploads early.
        while let Some(done) = self.uploads.try_join_next() {
            let (ts, rec) = done.expect("upload task does not panic")?;
            self.records.entry(ts).or_default().push(rec);
        }
        let permit = self
            .semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let repo = self.repo.clone();
        let key = layout::backup_part_key(&self.id, tablespace, part.index);
        let raw = self.raw;
        let pool = self.pool.clone();
        self.uploads.spawn(async move {
            let _permit = permit;
            let plain = part.len() as u64;
            let pieces = vec![part.data.clone()];
            let for_crc = part.data.clone();
            let crc = tokio::task::spawn_blocking(move || crc32c::crc32c(&for_crc))
                .await
                .expect("crc does not panic");
            let cancel = CancellationToken::new();
            let seal = crate::format::SealOptions {
                compression: crate::format::Compression::None,
                ..crate::format::SealOptions::default()
            };
            let stored = storage::retry(&key, Some(8), Duration::from_secs(10), &cancel, || {
                let pieces = pieces.clone();
                async {
                    if raw {
                        repo.put_sealed_with(&key, pieces, seal).await
                    } else {
                        repo.put_sealed(&key, pieces).await
                    }
                }
            })
            .await;
            drop(pieces);
            let index = part.index;
            if let Some(pool) = pool {
                pool.give_back(part);
            }
            let stored = stored?;
            Ok((
                ts_index,
                PartRecord {
                    index,
                    plain_bytes: plain,
                    stored_bytes: stored,
                    crc32c: format!("{crc:08x}"),
                },
            ))
        });
        Ok(())
    }

    /// Waits for every upload; the records by tablespace index.
    ///
    /// # Errors
    /// The first failed upload.
    async fn finish(mut self) -> Result<BTreeMap<usize, Vec<PartRecord>>, Error> {
        while let Some(r) = self.uploads.join_next().await {
            let (ts, rec) = r.expect("upload task does not panic")?;
            self.records.entry(ts).or_default().push(rec);
        }
        Ok(self.records)
    }
}
