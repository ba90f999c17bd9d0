//! BASE_BACKUP on a replication connection, for both grammars.
//!
//! PostgreSQL 15+ takes the parenthesised option list and sends one COPY
//! stream whose CopyData messages start with a type byte (`n` new archive,
//! `d` data, `p` progress, `m` manifest follows). PostgreSQL 14 takes
//! keywords and sends one CopyOut per tablespace (raw tar, without the two
//! end blocks), then one for the manifest. Both become the same
//! [`BackupEvent`]s.

use bytes::{Buf, Bytes};

use crate::lsn::{Lsn, TimelineId};
use crate::protocol::connection::{ResponseEvent, Row};
use crate::protocol::{self, ReplicationConnection};

/// BASE_BACKUP settings.
#[derive(Clone, Debug)]
pub struct BaseBackupOptions {
    /// LABEL.
    pub label: String,
    /// CHECKPOINT 'fast' (else 'spread').
    pub fast_checkpoint: bool,
    /// Server-side zstd at this level (PostgreSQL 15+).
    pub server_zstd_level: Option<i32>,
    /// MAX_RATE: the server sends at most this many KiB per second.
    pub max_rate_kib: Option<u32>,
}

/// A tablespace as the server lists it before the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TablespaceInfo {
    /// OID (`None` for the main data directory, listed last).
    pub oid: Option<u32>,
    /// Location on the server.
    pub location: Option<String>,
    /// Size estimate in KiB (with PROGRESS).
    pub size_kib: Option<u64>,
}

impl TablespaceInfo {
    /// `base` or the OID, as used in object keys.
    pub fn name(&self) -> String {
        self.oid
            .map_or_else(|| "base".to_string(), |o| o.to_string())
    }
}

/// What the backup stream delivers, in order.
#[derive(Debug)]
pub enum BackupEvent {
    /// The backup started: start LSN (checkpoint redo) and timeline.
    Started {
        /// Start LSN.
        start_lsn: Lsn,
        /// Timeline.
        timeline: TimelineId,
    },
    /// The tablespaces, main directory last.
    Tablespaces(Vec<TablespaceInfo>),
    /// The tar stream of the tablespace at this index of the list begins.
    ArchiveStart(usize),
    /// Bytes of the current tar stream.
    ArchiveData(Bytes),
    /// The current tar stream ended.
    ArchiveEnd,
    /// Bytes read by the server so far (whole backup).
    Progress(u64),
    /// Bytes of the server's backup manifest.
    ManifestData(Bytes),
}

/// How the backup ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackupEnd {
    /// End LSN (replay must reach it for consistency).
    pub end_lsn: Lsn,
    /// Timeline at the end.
    pub timeline: TimelineId,
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The BASE_BACKUP command for a server of major version `major`.
pub fn base_backup_command(major: u32, opts: &BaseBackupOptions) -> String {
    let label = quote_literal(&opts.label);
    if major >= 15 {
        let checkpoint = if opts.fast_checkpoint {
            "fast"
        } else {
            "spread"
        };
        let compression = opts
            .server_zstd_level
            .map(|l| format!(", COMPRESSION 'zstd', COMPRESSION_DETAIL 'level={l}'"))
            .unwrap_or_default();
        let rate = opts
            .max_rate_kib
            .map(|r| format!(", MAX_RATE {r}"))
            .unwrap_or_default();
        format!(
            "BASE_BACKUP (LABEL {label}, PROGRESS, CHECKPOINT '{checkpoint}', WAIT false, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP{rate}{compression})"
        )
    } else {
        let fast = if opts.fast_checkpoint { " FAST" } else { "" };
        let rate = opts
            .max_rate_kib
            .map(|r| format!(" MAX_RATE {r}"))
            .unwrap_or_default();
        format!(
            "BASE_BACKUP LABEL {label} PROGRESS{fast} NOWAIT TABLESPACE_MAP{rate} MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'"
        )
    }
}

fn bad(msg: impl Into<String>) -> protocol::Error {
    protocol::Error::Protocol(msg.into())
}

fn lsn_tli(row: &Row, what: &str) -> Result<(Lsn, TimelineId), protocol::Error> {
    let lsn = row
        .values
        .first()
        .and_then(|v| v.as_deref())
        .ok_or_else(|| bad(format!("{what}: no LSN")))?;
    let tli = row
        .values
        .get(1)
        .and_then(|v| v.as_deref())
        .ok_or_else(|| bad(format!("{what}: no timeline")))?;
    Ok((
        lsn.parse()
            .map_err(|_| bad(format!("{what}: bad LSN {lsn:?}")))?,
        tli.parse()
            .map_err(|_| bad(format!("{what}: bad timeline {tli:?}")))?,
    ))
}

/// Reads one result set (rows until CommandComplete).
async fn read_result_set(conn: &mut ReplicationConnection) -> Result<Vec<Row>, protocol::Error> {
    let mut rows = Vec::new();
    loop {
        match conn.next_response_event().await? {
            ResponseEvent::RowDescription(_) => {}
            ResponseEvent::DataRow(r) => rows.push(r),
            ResponseEvent::CommandComplete(_) => return Ok(rows),
            ResponseEvent::Error(e) => {
                drain_to_ready(conn).await;
                return Err(protocol::Error::Server(e));
            }
            other => {
                return Err(bad(format!(
                    "unexpected {other:?} in a BASE_BACKUP result set"
                )));
            }
        }
    }
}

async fn drain_to_ready(conn: &mut ReplicationConnection) {
    while let Ok(ev) = conn.next_response_event().await {
        if matches!(ev, ResponseEvent::Ready) {
            break;
        }
    }
}

/// Where [`run_base_backup`] hands its events.
pub trait BackupSink: Send {
    /// The error that stops the backup.
    type Error: From<protocol::Error> + Send;
    /// Takes one event; an error ends the backup with it.
    fn event(
        &mut self,
        ev: BackupEvent,
    ) -> impl std::future::Future<Output = Result<(), Self::Error>> + Send;
}

/// Runs BASE_BACKUP and hands its events to `on_event`, in the same task:
/// while it works the socket is not read, and the server waits (no queue
/// between the two, and no wake-up per message).
///
/// # Errors
/// Server errors (with SQLSTATE; a checksum failure is XX001), protocol
/// errors, or the first error of `on_event`.
///
/// # Cancel safety
/// Not cancel safe: drop the connection.
pub async fn run_base_backup<S: BackupSink>(
    conn: &mut ReplicationConnection,
    major: u32,
    opts: &BaseBackupOptions,
    sink: &mut S,
) -> Result<BackupEnd, S::Error> {
    conn.send_query(&base_backup_command(major, opts)).await?;
    let start = read_result_set(conn).await?;
    let (start_lsn, timeline) = lsn_tli(
        start.first().ok_or_else(|| bad("no start position"))?,
        "start",
    )?;
    sink.event(BackupEvent::Started {
        start_lsn,
        timeline,
    })
    .await?;
    let rows = read_result_set(conn).await?;
    let tablespaces: Vec<TablespaceInfo> = rows
        .iter()
        .map(|r| TablespaceInfo {
            oid: r
                .values
                .first()
                .and_then(|v| v.as_deref())
                .and_then(|v| v.parse().ok()),
            location: r.values.get(1).and_then(|v| v.clone()),
            size_kib: r
                .values
                .get(2)
                .and_then(|v| v.as_deref())
                .and_then(|v| v.parse().ok()),
        })
        .collect();
    let count = tablespaces.len();
    sink.event(BackupEvent::Tablespaces(tablespaces.clone()))
        .await?;

    if major >= 15 {
        read_copy_stream_v15(conn, &tablespaces, sink).await?;
    } else {
        read_copy_streams_v14(conn, count, sink).await?;
    }

    let end_rows = read_result_set(conn).await?;
    let (end_lsn, end_tli) = lsn_tli(
        end_rows.first().ok_or_else(|| bad("no end position"))?,
        "end",
    )?;
    // CommandComplete "BASE_BACKUP", or an error (e.g. XX001 checksum failures), then ReadyForQuery.
    let mut error = None;
    loop {
        match conn.next_response_event().await? {
            ResponseEvent::Ready => break,
            ResponseEvent::Error(e) => error = Some(e),
            _ => {}
        }
    }
    if let Some(e) = error {
        return Err(protocol::Error::Server(e).into());
    }
    Ok(BackupEnd {
        end_lsn,
        timeline: end_tli,
    })
}

async fn expect_copy_out(conn: &mut ReplicationConnection) -> Result<(), protocol::Error> {
    match conn.next_response_event().await? {
        ResponseEvent::CopyOutStart => Ok(()),
        ResponseEvent::Error(e) => {
            drain_to_ready(conn).await;
            Err(protocol::Error::Server(e))
        }
        other => Err(bad(format!("expected CopyOutResponse, got {other:?}"))),
    }
}

/// The next CopyData of a COPY stream; `None` at its CopyDone.
async fn next_copy_data(
    conn: &mut ReplicationConnection,
) -> Result<Option<Bytes>, protocol::Error> {
    match conn.next_response_event().await? {
        ResponseEvent::CopyData(d) => Ok(Some(d)),
        ResponseEvent::CopyDone => Ok(None),
        ResponseEvent::Error(e) => {
            drain_to_ready(conn).await;
            Err(protocol::Error::Server(e))
        }
        other => Err(bad(format!("unexpected {other:?} in the backup stream"))),
    }
}

async fn read_copy_stream_v15<S: BackupSink>(
    conn: &mut ReplicationConnection,
    tablespaces: &[TablespaceInfo],
    sink: &mut S,
) -> Result<(), S::Error> {
    expect_copy_out(conn).await?;
    let mut in_archive = false;
    let mut in_manifest = false;
    let mut next_archive = 0usize;
    while let Some(mut d) = next_copy_data(conn).await? {
        if d.is_empty() {
            return Err(S::Error::from(bad("empty CopyData in BASE_BACKUP")));
        }
        match d.get_u8() {
            b'n' => {
                if in_archive {
                    sink.event(BackupEvent::ArchiveEnd).await?;
                }
                if in_manifest {
                    return Err(S::Error::from(bad("an archive after the manifest")));
                }
                // Archives arrive in tablespace row order.
                if next_archive >= tablespaces.len() {
                    return Err(S::Error::from(bad("more archives than tablespaces")));
                }
                sink.event(BackupEvent::ArchiveStart(next_archive)).await?;
                next_archive += 1;
                in_archive = true;
            }
            b'd' if in_manifest => sink.event(BackupEvent::ManifestData(d)).await?,
            b'd' if in_archive => sink.event(BackupEvent::ArchiveData(d)).await?,
            b'd' => return Err(S::Error::from(bad("data before any archive"))),
            b'p' => {
                if d.len() < 8 {
                    return Err(S::Error::from(bad("short progress message")));
                }
                sink.event(BackupEvent::Progress(d.get_u64())).await?;
            }
            b'm' => {
                if in_manifest {
                    return Err(S::Error::from(bad("a second manifest")));
                }
                if in_archive {
                    sink.event(BackupEvent::ArchiveEnd).await?;
                    in_archive = false;
                }
                in_manifest = true;
            }
            other => {
                return Err(S::Error::from(bad(format!(
                    "unknown BASE_BACKUP message type {:?}",
                    char::from(other)
                ))));
            }
        }
    }
    if in_archive {
        sink.event(BackupEvent::ArchiveEnd).await?;
    }
    if next_archive != tablespaces.len() {
        return Err(S::Error::from(bad(format!(
            "{next_archive} archives for {} tablespaces",
            tablespaces.len()
        ))));
    }
    Ok(())
}

async fn read_copy_streams_v14<S: BackupSink>(
    conn: &mut ReplicationConnection,
    count: usize,
    sink: &mut S,
) -> Result<(), S::Error> {
    let mut received: u64 = 0;
    for index in 0..=count {
        let is_manifest = index == count;
        expect_copy_out(conn).await?;
        if !is_manifest {
            sink.event(BackupEvent::ArchiveStart(index)).await?;
        }
        while let Some(d) = next_copy_data(conn).await? {
            if is_manifest {
                sink.event(BackupEvent::ManifestData(d)).await?;
            } else {
                received += d.len() as u64;
                sink.event(BackupEvent::ArchiveData(d)).await?;
            }
        }
        if !is_manifest {
            // PostgreSQL 14 leaves out the two zero blocks that end a tar archive.
            sink.event(BackupEvent::ArchiveData(Bytes::from_static(&[0u8; 1024])))
                .await?;
            sink.event(BackupEvent::ArchiveEnd).await?;
            sink.event(BackupEvent::Progress(received)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_grammars() {
        let mut o = BaseBackupOptions {
            label: "it's".into(),
            fast_checkpoint: true,
            server_zstd_level: None,
            max_rate_kib: None,
        };
        assert_eq!(
            base_backup_command(15, &o),
            "BASE_BACKUP (LABEL 'it''s', PROGRESS, CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', MANIFEST_CHECKSUMS 'CRC32C', TABLESPACE_MAP)"
        );
        assert_eq!(
            base_backup_command(14, &o),
            "BASE_BACKUP LABEL 'it''s' PROGRESS FAST NOWAIT TABLESPACE_MAP MANIFEST 'yes' MANIFEST_CHECKSUMS 'CRC32C'"
        );
        o.server_zstd_level = Some(3);
        assert!(
            base_backup_command(16, &o)
                .ends_with("COMPRESSION 'zstd', COMPRESSION_DETAIL 'level=3')")
        );
        o.max_rate_kib = Some(65536);
        assert!(
            base_backup_command(16, &o)
                .contains("TABLESPACE_MAP, MAX_RATE 65536, COMPRESSION 'zstd'")
        );
        assert!(base_backup_command(14, &o).contains("TABLESPACE_MAP MAX_RATE 65536 MANIFEST"));
    }
}
