//! The audit trail: every operation that changes the repository leaves a
//! sealed record (what, when, host, user, result) that `walvault log`
//! reads back in order and `info` draws the last failed backup from. A
//! record moved to another name, re-sealed to claim another operation,
//! or written without the key is refused by name.

use bytes::Bytes;
use walvault::storage::layout;

use crate::restore::{conn_of, text};
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::{RepoEnv, StreamProcess};
use crate::support::s3::S3Server;

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

fn records(env: &RepoEnv, filter: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["log", "--json"];
    args.extend_from_slice(filter);
    json(&env.run(&args))["records"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_recorded_and_records_cannot_be_forged() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let prefix = "audit";
    let (env, repo) = s3.encrypted(prefix);
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    let conn = conn_of(&pg);
    let backup = || json(&env.run(&["backup", "--pg", &conn, "--checkpoint", "fast", "--json"]));
    let first = backup()["id"].as_str().unwrap().to_string();
    let closed = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable connect_timeout=5",
        crate::support::pg::free_port()
    );
    let out = env.run(&["backup", "--pg", &closed]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    json(&env.run(&["keep", &first, "--reason", "audit 2026", "--json"]));
    let out = env.run(&["keep", &first, "--unkeep"]);
    assert!(out.status.success(), "{}", text(&out));
    json(&env.run(&["mark", "before-v2", "--pg", &conn, "--json"]));
    let second = backup()["id"].as_str().unwrap().to_string();
    json(&env.run(&["expire", "--retain-full", "1", "--json"]));
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");

    let all = records(&env, &[]);
    let seen: Vec<(String, String, String)> = all
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap().to_string(),
                r["result"].as_str().unwrap().to_string(),
                r["target"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [
        ("backup", "success", first.as_str()),
        ("backup", "failure", "-"),
        ("keep", "success", first.as_str()),
        ("unkeep", "success", first.as_str()),
        ("mark", "success", "before-v2"),
        ("backup", "success", second.as_str()),
        ("expire", "success", "-"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(seen, want, "{all:#?}");
    let host = walvault::telemetry::hostname();
    for r in &all {
        assert_eq!(r["host"], host.as_str(), "{r}");
        assert!(!r["user"].as_str().unwrap().is_empty(), "{r}");
        assert!(r["pid"].as_u64().unwrap() > 0, "{r}");
    }
    assert!(
        all[1]["detail"].as_str().unwrap().contains("connect"),
        "{}",
        all[1]
    );
    assert!(all[2]["detail"].as_str().unwrap().contains("audit 2026"));
    assert!(
        all[6]["detail"].as_str().unwrap().contains(&first),
        "expire removed the first backup: {}",
        all[6]
    );
    let failures = records(&env, &["--operation", "backup", "--failures"]);
    assert_eq!(failures.len(), 1, "{failures:#?}");
    assert!(records(&env, &["--since", "2999-01-01 00:00:00+00"]).is_empty());
    let out = env.run(&["log", "--operation", "format"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = env.run(&["log"]);
    assert!(
        text(&out).contains("mark       success  before-v2"),
        "{}",
        text(&out)
    );

    // info: the last success and failure, the first recoverable moment,
    // the WAL held per timeline.
    let info = json(&env.run(&["info", "--json"]));
    assert_eq!(info["version"], 2);
    assert_eq!(info["last_successful_backup"]["backup_id"], second.as_str());
    assert!(
        info["last_failed_backup"]["error"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{info}"
    );
    assert_eq!(info["first_recoverable_backup"], second.as_str(), "{info}");
    assert!(info["first_recoverable_time"].is_string(), "{info}");
    assert!(info["wal_age_seconds"].as_i64().unwrap() >= 0);
    let tl = &info["timelines"][0];
    assert!(
        tl["first_segment"]
            .as_str()
            .unwrap()
            .starts_with("00000001"),
        "{tl}"
    );
    assert!(
        tl["last_segment"].is_string() && tl["first_lsn"].is_string(),
        "{tl}"
    );

    // Forgeries, each refused by name, then removed.
    let keys: Vec<String> = repo
        .list(layout::AUDIT_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    let (failure_key, keep_key) = (&keys[1], &keys[2]);
    let stamp = &failure_key[layout::AUDIT_PREFIX.len()..][..20];
    let forged = format!(
        "{}{stamp}-backup-00000000000000aa.json",
        layout::AUDIT_PREFIX
    );
    let refused = |expect: &str| {
        let out = env.run(&["log"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(&forged), "{}", text(&out));
        assert!(text(&out).contains(expect), "{}", text(&out));
        std::fs::remove_file(s3.object_path(prefix, &forged)).unwrap();
        assert!(env.run(&["log"]).status.success());
    };
    // A failure copied to another name (to hide it, or double it).
    std::fs::copy(
        s3.object_path(prefix, failure_key),
        s3.object_path(prefix, &forged),
    )
    .unwrap();
    refused("moved or copied here");
    // With the key: a keep record re-sealed under a backup record's name.
    let keep = repo.get_opened(keep_key).await.unwrap().unwrap();
    repo.put_sealed(&forged, vec![Bytes::from(keep.clone())])
        .await
        .unwrap();
    refused("not what its name says");
    // With the key: an operation walvault does not record.
    let mut odd: serde_json::Value = serde_json::from_slice(&keep).unwrap();
    odd["operation"] = "backup".into();
    odd["result"] = "perhaps".into();
    let body = Bytes::from(serde_json::to_vec(&odd).unwrap());
    let at: chrono::DateTime<chrono::Utc> = odd["at"].as_str().unwrap().parse().unwrap();
    let forged_now = layout::audit_key(&at, "backup", 0xaa);
    repo.put_sealed(&forged_now, vec![body]).await.unwrap();
    let out = env.run(&["log"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("unknown result"), "{}", text(&out));
    std::fs::remove_file(s3.object_path(prefix, &forged_now)).unwrap();
    // Without the key: plain JSON in the bucket.
    std::fs::write(
        s3.object_path(prefix, &forged),
        serde_json::to_vec(&all[0]).unwrap(),
    )
    .unwrap();
    let out = env.run(&["log"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&forged), "{}", text(&out));
    std::fs::remove_file(s3.object_path(prefix, &forged)).unwrap();
    assert_eq!(records(&env, &[]).len(), all.len());
}
