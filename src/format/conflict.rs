//! `conflicts/wal/{time}-{random}.json`: a WAL object that a second writer
//! tried to store with other bytes. The stored version was read as WAL
//! (`format::wal_pages`) and kept; this record is what `check` and the metrics
//! report, with both versions' details for whoever looks into it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The record version this code writes.
pub const CONFLICT_VERSION: u32 = 1;

/// One version of the object: its length and CRC-32C.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectVersion {
    /// Plaintext bytes.
    pub bytes: u64,
    /// CRC-32C of the plaintext.
    pub crc32c: u32,
}

/// `conflicts/wal/{time}-{random}.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalConflict {
    /// Format version.
    pub version: u32,
    /// The WAL object's key.
    pub key: String,
    /// How the versions differ: lengths, or the first byte that differs.
    pub difference: String,
    /// The stored version, kept.
    pub kept: ObjectVersion,
    /// The version the second writer had, not stored.
    pub other: ObjectVersion,
    /// The host of the second writer.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// When it happened (that writer's clock).
    #[serde(with = "super::time")]
    pub at: DateTime<Utc>,
}

impl ObjectVersion {
    /// The version of `pieces`.
    pub fn of<B: AsRef<[u8]>>(pieces: &[B]) -> Self {
        ObjectVersion {
            bytes: pieces.iter().map(|p| p.as_ref().len() as u64).sum(),
            crc32c: pieces
                .iter()
                .fold(0, |crc, p| crc32c::crc32c_append(crc, p.as_ref())),
        }
    }
}
