//! The PostgreSQL server walvault archives: the one handshake the stream,
//! backups and checks share. It connects for replication, refuses a major
//! version walvault does not support, and reads what the server says of
//! itself (system identifier, timeline, WAL segment size, role, version).

use crate::protocol::command::SystemIdentity;
use crate::protocol::{self, ConnInfo, ReplicationConnection};

/// PostgreSQL majors walvault speaks to.
pub const SUPPORTED_MAJORS: std::ops::RangeInclusive<u32> = 14..=18;

/// Whether the server is a primary or a hot standby.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Accepts writes.
    Primary,
    /// In recovery, following another server.
    Standby,
}

impl Role {
    /// `primary` or `standby`, as stored in `backup.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Standby => "standby",
        }
    }
}

/// What the server reported during the handshake.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    /// Major version.
    pub major: u32,
    /// `server_version` as reported.
    pub version: String,
    /// IDENTIFY_SYSTEM.
    pub identity: SystemIdentity,
    /// `wal_segment_size` in bytes.
    pub segment_size_bytes: u64,
    /// Primary or standby.
    pub role: Role,
    /// Where the connection goes, for logs (never with credentials).
    pub target: String,
}

/// Why a server cannot be archived.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the server failed.
    #[error(transparent)]
    Protocol(#[from] protocol::Error),
    /// A major version walvault does not speak.
    #[error(
        "server {target} runs PostgreSQL {version}, but walvault supports {} to {}",
        SUPPORTED_MAJORS.start(),
        SUPPORTED_MAJORS.end()
    )]
    Unsupported {
        /// The server.
        target: String,
        /// Its `server_version`.
        version: String,
    },
    /// The server refuses replication connections for a reason only a
    /// setting fixes (its configuration, or walvault's role or password).
    #[error("server {target} refuses walvault's replication connection; {fix}")]
    Refused {
        /// The server.
        target: String,
        /// What to change.
        fix: &'static str,
        /// The server's error.
        #[source]
        source: Box<protocol::Error>,
    },
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Protocol(e) => e.is_retryable(),
            Error::Unsupported { .. } | Error::Refused { .. } => false,
        }
    }

    /// Whether a setting must change (exit code 2): retrying cannot help.
    pub fn is_configuration(&self) -> bool {
        matches!(self, Error::Unsupported { .. } | Error::Refused { .. })
    }
}

/// What fixes a refused connection, by the server's SQLSTATE.
fn fix_for(sqlstate: &str) -> Option<&'static str> {
    match sqlstate {
        "28000" => Some(
            "add a line for the replication database and this role and host to pg_hba.conf \
             (e.g. `host replication walvault 10.0.0.5/32 scram-sha-256`), then reload PostgreSQL",
        ),
        "28P01" => Some(
            "check the role's password (PGPASSWORD, the password file, or the connection string \
             in WALVAULT_PG or the configuration file)",
        ),
        "42501" => Some("give the role the REPLICATION attribute (ALTER ROLE ... REPLICATION)"),
        _ => None,
    }
}

/// The reason a replication connection failed, when a setting fixes it:
/// the server's error says so, or (too many connections) the server has
/// `max_wal_senders = 0`, read over an ordinary SQL session.
async fn refusal(conninfo: &ConnInfo, error: protocol::Error) -> Error {
    let target = conninfo.describe();
    let fix = match error.sqlstate() {
        Some("53300") if max_wal_senders(conninfo).await == Some(0) => Some(
            "max_wal_senders is 0 (wal_level = minimal needs it): set wal_level = replica and \
             max_wal_senders to at least 2, then restart PostgreSQL",
        ),
        Some(code) => fix_for(code),
        None => None,
    };
    match fix {
        Some(fix) => Error::Refused {
            target,
            fix,
            source: Box::new(error),
        },
        None => Error::Protocol(error),
    }
}

/// `max_wal_senders`, if an ordinary SQL session can read it.
async fn max_wal_senders(conninfo: &ConnInfo) -> Option<u32> {
    let mut conn = ReplicationConnection::connect(&conninfo.for_sql())
        .await
        .ok()?;
    let q = conn
        .simple_query("SELECT current_setting('max_wal_senders')")
        .await
        .ok();
    conn.terminate().await;
    q?.get(0, 0)?.parse().ok()
}

/// Connects for replication and checks the server.
///
/// # Errors
/// Connection and authentication failures, an unsupported major, or a
/// server whose settings refuse walvault ([`Error::Refused`], naming the fix).
///
/// # Cancel safety
/// Not cancel safe; drop the half-made connection.
pub async fn connect(conninfo: &ConnInfo) -> Result<(ReplicationConnection, ServerInfo), Error> {
    let mut conn = match ReplicationConnection::connect(conninfo).await {
        Ok(conn) => conn,
        Err(e) => return Err(refusal(conninfo, e).await),
    };
    let major = conn.server_major().unwrap_or(0);
    let version = conn.parameter("server_version").unwrap_or("?").to_string();
    if !SUPPORTED_MAJORS.contains(&major) {
        return Err(Error::Unsupported {
            target: conn.target().to_string(),
            version,
        });
    }
    let identity = conn.identify_system().await?;
    let segment_size_bytes = conn.wal_segment_size().await?;
    let role = if conn.parameter("in_hot_standby") == Some("on") {
        Role::Standby
    } else {
        Role::Primary
    };
    let info = ServerInfo {
        major,
        version,
        identity,
        segment_size_bytes,
        role,
        target: conn.target().to_string(),
    };
    Ok((conn, info))
}
