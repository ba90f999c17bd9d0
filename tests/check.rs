//! `walvault check`: one finding per part, against real servers and a real
//! store, healthy and broken.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use walvault::format::{Keyring, MasterKey, SealOptions};
use walvault::storage::Repository;
use walvault::storage::layout::{self, WalObject};

use crate::restore::{conn_of, s3_env, text};
use crate::support::archive::wait_archived;
use crate::support::faulty::FaultyStore;
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::{KEY, RepoEnv, StreamProcess};
use crate::support::s3::S3Server;

const MIB: u64 = 1 << 20;

/// `check --json`: the exit code and each check's status by name.
fn check(env: &RepoEnv, args: &[&str]) -> (i32, serde_json::Value) {
    let mut full = vec!["check", "--json"];
    full.extend_from_slice(args);
    let out = env.run(&full);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (out.status.code().unwrap(), report)
}

fn finding<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {report}"))
}

/// A healthy setup passes every check (exit 0); each broken part is named
/// as critical (exit 2): a role without REPLICATION, `wal_level = minimal`,
/// an unwritable store, a wrong key, and a WAL gap after the newest backup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_and_names_each_broken_part() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "check");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    let out = env.run(&["backup", "--pg", &conn_of(&pg), "--checkpoint", "fast"]);
    assert!(out.status.success(), "{}", text(&out));
    pg.execute("CREATE TABLE t (x int)").await;
    let mut end = pg.current_lsn().await;
    for _ in 0..3 {
        pg.execute("INSERT INTO t VALUES (1)").await;
        end = pg.switch_wal().await;
    }
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(30)).await;
    let conn = conn_of(&pg);
    let (code, report) = check(&env, &["--pg", &conn]);
    assert_eq!(code, 0, "{report}");
    for name in [
        "config",
        "server",
        "wal_level",
        "max_wal_senders",
        "slot",
        "credentials",
        "repository",
        "create_only",
        "key",
        "wal",
        "system",
    ] {
        assert_eq!(finding(&report, name)["status"], "ok", "{name}: {report}");
    }
    assert!(
        finding(&report, "credentials")["message"]
            .as_str()
            .unwrap()
            .contains("aws_access_key_id from the environment"),
        "{report}"
    );
    // The plain output: one line per check.
    let out = env.run(&["check", "--pg", &conn]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).lines().any(|l| l.starts_with("ok       slot")),
        "{}",
        text(&out)
    );

    // A role without REPLICATION.
    pg.execute("CREATE ROLE plain LOGIN").await;
    let plain = format!("host=127.0.0.1 port={} user=plain sslmode=disable", pg.port);
    let (code, report) = check(&env, &["--pg", &plain]);
    assert_eq!(code, 2, "{report}");
    let server = finding(&report, "server");
    assert_eq!(server["status"], "critical", "{report}");
    assert!(
        server["message"].as_str().unwrap().contains("REPLICATION"),
        "{report}"
    );

    // A wrong key.
    let mut wrong = env.clone();
    wrong.env.retain(|(k, _)| k != "WALVAULT_KEY");
    wrong.env.push(("WALVAULT_KEY".into(), "11".repeat(32)));
    let (code, report) = check(&wrong, &["--no-server"]);
    assert_eq!(code, 2, "{report}");
    assert_eq!(finding(&report, "key")["status"], "critical", "{report}");

    // A gap: a segment after the newest backup's start goes missing.
    let (code, report) = check(&env, &["--no-server"]);
    assert_eq!(code, 0, "{report}");
    let (code_, log) = stream.terminate();
    assert_eq!(code_, Some(0), "{log}");
    let backup = repo.list_backups().await.unwrap().remove(0);
    let victim = repo
        .list(layout::WAL_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .find(|o| match layout::parse_wal_key(&o.key, MIB) {
            Some(WalObject::Segment { segment }) => {
                segment.to_file_name(MIB) > backup.wal_range.last_segment
            }
            _ => false,
        })
        .expect("a whole segment after the backup");
    repo.delete(&victim.key).await.unwrap();
    let (code, report) = check(&env, &["--no-server"]);
    assert_eq!(code, 2, "{report}");
    let wal = finding(&report, "wal");
    assert_eq!(wal["status"], "critical", "{report}");
    let name = victim.key.rsplit('/').next().unwrap();
    assert!(wal["message"].as_str().unwrap().contains(name), "{report}");
    drop(pg);

    // wal_level = minimal: no replication connection, and the reason named.
    let minimal = PgCluster::start(
        15,
        &PgOptions {
            extra_conf: vec!["wal_level = minimal".into(), "max_wal_senders = 0".into()],
            ..Default::default()
        },
    );
    let (code, report) = check(&env, &["--pg", &conn_of(&minimal)]);
    assert_eq!(code, 2, "{report}");
    assert_eq!(
        finding(&report, "wal_level")["status"],
        "critical",
        "{report}"
    );
    assert_eq!(
        finding(&report, "max_wal_senders")["status"],
        "critical",
        "{report}"
    );

    // An unwritable store: every write fails.
    let store = FaultyStore::new(s3.store());
    let faults = store.faults.clone();
    faults.fail_writes.store(1_000, SeqCst);
    let faulty = Repository::from_store(
        Arc::new(store),
        "check",
        "faulty".into(),
        Keyring::single(MasterKey::from_hex(KEY).unwrap()),
        SealOptions::default(),
    );
    let found = walvault::inspect::check::check_repository(&faulty).await;
    let repository = found.iter().find(|c| c.name == "repository").unwrap();
    assert_eq!(
        repository.status,
        walvault::inspect::check::Status::Critical,
        "{found:?}"
    );
    assert!(repository.message.contains("cannot write"), "{found:?}");
    assert_eq!(
        walvault::inspect::check::worst(&found),
        walvault::inspect::check::Status::Critical
    );
}
