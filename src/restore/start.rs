//! `restore --start`: PostgreSQL supervised on the restored directory until
//! recovery reaches its target and the target action has happened.

use std::path::PathBuf;
use std::time::Duration;

use super::plan::TargetAction;
use crate::lsn::{Lsn, TimelineId};

/// How often the server is asked whether recovery is done.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long after `pg_ctl start` a missing pid file still means "starting".
const PID_FILE_GRACE: Duration = Duration::from_secs(30);
/// Lines of the server log shown when it stopped during recovery.
const LOG_TAIL_LINES: usize = 20;

/// How long `--start` waits for recovery before giving up (the server keeps running).
const RECOVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// How to start PostgreSQL on a restored directory.
#[derive(Clone, Debug)]
pub struct StartOptions {
    /// The restored data directory.
    pub pgdata: PathBuf,
    /// Directory holding pg_ctl (default: /usr/lib/postgresql/<major>/bin, then PATH).
    pub pg_bin: Option<PathBuf>,
    /// Port for the server.
    pub port: u16,
    /// Unix socket directory (default: the data directory).
    pub socket_dir: Option<PathBuf>,
    /// Role to connect as while waiting.
    pub user: String,
    /// What recovery does at the target.
    pub action: TargetAction,
    /// Settings given on the server's command line (`-c name=value`),
    /// e.g. no TCP listener and no archiving for a drill.
    pub settings: Vec<(String, String)>,
}

/// How the started server ended recovery.
#[derive(Clone, Debug)]
pub enum StartOutcome {
    /// Recovery reached the target and the server shut down, as asked.
    ShutDown {
        /// The server log.
        log: PathBuf,
    },
    /// Recovery paused at the target or promoted.
    Stopped {
        /// Whether it promoted (else it paused).
        promoted: bool,
        /// The final LSN.
        lsn: Lsn,
        /// The timeline.
        timeline: TimelineId,
        /// The time of the last replayed commit, or `none`.
        last_commit: String,
    },
}

impl std::fmt::Display for StartOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartOutcome::ShutDown { log } => write!(
                f,
                "recovery reached the target and the server shut down as asked; see {}",
                log.display()
            ),
            StartOutcome::Stopped {
                promoted,
                lsn,
                timeline,
                last_commit,
            } => write!(
                f,
                "recovery {}: final LSN {lsn}, timeline {timeline}, last replayed commit at {last_commit}",
                if *promoted {
                    "promoted"
                } else {
                    "paused at the target"
                }
            ),
        }
    }
}

/// What `start_and_wait` reports as it goes.
#[derive(Clone, Debug)]
pub struct Started {
    /// The port.
    pub port: u16,
    /// The socket directory.
    pub socket_dir: PathBuf,
    /// The server log.
    pub log: PathBuf,
}

/// Why the started server did not reach its target.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// PostgreSQL cannot be started as asked (checked before restoring).
    #[error("{0}")]
    CannotStart(String),
    /// pg_ctl could not be run or failed.
    #[error("{0}")]
    PgCtl(String),
    /// The server stopped during recovery.
    #[error("PostgreSQL stopped during recovery; the end of its log:\n{0}")]
    Stopped(String),
    /// Recovery took too long.
    #[error("recovery did not reach its target within {0:?}; the server is still running")]
    Timeout(std::time::Duration),
    /// A query on the server failed.
    #[error("querying the restored server failed")]
    Query(#[from] tokio_postgres::Error),
    /// Running pg_ctl failed.
    #[error("running pg_ctl failed")]
    Io(#[from] std::io::Error),
    /// The server answered with something else than an LSN or a timeline.
    #[error("the restored server reported {0:?} where an LSN or a timeline belongs")]
    Answer(String),
    /// The prefetch spool could not be removed after the shutdown.
    #[error("clean the prefetch spool")]
    Spool(#[source] std::io::Error),
}

/// Checks, before anything is restored, that PostgreSQL can be started as
/// `args` asks for a backup of `major`: not as root (postgres refuses), and
/// with a `pg_ctl` to run.
///
/// # Errors
/// [`StartError::CannotStart`] naming the problem and the fix.
pub fn check_can_start(args: &StartOptions, major: u32) -> Result<(), StartError> {
    let found = match bin_dir(args.pg_bin.as_deref(), major) {
        Some(dir) => dir.join("pg_ctl").is_file(),
        None => std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join("pg_ctl").is_file())),
    };
    if !found {
        return Err(StartError::CannotStart(match &args.pg_bin {
            Some(dir) => format!(
                "{} holds no pg_ctl: give --pg-bin the bin directory of PostgreSQL {major}",
                dir.display()
            ),
            None => format!(
                "no pg_ctl for PostgreSQL {major} in /usr/lib/postgresql/{major}/bin or PATH: give --pg-bin its bin directory"
            ),
        }));
    }
    if nix::unistd::geteuid().is_root() {
        return Err(StartError::CannotStart(
            "PostgreSQL refuses to run as root: run this as the operating system user that runs \
             PostgreSQL (e.g. sudo -u postgres walvault ...)"
                .into(),
        ));
    }
    Ok(())
}

impl StartError {
    /// Whether the user must change how it is run (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, StartError::CannotStart(_))
    }
}

/// The directory of PostgreSQL's programs for `major`: `pg_bin` if given,
/// else Debian's `/usr/lib/postgresql/<major>/bin` if it has pg_ctl
/// (`None`: the programs are looked up in `PATH`).
pub fn bin_dir(pg_bin: Option<&std::path::Path>, major: u32) -> Option<PathBuf> {
    pg_bin.map(std::path::Path::to_path_buf).or_else(|| {
        let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
        debian.join("pg_ctl").exists().then_some(debian)
    })
}

/// Starts PostgreSQL, waits for the target action, reports where it
/// stopped (after a shutdown at the target, with the prefetch spool
/// removed); `on_started` hears once the server runs.
///
/// # Errors
/// [`StartError`] naming why.
pub async fn start_and_wait(
    args: &StartOptions,
    major: u32,
    on_started: impl FnOnce(&Started),
) -> Result<StartOutcome, StartError> {
    let pg_ctl = bin_dir(args.pg_bin.as_deref(), major)
        .map_or_else(|| PathBuf::from("pg_ctl"), |b| b.join("pg_ctl"));
    let socket_dir = args
        .socket_dir
        .clone()
        .unwrap_or_else(|| args.pgdata.clone());
    let log = args.pgdata.join("walvault-start.log");
    let mut options = format!("-p {} -k '{}'", args.port, socket_dir.display());
    for (name, value) in &args.settings {
        options.push_str(&format!(" -c {name}='{value}'"));
    }
    let out = crate::malloc::child_command(&pg_ctl)
        .arg("-D")
        .arg(&args.pgdata)
        .arg("-l")
        .arg(&log)
        .args(["-o", &options, "-W", "start"])
        .output()
        .await
        .map_err(|e| StartError::PgCtl(format!("cannot run {}: {e}", pg_ctl.display())))?;
    if !out.status.success() {
        return Err(StartError::PgCtl(format!(
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        )));
    }
    on_started(&Started {
        port: args.port,
        socket_dir: socket_dir.clone(),
        log: log.clone(),
    });
    let connstr = format!(
        "host={} port={} user={} dbname=postgres",
        socket_dir.display(),
        args.port,
        args.user
    );
    let pg_status = || async {
        crate::malloc::child_command(&pg_ctl)
            .arg("-D")
            .arg(&args.pgdata)
            .arg("status")
            .output()
            .await
            .map(|o| o.status.code())
    };
    let started = tokio::time::Instant::now();
    let deadline = started + RECOVERY_WAIT;
    // pg_ctl start -W returns before the postmaster writes its pid file:
    // "not running" means stopped only once it was seen running (or late).
    let mut seen_running = false;
    let has_stopped = async |seen: &mut bool| -> Result<bool, StartError> {
        match pg_status().await? {
            Some(0) => {
                *seen = true;
                Ok(false)
            }
            Some(3) => Ok(*seen || started.elapsed() > PID_FILE_GRACE),
            _ => Ok(false),
        }
    };
    loop {
        if tokio::time::Instant::now() > deadline {
            return Err(StartError::Timeout(RECOVERY_WAIT));
        }
        if args.action == TargetAction::Shutdown {
            if has_stopped(&mut seen_running).await? {
                // recovery_end_command does not run when recovery shuts
                // down at its target: the prefetch spool goes here.
                let spool = super::spool::Spool::new(super::spool_dir(&args.pgdata));
                tokio::task::spawn_blocking(move || spool.clean(super::serve::SPOOL_WAIT))
                    .await
                    .expect("cleaning does not panic")
                    .map_err(StartError::Spool)?;
                return Ok(StartOutcome::ShutDown { log });
            }
        } else if let Ok((client, conn)) =
            tokio_postgres::connect(&connstr, tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await?
                .get(0);
            let done = if args.action == TargetAction::Promote {
                !in_recovery
            } else {
                in_recovery
                    && client
                        .query_one("SELECT pg_get_wal_replay_pause_state()::text", &[])
                        .await?
                        .get::<_, String>(0)
                        == "paused"
            };
            if done {
                let row = client
                    .query_one(
                        "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,
                                CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint())::text
                                     ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::text END,
                                coalesce(pg_last_xact_replay_timestamp()::text, 'none')",
                        &[],
                    )
                    .await?;
                let (lsn, timeline): (String, String) = (row.get(0), row.get(1));
                return Ok(StartOutcome::Stopped {
                    promoted: !in_recovery,
                    lsn: lsn.parse().map_err(|_| StartError::Answer(lsn))?,
                    timeline: timeline.parse().map_err(|_| StartError::Answer(timeline))?,
                    last_commit: row.get(2),
                });
            }
        } else if has_stopped(&mut seen_running).await? {
            return Err(StartError::Stopped(tail(
                &std::fs::read_to_string(&log).unwrap_or_default(),
                LOG_TAIL_LINES,
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
