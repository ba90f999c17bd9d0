//! `AzuriteServer`: Azurite's Blob service on loopback, for `az://` tests.
//!
//! Azurite keeps its data in its own directory, so `stop` and `launch`
//! bring it back on the same port with the same blobs. It runs with
//! `--skipApiVersionCheck`, as object_store may speak a newer API version
//! than Azurite knows. The account is Azurite's well-known development
//! account; every client gets its key explicitly.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use hkdf::hmac::{Hmac, Mac};
use walvault::format::{Keyring, SealOptions};
use walvault::storage::Repository;

pub const CONTAINER: &str = "walvault";
/// Azurite's development account and its published key.
pub const ACCOUNT: &str = "devstoreaccount1";
pub const ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The Blob API version used for creating the container.
const API_VERSION: &str = "2021-08-06";

fn binary() -> PathBuf {
    let bin = super::test_home().join("azurite/node_modules/.bin/azurite-blob");
    assert!(
        bin.exists(),
        "Azurite is missing at {}: run scripts/setup-test-env.sh (npm install azurite@3.35.0 under $WALVAULT_TEST_HOME/azurite)",
        bin.display()
    );
    bin
}

/// A running Azurite Blob service with one container, `walvault`.
pub struct AzuriteServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl AzuriteServer {
    pub fn start() -> AzuriteServer {
        let dir = tempfile::Builder::new()
            .prefix("walvault-azurite")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let mut s = AzuriteServer {
            port: super::pg::free_port(),
            dir,
            child: None,
        };
        s.launch();
        s.create_container();
        s
    }

    /// Starts the server (again, on the same port and data).
    pub fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("azurite.log")).unwrap();
        let child = Command::new(binary())
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &self.port.to_string(),
            ])
            .arg("--location")
            .arg(self.dir.path().join("data"))
            .args(["--skipApiVersionCheck", "--disableTelemetry", "--silent"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        // Ready when the service answers an HTTP request (any status).
        let deadline = Instant::now() + Duration::from_secs(60);
        while super::http::request(self.port, "GET", "/", &[], b"").is_err() {
            assert!(
                Instant::now() < deadline,
                "Azurite did not start; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (an outage); `launch` brings it back. Azurite keeps
    /// blob metadata in memory and saves it every few seconds and on SIGTERM,
    /// so a SIGKILL would lose the latest writes: it gets SIGTERM.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.wait();
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("azurite.log")).unwrap_or_default()
    }

    /// Creates the container with a Shared Key signed request (object_store
    /// has no call for it).
    fn create_container(&self) {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        // Path-style URL: the account is the first path segment.
        let resource = format!("/{ACCOUNT}/{ACCOUNT}/{CONTAINER}\nrestype:container");
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{API_VERSION}\n{resource}"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(ACCOUNT_KEY)
            .unwrap();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let r = super::http::request(
            self.port,
            "PUT",
            &format!("/{ACCOUNT}/{CONTAINER}?restype=container"),
            &[
                ("x-ms-date", date),
                ("x-ms-version", API_VERSION.into()),
                ("Authorization", format!("SharedKey {ACCOUNT}:{signature}")),
            ],
            b"",
        )
        .unwrap();
        assert_eq!(
            r.status, 201,
            "Azurite refused to create the container: {} {}",
            r.status, r.body
        );
    }

    /// The Blob endpoint of the development account (path style).
    /// Freezes the server (SIGSTOP): requests hang instead of failing.
    pub fn pause(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.as_ref().expect("running").id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    }

    /// Thaws a paused server.
    pub fn resume(&self) {
        let pid = nix::unistd::Pid::from_raw(self.child.as_ref().expect("running").id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    }

    pub fn blob_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// Environment for a walvault process using this server: object_store's
    /// emulator mode, whose address comes from `AZURITE_BLOB_STORAGE_URL`
    /// (without it, `http://127.0.0.1:10000`), with the account and key given.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_STORAGE_USE_EMULATOR".into(), "true".into()),
            (
                "AZURITE_BLOB_STORAGE_URL".into(),
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AZURE_STORAGE_ACCOUNT_NAME".into(), ACCOUNT.into()),
            ("AZURE_STORAGE_ACCOUNT_KEY".into(), ACCOUNT_KEY.into()),
        ]
    }

    /// The repository URL for a prefix.
    pub fn url(&self, prefix: &str) -> String {
        format!("az://{CONTAINER}/{prefix}")
    }

    /// The store, built with explicit settings. Emulator mode would read the
    /// address from the process environment, so the account's endpoint is
    /// given directly instead, with plain HTTP allowed.
    pub fn store(&self) -> Arc<object_store::azure::MicrosoftAzure> {
        let store = object_store::azure::MicrosoftAzureBuilder::new()
            .with_container_name(CONTAINER)
            .with_account(ACCOUNT)
            .with_access_key(ACCOUNT_KEY)
            .with_endpoint(self.blob_endpoint())
            .with_allow_http(true)
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

impl Drop for AzuriteServer {
    fn drop(&mut self) {
        self.stop();
    }
}
