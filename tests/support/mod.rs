//! Shared fixtures: real PostgreSQL servers, a real S3 server, the walvault
//! binary, and checks on what the archive holds.

pub mod archive;
pub mod pg;
pub mod process;
pub mod s3;

use std::future::Future;
use std::time::{Duration, Instant};

/// Generates one test per supported PostgreSQL major (14 to 18) from an
/// `async fn(major: u32)`.
#[macro_export]
macro_rules! pg_test {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg14() {
                super::$name(14).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg15() {
                super::$name(15).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg16() {
                super::$name(16).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg17() {
                super::$name(17).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn pg18() {
                super::$name(18).await
            }
        }
    };
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what`
/// after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
