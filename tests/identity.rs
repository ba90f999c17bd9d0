//! One key file for two clusters: every object is bound to its repository
//! (the random `repository_id` of `walvault.json`), so cluster A's backups
//! and WAL copied over cluster B's repository, B's `walvault.json` left in
//! place, do not open there. With the key in hand, A's `backup.json` and
//! A's WAL re-sealed into B's repository (bound as B binds) are still
//! refused: their system identifier is not B's. A restore from B never
//! brings back cluster A.

use bytes::Bytes;
use walvault::storage::{Repository, layout};

use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::RepoEnv;
use crate::support::s3::S3Server;

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A backup of `pg` (with its own WAL) into the repository of `env`.
fn backup(env: &RepoEnv, pg: &PgCluster) {
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        pg.port
    );
    let out = env.run(&["backup", "--pg", &conn, "--checkpoint", "fast"]);
    assert!(out.status.success(), "backup: {}", text(&out));
}

/// Every key of `repo` under `backups/` and `wal/`.
async fn data_keys(repo: &Repository) -> Vec<String> {
    let mut keys = Vec::new();
    for prefix in [layout::BACKUPS_PREFIX, layout::WAL_PREFIX] {
        keys.extend(repo.list(prefix).await.unwrap().into_iter().map(|o| o.key));
    }
    assert!(!keys.is_empty(), "nothing stored");
    keys
}

/// A restore from `env` that must be refused, naming `expect`; nothing
/// is written.
fn refused_restore(env: &RepoEnv, expect: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("data");
    let out = env.run(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "the restore succeeded: {}",
        text(&out)
    );
    assert!(text(&out).contains(expect), "{}", text(&out));
    assert!(
        !pgdata.exists(),
        "a refused restore left the data directory"
    );
}

async fn another_clusters_objects_are_refused(major: u32) {
    let a = PgCluster::start(major, &PgOptions::default());
    let b = PgCluster::start(major, &PgOptions::default());
    let s3 = S3Server::start();
    let (env_a, repo_a) = s3.encrypted("cluster-a");
    let (env_b, repo_b) = s3.encrypted("cluster-b");
    a.execute("CREATE TABLE who AS SELECT 'cluster a' AS name")
        .await;
    b.execute("CREATE TABLE who AS SELECT 'cluster b' AS name")
        .await;
    backup(&env_a, &a);
    backup(&env_b, &b);
    let manifest_a = repo_a.open_manifest().await.unwrap().unwrap();
    let manifest_b = repo_b.open_manifest().await.unwrap().unwrap();
    assert_ne!(manifest_a.system_identifier, manifest_b.system_identifier);
    assert_ne!(manifest_a.repository_id, manifest_b.repository_id);
    let out = env_b.run(&["list"]);
    assert!(out.status.success(), "list before the copy: {}", text(&out));

    // Everything of A copied over B, B's walvault.json left in place.
    repo_b.delete_many(&data_keys(&repo_b).await).await.unwrap();
    let keys_a = data_keys(&repo_a).await;
    for key in &keys_a {
        let to = s3.object_path("cluster-b", key);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(s3.object_path("cluster-a", key), &to).unwrap();
    }
    let json_key = keys_a
        .iter()
        .find(|k| k.ends_with("/backup.json"))
        .unwrap()
        .clone();
    let out = env_b.run(&["list"]);
    assert!(!out.status.success(), "list accepted A's backup in B");
    assert!(text(&out).contains(&json_key), "{}", text(&out));
    assert!(
        text(&out).contains("moved or copied here"),
        "{}",
        text(&out)
    );
    refused_restore(&env_b, "moved or copied here");
    let segment_key = keys_a
        .iter()
        .find(|k| k.starts_with("wal/") && !k.contains(".d/") && !k.ends_with(".history"))
        .unwrap()
        .clone();
    let segment_name = segment_key.rsplit('/').next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("RECOVERYXLOG");
    let out = env_b.run(&["wal-fetch", segment_name, dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(200), "{}", text(&out));
    assert!(
        text(&out).contains("moved or copied here"),
        "{}",
        text(&out)
    );
    assert!(!dest.exists(), "wal-fetch served A's WAL from B");

    // With the key: A's backup.json and a segment of A re-sealed into B as
    // B binds its objects. They open, and are refused by what they say.
    let json = repo_a.get_opened(&json_key).await.unwrap().unwrap();
    let segment = repo_a.get_opened(&segment_key).await.unwrap().unwrap();
    repo_b.delete_many(&keys_a).await.unwrap();
    repo_b
        .put_sealed(&json_key, vec![Bytes::from(json)])
        .await
        .unwrap();
    repo_b
        .put_sealed(&segment_key, vec![Bytes::from(segment)])
        .await
        .unwrap();
    let foreign = format!(
        "system identifier {}, but the repository belongs to {}",
        manifest_a.system_identifier, manifest_b.system_identifier
    );
    let out = env_b.run(&["list"]);
    assert!(!out.status.success(), "list accepted A's re-sealed backup");
    assert!(text(&out).contains(&foreign), "{}", text(&out));
    assert!(text(&out).contains(&json_key), "{}", text(&out));
    refused_restore(&env_b, &foreign);
    let out = env_b.run(&["wal-fetch", segment_name, dest.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(200), "{}", text(&out));
    assert!(text(&out).contains(&foreign), "{}", text(&out));
    assert!(!dest.exists(), "wal-fetch served A's WAL from B");
}

mod another_clusters_objects_are_refused {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg14() {
        super::another_clusters_objects_are_refused(14).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg18() {
        super::another_clusters_objects_are_refused(18).await
    }
}
