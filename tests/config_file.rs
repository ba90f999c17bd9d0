//! The configuration file (`--config`): the same runs driven by flags, by
//! the environment and by the file agree; flags beat the environment beats
//! the file beats the defaults; unknown keys, wrong types, readable secrets
//! and secrets on the command line are refused with messages naming them.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use walvault::format::{Keyring, MasterKey, SealOptions};
use walvault::storage::Repository;

use crate::support::config::{bare_command, run_with_config, text, write_config};
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::KEY;
use crate::support::s3::{ACCESS_KEY, REGION, S3Server, SECRET_KEY};

const ROWS: &str = "10000";

/// How a run gets its settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Flags,
    Environment,
    File,
}

/// The settings of one run: the repository (`prefix` on the S3 server), the
/// key, the zstd level and, for `backup`, the server, checkpoint and part
/// size; each given the `way` chosen. Store credentials are never flags:
/// the flags run takes them from the environment like the environment run.
struct Settings<'a> {
    s3: &'a S3Server,
    dir: &'a Path,
    conn: &'a str,
}

impl Settings<'_> {
    fn command(&self, way: Way, prefix: &str, args: &[&str]) -> Command {
        let mut c = bare_command();
        let command = args[0];
        let url = self.s3.url(prefix);
        match way {
            Way::Flags => {
                let key_file = self.dir.join("walvault.key");
                c.envs(self.s3.env());
                c.args(args).args(["--repo", &url]);
                c.arg("--key-file").arg(key_file);
                c.args(["--compression-level", "3"]);
                if command == "backup" {
                    c.args(["--pg", self.conn, "--checkpoint", "fast"]);
                    c.args(["--part-size", "1MiB"]);
                }
                if command == "list" {
                    c.arg("--json");
                }
            }
            Way::Environment => {
                c.envs(self.s3.env());
                c.env("WALVAULT_REPO", &url);
                c.env("WALVAULT_KEY", KEY);
                c.env("WALVAULT_COMPRESSION_LEVEL", "3");
                c.env("WALVAULT_PG", self.conn);
                c.env("WALVAULT_CHECKPOINT", "fast");
                c.env("WALVAULT_PART_SIZE", "1MiB");
                c.args(args);
                // `list --json` has no variable.
                if command == "list" {
                    c.arg("--json");
                }
            }
            Way::File => {
                let text = format!(
                    r#"
[repository]
repo = "{url}"
key = "{KEY}"
compression_level = 3

[repository.options]
aws_endpoint = "{endpoint}"
aws_access_key_id = "{ACCESS_KEY}"
aws_secret_access_key = "{SECRET_KEY}"
aws_region = "{REGION}"

[backup]
pg = "{conn}"
checkpoint = "fast"
part_size = "1MiB"

[list]
json = true
"#,
                    endpoint = self.s3.endpoint(),
                    conn = self.conn,
                );
                let path = write_config(self.dir, &format!("{prefix}.toml"), &text);
                c.arg("--config").arg(path).args(args);
            }
        }
        c
    }

    fn run(&self, way: Way, prefix: &str, args: &[&str]) -> Output {
        let out = self.command(way, prefix, args).output().unwrap();
        assert!(out.status.success(), "{way:?} {args:?}: {}", text(&out));
        out
    }
}

/// `list --json` without what differs between two backups of the same
/// server: ids, times, positions, sizes and the WAL held.
fn normalized(listing: &serde_json::Value) -> serde_json::Value {
    let mut v = listing.clone();
    v["repository"] = serde_json::Value::Null;
    v["wal"] = serde_json::Value::Null;
    let backups = v["backups"].as_array_mut().unwrap();
    for b in backups {
        let b = b.as_object_mut().unwrap();
        b.retain(|k, _| ["timeline", "source_role", "server_version"].contains(&k.as_str()));
    }
    v
}

/// A base backup and `list --json` give the same result whether every
/// setting comes from flags, from WALVAULT_* variables or from the file (and
/// the store credentials from [repository.options] alone); a restore driven
/// by the file alone recovers every row, its restore_command reaching the
/// store with the file's key and credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_environment_and_file_agree() {
    let pg = PgCluster::start(16, &PgOptions::default());
    pg.execute(&format!(
        "CREATE TABLE t AS SELECT generate_series(1, {ROWS}) AS x"
    ))
    .await;
    let s3 = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "walvault.key", &format!("{KEY}\n"));
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        pg.port
    );
    let settings = Settings {
        s3: &s3,
        dir: dir.path(),
        conn: &conn,
    };
    let ways = [Way::Flags, Way::Environment, Way::File];
    let prefix = |way: Way| format!("{way:?}").to_lowercase();
    for way in ways {
        settings.run(way, &prefix(way), &["backup"]);
    }
    let mut listings = Vec::new();
    for made_by in ways {
        let outputs: Vec<String> = ways
            .iter()
            .map(|way| {
                let out = settings.run(*way, &prefix(made_by), &["list"]);
                String::from_utf8(out.stdout).unwrap()
            })
            .collect();
        assert_eq!(outputs[0], outputs[1], "flags and environment differ");
        assert_eq!(outputs[0], outputs[2], "flags and file differ");
        let listing: serde_json::Value = serde_json::from_str(&outputs[0]).unwrap();
        assert_eq!(listing["encryption"], "aes-256-gcm", "{listing}");
        assert_eq!(listing["backups"].as_array().unwrap().len(), 1, "{listing}");
        assert_eq!(
            listing["repository"].as_str().unwrap(),
            s3.url(&prefix(made_by))
        );
        listings.push(normalized(&listing));
    }
    assert_eq!(listings[0], listings[1]);
    assert_eq!(listings[0], listings[2]);
    // Each repository was written with the key: it opens them.
    for way in ways {
        let repo = s3.repository(
            &prefix(way),
            Keyring::single(MasterKey::from_hex(KEY).unwrap()),
        );
        assert!(repo.open_manifest().await.unwrap().is_some());
    }

    // check names where the credentials came from.
    let out = settings.run(Way::File, &prefix(Way::File), &["check", "--no-server"]);
    assert!(
        text(&out).contains("aws_access_key_id from the settings or configuration file"),
        "{}",
        text(&out)
    );

    // Restore with the file alone; PostgreSQL's restore_command then runs
    // with no environment at all.
    let restore_dir = tempfile::Builder::new()
        .prefix("walvault-restore")
        .tempdir()
        .unwrap();
    let pgdata = restore_dir.path().join("data");
    let out = settings
        .command(Way::File, &prefix(Way::File), &["restore"])
        .arg("--pgdata")
        .arg(&pgdata)
        .output()
        .unwrap();
    assert!(out.status.success(), "restore: {}", text(&out));
    let restored = PgCluster::start_restored(16, pgdata);
    crate::support::wait_for("promotion", Duration::from_secs(90), || async {
        (restored.query_one("SELECT pg_is_in_recovery()").await == "f").then_some(())
    })
    .await;
    assert_eq!(restored.query_one("SELECT count(*) FROM t").await, ROWS);
}

/// An encrypted file:// repository whose walvault.json names `system_id`.
async fn repository(dir: &Path, name: &str, system_id: &str) -> String {
    let url = format!("file://{}", dir.join(name).display());
    let keyring = Keyring::single(MasterKey::from_hex(KEY).unwrap());
    let repo = Repository::open(&url, keyring, SealOptions::default()).unwrap();
    repo.ensure_manifest(system_id, 16, 16 << 20).await.unwrap();
    url
}

/// Which repository `list` read (its system identifier), and whether it
/// printed JSON; panics on failure.
fn listed(out: &Output) -> (String, bool) {
    assert!(out.status.success(), "{}", text(out));
    match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
        Ok(v) => (v["system_identifier"].as_str().unwrap().to_string(), true),
        Err(_) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            let id = stdout
                .split_whitespace()
                .skip_while(|w| *w != "id")
                .nth(1)
                .unwrap_or_else(|| panic!("no system id in:\n{stdout}"))
                .to_string();
            (id, false)
        }
    }
}

/// Flag beats environment beats file beats built-in default, for the
/// repository and for the key; a command's table beats [repository].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flag_beats_environment_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let from_file = repository(d, "file", "1001").await;
    let from_env = repository(d, "env", "1002").await;
    let from_flag = repository(d, "flag", "1003").await;
    let from_table = repository(d, "table", "1004").await;
    let config = write_config(
        d,
        "walvault.toml",
        &format!("[repository]\nrepo = \"{from_file}\"\nkey = \"{KEY}\"\n"),
    );
    let env = [("WALVAULT_REPO", from_env.as_str())];
    // The built-in default of list is a table; the file's repository.
    assert_eq!(
        listed(&run_with_config(&config, &[], &["list"])),
        ("1001".into(), false)
    );
    // The environment beats the file, the flag beats both.
    assert_eq!(listed(&run_with_config(&config, &env, &["list"])).0, "1002");
    assert_eq!(
        listed(&run_with_config(
            &config,
            &env,
            &["list", "--repo", &from_flag]
        ))
        .0,
        "1003"
    );
    // A setting beats the built-in default; a command's table beats
    // [repository].
    let config = write_config(
        d,
        "table.toml",
        &format!(
            "[repository]\nrepo = \"{from_file}\"\nkey = \"{KEY}\"\n[list]\nrepo = \"{from_table}\"\njson = true\n"
        ),
    );
    assert_eq!(
        listed(&run_with_config(&config, &[], &["list"])),
        ("1004".into(), true)
    );

    // The key: WALVAULT_KEY beats the file's key and key_file (a relative
    // path, next to the file); --key-file beats them too.
    let wrong = "11".repeat(32);
    write_config(d, "wrong.key", &format!("{wrong}\n"));
    let right_key_file = write_config(d, "right.key", &format!("{KEY}\n"));
    for (name, setting) in [
        ("wrong-key.toml", format!("key = \"{wrong}\"")),
        (
            "wrong-key-file.toml",
            "key_file = \"wrong.key\"".to_string(),
        ),
    ] {
        let config = write_config(
            d,
            name,
            &format!("[repository]\nrepo = \"{from_file}\"\n{setting}\n"),
        );
        let out = run_with_config(&config, &[], &["list"]);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", text(&out));
        assert!(text(&out).contains("wrong key"), "{name}: {}", text(&out));
        listed(&run_with_config(
            &config,
            &[("WALVAULT_KEY", KEY)],
            &["list"],
        ));
        listed(&run_with_config(
            &config,
            &[],
            &["list", "--key-file", right_key_file.to_str().unwrap()],
        ));
    }
}

/// Configuration mistakes stop every command with exit code 2 (wal-fetch:
/// 200, so that recovery stops instead of ending early) and messages that
/// name the key, its table and the file; secrets on the command line are
/// refused saying what to use instead; a file others may read is refused
/// while it holds a secret.
#[test]
fn mistakes_and_secrets_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let repo = format!("file://{}", d.join("repo").display());
    let refused = |text_in_file: &str, args: &[&str], code: i32, wanted: &[&str]| {
        let path = write_config(d, "walvault.toml", text_in_file);
        let out = run_with_config(&path, &[], args);
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {shown}");
        for w in wanted {
            assert!(shown.contains(w), "{args:?}: no {w:?} in {shown}");
        }
        shown
    };
    refused(
        &format!("[repository]\nrepo = \"{repo}\"\n[stream]\nflush_intervall = \"1s\"\n"),
        &["list"],
        2,
        &[
            "unknown key flush_intervall in [stream]",
            "walvault.toml",
            "did you mean flush_interval?",
        ],
    );
    refused(
        "[lists]\njson = true\n",
        &["list"],
        2,
        &["unknown table [lists]", "did you mean [list]?"],
    );
    refused(
        "[stream]\nupload_concurrency = \"many\"\n",
        &["list"],
        2,
        &["invalid upload_concurrency in [stream]"],
    );
    refused(
        "[list]\njson = \"yes\"\n",
        &["list"],
        2,
        &["json in [list]", "must be true or false, not a string"],
    );
    refused(
        "[wal_fetch]\nprefech = 4\n",
        &["wal-fetch", "000000010000000000000001", "/dev/null"],
        200,
        &["unknown key prefech in [wal_fetch]"],
    );

    // Secrets on the command line, whatever else is wrong there.
    let out = bare_command()
        .args(["stream", "--pg", "host=db user=u password=pw-on-argv"])
        .output()
        .unwrap();
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("--pg on the command line holds a password") && shown.contains("PGPASSWORD"),
        "{shown}"
    );
    assert!(!shown.contains("pw-on-argv"), "{shown}");
    let out = bare_command()
        .args(["list", "--repo", "s3://id:pw-on-argv@bucket/p"])
        .output()
        .unwrap();
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("--repo on the command line holds a password"),
        "{shown}"
    );
    assert!(!shown.contains("pw-on-argv"), "{shown}");

    // A file with a secret must be the owner's alone; one without may be
    // read by others, never written.
    let path = write_config(d, "open.toml", &format!("[repository]\nkey = \"{KEY}\"\n"));
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = run_with_config(&path, &[], &["list"]);
    let shown = text(&out);
    assert_eq!(out.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("holds secrets (key in [repository])") && shown.contains("chmod 600"),
        "{shown}"
    );
    assert!(!shown.contains(KEY), "{shown}");
    let path = write_config(
        d,
        "plain.toml",
        &format!("[repository]\nrepo = \"{repo}\"\n"),
    );
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = run_with_config(&path, &[], &["list"]);
    assert!(
        text(&out).contains("there is no repository here"),
        "{}",
        text(&out)
    );
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let out = run_with_config(&path, &[], &["list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("writable by group or others"),
        "{}",
        text(&out)
    );
}
