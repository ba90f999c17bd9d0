//! Key rotation end to end: `key add`, `key list`, `key retire`.

use std::time::Duration;

use walvault::format::{Keyring, MasterKey};

use crate::restore::{conn_of, text};
use crate::support::archive::wait_archived;
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::{KEY, RepoEnv, StreamProcess};
use crate::support::s3::S3Server;

const MIB: u64 = 1 << 20;

/// Key rotation end to end: stream and back up under key A; put key B
/// first and `key add`; more WAL and a backup, now sealed with B; A cannot
/// be retired while objects need it; expire removes the old backup and its
/// WAL; A is retired; a restore with B alone gives exactly the rows, and A
/// alone is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_end_to_end() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let keys = tempfile::tempdir().unwrap();
    let key_b = "5".repeat(64);
    let write_keys = |name: &str, lines: &[&str]| {
        let path = keys.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        path.to_str().unwrap().to_string()
    };
    let (only_a, b_then_a, only_b) = (
        write_keys("a", &[KEY]),
        write_keys("ba", &[&key_b, KEY]),
        write_keys("b", &[&key_b]),
    );
    let env_with = |file: &str| {
        let mut env = s3.env();
        env.push(("WALVAULT_KEY_FILE".into(), file.to_string()));
        RepoEnv {
            url: s3.url("rotate"),
            env,
        }
    };
    let (env_a, env_ba, env_b) = (env_with(&only_a), env_with(&b_then_a), env_with(&only_b));
    let repo = s3.repository(
        "rotate",
        Keyring::from_key_file_text(&format!("{key_b}\n{KEY}\n"), "test").unwrap(),
    );
    pg.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        .await;
    let stream = StreamProcess::start(&env_a, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("INSERT INTO ledger SELECT g, 'a' FROM generate_series(0, 9) g")
        .await;
    let out = env_a.run(&["backup", "--pg", &conn_of(&pg), "--checkpoint", "fast"]);
    assert!(out.status.success(), "{}", text(&out));
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(30)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");

    // B first, A kept: walvault.json lists both.
    let out = env_ba.run(&["key", "add"]);
    assert!(out.status.success(), "{}", text(&out));
    let id_of = |hex: &str| MasterKey::from_hex(hex).unwrap().id().to_string();
    let (id_a, id_b) = (id_of(KEY), id_of(&key_b));
    let stream = StreamProcess::start(&env_ba, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("INSERT INTO ledger SELECT g, 'b' FROM generate_series(10, 19) g")
        .await;
    let out = env_ba.run(&["backup", "--pg", &conn_of(&pg), "--checkpoint", "fast"]);
    assert!(out.status.success(), "{}", text(&out));
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(30)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");

    // `key add` with nothing new changes nothing, and says so.
    let out = env_ba.run(&["key", "add"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("nothing changed"), "{}", text(&out));
    assert!(!text(&out).contains("restart"), "{}", text(&out));
    // B alone: the backup sealed with A is shown as such, with the key it
    // needs; the rest is listed and restorable.
    let first = {
        let out = env_ba.run(&["list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        list["backups"][0]["id"].as_str().unwrap().to_string()
    };
    for command in ["list", "info"] {
        let out = env_b.run(&[command, "--json"]);
        assert!(out.status.success(), "{command}: {}", text(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["backups"].as_array().unwrap().len(), 1, "{json}");
        assert_eq!(json["locked_backups"][0]["id"], first.as_str(), "{json}");
        assert_eq!(json["locked_backups"][0]["key_id"], id_a.as_str(), "{json}");
    }
    let scratch = tempfile::tempdir().unwrap();
    let pgdata = scratch.path().join("data");
    let out = env_b.run(&["restore", "--dry-run", "--pgdata", pgdata.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = env_b.run(&[
        "restore",
        "--dry-run",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--backup",
        &first,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("sealed with key {id_a}")),
        "{}",
        text(&out)
    );

    let out = env_ba.run(&["info", "--keys", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let count = |id: &str| {
        info["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .map(|k| k["objects"].as_u64().unwrap())
            .unwrap_or_else(|| panic!("no key {id}: {info}"))
    };
    assert!(count(&id_a) > 0 && count(&id_b) > 0, "{info}");
    let out = env_ba.run(&["key", "retire", &id_a]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("still sealed with it"),
        "{}",
        text(&out)
    );

    let out = env_ba.run(&["expire", "--retain-full", "1", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = env_ba.run(&["key", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let a = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id_a.as_str())
        .unwrap();
    assert_eq!(a["objects"], 0, "{listed}");
    let out = env_ba.run(&["key", "retire", &id_a]);
    assert!(out.status.success(), "{}", text(&out));
    // The audit trail's records sealed with A do not hold A back; B alone
    // reads the rotation's records and counts the ones A sealed.
    let out = env_b.run(&["log", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let audit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        audit["unreadable_records"].as_u64().unwrap() >= 1,
        "{audit}"
    );
    let keys: Vec<(String, String)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["operation"].as_str().unwrap().starts_with("key-"))
        .map(|r| {
            (
                r["operation"].as_str().unwrap().to_string(),
                r["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("key-add", "success"),
        ("key-retire", "failure"),
        ("key-retire", "success"),
    ]
    .map(|(o, r)| (o.to_string(), r.to_string()));
    assert_eq!(keys, want, "{audit}");

    // B alone restores exactly the rows; A alone is refused.
    let out = env_a.run(&["list"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    drop(pg);
    let (got, restored) = crate::restore::restore_ledger(15, &env_b, &[]).await;
    assert_eq!(
        got,
        crate::restore::ids(0..20),
        "{}",
        restored.pg.log_text()
    );
}
