//! walvault: a PostgreSQL WAL streaming archiver.
//!
//! It speaks the physical replication protocol itself ([`protocol`]), cuts
//! the stream into segments and small delta objects ([`wal`]), seals each
//! object with zstd and AES-256-GCM ([`format`]) and stores it in object
//! storage ([`storage`]) through bounded, retried uploads ([`pipeline`]).
//! The promise: a WAL position is reported flushed to PostgreSQL only when
//! every byte below it is in the store.
//!
//! # Layout
//!
//! Each command's library half lives in the folder of its domain; `cli/`
//! only parses arguments, calls one function here and prints. From the top
//! down (every import points down, or sideways within a line, never up):
//!
//! - [`cli`]: the command line: the subcommands' arguments, the shared
//!   argument groups, the configuration file, exit codes;
//! - [`sidecar`]: `walvault stream`: the WAL stream with scheduled backups,
//!   expire, drills, metrics and notifications, checked and assembled;
//! - [`inspect`]: read-only views of a repository: `check`, `info`,
//!   `verify`, `list`;
//!   [`retention`]: the policy (pure), `expire`, pins;
//!   [`restore`]: plan, the checks before writing, unpacking, the recovery
//!   configuration, `--start`, `restore_command` (`wal-fetch`) and its
//!   prefetch spool, drills;
//!   [`metrics`]: Prometheus, `/health`, the observer, webhook
//!   notifications;
//! - [`backup`]: BASE_BACKUP into parts, the server's manifest, the catalog
//!   of interrupted backups;
//! - [`wal`]: the replication loop and its counters, the segmenter (pure),
//!   timelines, what the archive holds, reading WAL back, marks;
//! - [`pipeline`]: the one bounded seal-and-upload stage and the memory
//!   budget; [`config`]: value parsers, the one resolution of a repository
//!   and its key, key files, the settings file `restore_command` reads;
//! - [`storage`]: the repository over an object store: the only key
//!   builder, sealed reads and create-only writes, records, key rotation,
//!   the retry policy, local directories;
//! - [`protocol`]: the wire protocol: codecs (pure), connecting and
//!   authenticating, connection strings, TLS, the password file, the
//!   server handshake; [`format`]: what is stored, pure and versioned;
//! - foundations: [`lsn`], [`error`], [`shutdown`], [`progress`],
//!   [`schedule`], [`local_file`], [`malloc`], [`telemetry`].
//!
//! A new command adds its arguments and printing in `cli/<command>.rs` and
//! its work in the folder of what it acts on; `scripts/check-layout.py`
//! checks the layer order, circles and file sizes.

pub mod backup;
pub mod cli;
pub mod config;
pub mod error;
pub mod format;
#[cfg(feature = "fuzzing")]
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
