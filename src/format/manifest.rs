//! The JSON documents walvault stores next to sealed objects.
//!
//! `walvault.json` is the repository's identity, written once by the first
//! writer and stored as plain JSON (it holds no secret) so a reader learns the
//! encryption settings before it opens anything. Every document has a
//! `version`; readers accept every released version.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The `walvault.json` version this code writes.
pub const REPOSITORY_MANIFEST_VERSION: u32 = 1;

/// The identity and settings of a repository (`walvault.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryManifest {
    /// Format version of this document.
    pub version: u32,
    /// PostgreSQL's system identifier (decimal, as IDENTIFY_SYSTEM prints it).
    pub system_identifier: String,
    /// The server's major version when the repository was created.
    pub pg_major: u32,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// `"zstd"` or `"none"`.
    pub compression: String,
    /// `"aes-256-gcm"` or `"none"`.
    pub encryption: String,
    /// Hexadecimal ids of the master keys used to write (empty without encryption).
    pub key_ids: Vec<String>,
    /// When the repository was created (RFC 3339, UTC, whole seconds).
    #[serde(with = "super::time")]
    pub created_at: DateTime<Utc>,
}

/// Why a repository refuses a writer or reader.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MismatchError {
    /// Another cluster's repository.
    #[error(
        "repository belongs to system identifier {repository}, but the server is {server}; use another --repo (or prefix) for this cluster"
    )]
    SystemIdentifier {
        /// In the repository.
        repository: String,
        /// Of the server.
        server: String,
    },
    /// Different segment size.
    #[error("repository holds WAL segments of {repository} bytes, but the server uses {server}")]
    SegmentSize {
        /// In the repository.
        repository: u64,
        /// Of the server.
        server: u64,
    },
    /// Encrypted repository, no key given.
    #[error(
        "repository is encrypted (key ids {key_ids}); give its key with --key-file or WALVAULT_KEY"
    )]
    KeyRequired {
        /// The ids the repository uses.
        key_ids: String,
    },
    /// Unencrypted repository, key given.
    #[error(
        "repository is not encrypted, but a key was given; drop --key-file/WALVAULT_KEY or use a new repository to encrypt"
    )]
    NotEncrypted,
    /// None of the given keys belongs to the repository.
    #[error(
        "none of the given keys ({given}) belongs to this repository (key ids {key_ids}): wrong key"
    )]
    WrongKey {
        /// The ids given.
        given: String,
        /// The ids the repository uses.
        key_ids: String,
    },
}

impl RepositoryManifest {
    /// Checks that a keyring with these ids can read and write this repository.
    ///
    /// # Errors
    /// [`MismatchError`] naming what does not fit.
    pub fn check_keys(&self, given_ids: &[u32]) -> Result<(), MismatchError> {
        let key_ids = self.key_ids.join(", ");
        let encrypted = self.encryption != "none";
        match (encrypted, given_ids.is_empty()) {
            (true, true) => Err(MismatchError::KeyRequired { key_ids }),
            (false, false) => Err(MismatchError::NotEncrypted),
            (false, true) => Ok(()),
            (true, false) => {
                let given: Vec<String> = given_ids.iter().map(|id| format!("{id:08x}")).collect();
                if given.iter().any(|g| self.key_ids.contains(g)) {
                    Ok(())
                } else {
                    Err(MismatchError::WrongKey {
                        given: given.join(", "),
                        key_ids,
                    })
                }
            }
        }
    }

    /// Checks that a server's identity matches this repository.
    ///
    /// # Errors
    /// [`MismatchError`] on another system identifier or segment size.
    pub fn check_server(
        &self,
        system_identifier: &str,
        wal_segment_size: u64,
    ) -> Result<(), MismatchError> {
        if self.system_identifier != system_identifier {
            return Err(MismatchError::SystemIdentifier {
                repository: self.system_identifier.clone(),
                server: system_identifier.to_string(),
            });
        }
        if self.wal_segment_size != wal_segment_size {
            return Err(MismatchError::SegmentSize {
                repository: self.wal_segment_size,
                server: wal_segment_size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(encryption: &str, key_ids: &[&str]) -> RepositoryManifest {
        RepositoryManifest {
            version: 1,
            system_identifier: "7300000000000000001".into(),
            pg_major: 15,
            wal_segment_size: 16 << 20,
            compression: "zstd".into(),
            encryption: encryption.into(),
            key_ids: key_ids.iter().map(|s| s.to_string()).collect(),
            created_at: "2026-11-21T00:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn golden_repository_manifest_v1() {
        let text = r#"{"version":1,"system_identifier":"7300000000000000001","pg_major":15,"wal_segment_size":16777216,"compression":"zstd","encryption":"aes-256-gcm","key_ids":["0a0b0c0d"],"created_at":"2026-11-21T00:00:00Z"}"#;
        let parsed: RepositoryManifest = serde_json::from_str(text).unwrap();
        assert_eq!(parsed, manifest("aes-256-gcm", &["0a0b0c0d"]));
        assert_eq!(serde_json::to_string(&parsed).unwrap(), text);
    }

    #[test]
    fn key_settings_are_checked() {
        let enc = manifest("aes-256-gcm", &["0a0b0c0d"]);
        assert!(enc.check_keys(&[0x0a0b_0c0d]).is_ok());
        assert!(matches!(
            enc.check_keys(&[]),
            Err(MismatchError::KeyRequired { .. })
        ));
        assert!(matches!(
            enc.check_keys(&[1]),
            Err(MismatchError::WrongKey { .. })
        ));
        let plain = manifest("none", &[]);
        assert!(plain.check_keys(&[]).is_ok());
        assert_eq!(plain.check_keys(&[1]), Err(MismatchError::NotEncrypted));
        assert!(plain.check_server("1", 16 << 20).is_err());
        assert!(plain.check_server("7300000000000000001", 1 << 20).is_err());
    }
}
