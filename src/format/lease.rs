//! The lease of a repository's one WAL writer (`leases/stream/{holder}.json`):
//! who holds it, written once when it is taken. Whether it still holds is
//! not in the document but in the store's time of the holder's heartbeat
//! object (see `storage::lease`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The lease document version this code writes.
pub const LEASE_VERSION: u32 = 1;

/// `leases/stream/{holder}.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// Format version.
    pub version: u32,
    /// The holder's id, as in the key.
    pub holder: String,
    /// The host the holder runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// The replication slot it streams from.
    pub slot: String,
    /// When it took the lease (its own clock, for people to read).
    #[serde(with = "super::time")]
    pub since: DateTime<Utc>,
}

impl Lease {
    /// How the holder reads in a message.
    pub fn describe(&self) -> String {
        format!(
            "host {}, process {}, slot {}, since {}",
            self.host,
            self.pid,
            self.slot,
            super::time::to_text(&self.since)
        )
    }
}
