//! `MotoServer`: moto's S3 in server mode on loopback, a second S3
//! implementation beside s3s-fs.
//!
//! moto keeps its state in memory, so it cannot be restarted on the same
//! data: there is no `stop`/`launch` pair. It does not check signatures, but
//! every client still gets explicit credentials so that object_store never
//! looks for them at an instance-metadata address.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walvault::format::{Keyring, SealOptions};
use walvault::storage::Repository;

pub const BUCKET: &str = "walvault";
pub const ACCESS_KEY: &str = "walvaulttest";
pub const SECRET_KEY: &str = "walvaulttestsecret";
pub const REGION: &str = "us-east-1";

fn binary() -> PathBuf {
    let bin = super::test_home().join("venv/bin/moto_server");
    assert!(
        bin.exists(),
        "the S3 server moto is missing at {}: run scripts/setup-test-env.sh (pip install 'moto[server]==5.2.5' into $WALVAULT_TEST_HOME/venv)",
        bin.display()
    );
    bin
}

/// A running moto server with one bucket, `walvault`.
pub struct MotoServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl MotoServer {
    pub fn start() -> MotoServer {
        let dir = tempfile::Builder::new()
            .prefix("walvault-moto")
            .tempdir()
            .unwrap();
        let port = super::pg::free_port();
        let log = std::fs::File::create(dir.path().join("moto.log")).unwrap();
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let s = MotoServer {
            port,
            dir,
            child: Some(child),
        };
        // Ready when the bucket is created: moto answers 200 once it serves S3.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match super::http::request(port, "PUT", &format!("/{BUCKET}"), &[], b"") {
                Ok(r) if r.status == 200 => break,
                Ok(r) => panic!("moto refused to create the bucket: {} {}", r.status, r.body),
                Err(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "moto did not start; its log:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

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

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for a walvault process using this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), REGION.into()),
        ]
    }

    /// The repository URL for a prefix.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The store, built with explicit settings.
    pub fn store(&self) -> Arc<object_store::aws::AmazonS3> {
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_region(REGION)
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

impl Drop for MotoServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
