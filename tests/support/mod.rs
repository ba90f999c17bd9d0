//! Shared fixtures: real PostgreSQL servers, real object stores (s3s-fs and
//! moto for S3, Azurite, fake-gcs-server), the walvault binary, and checks on
//! what the archive holds.

#![allow(dead_code)]

pub mod azurite;
pub mod gcs;
pub mod http;
pub mod moto;
pub mod pg;
pub mod process;
pub mod s3;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use walvault::lsn::{Lsn, SegmentName, TimelineId};
use walvault::storage::Repository;
use walvault::wal::archive::{WalInventory, summarize};

/// Where `scripts/setup-test-env.sh` installs the test servers:
/// `$WALVAULT_TEST_HOME`, else `/opt/walvault-test` as root and
/// `~/.cache/walvault-test` otherwise.
pub fn test_home() -> PathBuf {
    std::env::var_os("WALVAULT_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if nix::unistd::Uid::effective().is_root() {
                PathBuf::from("/opt/walvault-test")
            } else {
                PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/walvault-test")
            }
        })
}

/// Generates one test per supported PostgreSQL major (14 to 18) from an
/// `async fn(major: u32)`.
#[macro_export]
macro_rules! pg_test {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg14() {
                super::$name(14).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg15() {
                super::$name(15).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg16() {
                super::$name(16).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg17() {
                super::$name(17).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg18() {
                super::$name(18).await
            }
        }
    };
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what`
/// after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The end of the WAL the archive holds without a hole on `timeline`
/// (including deltas). Uploads finish out of order, so the highest object
/// alone says nothing.
pub async fn archived_end(repo: &Repository, segment_size: u64, timeline: TimelineId) -> Lsn {
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
    timeline: TimelineId,
    lsn: Lsn,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    wait_for(
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
    pg: &pg::PgCluster,
    segment_size: u64,
    timeline: TimelineId,
) -> usize {
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

/// The current WAL insert position after forcing a segment switch.
pub async fn switch_wal(pg: &pg::PgCluster) -> Lsn {
    pg.execute("SELECT pg_switch_wal()").await;
    pg.query_one("SELECT pg_current_wal_lsn()")
        .await
        .parse()
        .unwrap()
}
