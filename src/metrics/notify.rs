//! Notifications: a JSON POST (Slack-compatible `text`) to a webhook when
//! an incident opens and when it resolves. Incidents are the findings of
//! `/health` that are not ok (a failed backup, a stalled stream, lag over the
//! RPO, an unreachable store, a failed drill, a slot at risk, a failed
//! expire); each sends one message when it has lasted [`OPEN_AFTER`], not one
//! per retry, and one when it is over.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::metrics::health::{Level, Thresholds};

/// How often the findings are looked at.
const EVALUATE_INTERVAL: Duration = Duration::from_secs(2);
/// A finding opens an incident once it has lasted this long (a reconnect
/// that takes a second is no incident).
pub const OPEN_AFTER: Duration = Duration::from_secs(10);
/// Attempts to deliver one message.
const ATTEMPTS: u32 = 3;
/// How long one delivery may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// The webhook's JSON body.
#[derive(Debug, Serialize)]
struct Message<'a> {
    /// One line for chat tools (Slack, Mattermost, ...).
    text: String,
    /// The same, for scripts.
    walvault: Detail<'a>,
}

#[derive(Debug, Serialize)]
struct Detail<'a> {
    incident: &'a str,
    /// `failing`, `degraded` or `resolved`.
    status: &'a str,
    message: &'a str,
    host: String,
}

/// Watches the findings until `cancel` and posts to `url`.
pub async fn run(
    url: String,
    metrics: Arc<Metrics>,
    thresholds: Thresholds,
    cancel: CancellationToken,
) {
    let client = match reqwest::Client::builder().timeout(POST_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "notifications are off: cannot build an HTTP client");
            return;
        }
    };
    let host = crate::telemetry::hostname();
    // Findings not ok: since when, and whether the incident was announced.
    let mut seen: BTreeMap<&'static str, (Instant, bool)> = BTreeMap::new();
    let mut tick = tokio::time::interval(EVALUATE_INTERVAL);
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let health = crate::metrics::http::health_now(&metrics, &thresholds);
        for f in &health.checks {
            if f.status == Level::Ok {
                if let Some((_, true)) = seen.remove(f.name) {
                    post(&client, &url, &host, f.name, "resolved", &f.message).await;
                }
                continue;
            }
            let entry = seen.entry(f.name).or_insert((Instant::now(), false));
            if !entry.1 && entry.0.elapsed() >= OPEN_AFTER {
                entry.1 = true;
                let status = if f.status == Level::Failing {
                    "failing"
                } else {
                    "degraded"
                };
                post(&client, &url, &host, f.name, status, &f.message).await;
            }
        }
        // A finding that is gone from the list (e.g. expire no longer reports) is over.
        let present: Vec<&str> = health.checks.iter().map(|c| c.name).collect();
        let gone: Vec<&'static str> = seen
            .keys()
            .copied()
            .filter(|k| !present.contains(k))
            .collect();
        for name in gone {
            if let Some((_, true)) = seen.remove(name) {
                post(&client, &url, &host, name, "resolved", "no longer reported").await;
            }
        }
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    host: &str,
    incident: &str,
    status: &str,
    message: &str,
) {
    let body = Message {
        text: format!("walvault on {host}: {incident} {status}: {message}"),
        walvault: Detail {
            incident,
            status,
            message,
            host: host.to_string(),
        },
    };
    let json = serde_json::to_vec(&body).expect("serializes");
    let mut backoff = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .body(json.clone())
            .send()
            .await
            .and_then(reqwest::Response::error_for_status);
        match sent {
            Ok(_) => {
                tracing::info!(incident, status, "notification sent");
                return;
            }
            Err(e) if attempt == ATTEMPTS => {
                tracing::error!(incident, status, error = %e, "notification could not be delivered");
            }
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
}
