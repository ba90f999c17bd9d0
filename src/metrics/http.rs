//! The `/metrics` and `/health` endpoint: a small HTTP/1.1 responder on
//! its own address (GET only, one request per connection, bounded reads).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::Metrics;
use super::health::{self, Thresholds};

/// The most request bytes read before answering.
const MAX_REQUEST_BYTES: usize = 8192;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` (so a taken port fails at start) and returns the listener.
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    thresholds: Thresholds,
    cancel: CancellationToken,
) {
    loop {
        let (socket, _) = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(REQUEST_TIMEOUT * 2, answer(socket, &metrics, &thresholds))
                    .await;
        });
    }
}

/// The verdict now.
pub fn health_now(metrics: &Metrics, thresholds: &Thresholds) -> health::Health {
    health::evaluate(
        &health::Inputs {
            streaming: metrics
                .stream
                .streaming
                .load(std::sync::atomic::Ordering::Relaxed),
            lag_seconds: metrics.stream.lag_seconds(),
            lag_bytes: metrics.stream.lag_bytes(),
            store_unreachable: metrics.stream.store_unreachable(),
            state: metrics.snapshot(),
            now: chrono::Utc::now(),
        },
        thresholds,
    )
}

async fn answer(
    mut socket: TcpStream,
    metrics: &Metrics,
    thresholds: &Thresholds,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST_BYTES {
            let n = socket.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = String::from_utf8_lossy(&buf);
    let mut parts = line.lines().next().unwrap_or_default().split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let h = health_now(metrics, thresholds);
            (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.render(&h),
            )
        }
        ("GET" | "HEAD", "/health") => {
            let h = health_now(metrics, thresholds);
            let body = serde_json::to_string_pretty(&h).expect("serializes") + "\n";
            (h.status.http_status(), "application/json", body)
        }
        ("GET" | "HEAD", _) => (
            404,
            "text/plain",
            "not found: try /metrics or /health\n".to_string(),
        ),
        _ => (405, "text/plain", "only GET\n".to_string()),
    };
    let reason = match status {
        200 => "OK",
        207 => "Multi-Status",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    socket.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        socket.write_all(body.as_bytes()).await?;
    }
    socket.shutdown().await
}
