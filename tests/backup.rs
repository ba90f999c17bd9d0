//! `walvault backup` and `walvault verify` against real servers and the S3
//! server: tablespaces, backups under load beside the sidecar, interrupted
//! backups, and damage that verify must name.

use std::time::Duration;

use walvault::format::backup::parse_server_manifest;
use walvault::format::{Keyring, MasterKey};
use walvault::storage::{Repository, layout};

use crate::pg_test;
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::{KEY, RepoEnv, StreamProcess};
use crate::support::s3::S3Server;
use crate::support::wait_for;

fn s3_repo(s3: &S3Server, prefix: &str) -> (RepoEnv, Repository) {
    let mut env = s3.env();
    env.push(("WALVAULT_KEY".into(), KEY.into()));
    (
        RepoEnv {
            url: s3.url(prefix),
            env,
        },
        s3.repository(prefix, Keyring::single(MasterKey::from_hex(KEY).unwrap())),
    )
}

fn pg_arg(pg: &PgCluster) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        pg.port
    )
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A tablespace directory the server can use.
fn tablespace_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("walvault-ts")
        .tempdir()
        .unwrap();
    let status = std::process::Command::new("chown")
        .arg("postgres")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success() || !nix::unistd::Uid::effective().is_root());
    dir
}

fn run_backup(env: &RepoEnv, pg: &PgCluster, extra: &[&str]) -> serde_json::Value {
    let pg_conn = pg_arg(pg);
    let mut args = vec![
        "backup",
        "--pg",
        pg_conn.as_str(),
        "--checkpoint",
        "fast",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = env.run(&args);
    assert!(out.status.success(), "backup failed: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A backup of pgbench (scale 10) with a second tablespace verifies clean,
/// and its files are exactly the server's manifest.
async fn backup_with_tablespace_verifies_clean(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    let ts = tablespace_dir();
    pg.execute(&format!(
        "CREATE TABLESPACE ts1 LOCATION '{}'",
        ts.path().display()
    ))
    .await;
    pg.execute("CREATE TABLE in_ts1 TABLESPACE ts1 AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 50000) g")
        .await;
    pg.pgbench(&["-i", "-s", "10", "-q"]);
    let s3 = S3Server::start();
    let (env, repo) = s3_repo(&s3, "bk");

    let meta = run_backup(&env, &pg, &[]);
    let id = meta["id"].as_str().unwrap().to_string();
    let tablespaces = meta["tablespaces"].as_array().unwrap();
    assert_eq!(tablespaces.len(), 2, "{meta}");
    assert_eq!(tablespaces[1]["name"], "base");
    assert!(meta["plain_bytes"].as_u64().unwrap() > 150 << 20, "{meta}");

    let out = env.run(&["verify", "--backup", &id, "--json"]);
    assert!(out.status.success(), "verify: {}", text(&out));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        reports[0]["failures"].as_array().unwrap().len(),
        0,
        "{reports}"
    );
    // Every file of the server's manifest was found and matched, and no other.
    let manifest = repo
        .get_opened(&layout::backup_manifest_key(&id))
        .await
        .unwrap()
        .unwrap();
    let files = parse_server_manifest(&manifest).unwrap();
    assert_eq!(
        reports[0]["files_checked"].as_u64().unwrap() as usize,
        files.len()
    );
    assert!(
        files.iter().any(|f| f.path.starts_with("pg_tblspc/")),
        "no tablespace file in the manifest"
    );

    let out = env.run(&["list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["backups"][0]["id"], id.as_str());
    assert_eq!(list["backups"][0]["source_role"], "primary");

    // Restore: the tablespace's own directory is in use, so it is refused
    // until the tablespace is mapped elsewhere.
    let oid = tablespaces[0]["oid"].as_u64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("data");
    let out = env.run(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("not empty"), "{}", text(&out));
    assert!(!pgdata.exists());
    let moved = dir.path().join("ts-moved");
    let out = env.run(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--tablespace-map",
        &format!("{oid}={}", moved.display()),
    ]);
    assert!(out.status.success(), "restore: {}", text(&out));
    crate::support::pg::give_to_server_user(&moved);
    let restored = PgCluster::start_restored(major, pgdata);
    let location = restored
        .query_one("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts1'")
        .await;
    assert_eq!(location, moved.display().to_string());
    let rows = restored
        .query_one("SELECT count(*) || ':' || max(v) FROM in_ts1")
        .await;
    let want = pg
        .query_one("SELECT count(*) || ':' || max(v) FROM in_ts1")
        .await;
    assert_eq!(rows, want);
}
pg_test!(backup_with_tablespace_verifies_clean);

/// A backup taken while pgbench runs and the sidecar streams completes, and
/// its WAL range is in the repository.
async fn backup_under_load_beside_the_sidecar(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    let s3 = S3Server::start();
    let (env, _repo) = s3_repo(&s3, "load");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "300ms"]);
    let before = pg.current_lsn().await;
    let load = pg.pgbench_background(8, 2);
    // The backup starts while the load writes WAL.
    wait_for("the load to write WAL", Duration::from_secs(30), || async {
        (pg.current_lsn().await.0 > before.0 + (1 << 20)).then_some(())
    })
    .await;
    let meta = run_backup(&env, &pg, &[]);
    let out = load.join().unwrap();
    assert!(out.status.success());
    let id = meta["id"].as_str().unwrap();
    let out = env.run(&["verify", "--backup", id]);
    assert!(out.status.success(), "verify: {}", text(&out));
    assert!(text(&out).contains("WAL range present"), "{}", text(&out));
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
}
pg_test!(backup_under_load_beside_the_sidecar);

/// A backup killed midway leaves nothing listed; the next backup succeeds
/// and removes the interrupted one's parts.
async fn killed_backup_leaves_no_backup(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    pg.pgbench(&["-i", "-s", "10", "-q"]);
    let s3 = S3Server::start();
    let (env, repo) = s3_repo(&s3, "killed");
    kill_a_backup_then_back_up(&pg, &env, &repo).await;
}
pg_test!(killed_backup_leaves_no_backup);

/// The same into a local directory, which walvault writes itself (direct
/// I/O, a staging name, a create-only link): killed mid-write, it leaves
/// no partial object under a real name, only staging files nothing lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backup_into_a_local_directory() {
    let pg = PgCluster::start(16, &PgOptions::default());
    pg.pgbench(&["-i", "-s", "10", "-q"]);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let env = RepoEnv {
        url: url.clone(),
        env: vec![("WALVAULT_KEY".into(), KEY.into())],
    };
    let repo = Repository::open(
        &url,
        Keyring::single(MasterKey::from_hex(KEY).unwrap()),
        walvault::format::SealOptions::default(),
    )
    .unwrap();
    kill_a_backup_then_back_up(&pg, &env, &repo).await;
}

/// Kills a backup once some parts are stored: every object it left opens
/// whole, nothing is listed as a backup, and the next backup succeeds and
/// removes the interrupted one's parts.
async fn kill_a_backup_then_back_up(pg: &PgCluster, env: &RepoEnv, repo: &Repository) {
    let pg_conn = pg_arg(pg);
    let mut child = env
        .command()
        .args([
            "backup",
            "--pg",
            &pg_conn,
            "--checkpoint",
            "fast",
            "--part-size",
            "1MiB",
            "--upload-concurrency",
            "1",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let orphan = wait_for("some parts stored", Duration::from_secs(60), || async {
        let objs = repo.list(layout::BACKUPS_PREFIX).await.unwrap();
        (objs.len() >= 3).then(|| layout::backup_id_of(&objs[0].key).unwrap().to_string())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let left = repo.list(&layout::backup_prefix(&orphan)).await.unwrap();
    for object in &left {
        assert!(
            repo.get_opened(&object.key).await.is_ok(),
            "{} was left partly written",
            object.key
        );
    }

    let out = env.run(&["list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        list["backups"].as_array().unwrap().len(),
        0,
        "an interrupted backup is listed"
    );
    // Nothing is restorable: a warning exit, as check gives.
    let out = env.run(&["verify"]);
    assert!(
        out.status.code() == Some(1) && text(&out).contains("no backups"),
        "{}",
        text(&out)
    );

    // Backup ids are start times to the second: make the next one differ.
    wait_for("the next second", Duration::from_secs(3), || async {
        let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        (!orphan.starts_with(&now)).then_some(())
    })
    .await;
    let meta = run_backup(env, pg, &["--orphan-grace", "0s"]);
    assert_ne!(meta["id"].as_str().unwrap(), orphan);
    let left = repo.list(&layout::backup_prefix(&orphan)).await.unwrap();
    assert!(
        left.is_empty(),
        "parts of the interrupted backup remain: {left:?}"
    );
    let out = env.run(&["list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["backups"].as_array().unwrap().len(), 1);
    let out = env.run(&["verify"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A flipped byte in a stored part and a missing part are each reported by
/// verify, naming the part; exit code 1.
async fn verify_names_damaged_and_missing_parts(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    let s3 = S3Server::start();
    let (env, _repo) = s3_repo(&s3, "damage");
    let meta = run_backup(&env, &pg, &["--part-size", "1MiB"]);
    let id = meta["id"].as_str().unwrap();
    let base = meta["tablespaces"].as_array().unwrap().last().unwrap();
    assert!(base["parts"].as_array().unwrap().len() >= 4);

    let flipped = layout::backup_part_key(id, "base", 1);
    let path = s3.object_path("damage", &flipped);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let out = env.run(&["verify", "--backup", id]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&flipped),
        "the damaged part is not named: {}",
        text(&out)
    );

    let missing = layout::backup_part_key(id, "base", 3);
    std::fs::remove_file(s3.object_path("damage", &missing)).unwrap();
    let out = env.run(&["verify", "--backup", id]);
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out);
    assert!(
        report.contains(&flipped) && report.contains(&missing),
        "{report}"
    );
    assert!(report.contains("part is missing"), "{report}");
}
pg_test!(verify_names_damaged_and_missing_parts);

/// A backup from a standby works and records where it came from.
async fn backup_from_a_standby(major: u32) {
    let mut primary = PgCluster::start(major, &PgOptions::default());
    primary.pgbench(&["-i", "-s", "1", "-q"]);
    let standby = PgCluster::standby_of(&mut primary);
    // A restartpoint needs a checkpoint replayed from the primary.
    primary.execute("CHECKPOINT").await;
    let checkpoint = primary.current_lsn().await;
    standby.wait_replayed(checkpoint).await;
    let s3 = S3Server::start();
    let (env, _repo) = s3_repo(&s3, "standby");
    // Keep WAL flowing so the standby's end position is reached.
    let load = primary.pgbench_background(5, 1);
    let meta = run_backup(&env, &standby, &[]);
    load.join().unwrap();
    assert_eq!(meta["source"]["role"], "standby", "{meta}");
    let out = env.run(&["verify", "--backup", meta["id"].as_str().unwrap()]);
    assert!(out.status.success(), "verify: {}", text(&out));
}
pg_test!(backup_from_a_standby);

/// The sidecar with --backup-schedule takes a backup at start when the
/// repository has none, on its own connection while WAL streams; it
/// verifies clean and the sidecar still exits 0.
async fn sidecar_takes_a_backup_when_none_exists(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let s3 = S3Server::start();
    let (env, _repo) = s3_repo(&s3, "sched");
    let stream = StreamProcess::start(
        &env,
        pg.port,
        &[
            "--flush-interval",
            "300ms",
            "--backup-schedule",
            "@yearly",
            "--backup-checkpoint",
            "fast",
        ],
    );
    let id = wait_for("the initial backup", Duration::from_secs(90), || async {
        let out = env.run(&["list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        list["backups"][0]["id"].as_str().map(str::to_string)
    })
    .await;
    let out = env.run(&["verify", "--backup", &id]);
    assert!(out.status.success(), "verify: {}", text(&out));
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("next scheduled backup"), "{log}");
}
pg_test!(sidecar_takes_a_backup_when_none_exists);

/// With --server-zstd the server compresses the tar streams (15+) and the
/// backup still verifies file by file; PostgreSQL 14, and server builds
/// without zstd, are refused with a clear message.
async fn server_side_compression(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    let s3 = S3Server::start();
    let (env, _repo) = s3_repo(&s3, "szstd");
    let pg_conn = pg_arg(&pg);
    let out = env.run(&[
        "backup",
        "--pg",
        &pg_conn,
        "--checkpoint",
        "fast",
        "--server-zstd",
        "3",
        "--json",
    ]);
    if major < 15 {
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains("needs PostgreSQL 15"), "{}", text(&out));
        return;
    }
    // Server builds without zstd (the npm builds of 16-18) refuse; Debian's 15 has it.
    if major != 15 && text(&out).contains("does not support compression with ZSTD") {
        assert_eq!(out.status.code(), Some(1));
        assert!(text(&out).contains("SQLSTATE 42601"), "{}", text(&out));
        return;
    }
    assert!(out.status.success(), "{}", text(&out));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["server_compression"], "zstd");
    // The label file is read from the compressed stream too.
    let label = meta["backup_label"].as_str().unwrap_or_default();
    assert!(label.starts_with("START WAL LOCATION: "), "{meta}");
    let out = env.run(&["verify", "--backup", meta["id"].as_str().unwrap(), "--json"]);
    assert!(out.status.success(), "verify: {}", text(&out));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        reports[0]["files_checked"].as_u64().unwrap() > 500,
        "{reports}"
    );
}
pg_test!(server_side_compression);

/// `--max-rate` reaches the server as BASE_BACKUP's MAX_RATE (in KiB per
/// second, in each grammar) and the backup verifies; a rate the server
/// would refuse is refused before anything is created.
async fn max_rate_reaches_the_server(major: u32) {
    let pg = PgCluster::start(
        major,
        &PgOptions {
            extra_conf: vec!["log_replication_commands = on".into()],
            ..PgOptions::default()
        },
    );
    let s3 = S3Server::start();
    let (env, repo) = s3_repo(&s3, "rate");
    let pg_conn = pg_arg(&pg);
    let out = env.run(&["backup", "--pg", &pg_conn, "--max-rate", "16KiB"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("from 32KiB to 1GiB per second"),
        "{}",
        text(&out)
    );
    assert!(
        repo.list("").await.unwrap().is_empty(),
        "a refused backup wrote"
    );
    let out = env.run(&[
        "backup",
        "--pg",
        &pg_conn,
        "--checkpoint",
        "fast",
        "--max-rate",
        "64MiB",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let log = pg.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("BASE_BACKUP") && l.contains("MAX_RATE 65536")),
        "no BASE_BACKUP with MAX_RATE 65536 in the server log:\n{log}"
    );
    let out = env.run(&["verify", "--backup", meta["id"].as_str().unwrap()]);
    assert!(out.status.success(), "verify: {}", text(&out));
}
pg_test!(max_rate_reaches_the_server);

/// A backup frozen past the orphan grace is taken for an interrupted one and
/// cleaned up by the next backup; when it wakes up it must fail rather than
/// write a backup.json that describes objects that are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_backup_that_was_cleaned_up_fails() {
    use nix::sys::signal::{Signal, kill};
    let pg = PgCluster::start(15, &PgOptions::default());
    pg.pgbench(&["-i", "-s", "10", "-q"]);
    let s3 = S3Server::start();
    let (env, repo) = s3_repo(&s3, "stalled");
    let pg_conn = pg_arg(&pg);
    let child = env
        .command()
        .args([
            "backup",
            "--pg",
            &pg_conn,
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
    let stalled = wait_for("some parts stored", Duration::from_secs(60), || async {
        let objs = repo.list(layout::BACKUPS_PREFIX).await.unwrap();
        (objs.iter().filter(|o| o.key.contains("/data/")).count() >= 3)
            .then(|| layout::backup_id_of(&objs[0].key).unwrap().to_string())
    })
    .await;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGSTOP).unwrap();
    // Its newest object ages past the grace given to the next backup.
    wait_for(
        "the stalled backup to look dead",
        Duration::from_secs(30),
        || async {
            let objs = repo.list(&layout::backup_prefix(&stalled)).await.unwrap();
            let newest = objs.iter().map(|o| o.last_modified).max()?;
            ((chrono::Utc::now() - newest).num_milliseconds() > 2500).then_some(())
        },
    )
    .await;
    let meta = run_backup(&env, &pg, &["--orphan-grace", "2s"]);
    assert_ne!(meta["id"].as_str().unwrap(), stalled);
    kill(pid, Signal::SIGCONT).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the stalled backup reported success: {err}"
    );
    let out = env.run(&["list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![meta["id"].as_str().unwrap()], "{list}");
    let out = env.run(&["verify"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// What an operator records from `backup --json`: the id, label, times,
/// LSNs and WAL file names, timeline, sizes, the server's `backup_label`
/// (as the server wrote it into the backup) and `--annotate` metadata,
/// which `list` and `info` show and `restore --backup-annotation` selects
/// by. Malformed and repeated annotations are refused before anything runs.
async fn backup_json_for_operators(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    let s3 = S3Server::start();
    let (env, _repo) = s3_repo(&s3, "operators");
    let pg_conn = pg_arg(&pg);
    for (bad, why) in [
        (vec!["--annotate", "no-equals"], "KEY=VALUE"),
        (vec!["--annotate", "a b=c"], "annotation key"),
        (vec!["--annotate", "t=1", "--annotate", "t=2"], "twice"),
    ] {
        let mut args = vec!["backup", "--pg", pg_conn.as_str()];
        args.extend(bad.iter().copied());
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out));
        assert!(text(&out).contains(why), "{bad:?}: {}", text(&out));
    }
    assert!(
        env.run(&["list"]).status.code() != Some(0),
        "a refused backup created the repository"
    );

    let first = run_backup(
        &env,
        &pg,
        &[
            "--label",
            "before migration 42",
            "--annotate",
            "ticket=OPS-42",
            "--annotate",
            "reason=pre-migration = yes",
        ],
    );
    let id = first["id"].as_str().unwrap().to_string();
    assert_eq!(first["label"], "before migration 42");
    assert_eq!(first["annotations"]["ticket"], "OPS-42", "{first}");
    assert_eq!(first["annotations"]["reason"], "pre-migration = yes");
    let label = first["backup_label"].as_str().unwrap();
    let start = first["start_lsn"].as_str().unwrap();
    let first_segment = first["wal_range"]["first_segment"].as_str().unwrap();
    assert!(
        label.starts_with(&format!(
            "START WAL LOCATION: {start} (file {first_segment})\n"
        )),
        "{label}"
    );
    assert!(label.contains("\nLABEL: before migration 42\n"), "{label}");
    assert!(label.contains("BACKUP FROM: primary"), "{label}");
    for field in [
        "start_time",
        "stop_time",
        "stop_lsn",
        "timeline",
        "plain_bytes",
    ] {
        assert!(!first[field].is_null(), "{field} missing: {first}");
    }
    assert!(first["wal_range"]["last_segment"].is_string());

    pg.execute("CREATE TABLE after_first (id int)").await;
    let second = run_backup(&env, &pg, &[]);
    assert!(second.get("annotations").is_none(), "{second}");

    let out = env.run(&["list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["backups"][0]["annotations"]["ticket"], "OPS-42");
    assert_eq!(list["backups"][1]["annotations"], serde_json::json!({}));
    let out = env.run(&["list"]);
    assert!(
        text(&out).contains("reason=pre-migration = yes, ticket=OPS-42"),
        "{}",
        text(&out)
    );
    let out = env.run(&["info", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["backups"][0]["annotations"]["ticket"], "OPS-42");
    assert_eq!(info["backups"][0]["label"], "before migration 42");
    assert!(text(&env.run(&["info"])).contains("ticket=OPS-42"));

    // restore picks among the backups that carry the annotation.
    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("data");
    let restore = |annotation: &str| {
        env.run(&[
            "restore",
            "--pgdata",
            pgdata.to_str().unwrap(),
            "--backup-annotation",
            annotation,
            // No sidecar ran: only each backup's own WAL is stored.
            "--target-immediate",
            "--dry-run",
        ])
    };
    let out = restore("ticket=OPS-42");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("plan: backup {id} ")),
        "{}",
        text(&out)
    );
    let out = restore("ticket=OPS-43");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no backup in the repository carries it"));
}
pg_test!(backup_json_for_operators);
