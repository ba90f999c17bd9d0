//! Faults injected into real parts: a store that fails, stalls or ignores
//! create-only writes (a wrapper around the S3 server), and a PostgreSQL
//! server killed under a stream and under a backup.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use bytes::Bytes;
use walvault::format::{Keyring, MasterKey, SealOptions};
use walvault::protocol::ConnInfo;
use walvault::shutdown::Shutdown;
use walvault::storage::{self, Repository};
use walvault::wal::receiver::{self, StreamOptions, StreamPlan};

use crate::support::archive::{assert_segments_match, wait_archived};
use crate::support::faulty::{Faults, FaultyStore};
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::{KEY, StreamProcess};
use crate::support::s3::S3Server;

const MIB: u64 = 1 << 20;

/// A repository over the S3 server with a fault injector in between.
fn faulty_repo(s3: &S3Server, prefix: &str) -> (Repository, Arc<Faults>) {
    let store = FaultyStore::new(s3.store());
    let faults = store.faults.clone();
    let repo = Repository::from_store(
        Arc::new(store),
        prefix,
        format!("faulty {}", s3.url(prefix)),
        Keyring::single(MasterKey::from_hex(KEY).unwrap()),
        SealOptions::default(),
    );
    (repo, faults)
}

fn options(pg: &PgCluster, shutdown_timeout: Duration) -> StreamOptions {
    StreamOptions {
        conninfo: ConnInfo::parse(
            &format!(
                "host=127.0.0.1 port={} user=postgres sslmode=disable",
                pg.port
            ),
            &|_| None,
        )
        .unwrap(),
        slot: "walvault".into(),
        flush_interval: Duration::from_millis(200),
        synchronous: false,
        // Room for all the WAL these tests write while the store hangs
        // (about 20 MiB), beside the headroom for 4 uploads in flight.
        memory_budget_bytes: 128 * MIB,
        upload_concurrency: 4,
        shutdown_timeout,
    }
}

/// Failed writes are retried by the one policy and nothing is lost; an
/// object is sealed once, so every attempt sends the bytes that are stored
/// in the end (a new seal would draw a new salt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_writes_are_retried() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let (repo, faults) = faulty_repo(&s3, "retry");
    let shutdown = Shutdown::new();
    let opts = options(&pg, Duration::from_secs(60));
    let stream = {
        let (repo, shutdown) = (repo.clone(), shutdown.clone());
        tokio::spawn(
            async move { receiver::run(&opts, &repo, &shutdown, StreamPlan::default()).await },
        )
    };
    crate::support::wait_for("the stream to write", Duration::from_secs(30), || async {
        (faults.writes.load(SeqCst) > 0).then_some(())
    })
    .await;
    faults.fail_writes.store(7, SeqCst);
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(90)).await;
    assert_eq!(
        faults.fail_writes.load(SeqCst),
        0,
        "the failures were not all met"
    );
    assert_segments_match(&repo, &pg, MIB, 1).await;
    shutdown.graceful.cancel();
    stream.await.unwrap().unwrap();
    let failed = faults.failed_writes.lock().unwrap().clone();
    let mut compared = 0;
    for (key, sent) in &failed {
        let key = key.strip_prefix("retry/").unwrap_or(key);
        // Deltas a whole segment superseded are gone.
        if let Some(stored) = repo.get_raw(key).await.unwrap() {
            assert_eq!(stored, *sent, "{key} was sealed again for its retry");
            compared += 1;
        }
    }
    let keys: Vec<&String> = failed.iter().map(|(k, _)| k).collect();
    assert!(
        compared > 0,
        "no failed write left an object to compare: {keys:?}"
    );
}

/// A graceful stop ends within its deadline even when the store hangs:
/// the stream says what it could not store (the slot keeps it) instead of
/// waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_ends_within_its_deadline_when_the_store_hangs() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let (repo, faults) = faulty_repo(&s3, "hang");
    let shutdown = Shutdown::new();
    let opts = options(&pg, Duration::from_secs(3));
    let stream = {
        let (repo, shutdown) = (repo.clone(), shutdown.clone());
        tokio::spawn(
            async move { receiver::run(&opts, &repo, &shutdown, StreamPlan::default()).await },
        )
    };
    let first = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, first, Duration::from_secs(30)).await;
    faults.stalled.store(true, SeqCst);
    pg.execute("CREATE TABLE held AS SELECT generate_series(1, 100000) AS x")
        .await;
    let writes = faults.writes.load(SeqCst);
    // WAL reaches walvault, which tries to store it and hangs.
    pg.wait_sent("walvault", pg.current_lsn().await).await;
    let stopped = Instant::now();
    shutdown.graceful.cancel();
    let result = tokio::time::timeout(Duration::from_secs(30), stream)
        .await
        .expect("the drain ended within its deadline")
        .unwrap();
    let took = stopped.elapsed();
    assert!(
        matches!(result, Err(receiver::Error::ShutdownTimeout)),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(15), "the drain took {took:?}");
    assert_eq!(
        faults.writes.load(SeqCst),
        writes,
        "a write got through the stall"
    );
    faults.release();
}

/// A store that ignores create-only writes is detected, and a write that
/// meets an object with other content still stops with an integrity error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_create_only_writes_are_detected() {
    let s3 = S3Server::start();
    let (honest, _) = faulty_repo(&s3, "honest");
    assert!(honest.probe_create_only().await.unwrap());
    let (repo, faults) = faulty_repo(&s3, "careless");
    faults.ignore_create_only.store(true, SeqCst);
    assert!(!repo.probe_create_only().await.unwrap());
    assert!(
        repo.list("probe/").await.unwrap().is_empty(),
        "the probe was left behind"
    );
    let key = "wal/00000001/000000010000000000000001";
    repo.put_sealed(key, vec![Bytes::from_static(b"first")])
        .await
        .unwrap();
    repo.put_sealed(key, vec![Bytes::from_static(b"first")])
        .await
        .expect("the same content again is a retry");
    let err = repo
        .put_sealed(key, vec![Bytes::from_static(b"other")])
        .await
        .unwrap_err();
    assert!(matches!(err, storage::Error::Conflict { .. }), "{err:?}");
    assert_eq!(
        repo.get_opened(key).await.unwrap().unwrap(),
        b"first",
        "the object was replaced"
    );
}

/// PostgreSQL killed under the stream and started again: walvault
/// reconnects by itself and the archive has no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_under_the_stream() {
    let mut pg = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let (env, repo) = s3.encrypted("killed-server");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let load = pg.pgbench_background(3, 2);
    crate::support::wait_for("the load to run", Duration::from_secs(30), || async {
        (pg.query_one("SELECT count(*) FROM pgbench_history").await != "0").then_some(())
    })
    .await;
    pg.stop_immediate();
    let _ = load.join();
    pg.launch();
    pg.pgbench(&["-T", "2", "-c", "2", "-N"]);
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(90)).await;
    assert_segments_match(&repo, &pg, MIB, 1).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("reconnecting"), "{log}");
}

/// PostgreSQL killed under a backup: the backup fails, is never listed,
/// and the next one succeeds and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_under_a_backup() {
    let mut pg = PgCluster::start(15, &PgOptions::default());
    pg.pgbench(&["-i", "-s", "10", "-q"]);
    let s3 = S3Server::start();
    let (env, repo) = s3.encrypted("killed-backup");
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        pg.port
    );
    let child = env
        .command()
        .args([
            "backup",
            "--pg",
            &conn,
            "--checkpoint",
            "fast",
            "--part-size",
            "1MiB",
            "--upload-concurrency",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    crate::support::wait_for("some parts stored", Duration::from_secs(60), || async {
        let objs = repo
            .list(walvault::storage::layout::BACKUPS_PREFIX)
            .await
            .unwrap();
        (objs.iter().filter(|o| o.key.contains("/data/")).count() >= 2).then_some(())
    })
    .await;
    pg.stop_immediate();
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg.launch();
    let list = env.run(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(v["backups"].as_array().unwrap().len(), 0, "{v}");
    let out = env.run(&[
        "backup",
        "--pg",
        &conn,
        "--checkpoint",
        "fast",
        "--orphan-grace",
        "0s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = env.run(&["verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A stream whose durable LSN a test watches.
struct DurableStream {
    task: tokio::task::JoinHandle<Result<receiver::StreamSummary, receiver::Error>>,
    durable: tokio::sync::watch::Receiver<walvault::lsn::Lsn>,
    shutdown: Shutdown,
}

impl DurableStream {
    fn start(pg: &PgCluster, repo: &Repository) -> Self {
        let shutdown = Shutdown::new();
        let (durable_tx, durable) = tokio::sync::watch::channel(walvault::lsn::Lsn::INVALID);
        let opts = options(pg, Duration::from_secs(60));
        let (repo, stop) = (repo.clone(), shutdown.clone());
        let plan = StreamPlan {
            durable: Some(durable_tx),
            ..StreamPlan::default()
        };
        let task = tokio::spawn(async move { receiver::run(&opts, &repo, &stop, plan).await });
        DurableStream {
            task,
            durable,
            shutdown,
        }
    }

    fn durable(&self) -> walvault::lsn::Lsn {
        *self.durable.borrow()
    }

    /// Waits until segment `later` is stored while `held` is not.
    async fn wait_stored_beyond(
        &self,
        repo: &Repository,
        held: walvault::lsn::SegmentName,
        later: walvault::lsn::SegmentName,
    ) {
        crate::support::wait_for("later segments stored", Duration::from_secs(60), || async {
            let inv = walvault::wal::inventory::WalInventory::scan(repo, MIB)
                .await
                .ok()?;
            let tl = inv.timelines.get(&later.timeline)?;
            (tl.complete.contains(&later.number) && !tl.complete.contains(&held.number))
                .then_some(())
        })
        .await;
    }

    /// Waits for the archive and the durable LSN to reach `end`, then stops.
    async fn catch_up_and_stop(self, repo: &Repository, end: walvault::lsn::Lsn) {
        wait_archived(repo, MIB, 1, end, Duration::from_secs(60)).await;
        crate::support::wait_for(
            "the durable LSN to catch up",
            Duration::from_secs(30),
            || async { (*self.durable.borrow() >= end).then_some(()) },
        )
        .await;
        self.shutdown.graceful.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// The flush position the server last heard from walvault.
async fn flush_position(pg: &PgCluster) -> walvault::lsn::Lsn {
    pg.query_one("SELECT coalesce(flush_lsn::text, '0/0') FROM pg_stat_replication WHERE application_name = 'walvault'")
        .await
        .parse()
        .unwrap()
}

/// Uploads that finish out of order: the writes of one segment are held
/// back while later segments are stored. The durable LSN, and so the flush
/// position the server hears, never passes the held segment until it is
/// stored itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_lsn_waits_for_an_upload_that_finishes_last() {
    use walvault::lsn::{SegmentName, TimelineId};
    let pg = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let (repo, faults) = faulty_repo(&s3, "reorder");
    let stream = DurableStream::start(&pg, &repo);
    let first = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, first, Duration::from_secs(30)).await;
    let held = SegmentName::from_lsn(TimelineId::FIRST, first, MIB);
    *faults.hold_keys.lock().unwrap() = Some(held.to_file_name(MIB));
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let end = pg.switch_wal().await;
    // Later segments are stored while the held one is not.
    let later = SegmentName {
        timeline: TimelineId::FIRST,
        number: held.number + 4,
    };
    stream.wait_stored_beyond(&repo, held, later).await;
    let durable = stream.durable();
    assert!(
        durable <= held.start_lsn(MIB),
        "durable {durable} passed the held segment {}",
        held.to_file_name(MIB)
    );
    let told = flush_position(&pg).await;
    assert!(told <= held.start_lsn(MIB), "the server was told {told}");
    faults.release();
    stream.catch_up_and_stop(&repo, end).await;
}

/// A read that comes back damaged is refused, naming the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_reads_are_named() {
    let s3 = S3Server::start();
    let (repo, faults) = faulty_repo(&s3, "damaged");
    let key = "wal/00000001/000000010000000000000001";
    repo.put_sealed(key, vec![Bytes::from(vec![7u8; 100_000])])
        .await
        .unwrap();
    faults.corrupt_reads.store(true, SeqCst);
    let err = repo.get_opened(key).await.unwrap_err();
    assert!(matches!(err, storage::Error::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(key), "{err}");
    faults.corrupt_reads.store(false, SeqCst);
    assert_eq!(repo.get_opened(key).await.unwrap().unwrap().len(), 100_000);
}

/// A local directory that stops answering (every request hangs) while WAL
/// flows: the stream holds the WAL, and once the directory answers again
/// it stores everything; the archive then matches the server's segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_outage_loses_nothing() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    let store = FaultyStore::new(Arc::new(local));
    let faults = store.faults.clone();
    let repo = Repository::from_store(
        Arc::new(store),
        "",
        format!("faulty file://{}", dir.path().display()),
        Keyring::single(MasterKey::from_hex(KEY).unwrap()),
        SealOptions::default(),
    );
    let shutdown = Shutdown::new();
    let opts = options(&pg, Duration::from_secs(60));
    let stream = {
        let (repo, shutdown) = (repo.clone(), shutdown.clone());
        tokio::spawn(
            async move { receiver::run(&opts, &repo, &shutdown, StreamPlan::default()).await },
        )
    };
    crate::support::wait_for("the stream to write", Duration::from_secs(30), || async {
        (faults.writes.load(SeqCst) > 0).then_some(())
    })
    .await;
    faults.stalled.store(true, SeqCst);
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let end = pg.switch_wal().await;
    // The WAL reached the stream while the directory hangs, and none of it
    // was reported flushed.
    pg.wait_sent("walvault", end).await;
    let flushed = pg
        .query_one(
            "SELECT flush_lsn::text FROM pg_stat_replication WHERE application_name = 'walvault'",
        )
        .await;
    assert!(
        flushed.parse::<walvault::lsn::Lsn>().unwrap() < end,
        "{flushed} reported during the outage"
    );
    faults.release();
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(120)).await;
    assert_segments_match(&repo, &pg, MIB, 1).await;
    shutdown.graceful.cancel();
    stream.await.unwrap().unwrap();
}

/// The order of the upload queue: a completed segment is queued before
/// the next segment's first delta. Only the complete object of one segment
/// is held back (its deltas, and every later segment and delta, are
/// stored): the durable LSN, and the flush position the server hears,
/// stay within the held segment, since its last bytes are only in the
/// object held. Queued after the next delta, the segment would let the
/// durable LSN pass bytes stored nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_lsn_waits_for_a_segment_whose_deltas_are_stored() {
    use walvault::lsn::{SegmentName, TimelineId};
    use walvault::storage::layout;
    let pg = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let (repo, faults) = faulty_repo(&s3, "order");
    let stream = DurableStream::start(&pg, &repo);
    let first = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, first, Duration::from_secs(30)).await;
    let held = SegmentName::from_lsn(TimelineId::FIRST, first, MIB);
    let held_end = SegmentName {
        number: held.number + 1,
        ..held
    }
    .start_lsn(MIB);
    *faults.hold_key_ending.lock().unwrap() = Some(layout::segment_key(held, MIB));
    // Some WAL in the held segment, stored as a delta, before the load
    // fills it and the segments after it.
    pg.execute("CREATE TABLE before_the_load (n int)").await;
    crate::support::wait_for(
        "a delta of the held segment",
        Duration::from_secs(30),
        || async {
            let inv = walvault::wal::inventory::WalInventory::scan(&repo, MIB)
                .await
                .ok()?;
            inv.timelines
                .get(&TimelineId::FIRST)?
                .deltas
                .contains_key(&held.number)
                .then_some(())
        },
    )
    .await;
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let end = pg.switch_wal().await;
    let later = SegmentName {
        timeline: TimelineId::FIRST,
        number: held.number + 4,
    };
    stream.wait_stored_beyond(&repo, held, later).await;
    let durable = stream.durable();
    assert!(
        durable <= held_end,
        "durable {durable} passed the end of {} ({held_end}), whose last bytes are only in the held object",
        held.to_file_name(MIB)
    );
    let told = flush_position(&pg).await;
    assert!(told <= held_end, "the server was told {told}");
    faults.release();
    stream.catch_up_and_stop(&repo, end).await;
}

/// A running backup's objects (a part and a fresh heartbeat) are never
/// collected by another walvault's cleanup or expire, also when the
/// store's clock is five minutes behind or ahead of the host's: ages are
/// differences of the store's own times. A backup that really stopped is
/// still collected once its newest object is older than the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_backup_is_never_collected_with_clocks_apart() {
    use walvault::retention::expire::{ExpireOptions, run};
    use walvault::retention::policy::Policy;
    use walvault::storage::layout;

    let s3 = S3Server::start();
    let (repo, faults) = faulty_repo(&s3, "clock");
    let grace = Duration::from_secs(60);
    for (offset, id) in [(-300i64, "20261207T000001Z"), (300, "20261207T000002Z")] {
        faults.clock_offset_secs.store(offset, SeqCst);
        for key in [
            layout::backup_part_key(id, "base", 0),
            layout::backup_heartbeat_key(id, 0),
        ] {
            repo.put_sealed(&key, vec![Bytes::from_static(b"x")])
                .await
                .unwrap();
        }
        let deleted = walvault::backup::clean_orphans(&repo, grace).await.unwrap();
        assert_eq!(
            deleted, 0,
            "store clock {offset:+}s: a running backup was collected"
        );
        let report = run(
            &repo,
            1 << 20,
            &ExpireOptions {
                policy: Policy {
                    full: Some(1),
                    ..Policy::default()
                },
                now: chrono::Utc::now(),
                dry_run: false,
                orphan_grace: grace,
            },
        )
        .await
        .unwrap();
        assert!(
            report
                .skipped
                .as_deref()
                .is_some_and(|s| s.contains("is running")),
            "store clock {offset:+}s: expire did not see backup {id} running: {report:?}"
        );
        let left = repo.list(&layout::backup_prefix(id)).await.unwrap();
        assert_eq!(left.len(), 2, "store clock {offset:+}s: {left:?}");
    }
    // With a grace of a second, the same leftovers are collected once a
    // second has passed on the store's clock. The two backups were written
    // at different moments, so one may pass the grace a run before the
    // other: count what every run deletes until nothing is left.
    let deleted = std::sync::atomic::AtomicUsize::new(0);
    crate::support::wait_for(
        "the leftovers to be older than the grace",
        Duration::from_secs(10),
        || async {
            let n = walvault::backup::clean_orphans(&repo, Duration::from_secs(1))
                .await
                .unwrap();
            deleted.fetch_add(n, SeqCst);
            repo.list("backups/")
                .await
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert_eq!(deleted.load(SeqCst), 4);
}
