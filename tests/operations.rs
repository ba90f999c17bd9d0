//! What the person on call runs: `check`, `info` and `mark`, against real
//! servers and a real store, healthy and broken.

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
    let backup = walvault::backup::list_backups(&repo)
        .await
        .unwrap()
        .remove(0);
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
    let found = walvault::check::check_repository(&faulty).await;
    let repository = found.iter().find(|c| c.name == "repository").unwrap();
    assert_eq!(
        repository.status,
        walvault::check::Status::Critical,
        "{found:?}"
    );
    assert!(repository.message.contains("cannot write"), "{found:?}");
    assert_eq!(
        walvault::check::worst(&found),
        walvault::check::Status::Critical
    );
}

/// A mark before a destructive migration: `mark` returns only once the
/// restore point's WAL is stored, refuses a taken or bad name, and without
/// a running stream records nothing. After `DROP TABLE` and a newer backup,
/// `restore --target-name` picks the backup before the mark and gives the
/// table back with exactly the rows it had. `info` shows the backups, the
/// restorable window, the lag behind the server and the mark.
async fn mark_undoes_a_migration(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "mark");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    let conn = conn_of(&pg);
    pg.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        .await;
    pg.execute("INSERT INTO ledger SELECT g, 'before' FROM generate_series(0, 19) g")
        .await;
    let out = env.run(&["backup", "--pg", &conn, "--checkpoint", "fast"]);
    assert!(out.status.success(), "{}", text(&out));
    pg.execute("INSERT INTO ledger SELECT g, 'before' FROM generate_series(20, 29) g")
        .await;
    let out = env.run(&["mark", "before-v2", "--pg", &conn, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let mark: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mark_lsn: walvault::lsn::Lsn = mark["lsn"].as_str().unwrap().parse().unwrap();
    // Stored before it was reported.
    assert!(
        crate::support::archive::archived_end(&repo, MIB, 1).await >= mark_lsn,
        "{mark}"
    );
    let out = env.run(&["mark", "before-v2", "--pg", &conn]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    let out = env.run(&["mark", "no spaces", "--pg", &conn]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    // The migration goes wrong; a backup is taken after it.
    pg.execute("DROP TABLE ledger").await;
    pg.execute("CREATE TABLE ledger_v2 (id int)").await;
    let out = env.run(&["backup", "--pg", &conn, "--checkpoint", "fast"]);
    assert!(out.status.success(), "{}", text(&out));
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;

    let out = env.run(&["info", "--json", "--pg", &conn]);
    assert!(out.status.success(), "{}", text(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let backups = info["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 2, "{info}");
    assert!(backups.iter().all(|b| b["restorable"] == true), "{info}");
    assert_eq!(
        info["timelines"][0]["earliest_backup"], backups[0]["id"],
        "{info}"
    );
    assert_eq!(
        info["timelines"][0]["earliest_restorable_time"], backups[0]["stop_time"],
        "{info}"
    );
    assert!(
        info["timelines"][0]["latest_restorable_time"].is_string(),
        "{info}"
    );
    assert!(info["server"]["lag_bytes"].is_u64(), "{info}");
    assert_eq!(info["marks"][0]["name"], "before-v2", "{info}");
    let out = env.run(&["info"]);
    assert!(text(&out).contains("mark before-v2"), "{}", text(&out));

    // Without a stream, a mark cannot be stored: refused, nothing recorded.
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    let out = env.run(&["mark", "too-late", "--pg", &conn, "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is walvault stream running"),
        "{}",
        text(&out)
    );
    assert_eq!(repo.read_marks().await.unwrap().len(), 1);
    drop(pg);

    let (got, restored) =
        crate::restore::restore_ledger(major, &env, &["--target-name", "before-v2"]).await;
    assert_eq!(
        got,
        crate::restore::ids(0..30),
        "{}",
        restored.pg.log_text()
    );
}
crate::pg_test!(mark_undoes_a_migration);

/// One HTTP GET on loopback: (status, body).
async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// `/metrics` parsed by a Prometheus text parser: the value of `name`
/// (with `label=value` if given).
async fn scrape(port: u16) -> prometheus_parse::Scrape {
    let (status, body) = http_get(port, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{body}"))
}

fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == name && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no {name} {label:?}"));
    match sample.value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

/// The sidecar's metrics and health: the backup it takes at start moves
/// the backup metrics; under load a scrape shows the lag under the flush
/// interval and `/health` answers 200; with the store stopped the lag
/// grows and `/health` answers 503 naming the lag; with the store back it
/// recovers to 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_follow_the_stream_and_the_store() {
    let pg = PgCluster::start(15, &PgOptions::default());
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "metrics");
    let port = crate::support::pg::free_port();
    let addr = format!("127.0.0.1:{port}");
    let stream = StreamProcess::start(
        &env,
        pg.port,
        &[
            "--flush-interval",
            "500ms",
            "--metrics-addr",
            &addr,
            "--rpo",
            "3s",
            "--backup-schedule",
            "0 0 1 1 *",
            "--backup-checkpoint",
            "fast",
        ],
    );
    // The backup at start (the repository has none) shows in the metrics.
    crate::support::wait_for(
        "the first backup in the metrics",
        Duration::from_secs(60),
        || async {
            let s = scrape(port).await;
            (value(&s, "walvault_backups_total", Some(("result", "success"))) == 1.0
                && value(&s, "walvault_last_backup_timestamp_seconds", None) > 0.0)
                .then_some(())
        },
    )
    .await;
    let s = scrape(port).await;
    assert!(value(&s, "walvault_last_backup_size_bytes", None) > 0.0);
    assert!(value(&s, "walvault_earliest_restorable_timestamp_seconds", None) > 0.0);
    assert_eq!(value(&s, "walvault_streaming", None), 1.0);

    // Under load: the lag falls under the flush interval, and health is ok.
    let load = pg.pgbench_background(20, 1);
    crate::support::wait_for(
        "a scrape with the lag under the flush interval",
        Duration::from_secs(30),
        || async {
            let s = scrape(port).await;
            let lag = value(&s, "walvault_lag_seconds", None);
            (value(&s, "walvault_uploaded_objects_total", None) > 0.0 && lag < 0.5).then_some(())
        },
    )
    .await;
    crate::support::wait_for("/health 200", Duration::from_secs(30), || async {
        let (status, _) = http_get(port, "/health").await;
        (status == 200).then_some(())
    })
    .await;
    let (_, body) = http_get(port, "/health").await;
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok", "{health}");

    // The store stops: the lag grows past the RPO and health fails.
    s3.pause();
    let body = crate::support::wait_for("/health 503", Duration::from_secs(30), || async {
        let (status, body) = http_get(port, "/health").await;
        (status == 503).then_some(body)
    })
    .await;
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    let lag = health["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "lag")
        .unwrap();
    assert_eq!(lag["status"], "failing", "{health}");
    let first = value(&scrape(port).await, "walvault_lag_seconds", None);
    crate::support::wait_for("the lag to grow", Duration::from_secs(10), || async {
        (value(&scrape(port).await, "walvault_lag_seconds", None) > first + 1.0).then_some(())
    })
    .await;
    assert!(value(&scrape(port).await, "walvault_lag_bytes", None) > 0.0);

    // The store is back: everything is stored and health recovers.
    s3.resume();
    crate::support::wait_for("/health 200 again", Duration::from_secs(60), || async {
        let (status, _) = http_get(port, "/health").await;
        (status == 200).then_some(())
    })
    .await;
    let out = load.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let s = scrape(port).await;
    assert!(value(&s, "walvault_store_requests_total", Some(("method", "PUT"))) > 0.0);
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    let _ = repo;
}

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
    let backup = walvault::backup::list_backups(&repo)
        .await
        .unwrap()
        .remove(0);
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

/// A webhook receiver on loopback: every JSON body posted to it.
struct Hook {
    port: u16,
    received: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Hook {
    async fn start() -> Hook {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = received.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let sink = sink.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = s.read(&mut chunk).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some((head, body)) = text.split_once("\r\n\r\n") else {
                            continue;
                        };
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() < length {
                            continue;
                        }
                        sink.lock()
                            .unwrap()
                            .push(serde_json::from_str(&body[..length]).unwrap());
                        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .unwrap();
                        return;
                    }
                });
            }
        });
        Hook { port, received }
    }

    fn messages(&self, incident: &str, status: &str) -> usize {
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["walvault"]["incident"] == incident && m["walvault"]["status"] == status)
            .count()
    }
}

/// Notifications: with the store stopped long past the RPO, the lag
/// incident is announced exactly once (with Slack's `text`), however many
/// uploads are retried meanwhile, and once more when it is resolved.
/// A webhook URL on the command line is refused (it is a credential).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_per_incident() {
    let pg = PgCluster::start(15, &PgOptions::default());
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "notify");
    let hook = Hook::start().await;
    let url = format!("http://127.0.0.1:{}/hook", hook.port);
    let out = env.run(&["stream", "--notify-webhook", &url]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("webhook"), "{}", text(&out));
    assert!(
        !text(&out).contains("/hook"),
        "the URL was echoed: {}",
        text(&out)
    );

    let mut with_hook = env.clone();
    with_hook.env.push(("WALVAULT_NOTIFY_WEBHOOK".into(), url));
    let stream = StreamProcess::start(
        &with_hook,
        pg.port,
        &["--flush-interval", "200ms", "--rpo", "2s"],
    );
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(30)).await;
    let load = pg.pgbench_background(30, 1);
    s3.pause();
    crate::support::wait_for("the lag incident", Duration::from_secs(40), || async {
        (hook.messages("lag", "failing") > 0).then_some(())
    })
    .await;
    s3.resume();
    crate::support::wait_for(
        "the lag incident to resolve",
        Duration::from_secs(60),
        || async { (hook.messages("lag", "resolved") > 0).then_some(()) },
    )
    .await;
    assert_eq!(
        hook.messages("lag", "failing"),
        1,
        "{:?}",
        hook.received.lock().unwrap()
    );
    assert_eq!(hook.messages("lag", "resolved"), 1);
    let first = hook.received.lock().unwrap()[0].clone();
    assert!(
        first["text"].as_str().unwrap().contains("walvault on"),
        "{first}"
    );
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    let out = load.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

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
    let id_of = |hex: &str| format!("{:08x}", MasterKey::from_hex(hex).unwrap().id());
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

/// A hole older than the newest backup (as a lost slot leaves) does not
/// keep a mark from counting as stored: it waits only for the WAL from the
/// newest backup before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_waits_only_for_the_wal_after_the_newest_backup() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let s3 = S3Server::start();
    let (env, repo) = s3_env(&s3, "mark-hole");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("CREATE TABLE t (x int)").await;
    let mut end = pg.current_lsn().await;
    for _ in 0..3 {
        pg.execute("INSERT INTO t VALUES (1)").await;
        end = pg.switch_wal().await;
    }
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(30)).await;
    let conn = conn_of(&pg);
    let out = env.run(&["backup", "--pg", &conn, "--checkpoint", "fast"]);
    assert!(out.status.success(), "{}", text(&out));
    let b1 = walvault::backup::list_backups(&repo)
        .await
        .unwrap()
        .remove(0);
    let before: Vec<String> = repo
        .list(layout::WAL_PREFIX)
        .await
        .unwrap()
        .into_iter()
        .filter(|o| match layout::parse_wal_key(&o.key, MIB) {
            Some(WalObject::Segment { segment }) => {
                segment.to_file_name(MIB) < b1.wal_range.first_segment
            }
            _ => false,
        })
        .map(|o| o.key)
        .collect();
    assert!(before.len() >= 2, "{before:?}");
    repo.delete(&before[before.len() - 1]).await.unwrap();
    let out = env.run(&["mark", "after-the-hole", "--pg", &conn, "--timeout", "30s"]);
    assert!(out.status.success(), "{}", text(&out));
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
}
