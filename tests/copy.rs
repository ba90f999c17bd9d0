//! `walvault copy`: the repository in another place, restorable alone;
//! killed part way, resumed; a copy place holding something else refused.

use std::time::Duration;

use crate::restore::{conn_of, ids, restore_ledger, s3_env, text};
use crate::support::archive::wait_archived;
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::s3::S3Server;
use crate::support::wait_for;
use crate::wal_push::settings_for_server;

const MIB: u64 = 1 << 20;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_restores_alone_and_resumes_after_a_kill() {
    let mut primary = S3Server::start();
    let (env, repo) = s3_env(&primary, "primary");
    let elsewhere = S3Server::start();
    let (copy_env, _) = s3_env(&elsewhere, "copy");
    let (_settings_dir, to) = settings_for_server(&elsewhere, &copy_env);
    let to = to.to_str().unwrap().to_string();

    let pg = PgCluster::start(15, &PgOptions::default());
    pg.pgbench(&["-i", "-s", "10", "-q"]);
    pg.execute("CREATE TABLE ledger (id int PRIMARY KEY)").await;
    pg.execute("INSERT INTO ledger SELECT generate_series(0, 9)")
        .await;
    let stream = crate::support::process::StreamProcess::start(
        &env,
        pg.port,
        &["--flush-interval", "200ms"],
    );
    let backup = json(&env.run(&[
        "backup",
        "--pg",
        &conn_of(&pg),
        "--checkpoint",
        "fast",
        "--json",
    ]));
    pg.wait_clock_past(backup["stop_time"].as_str().unwrap())
        .await;
    pg.execute("INSERT INTO ledger SELECT generate_series(10, 19)")
        .await;
    let target = pg.clock_text().await;
    pg.execute("INSERT INTO ledger VALUES (1000)").await;
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");

    // Killed once a few objects are there: the copy is no repository yet.
    let mut child = env
        .command()
        .args(["copy", "--to-repo-config", &to, "--concurrency", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("a few objects copied", Duration::from_secs(60), || async {
        (elsewhere.stored_files("copy", "").len() >= 2).then_some(())
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !elsewhere.object_path("copy", "walvault.json").exists(),
        "an interrupted copy holds walvault.json"
    );
    let out = copy_env.run(&["list"]);
    assert!(!out.status.success(), "{}", text(&out));

    // Resumed: what is there is not copied again.
    let first = json(&env.run(&["copy", "--to-repo-config", &to, "--json"]));
    assert!(first["present"].as_u64().unwrap() >= 2, "{first}");
    assert!(first["copied"].as_u64().unwrap() > 0, "{first}");
    // Idempotent: a rerun copies nothing.
    let again = json(&env.run(&["copy", "--to-repo-config", &to, "--json"]));
    assert_eq!(again["copied"], 0, "{again}");
    assert_eq!(again["replaced"], 0, "{again}");
    // A pin made since is copied; changed, it is replaced in the copy.
    let id = backup["id"].as_str().unwrap();
    for reason in ["audit", "audit 2026, ticket 4711"] {
        let out = env.run(&["keep", id, "--reason", reason]);
        assert!(out.status.success(), "keep: {}", text(&out));
        json(&env.run(&["copy", "--to-repo-config", &to, "--json"]));
        let pins = json(&copy_env.run(&["keep", "--json"]));
        assert_eq!(pins[0]["reason"], reason, "{pins}");
    }

    // An object of the copy truncated: the rerun names it, and overwrites nothing.
    let parts = elsewhere.stored_files("copy", "backups");
    let part = parts
        .iter()
        .find(|p| p.display().to_string().contains("/data/"))
        .unwrap();
    let bytes = std::fs::read(part).unwrap();
    std::fs::write(part, &bytes[..bytes.len() / 2]).unwrap();
    let out = env.run(&["copy", "--to-repo-config", &to]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let name = part
        .strip_prefix(elsewhere.object_path("copy", ""))
        .unwrap();
    assert!(
        text(&out).contains(name.to_str().unwrap()),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(part).unwrap().len(), bytes.len() / 2);
    std::fs::write(part, &bytes).unwrap();

    // Another repository where the copy would go is refused.
    let other = elsewhere.object_path("other", "walvault.json");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::write(
        &other,
        r#"{"version":3,"repository_id":"00112233445566778899aabbccddeeff","system_identifier":"7300000000000000001","pg_major":15,"wal_segment_size":1048576,"compression":"zstd","encryption":"none","key_ids":[],"created_at":"2026-12-01T00:00:00Z"}"#,
    )
    .unwrap();
    let (other_env, _) = s3_env(&elsewhere, "other");
    let (_other_dir, other_to) = settings_for_server(&elsewhere, &other_env);
    let out = env.run(&["copy", "--to-repo-config", other_to.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("not a copy of this one"),
        "{}",
        text(&out)
    );

    // The primary gone: the copy alone verifies and restores.
    primary.stop();
    let out = copy_env.run(&["verify", "--wal"]);
    assert!(out.status.success(), "verify: {}", text(&out));
    let (got, restored) = restore_ledger(15, &copy_env, &["--target-time", &target]).await;
    assert_eq!(got, ids(0..20), "{}", restored.pg.log_text());
    // The copy records the runs that changed it.
    let log = json(&copy_env.run(&["log", "--operation", "copy", "--json"]));
    let results: Vec<&str> = log["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"].as_str().unwrap())
        .collect();
    assert!(
        results.contains(&"success") && results.contains(&"failure"),
        "{log}"
    );
}
