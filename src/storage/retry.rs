//! The one retry policy for store requests: exponential backoff with
//! jitter, a cap, and a stop when the command is cancelled.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Error;

/// First pause before a retry.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between retries of one request.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Attempts of one request before the caller hears of the failure; a
/// caller that must not give up (the WAL uploader) then logs the outage once
/// and retries the whole attempt series until it is cancelled.
pub const ATTEMPTS: u32 = 3;

/// Retries `op` while it fails with a retryable error, backing off
/// exponentially with jitter from [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`], at
/// most [`ATTEMPTS`] times, and not after `cancel` fires. Each retry is
/// logged once.
///
/// # Errors
/// The last error, or a non-retryable one at once.
///
/// # Cancel safety
/// Safe if `op` is.
pub async fn retry<T, F, Fut>(what: &str, cancel: &CancellationToken, mut op: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut attempt: u32 = 0;
    let mut backoff = FIRST_BACKOFF;
    loop {
        attempt += 1;
        match op().await {
            Ok(v) => {
                if attempt > 1 {
                    tracing::info!(
                        what,
                        attempt,
                        "object store request succeeded after retries"
                    );
                }
                return Ok(v);
            }
            Err(e) if e.is_retryable() && attempt < ATTEMPTS && !cancel.is_cancelled() => {
                tracing::warn!(what, attempt, error = %crate::error::chain(&e), "object store request failed, retrying");
                let jitter = rand::random::<f64>() * 0.5 + 0.75;
                let sleep = backoff.mul_f64(jitter);
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Err(e),
                    () = tokio::time::sleep(sleep) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
}
