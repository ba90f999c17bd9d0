//! The data step of a backup: BASE_BACKUP's tar streams cut into parts
//! (one part-sized buffer each, from a small pool) and handed to the one
//! upload stage; the server's manifest collected; what was stored recorded.
//!
//! Memory does not grow with the database: the stage takes a part only
//! when an upload slot is free, its input holds one more, and the pool
//! keeps `concurrency + 2` buffers, so a slow store stops the socket reads.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::format::backup::PartRecord;
use crate::lsn::{Lsn, TimelineId};
use crate::pipeline::upload::{self, ObjectKind, Stage, Stored, UploadJob, UploadStats};
use crate::progress::Progress;
use crate::protocol::ReplicationConnection;
use crate::storage::{Repository, layout};

use super::parts::{BufferPool, Part, PartCutter};
use super::protocol::{self, BackupEnd, BackupEvent, BaseBackupOptions, TablespaceInfo};
use super::{BackupOptions, Error};

/// Parts waiting for an upload slot: one, so the parts held are those in
/// flight, this one and the one filling.
const PART_QUEUE_DEPTH: usize = 1;

/// Bytes kept from the start of the main directory's stream, where the
/// server puts `backup_label`.
pub(super) const HEAD_BYTES: usize = 64 * 1024;

/// What the data step produced.
pub(super) struct DataStored {
    /// Start LSN and timeline.
    pub start: (Lsn, TimelineId),
    /// How BASE_BACKUP ended.
    pub end: BackupEnd,
    /// The tablespaces, main directory last.
    pub tablespaces: Vec<TablespaceInfo>,
    /// Plaintext bytes of each tablespace's stream.
    pub plain_by_tablespace: Vec<u64>,
    /// Stored parts, by tablespace index.
    pub parts: BTreeMap<usize, Vec<PartRecord>>,
    /// The server's manifest.
    pub manifest: Vec<u8>,
    /// Plaintext bytes of all streams.
    pub received: u64,
    /// The first bytes of the main directory's stream (as the server sent
    /// them: compressed with server-side compression).
    pub head: Vec<u8>,
}

/// Runs BASE_BACKUP (with `label`) on `conn` and stores its parts under backup `id`.
/// `on_start` is called once the server reports the start LSN (the WAL
/// stream of a standalone backup begins there).
///
/// # Errors
/// Server, store or protocol failures, or cancellation.
///
/// # Cancel safety
/// Not cancel safe; use `cancel`.
pub(super) async fn store_data(
    opts: &BackupOptions,
    repo: &Repository,
    (id, label): (&str, &str),
    mut conn: ReplicationConnection,
    major: u32,
    cancel: &CancellationToken,
    on_start: impl FnMut(Lsn, TimelineId) + Send,
) -> Result<DataStored, Error> {
    let bb_opts = BaseBackupOptions {
        label: label.to_string(),
        fast_checkpoint: opts.fast_checkpoint,
        server_zstd_level: opts.server_zstd_level,
        max_rate_kib: opts.max_rate_bytes.map(super::max_rate_kib),
    };

    let concurrency = opts.upload_concurrency.max(1);
    let pool = BufferPool::new(opts.part_size_bytes as usize, concurrency + 2);
    let stage_cancel = cancel.child_token();
    let (jobs_tx, jobs_rx) = mpsc::channel(PART_QUEUE_DEPTH);
    let (stored_tx, stored_rx) = mpsc::channel(concurrency);
    let stage = tokio::spawn(upload::run(
        Stage {
            repo: repo.clone(),
            concurrency,
            memory: None,
            stats: Arc::new(UploadStats::default()),
            durable: None,
            stored: Some(stored_tx),
            cancel: stage_cancel.clone(),
            wal_check: None,
        },
        jobs_rx,
    ));
    let collector = tokio::spawn(collect_records(stored_rx, pool.clone()));

    let mut sink = Cutter {
        id,
        compress: opts.server_zstd_level.is_none(),
        pool: pool.clone(),
        jobs: jobs_tx,
        progress: Progress::new(&format!("backup {id}"), 0),
        tablespaces: Vec::new(),
        plain_by_tablespace: Vec::new(),
        cutter: None,
        manifest: Vec::new(),
        start: None,
        received: 0,
        head: Vec::new(),
        on_start,
        cancel,
    };
    let bb_result = protocol::run_base_backup(&mut conn, major, &bb_opts, &mut sink).await;
    let Cutter {
        progress,
        tablespaces,
        plain_by_tablespace,
        manifest,
        start,
        received,
        head,
        jobs,
        ..
    } = sink;
    drop(jobs);
    if bb_result.is_err() {
        stage_cancel.cancel();
    }
    let staged = stage
        .await
        .map_err(|e| Error::Unsupported(format!("the upload stage panicked: {e}")))?;
    let parts = collector
        .await
        .map_err(|e| Error::Unsupported(format!("recording stored parts panicked: {e}")))?;
    let end = bb_result?;
    staged?;
    conn.terminate().await;
    progress.finish();
    let start = start.ok_or_else(|| Error::Unsupported("backup ended without a start".into()))?;
    Ok(DataStored {
        start,
        end,
        tablespaces,
        plain_by_tablespace,
        parts,
        manifest,
        received,
        head,
    })
}

/// Cuts the tar streams into parts and hands them to the upload stage, in
/// the task that reads the socket.
struct Cutter<'a, F> {
    id: &'a str,
    compress: bool,
    pool: BufferPool,
    jobs: mpsc::Sender<UploadJob>,
    progress: Progress,
    tablespaces: Vec<TablespaceInfo>,
    plain_by_tablespace: Vec<u64>,
    cutter: Option<(usize, PartCutter)>,
    manifest: Vec<u8>,
    start: Option<(Lsn, TimelineId)>,
    received: u64,
    head: Vec<u8>,
    on_start: F,
    cancel: &'a CancellationToken,
}

impl<F: FnMut(Lsn, TimelineId) + Send> Cutter<'_, F> {
    async fn send_part(&mut self, ts: usize, part: Part) -> Result<(), Error> {
        let name = self.tablespaces[ts].name();
        let mut job = UploadJob::new(
            layout::backup_part_key(self.id, &name, part.index),
            vec![part.data],
            ObjectKind::BackupPart {
                tablespace: ts,
                index: part.index,
            },
        );
        job.compress = self.compress;
        self.jobs
            .send(job)
            .await
            .map_err(|_| Error::Unsupported("the upload stage stopped".into()))
    }
}

impl<F: FnMut(Lsn, TimelineId) + Send> protocol::BackupSink for Cutter<'_, F> {
    type Error = Error;

    async fn event(&mut self, ev: BackupEvent) -> Result<(), Error> {
        match ev {
            BackupEvent::Started {
                start_lsn,
                timeline,
            } => {
                info!(start = %start_lsn, timeline = %timeline, "backup checkpoint done");
                self.start = Some((start_lsn, timeline));
                (self.on_start)(start_lsn, timeline);
            }
            BackupEvent::Tablespaces(list) => {
                let total: u64 = list.iter().filter_map(|t| t.size_kib).sum::<u64>() * 1024;
                self.progress.set_total(total);
                self.plain_by_tablespace = vec![0; list.len()];
                self.tablespaces = list;
            }
            BackupEvent::ArchiveStart(i) => {
                self.cutter = Some((i, PartCutter::new(self.pool.clone())));
            }
            BackupEvent::ArchiveData(data) => {
                let (i, c) = self
                    .cutter
                    .as_mut()
                    .ok_or_else(|| Error::Unsupported("data before an archive".into()))?;
                let i = *i;
                if self.tablespaces.get(i).is_some_and(|t| t.oid.is_none()) {
                    let take = HEAD_BYTES.saturating_sub(self.head.len()).min(data.len());
                    self.head.extend_from_slice(&data[..take]);
                }
                let parts = c.push(&data);
                self.received += data.len() as u64;
                self.plain_by_tablespace[i] += data.len() as u64;
                for part in parts {
                    self.send_part(i, part).await?;
                }
                self.progress.set_done(self.received);
            }
            BackupEvent::ArchiveEnd => {
                if let Some((i, c)) = self.cutter.take()
                    && let Some(part) = c.finish()
                {
                    self.send_part(i, part).await?;
                }
            }
            BackupEvent::Progress(n) => self.progress.set_done(n.max(self.received)),
            BackupEvent::ManifestData(d) => self.manifest.extend_from_slice(&d),
        }
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        Ok(())
    }
}

/// Records each stored part and gives its buffer back to the pool.
async fn collect_records(
    mut stored: mpsc::Receiver<Stored>,
    pool: BufferPool,
) -> BTreeMap<usize, Vec<PartRecord>> {
    let mut records: BTreeMap<usize, Vec<PartRecord>> = BTreeMap::new();
    while let Some(s) = stored.recv().await {
        let ObjectKind::BackupPart { tablespace, index } = s.job.kind else {
            continue;
        };
        let plain: u64 = s.job.pieces.iter().map(|p| p.len() as u64).sum();
        records.entry(tablespace).or_default().push(PartRecord {
            index,
            plain_bytes: plain,
            stored_bytes: s.stored_bytes,
            crc32c: format!("{:08x}", s.crc32c),
        });
        for data in s.job.pieces {
            pool.give_back(Part { index, data });
        }
    }
    for parts in records.values_mut() {
        parts.sort_by_key(|p| p.index);
    }
    records
}

/// The server's manifest, stored beside the parts.
///
/// # Errors
/// Store errors that retrying cannot fix, or cancellation.
pub(super) async fn store_manifest(
    repo: &Repository,
    id: &str,
    manifest: Vec<u8>,
    cancel: &CancellationToken,
) -> Result<u64, Error> {
    let key = layout::backup_manifest_key(id);
    let body = Bytes::from(manifest);
    Ok(crate::storage::retry(&key, cancel, || repo.put_sealed(&key, vec![body.clone()])).await?)
}
