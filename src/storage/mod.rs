//! The repository: sealed objects in an object store under a prefix.
//!
//! - [`layout`] is the only place that builds or parses object keys;
//! - `open` turns a repository URL and settings into a store (file, S3,
//!   GCS, Azure) and is the only place that knows the stores' environment
//!   variables;
//! - `repository` seals, writes create-only, reads and opens objects, and
//!   decides what a write that meets an existing object means;
//! - `identity` reads and creates `walvault.json`;
//! - `local` makes writes to a `file://` repository durable;
//! - [`retry`] is the one retry policy for store requests;
//! - `clock` reads the store's own time, for ages of objects.
//!
//! Invariant: an object counts as stored only once the store acknowledged
//! it (and, for a local directory, it and its directories are fsynced).

mod audit;
mod clock;
mod copy;
mod error;
mod identity;
mod keys;
pub mod layout;
pub mod lease;
mod local;
mod open;
mod records;
mod repository;
pub mod retry;

pub use copy::CopyReport;
pub use error::Error;
pub use keys::{KeyLine, KeyReport, KeyUsage};
pub use open::{
    OpenMode, environment_options, is_store_option, options_under_environment, store_retry_config,
};
pub use records::{BackupList, LockedBackup, first_free_id};
pub use repository::{ObjectInfo, Repository, RequestCounts, SealedObject, StorageClasses};
pub use retry::retry;
