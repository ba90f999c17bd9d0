//! `S3Server`: the s3s-fs S3 server on loopback, for end-to-end tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walvault::format::{Keyring, SealOptions};
use walvault::storage::Repository;

pub const ACCESS_KEY: &str = "walvaulttest";
pub const SECRET_KEY: &str = "walvaulttestsecret";
pub const REGION: &str = "us-east-1";

fn binary() -> PathBuf {
    let cargo_bin = PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo/bin/s3s-fs");
    if cargo_bin.exists() {
        return cargo_bin;
    }
    let found = Command::new("sh")
        .args(["-c", "command -v s3s-fs"])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
    assert!(
        !path.is_empty(),
        "the S3 server s3s-fs is missing: run scripts/setup-test-env.sh (cargo install s3s-fs@0.14.1 --features binary --locked)"
    );
    PathBuf::from(path)
}

/// A running s3s-fs with one bucket, `walvault`.
pub struct S3Server {
    pub port: u16,
    root: tempfile::TempDir,
    child: Option<Child>,
}

impl S3Server {
    pub fn start() -> S3Server {
        let root = tempfile::Builder::new()
            .prefix("walvault-s3")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(root.path().join("walvault")).unwrap();
        let mut s = S3Server {
            port: super::pg::free_port(),
            root,
            child: None,
        };
        s.launch();
        s
    }

    /// Starts the server (again, on the same port and directory).
    pub fn launch(&mut self) {
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server (an outage); `launch` brings it back.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
            let _ = c.kill();
            let _ = c.wait();
        }
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

    /// The files of the objects under `folder` of the repository at
    /// `prefix`, sorted (s3s-fs keeps each object as a file).
    pub fn stored_files(&self, prefix: &str, folder: &str) -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries {
                let path = e.unwrap().path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.object_path(prefix, folder), &mut out);
        out.sort();
        out
    }

    /// Where s3s-fs keeps an object's bytes on disk (for tampering tests).
    pub fn object_path(&self, prefix: &str, key: &str) -> PathBuf {
        self.root.path().join("walvault").join(prefix).join(key)
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
        format!("s3://walvault/{prefix}")
    }

    /// The store, built with explicit settings.
    pub fn store(&self) -> Arc<object_store::aws::AmazonS3> {
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("walvault")
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

    /// An encrypted repository under `prefix` (the test key): the
    /// environment of a walvault process and the same repository in-process.
    pub fn encrypted(&self, prefix: &str) -> (super::process::RepoEnv, Repository) {
        let mut env = self.env();
        env.push(("WALVAULT_KEY".into(), super::process::KEY.into()));
        let keyring = Keyring::single(
            walvault::format::MasterKey::from_hex(super::process::KEY).expect("a valid key"),
        );
        (
            super::process::RepoEnv {
                url: self.url(prefix),
                env,
            },
            self.repository(prefix, keyring),
        )
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

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
