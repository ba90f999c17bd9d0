//! Retention: `expire` and `keep` against real backups and a real store.
//! What a policy keeps stays restorable; what it removes is gone; pins,
//! running backups and the WAL kept backups need are never touched.

use std::collections::BTreeSet;
use std::time::Duration;

use walvault::format::backup::BackupMetadata;
use walvault::lsn::SegmentName;
use walvault::storage::Repository;
use walvault::storage::layout::{self, WalObject};

use crate::pg_test;
use crate::restore::{conn_of, ids, restore_ledger, s3_env, text};
use crate::support::archive::wait_archived;
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::{KEY, RepoEnv, StreamProcess};
use crate::support::s3::S3Server;

const MIB: u64 = 1 << 20;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

fn backup(env: &RepoEnv, pg: &PgCluster) -> String {
    let out = env.run(&[
        "backup",
        "--pg",
        &conn_of(pg),
        "--checkpoint",
        "fast",
        "--json",
    ]);
    json(&out)["id"].as_str().unwrap().to_string()
}

async fn insert(pg: &PgCluster, rows: std::ops::Range<i32>) {
    for i in rows {
        pg.execute(&format!("INSERT INTO ledger VALUES ({i}, 'row')"))
            .await;
    }
}

/// The complete segments the archive holds, by timeline and number.
async fn segments(repo: &Repository) -> BTreeSet<SegmentName> {
    repo.list(layout::WAL_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|o| match layout::parse_wal_key(&o.key, MIB) {
            Some(WalObject::Segment { segment }) => Some(segment),
            _ => None,
        })
        .collect()
}

async fn metadata(repo: &Repository, id: &str) -> BackupMetadata {
    let bytes = repo
        .get_opened(&layout::backup_json_key(id))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("backup {id} is gone"));
    serde_json::from_slice(&bytes).unwrap()
}

fn kept_ids(report: &serde_json::Value) -> Vec<String> {
    report["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect()
}

/// Three backups with ledger rows between them while the sidecar streams.
/// A pinned first backup survives `--retain-full 2` with exactly its own WAL
/// range (restorable to its consistency point, refused beyond it); WAL
/// between it and the second backup goes, and no gap is reported for it.
/// Unpinned, it goes. A restore to a time between the second and third
/// backups still holds exactly the rows committed by then, and a restarted
/// sidecar resumes without taking the removed WAL for a hole.
async fn expire_keeps_recovery_from_kept_backups(major: u32) {
    let pg = PgCluster::start(
        major,
        &PgOptions {
            extra_conf: vec!["track_commit_timestamp = on".into()],
            ..Default::default()
        },
    );
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "expire");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        .await;
    insert(&pg, 0..5).await;
    let b1 = backup(&env, &pg);
    for i in 5..10 {
        insert(&pg, i..i + 1).await;
        pg.switch_wal().await;
    }
    let b2 = backup(&env, &pg);
    // Stored stop times are whole seconds: restore places a time target only
    // a full second after a backup's stop, so the rows come after that.
    let after = metadata(&repo, &b2).await.stop_time + chrono::Duration::seconds(1);
    let sql = format!(
        "SELECT clock_timestamp() > '{}'",
        walvault::format::time::to_text(&after)
    );
    crate::support::wait_for(
        "the server clock to pass the second backup's stop",
        Duration::from_secs(5),
        || {
            let (pg, sql) = (&pg, &sql);
            async move { (pg.query_one(sql).await == "t").then_some(()) }
        },
    )
    .await;
    insert(&pg, 10..20).await;
    let t = pg
        .query_one(
            "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM ledger WHERE id = 14",
        )
        .await;
    insert(&pg, 20..30).await;
    let b3 = backup(&env, &pg);
    insert(&pg, 30..40).await;
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;

    let out = env.run(&["keep", &b1, "--reason", "audit"]);
    assert!(out.status.success(), "{}", text(&out));
    let (m1, m2) = (metadata(&repo, &b1).await, metadata(&repo, &b2).await);
    let first = |m: &BackupMetadata| SegmentName::parse(&m.wal_range.first_segment, MIB).unwrap();
    let last = |m: &BackupMetadata| SegmentName::parse(&m.wal_range.last_segment, MIB).unwrap();
    let between: Vec<u64> = (last(&m1).number + 1..first(&m2).number).collect();
    assert!(!between.is_empty(), "no whole segment between the backups");

    // A dry run decides and removes nothing.
    let before = repo.list("").await.unwrap().len();
    let plan = json(&env.run(&["expire", "--retain-full", "2", "--dry-run", "--json"]));
    assert_eq!(
        kept_ids(&plan),
        [b1.clone(), b2.clone(), b3.clone()],
        "{plan}"
    );
    assert_eq!(plan["kept"][0]["reasons"][0], "pinned: audit", "{plan}");
    assert!(plan["wal_objects_removed"].as_u64().unwrap() >= between.len() as u64);
    assert_eq!(repo.list("").await.unwrap().len(), before);

    let done = json(&env.run(&["expire", "--retain-full", "2", "--json"]));
    assert_eq!(done["removed"].as_array().unwrap().len(), 0, "{done}");
    let held = segments(&repo).await;
    for n in first(&m1).number..=last(&m1).number {
        assert!(
            held.contains(&SegmentName {
                timeline: first(&m1).timeline,
                number: n
            }),
            "segment {n} of the pinned backup was removed"
        );
    }
    for &n in &between {
        assert!(
            !held.iter().any(|s| s.number == n),
            "segment {n} outlived expire"
        );
    }
    // Removed WAL is no gap: list and verify see none.
    let list = json(&env.run(&["list", "--json"]));
    for t in list["wal"]["timelines"].as_array().unwrap() {
        assert_eq!(t["missing_segments"], serde_json::json!([]), "{list}");
    }
    let out = env.run(&["verify", "--wal"]);
    assert!(out.status.success(), "{}", text(&out));
    // The pinned backup restores to its consistency point, and no further.
    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("data");
    let out = env.run(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--backup",
        &b1,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is missing from the archive"),
        "{}",
        text(&out)
    );
    assert!(!pgdata.exists());
    let (got, restored) =
        restore_ledger(major, &env, &["--backup", &b1, "--target-immediate"]).await;
    assert_eq!(got, ids(0..5), "{}", restored.pg.log_text());
    drop(restored);

    // Unpinned, it goes with everything under its prefix, pin included.
    let out = env.run(&["keep", &b1, "--unkeep"]);
    assert!(out.status.success(), "{}", text(&out));
    let done = json(&env.run(&["expire", "--retain-full", "2", "--json"]));
    assert_eq!(done["removed"][0]["id"], b1.as_str(), "{done}");
    assert!(
        repo.list(&layout::backup_prefix(&b1))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        segments(&repo)
            .await
            .iter()
            .all(|s| s.number >= first(&m2).number)
    );

    let target = format!("{t}+00");
    // A backup that ends after the target cannot stop there: refused.
    let out = env.run(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--backup",
        &b3,
        "--target-time",
        &target,
        "--dry-run",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("before backup {b3} ends")),
        "{}",
        text(&out)
    );
    let (got, restored) = restore_ledger(major, &env, &["--target-time", &target]).await;
    assert_eq!(got, ids(0..15), "{}", restored.pg.log_text());
    drop(restored);

    // The sidecar, killed and restarted, resumes at the archive's end.
    let log = stream.kill9();
    assert!(!log.contains("hole"), "{log}");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    insert(&pg, 40..50).await;
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("hole"), "{log}");
}
pg_test!(expire_keeps_recovery_from_kept_backups);

/// Stores a copy of `source`'s `backup.json` as backup `id` stopped at `at`
/// (the same WAL range, so the copy is restorable as far as retention asks).
async fn clone_backup(
    repo: &Repository,
    source: &BackupMetadata,
    id: &str,
    at: chrono::DateTime<chrono::Utc>,
) {
    let mut m = source.clone();
    m.id = id.to_string();
    m.start_time = at - chrono::Duration::minutes(5);
    m.stop_time = at;
    repo.put_sealed(
        &layout::backup_json_key(id),
        vec![serde_json::to_vec(&m).unwrap().into()],
    )
    .await
    .unwrap();
}

/// Count, window and daily/weekly/monthly policies keep exactly the
/// backups they promise, over forty simulated days (one backup a day at
/// 03:00 UTC from 2026-01-01), decided as at 2026-02-10; a real run removes
/// exactly the rest and spares a pinned one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_keep_exactly_what_they_promise() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "policies");
    let out = env.run(&["backup", "--pg", &conn_of(&pg), "--checkpoint", "fast"]);
    assert!(out.status.success(), "{}", text(&out));
    repo.open_manifest().await.unwrap();
    let real = repo.list_backups().await.unwrap().remove(0);
    let start = chrono::DateTime::parse_from_rfc3339("2026-01-01T03:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let day = |d: i64| start + chrono::Duration::days(d);
    let id_of = |d: i64| day(d).format("%Y%m%dT%H%M%SZ").to_string();
    for d in 0..40 {
        clone_backup(&repo, &real, &id_of(d), day(d)).await;
    }
    // Only the copies remain: the real backup's objects go.
    let objects: Vec<String> = repo
        .list(&layout::backup_prefix(&real.id))
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    repo.delete_many(&objects).await.unwrap();
    // Day 30 is 2026-01-31; day 39 is Monday 2026-02-09 (ISO week 7).
    let at = ["--dry-run", "--json", "--at", "2026-02-10T00:00:00Z"];
    let cases: [(&[&str], Vec<i64>); 4] = [
        (&["--retain-full", "4"], vec![36, 37, 38, 39]),
        (&["--retain-window", "10d"], (29..40).collect()),
        (
            &[
                "--retain-daily",
                "3",
                "--retain-weekly",
                "2",
                "--retain-monthly",
                "2",
            ],
            vec![30, 37, 38, 39],
        ),
        (
            &["--retain-yearly", "1", "--retain-weekly", "3"],
            vec![31, 38, 39],
        ),
    ];
    for (policy, want) in cases {
        let mut args = vec!["expire"];
        args.extend_from_slice(policy);
        args.extend_from_slice(&at);
        let plan = json(&env.run(&args));
        let want: Vec<String> = want.into_iter().map(id_of).collect();
        assert_eq!(kept_ids(&plan), want, "{policy:?}: {plan}");
        assert_eq!(
            plan["removed"].as_array().unwrap().len(),
            40 - want.len(),
            "{policy:?}"
        );
    }
    let out = env.run(&["keep", &id_of(3), "--reason", "quarter close"]);
    assert!(out.status.success(), "{}", text(&out));
    let done = json(&env.run(&["expire", "--retain-full", "4", "--json"]));
    assert_eq!(done["removed"].as_array().unwrap().len(), 35, "{done}");
    let left: Vec<String> = repo
        .list_backups()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    let want: Vec<String> = [3, 36, 37, 38, 39].into_iter().map(id_of).collect();
    assert_eq!(left, want);
    // The pins list shows the reason.
    let out = env.run(&["keep"]);
    assert!(text(&out).contains("quarter close"), "{}", text(&out));
}

/// Expire removes nothing while a backup runs (an object of it is newer
/// than the grace period), and collects an interrupted backup's leftovers
/// once every object of it is old. Without a policy, or for an unknown
/// backup, the commands refuse with exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_waits_for_running_backups_and_collects_dead_ones() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let env = RepoEnv {
        url: url.clone(),
        env: vec![("WALVAULT_KEY".into(), KEY.into())],
    };
    backup(&env, &pg);
    backup(&env, &pg);
    let keyring =
        walvault::format::Keyring::single(walvault::format::MasterKey::from_hex(KEY).unwrap());
    let repo = Repository::open(&url, keyring, walvault::format::SealOptions::default()).unwrap();
    repo.open_manifest().await.unwrap();
    let running = "29990101T000000Z";
    for key in [
        layout::backup_heartbeat_key(running, 1),
        layout::backup_part_key(running, "base", 0),
    ] {
        repo.put_sealed(&key, vec![b"part".to_vec().into()])
            .await
            .unwrap();
    }
    let all = |repo: &Repository| {
        let repo = repo.clone();
        async move { repo.list("").await.unwrap().len() }
    };
    let before = all(&repo).await;
    let report = json(&env.run(&["expire", "--retain-full", "1", "--json"]));
    let skipped = report["skipped"].as_str().unwrap_or_default();
    assert!(skipped.contains(running), "{report}");
    assert_eq!(all(&repo).await, before);

    // Every object of it ten minutes old: the run is dead.
    let backup_dir = dir.path().join(layout::backup_prefix(running));
    let status = std::process::Command::new("find")
        .arg(&backup_dir)
        .args(["-exec", "touch", "-d", "10 minutes ago", "{}", "+"])
        .status()
        .unwrap();
    assert!(status.success());
    let report = json(&env.run(&["expire", "--retain-full", "1", "--json"]));
    assert_eq!(report["skipped"], serde_json::Value::Null, "{report}");
    assert_eq!(
        report["interrupted_backups_removed"][0], running,
        "{report}"
    );
    assert_eq!(report["removed"].as_array().unwrap().len(), 1, "{report}");
    assert!(
        repo.list(&layout::backup_prefix(running))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(repo.list_backups().await.unwrap().len(), 1);

    let out = env.run(&["expire"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--retain-full"), "{}", text(&out));
    let out = env.run(&["keep", "20000101T000000Z"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no such backup"), "{}", text(&out));
}

/// Puts sealed stand-ins for WAL segments `numbers` of timeline 1 (`list`
/// reads keys and sizes, not contents), 16 at a time.
async fn put_segments(repo: &Repository, numbers: &[u64], segment_size: u64) {
    for chunk in numbers.chunks(16) {
        let mut set = tokio::task::JoinSet::new();
        for &number in chunk {
            let repo = repo.clone();
            let key = layout::segment_key(
                SegmentName {
                    timeline: walvault::lsn::TimelineId::FIRST,
                    number,
                },
                segment_size,
            );
            set.spawn(async move { repo.put_sealed(&key, vec![b"wal".to_vec().into()]).await });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
    }
}

/// `list`'s WAL part (what a script reads), and where it came from.
fn list_wal(env: &RepoEnv, full: bool) -> (serde_json::Value, serde_json::Value) {
    let mut args = vec!["list", "--json"];
    if full {
        args.push("--full");
    }
    let out = json(&env.run(&args));
    (out["wal"].clone(), out["wal_listing"].clone())
}

/// After an expire run, `list` reads the WAL index that run stored and
/// lists only the WAL after it, with the answer `--full` gives; WAL stored
/// since shows. An index older than the newest expire record (rolled back
/// in the bucket) is not used; a forged, truncated or swapped one is
/// refused, naming it and `--full`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_reads_the_index_of_the_last_expire_run() {
    const SEG: u64 = 16 * MIB;
    let pg = PgCluster::start(
        15,
        &PgOptions {
            wal_segsize_mib: 16,
            ..Default::default()
        },
    );
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "index");
    let id = backup(&env, &pg);
    let last = SegmentName::parse(&metadata(&repo, &id).await.wal_range.last_segment, SEG)
        .unwrap()
        .number;
    // 300 segments after the backup's, one of them missing.
    let hole = last + 20;
    let numbers: Vec<u64> = (last + 1..=last + 300).filter(|n| *n != hole).collect();
    put_segments(&repo, &numbers, SEG).await;
    let hole_name = SegmentName {
        timeline: walvault::lsn::TimelineId::FIRST,
        number: hole,
    }
    .to_file_name(SEG);

    let (before, how) = list_wal(&env, false);
    assert_eq!(how["source"], "full", "{how}");
    assert_eq!(
        before["timelines"][0]["missing_segments"],
        serde_json::json!([hole_name])
    );
    let done = json(&env.run(&["expire", "--retain-full", "1", "--json"]));
    assert_eq!(done["wal_objects_removed"], 0, "{done}");

    // The index covers all but the newest 64 segments (1 GiB).
    let (indexed, how) = list_wal(&env, false);
    assert_eq!(how["source"], "index", "{how}");
    assert!(how["index_time"].is_string(), "{how}");
    assert_eq!(how["listed_objects"], 64, "{how}");
    assert_eq!(indexed, before);
    let (full, how) = list_wal(&env, true);
    assert_eq!(how["source"], "full", "{how}");
    assert_eq!(full, indexed);

    // WAL stored since the run shows; a segment removed from the covered
    // part shows to --full at once, and to list after the next run.
    put_segments(&repo, &[last + 301, last + 302], SEG).await;
    let gone = last + 5;
    let gone_key = layout::segment_key(
        SegmentName {
            timeline: walvault::lsn::TimelineId::FIRST,
            number: gone,
        },
        SEG,
    );
    repo.delete(&gone_key).await.unwrap();
    let (indexed, _) = list_wal(&env, false);
    let (full, _) = list_wal(&env, true);
    assert_eq!(
        indexed["timelines"][0]["last_segment"],
        full["timelines"][0]["last_segment"]
    );
    let missing = full["timelines"][0]["missing_segments"].clone();
    assert_eq!(missing.as_array().unwrap().len(), 2, "{full}");
    let old_index = std::fs::read(s3.object_path("index", layout::WAL_INDEX)).unwrap();
    json(&env.run(&["expire", "--retain-full", "1", "--json"]));
    let (indexed, how) = list_wal(&env, false);
    assert_eq!(how["source"], "index", "{how}");
    assert_eq!(indexed, full);

    // The first run's index put back: it belongs to an older run, unused.
    let index_path = s3.object_path("index", layout::WAL_INDEX);
    std::fs::write(&index_path, &old_index).unwrap();
    let (listed, how) = list_wal(&env, false);
    assert_eq!(how["source"], "full", "{how}");
    assert_eq!(listed, full);

    // Edited, truncated, or another sealed object in its place: refused.
    json(&env.run(&["expire", "--retain-full", "1", "--json"]));
    let good = std::fs::read(&index_path).unwrap();
    let mut edited = good.clone();
    let at = edited.len() - 20;
    edited[at] ^= 1;
    let record = repo
        .list(layout::EXPIRE_PREFIX)
        .await
        .unwrap()
        .pop()
        .unwrap()
        .key;
    let swapped = std::fs::read(s3.object_path("index", &record)).unwrap();
    for bad in [edited, good[..good.len() / 2].to_vec(), swapped] {
        std::fs::write(&index_path, &bad).unwrap();
        let out = env.run(&["list", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let said = text(&out);
        assert!(
            said.contains(layout::WAL_INDEX) && said.contains("--full"),
            "{said}"
        );
        let (listed, _) = list_wal(&env, true);
        assert_eq!(listed, full);
    }
}
