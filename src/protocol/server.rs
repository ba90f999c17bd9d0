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
}

impl Error {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Protocol(e) => e.is_retryable(),
            Error::Unsupported { .. } => false,
        }
    }
}

/// Connects for replication and checks the server.
///
/// # Errors
/// Connection and authentication failures, or an unsupported major.
///
/// # Cancel safety
/// Not cancel safe; drop the half-made connection.
pub async fn connect(conninfo: &ConnInfo) -> Result<(ReplicationConnection, ServerInfo), Error> {
    let mut conn = ReplicationConnection::connect(conninfo).await?;
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
