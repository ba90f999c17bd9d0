//! `mark`: a named restore point, created on the server and reported only
//! once its WAL is stored, so `restore --target-name` can always reach it.

use std::time::{Duration, Instant};

use crate::format::mark::{MARK_VERSION, Mark, validate_name};
use crate::lsn::{Lsn, TimelineId};
use crate::protocol::{ConnInfo, ReplicationConnection};
use crate::storage::{self, Repository, layout};
use crate::wal::inventory::WalInventory;

/// How often the archive is looked at while waiting for the mark's WAL.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Why a mark was not made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name cannot be a restore point and an object key.
    #[error("invalid mark name {name:?}: {reason}")]
    Name {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The name is taken.
    #[error(
        "a mark named {name:?} already exists (at {lsn}); restore --target-name stops at the first restore point of a name, so choose another"
    )]
    Exists {
        /// The name.
        name: String,
        /// Where the existing one is.
        lsn: Lsn,
    },
    /// The repository holds nothing yet.
    #[error("repository {0} is empty: start walvault stream first")]
    EmptyRepository(String),
    /// The server is not the repository's.
    #[error("the server's system identifier {server} is not the repository's ({repository})")]
    OtherCluster {
        /// The server's.
        server: String,
        /// The repository's.
        repository: String,
    },
    /// The server refused or failed.
    #[error("create the restore point on the server: {0}")]
    Server(#[source] crate::protocol::Error),
    /// The server answered something unexpected.
    #[error("unexpected answer from the server: {0}")]
    Answer(String),
    /// The WAL did not reach the repository in time.
    #[error(
        "the restore point is on the server at {lsn} (timeline {timeline}), but its WAL was not stored within {after:?}: is walvault stream running? The mark was not recorded"
    )]
    NotDurable {
        /// Its LSN.
        lsn: Lsn,
        /// Its timeline.
        timeline: TimelineId,
        /// How long it waited.
        after: Duration,
    },
    /// Store errors.
    #[error(transparent)]
    Storage(#[from] storage::Error),
}

impl Error {
    /// Whether the request itself is wrong (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::Name { .. } | Error::Exists { .. } | Error::OtherCluster { .. }
        )
    }
}

/// Creates restore point `name`, waits until the archive holds its WAL
/// without a hole, records the mark and returns it.
///
/// # Errors
/// See [`Error`]; nothing is recorded unless the WAL is stored.
pub async fn create(
    conninfo: &ConnInfo,
    repo: &Repository,
    name: &str,
    timeout: Duration,
) -> Result<Mark, Error> {
    let result = record(conninfo, repo, name, timeout).await;
    let outcome = match &result {
        Ok(m) => Ok(format!(
            "restore point at {} on timeline {}",
            m.lsn, m.timeline
        )),
        Err(e) => Err(crate::error::chain(e)),
    };
    repo.audit("mark", Some(name), outcome).await;
    result
}

async fn record(
    conninfo: &ConnInfo,
    repo: &Repository,
    name: &str,
    timeout: Duration,
) -> Result<Mark, Error> {
    validate_name(name).map_err(|reason| Error::Name {
        name: name.to_string(),
        reason,
    })?;
    let manifest = repo
        .open_manifest()
        .await?
        .ok_or_else(|| Error::EmptyRepository(repo.display().to_string()))?;
    if let Some(existing) = repo
        .read_marks()
        .await?
        .into_iter()
        .find(|m| m.name == name)
    {
        return Err(Error::Exists {
            name: name.to_string(),
            lsn: existing.lsn,
        });
    }
    let mut conn = ReplicationConnection::connect(&conninfo.for_sql())
        .await
        .map_err(Error::Server)?;
    let q = conn
        .simple_query(&format!(
            "SELECT p::text, pg_walfile_name(p), to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
             (SELECT system_identifier::text FROM pg_control_system()) FROM pg_create_restore_point('{name}') AS p"
        ))
        .await
        .map_err(Error::Server)?;
    conn.terminate().await;
    let field = |i: usize| {
        q.get(0, i)
            .map(str::to_string)
            .ok_or_else(|| Error::Answer(format!("{q:?}")))
    };
    let (lsn_text, file, time_text, system) = (field(0)?, field(1)?, field(2)?, field(3)?);
    if system != manifest.system_identifier {
        return Err(Error::OtherCluster {
            server: system,
            repository: manifest.system_identifier,
        });
    }
    let lsn: Lsn = lsn_text
        .parse()
        .map_err(|_| Error::Answer(lsn_text.clone()))?;
    let timeline = file
        .get(..8)
        .and_then(|t| TimelineId::from_hex(t).ok())
        .ok_or_else(|| Error::Answer(file.clone()))?;
    let time = chrono::DateTime::parse_from_rfc3339(&time_text)
        .map_err(|_| Error::Answer(time_text.clone()))?
        .with_timezone(&chrono::Utc);
    let started = Instant::now();
    let size = manifest.wal_segment_size;
    // The mark counts as stored once the WAL up to it is held without a
    // hole from where a restore to it would start: the newest backup on its
    // timeline that began before it (an older gap, e.g. after a lost slot,
    // does not matter), else the start of the timeline's archive.
    let from = repo
        .list_backups()
        .await?
        .into_iter()
        .rev()
        .find(|b| b.wal_range.timeline == timeline && b.wal_range.start_lsn < lsn)
        .map(|b| b.wal_range.start_lsn.segment_number(size));
    loop {
        let inv = WalInventory::scan(repo, size).await?;
        let end = inv.timelines.get(&timeline).and_then(|t| match from {
            Some(first) => Some(t.held_end_from(first, size)),
            None => t.contiguous_end(size),
        });
        if end.is_some_and(|e| e >= lsn) {
            break;
        }
        if started.elapsed() >= timeout {
            return Err(Error::NotDurable {
                lsn,
                timeline,
                after: timeout,
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let mark = Mark {
        version: MARK_VERSION,
        name: name.to_string(),
        lsn,
        timeline,
        time,
    };
    repo.write_mark(&mark).await?;
    tracing::debug!(key = layout::mark_key(name), "mark recorded");
    Ok(mark)
}
