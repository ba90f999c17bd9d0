//! Checks on what the archive holds: where its WAL ends without a hole,
//! waiting for it to reach an LSN, and byte-for-byte comparison with the
//! server's own pg_wal.

use std::time::{Duration, Instant};

use walvault::lsn::{Lsn, SegmentName, TimelineId};
use walvault::storage::Repository;
use walvault::wal::inventory::WalInventory;
use walvault::wal::summary::summarize;

use super::pg::PgCluster;

/// Timeline `n` (tests name timelines by number).
pub fn tli(n: u32) -> TimelineId {
    TimelineId::new(n).expect("timelines start at 1")
}

/// The end of the WAL the archive holds without a hole on `timeline`
/// (including deltas). Uploads finish out of order, so the highest object
/// alone says nothing.
pub async fn archived_end(repo: &Repository, segment_size: u64, timeline: u32) -> Lsn {
    let timeline = tli(timeline);
    let inv = WalInventory::scan(repo, segment_size).await.unwrap();
    inv.timelines
        .get(&timeline)
        .and_then(|t| t.contiguous_end(segment_size))
        .unwrap_or(Lsn(0))
}

/// Waits until the archive holds WAL up to `lsn` on `timeline`; returns how long it took.
pub async fn wait_archived(
    repo: &Repository,
    segment_size: u64,
    timeline: u32,
    lsn: Lsn,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    super::wait_for(
        &format!("archive to reach {lsn} on timeline {timeline}"),
        limit,
        || async { (archived_end(repo, segment_size, timeline).await >= lsn).then_some(()) },
    )
    .await;
    start.elapsed()
}

/// Checks that every complete segment of `timeline` in the archive equals the
/// server's own file in pg_wal, that there is no gap, and returns how many
/// were compared.
pub async fn assert_segments_match(
    repo: &Repository,
    pg: &PgCluster,
    segment_size: u64,
    timeline: u32,
) -> usize {
    let timeline = tli(timeline);
    let inv = WalInventory::scan(repo, segment_size).await.unwrap();
    let t = inv
        .timelines
        .get(&timeline)
        .unwrap_or_else(|| panic!("no WAL on timeline {timeline}"));
    let summary = summarize(&inv, segment_size);
    let ts = summary
        .timelines
        .iter()
        .find(|s| s.timeline == timeline)
        .unwrap();
    assert!(
        ts.missing_segments.is_empty(),
        "gap in the archive: {:?}",
        ts.missing_segments
    );
    let mut compared = 0;
    for &n in &t.complete {
        let seg = SegmentName {
            timeline,
            number: n,
        };
        let name = seg.to_file_name(segment_size);
        let path = pg.data_dir.join("pg_wal").join(&name);
        if !path.exists() {
            continue;
        }
        let stored = repo
            .get_opened(&walvault::storage::layout::segment_key(seg, segment_size))
            .await
            .unwrap()
            .unwrap();
        let server = pg.wal_file(&name);
        assert!(
            stored == server,
            "segment {name} differs from the server's pg_wal/{name}"
        );
        compared += 1;
    }
    compared
}
