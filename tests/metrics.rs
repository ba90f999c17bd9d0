//! The sidecar's metrics endpoint, `/health` and webhook notifications,
//! following the stream and the store.

use std::sync::Arc;
use std::time::Duration;

use crate::restore::{s3_env, text};
use crate::support::archive::wait_archived;
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::StreamProcess;
use crate::support::s3::S3Server;

const MIB: u64 = 1 << 20;

/// One HTTP GET on loopback: (status, body).
pub(crate) async fn http_get(port: u16, path: &str) -> (u16, String) {
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
pub(crate) async fn scrape(port: u16) -> prometheus_parse::Scrape {
    let (status, body) = http_get(port, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{body}"))
}

pub(crate) fn value(s: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
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
    dashboard_and_alerts_read_only_served_metrics(&s);

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

/// The `walvault_*` names a packaged file reads.
fn metric_names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("walvault_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Every metric the Grafana dashboard and the alert rules read is one the
/// sidecar serves (a renamed metric would leave a panel or an alert silently
/// empty), and the dashboard shows the lag, the restorable window, backups,
/// drills, requests and their cost.
fn dashboard_and_alerts_read_only_served_metrics(s: &prometheus_parse::Scrape) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let served: std::collections::BTreeSet<&str> = s
        .samples
        .iter()
        .map(|x| x.metric.as_str())
        .chain(s.docs.keys().map(String::as_str))
        .collect();
    let dashboard_text = std::fs::read_to_string(root.join("grafana/walvault.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text).unwrap();
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    let read = metric_names_in(&exprs.join("\n"));
    for needed in [
        "walvault_lag_seconds",
        "walvault_earliest_restorable_timestamp_seconds",
        "walvault_latest_restorable_timestamp_seconds",
        "walvault_last_backup_timestamp_seconds",
        "walvault_backups_total",
        "walvault_restore_test_success",
        "walvault_store_requests_total",
    ] {
        assert!(
            read.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
    assert!(
        exprs.iter().any(|e| e.contains("$put_price_per_1000")),
        "the dashboard has no cost panel"
    );
    let alerts = std::fs::read_to_string(root.join("prometheus/walvault-alerts.yml")).unwrap();
    let alerted = metric_names_in(&alerts);
    assert!(alerted.contains("walvault_lag_seconds"), "{alerted:?}");
    for (file, names) in [("the dashboard", &read), ("the alert rules", &alerted)] {
        for name in names {
            assert!(
                served.contains(name.as_str()),
                "{file} reads {name}, which the sidecar does not serve"
            );
        }
    }
}

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
