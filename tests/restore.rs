//! `walvault restore` end to end: a backup and the archived WAL bring a
//! cluster back to a point in time, and PostgreSQL replays it with
//! `restore_command = walvault wal-fetch`.

use std::path::Path;
use std::time::Duration;

use walvault::format::{Keyring, MasterKey};
use walvault::lsn::Lsn;

use crate::pg_test;
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::{KEY, RepoEnv, StreamProcess};
use crate::support::s3::S3Server;
use crate::support::{switch_wal, wait_archived, wait_for};

const MIB: u64 = 1 << 20;

/// Waits until recovery on a restored cluster has ended and it was promoted.
async fn wait_promoted(restored: &PgCluster) {
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

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Rows committed at or before T come back, and no others.
async fn pitr_to_a_time_restores_exactly_the_committed_rows(major: u32) {
    let pg = PgCluster::start(
        major,
        &PgOptions {
            extra_conf: vec!["track_commit_timestamp = on".into()],
            ..Default::default()
        },
    );
    let s3 = S3Server::start();
    let mut env = s3.env();
    env.push(("WALVAULT_KEY".into(), KEY.into()));
    let env = RepoEnv {
        url: s3.url("pitr"),
        env,
    };
    let repo = s3.repository("pitr", Keyring::single(MasterKey::from_hex(KEY).unwrap()));
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        .await;
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let pg_conn = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        pg.port
    );
    let out = env.run(&["backup", "--pg", &pg_conn, "--checkpoint", "fast"]);
    assert!(out.status.success(), "backup: {}", text(&out));

    for i in 0..40 {
        pg.execute(&format!("INSERT INTO ledger VALUES ({i}, 'row {i}')"))
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let commit_time = |id: i32| {
        let pg = &pg;
        async move {
            pg.query_one(&format!(
                "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM ledger WHERE id = {id}"
            ))
            .await
        }
    };
    // T between the commits of rows 19 and 20.
    let t19 = commit_time(19).await;
    let t20 = commit_time(20).await;
    let target = pg
        .query_one(&format!(
            "SELECT to_char(('{t19}'::timestamp + ('{t20}'::timestamp - '{t19}'::timestamp) / 2), 'YYYY-MM-DD HH24:MI:SS.US')"
        ))
        .await;
    let end: Lsn = switch_wal(&pg).await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");

    let dir = tempfile::Builder::new()
        .prefix("walvault-restore")
        .tempdir()
        .unwrap();
    let pgdata = dir.path().join("data");
    // A target before the backup is refused, and nothing is written.
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

    let out = env.run(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--target-time",
        &format!("{target}+00"),
    ]);
    assert!(out.status.success(), "restore: {}", text(&out));
    // A second restore into the same directory is refused.
    let again = env.run(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(2));
    assert!(text(&again).contains("not empty"), "{}", text(&again));

    drop(pg);
    let restored = PgCluster::start_restored(major, pgdata);
    wait_promoted(&restored).await;
    let ids = restored
        .query_one("SELECT string_agg(id::text, ',' ORDER BY id) FROM ledger")
        .await;
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(
        ids,
        want.join(","),
        "restored rows; server log:\n{}",
        restored.log_text()
    );
}
pg_test!(pitr_to_a_time_restores_exactly_the_committed_rows);

/// Recovery to an LSN and to a named restore point stops exactly there.
async fn pitr_to_an_lsn_and_to_a_restore_point(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    let s3 = S3Server::start();
    let mut env = s3.env();
    env.push(("WALVAULT_KEY".into(), KEY.into()));
    let env = RepoEnv {
        url: s3.url("points"),
        env,
    };
    let repo = s3.repository("points", Keyring::single(MasterKey::from_hex(KEY).unwrap()));
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("CREATE TABLE ledger (id int PRIMARY KEY)").await;
    let pg_conn = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        pg.port
    );
    let out = env.run(&["backup", "--pg", &pg_conn, "--checkpoint", "fast"]);
    assert!(out.status.success(), "backup: {}", text(&out));
    let mut lsn_after_9 = String::new();
    for i in 0..30 {
        pg.execute(&format!("INSERT INTO ledger VALUES ({i})"))
            .await;
        if i == 9 {
            lsn_after_9 = pg.query_one("SELECT pg_current_wal_insert_lsn()").await;
        }
        if i == 19 {
            pg.execute("SELECT pg_create_restore_point('after-19')")
                .await;
        }
    }
    let end = switch_wal(&pg).await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    drop(pg);

    for (flag, value, last) in [
        ("--target-lsn", lsn_after_9.as_str(), 9),
        ("--target-name", "after-19", 19),
    ] {
        let dir = tempfile::Builder::new()
            .prefix("walvault-restore")
            .tempdir()
            .unwrap();
        let pgdata = dir.path().join("data");
        let out = env.run(&["restore", "--pgdata", pgdata.to_str().unwrap(), flag, value]);
        assert!(out.status.success(), "restore {flag}: {}", text(&out));
        let restored = PgCluster::start_restored(major, pgdata);
        wait_promoted(&restored).await;
        let ids = restored
            .query_one("SELECT count(*) || ':' || coalesce(max(id), -1) FROM ledger")
            .await;
        assert_eq!(
            ids,
            format!("{}:{last}", last + 1),
            "{flag} {value}; log:\n{}",
            restored.log_text()
        );
    }
}
pg_test!(pitr_to_an_lsn_and_to_a_restore_point);

/// Stop the primary with an immediate shutdown 3 s after the last commit
/// while walvault streams with --flush-interval 1s: a restore to the end of
/// the archive holds every commit acknowledged more than the flush interval
/// before the stop. With --synchronous, every acknowledged commit.
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
        let mut env = s3.env();
        env.push(("WALVAULT_KEY".into(), KEY.into()));
        let env = RepoEnv {
            url: s3.url("window"),
            env,
        };
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
        for i in 0..30 {
            pg.execute(&format!(
                "INSERT INTO ledger VALUES ({i}, clock_timestamp())"
            ))
            .await;
            acked.push((i, std::time::Instant::now()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let stopped_at = std::time::Instant::now();
        pg.stop_immediate();
        // Let walvault store what it has, then stop it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (code, log) = stream.terminate();
        assert!(code.is_some(), "{log}");

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
    let end = switch_wal(&pg).await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");

    let dir = tempfile::Builder::new()
        .prefix("walvault-restore")
        .tempdir()
        .unwrap();
    let pgdata = dir.path().join("data");
    let mut wrong = env.clone();
    wrong.env.retain(|(k, _)| k != "WALVAULT_KEY");
    wrong.env.push(("WALVAULT_KEY".into(), "22".repeat(32)));
    let out = wrong.run(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("wrong key"), "{}", text(&out));
    assert!(!pgdata.exists());

    // Remove a segment in the middle of the archive.
    let inv = walvault::wal::archive::WalInventory::scan(&repo, MIB)
        .await
        .unwrap();
    let t = &inv.timelines[&1];
    let middle = *t.complete.iter().nth(t.complete.len() / 2).unwrap();
    let seg = walvault::lsn::SegmentName {
        timeline: 1,
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
    let end = switch_wal(&pg).await;
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
    let mut cmd = command_as_server_user(Path::new(env!("CARGO_BIN_EXE_walvault")), major);
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
