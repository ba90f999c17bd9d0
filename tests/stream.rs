//! `walvault stream` against real servers: byte-exact segments, the
//! data-loss window, crash restarts, store outages, timeline switches and
//! synchronous replication.

use std::time::Duration;

use nix::sys::signal::Signal;
use walvault::format::{Keyring, MasterKey};
use walvault::lsn::Lsn;
use walvault::storage::Repository;

use crate::pg_test;
use crate::support::archive::{archived_end, assert_segments_match, wait_archived};
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::{KEY, RepoEnv, StreamProcess};
use crate::support::s3::S3Server;
use crate::support::wait_for;

const MIB: u64 = 1 << 20;

fn keyring() -> Keyring {
    Keyring::single(MasterKey::from_hex(KEY).unwrap())
}

fn s3_repo(s3: &S3Server, prefix: &str) -> (RepoEnv, Repository) {
    let mut env = s3.env();
    env.push(("WALVAULT_KEY".into(), KEY.into()));
    (
        RepoEnv {
            url: s3.url(prefix),
            env,
        },
        s3.repository(prefix, keyring()),
    )
}

/// Waits until walvault's replication socket has no unread bytes: what the
/// server sent is in walvault's memory. Reads the kernel's receive queue of
/// the connection from /proc/net/tcp.
async fn wait_socket_read(pg: &PgCluster) {
    let port: u16 = pg
        .query_one(
            "SELECT client_port FROM pg_stat_replication WHERE application_name = 'walvault'",
        )
        .await
        .parse()
        .expect("walvault is connected over TCP");
    wait_for(
        "walvault to read its socket",
        Duration::from_secs(30),
        || async move {
            let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
            let unread = table.lines().skip(1).find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let local_port =
                    u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
                let rx_queue = u64::from_str_radix(fields.get(4)?.rsplit(':').next()?, 16).ok()?;
                (local_port == port).then_some(rx_queue)
            })?;
            (unread == 0).then_some(())
        },
    )
    .await;
}

/// Every stored segment equals the server's pg_wal file, for 1 MiB and
/// 16 MiB segments; SIGTERM stores the tail and exits 0.
async fn segments_match_server(major: u32) {
    for segsize in [1u32, 16] {
        let pg = PgCluster::start(
            major,
            &PgOptions {
                wal_segsize_mib: segsize,
                ..Default::default()
            },
        );
        let size = u64::from(segsize) * MIB;
        let s3 = S3Server::start();
        let (env, repo) = s3_repo(&s3, "segments");
        // A long flush interval: the tail after the last complete segment is
        // stored only by the graceful shutdown.
        let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "60s"]);
        // About 15 MiB of WAL per scale unit: several segments of either size.
        let scale = if segsize == 16 { "5" } else { "2" };
        pg.pgbench(&["-i", "-s", scale, "-q"]);
        let end = pg.switch_wal().await;
        wait_archived(&repo, size, 1, end, Duration::from_secs(60)).await;
        let compared = assert_segments_match(&repo, &pg, size, 1).await;
        assert!(compared >= 2, "only {compared} segments compared");
        // Some WAL after the switch, then a graceful stop stores it.
        pg.execute("CREATE TABLE after_switch AS SELECT 1 AS x")
            .await;
        let last: Lsn = pg.flush_lsn().await;
        // Stop only once the server has sent that WAL and walvault has read
        // it off its socket: what it holds must be stored at shutdown.
        pg.wait_sent("walvault", last).await;
        wait_socket_read(&pg).await;
        let (code, log) = stream.terminate();
        assert_eq!(code, Some(0), "stream did not exit 0:\n{log}");
        assert!(
            archived_end(&repo, size, 1).await >= last,
            "tail not stored at shutdown:\n{log}"
        );
    }
}
pg_test!(segments_match_server);

/// A committed row's WAL is in the store within flush-interval plus one
/// upload, without waiting for the segment to fill; wal-fetch serves the
/// open segment zero-padded.
async fn commit_reaches_store_within_flush_interval(major: u32) {
    let pg = PgCluster::start(
        major,
        &PgOptions {
            wal_segsize_mib: 16,
            ..Default::default()
        },
    );
    let size = 16 * MIB;
    let s3 = S3Server::start();
    let (env, repo) = s3_repo(&s3, "window");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "1s"]);
    pg.execute("CREATE TABLE t (id int)").await;
    let first: Lsn = pg.flush_lsn().await;
    wait_archived(&repo, size, 1, first, Duration::from_secs(30)).await;

    pg.execute("INSERT INTO t VALUES (1)").await;
    let committed: Lsn = pg.flush_lsn().await;
    let took = wait_archived(&repo, size, 1, committed, Duration::from_secs(30)).await;
    // flush interval (1 s) plus one upload to a loopback store (generously 3 s).
    assert!(
        took <= Duration::from_secs(4),
        "commit took {took:?} to reach the store"
    );

    // The open segment is only in deltas: wal-fetch assembles and pads it.
    let seg =
        walvault::lsn::SegmentName::from_lsn(walvault::lsn::TimelineId::FIRST, committed, size);
    let name = seg.to_file_name(size);
    let dest = tempfile::tempdir().unwrap();
    let out = env.run(&[
        "wal-fetch",
        &name,
        dest.path().join("seg").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "wal-fetch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fetched = std::fs::read(dest.path().join("seg")).unwrap();
    assert_eq!(fetched.len() as u64, size);
    let server = pg.wal_file(&name);
    let known = (committed.0 - seg.start_lsn(size).0) as usize;
    assert_eq!(
        &fetched[..known],
        &server[..known],
        "assembled bytes differ from the server's"
    );
    let held_end = (archived_end(&repo, size, 1).await.0 - seg.start_lsn(size).0) as usize;
    assert!(
        fetched[held_end..].iter().all(|&b| b == 0),
        "tail after the known bytes is not zero"
    );
    // --exact (pg_rewind) serves only whole segments: this one is not in
    // the archive for it, and nothing is written.
    let exact = dest.path().join("exact");
    let out = env.run(&["wal-fetch", "--exact", &name, exact.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!exact.exists(), "--exact wrote a partial segment");

    // list --json reports the newest delta's end.
    let out = env.run(&["list", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tl = &v["wal"]["timelines"][0];
    assert_eq!(tl["timeline"], 1);
    let delta_end: Lsn = tl["newest_delta_end_lsn"]
        .as_str()
        .expect("a delta end")
        .parse()
        .unwrap();
    assert!(delta_end >= committed);
    drop(stream);
}
pg_test!(commit_reaches_store_within_flush_interval);

/// SIGKILL under pgbench load, then a restart, leaves no gap.
async fn sigkill_and_restart_leaves_no_gap(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    let s3 = S3Server::start();
    let (env, repo) = s3_repo(&s3, "kill");
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    let before = pg.current_lsn().await;
    let load = pg.pgbench_background(8, 2);
    // Kill it in the middle of the load, once it has stored some of it.
    wait_archived(&repo, MIB, 1, before + 2 * MIB, Duration::from_secs(30)).await;
    let killed_log = stream.kill9();
    wait_for(
        "the old walsender to go",
        Duration::from_secs(30),
        || async {
            let n = pg
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walvault'",
                )
                .await;
            (n == "0").then_some(())
        },
    )
    .await;
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    let out = load.join().unwrap();
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let compared = assert_segments_match(&repo, &pg, MIB, 1).await;
    assert!(
        compared >= 3,
        "only {compared} segments compared; first run:\n{killed_log}"
    );
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
}
pg_test!(sigkill_and_restart_leaves_no_gap);

/// The S3 server goes away mid-stream and comes back: nothing is lost and
/// walvault resumes by itself.
async fn store_outage_loses_nothing(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    let mut s3 = S3Server::start();
    let (env, repo) = s3_repo(&s3, "outage");
    let mut stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let before = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, before, Duration::from_secs(60)).await;

    s3.stop();
    pg.pgbench(&["-T", "3", "-c", "2", "-N"]);
    let during = pg.switch_wal().await;
    wait_for(
        "walvault to meet the outage",
        Duration::from_secs(60),
        || async {
            stream
                .log_text()
                .contains("object store unavailable")
                .then_some(())
        },
    )
    .await;
    assert!(
        stream.is_running(),
        "walvault exited during the outage:\n{}",
        stream.log_text()
    );
    s3.launch();

    wait_archived(&repo, MIB, 1, during, Duration::from_secs(90)).await;
    assert_segments_match(&repo, &pg, MIB, 1).await;
    let log = stream.log_text();
    assert!(
        log.contains("object store unavailable"),
        "the outage was not logged:\n{log}"
    );
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
}
pg_test!(store_outage_loses_nothing);

/// Streaming from a standby that is promoted carries the archive across the
/// timeline switch: history file stored, new timeline's segments byte-exact.
async fn standby_promotion_follows_timeline(major: u32) {
    let mut primary = PgCluster::start(major, &PgOptions::default());
    primary.execute("CREATE TABLE t (id int)").await;
    let standby = PgCluster::standby_of(&mut primary);
    let s3 = S3Server::start();
    let (env, repo) = s3_repo(&s3, "promote");
    let stream = StreamProcess::start(&env, standby.port, &["--flush-interval", "200ms"]);

    primary.pgbench(&["-i", "-s", "1", "-q"]);
    let on_primary = primary.switch_wal().await;
    standby.wait_replayed(on_primary).await;
    wait_archived(&repo, MIB, 1, on_primary, Duration::from_secs(60)).await;

    standby.promote();
    standby
        .execute("INSERT INTO t SELECT generate_series(1, 50000)")
        .await;
    let end = standby.switch_wal().await;
    wait_archived(&repo, MIB, 2, end, Duration::from_secs(60)).await;
    // The timeline's first segment (from the switch point) may still be on
    // its way when later ones are stored: wait for it too.
    crate::support::wait_for(
        "timeline 2 without a gap",
        Duration::from_secs(60),
        || async {
            let inv = walvault::wal::inventory::WalInventory::scan(&repo, MIB)
                .await
                .unwrap();
            walvault::wal::summary::summarize(&inv, MIB)
                .timelines
                .iter()
                .any(|t| t.timeline.get() == 2 && t.missing_segments.is_empty())
                .then_some(())
        },
    )
    .await;

    let history = repo
        .get_opened("wal/00000002.history")
        .await
        .unwrap()
        .expect("history stored");
    assert_eq!(history, standby.wal_file("00000002.history"));
    let compared = assert_segments_match(&repo, &standby, MIB, 2).await;
    assert!(compared >= 1, "no timeline-2 segment compared");
    assert_segments_match(&repo, &standby, MIB, 1).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    drop(primary);
}
pg_test!(standby_promotion_follows_timeline);

/// With --synchronous and synchronous_standby_names = 'walvault', a commit
/// waits until its WAL is in the store.
async fn synchronous_holds_commits(major: u32) {
    let pg = PgCluster::start(
        major,
        &PgOptions {
            extra_conf: vec!["synchronous_standby_names = 'walvault'".into()],
            ..Default::default()
        },
    );
    let s3 = S3Server::start();
    let (env, repo) = s3_repo(&s3, "sync");
    let stream = StreamProcess::start(&env, pg.port, &["--synchronous"]);
    wait_for("walvault to be the synchronous standby", Duration::from_secs(30), || async {
        let state = pg
            .query_one("SELECT coalesce(max(sync_state), '') FROM pg_stat_replication WHERE application_name = 'walvault'")
            .await;
        (state == "sync").then_some(())
    })
    .await;
    pg.execute("CREATE TABLE t (id int)").await;
    for i in 0..5 {
        pg.execute(&format!("INSERT INTO t VALUES ({i})")).await;
        // The commit returned, so the server saw flush >= its LSN; walvault
        // reports flush only for stored WAL, so the store must hold it now.
        let reported: Lsn = pg
            .query_one(
                "SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'walvault'",
            )
            .await
            .parse()
            .unwrap();
        let stored = archived_end(&repo, MIB, 1).await;
        assert!(
            stored >= reported,
            "reported flush {reported} is ahead of the store {stored}"
        );
    }

    // Freeze walvault: a commit must not return until it runs again.
    stream.signal(Signal::SIGSTOP);
    let client = pg.client().await;
    let insert =
        tokio::spawn(async move { client.batch_execute("INSERT INTO t VALUES (100)").await });
    wait_for(
        "the commit to wait for walvault",
        Duration::from_secs(30),
        || async {
            let waiting = pg
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
                .await;
            (waiting == "1").then_some(())
        },
    )
    .await;
    assert!(
        !insert.is_finished(),
        "commit returned while walvault was stopped"
    );
    stream.signal(Signal::SIGCONT);
    tokio::time::timeout(Duration::from_secs(30), insert)
        .await
        .expect("commit returns once walvault stores it")
        .unwrap()
        .unwrap();
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
}
pg_test!(synchronous_holds_commits);

/// With --synchronous, commits that arrive while uploads are on their way
/// share the next upload (group commit), instead of one upload each queued
/// behind the others: 16 clients commit while the store is stopped; once it
/// answers again every commit returns, and their WAL went out in a handful
/// of deltas, not one per commit.
async fn synchronous_commits_share_uploads(major: u32) {
    const CLIENTS: usize = 16;
    let pg = PgCluster::start(
        major,
        &PgOptions {
            extra_conf: vec!["synchronous_standby_names = 'walvault'".into()],
            ..Default::default()
        },
    );
    let s3 = S3Server::start();
    let (env, repo) = s3_repo(&s3, "group");
    let stream = StreamProcess::start(&env, pg.port, &["--synchronous"]);
    wait_for("walvault to be the synchronous standby", Duration::from_secs(30), || async {
        let state = pg
            .query_one("SELECT coalesce(max(sync_state), '') FROM pg_stat_replication WHERE application_name = 'walvault'")
            .await;
        (state == "sync").then_some(())
    })
    .await;
    pg.execute("CREATE TABLE t (id int)").await;
    // Start a fresh segment, the switched one stored whole.
    let switched: Lsn = pg
        .query_one("SELECT pg_switch_wal()")
        .await
        .parse()
        .unwrap();
    wait_archived(&repo, MIB, 1, switched, Duration::from_secs(60)).await;
    // Deltas are told apart by key: the switched segment's are deleted in
    // the background once it is stored whole.
    let deltas = || async {
        repo.list("wal/00000001/")
            .await
            .unwrap()
            .into_iter()
            .filter(|o| o.key.contains(".d/"))
            .map(|o| o.key)
            .collect::<std::collections::BTreeSet<String>>()
    };
    let before = deltas().await;

    s3.pause();
    let mut commits = Vec::new();
    for i in 0..CLIENTS {
        let client = pg.client().await;
        commits.push(tokio::spawn(async move {
            client
                .batch_execute(&format!("INSERT INTO t VALUES ({i})"))
                .await
        }));
    }
    wait_for(
        "every commit to wait for walvault",
        Duration::from_secs(30),
        || async {
            let waiting: usize = pg
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
                .await
                .parse()
                .unwrap();
            (waiting == CLIENTS).then_some(())
        },
    )
    .await;
    assert!(
        commits.iter().all(|c| !c.is_finished()),
        "a commit returned while the store was stopped"
    );
    s3.resume();
    for c in commits {
        tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("every commit returns once the store answers")
            .unwrap()
            .unwrap();
    }
    let made = deltas().await.difference(&before).count();
    assert!(
        made <= 4 + 2,
        "{CLIENTS} commits made {made} deltas: more than the 4 uploads in flight plus the one that carries the rest"
    );
    assert_eq!(
        pg.query_one("SELECT count(*) FROM t").await,
        CLIENTS.to_string()
    );
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
}
pg_test!(synchronous_commits_share_uploads);

fn rss_kib(pid: nix::unistd::Pid, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// When uploads stall, walvault stays within its memory budget by not
/// reading the socket, yet keeps the replication connection alive with
/// status updates; when the store answers again, everything arrives.
async fn stalled_uploads_keep_memory_bounded_and_connection_alive(major: u32) {
    let pg = PgCluster::start(
        major,
        &PgOptions {
            extra_conf: vec!["wal_sender_timeout = '3s'".into()],
            ..Default::default()
        },
    );
    let s3 = S3Server::start();
    let (env, repo) = s3_repo(&s3, "stall");
    let stream = StreamProcess::start(
        &env,
        pg.port,
        &["--flush-interval", "200ms", "--memory-budget", "4MiB"],
    );
    pg.execute("CREATE TABLE t (id int)").await;
    let first = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, first, Duration::from_secs(30)).await;
    let walsender = pg
        .query_one("SELECT pid FROM pg_stat_replication WHERE application_name = 'walvault'")
        .await;
    let rss_before = rss_kib(stream.pid(), "VmRSS:");

    s3.pause();
    let start: Lsn = pg.current_lsn().await;
    pg.pgbench(&["-i", "-s", "4", "-q"]);
    let end = pg.switch_wal().await;
    assert!(
        end.0 - start.0 > 40 * MIB,
        "not enough WAL to overflow the budget"
    );
    wait_for("reads to pause", Duration::from_secs(60), || async {
        stream
            .log_text()
            .contains("memory budget full")
            .then_some(())
    })
    .await;
    // Past twice wal_sender_timeout (3 s) with reads paused, walvault still
    // reports to the server: an idle client would have been dropped.
    let paused_at = pg.query_one("SELECT now()::text").await;
    wait_for("status updates past twice the timeout", Duration::from_secs(30), || async {
        let later = pg
            .query_one(&format!(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walvault' AND reply_time > '{paused_at}'::timestamptz + interval '6 s'"
            ))
            .await;
        (later == "1").then_some(())
    })
    .await;
    let still = pg
        .query_one("SELECT pid FROM pg_stat_replication WHERE application_name = 'walvault'")
        .await;
    assert_eq!(
        still, walsender,
        "the server dropped the replication connection while uploads stalled"
    );
    let peak_growth_mib = (rss_kib(stream.pid(), "VmHWM:").saturating_sub(rss_before)) / 1024;
    assert!(
        peak_growth_mib < 4 + 36,
        "memory grew by {peak_growth_mib} MiB with a 4 MiB budget"
    );

    s3.resume();
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(120)).await;
    assert_segments_match(&repo, &pg, MIB, 1).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
}
pg_test!(stalled_uploads_keep_memory_bounded_and_connection_alive);

/// Without wal_keep_size (only the slot keeps WAL), under load, with
/// walvault killed and restarted: the slot's restart_lsn, which walvault's
/// flush reports move, never passes the end of the WAL held without a hole
/// in the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_never_passes_the_contiguous_archive() {
    let pg = PgCluster::start(
        15,
        &PgOptions {
            extra_conf: vec!["wal_keep_size = 0".into(), "max_wal_size = '32MB'".into()],
            ..Default::default()
        },
    );
    let s3 = S3Server::start();
    let (env, repo) = s3_repo(&s3, "early");
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    // A slot that reserves nothing: its restart_lsn is only ever what
    // walvault reports.
    pg.execute("SELECT pg_create_physical_replication_slot('walvault')")
        .await;
    let restart_lsn = || async {
        pg.query_one("SELECT coalesce(restart_lsn::text, '0/0') FROM pg_replication_slots WHERE slot_name = 'walvault'")
            .await
            .parse::<Lsn>()
            .unwrap_or_default()
    };
    let check = || async {
        let reported = restart_lsn().await;
        // A listing is not a snapshot: while a complete segment replaces its
        // deltas, one listing can miss both. Such a hole is gone in the next
        // listing; a flush reported past a real hole is not.
        let mut held = Lsn(0);
        for _ in 0..3 {
            held = archived_end(&repo, MIB, 1).await;
            // Before the first object, walvault reports where it starts:
            // WAL before its start is not archived by design.
            if reported <= held || held == Lsn(0) {
                return;
            }
        }
        panic!(
            "the slot was told {reported} is safe, but the archive holds WAL without a hole only to {held}"
        );
    };
    for round in 0..2 {
        let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
        let before = pg.current_lsn().await;
        let load = pg.pgbench_background(6, 2);
        let mut checked = 0;
        while !load.is_finished() {
            check().await;
            checked += 1;
            if round == 0 && pg.current_lsn().await.0 > before.0 + 3 * MIB && checked > 5 {
                break;
            }
        }
        if round == 0 {
            // Killed in the middle of the load: what it held is lost, the slot keeps it.
            let _ = stream.kill9();
            check().await;
            assert!(load.join().unwrap().status.success());
        } else {
            assert!(load.join().unwrap().status.success());
            let end = pg.switch_wal().await;
            pg.execute("CHECKPOINT").await;
            wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
            check().await;
            let (code, log) = stream.terminate();
            assert_eq!(code, Some(0), "{log}");
        }
        assert!(checked > 0);
    }
    assert_segments_match(&repo, &pg, MIB, 1).await;
}

/// A hole older than the upload window (a segment deleted from the middle of
/// the archive): a restarted walvault streams it again while the server has
/// it; once the server has removed that WAL, walvault says so, names the
/// gap, and goes on archiving new WAL, and `verify --wal` names the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_is_filled_or_named() {
    // The first half needs the server to still hold a segment the slot
    // has let go of (walvault stored it, then it was deleted from the
    // archive): wal_keep_size holds it, on purpose, until the second half
    // sets it to 0.
    let pg = PgCluster::start(
        15,
        &PgOptions {
            extra_conf: vec!["wal_keep_size = '1GB'".into()],
            ..Default::default()
        },
    );
    let s3 = S3Server::start();
    let (env, repo) = s3_repo(&s3, "hole");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    let inv = walvault::wal::inventory::WalInventory::scan(&repo, MIB)
        .await
        .unwrap();
    let complete: Vec<u64> = inv.timelines[&walvault::lsn::TimelineId::FIRST]
        .complete
        .iter()
        .copied()
        .collect();
    assert!(complete.len() > 12, "{complete:?}");
    let hole = walvault::lsn::SegmentName {
        timeline: walvault::lsn::TimelineId::FIRST,
        number: complete[complete.len() / 3],
    };
    let hole_key = walvault::storage::layout::segment_key(hole, MIB);
    repo.delete(&hole_key).await.unwrap();

    // The server still has it (wal_keep_size): the restart fills the hole.
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    assert_segments_match(&repo, &pg, MIB, 1).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("the archive has a hole"), "{log}");

    // Now the server no longer has it.
    repo.delete(&hole_key).await.unwrap();
    pg.execute("ALTER SYSTEM SET wal_keep_size = 0").await;
    pg.execute("SELECT pg_reload_conf()").await;
    for _ in 0..3 {
        pg.switch_wal().await;
    }
    pg.execute("CHECKPOINT").await;
    assert!(
        !pg.data_dir
            .join("pg_wal")
            .join(hole.to_file_name(MIB))
            .exists(),
        "the server kept the hole's segment"
    );
    let mut stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("CREATE TABLE after_the_hole AS SELECT 1 AS x")
        .await;
    let end = pg.switch_wal().await;
    wait_for("new WAL past the hole", Duration::from_secs(60), || async {
        let out = env.run(&["list", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let newest: Lsn = v["wal"]["timelines"][0]["newest_lsn"]
            .as_str()?
            .parse()
            .ok()?;
        (newest >= end).then_some(())
    })
    .await;
    let log = stream.log_text();
    assert!(
        log.contains("no longer has the WAL of the archive's hole"),
        "{log}"
    );
    assert!(stream.is_running(), "walvault stopped:\n{log}");
    let out = env.run(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let missing = v["wal"]["timelines"][0]["missing_segments"].to_string();
    assert!(missing.contains(&hole.to_file_name(MIB)), "{v}");
    let out = env.run(&["verify", "--wal"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&hole_key),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
}
