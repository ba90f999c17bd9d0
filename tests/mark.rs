//! `walvault mark` and `info`: a restore point stored before it is
//! reported, and the restore that undoes a migration with it.

use std::time::Duration;

use walvault::storage::layout::{self, WalObject};

use crate::restore::{conn_of, s3_env, text};
use crate::support::archive::wait_archived;
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::StreamProcess;
use crate::support::s3::S3Server;

const MIB: u64 = 1 << 20;

/// A mark before a destructive migration: `mark` returns only once the
/// restore point's WAL is stored, refuses a taken or bad name, and without
/// a running stream records nothing. After `DROP TABLE` and a newer backup,
/// `restore --target-name` picks the backup before the mark and gives the
/// table back with exactly the rows it had. `info` shows the backups, the
/// restorable window, the lag behind the server and the mark.
async fn mark_undoes_a_migration(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "mark");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    let conn = conn_of(&pg);
    pg.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        .await;
    pg.execute("INSERT INTO ledger SELECT g, 'before' FROM generate_series(0, 19) g")
        .await;
    let out = env.run(&["backup", "--pg", &conn, "--checkpoint", "fast"]);
    assert!(out.status.success(), "{}", text(&out));
    pg.execute("INSERT INTO ledger SELECT g, 'before' FROM generate_series(20, 29) g")
        .await;
    let out = env.run(&["mark", "before-v2", "--pg", &conn, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let mark: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mark_lsn: walvault::lsn::Lsn = mark["lsn"].as_str().unwrap().parse().unwrap();
    // Stored before it was reported.
    assert!(
        crate::support::archive::archived_end(&repo, MIB, 1).await >= mark_lsn,
        "{mark}"
    );
    let out = env.run(&["mark", "before-v2", "--pg", &conn]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    let out = env.run(&["mark", "no spaces", "--pg", &conn]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // The migration goes wrong; a backup is taken after it.
    pg.execute("DROP TABLE ledger").await;
    pg.execute("CREATE TABLE ledger_v2 (id int)").await;
    let out = env.run(&["backup", "--pg", &conn, "--checkpoint", "fast"]);
    assert!(out.status.success(), "{}", text(&out));
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;

    let out = env.run(&["info", "--json", "--pg", &conn]);
    assert!(out.status.success(), "{}", text(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let backups = info["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 2, "{info}");
    assert!(backups.iter().all(|b| b["restorable"] == true), "{info}");
    assert_eq!(
        info["timelines"][0]["earliest_backup"], backups[0]["id"],
        "{info}"
    );
    assert_eq!(
        info["timelines"][0]["earliest_restorable_time"], backups[0]["stop_time"],
        "{info}"
    );
    assert!(
        info["timelines"][0]["latest_restorable_time"].is_string(),
        "{info}"
    );
    assert!(info["server"]["lag_bytes"].is_u64(), "{info}");
    assert_eq!(info["marks"][0]["name"], "before-v2", "{info}");
    let out = env.run(&["info"]);
    assert!(text(&out).contains("mark before-v2"), "{}", text(&out));

    // Without a stream, a mark cannot be stored: refused, nothing recorded.
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    let out = env.run(&["mark", "too-late", "--pg", &conn, "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is walvault stream running"),
        "{}",
        text(&out)
    );
    assert_eq!(repo.read_marks().await.unwrap().len(), 1);
    drop(pg);

    let (got, restored) =
        crate::restore::restore_ledger(major, &env, &["--target-name", "before-v2"]).await;
    assert_eq!(
        got,
        crate::restore::ids(0..30),
        "{}",
        restored.pg.log_text()
    );
}
crate::pg_test!(mark_undoes_a_migration);

/// A hole older than the newest backup (as a lost slot leaves) does not
/// keep a mark from counting as stored: it waits only for the WAL from the
/// newest backup before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_waits_only_for_the_wal_after_the_newest_backup() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "mark-hole");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("CREATE TABLE t (x int)").await;
    let mut end = pg.current_lsn().await;
    for _ in 0..3 {
        pg.execute("INSERT INTO t VALUES (1)").await;
        end = pg.switch_wal().await;
    }
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(30)).await;
    let conn = conn_of(&pg);
    let out = env.run(&["backup", "--pg", &conn, "--checkpoint", "fast"]);
    assert!(out.status.success(), "{}", text(&out));
    let b1 = repo.list_backups().await.unwrap().remove(0);
    let before: Vec<String> = repo
        .list(layout::WAL_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .filter(|o| match layout::parse_wal_key(&o.key, MIB) {
            Some(WalObject::Segment { segment }) => {
                segment.to_file_name(MIB) < b1.wal_range.first_segment
            }
            _ => false,
        })
        .map(|o| o.key)
        .collect();
    assert!(before.len() >= 2, "{before:?}");
    repo.delete(&before[before.len() - 1]).await.unwrap();
    let out = env.run(&["mark", "after-the-hole", "--pg", &conn, "--timeout", "30s"]);
    assert!(out.status.success(), "{}", text(&out));
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
}
