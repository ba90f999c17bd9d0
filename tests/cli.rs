//! The command line as users and PostgreSQL meet it: exit codes and messages
//! for wrong keys, tampered objects, missing files and bad input.

use std::time::Duration;

use crate::pg_test;
use crate::support::archive::wait_archived;
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::{KEY, RepoEnv, StreamProcess, walvault_bin};
use walvault::format::{Keyring, MasterKey, SealOptions};
use walvault::storage::Repository;

const MIB: u64 = 1 << 20;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Wrong keys and tampered objects give clear errors naming the problem.
async fn wrong_key_and_tampering_are_reported(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let env = RepoEnv {
        url: url.clone(),
        env: vec![("WALVAULT_KEY".into(), KEY.into())],
    };
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("CREATE TABLE t AS SELECT generate_series(1, 20000) AS x")
        .await;
    let end = pg.switch_wal().await;
    let repo = Repository::open(
        &url,
        Keyring::single(MasterKey::from_hex(KEY).unwrap()),
        SealOptions::default(),
    )
    .unwrap();
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");

    let seg = walvault::lsn::SegmentName::from_lsn(
        walvault::lsn::TimelineId::FIRST,
        walvault::lsn::Lsn(end.0 - 1),
        MIB,
    );
    let name = seg.to_file_name(MIB);
    let out_dir = tempfile::tempdir().unwrap();
    let dest = out_dir.path().join("f");
    let dest = dest.to_str().unwrap();

    // The right key works.
    let ok = env.run(&["wal-fetch", &name, dest]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert_eq!(std::fs::read(dest).unwrap(), pg.wal_file(&name));

    // Another key: refused up front, says it is the wrong key; wal-fetch
    // exits 200 for every failure, so that recovery stops.
    let other = RepoEnv {
        url: url.clone(),
        env: vec![("WALVAULT_KEY".into(), "11".repeat(32))],
    };
    let out = other.run(&["wal-fetch", &name, dest]);
    assert_eq!(out.status.code(), Some(200), "{}", stderr(&out));
    assert!(stderr(&out).contains("wrong key"), "{}", stderr(&out));
    // No key for an encrypted repository.
    let none = RepoEnv {
        url: url.clone(),
        env: vec![],
    };
    let out = none.run(&["wal-fetch", &name, dest]);
    assert_eq!(out.status.code(), Some(200));
    assert!(
        stderr(&out).contains("repository is encrypted"),
        "{}",
        stderr(&out)
    );
    // The stream refuses the wrong key too.
    let bad_stream = other.run(&[
        "stream",
        "--pg",
        &format!("host=127.0.0.1 port={} user=postgres", pg.port),
    ]);
    assert_eq!(bad_stream.status.code(), Some(2), "{}", stderr(&bad_stream));
    assert!(stderr(&bad_stream).contains("wrong key"));

    // A malformed key is named as such.
    let bad = RepoEnv {
        url: url.clone(),
        env: vec![("WALVAULT_KEY".into(), "xyz".into())],
    };
    let out = bad.run(&["wal-fetch", &name, dest]);
    assert_eq!(out.status.code(), Some(200));
    assert!(
        stderr(&out).contains("64 hexadecimal characters"),
        "{}",
        stderr(&out)
    );

    // A missing file: exit 1, as restore_command expects.
    let missing = env.run(&["wal-fetch", "0000000100000000000000FF", dest]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("not in the archive"));

    // A flipped byte: exit 200 (above 125: PostgreSQL stops recovery rather
    // than taking the file as missing), names the object and the failure.
    let key = walvault::storage::layout::segment_key(seg, MIB);
    let path = dir.path().join(&key);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let out = env.run(&["wal-fetch", &name, dest]);
    assert_eq!(out.status.code(), Some(200), "{}", stderr(&out));
    assert!(stderr(&out).contains(&key), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("failed authentication"),
        "{}",
        stderr(&out)
    );
    // A truncated object.
    std::fs::write(&path, &bytes[..mid]).unwrap();
    let out = env.run(&["wal-fetch", &name, dest]);
    assert_eq!(out.status.code(), Some(200));
    assert!(
        stderr(&out).contains("truncated") && stderr(&out).contains(&key),
        "{}",
        stderr(&out)
    );
}
pg_test!(wrong_key_and_tampering_are_reported);

/// Bad flags and values are usage errors (exit 2) that say what is wrong.
#[test]
fn bad_input_is_a_usage_error() {
    let env = RepoEnv {
        url: "ftp://nowhere".into(),
        env: vec![],
    };
    let out = env.run(&["list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unsupported scheme"),
        "{}",
        stderr(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let env = RepoEnv {
        url: format!("file://{}", dir.path().display()),
        env: vec![],
    };
    let out = env.run(&["stream", "--flush-interval", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("flush-interval"), "{}", stderr(&out));
    let out = env.run(&["stream", "--pg", "host=127.0.0.1 nosuch=1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nosuch"), "{}", stderr(&out));
    let out = env.run(&["list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("empty"), "{}", stderr(&out));

    let out = env.run(&["keygen"]);
    assert!(out.status.success());
    let key = String::from_utf8_lossy(&out.stdout);
    assert_eq!(key.trim().len(), 64);
    assert!(MasterKey::from_hex(key.trim()).is_ok());

    let out = env.run(&["--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("wal-fetch"));
}

/// A server that refuses the connection is reported with the server's
/// message and SQLSTATE, and the fix; a role without REPLICATION is a
/// setting to change (exit 2), not a failure to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_show_message_and_sqlstate() {
    let pg = PgCluster::start(15, &PgOptions::default());
    pg.execute("CREATE ROLE plain LOGIN").await;
    let dir = tempfile::tempdir().unwrap();
    let env = RepoEnv {
        url: format!("file://{}", dir.path().display()),
        env: vec![("WALVAULT_KEY".into(), KEY.into())],
    };
    let out = env.run(&[
        "stream",
        "--pg",
        &format!("host=127.0.0.1 port={} user=plain", pg.port),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("SQLSTATE 42501"), "{err}");
    assert!(err.contains("replication"), "{err}");
    assert!(err.contains("ALTER ROLE"), "{err}");
}

/// A repository of another cluster, or with other encryption settings, is
/// refused with a clear error (exit 2) and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_repository_is_refused() {
    let a = PgCluster::start(15, &PgOptions::default());
    let b = PgCluster::start(15, &PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let plain = RepoEnv {
        url: url.clone(),
        env: vec![("WALVAULT_UNENCRYPTED".into(), "true".into())],
    };
    let stream = StreamProcess::start(&plain, a.port, &["--flush-interval", "200ms"]);
    let repo = Repository::open(&url, Keyring::none(), SealOptions::default()).unwrap();
    let end = a.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(30)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    let before = std::fs::read(dir.path().join("walvault.json")).unwrap();

    let other = plain.run(&[
        "stream",
        "--pg",
        &format!("host=127.0.0.1 port={} user=postgres", b.port),
    ]);
    assert_eq!(other.status.code(), Some(2), "{}", stderr(&other));
    assert!(
        stderr(&other).contains("belongs to system identifier"),
        "{}",
        stderr(&other)
    );

    let keyed = RepoEnv {
        url: url.clone(),
        env: vec![("WALVAULT_KEY".into(), KEY.into())],
    };
    let out = keyed.run(&[
        "stream",
        "--pg",
        &format!("host=127.0.0.1 port={} user=postgres", a.port),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not encrypted"), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(dir.path().join("walvault.json")).unwrap(),
        before
    );
}

/// wal-fetch works with nothing but a 0600 settings file, as PostgreSQL runs
/// restore_command (no user environment); a file others can read is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_fetch_runs_from_a_settings_file_alone() {
    use crate::support::s3::{ACCESS_KEY, REGION, S3Server, SECRET_KEY};
    use std::os::unix::fs::PermissionsExt;
    let pg = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let mut env = s3.env();
    env.push(("WALVAULT_KEY".into(), KEY.into()));
    let repo_env = RepoEnv {
        url: s3.url("cfg"),
        env,
    };
    let stream = StreamProcess::start(&repo_env, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("CREATE TABLE t AS SELECT generate_series(1, 10000) AS x")
        .await;
    let end = pg.switch_wal().await;
    let repo = s3.repository("cfg", Keyring::single(MasterKey::from_hex(KEY).unwrap()));
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(30)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("walvault-restore.json");
    let body = serde_json::json!({
        "version": 1,
        "repo": s3.url("cfg"),
        "key": KEY,
        "options": {
            "aws_endpoint": s3.endpoint(),
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "aws_region": REGION,
            "aws_allow_http": "true"
        }
    });
    std::fs::write(&cfg, body.to_string()).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let seg = walvault::lsn::SegmentName::from_lsn(
        walvault::lsn::TimelineId::FIRST,
        walvault::lsn::Lsn(end.0 - 1),
        MIB,
    )
    .to_file_name(MIB);
    let dest = dir.path().join("RECOVERYXLOG");
    let fetch = || {
        std::process::Command::new(walvault_bin())
            .env_clear()
            .args([
                "wal-fetch",
                "--repo-config",
                cfg.to_str().unwrap(),
                &seg,
                dest.to_str().unwrap(),
            ])
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = fetch();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(&dest).unwrap(), pg.wal_file(&seg));

    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = fetch();
    assert_eq!(out.status.code(), Some(200));
    assert!(stderr(&out).contains("chmod 600"), "{}", stderr(&out));
}
