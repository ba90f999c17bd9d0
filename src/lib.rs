//! walvault: a PostgreSQL WAL streaming archiver.
//!
//! It speaks the physical replication protocol itself ([`protocol`]), cuts
//! the stream into segments and small delta objects ([`wal`]), seals each
//! object with zstd and AES-256-GCM ([`format`]) and stores it in object
//! storage ([`storage`]) through bounded, retried uploads ([`pipeline`]).
//! The promise: a WAL position is reported flushed to PostgreSQL only when
//! every byte below it is in the store.

pub mod backup;
pub mod cli;
pub mod config;
pub mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
pub mod local_file;
pub mod lsn;
pub mod malloc;
pub mod metrics;
pub mod pipeline;
pub mod progress;
pub mod protocol;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod shutdown;
pub mod sidecar;
pub mod storage;
pub mod telemetry;
pub mod wal;
