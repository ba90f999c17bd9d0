//! What walvault writes to storage: the sealed-object envelope, keys and the
//! JSON manifests. Pure and versioned; nothing here does I/O.

pub mod audit;
pub mod backup;
pub mod chunk;
pub mod conflict;
pub mod drill;
pub mod key;
pub mod lease;
pub mod manifest;
pub mod mark;
pub mod retention;
pub mod time;
pub mod wal_index;
pub mod wal_pages;

pub use chunk::{Compression, SealOptions, open, seal};
pub use key::{KeyId, Keyring, MasterKey};
