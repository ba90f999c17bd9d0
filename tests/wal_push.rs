//! `wal-push` as PostgreSQL's `archive_command`: alone, a per-file
//! archiver whose files restore to a time; beside the sidecar, a second
//! path that leaves no gap when the slot is dropped and the sidecar is
//! down while the server recycles its WAL; and the files it must refuse.

use std::path::{Path, PathBuf};
use std::time::Duration;

use walvault::config::settings_file::{RepositoryConfigFile, write_repository_config};

use crate::restore::{conn_of, ids, restore_ledger, s3_env, text};
use crate::support::pg::{PgCluster, PgOptions, give_to_server_user};
use crate::support::process::{KEY, RepoEnv, StreamProcess, walvault_bin};
use crate::support::s3::S3Server;
use crate::support::wait_for;

/// The repository settings `archive_command` reads (mode 0600, owned by
/// the server's user), in a directory of their own.
pub(crate) fn settings_for_server(s3: &S3Server, env: &RepoEnv) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("walvault-push")
        .tempdir()
        .unwrap();
    let path = dir.path().join("repository.json");
    let options = [
        ("aws_endpoint", s3.endpoint()),
        (
            "aws_access_key_id",
            crate::support::s3::ACCESS_KEY.to_string(),
        ),
        (
            "aws_secret_access_key",
            crate::support::s3::SECRET_KEY.to_string(),
        ),
        ("aws_region", crate::support::s3::REGION.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let cfg = RepositoryConfigFile {
        version: 1,
        repo: env.url.clone(),
        key: Some(KEY.to_string()),
        options,
        recovery: None,
    };
    write_repository_config(&path, &cfg).unwrap();
    give_to_server_user(dir.path());
    (dir, path)
}

fn archive_conf(settings: &Path) -> Vec<String> {
    vec![
        "archive_mode = on".into(),
        format!(
            "archive_command = '{} wal-push --repo-config {} %p'",
            walvault_bin().display(),
            settings.display()
        ),
        "track_commit_timestamp = on".into(),
    ]
}

/// Waits until the server's archiver has archived `file` (or a later one).
async fn wait_archived_by_server(pg: &PgCluster, file: &str) {
    wait_for(
        "the archiver to archive the file",
        Duration::from_secs(60),
        || async {
            let last = pg
                .query_one("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
                .await;
            (last.as_str() >= file).then_some(())
        },
    )
    .await;
    let failed = pg
        .query_one("SELECT failed_count::text FROM pg_stat_archiver")
        .await;
    assert_eq!(failed, "0", "archive_command failed:\n{}", pg.log_text());
}

/// One ledger row per transaction, 20 ms apart, so commit times differ.
async fn ledger_rows(pg: &PgCluster, rows: std::ops::Range<i32>) {
    let client = pg.client().await;
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for n in rows {
        pace.tick().await;
        client
            .execute("INSERT INTO ledger VALUES ($1)", &[&n])
            .await
            .unwrap();
    }
}

async fn commit_time(pg: &PgCluster, id: i32) -> String {
    pg.query_one(&format!(
        "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' FROM ledger WHERE id = {id}"
    ))
    .await
}

/// `archive_command = walvault wal-push` with no sidecar: a base backup,
/// then every segment comes through the archiver alone, and a restore to
/// the commit time of a row in the middle gives exactly the rows up to it.
async fn archive_command_alone(major: u32) {
    let s3 = S3Server::start();
    let (env, _repo) = s3_env(&s3, "alone");
    let (_settings_dir, settings) = settings_for_server(&s3, &env);
    let pg = PgCluster::start(
        major,
        &PgOptions {
            extra_conf: archive_conf(&settings),
            ..Default::default()
        },
    );
    pg.execute("CREATE TABLE ledger (id int PRIMARY KEY)").await;
    let out = env.run(&[
        "backup",
        "--pg",
        &conn_of(&pg),
        "--checkpoint",
        "fast",
        "--json",
    ]);
    assert!(out.status.success(), "backup: {}", text(&out));
    let backup: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The target: the first row committed a second after the backup's
    // stop time (whole seconds), with ten rows after it.
    let after = format!(
        "pg_xact_commit_timestamp(xmin) >= '{}'::timestamptz + interval '1 second'",
        backup["stop_time"].as_str().unwrap()
    );
    let mut written = 0;
    loop {
        ledger_rows(&pg, written..written + 10).await;
        written += 10;
        let later = pg
            .query_one(&format!("SELECT count(*)::text FROM ledger WHERE {after}"))
            .await;
        if later.parse::<i32>().unwrap() > 10 {
            break;
        }
    }
    let target: i32 = pg
        .query_one(&format!("SELECT min(id)::text FROM ledger WHERE {after}"))
        .await
        .parse()
        .unwrap();
    let t = commit_time(&pg, target).await;
    let last = pg
        .query_one("SELECT pg_walfile_name(pg_switch_wal())")
        .await;
    wait_archived_by_server(&pg, &last).await;
    drop(pg);
    let (got, restored) = restore_ledger(major, &env, &["--target-time", &t]).await;
    assert_eq!(got, ids(0..target + 1), "{}", restored.pg.log_text());
}
crate::pg_test!(archive_command_alone);

/// Beside the sidecar: segments the stream stored are acknowledged as
/// held; then the sidecar stops and its slot is dropped, the server
/// writes and recycles several segments (no `wal_keep_size`), and the
/// archiver alone stores them: the archive has no gap and a restore to
/// the end gives every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_command_beside_a_stopped_sidecar_leaves_no_gap() {
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "beside");
    let (_settings_dir, settings) = settings_for_server(&s3, &env);
    let mut conf = archive_conf(&settings);
    conf.extend(["wal_keep_size = 0".into(), "max_wal_size = 32MB".into()]);
    let pg = PgCluster::start(
        15,
        &PgOptions {
            extra_conf: conf,
            ..Default::default()
        },
    );
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("CREATE TABLE ledger (id int PRIMARY KEY)").await;
    let out = env.run(&["backup", "--pg", &conn_of(&pg), "--checkpoint", "fast"]);
    assert!(out.status.success(), "backup: {}", text(&out));
    ledger_rows(&pg, 0..10).await;
    let end = pg.switch_wal().await;
    crate::support::archive::wait_archived(&repo, 1 << 20, 1, end, Duration::from_secs(60)).await;
    let last = pg
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())")
        .await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    pg.execute("SELECT pg_drop_replication_slot('walvault')")
        .await;

    // The sidecar is down: the archiver alone, while the server recycles.
    let first_alone = pg
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())")
        .await;
    let client = pg.client().await;
    for n in 10..20 {
        client
            .execute("INSERT INTO ledger VALUES ($1)", &[&n])
            .await
            .unwrap();
        client.execute("SELECT pg_switch_wal()", &[]).await.unwrap();
    }
    let newest = pg
        .query_one("SELECT pg_walfile_name(pg_switch_wal())")
        .await;
    wait_archived_by_server(&pg, &newest).await;
    wait_for(
        "the server to recycle the WAL written while the sidecar was down",
        Duration::from_secs(60),
        || async {
            pg.execute("CHECKPOINT").await;
            let held = pg
                .query_one(&format!(
                    "SELECT count(*)::text FROM pg_ls_waldir() WHERE name = '{first_alone}'"
                ))
                .await;
            (held == "0").then_some(())
        },
    )
    .await;
    // Segments the stream had stored were compared and acknowledged.
    assert!(
        pg.log_text()
            .contains("already in the repository, same bytes"),
        "{}",
        pg.log_text()
    );
    assert!(last.as_str() <= first_alone.as_str());
    let out = env.run(&["verify", "--wal", "--json"]);
    assert!(out.status.success(), "verify --wal: {}", text(&out));
    drop(pg);
    let (got, restored) = restore_ledger(15, &env, &[]).await;
    assert_eq!(got, ids(0..20), "{}", restored.pg.log_text());
}

/// What `wal-push` refuses, each naming the file, with nothing stored:
/// another cluster's segment, other bytes under a stored segment's name,
/// a file that is not WAL by its name or its pages; the same bytes again
/// are a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_push_refuses_what_is_not_this_clusters_wal() {
    let a = PgCluster::start(15, &PgOptions::default());
    let b = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "refusals");
    let seg_a = a.query_one("SELECT pg_walfile_name(pg_switch_wal())").await;
    let seg_b = b.query_one("SELECT pg_walfile_name(pg_switch_wal())").await;
    let dir = tempfile::tempdir().unwrap();
    let copy = |pg: &PgCluster, name: &str, to: &str| {
        let path = dir.path().join(to);
        std::fs::copy(pg.data_dir.join("pg_wal").join(name), &path).unwrap();
        path
    };
    let push = |path: &Path| env.run(&["wal-push", path.to_str().unwrap()]);
    // The first push creates the repository from the segment's header.
    let a_path = copy(&a, &seg_a, &seg_a);
    let out = push(&a_path);
    assert!(out.status.success(), "{}", text(&out));
    let manifest = repo.open_manifest().await.unwrap().unwrap();
    let system_a = a
        .query_one("SELECT system_identifier::text FROM pg_control_system()")
        .await;
    assert_eq!(manifest.system_identifier, system_a);
    assert_eq!(manifest.pg_major, 15);
    // Again: the same bytes are a success.
    let out = push(&a_path);
    assert!(out.status.success(), "{}", text(&out));

    // Another cluster's segment.
    let b_dir = dir.path().join("b");
    std::fs::create_dir(&b_dir).unwrap();
    let b_path = b_dir.join(&seg_b);
    std::fs::copy(b.data_dir.join("pg_wal").join(&seg_b), &b_path).unwrap();
    let out = push(&b_path);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is not WAL this repository can hold"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("system identifier"), "{}", text(&out));

    // Other bytes under the stored name: one byte changed past the header.
    let mut bytes = std::fs::read(&a_path).unwrap();
    bytes[100] ^= 0xff;
    let changed = dir.path().join("changed");
    std::fs::create_dir(&changed).unwrap();
    let changed = changed.join(&seg_a);
    std::fs::write(&changed, &bytes).unwrap();
    let out = push(&changed);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("holds other bytes"), "{}", text(&out));
    assert!(
        text(&out).contains("nothing was overwritten"),
        "{}",
        text(&out)
    );
    let key = walvault::storage::layout::segment_key(
        walvault::lsn::SegmentName::parse(&seg_a, 1 << 20).unwrap(),
        1 << 20,
    );
    assert_eq!(
        repo.get_opened(&key).await.unwrap().unwrap(),
        std::fs::read(&a_path).unwrap()
    );

    // A zeroed segment under the next name, and a name that is not WAL.
    let next = dir.path().join("next");
    std::fs::create_dir(&next).unwrap();
    let seg = walvault::lsn::SegmentName::parse(&seg_a, 1 << 20).unwrap();
    let next_name = walvault::lsn::SegmentName {
        number: seg.number + 1,
        ..seg
    }
    .to_file_name(1 << 20);
    std::fs::write(next.join(&next_name), vec![0u8; 1 << 20]).unwrap();
    let out = push(&next.join(&next_name));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("zeroed"), "{}", text(&out));
    std::fs::write(dir.path().join("postgresql.conf"), b"x").unwrap();
    let out = push(&dir.path().join("postgresql.conf"));
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("not a WAL segment"), "{}", text(&out));
    // A backup history file is acknowledged and not stored.
    let label = dir.path().join(format!("{seg_a}.00000028.backup"));
    std::fs::write(&label, b"START WAL LOCATION: 0/1000028\n").unwrap();
    let out = push(&label);
    assert!(out.status.success(), "{}", text(&out));
    let wal: Vec<String> = repo
        .list(walvault::storage::layout::WAL_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(wal, vec![key], "only the one good segment is stored");
}

/// A standby with `archive_mode = always` archives beside its primary
/// (both archive the same segments into one repository, without an
/// error), and at its promotion
/// the new timeline's history file and the old timeline's `.partial`
/// segment, as PostgreSQL produces them; a restore to the end crosses the
/// promotion from what the two archivers stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_archives_its_history_and_partial_segment() {
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "promotion");
    let (_settings_dir, settings) = settings_for_server(&s3, &env);
    let mut conf = archive_conf(&settings);
    conf[0] = "archive_mode = always".into();
    let mut primary = PgCluster::start(
        15,
        &PgOptions {
            extra_conf: conf,
            ..Default::default()
        },
    );
    primary
        .execute("CREATE TABLE ledger (id int PRIMARY KEY)")
        .await;
    let out = env.run(&["backup", "--pg", &conn_of(&primary), "--checkpoint", "fast"]);
    assert!(out.status.success(), "backup: {}", text(&out));
    let standby = PgCluster::standby_of(&mut primary);
    primary
        .execute("INSERT INTO ledger SELECT generate_series(0, 9)")
        .await;
    let last = primary
        .query_one("SELECT pg_walfile_name(pg_switch_wal())")
        .await;
    let lsn = primary.current_lsn().await;
    standby.wait_replayed(lsn).await;
    wait_archived_by_server(&primary, &last).await;
    wait_archived_by_server(&standby, &last).await;
    primary.stop_fast();

    standby.promote();
    standby
        .execute("INSERT INTO ledger SELECT generate_series(10, 19)")
        .await;
    let newest = standby
        .query_one("SELECT pg_walfile_name(pg_switch_wal())")
        .await;
    assert!(newest.starts_with("00000002"), "{newest}");
    wait_archived_by_server(&standby, &newest).await;
    let keys: Vec<String> = repo
        .list(walvault::storage::layout::WAL_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(
        keys.iter().any(|k| k == "wal/00000002.history"),
        "{keys:#?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.starts_with("wal/00000001/") && k.ends_with(".partial")),
        "{keys:#?}"
    );
    drop(standby);
    let (got, restored) = restore_ledger(15, &env, &[]).await;
    assert_eq!(got, ids(0..20), "{}", restored.pg.log_text());
}
