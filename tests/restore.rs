//! `walvault restore` end to end: a backup and the archived WAL bring a
//! cluster back to a point in time, and PostgreSQL replays it with
//! `restore_command = walvault wal-fetch`.

use std::path::Path;
use std::time::Duration;

use walvault::format::{Keyring, MasterKey};
use walvault::lsn::Lsn;

use crate::pg_test;
use crate::support::archive::wait_archived;
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::{KEY, RepoEnv, StreamProcess, walvault_bin};
use crate::support::s3::S3Server;
use crate::support::wait_for;

const MIB: u64 = 1 << 20;

/// Waits until recovery on a restored cluster has ended and it was promoted.
pub(crate) async fn wait_promoted(restored: &PgCluster) {
    wait_for(
        "recovery to reach its target and promote",
        Duration::from_secs(90),
        || async {
            let c = tokio_postgres::connect(&restored.connstr("postgres"), tokio_postgres::NoTls)
                .await
                .ok()?;
            tokio::spawn(c.1);
            let row =
                c.0.query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .ok()?;
            (!row.get::<_, bool>(0)).then_some(())
        },
    )
    .await;
}

pub(crate) fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The repository settings for a test against the S3 server, encrypted.
pub(crate) fn s3_env(s3: &S3Server, prefix: &str) -> (RepoEnv, walvault::storage::Repository) {
    let mut env = s3.env();
    env.push(("WALVAULT_KEY".into(), KEY.into()));
    let repo = s3.repository(prefix, Keyring::single(MasterKey::from_hex(KEY).unwrap()));
    (
        RepoEnv {
            url: s3.url(prefix),
            env,
        },
        repo,
    )
}

pub(crate) fn conn_of(pg: &PgCluster) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        pg.port
    )
}

/// A restored, running cluster; its directory goes when it has stopped.
pub(crate) struct Restored {
    pub(crate) pg: PgCluster,
    _dir: tempfile::TempDir,
}

/// Restores with `args` into a new directory, starts the result, waits for
/// promotion and returns the ledger's ids in order ("0,1,2,...").
pub(crate) async fn restore_ledger(major: u32, env: &RepoEnv, args: &[&str]) -> (String, Restored) {
    let dir = tempfile::Builder::new()
        .prefix("walvault-restore")
        .tempdir()
        .unwrap();
    let pgdata = dir.path().join("data");
    let mut full = vec!["restore", "--pgdata", pgdata.to_str().unwrap()];
    full.extend_from_slice(args);
    let out = env.run(&full);
    assert!(out.status.success(), "restore {args:?}: {}", text(&out));
    let restored = PgCluster::start_restored(major, pgdata.clone());
    wait_promoted(&restored).await;
    // recovery_end_command removed the prefetch spool.
    assert!(
        !pgdata.join("pg_wal/walvault-spool").exists(),
        "the spool outlived recovery"
    );
    let ids = restored
        .query_one("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ledger")
        .await;
    (
        ids,
        Restored {
            pg: restored,
            _dir: dir,
        },
    )
}

pub(crate) fn ids(range: std::ops::Range<i32>) -> String {
    range.map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

/// The PITR ledger test: a base backup, then about a minute of inserts into
/// a ledger table while pgbench runs alongside and walvault streams. A
/// restore to the commit time T of a row in the middle holds exactly the rows
/// committed at or before T (before T with --exclusive); restores to an LSN
/// and to a restore point stop exactly there.
async fn pitr_ledger(major: u32) {
    const SECONDS: u64 = 60;
    let pg = PgCluster::start(
        major,
        &PgOptions {
            extra_conf: vec!["track_commit_timestamp = on".into()],
            ..Default::default()
        },
    );
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "ledger");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        .await;
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let out = env.run(&["backup", "--pg", &conn_of(&pg), "--checkpoint", "fast"]);
    assert!(out.status.success(), "backup: {}", text(&out));

    let load = pg.pgbench_background_at(SECONDS as u32, 2, Some(50));
    let client = pg.client().await;
    let started = std::time::Instant::now();
    let (mut lsn_row, mut name_row, mut lsn) = (None, None, String::new());
    let mut n = 0;
    // One ledger row every 100 ms, so commit times are spread out.
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    while started.elapsed() < Duration::from_secs(SECONDS) {
        pace.tick().await;
        client
            .execute("INSERT INTO ledger VALUES ($1, 'entry')", &[&n])
            .await
            .unwrap();
        if lsn_row.is_none() && started.elapsed() > Duration::from_secs(SECONDS / 4) {
            lsn = client
                .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
                .await
                .unwrap()
                .get(0);
            lsn_row = Some(n);
        }
        if name_row.is_none() && started.elapsed() > Duration::from_secs(SECONDS * 3 / 4) {
            client
                .execute("SELECT pg_create_restore_point('ledger-checkpoint')", &[])
                .await
                .unwrap();
            name_row = Some(n);
        }
        n += 1;
    }
    let out = load.join().unwrap();
    assert!(out.status.success(), "pgbench: {}", text(&out));
    let (lsn_row, name_row) = (lsn_row.unwrap(), name_row.unwrap());
    // T is the exact commit time of the middle row.
    let middle = n / 2;
    let t = pg
        .query_one(&format!(
            "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM ledger WHERE id = {middle}"
        ))
        .await;
    let committed = |op: &str| {
        let pg = &pg;
        let sql = format!(
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM ledger WHERE pg_xact_commit_timestamp(xmin) {op} '{t}+00'"
        );
        async move { pg.query_one(&sql).await }
    };
    let (at_or_before, before) = (committed("<=").await, committed("<").await);
    assert_eq!(at_or_before, ids(0..middle + 1));
    assert_eq!(before, ids(0..middle));
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    drop(pg);

    let target = format!("{t}+00");
    for (args, want) in [
        (vec!["--target-time", target.as_str()], at_or_before),
        (
            vec!["--target-time", target.as_str(), "--exclusive"],
            before,
        ),
        (vec!["--target-lsn", lsn.as_str()], ids(0..lsn_row + 1)),
        (
            vec!["--target-name", "ledger-checkpoint"],
            ids(0..name_row + 1),
        ),
    ] {
        let (got, restored) = restore_ledger(major, &env, &args).await;
        assert!(
            got == want,
            "{args:?} ({n} rows written): restored {got}\nwant {want}\nserver log:\n{}",
            restored.pg.log_text()
        );
    }
}
pg_test!(pitr_ledger);

/// The archive crosses a standby's promotion: a restore of a backup taken
/// from the standby (before the promotion) to a time after it follows the
/// new timeline, and comes back as a primary with no replication settings
/// from its source. Timelines that do not lead to the target are refused.
async fn restore_follows_a_promotion(major: u32) {
    let mut primary = PgCluster::start(
        major,
        &PgOptions {
            extra_conf: vec!["track_commit_timestamp = on".into()],
            ..Default::default()
        },
    );
    primary
        .execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        .await;
    primary.pgbench(&["-i", "-s", "1", "-q"]);
    let standby = PgCluster::standby_of(&mut primary);
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "timelines");
    let stream = StreamProcess::start(&env, standby.port, &["--flush-interval", "200ms"]);
    // A backup of the standby, with WAL flowing so its end is reached.
    let load = primary.pgbench_background(4, 1);
    let out = env.run(&["backup", "--pg", &conn_of(&standby), "--checkpoint", "fast"]);
    assert!(out.status.success(), "backup: {}", text(&out));
    load.join().unwrap();
    for i in 0..10 {
        primary
            .execute(&format!("INSERT INTO ledger VALUES ({i}, 'timeline 1')"))
            .await;
    }
    let on_primary = primary.switch_wal().await;
    standby.wait_replayed(on_primary).await;
    drop(primary);
    standby.promote();
    // Stored stop times are whole seconds: a time target is placed only a
    // full second after the first backup's stop, so the rows come after it.
    let list: serde_json::Value =
        serde_json::from_slice(&env.run(&["list", "--json"]).stdout).unwrap();
    let stop = list["backups"][0]["stop_time"]
        .as_str()
        .unwrap()
        .to_string();
    let sql = format!("SELECT clock_timestamp() > '{stop}'::timestamptz + interval '1 second'");
    crate::support::wait_for(
        "the server clock to pass the first backup's stop",
        Duration::from_secs(5),
        || {
            let (standby, sql) = (&standby, &sql);
            async move { (standby.query_one(sql).await == "t").then_some(()) }
        },
    )
    .await;
    // Rows 20 ms apart, so each has its own commit time.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for i in 10..20 {
        pace.tick().await;
        standby
            .execute(&format!("INSERT INTO ledger VALUES ({i}, 'timeline 2')"))
            .await;
    }
    let t = standby
        .query_one(
            "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM ledger WHERE id = 15",
        )
        .await;
    let end = standby.switch_wal().await;
    wait_archived(&repo, MIB, 2, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    // A second backup, on timeline 2, taken standalone.
    let out = env.run(&["backup", "--pg", &conn_of(&standby), "--checkpoint", "fast"]);
    assert!(out.status.success(), "backup: {}", text(&out));
    let list: serde_json::Value =
        serde_json::from_slice(&env.run(&["list", "--json"]).stdout).unwrap();
    let backups = list["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 2, "{list}");
    let (first, second) = (
        backups[0]["id"].as_str().unwrap().to_string(),
        backups[1]["id"].as_str().unwrap().to_string(),
    );
    drop(standby);

    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("data");
    let pgdata_s = pgdata.to_str().unwrap();
    // Refusals: nothing is written.
    for (args, message) in [
        (
            vec!["--target-timeline", "7"],
            "timeline 7 is not in the archive",
        ),
        (
            vec!["--backup", second.as_str(), "--target-timeline", "1"],
            "timeline 1 does not lead to the target",
        ),
    ] {
        let mut full = vec!["restore", "--pgdata", pgdata_s];
        full.extend_from_slice(&args);
        let out = env.run(&full);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(message), "{args:?}: {}", text(&out));
        assert!(!pgdata.exists(), "{args:?} wrote {pgdata_s}");
    }
    // Timeline 1 alone: the backup on timeline 2 is passed over.
    let out = env.run(&[
        "restore",
        "--pgdata",
        pgdata_s,
        "--target-timeline",
        "1",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("backup {first}")),
        "{}",
        text(&out)
    );

    let target = format!("{t}+00");
    let args = ["--backup", first.as_str(), "--target-time", target.as_str()];
    let (got, restored) = restore_ledger(major, &env, &args).await;
    let restored = &restored.pg;
    assert_eq!(got, ids(0..16), "server log:\n{}", restored.log_text());
    // Promoted from timeline 2 onto timeline 3, and no longer a standby of anything.
    let timeline = restored
        .query_one("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)")
        .await;
    assert_eq!(timeline, "00000003");
    assert_eq!(restored.query_one("SHOW primary_conninfo").await, "");

    // Retention keeps the timeline that leads to the kept backup: with only
    // the backup on timeline 2 kept, its history and WAL stay, and a restore
    // to the end of the archive still plans without a gap.
    let out = env.run(&["expire", "--retain-full", "1", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["removed"][0]["id"], first.as_str(), "{report}");
    assert!(
        repo.get_opened("wal/00000002.history")
            .await
            .unwrap()
            .is_some(),
        "the history file of timeline 2 was removed"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = env.run(&[
        "restore",
        "--pgdata",
        dir.path().join("data").to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("backup {second}")),
        "{}",
        text(&out)
    );
}
pg_test!(restore_follows_a_promotion);

/// Stop the primary with an immediate shutdown 3 s after the last commit,
/// and kill walvault (streaming with --flush-interval 1s) at the same
/// moment, as when the host dies: a restore to the end of the archive, with
/// no wait for it to catch up, holds every commit acknowledged more than
/// the flush interval before the stop. With --synchronous, every
/// acknowledged commit.
async fn data_loss_window(major: u32) {
    for synchronous in [false, true] {
        let mut conf = vec!["track_commit_timestamp = on".to_string()];
        if synchronous {
            conf.push("synchronous_standby_names = 'walvault'".into());
        }
        let mut pg = PgCluster::start(
            major,
            &PgOptions {
                extra_conf: conf,
                ..Default::default()
            },
        );
        let s3 = S3Server::start();
        let (env, _repo) = s3_env(&s3, "window");
        let mut extra = vec!["--flush-interval", "1s"];
        if synchronous {
            extra.push("--synchronous");
        }
        let stream = StreamProcess::start(&env, pg.port, &extra);
        pg.execute("CREATE TABLE ledger (id int PRIMARY KEY, at timestamptz)")
            .await;
        let pg_conn = format!(
            "host=127.0.0.1 port={} user=postgres sslmode=disable",
            pg.port
        );
        let out = env.run(&["backup", "--pg", &pg_conn, "--checkpoint", "fast"]);
        assert!(out.status.success(), "backup: {}", text(&out));
        // Commits spread over 3 s, each acknowledged at a known time.
        let mut acked = Vec::new();
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        for i in 0..30 {
            pace.tick().await;
            pg.execute(&format!(
                "INSERT INTO ledger VALUES ({i}, clock_timestamp())"
            ))
            .await;
            acked.push((i, std::time::Instant::now()));
        }
        // The primary dies 3 s after the last commit.
        let last_commit = std::time::Instant::now();
        tokio::time::sleep_until((last_commit + Duration::from_secs(3)).into()).await;
        // The host goes down with it: walvault is killed at the same
        // moment and what it held in memory is lost. Nothing waits for the
        // archive: the restore gets what was stored by then.
        let stopped_at = std::time::Instant::now();
        let log = stream.kill9();
        pg.stop_immediate();
        assert!(log.contains("streaming WAL from"), "{log}");

        let must_have: Vec<i32> = acked
            .iter()
            .filter(|(_, at)| {
                synchronous || stopped_at.duration_since(*at) > Duration::from_secs(1)
            })
            .map(|(i, _)| *i)
            .collect();
        let dir = tempfile::Builder::new()
            .prefix("walvault-restore")
            .tempdir()
            .unwrap();
        let pgdata = dir.path().join("data");
        let out = env.run(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
        assert!(out.status.success(), "restore: {}", text(&out));
        drop(pg);
        let restored = PgCluster::start_restored(major, pgdata);
        wait_promoted(&restored).await;
        let count: usize = restored
            .query_one("SELECT count(*) FROM ledger")
            .await
            .parse()
            .unwrap();
        let max: i32 = restored
            .query_one("SELECT coalesce(max(id), -1) FROM ledger")
            .await
            .parse()
            .unwrap();
        assert_eq!(count as i32, max + 1, "rows are not a prefix");
        let want = must_have.last().copied().unwrap_or(-1);
        assert!(
            max >= want,
            "synchronous={synchronous}: restored up to row {max}, but row {want} was acknowledged in time"
        );
    }
}
pg_test!(data_loss_window);

/// Refusals before anything is written: a wrong key, and a WAL gap named by
/// its segment.
async fn restore_refusals(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    let s3 = S3Server::start();
    let mut env = s3.env();
    env.push(("WALVAULT_KEY".into(), KEY.into()));
    let env = RepoEnv {
        url: s3.url("refuse"),
        env,
    };
    let repo = s3.repository("refuse", Keyring::single(MasterKey::from_hex(KEY).unwrap()));
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    let pg_conn = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        pg.port
    );
    let out = env.run(&["backup", "--pg", &pg_conn, "--checkpoint", "fast"]);
    assert!(out.status.success(), "backup: {}", text(&out));
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");

    let dir = tempfile::Builder::new()
        .prefix("walvault-restore")
        .tempdir()
        .unwrap();
    let pgdata = dir.path().join("data");
    // A target before the backup.
    let out = env.run(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--target-time",
        "2000-01-01 00:00:00+00",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("before the oldest backup"),
        "{}",
        text(&out)
    );
    assert!(!pgdata.exists());
    // A directory that is not empty is left alone.
    std::fs::create_dir_all(&pgdata).unwrap();
    std::fs::write(pgdata.join("keep"), b"mine").unwrap();
    let out = env.run(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not empty"), "{}", text(&out));
    assert_eq!(std::fs::read_dir(&pgdata).unwrap().count(), 1);
    std::fs::remove_dir_all(&pgdata).unwrap();
    let mut wrong = env.clone();
    wrong.env.retain(|(k, _)| k != "WALVAULT_KEY");
    wrong.env.push(("WALVAULT_KEY".into(), "22".repeat(32)));
    let out = wrong.run(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("wrong key"), "{}", text(&out));
    assert!(!pgdata.exists());

    // Remove a segment in the middle of the archive.
    let inv = walvault::wal::inventory::WalInventory::scan(&repo, MIB)
        .await
        .unwrap();
    let t = &inv.timelines[&walvault::lsn::TimelineId::FIRST];
    let middle = *t.complete.iter().nth(t.complete.len() / 2).unwrap();
    let seg = walvault::lsn::SegmentName {
        timeline: walvault::lsn::TimelineId::FIRST,
        number: middle,
    };
    repo.delete(&walvault::storage::layout::segment_key(seg, MIB))
        .await
        .unwrap();
    let out = env.run(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&seg.to_file_name(MIB)),
        "the missing segment is not named: {}",
        text(&out)
    );
    assert!(!pgdata.exists());
}
pg_test!(restore_refusals);

/// `restore --start`, run as the server's user, starts PostgreSQL, waits
/// until the target action happened, reports where recovery stopped, and
/// leaves the server running.
async fn restore_and_start(major: u32) {
    use crate::support::pg::{command_as_server_user, free_port, give_to_server_user, pg_install};
    let pg = PgCluster::start(major, &PgOptions::default());
    let s3 = S3Server::start();
    let mut env = s3.env();
    env.push(("WALVAULT_KEY".into(), KEY.into()));
    let env = RepoEnv {
        url: s3.url("start"),
        env,
    };
    let repo = s3.repository("start", Keyring::single(MasterKey::from_hex(KEY).unwrap()));
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("CREATE TABLE ledger (id int PRIMARY KEY)").await;
    let pg_conn = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        pg.port
    );
    let out = env.run(&["backup", "--pg", &pg_conn, "--checkpoint", "fast"]);
    assert!(out.status.success(), "backup: {}", text(&out));
    pg.execute("INSERT INTO ledger SELECT generate_series(1, 100)")
        .await;
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    drop(pg);

    let dir = tempfile::Builder::new()
        .prefix("walvault-restore")
        .tempdir()
        .unwrap();
    give_to_server_user(dir.path());
    let pgdata = dir.path().join("data");
    let (bin, _) = pg_install(major);
    let port = free_port();
    let mut cmd = command_as_server_user(&walvault_bin(), major);
    cmd.env("WALVAULT_REPO", &env.url).env("HOME", "/tmp");
    for (k, v) in &env.env {
        cmd.env(k, v);
    }
    let out = cmd
        .args([
            "restore",
            "--pgdata",
            pgdata.to_str().unwrap(),
            "--start",
            "--port",
            &port.to_string(),
        ])
        .arg("--pg-bin")
        .arg(&bin)
        .arg("--socket-dir")
        .arg(dir.path())
        .current_dir("/tmp")
        .output()
        .unwrap();
    let report = text(&out);
    let stop = || {
        let _ = command_as_server_user(&bin.join("pg_ctl"), major)
            .args(["-D", pgdata.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
    };
    if !out.status.success() {
        stop();
        panic!("restore --start: {report}");
    }
    assert!(report.contains("recovery promoted: final LSN"), "{report}");
    assert!(report.contains("timeline 2"), "{report}");
    // The restore put the first segments into the spool: recovery did not
    // start by waiting on the repository. Only the last segment, held as
    // deltas (the stream stopped in it), comes from the repository.
    let server_log = std::fs::read_to_string(pgdata.join("walvault-start.log")).unwrap_or_default();
    let summary = server_log
        .lines()
        .find(|l| l.contains("recovery ran restore_command"))
        .unwrap_or_default()
        .to_string();
    let count = |what: &str| -> u32 {
        summary
            .split(&format!(" {what} in"))
            .next()
            .filter(|head| head.len() < summary.len())
            .and_then(|head| head.rsplit(['(', ' ']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    if count("from the prefetch spool") < 2 || count("from the repository") > 1 {
        stop();
        panic!("the first segments were not served from the spool: {summary:?}\n{server_log}");
    }
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host={} port={port} user=postgres dbname=postgres",
            dir.path().display()
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let n: i64 = client
        .query_one("SELECT count(*) FROM ledger", &[])
        .await
        .unwrap()
        .get(0);
    stop();
    assert_eq!(n, 100);
}
pg_test!(restore_and_start);

/// Waits until the prefetch worker of `spool` has finished and exited: all
/// it was going to fetch is there.
async fn wait_worker_idle(spool: &Path) {
    let spool = walvault::restore::spool::Spool::new(spool);
    wait_for(
        "the prefetch worker to exit",
        Duration::from_secs(30),
        || async { (!spool.worker_running()).then_some(()) },
    )
    .await;
}

/// `wal-fetch --spool` fetches the next segments ahead into the spool, up
/// to --prefetch of them and within --spool-max, never a segment held only
/// as deltas; a spooled segment is served with the store unreachable; and
/// --clean-spool removes the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_fetch_prefetches_into_a_bounded_spool() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "spool");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    pg.switch_wal().await;
    // A tail that is stored only as deltas.
    pg.execute("CREATE TABLE tail AS SELECT 1 AS x").await;
    let end: Lsn = pg.current_lsn().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    let inv = walvault::wal::inventory::WalInventory::scan(&repo, MIB)
        .await
        .unwrap();
    let t = &inv.timelines[&walvault::lsn::TimelineId::FIRST];
    let complete: Vec<u64> = t.complete.iter().copied().collect();
    assert!(complete.len() >= 8, "{complete:?}");
    let partial = *t.deltas.keys().next_back().expect("a delta-only tail");
    assert!(!t.complete.contains(&partial));
    let name = |n: u64| {
        walvault::lsn::SegmentName {
            timeline: walvault::lsn::TimelineId::FIRST,
            number: n,
        }
        .to_file_name(MIB)
    };
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("RECOVERYXLOG");
    let dest_s = dest.to_str().unwrap();
    let fetch = |spool: &Path, extra: &[&str], file: &str| {
        let mut args = vec!["wal-fetch", "--spool", spool.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[file, dest_s]);
        let out = env.run(&args);
        assert!(out.status.success(), "wal-fetch {file}: {}", text(&out));
    };
    let spooled = |spool: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(spool)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.len() == 24)
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };

    // Depth 3: the three segments after the one asked for, and no more.
    let spool = work.path().join("spool");
    let c = &complete;
    fetch(&spool, &["--prefetch", "3"], &name(c[0]));
    assert_eq!(std::fs::read(&dest).unwrap(), pg.wal_file(&name(c[0])));
    let ahead: Vec<String> = c[1..4].iter().map(|&n| name(n)).collect();
    wait_for(
        "three segments spooled",
        Duration::from_secs(30),
        || async { (spooled(&spool) == ahead).then_some(()) },
    )
    .await;
    wait_worker_idle(&spool).await;
    assert_eq!(spooled(&spool), ahead, "fetched past --prefetch");

    // Served from the spool while the store does not answer.
    s3.pause();
    let mut cmd = env.command();
    cmd.args([
        "wal-fetch",
        "--spool",
        spool.to_str().unwrap(),
        "--prefetch",
        "3",
    ])
    .args([&name(c[1]), dest_s]);
    let mut child = cmd.spawn().unwrap();
    let served = wait_for("wal-fetch from the spool", Duration::from_secs(20), || {
        let status = child.try_wait().unwrap();
        async move { status }
    })
    .await;
    s3.resume();
    assert!(served.success());
    assert_eq!(std::fs::read(&dest).unwrap(), pg.wal_file(&name(c[1])));
    assert!(!spooled(&spool).contains(&name(c[1])));

    // The end of recovery says how long restore_command ran, in
    // PostgreSQL's log (recovery_end_command's stderr).
    let out = env.run(&[
        "wal-fetch",
        "--spool",
        spool.to_str().unwrap(),
        "--clean-spool",
        "unused",
        dest_s,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("recovery ran restore_command 2 times for")
            && text(&out).contains("1 from the repository in")
            && text(&out).contains("1 from the prefetch spool in"),
        "{}",
        text(&out)
    );
    assert!(!spool.exists(), "--clean-spool left the spool");

    // The size cap: 2 MiB holds two 1 MiB segments.
    let capped = work.path().join("capped");
    fetch(
        &capped,
        &["--prefetch", "8", "--spool-max", "2MiB"],
        &name(c[0]),
    );
    wait_for("two segments spooled", Duration::from_secs(30), || async {
        (spooled(&capped).len() == 2).then_some(())
    })
    .await;
    wait_worker_idle(&capped).await;
    assert_eq!(spooled(&capped).len(), 2, "{:?}", spooled(&capped));

    // A segment held only as deltas is never spooled.
    let tail = work.path().join("tail");
    fetch(&tail, &["--prefetch", "4"], &name(partial - 1));
    wait_for(
        "the worker to reach the tail",
        Duration::from_secs(30),
        || async {
            let log = std::fs::read_to_string(tail.join("prefetch.log")).unwrap_or_default();
            log.contains("not complete in the archive").then_some(())
        },
    )
    .await;
    wait_worker_idle(&tail).await;
    assert!(
        !spooled(&tail).contains(&name(partial)),
        "{:?}",
        spooled(&tail)
    );
}

/// The other ways to end recovery: `--standby` keeps replaying as new WAL
/// reaches the archive and can be promoted later; `--target-action pause`
/// stops at the target until resumed; `--target-action shutdown` stops the
/// server there. The prefetch spool is gone in each case once recovery is
/// over (or, for shutdown, once `restore --start` has seen it stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_pause_and_shutdown() {
    use crate::support::pg::{command_as_server_user, free_port, give_to_server_user, pg_install};
    let pg = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "actions");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("CREATE TABLE ledger (id int PRIMARY KEY)").await;
    let out = env.run(&["backup", "--pg", &conn_of(&pg), "--checkpoint", "fast"]);
    assert!(out.status.success(), "backup: {}", text(&out));
    pg.execute("INSERT INTO ledger SELECT generate_series(1, 10)")
        .await;
    pg.execute("SELECT pg_create_restore_point('ten')").await;
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;

    // A standby of the archive follows new WAL, then is promoted.
    let dir = tempfile::Builder::new()
        .prefix("walvault-restore")
        .tempdir()
        .unwrap();
    let standby_dir = dir.path().join("standby");
    let out = env.run(&[
        "restore",
        "--pgdata",
        standby_dir.to_str().unwrap(),
        "--standby",
    ]);
    assert!(out.status.success(), "restore --standby: {}", text(&out));
    let standby = PgCluster::start_restored(15, standby_dir.clone());
    pg.execute("INSERT INTO ledger SELECT generate_series(11, 20)")
        .await;
    let later = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, later, Duration::from_secs(60)).await;
    crate::support::wait_for(
        "the standby to replay new WAL",
        Duration::from_secs(90),
        || async {
            let n = standby.query_one("SELECT count(*) FROM ledger").await;
            (n == "20").then_some(())
        },
    )
    .await;
    assert_eq!(standby.query_one("SELECT pg_is_in_recovery()").await, "t");
    standby.promote();
    wait_promoted(&standby).await;
    crate::support::wait_for("the spool to go", Duration::from_secs(30), || async {
        (!standby_dir.join("pg_wal/walvault-spool").exists()).then_some(())
    })
    .await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");

    // Pause and shutdown at the restore point, run by the server's user.
    give_to_server_user(dir.path());
    let (bin, _) = pg_install(15);
    for action in ["pause", "shutdown"] {
        let pgdata = dir.path().join(action);
        let port = free_port();
        let mut cmd = command_as_server_user(&walvault_bin(), 15);
        cmd.env("WALVAULT_REPO", &env.url).env("HOME", "/tmp");
        for (k, v) in &env.env {
            cmd.env(k, v);
        }
        let out = cmd
            .args([
                "restore",
                "--pgdata",
                pgdata.to_str().unwrap(),
                "--target-name",
                "ten",
                "--target-action",
                action,
                "--start",
                "--port",
                &port.to_string(),
            ])
            .arg("--pg-bin")
            .arg(&bin)
            .arg("--socket-dir")
            .arg(dir.path())
            .current_dir("/tmp")
            .output()
            .unwrap();
        let report = text(&out);
        let stop = || {
            let _ = command_as_server_user(&bin.join("pg_ctl"), 15)
                .args(["-D", pgdata.to_str().unwrap(), "-m", "immediate", "stop"])
                .output();
        };
        if !out.status.success() {
            stop();
            panic!("restore --target-action {action}: {report}");
        }
        if action == "shutdown" {
            assert!(report.contains("shut down as asked"), "{report}");
            assert!(!pgdata.join("postmaster.pid").exists(), "{report}");
            assert!(
                !pgdata.join("pg_wal/walvault-spool").exists(),
                "the spool outlived recovery"
            );
            continue;
        }
        assert!(report.contains("recovery paused at the target"), "{report}");
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host={} port={port} user=postgres dbname=postgres",
                dir.path().display()
            ),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let n: i64 = client
            .query_one("SELECT count(*) FROM ledger", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 10, "paused at the wrong place");
        client
            .execute("SELECT pg_wal_replay_resume()", &[])
            .await
            .unwrap();
        crate::support::wait_for(
            "the resumed recovery to end",
            Duration::from_secs(60),
            || async {
                let r = client
                    .query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .ok()?;
                (!r.get::<_, bool>(0)).then_some(())
            },
        )
        .await;
        crate::support::wait_for("the spool to go", Duration::from_secs(30), || async {
            (!pgdata.join("pg_wal/walvault-spool").exists()).then_some(())
        })
        .await;
        stop();
    }
}

/// `--recovery-settings print|json`, for a platform that renders the
/// server's configuration itself: with `--dry-run` the settings come out
/// and nothing is written; a restore with `print` writes the data
/// directory, the signal file and the settings file but leaves walvault's
/// settings out of `postgresql.auto.conf` (a server started as it is would
/// not recover to the target), and stdout holds only the settings. Added to
/// `postgresql.conf` as printed, they recover exactly to the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_settings_printed_for_the_platform() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "printed");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("CREATE TABLE ledger (id int PRIMARY KEY)").await;
    let out = env.run(&["backup", "--pg", &conn_of(&pg), "--checkpoint", "fast"]);
    assert!(out.status.success(), "backup: {}", text(&out));
    pg.execute("INSERT INTO ledger SELECT generate_series(0, 9)")
        .await;
    pg.execute("SELECT pg_create_restore_point('cut')").await;
    pg.execute("INSERT INTO ledger SELECT generate_series(10, 19)")
        .await;
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");

    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("data");
    let base = ["restore", "--pgdata", pgdata.to_str().unwrap()];
    let target = ["--target-name", "cut", "--target-action", "promote"];

    let mut args = base.to_vec();
    args.extend(target);
    args.extend(["--recovery-settings", "json", "--dry-run"]);
    let out = env.run(&args);
    assert!(out.status.success(), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", text(&out)));
    assert_eq!(doc["signal_file"], "recovery.signal", "{doc}");
    assert_eq!(doc["settings"]["recovery_target_name"], "cut", "{doc}");
    assert_eq!(
        doc["settings"]["recovery_target_action"], "promote",
        "{doc}"
    );
    let command = doc["settings"]["restore_command"].as_str().unwrap();
    assert!(command.contains(" wal-fetch --repo-config "), "{command}");
    assert!(!pgdata.exists(), "a dry run wrote the data directory");

    let mut args = base.to_vec();
    args.extend(target);
    args.extend(["--recovery-settings", "print"]);
    let out = env.run(&args);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8(out.stdout.clone()).unwrap();
    for line in printed.lines() {
        let (name, _) = line
            .split_once(" = ")
            .unwrap_or_else(|| panic!("not a setting on stdout: {line:?}"));
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{line:?}"
        );
    }
    assert!(
        printed.contains("recovery_target_name = 'cut'\n"),
        "{printed}"
    );
    assert!(pgdata.join("recovery.signal").exists());
    assert!(walvault::restore::default_settings_file(&pgdata).exists());
    let auto = std::fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap();
    assert!(
        !auto
            .lines()
            .any(|l| l.starts_with("restore_command") || l.starts_with("recovery_target")),
        "walvault's settings were written: {auto}"
    );

    // The platform renders them into the server's configuration.
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(pgdata.join("postgresql.conf"))
        .unwrap();
    std::io::Write::write_all(&mut conf, format!("\n{printed}").as_bytes()).unwrap();
    drop(conf);
    let restored = PgCluster::start_restored(15, pgdata.clone());
    wait_promoted(&restored).await;
    let got = restored
        .query_one("SELECT string_agg(id::text, ',' ORDER BY id) FROM ledger")
        .await;
    assert_eq!(got, ids(0..10), "server log:\n{}", restored.log_text());
}
