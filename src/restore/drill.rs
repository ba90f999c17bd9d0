//! `drill`: a restore test. Restore a backup to a target into a scratch
//! directory, start PostgreSQL on it, wait for recovery to end, check the
//! result (pg_amcheck, or an SQL check), record the outcome in the
//! repository, stop the server and remove the scratch directory. The time
//! from the first fetch to the end of recovery is the measured RTO.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::plan::{RecoveryTarget, TargetAction, TimelineTarget};
use super::start::{StartOptions, StartOutcome, check_can_start, start_and_wait};
use super::{RecoveryOptions, RestoreOptions, execute, prepare};
use crate::config::ByteSize;
use crate::config::settings_file::RepositoryConfigFile;
use crate::format::drill::{DRILL_VERSION, DrillRecord};
use crate::storage::Repository;
use tokio_util::sync::CancellationToken;

/// Segments `wal-fetch` prefetches during a drill (as `restore`'s default).
const DRILL_PREFETCH: u64 = 8;
/// The prefetch spool's limit during a drill.
const DRILL_SPOOL_MAX: ByteSize = ByteSize(512 << 20);
/// How long `restore_command` retries a failing store during a drill.
const DRILL_FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// How to run a drill.
#[derive(Clone, Debug)]
pub struct DrillOptions {
    /// Restore this backup (default: the newest before the target).
    pub backup: Option<String>,
    /// Where recovery stops.
    pub target: RecoveryTarget,
    /// The directory the scratch directory is made in.
    pub scratch_parent: PathBuf,
    /// Directory of pg_ctl and pg_amcheck (default as `restore --start`).
    pub pg_bin: Option<PathBuf>,
    /// Port for the drill's server.
    pub port: u16,
    /// Role to connect as.
    pub user: String,
    /// An SQL check instead of pg_amcheck: it must succeed, and a first
    /// column of its first row that is a boolean must be true.
    pub check_sql: Option<String>,
    /// What `restore_command` reads.
    pub settings: RepositoryConfigFile,
    /// The walvault binary `restore_command` runs.
    pub walvault: PathBuf,
}

/// A drill that could not run: this host cannot start PostgreSQL as asked.
/// Nothing is restored or recorded: that is no failed restore.
#[derive(Debug, thiserror::Error)]
#[error("the drill cannot run here")]
pub struct CannotRun(#[source] pub super::start::StartError);

/// Why a drill did not get as far as restoring.
enum NotRun {
    /// The restore failed before restoring (no backup, a gap, ...): a failed drill.
    Failed(String),
    /// This host cannot run it: no drill at all.
    CannotRun(super::start::StartError),
}

/// Runs one drill and records it (unless the store itself fails). Every
/// failure of the restore is an outcome with its reason, recorded.
///
/// # Errors
/// [`CannotRun`] when this host cannot start PostgreSQL as asked (as root,
/// no `pg_ctl`): checked before anything is restored; nothing is recorded.
///
/// # Cancel safety
/// Use `cancel` (a child of the command's tree): the restore then removes
/// what it wrote, and the drill is recorded as failed.
pub async fn run(
    repo: &Repository,
    opts: &DrillOptions,
    cancel: &CancellationToken,
) -> Result<DrillRecord, CannotRun> {
    let mut record = DrillRecord {
        version: DRILL_VERSION,
        time: chrono::Utc::now(),
        backup_id: None,
        target: opts.target.to_string(),
        success: false,
        restore_seconds: 0.0,
        recovery_seconds: 0.0,
        rto_seconds: 0.0,
        check: opts.check_sql.as_ref().map_or_else(
            || "amcheck of every heap and B-tree index".to_string(),
            |s| format!("SQL: {s}"),
        ),
        message: String::new(),
    };
    let scratch = opts.scratch_parent.join(format!(
        "walvault-drill-{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S"),
        std::process::id()
    ));
    let outcome = drill_in(repo, opts, &scratch, &mut record, cancel).await;
    stop_server(opts, &scratch.join("data")).await;
    let _ = std::fs::remove_dir_all(&scratch);
    match outcome {
        Ok(message) => {
            record.success = true;
            record.message = message;
        }
        Err(NotRun::Failed(message)) => record.message = message,
        Err(NotRun::CannotRun(e)) => return Err(CannotRun(e)),
    }
    record.rto_seconds = record.restore_seconds + record.recovery_seconds;
    record.time = chrono::Utc::now();
    if let Err(e) = repo.write_drill(&record).await {
        tracing::error!(error = %crate::error::chain(&e), "cannot record the drill in the repository");
    }
    let outcome = if record.success {
        Ok(format!(
            "target {}, RTO {:.1}s: {}",
            record.target, record.rto_seconds, record.message
        ))
    } else {
        Err(record.message.clone())
    };
    repo.audit("drill", record.backup_id.as_deref(), outcome)
        .await;
    Ok(record)
}

async fn drill_in(
    repo: &Repository,
    opts: &DrillOptions,
    scratch: &Path,
    record: &mut DrillRecord,
    cancel: &CancellationToken,
) -> Result<String, NotRun> {
    let fail = |what: &str, e: &dyn std::error::Error| {
        NotRun::Failed(format!("{what}: {}", crate::error::chain(e)))
    };
    let started = Instant::now();
    let options = RestoreOptions {
        pgdata: scratch.join("data"),
        backup: opts.backup.clone(),
        annotation: None,
        target: opts.target.clone(),
        timeline: TimelineTarget::Latest,
        tablespace_map: Vec::new(),
        tablespaces_under: Some(scratch.to_path_buf()),
        settings_file: Some(scratch.join("settings.json")),
    };
    let prepared = prepare(repo, &options)
        .await
        .map_err(|e| fail("plan the restore", &e))?;
    record.backup_id = Some(prepared.plan.backup.id.clone());
    let start = StartOptions {
        pgdata: prepared.pgdata.clone(),
        pg_bin: opts.pg_bin.clone(),
        port: opts.port,
        socket_dir: Some(scratch.to_path_buf()),
        user: opts.user.clone(),
        action: TargetAction::Promote,
        // Only the socket in the scratch directory, and nothing archived
        // from the drill's own timeline.
        settings: vec![
            ("listen_addresses".into(), String::new()),
            ("archive_mode".into(), "off".into()),
        ],
    };
    let major = prepared.plan.backup.pg_major;
    check_can_start(&start, major).map_err(NotRun::CannotRun)?;
    std::fs::create_dir_all(scratch).map_err(|e| fail("create the scratch directory", &e))?;
    let recovery = RecoveryOptions {
        settings: opts.settings.clone(),
        walvault: opts.walvault.clone(),
        exclusive: false,
        action: TargetAction::Promote,
        standby: false,
        prefetch: DRILL_PREFETCH,
        spool_max: DRILL_SPOOL_MAX,
        fetch_timeout: DRILL_FETCH_TIMEOUT,
        leave_settings_out: false,
    };
    execute(repo, &prepared, &recovery, cancel)
        .await
        .map_err(|e| fail("restore", &e))?;
    record.restore_seconds = started.elapsed().as_secs_f64();
    let recovering = Instant::now();
    let outcome = start_and_wait(&start, major, |_| {})
        .await
        .map_err(|e| fail("recovery", &e))?;
    record.recovery_seconds = recovering.elapsed().as_secs_f64();
    let reached = match outcome {
        StartOutcome::Stopped {
            lsn,
            timeline,
            last_commit,
            ..
        } => {
            format!("recovered to {lsn} on timeline {timeline}, last commit {last_commit}")
        }
        StartOutcome::ShutDown { .. } => "recovered".to_string(),
    };
    let checked = match &opts.check_sql {
        Some(sql) => sql_check(opts, scratch, sql).await,
        None => amcheck(opts, scratch, major).await,
    }
    .map_err(NotRun::Failed)?;
    Ok(format!("{reached}; {checked}"))
}

async fn sql_check(opts: &DrillOptions, scratch: &Path, sql: &str) -> Result<String, String> {
    let connstr = format!(
        "host={} port={} user={} dbname=postgres",
        scratch.display(),
        opts.port,
        opts.user
    );
    let (client, conn) = tokio_postgres::connect(&connstr, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connect for the check: {e}"))?;
    tokio::spawn(conn);
    let rows = client
        .simple_query(sql)
        .await
        .map_err(|e| format!("the check failed: {e}"))?;
    let first = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
        _ => None,
    });
    match first {
        Some(Some(v)) if v == "f" || v == "false" => Err(format!("the check returned {v}")),
        Some(v) => Ok(format!("check returned {}", v.as_deref().unwrap_or("NULL"))),
        None => Ok("check ran".to_string()),
    }
}

fn bin_dir(opts: &DrillOptions, major: u32) -> Option<PathBuf> {
    super::start::bin_dir(opts.pg_bin.as_deref(), major)
}

/// Checks every heap and B-tree index of every database with amcheck:
/// `pg_amcheck` when it is installed beside pg_ctl, else the same checks in
/// SQL (`verify_heapam`, `bt_index_check` with heapallindexed).
async fn amcheck(opts: &DrillOptions, scratch: &Path, major: u32) -> Result<String, String> {
    let Some(program) = bin_dir(opts, major)
        .map(|b| b.join("pg_amcheck"))
        .filter(|p| p.exists())
    else {
        return amcheck_sql(opts, scratch).await;
    };
    let out = crate::malloc::child_command(&program)
        .args([
            "--all",
            "--install-missing",
            "--heapallindexed",
            "--no-password",
        ])
        .arg("--host")
        .arg(scratch)
        .args(["--port", &opts.port.to_string(), "--username", &opts.user])
        .output()
        .await
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if out.status.success() {
        Ok("pg_amcheck found no corruption".to_string())
    } else {
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "pg_amcheck reported problems (exit {}): {}",
            out.status.code().unwrap_or(-1),
            text.lines().take(20).collect::<Vec<_>>().join("; ")
        ))
    }
}

async fn amcheck_sql(opts: &DrillOptions, scratch: &Path) -> Result<String, String> {
    let connect = |db: &str| {
        let db = db.to_string();
        let connstr = format!(
            "host={} port={} user={} dbname={db}",
            scratch.display(),
            opts.port,
            opts.user
        );
        async move {
            let (client, conn) = tokio_postgres::connect(&connstr, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("connect to {db} for amcheck: {e}"))?;
            tokio::spawn(conn);
            Ok::<_, String>(client)
        }
    };
    let databases: Vec<String> = connect("postgres")
        .await?
        .query(
            "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| format!("list databases: {e}"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (mut relations, mut indexes) = (0i64, 0i64);
    for db in &databases {
        let client = connect(db).await?;
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            .await
            .map_err(|e| format!("amcheck in {db}: {e}"))?;
        let row = client
            .query_one(
                "SELECT count(DISTINCT c.oid), count(v.blkno) FROM pg_class c \
                 LEFT JOIN LATERAL verify_heapam(c.oid) v ON true \
                 WHERE c.relkind IN ('r', 'm', 't') AND c.relpersistence = 'p'",
                &[],
            )
            .await
            .map_err(|e| format!("verify_heapam in {db}: {e}"))?;
        let (checked, corrupt): (i64, i64) = (row.get(0), row.get(1));
        if corrupt > 0 {
            return Err(format!(
                "verify_heapam found {corrupt} corrupt tuples or pages in {db}"
            ));
        }
        relations += checked;
        let row = client
            .query_one(
                "SELECT count(bt_index_check(c.oid, true)) FROM pg_index i \
                 JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am a ON a.oid = c.relam \
                 WHERE a.amname = 'btree' AND c.relpersistence = 'p' AND i.indisvalid AND i.indisready",
                &[],
            )
            .await
            .map_err(|e| format!("bt_index_check in {db}: {e}"))?;
        indexes += row.get::<_, i64>(0);
    }
    Ok(format!(
        "amcheck found no corruption in {relations} relations and {indexes} B-tree indexes of {} databases",
        databases.len()
    ))
}

async fn stop_server(opts: &DrillOptions, pgdata: &Path) {
    if !pgdata.join("postmaster.pid").exists() {
        return;
    }
    let major = std::fs::read_to_string(pgdata.join("PG_VERSION"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let pg_ctl = bin_dir(opts, major).map_or_else(|| PathBuf::from("pg_ctl"), |b| b.join("pg_ctl"));
    let _ = crate::malloc::child_command(pg_ctl)
        .arg("-D")
        .arg(pgdata)
        .args(["-m", "immediate", "-w", "stop"])
        .output()
        .await;
}
