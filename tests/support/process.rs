//! Running the walvault binary as a process, the way users and PostgreSQL do.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A fixed test key (64 hex).
pub const KEY: &str = "7f3c1a9e5b2d4f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

/// The walvault binary under test: nextest's runtime path when set (it
/// follows a test archive unpacked elsewhere), else the one cargo built.
pub fn walvault_bin() -> PathBuf {
    std::env::var_os("NEXTEST_BIN_EXE_walvault").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_walvault")),
        PathBuf::from,
    )
}

/// How a walvault process finds its repository.
#[derive(Clone, Debug)]
pub struct RepoEnv {
    pub url: String,
    pub env: Vec<(String, String)>,
}

impl RepoEnv {
    pub fn command(&self) -> Command {
        let mut c = Command::new(walvault_bin());
        c.env_clear();
        c.env("PATH", std::env::var("PATH").unwrap_or_default());
        c.env("HOME", std::env::var("HOME").unwrap_or_default());
        c.env("WALVAULT_REPO", &self.url);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs a walvault subcommand to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }
}

/// A `walvault stream` process; killed on drop.
pub struct StreamProcess {
    child: Option<Child>,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl StreamProcess {
    pub fn start(repo: &RepoEnv, pg_port: u16, extra: &[&str]) -> StreamProcess {
        let mut cmd = repo.command();
        cmd.arg("stream")
            .args([
                "--pg",
                &format!("host=127.0.0.1 port={pg_port} user=postgres sslmode=disable"),
            ])
            .args(extra);
        Self::spawn(cmd)
    }

    /// Spawns a prepared `walvault stream` command, logging to a file, and
    /// returns once it streams: WAL written after this is in its range.
    pub fn spawn(cmd: Command) -> StreamProcess {
        let mut p = Self::spawn_unready(cmd);
        p.wait_streaming(Duration::from_secs(60));
        p
    }

    /// Waits for the process to log that START_REPLICATION succeeded.
    fn wait_streaming(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if self.log_text().contains("streaming WAL from") {
                return;
            }
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "walvault stream exited ({status}) before streaming:\n{}",
                    self.log_text()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "walvault stream did not start streaming within {limit:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Spawns a prepared `walvault stream` command without waiting for it.
    pub fn spawn_unready(mut cmd: Command) -> StreamProcess {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stream.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .env("WALVAULT_LOG_LEVEL", "info,walvault=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap();
        StreamProcess {
            child: Some(child),
            log,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).unwrap();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(mut self) -> (Option<i32>, String) {
        self.signal(Signal::SIGTERM);
        let code = self.wait(Duration::from_secs(90));
        (code, self.log_text())
    }

    /// SIGKILL and wait.
    pub fn kill9(mut self) -> String {
        self.signal(Signal::SIGKILL);
        self.wait(Duration::from_secs(10));
        self.log_text()
    }

    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let mut c = self.child.take().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "walvault did not exit in {limit:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for StreamProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
