//! PostgreSQL's physical replication protocol, spoken by walvault itself.
//!
//! `postgres-protocol` frames messages and runs SCRAM; the CopyBoth handling
//! and the CopyData sub-messages (`w`, `k`, `r`) are ours. Only
//! [`connection`] touches sockets, and only it and `tls` read files (password
//! file, certificates, keys, CRLs); [`message`], [`conninfo`], [`passfile`]
//! and the result parsing in [`command`] are pure.

pub mod command;
pub mod connection;
pub mod conninfo;
pub mod message;
pub mod passfile;
pub mod server;
mod tls;

pub use connection::ReplicationConnection;
pub use conninfo::ConnInfo;

use std::fmt;

/// An ErrorResponse from the server, with its fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerError {
    /// Non-localized severity (ERROR, FATAL, PANIC).
    pub severity: String,
    /// SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Detail, if any.
    pub detail: Option<String>,
    /// Hint, if any.
    pub hint: Option<String>,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server {}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(d) = &self.detail {
            write!(f, "; detail: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

/// What can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection string is unusable.
    #[error(transparent)]
    ConnInfo(#[from] conninfo::ConnInfoError),
    /// No host could be reached.
    #[error("cannot connect to {target}")]
    Connect {
        /// Where we tried.
        target: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Socket I/O failed after connecting.
    #[error("connection to the server failed")]
    Io(#[from] std::io::Error),
    /// TLS could not be set up as `sslmode` demands.
    #[error("TLS: {0}")]
    Tls(String),
    /// Authentication failed on our side (the server's own refusals are [`Error::Server`]).
    #[error("authentication: {0}")]
    Auth(String),
    /// The server reported an error.
    #[error("{0}")]
    Server(ServerError),
    /// The server sent something the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The server closed the connection.
    #[error("server closed the connection")]
    Closed,
    /// The server does not fit `target_session_attrs`.
    #[error("server {target} does not fit target_session_attrs: {reason}")]
    SessionAttrs {
        /// Where we connected.
        target: String,
        /// libpq's reason, e.g. "server is in hot standby mode".
        reason: &'static str,
    },
    /// A step took too long.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// The step.
        what: &'static str,
        /// The limit.
        after: std::time::Duration,
    },
}

impl Error {
    /// Whether reconnecting later may succeed (network trouble, server restart,
    /// too many connections), as opposed to a configuration problem.
    pub fn is_retryable(&self) -> bool {
        match self {
            // A server's role changes with failovers: try again later.
            Error::Connect { .. }
            | Error::Io(_)
            | Error::Closed
            | Error::Timeout { .. }
            | Error::SessionAttrs { .. } => true,
            Error::Server(e) => {
                // Connection exceptions, operator intervention (shutdown), and
                // insufficient resources (too many connections).
                // 55006: the slot is still held by the walsender of a connection
                // that just died; it frees up within moments.
                e.code.starts_with("08")
                    || e.code.starts_with("57P")
                    || e.code.starts_with("53")
                    || e.code == "55006"
            }
            Error::ConnInfo(_) | Error::Tls(_) | Error::Auth(_) | Error::Protocol(_) => false,
        }
    }

    /// The SQLSTATE, when the server reported the error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}
