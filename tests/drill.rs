//! `walvault drill`: a restore test in a scratch directory, recorded in
//! the repository.

use std::time::Duration;

use walvault::storage::layout::{self};

use crate::metrics::{http_get, scrape, value};
use crate::restore::{conn_of, s3_env, text};
use crate::support::archive::wait_archived;
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::{RepoEnv, StreamProcess};
use crate::support::s3::S3Server;

const MIB: u64 = 1 << 20;

/// `walvault drill` run as the server's user, as a cron job would.
fn drill(env: &RepoEnv, major: u32, scratch: &std::path::Path) -> (i32, serde_json::Value) {
    use crate::support::pg::{command_as_server_user, pg_install};
    let (bin, lib) = pg_install(major);
    let mut cmd = command_as_server_user(&crate::support::process::walvault_bin(), major);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", "/tmp")
        .env("WALVAULT_REPO", &env.url);
    if let Some(lib) = lib {
        cmd.env("LD_LIBRARY_PATH", lib);
    }
    for (k, v) in &env.env {
        cmd.env(k, v);
    }
    let out = cmd
        .args(["drill", "--json", "--port", "5999"])
        .arg("--pg-bin")
        .arg(&bin)
        .arg("--scratch")
        .arg(scratch)
        .current_dir("/tmp")
        .output()
        .unwrap();
    let record: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    (out.status.code().unwrap(), record)
}

/// A drill on a real backup restores it into a scratch directory, checks
/// it with amcheck, reports success and the RTO, records it (info shows it)
/// and leaves nothing behind. With a damaged part it fails naming the
/// object, and the sidecar's metrics and health show the failed drill.
async fn drill_tests_a_restore(major: u32) {
    use crate::support::pg::give_to_server_user;
    let pg = PgCluster::start(major, &PgOptions::default());
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "drill");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    let out = env.run(&["backup", "--pg", &conn_of(&pg), "--checkpoint", "fast"]);
    assert!(out.status.success(), "{}", text(&out));
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");

    let scratch = tempfile::tempdir().unwrap();
    give_to_server_user(scratch.path());
    let (code, record) = drill(&env, major, scratch.path());
    assert_eq!(code, 0, "{record}");
    assert_eq!(record["success"], true, "{record}");
    assert!(record["rto_seconds"].as_f64().unwrap() > 0.0, "{record}");
    assert!(
        record["restore_seconds"].as_f64().unwrap() > 0.0,
        "{record}"
    );
    assert!(
        record["message"]
            .as_str()
            .unwrap()
            .contains("no corruption"),
        "{record}"
    );
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "scratch left behind"
    );
    let out = env.run(&["info", "--json"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["last_drill"]["success"], true, "{info}");

    // A damaged part: the drill fails and says which object.
    let backup = repo.list_backups().await.unwrap().remove(0);
    let part = layout::backup_part_key(&backup.id, "base", 0);
    std::fs::write(s3.object_path("drill", &part), b"not a sealed object").unwrap();
    let (code, record) = drill(&env, major, scratch.path());
    assert_eq!(code, 1, "{record}");
    assert_eq!(record["success"], false, "{record}");
    assert!(
        record["message"].as_str().unwrap().contains(&part),
        "{record}"
    );
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "scratch left behind"
    );
    // Both drills are in the audit trail, the failure with its reason.
    let out = env.run(&["log", "--operation", "drill", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let audit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let drills = audit["records"].as_array().unwrap();
    assert_eq!(drills.len(), 2, "{audit}");
    assert_eq!(drills[0]["result"], "success", "{audit}");
    assert_eq!(drills[0]["target"], backup.id.as_str(), "{audit}");
    assert_eq!(drills[1]["result"], "failure", "{audit}");
    assert!(
        drills[1]["detail"].as_str().unwrap().contains(&part),
        "{audit}"
    );
    if major != 15 {
        return;
    }
    let port = crate::support::pg::free_port();
    let addr = format!("127.0.0.1:{port}");
    let stream = StreamProcess::start(&env, pg.port, &["--metrics-addr", &addr]);
    crate::support::wait_for(
        "the failed drill in the metrics",
        Duration::from_secs(30),
        || async {
            let s = scrape(port).await;
            (value(&s, "walvault_restore_test_success", None) == 0.0
                && value(&s, "walvault_restore_test_timestamp_seconds", None) > 0.0)
                .then_some(())
        },
    )
    .await;
    let (status, body) = http_get(port, "/health").await;
    assert_eq!(status, 207, "{body}");
    assert!(body.contains("restore drill"), "{body}");
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
}
crate::pg_test!(drill_tests_a_restore);
