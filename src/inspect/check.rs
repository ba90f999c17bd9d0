//! `check`: is everything in place for walvault to keep the promise? One
//! result per part (server, its settings, the slot, the repository, the
//! key, the WAL from the newest backup to the archive's end), each ok,
//! warning or critical, with a message that names the problem and the fix.

use serde::Serialize;

use crate::protocol::ConnInfo;
use crate::restore::plan::{RecoveryTarget, TimelineTarget, plan_restore};
use crate::storage::{Repository, layout};

/// How bad a finding is; the exit code of `check` is the worst one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but needs attention.
    Warning,
    /// Broken: the promise does not hold.
    Critical,
}

impl Status {
    /// The exit code a monitoring system reads: 0, 1 or 2.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Warning => 1,
            Status::Critical => 2,
        }
    }

    /// The word printed in the first column.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "WARNING",
            Status::Critical => "CRITICAL",
        }
    }
}

/// One finding.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked (`server`, `wal_level`, `slot`, `repository`, ...).
    pub name: &'static str,
    /// How it went.
    pub status: Status,
    /// What was found, and the fix when it is not ok.
    pub message: String,
}

impl Check {
    fn new(name: &'static str, status: Status, message: impl Into<String>) -> Self {
        Check {
            name,
            status,
            message: message.into(),
        }
    }
}

/// The server's part: connection, version, role, `wal_level`,
/// `max_wal_senders`, and the slot's `wal_status` and `safe_wal_size`;
/// with the server's system identifier and segment size when it answered.
pub async fn check_server(conninfo: &ConnInfo, slot: &str) -> (Vec<Check>, Option<(String, u64)>) {
    let mut out = Vec::new();
    let (mut conn, info) = match crate::protocol::server::connect(conninfo).await {
        Ok(c) => c,
        Err(e) => {
            out.push(Check::new(
                "server",
                Status::Critical,
                format!(
                    "cannot open a replication connection: {}; the role needs the REPLICATION attribute and a pg_hba.conf line for the replication database",
                    crate::error::chain(&e)
                ),
            ));
            // Why, when the server is reachable for SQL: the usual cause is
            // wal_level = minimal (max_wal_senders = 0).
            out.extend(settings_over_sql(conninfo).await);
            return (out, None);
        }
    };
    out.push(Check::new(
        "server",
        Status::Ok,
        format!(
            "PostgreSQL {} ({}) at {}, system identifier {}",
            info.version,
            info.role.as_str(),
            info.target,
            info.identity.system_identifier
        ),
    ));
    let show = |r: Result<crate::protocol::connection::QueryResult, _>| {
        r.ok().and_then(|q| q.get(0, 0).map(str::to_string))
    };
    let wal_level = show(conn.simple_query("SHOW wal_level").await);
    let senders = show(conn.simple_query("SHOW max_wal_senders").await);
    conn.terminate().await;
    out.push(wal_level_check(wal_level.as_deref()));
    out.push(senders_check(senders.as_deref()));
    out.push(slot_check(conninfo, slot).await);
    let system = (
        info.identity.system_identifier.clone(),
        info.segment_size_bytes,
    );
    (out, Some(system))
}

/// Whether the server is the repository's current system: after a
/// `pg_upgrade` it is not until `walvault record-upgrade` (the message
/// says so), and a server of a system held before is refused for good.
pub fn system_check(
    repo: &Repository,
    system_identifier: &str,
    segment_size: u64,
) -> Option<Check> {
    let m = repo.stored_identity()?;
    Some(match m.check_server(system_identifier, segment_size) {
        Ok(()) => Check::new(
            "system",
            Status::Ok,
            format!("the server is the repository's system {system_identifier}"),
        ),
        Err(e) => Check::new("system", Status::Critical, e.to_string()),
    })
}

fn wal_level_check(level: Option<&str>) -> Check {
    match level {
        Some("replica" | "logical") => Check::new(
            "wal_level",
            Status::Ok,
            format!("wal_level = {}", level.unwrap_or_default()),
        ),
        Some(other) => Check::new(
            "wal_level",
            Status::Critical,
            format!(
                "wal_level = {other}: WAL cannot be archived; set wal_level = replica and restart"
            ),
        ),
        None => Check::new("wal_level", Status::Warning, "cannot read wal_level"),
    }
}

fn senders_check(senders: Option<&str>) -> Check {
    match senders.and_then(|s| s.parse::<u32>().ok()) {
        Some(0) => Check::new(
            "max_wal_senders",
            Status::Critical,
            "max_wal_senders = 0: no replication connection is possible; set it to at least 2 (with wal_level = replica) and restart",
        ),
        Some(1) => Check::new(
            "max_wal_senders",
            Status::Warning,
            "max_wal_senders = 1: the sidecar and a backup need two connections at once; set at least 2 (plus one per standby)",
        ),
        Some(n) => Check::new(
            "max_wal_senders",
            Status::Ok,
            format!("max_wal_senders = {n}"),
        ),
        None => Check::new(
            "max_wal_senders",
            Status::Warning,
            "cannot read max_wal_senders",
        ),
    }
}

/// `wal_level` and `max_wal_senders` over an ordinary SQL session, when a
/// replication connection is refused.
async fn settings_over_sql(conninfo: &ConnInfo) -> Vec<Check> {
    let Ok(mut conn) = crate::protocol::ReplicationConnection::connect(&conninfo.for_sql()).await
    else {
        return Vec::new();
    };
    let level = conn
        .simple_query("SELECT current_setting('wal_level'), current_setting('max_wal_senders')")
        .await
        .ok();
    conn.terminate().await;
    let Some(q) = level else { return Vec::new() };
    vec![wal_level_check(q.get(0, 0)), senders_check(q.get(0, 1))]
}

/// The slot's `wal_status` and `safe_wal_size`, over an ordinary SQL session.
async fn slot_check(conninfo: &ConnInfo, slot: &str) -> Check {
    let mut conn = match crate::protocol::ReplicationConnection::connect(&conninfo.for_sql()).await
    {
        Ok(c) => c,
        Err(e) => {
            return Check::new(
                "slot",
                Status::Warning,
                format!(
                    "cannot open an SQL session to read pg_replication_slots: {} (allow the role a database connection, or give dbname in --pg)",
                    crate::error::chain(&e)
                ),
            );
        }
    };
    let quoted = slot.replace('\'', "''");
    let q = conn
        .simple_query(&format!(
            "SELECT wal_status, safe_wal_size, active FROM pg_replication_slots WHERE slot_name = '{quoted}' AND slot_type = 'physical'"
        ))
        .await;
    conn.terminate().await;
    let q = match q {
        Ok(q) => q,
        Err(e) => {
            return Check::new(
                "slot",
                Status::Warning,
                format!(
                    "cannot read pg_replication_slots: {}",
                    crate::error::chain(&e)
                ),
            );
        }
    };
    if q.rows.is_empty() {
        return Check::new(
            "slot",
            Status::Warning,
            format!(
                "slot {slot:?} does not exist yet: walvault stream creates it; until then the server keeps no WAL for walvault"
            ),
        );
    }
    let status = q.get(0, 0).unwrap_or("unknown");
    let safe = q
        .get(0, 1)
        .and_then(|s| s.parse::<i64>().ok())
        .map(|b| {
            format!(
                ", {} before it is lost",
                crate::progress::human_bytes(b.max(0) as u64)
            )
        })
        .unwrap_or_default();
    let active = if q.get(0, 2) == Some("t") {
        "active"
    } else {
        "inactive"
    };
    match status {
        "reserved" => Check::new(
            "slot",
            Status::Ok,
            format!("slot {slot:?} {active}, wal_status reserved{safe}"),
        ),
        "extended" => Check::new(
            "slot",
            Status::Warning,
            format!(
                "slot {slot:?} {active}, wal_status extended: it holds WAL beyond max_wal_size{safe}; is walvault stream keeping up?"
            ),
        ),
        "unreserved" => Check::new(
            "slot",
            Status::Critical,
            format!(
                "slot {slot:?} {active}, wal_status unreserved: the server may remove WAL walvault has not stored at the next checkpoint{safe}"
            ),
        ),
        "lost" => Check::new(
            "slot",
            Status::Critical,
            format!(
                "slot {slot:?} is lost: WAL walvault never stored is gone; take a new backup after the stream resumes"
            ),
        ),
        other => Check::new(
            "slot",
            Status::Warning,
            format!("slot {slot:?} {active}, wal_status {other}"),
        ),
    }
}

/// The repository's part: where credentials come from, writing, reading
/// and deleting a probe object, create-only writes, the key, and the WAL
/// from the newest backup to the archive's end.
pub async fn check_repository(repo: &Repository) -> Vec<Check> {
    let mut out = vec![Check::new(
        "credentials",
        Status::Ok,
        format!("{}: {}", repo.display(), repo.credential_source()),
    )];
    let probe = format!(
        "{}check-{:016x}",
        layout::PROBE_PREFIX,
        rand::random::<u64>()
    );
    let written = repo
        .probe_round_trip(&probe, bytes::Bytes::from_static(b"walvault check"))
        .await;
    match written {
        Ok(true) => out.push(Check::new(
            "repository",
            Status::Ok,
            "write, read and delete of a probe object work",
        )),
        Ok(false) => out.push(Check::new(
            "repository",
            Status::Critical,
            "a probe object read back differs from what was written",
        )),
        Err(e) => {
            out.push(Check::new(
                "repository",
                Status::Critical,
                format!(
                    "cannot write, read and delete a probe object: {}",
                    crate::error::chain(&e)
                ),
            ));
            return out;
        }
    }
    match repo.probe_create_only().await {
        Ok(true) => out.push(Check::new("create_only", Status::Ok, "the store honours create-only writes")),
        Ok(false) => out.push(Check::new(
            "create_only",
            Status::Warning,
            "the store ignores create-only writes: walvault checks before each write, which another writer can race (docs/operations.md, Object stores)",
        )),
        Err(e) => out.push(Check::new(
            "create_only",
            Status::Warning,
            format!("cannot probe create-only writes: {}", crate::error::chain(&e)),
        )),
    }
    let manifest = match repo.open_manifest().await {
        Ok(Some(m)) => {
            out.push(Check::new(
                "key",
                Status::Ok,
                format!(
                    "walvault.json opens and is authentic (encryption {}, system identifier {})",
                    m.encryption, m.system_identifier
                ),
            ));
            m
        }
        Ok(None) => {
            out.push(Check::new(
                "key",
                Status::Warning,
                "the repository is empty (no walvault.json): walvault stream or backup creates it",
            ));
            return out;
        }
        Err(e) => {
            out.push(Check::new(
                "key",
                Status::Critical,
                format!(
                    "{} (is this the repository's key file?)",
                    crate::error::chain(&e)
                ),
            ));
            return out;
        }
    };
    out.push(wal_check(repo, &manifest).await);
    out.push(conflicts_check(repo).await);
    out
}

/// Whether a second writer ever stored other bytes for a WAL object.
async fn conflicts_check(repo: &Repository) -> Check {
    match crate::pipeline::conflict::read_conflicts(repo).await {
        Ok(c) if c.is_empty() => Check::new(
            "wal_conflicts",
            Status::Ok,
            "no WAL object was ever written twice with other bytes",
        ),
        Ok(c) => {
            let newest = c.last().expect("not empty");
            Check::new(
                "wal_conflicts",
                Status::Warning,
                format!(
                    "{} WAL object(s) were offered again with other bytes by a second writer (newest: {} at {} from {} process {}, {}); the stored versions are valid WAL and were kept. \
                     Find the second writer of this repository (two streams, or a backup streaming beside an old walvault), then delete {} to clear this warning",
                    c.len(),
                    newest.key,
                    crate::format::time::to_text(&newest.at),
                    newest.host,
                    newest.pid,
                    newest.difference,
                    layout::CONFLICTS_PREFIX
                ),
            )
        }
        Err(e) => Check::new(
            "wal_conflicts",
            Status::Warning,
            format!(
                "cannot read the WAL conflict records: {}",
                crate::error::chain(&e)
            ),
        ),
    }
}

/// Whether the newest backup restores to the archive's end.
async fn wal_check(
    repo: &Repository,
    _manifest: &crate::format::manifest::RepositoryManifest,
) -> Check {
    let backups = match repo.list_backups().await {
        Ok(b) => b,
        Err(e) => {
            return Check::new(
                "wal",
                Status::Critical,
                format!("cannot read the backups: {}", crate::error::chain(&e)),
            );
        }
    };
    let Some(newest) = backups.last().cloned() else {
        return Check::new(
            "wal",
            Status::Warning,
            "no backup yet: nothing can be restored; run walvault backup (or stream --backup-schedule)",
        );
    };
    match plan_restore(
        repo,
        vec![newest.clone()],
        None,
        &RecoveryTarget::End,
        TimelineTarget::Latest,
    )
    .await
    {
        Ok(plan) => Check::new(
            "wal",
            Status::Ok,
            format!(
                "backup {} restores to the archive's end at {} (timeline {}) without a gap",
                newest.id, plan.wal_end, plan.timeline
            ),
        ),
        Err(e) => Check::new(
            "wal",
            Status::Critical,
            format!("the newest backup cannot be restored to the archive's end: {e}"),
        ),
    }
}

/// The worst status of `checks` (ok for none).
pub fn worst(checks: &[Check]) -> Status {
    checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok)
}
