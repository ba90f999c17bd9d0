//! Shared fixtures: real PostgreSQL servers, real object stores (s3s-fs and
//! moto for S3, Azurite, fake-gcs-server), the walvault binary, and checks on
//! what the archive holds.

pub mod archive;
pub mod azurite;
pub mod config;
pub mod faulty;
pub mod gcs;
pub mod http;
pub mod moto;
pub mod pg;
pub mod process;
pub mod s3;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where `scripts/setup-test-env.sh` installs the test servers:
/// `$WALVAULT_TEST_HOME`, else `/opt/walvault-test` as root and
/// `~/.cache/walvault-test` otherwise.
pub fn test_home() -> PathBuf {
    std::env::var_os("WALVAULT_TEST_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if nix::unistd::Uid::effective().is_root() {
                PathBuf::from("/opt/walvault-test")
            } else {
                PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/walvault-test")
            }
        })
}

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
