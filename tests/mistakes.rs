//! The mistakes users make every day, made as they make them: each must be
//! caught early, by name, with the fix, and leave nothing behind.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use walvault::lsn::TimelineId;
use walvault::protocol::{ConnInfo, ReplicationConnection};

use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::{KEY, RepoEnv, StreamProcess, walvault_bin};

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A repository URL in a local directory, with or without the key.
fn local_env(dir: &Path, key: bool) -> RepoEnv {
    RepoEnv {
        url: format!("file://{}", dir.display()),
        env: if key {
            vec![("WALVAULT_KEY".into(), KEY.into())]
        } else {
            Vec::new()
        },
    }
}

fn conn(pg: &PgCluster) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        pg.port
    )
}

/// Whether a directory holds nothing (or does not exist).
fn is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map_or(true, |mut d| d.next().is_none())
}

/// The slots the server has.
async fn slots(pg: &PgCluster) -> String {
    pg.query_one("SELECT coalesce(string_agg(slot_name, ','), '') FROM pg_replication_slots")
        .await
}

/// `backup` or `stream` without a key would make a repository unencrypted
/// for good: refused with how to make a key, nothing created, and the
/// server left as it was. `--unencrypted` is the explicit choice, and an
/// existing unencrypted repository still takes new writes without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_creates_no_repository() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("repo");
    let env = local_env(&dir, false);
    for args in [
        vec!["backup", "--pg", &conn(&pg), "--checkpoint", "fast"],
        vec!["stream", "--pg", &conn(&pg)],
    ] {
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let m = stderr(&out);
        assert!(m.contains("no key given for the new repository"), "{m}");
        assert!(m.contains("walvault keygen"), "{m}");
        assert!(m.contains("--unencrypted"), "{m}");
        assert!(!dir.exists(), "{args:?} created {}", dir.display());
    }
    // A misspelled WALVAULT_KEY_FILE is the same mistake.
    let mut typo = local_env(&dir, false);
    typo.env
        .push(("WALVAULT_KEYFILE".into(), "/etc/walvault.key".into()));
    let out = typo.run(&["backup", "--pg", &conn(&pg), "--checkpoint", "fast"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!dir.exists());
    assert_eq!(slots(&pg).await, "", "the refused stream created a slot");

    let out = env.run(&[
        "backup",
        "--pg",
        &conn(&pg),
        "--checkpoint",
        "fast",
        "--unencrypted",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(&["backup", "--pg", &conn(&pg), "--checkpoint", "fast"]);
    assert!(
        out.status.success(),
        "an existing unencrypted repository: {}",
        stderr(&out)
    );
    let list = env.run(&["list", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(json["encryption"], "none");
    assert_eq!(json["backups"].as_array().unwrap().len(), 2);
}

/// PostgreSQL reads a `restore_command` status of 1 to 125 as "not in the
/// archive": a typo in it must stop recovery (above 125), never end it.
#[test]
fn wal_fetch_usage_errors_stop_recovery() {
    let root = tempfile::tempdir().unwrap();
    let env = local_env(&root.path().join("repo"), true);
    let dest = root.path().join("f");
    let dest = dest.to_str().unwrap();
    for args in [
        vec!["wal-fetch", "--bogus", "000000010000000000000001", dest],
        vec!["wal-fetch"],
        vec!["wal-fetch", "000000010000000000000001"],
        vec![
            "wal-fetch",
            "--fetch-timeout",
            "soon",
            "000000010000000000000001",
            dest,
        ],
        vec![
            "wal-fetch",
            "--prefetch",
            "x",
            "000000010000000000000001",
            dest,
        ],
        vec!["wal-fetch", "not-a-wal-file", dest],
    ] {
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(200), "{args:?}: {}", stderr(&out));
    }
    let help = env.run(&["wal-fetch", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = stdout(&help);
    assert!(
        text.contains("restore_command = 'walvault wal-fetch"),
        "{text}"
    );
    assert!(text.contains("200"), "{text}");
    assert!(text.contains("Examples"), "{text}");
}

/// One repository has one WAL writer: a second `stream` (another slot) is
/// refused by name, the first goes on; a second `stream` on the same slot
/// (another repository) waits with a growing backoff and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sidecar_is_refused() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let root = tempfile::tempdir().unwrap();
    let env = local_env(&root.path().join("repo"), true);
    let first = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    let out = env.run(&["stream", "--pg", &conn(&pg), "--slot", "second"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let m = stderr(&out);
    assert!(
        m.contains("another walvault stream writes this repository"),
        "{m}"
    );
    assert!(m.contains(&format!("process {}", first.pid())), "{m}");
    assert!(m.contains("slot walvault"), "{m}");
    assert!(m.contains("since "), "{m}");
    assert!(
        !slots(&pg).await.contains("second"),
        "the refused stream created its slot"
    );

    // The same slot from a stream into another repository.
    let other = local_env(&root.path().join("other"), true);
    let second = StreamProcess::spawn_unready({
        let mut c = other.command();
        c.args(["stream", "--pg", &conn(&pg)]);
        c
    });
    crate::support::wait_for(
        "the second stream to back off on the busy slot",
        Duration::from_secs(60),
        || async {
            let log = second.log_text();
            (log.contains("in use by another connection") && log.contains("retry_in=2s"))
                .then_some(())
        },
    )
    .await;
    let (code, log) = second.terminate();
    assert_eq!(code, Some(0), "{log}");
    let (code, log) = first.terminate();
    assert_eq!(code, Some(0), "{log}");
    // The lease goes with the first stream: a new one may write now.
    let again = StreamProcess::start(&env, pg.port, &["--slot", "second"]);
    let (code, log) = again.terminate();
    assert_eq!(code, Some(0), "{log}");
}

/// An `s3://` repository without credentials fails at once, naming what to
/// set, and no request reaches the metadata address; only a configuration
/// that chose instance credentials goes there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_never_reach_the_metadata_address() {
    let metadata = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", metadata.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = metadata.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    let env = RepoEnv {
        url: "s3://walvault/nothing".into(),
        env: vec![
            ("WALVAULT_KEY".into(), KEY.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:9".into()),
            ("AWS_METADATA_ENDPOINT".into(), endpoint.clone()),
        ],
    };
    for args in [vec!["list"], vec!["info"], vec!["verify"]] {
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let m = stderr(&out);
        assert!(
            m.contains("no credentials for s3://walvault/nothing"),
            "{m}"
        );
        assert!(m.contains("AWS_ACCESS_KEY_ID"), "{m}");
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    // The explicit choice does ask it (so the count above can see a request).
    let out = env.run(&["list", "--instance-credentials"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        hits.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "{}",
        stderr(&out)
    );
}

/// A mistyped local repository is never created: read-only commands create
/// nothing, a writing command creates it only once its arguments are
/// valid, and a URL that is not an absolute `file:///` says which was meant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_local_repository_is_not_created() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("typo");
    let env = local_env(&missing, true);
    for args in [
        vec!["list"],
        vec!["info"],
        vec!["verify"],
        vec!["check", "--no-server"],
        vec![
            "restore",
            "--dry-run",
            "--pgdata",
            "/nonexistent/walvault-x",
        ],
        vec![
            "wal-fetch",
            "000000010000000000000001",
            "/tmp/walvault-nothing",
        ],
    ] {
        let out = env.run(&args);
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        assert!(!missing.exists(), "{args:?} created {}", missing.display());
        if args[0] != "wal-fetch" && args[0] != "check" {
            assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
            assert!(
                stderr(&out).contains("there is no repository here"),
                "{}",
                stderr(&out)
            );
        }
    }
    // A writing command that fails on its arguments creates nothing either.
    let out = env.run(&[
        "stream",
        "--pg",
        "host=127.0.0.1 port=1",
        "--flush-interval",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!missing.exists());
    // `file:repo`, `file://repo` and a bare path: refused, with the URL meant.
    for url in ["file:typo", "file://typo", "typo"] {
        let mut c = std::process::Command::new(walvault_bin());
        c.current_dir(root.path())
            .env_clear()
            .env("WALVAULT_KEY", KEY)
            .args(["list", "--repo", url]);
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{url}: {}", stderr(&out));
        let want = format!("did you mean file://{}?", missing.display());
        assert!(stderr(&out).contains(&want), "{url}: {}", stderr(&out));
        assert!(!Path::new("/typo").exists(), "{url} created /typo");
    }
}

/// A typo in the log level is an error listing the valid ones, not a
/// sidecar that logs nothing; in the flag, the environment and the file.
#[test]
fn a_log_level_typo_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let env = local_env(&root.path().join("repo"), true);
    for (args, var) in [
        (vec!["list", "--log-level", "verbose"], None),
        (vec!["list", "--log-level", "infp"], None),
        (vec!["list"], Some("warning")),
        (vec!["list", "--log-level", "info,walvault=loud"], None),
    ] {
        let mut c = env.command();
        c.args(&args);
        if let Some(v) = var {
            c.env("WALVAULT_LOG_LEVEL", v);
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let m = stderr(&out);
        assert!(m.contains("unknown log level"), "{m}");
        assert!(m.contains("error, warn, info, debug, trace, off"), "{m}");
    }
    let config = crate::support::config::write_config(
        root.path(),
        "walvault.toml",
        "log_level = \"verbose\"\n",
    );
    let mut c = env.command();
    c.arg("--config").arg(&config).arg("list");
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let m = stderr(&out);
    assert!(
        m.contains("log_level") && m.contains("walvault.toml"),
        "{m}"
    );
}

/// A slot name PostgreSQL would truncate (or refuse) is refused before
/// connecting, so no slot of another name is left holding WAL; and a
/// notice before CopyBothResponse (what a truncated name sends) is read
/// past, not taken for a protocol violation.
async fn slot_names_are_checked_before_connecting(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    let root = tempfile::tempdir().unwrap();
    let env = local_env(&root.path().join("repo"), true);
    let long = "s".repeat(64);
    for slot in [long.as_str(), "Walvault", "wal-vault", ""] {
        let out = env.run(&["stream", "--pg", &conn(&pg), "--slot", slot]);
        assert_eq!(out.status.code(), Some(2), "{slot:?}: {}", stderr(&out));
        let m = stderr(&out);
        assert!(m.contains("--slot"), "{m}");
        assert!(
            m.contains("63") || m.contains("lower-case letters") || m.contains("empty"),
            "{m}"
        );
    }
    assert_eq!(slots(&pg).await, "");
    assert!(!root.path().join("repo").exists());

    let info = ConnInfo::parse(&conn(&pg), &|_| None).unwrap();
    let mut c = ReplicationConnection::connect(&info).await.unwrap();
    let id = c.identify_system().await.unwrap();
    c.create_physical_slot(&long).await.unwrap();
    let started = c
        .start_replication(
            Some(&long),
            id.xlogpos.segment_start(1 << 20),
            TimelineId::FIRST,
        )
        .await;
    assert!(started.is_ok(), "{started:?}");
}
crate::pg_test!(slot_names_are_checked_before_connecting);

/// A server that refuses walvault for a reason only its settings fix
/// (pg_hba.conf, max_wal_senders = 0 with wal_level = minimal) makes the
/// sidecar exit 2 with the fix, so systemd does not restart it for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_settings_exit_2_with_the_fix() {
    let root = tempfile::tempdir().unwrap();
    let env = local_env(&root.path().join("repo"), true);
    let hba = PgCluster::start(
        15,
        &PgOptions {
            hba_first: vec!["host replication all 127.0.0.1/32 reject".into()],
            ..Default::default()
        },
    );
    let out = env.run(&["stream", "--pg", &conn(&hba)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("pg_hba.conf"), "{}", stderr(&out));
    drop(hba);
    let minimal = PgCluster::start(
        15,
        &PgOptions {
            extra_conf: vec![
                "wal_level = minimal".into(),
                "max_wal_senders = 0".into(),
                "wal_keep_size = 0".into(),
            ],
            ..Default::default()
        },
    );
    let out = env.run(&["stream", "--pg", &conn(&minimal)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let m = stderr(&out);
    assert!(
        m.contains("max_wal_senders") && m.contains("wal_level = replica"),
        "{m}"
    );
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/systemd/walvault.service"),
    )
    .unwrap();
    assert!(unit.contains("RestartPreventExitStatus=2"), "{unit}");
}

/// A key file others may read is refused like a configuration file holding
/// the key, with the `chmod`; a malformed line is named with its file and
/// line.
#[test]
fn key_file_permissions_and_lines_are_checked() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let key_file = root.path().join("walvault.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let env = RepoEnv {
        url: format!("file://{}", root.path().join("repo").display()),
        env: vec![("WALVAULT_KEY_FILE".into(), key_file.display().to_string())],
    };
    let out = env.run(&["list"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let m = stderr(&out);
    assert!(
        m.contains(&format!("chmod 600 {}", key_file.display())),
        "{m}"
    );
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(&key_file, format!("# rotated\n{KEY}\nabc\n")).unwrap();
    let out = env.run(&["list"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let m = stderr(&out);
    assert!(
        m.contains(&format!("{}, line 3", key_file.display())),
        "{m}"
    );
}

/// `restore --start` and `drill` as root (PostgreSQL refuses to run as
/// root), or with a `--pg-bin` without pg_ctl, fail before anything is
/// written; a drill that could not run records no failed drill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_problems_are_found_before_restoring() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let root = tempfile::tempdir().unwrap();
    let repo = root.path().join("repo");
    let env = local_env(&repo, true);
    let out = env.run(&["backup", "--pg", &conn(&pg), "--checkpoint", "fast"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pgdata = root.path().join("restored");
    let as_root = nix::unistd::geteuid().is_root();
    let mut cases = vec![(
        vec!["--pg-bin", "/nonexistent/bin"],
        "/nonexistent/bin holds no pg_ctl",
    )];
    if as_root {
        cases.push((Vec::new(), "PostgreSQL refuses to run as root"));
    }
    for (extra, want) in &cases {
        let mut args = vec![
            "restore",
            "--pgdata",
            pgdata.to_str().unwrap(),
            "--start",
            "--target-immediate",
        ];
        args.extend(extra.iter().copied());
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{}", stderr(&out));
        assert!(!pgdata.exists(), "{args:?} wrote {}", pgdata.display());
        assert!(!root.path().join("restored.walvault.json").exists());
    }
    let out = env.run(&[
        "drill",
        "--pg-bin",
        "/nonexistent/bin",
        "--scratch",
        root.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("holds no pg_ctl"), "{}", stderr(&out));
    assert!(
        !repo.join("drills").exists() || is_empty(&repo.join("drills")),
        "a drill that could not run was recorded"
    );
}

/// A restore stopped by SIGTERM (or Ctrl-C) while it writes removes what
/// it wrote, and running it again restores. The store is paused once the
/// first files are written, so the signal always lands mid-restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_restore_leaves_nothing() {
    let pg = PgCluster::start(15, &PgOptions::default());
    pg.pgbench(&["-i", "-s", "5", "-q"]);
    let s3 = crate::support::s3::S3Server::start();
    let (env, _) = crate::restore::s3_env(&s3, "interrupted");
    let out = env.run(&[
        "backup",
        "--pg",
        &conn(&pg),
        "--checkpoint",
        "fast",
        "--part-size",
        "1MiB",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let root = tempfile::tempdir().unwrap();
    let pgdata = root.path().join("restored");
    let mut cmd = env.command();
    cmd.args(["restore", "--pgdata", pgdata.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    crate::support::wait_for(
        "the restore to write files",
        Duration::from_secs(60),
        || async { pgdata.join("base").exists().then_some(()) },
    )
    .await;
    s3.pause();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    s3.resume();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert!(is_empty(&pgdata), "the interrupted restore left files");
    assert!(!root.path().join("restored.walvault.json").exists());
    let out = env.run(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The exit codes of docs/operations.md, row by row: every command has a
/// row, a bad flag gives the documented usage code (2, or 200 for
/// `wal-fetch`), and what each command does on an empty repository (one
/// without `walvault.json`) and a missing one is what the table says.
#[test]
fn exit_codes_table_matches_the_commands() {
    use clap::CommandFactory;
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md"))
            .unwrap();
    let section = doc
        .split("## Exit codes\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/operations.md has an Exit codes section");
    let mut table = std::collections::BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let command = cells[1].trim_matches('`').to_string();
        let codes: Vec<u8> = [(2, 0u8), (3, 1), (4, 2), (5, 200)]
            .into_iter()
            .filter(|(i, _)| cells[*i] != "—")
            .map(|(_, c)| c)
            .collect();
        table.insert(command, codes);
    }
    let commands: Vec<String> = walvault::cli::Cli::command()
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .filter(|n| n != "help")
        .collect();
    let documented: Vec<&String> = table.keys().collect();
    let mut sorted = commands.clone();
    sorted.sort();
    assert_eq!(
        documented,
        sorted.iter().collect::<Vec<_>>(),
        "the table's commands"
    );

    let root = tempfile::tempdir().unwrap();
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let empty_env = local_env(&empty, true);
    let missing_env = local_env(&root.path().join("missing"), true);
    for command in &commands {
        let codes = &table[command];
        // A bad flag.
        let mut args: Vec<&str> = command.split(' ').collect();
        args.push("--no-such-flag");
        let out = empty_env.run(&args);
        let usage: u8 = if command == "wal-fetch" { 200 } else { 2 };
        assert_eq!(
            out.status.code(),
            Some(i32::from(usage)),
            "{command}: {}",
            stderr(&out)
        );
        assert!(
            codes.contains(&usage),
            "{command}: {usage} is not documented"
        );
    }
    // What a repository without walvault.json, and a missing one, give.
    let reads: &[(&[&str], i32, i32)] = &[
        (&["list"], 1, 2),
        (&["info"], 1, 2),
        (&["verify"], 1, 2),
        (&["keep"], 1, 2),
        (&["key", "list"], 1, 2),
        (&["expire", "--retain-full", "1"], 1, 2),
        (&["check", "--no-server"], 1, 2),
        (
            &["restore", "--pgdata", "/nonexistent/walvault-exit-codes"],
            1,
            2,
        ),
        (
            &[
                "wal-fetch",
                "000000010000000000000001",
                "/tmp/walvault-exit-codes",
            ],
            200,
            200,
        ),
    ];
    for (args, on_empty, on_missing) in reads {
        for (env, want) in [(&empty_env, on_empty), (&missing_env, on_missing)] {
            let out = env.run(args);
            assert_eq!(out.status.code(), Some(*want), "{args:?}: {}", stderr(&out));
            let command = args[0];
            assert!(
                table[command].contains(&(*want as u8)),
                "{args:?}: {want} is not documented for {command}"
            );
        }
    }
    let out = empty_env.run(&["keygen"]);
    assert_eq!(out.status.code(), Some(0));
}

/// Targets recovery cannot reach are refused by the plan, with the
/// archive's end and its newest commit (or transaction id): a time after
/// the newest commit, an xid not yet assigned, a name no mark or restore
/// point has. A restore point made without `walvault mark` is found in the
/// WAL; a time between commits passes.
async fn unreachable_targets_are_refused(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    let root = tempfile::tempdir().unwrap();
    let env = local_env(&root.path().join("repo"), true);
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    let out = env.run(&["backup", "--pg", &conn(&pg), "--checkpoint", "fast"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Stored stop times are whole seconds: the commits come a full second
    // after the backup's stop, where a time target can be placed.
    let list: serde_json::Value =
        serde_json::from_slice(&env.run(&["list", "--json"]).stdout).unwrap();
    let stop = list["backups"][0]["stop_time"]
        .as_str()
        .unwrap()
        .to_string();
    let sql = format!("SELECT clock_timestamp() > '{stop}'::timestamptz + interval '1 second'");
    crate::support::wait_for(
        "the server clock to pass the backup's stop",
        Duration::from_secs(5),
        || {
            let (pg, sql) = (&pg, &sql);
            async move { (pg.query_one(sql).await == "t").then_some(()) }
        },
    )
    .await;
    pg.execute("CREATE TABLE t (x int)").await;
    pg.execute("INSERT INTO t VALUES (1)").await;
    let between = pg.query_one("SELECT now()::text").await;
    pg.execute("SELECT pg_create_restore_point('by-hand')")
        .await;
    pg.execute("INSERT INTO t VALUES (2)").await;
    let newest_xid: u64 = pg
        .query_one("SELECT txid_current()::text")
        .await
        .parse()
        .unwrap();
    let end = pg.switch_wal().await;
    let repo = walvault::storage::Repository::open(
        &env.url,
        walvault::format::Keyring::single(walvault::format::MasterKey::from_hex(KEY).unwrap()),
        walvault::format::SealOptions::default(),
    )
    .unwrap();
    crate::support::archive::wait_archived(&repo, 1 << 20, 1, end, Duration::from_secs(60)).await;
    let pgdata = root.path().join("restored");
    let plan = |target: &[&str]| {
        let mut args = vec!["restore", "--dry-run", "--pgdata", pgdata.to_str().unwrap()];
        args.extend_from_slice(target);
        env.run(&args)
    };
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let out = plan(&["--target-time", &future]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot be reached"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("the newest commit in the archive is at"),
        "{}",
        stderr(&out)
    );
    let out = plan(&["--target-xid", &(newest_xid + 1000).to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("newest transaction id"),
        "{}",
        stderr(&out)
    );
    let out = plan(&["--target-name", "no-such-point"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no mark and no restore point named \"no-such-point\""),
        "{}",
        stderr(&out)
    );
    for target in [
        vec!["--target-name", "by-hand"],
        vec!["--target-time", between.as_str()],
        vec!["--target-xid", &newest_xid.to_string()],
    ] {
        let out = plan(&target);
        assert_eq!(out.status.code(), Some(0), "{target:?}: {}", stderr(&out));
    }
    assert!(!pgdata.exists());
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
}
crate::pg_test!(unreachable_targets_are_refused);

/// The smaller ones: `--pgdata` naming a file says so; a value of the
/// configuration file that its flag refuses names the key and the file;
/// every command's help has examples, and `stream --help` keeps the global
/// and repository options under their own headings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smaller_mistakes_are_named() {
    let root = tempfile::tempdir().unwrap();
    let env = local_env(&root.path().join("repo"), true);
    let repo = walvault::storage::Repository::open(
        &env.url,
        walvault::format::Keyring::single(walvault::format::MasterKey::from_hex(KEY).unwrap()),
        walvault::format::SealOptions::default(),
    )
    .unwrap();
    repo.ensure_manifest("7300000000000000001", 15, 1 << 20)
        .await
        .unwrap();
    let file = root.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = env.run(&["restore", "--dry-run", "--pgdata", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("it is a file, not a directory"),
        "{}",
        stderr(&out)
    );
    for (text, key) in [
        ("[stream]\nflush_interval = \"0s\"\n", "flush_interval"),
        ("[stream]\nmemory_budget = \"1MiB\"\n", "memory_budget"),
        ("[stream]\nslot = \"Main\"\n", "slot"),
        (
            "[stream]\nbackup_schedule = \"every day\"\n",
            "backup_schedule",
        ),
        ("[stream]\nmetrics_addr = \"nowhere\"\n", "metrics_addr"),
    ] {
        let config = crate::support::config::write_config(root.path(), "walvault.toml", text);
        let mut c = env.command();
        c.arg("--config")
            .arg(&config)
            .args(["stream", "--pg", "host=127.0.0.1 port=1"]);
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}: {}", stderr(&out));
        let m = stderr(&out);
        assert!(
            m.contains(&format!("invalid {key} in [stream]")) && m.contains("walvault.toml"),
            "{text}: {m}"
        );
    }
    use clap::CommandFactory;
    for sub in walvault::cli::Cli::command().get_subcommands() {
        let name = sub.get_name();
        if name == "help" {
            continue;
        }
        let out = env.run(&[name, "--help"]);
        assert_eq!(out.status.code(), Some(0), "{name}");
        assert!(
            stdout(&out).contains("Examples"),
            "{name} --help has no examples"
        );
    }
    let help = stdout(&env.run(&["stream", "--help"]));
    assert!(help.contains("Global options:"), "{help}");
    assert!(help.contains("Repository:"), "{help}");
    assert!(help.contains("Retention:"), "{help}");
}
