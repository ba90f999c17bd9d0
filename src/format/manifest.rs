//! The JSON documents walvault stores next to sealed objects.
//!
//! `walvault.json` is the repository's identity, written once by the first
//! writer and stored as plain JSON (it holds no secret) so a reader learns the
//! encryption settings before it opens anything. Every document has a
//! `version`; readers accept every released version.
//!
//! Version 2 (repositories whose objects are bound to their keys) carries,
//! when encrypted, an HMAC-SHA256 of the document under a key derived from
//! each master key, so an edit of any field is detected by every reader
//! holding a key. Version 3 adds a random `repository_id`, which every
//! object is bound to as well, so objects copied from another repository
//! sealed with the same key do not open. Every version is validated: a value out of range (a
//! segment size that is not a power of two from 1 MiB to 1 GiB, say) is an
//! error, never a default.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::key::{KeyId, Keyring};

/// The `walvault.json` version this code writes: objects bound to the
/// repository's id and their keys.
pub const REPOSITORY_MANIFEST_VERSION: u32 = 3;
/// The second version: objects bound to their keys, not to the repository.
pub const REPOSITORY_MANIFEST_KEY_BOUND: u32 = 2;
/// The first version: objects not bound to their keys, no authentication.
pub const REPOSITORY_MANIFEST_UNBOUND: u32 = 1;
/// WAL segment sizes PostgreSQL allows (`initdb --wal-segsize`).
pub const WAL_SEGMENT_SIZES: std::ops::RangeInclusive<u64> = (1 << 20)..=(1 << 30);

/// The identity and settings of a repository (`walvault.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryManifest {
    /// Format version of this document.
    pub version: u32,
    /// Version 3: the repository's own id, 32 lower-case hex digits drawn
    /// at random when it is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_id: Option<String>,
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
    /// Ids of the master keys used to write (empty without encryption).
    pub key_ids: Vec<KeyId>,
    /// When the repository was created (RFC 3339, UTC, whole seconds).
    #[serde(with = "super::time")]
    pub created_at: DateTime<Utc>,
    /// The systems this repository held before the current one, oldest
    /// first: a `pg_upgrade` gives the cluster a new system identifier, and
    /// `walvault record-upgrade` moves the one above here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier_systems: Vec<EarlierSystem>,
    /// Version 2, encrypted: per key id, the hex HMAC-SHA256 of this
    /// document without this field, under that key's manifest key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macs: Option<BTreeMap<KeyId, String>>,
}

/// A system the repository held before an upgrade: its backups stay
/// listed and restorable, its WAL stays under its own prefix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlierSystem {
    /// Its system identifier.
    pub system_identifier: String,
    /// Its major version.
    pub pg_major: u32,
    /// Its WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// When the next system was recorded (RFC 3339, UTC, whole seconds).
    #[serde(with = "super::time")]
    pub until: DateTime<Utc>,
}

/// Where a system's WAL lives, relative to the repository: the first
/// system's under `wal/` (and its WAL index under `index/`), every later
/// one's under `systems/{system_identifier}/`, so the timeline-1 segment
/// names of an upgraded cluster never meet the old cluster's.
pub fn system_prefix(system_identifier: &str) -> String {
    format!("systems/{system_identifier}/")
}

/// Bytes of a repository id (stored as twice as many hex digits).
pub const REPOSITORY_ID_BYTES: usize = 16;

/// Whether `id` is spelled as walvault writes repository ids.
fn is_repository_id(id: &str) -> bool {
    id.len() == REPOSITORY_ID_BYTES * 2
        && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Key ids as a list for messages: `0a0b0c0d, 11223344`.
pub fn join_ids(ids: &[KeyId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why `record-upgrade` refuses a server.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpgradeError {
    /// Nothing to record.
    #[error(
        "the server is system identifier {0}, which the repository already holds as its current system: there is no upgrade to record"
    )]
    Current(String),
    /// Going back.
    #[error(
        "the server is system identifier {0}, which the repository held before an upgrade: an old cluster cannot become current again; use another repository for it"
    )]
    Earlier(String),
    /// pg_upgrade only goes up.
    #[error(
        "the server runs PostgreSQL {to}, older than the repository's current PostgreSQL {from}: pg_upgrade never goes down, so this is another cluster; use another repository for it"
    )]
    Downgrade {
        /// The current major.
        from: u32,
        /// The server's.
        to: u32,
    },
}

/// A `walvault.json` that must not be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// A field out of range or of an unknown kind.
    #[error("walvault.json is invalid: {0}")]
    Invalid(String),
    /// The document was changed after it was written.
    #[error(
        "walvault.json fails authentication: it was changed after walvault wrote it (or written without this repository's keys); refusing the repository"
    )]
    Tampered,
}

/// Why a repository refuses a writer or reader.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MismatchError {
    /// Another cluster's repository.
    #[error(
        "repository belongs to system identifier {repository}, but the server is {server}: if this server is that cluster after pg_upgrade, run `walvault record-upgrade` with its connection to continue the repository with it; otherwise use another --repo (or prefix) for this cluster"
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
    /// A system the repository held before an upgrade is writing again.
    #[error(
        "the server is system identifier {server}, which this repository held before it was upgraded to {repository}: an old cluster must not write into the upgraded one's repository; use another --repo (or prefix) for it"
    )]
    EarlierSystem {
        /// The current system.
        repository: String,
        /// Of the server.
        server: String,
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
    /// Whether objects are bound to their keys (version 2 and later).
    pub fn binds_objects(&self) -> bool {
        self.version >= REPOSITORY_MANIFEST_KEY_BOUND
    }

    /// A new repository id: 32 lower-case hex digits.
    pub fn new_repository_id() -> String {
        hex::encode(rand::random::<[u8; REPOSITORY_ID_BYTES]>())
    }

    /// Whether the repository is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.encryption != "none"
    }

    /// Checks every field against what walvault ever writes.
    ///
    /// # Errors
    /// [`ManifestError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |m: String| Err(ManifestError::Invalid(m));
        if !(REPOSITORY_MANIFEST_UNBOUND..=REPOSITORY_MANIFEST_VERSION).contains(&self.version) {
            return bad(format!(
                "version {} is not one this walvault reads (1 to {REPOSITORY_MANIFEST_VERSION})",
                self.version
            ));
        }
        if !self.wal_segment_size.is_power_of_two()
            || !WAL_SEGMENT_SIZES.contains(&self.wal_segment_size)
        {
            return bad(format!(
                "wal_segment_size {} is not a power of two from 1 MiB to 1 GiB",
                self.wal_segment_size
            ));
        }
        if self.system_identifier.is_empty()
            || !self.system_identifier.bytes().all(|b| b.is_ascii_digit())
        {
            return bad(format!(
                "system_identifier {:?} is not a number",
                self.system_identifier
            ));
        }
        if !(10..=99).contains(&self.pg_major) {
            return bad(format!(
                "pg_major {} is not a PostgreSQL major",
                self.pg_major
            ));
        }
        if !["zstd", "none"].contains(&self.compression.as_str()) {
            return bad(format!("unknown compression {:?}", self.compression));
        }
        match (self.encryption.as_str(), self.key_ids.is_empty()) {
            ("aes-256-gcm", false) | ("none", true) => {}
            ("aes-256-gcm" | "none", _) => {
                return bad(format!(
                    "encryption {:?} does not fit key ids {:?}",
                    self.encryption, self.key_ids
                ));
            }
            (other, _) => return bad(format!("unknown encryption {other:?}")),
        }
        match (
            self.version >= REPOSITORY_MANIFEST_VERSION,
            &self.repository_id,
        ) {
            (true, Some(id)) if is_repository_id(id) => {}
            (true, Some(id)) => {
                return bad(format!(
                    "repository_id {id:?} is not {} lower-case hex digits",
                    REPOSITORY_ID_BYTES * 2
                ));
            }
            (true, None) => return bad(format!("version {} has no repository_id", self.version)),
            (false, Some(_)) => {
                return bad(format!(
                    "version {} has a repository_id, which only version {REPOSITORY_MANIFEST_VERSION} has",
                    self.version
                ));
            }
            (false, None) => {}
        }
        let mut seen = std::collections::BTreeSet::new();
        for (id, size, major) in self
            .earlier_systems
            .iter()
            .map(|e| (&e.system_identifier, e.wal_segment_size, e.pg_major))
            .chain([(
                &self.system_identifier,
                self.wal_segment_size,
                self.pg_major,
            )])
        {
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
                return bad(format!("system_identifier {id:?} is not a number"));
            }
            if !seen.insert(id) {
                return bad(format!("system identifier {id} is listed twice"));
            }
            if !size.is_power_of_two() || !WAL_SEGMENT_SIZES.contains(&size) {
                return bad(format!(
                    "wal_segment_size {size} is not a power of two from 1 MiB to 1 GiB"
                ));
            }
            if !(10..=99).contains(&major) {
                return bad(format!("pg_major {major} is not a PostgreSQL major"));
            }
        }
        if self.binds_objects() && self.is_encrypted() && self.macs.is_none() {
            return bad("an encrypted repository's identity has no authentication".into());
        }
        Ok(())
    }

    /// The bytes the MACs cover: the document without them.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut unsigned = self.clone();
        unsigned.macs = None;
        serde_json::to_vec(&unsigned).expect("manifest serializes")
    }

    /// Adds a MAC for every key of `keyring` (version 2 and later, encrypted).
    pub fn sign(&mut self, keyring: &Keyring) {
        if !self.binds_objects() || keyring.is_empty() {
            return;
        }
        let bytes = self.signed_bytes();
        let macs = keyring
            .keys()
            .map(|k| {
                let mut mac = Hmac::<Sha256>::new_from_slice(&k.derive_manifest_key())
                    .expect("HMAC takes any key length");
                mac.update(&bytes);
                (k.id(), hex::encode(mac.finalize().into_bytes()))
            })
            .collect();
        self.macs = Some(macs);
    }

    /// Checks the MAC under a key of `keyring` (version 2 and later, encrypted; other
    /// documents have none to check).
    ///
    /// # Errors
    /// [`ManifestError::Tampered`] when no key of the keyring confirms it.
    pub fn verify(&self, keyring: &Keyring) -> Result<(), ManifestError> {
        if !self.binds_objects() || !self.is_encrypted() {
            return Ok(());
        }
        let macs = self.macs.as_ref().ok_or(ManifestError::Tampered)?;
        let bytes = self.signed_bytes();
        for k in keyring.keys() {
            let Some(hex_mac) = macs.get(&k.id()) else {
                continue;
            };
            // One spelling: lowercase hex, as written.
            let Ok(want) = hex::decode(hex_mac) else {
                return Err(ManifestError::Tampered);
            };
            if hex::encode(&want) != *hex_mac {
                return Err(ManifestError::Tampered);
            }
            let mut mac = Hmac::<Sha256>::new_from_slice(&k.derive_manifest_key())
                .expect("HMAC takes any key length");
            mac.update(&bytes);
            return mac.verify_slice(&want).map_err(|_| ManifestError::Tampered);
        }
        Err(ManifestError::Tampered)
    }

    /// Checks that a keyring with these ids can read and write this repository.
    ///
    /// # Errors
    /// [`MismatchError`] naming what does not fit.
    pub fn check_keys(&self, given_ids: &[KeyId]) -> Result<(), MismatchError> {
        let key_ids = join_ids(&self.key_ids);
        let encrypted = self.encryption != "none";
        match (encrypted, given_ids.is_empty()) {
            (true, true) => Err(MismatchError::KeyRequired { key_ids }),
            (false, false) => Err(MismatchError::NotEncrypted),
            (false, true) => Ok(()),
            (true, false) => {
                if given_ids.iter().any(|g| self.key_ids.contains(g)) {
                    Ok(())
                } else {
                    Err(MismatchError::WrongKey {
                        given: join_ids(given_ids),
                        key_ids,
                    })
                }
            }
        }
    }

    /// Where the current system's WAL lives: `None` for `wal/` at the
    /// top (the first system), else [`system_prefix`].
    pub fn wal_namespace(&self) -> Option<String> {
        let first = self
            .earlier_systems
            .first()
            .map_or(&self.system_identifier, |e| &e.system_identifier);
        (*first != self.system_identifier).then(|| system_prefix(&self.system_identifier))
    }

    /// Every system the repository holds, oldest first, as
    /// `(system identifier, major, segment size)`; the last is current.
    pub fn systems(&self) -> Vec<(String, u32, u64)> {
        self.earlier_systems
            .iter()
            .map(|e| (e.system_identifier.clone(), e.pg_major, e.wal_segment_size))
            .chain([(
                self.system_identifier.clone(),
                self.pg_major,
                self.wal_segment_size,
            )])
            .collect()
    }

    /// This document as seen by a reader of the system `system_identifier`
    /// (current or earlier): that system's identity, segment size and major
    /// in place of the current one's; `None` when it holds no such system.
    /// Only for reading: the view is never written back.
    pub fn system_view(&self, system_identifier: &str) -> Option<RepositoryManifest> {
        if self.system_identifier == system_identifier {
            return Some(self.clone());
        }
        let e = self
            .earlier_systems
            .iter()
            .find(|e| e.system_identifier == system_identifier)?;
        let mut view = self.clone();
        view.system_identifier = e.system_identifier.clone();
        view.pg_major = e.pg_major;
        view.wal_segment_size = e.wal_segment_size;
        Some(view)
    }

    /// The document after `pg_upgrade` gave the cluster a new system
    /// identifier: the current system moves to `earlier_systems`, the new
    /// one becomes current (unsigned: the caller signs it).
    ///
    /// # Errors
    /// [`UpgradeError`] for a system the repository holds already or an
    /// older major.
    pub fn record_upgrade(
        &self,
        system_identifier: &str,
        pg_major: u32,
        wal_segment_size: u64,
        at: DateTime<Utc>,
    ) -> Result<RepositoryManifest, UpgradeError> {
        if self.system_identifier == system_identifier {
            return Err(UpgradeError::Current(system_identifier.to_string()));
        }
        if self
            .earlier_systems
            .iter()
            .any(|e| e.system_identifier == system_identifier)
        {
            return Err(UpgradeError::Earlier(system_identifier.to_string()));
        }
        if pg_major < self.pg_major {
            return Err(UpgradeError::Downgrade {
                from: self.pg_major,
                to: pg_major,
            });
        }
        let mut next = self.clone();
        next.earlier_systems.push(EarlierSystem {
            system_identifier: self.system_identifier.clone(),
            pg_major: self.pg_major,
            wal_segment_size: self.wal_segment_size,
            until: at,
        });
        next.system_identifier = system_identifier.to_string();
        next.pg_major = pg_major;
        next.wal_segment_size = wal_segment_size;
        next.macs = None;
        Ok(next)
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
        if self
            .earlier_systems
            .iter()
            .any(|e| e.system_identifier == system_identifier)
        {
            return Err(MismatchError::EarlierSystem {
                repository: self.system_identifier.clone(),
                server: system_identifier.to_string(),
            });
        }
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
            repository_id: None,
            system_identifier: "7300000000000000001".into(),
            pg_major: 15,
            wal_segment_size: 16 << 20,
            compression: "zstd".into(),
            encryption: encryption.into(),
            key_ids: key_ids.iter().map(|s| s.parse().unwrap()).collect(),
            created_at: "2026-11-21T00:00:00Z".parse().unwrap(),
            earlier_systems: Vec::new(),
            macs: None,
        }
    }

    #[test]
    fn an_upgrade_moves_the_current_system_and_is_authenticated() {
        use crate::format::key::MasterKey;
        let ring = Keyring::single(MasterKey::from_hex(&"42".repeat(32)).unwrap());
        let id = ring.ids()[0].to_string();
        let mut m = manifest("aes-256-gcm", &[id.as_str()]);
        m.version = REPOSITORY_MANIFEST_VERSION;
        m.repository_id = Some(RepositoryManifest::new_repository_id());
        m.sign(&ring);
        assert_eq!(m.wal_namespace(), None);
        let at: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        let mut up = m
            .record_upgrade("7400000000000000002", 18, 16 << 20, at)
            .unwrap();
        up.sign(&ring);
        up.validate().unwrap();
        up.verify(&ring).unwrap();
        assert_eq!(
            up.wal_namespace().as_deref(),
            Some("systems/7400000000000000002/")
        );
        let old = up.system_view("7300000000000000001").unwrap();
        assert_eq!((old.pg_major, old.wal_namespace()), (15, None));
        assert!(up.system_view("1").is_none());
        // The old cluster, the same one again, or a downgrade are refused.
        assert!(matches!(
            up.check_server("7300000000000000001", 16 << 20),
            Err(MismatchError::EarlierSystem { .. })
        ));
        up.check_server("7400000000000000002", 16 << 20).unwrap();
        for (sys, major) in [
            ("7300000000000000001", 18),
            ("7400000000000000002", 18),
            ("7500000000000000003", 17),
        ] {
            assert!(
                up.record_upgrade(sys, major, 16 << 20, at).is_err(),
                "{sys}"
            );
        }
        // The list of systems is authenticated: dropping the upgrade from
        // the document is detected.
        let text = serde_json::to_string(&up).unwrap();
        let mut dropped: RepositoryManifest = serde_json::from_str(&text).unwrap();
        dropped.earlier_systems.clear();
        assert_eq!(dropped.verify(&ring), Err(ManifestError::Tampered));
        let mut twice = up.clone();
        twice.earlier_systems.push(twice.earlier_systems[0].clone());
        assert!(twice.validate().is_err());
    }

    #[test]
    fn version_3_binds_a_repository_id() {
        use crate::format::key::MasterKey;
        let ring = Keyring::single(MasterKey::from_hex(&"42".repeat(32)).unwrap());
        let id = ring.ids()[0].to_string();
        let mut m = manifest("aes-256-gcm", &[id.as_str()]);
        m.version = REPOSITORY_MANIFEST_VERSION;
        assert!(m.validate().is_err(), "version 3 without an id accepted");
        let repository_id = RepositoryManifest::new_repository_id();
        assert!(is_repository_id(&repository_id), "{repository_id}");
        m.repository_id = Some(repository_id.clone());
        m.sign(&ring);
        m.validate().unwrap();
        m.verify(&ring).unwrap();
        // The id is authenticated: another repository's id is refused.
        let text = serde_json::to_string(&m).unwrap();
        let other_id = RepositoryManifest::new_repository_id();
        let swapped: RepositoryManifest =
            serde_json::from_str(&text.replace(&repository_id, &other_id)).unwrap();
        assert_eq!(swapped.verify(&ring), Err(ManifestError::Tampered));
        // One spelling, and only in version 3.
        for bad in [
            repository_id.to_uppercase(),
            "00".repeat(15),
            "zz".repeat(16),
        ] {
            let mut broken = m.clone();
            broken.repository_id = Some(bad.clone());
            assert!(broken.validate().is_err(), "repository_id {bad}");
        }
        let mut older = m.clone();
        older.version = REPOSITORY_MANIFEST_KEY_BOUND;
        assert!(older.validate().is_err(), "a version 2 document with an id");
        // Rewritten as version 2 without the id, the MAC no longer holds.
        older.repository_id = None;
        older.validate().unwrap();
        assert_eq!(older.verify(&ring), Err(ManifestError::Tampered));
    }

    #[test]
    fn version_2_is_authenticated_and_validated() {
        use crate::format::key::MasterKey;
        let ring = Keyring::single(MasterKey::from_hex(&"42".repeat(32)).unwrap());
        let id = ring.ids()[0].to_string();
        let mut m = manifest("aes-256-gcm", &[id.as_str()]);
        m.version = REPOSITORY_MANIFEST_KEY_BOUND;
        assert!(m.validate().is_err(), "unsigned encrypted v2 accepted");
        m.sign(&ring);
        m.validate().unwrap();
        m.verify(&ring).unwrap();
        let text = serde_json::to_string(&m).unwrap();
        let back: RepositoryManifest = serde_json::from_str(&text).unwrap();
        back.verify(&ring).unwrap();
        // Any edit is detected.
        let edited: RepositoryManifest =
            serde_json::from_str(&text.replace("16777216", "1048576")).unwrap();
        assert_eq!(edited.verify(&ring), Err(ManifestError::Tampered));
        let other = Keyring::single(MasterKey::from_hex(&"43".repeat(32)).unwrap());
        assert_eq!(m.verify(&other), Err(ManifestError::Tampered));
        // One spelling per value: an upper-case MAC and another spelling
        // of the same created_at are refused.
        let mac = m.macs.as_ref().unwrap().values().next().unwrap().clone();
        let upper: RepositoryManifest =
            serde_json::from_str(&text.replace(&mac, &mac.to_uppercase())).unwrap();
        assert_eq!(upper.verify(&ring), Err(ManifestError::Tampered));
        let respelled = text.replace("00:00:00Z", "00:00:00+00:00");
        assert_ne!(respelled, text);
        assert!(serde_json::from_str::<RepositoryManifest>(&respelled).is_err());
        // Values out of range are errors, never defaults.
        for size in [0, 3 << 20, 1 << 19, 1 << 31] {
            let mut broken = m.clone();
            broken.wal_segment_size = size;
            assert!(broken.validate().is_err(), "segment size {size}");
        }
        let mut broken = m.clone();
        broken.encryption = "rot13".into();
        assert!(broken.validate().is_err());
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
        assert!(enc.check_keys(&[KeyId(0x0a0b_0c0d)]).is_ok());
        assert!(matches!(
            enc.check_keys(&[]),
            Err(MismatchError::KeyRequired { .. })
        ));
        assert!(matches!(
            enc.check_keys(&[KeyId(1)]),
            Err(MismatchError::WrongKey { .. })
        ));
        let plain = manifest("none", &[]);
        assert!(plain.check_keys(&[]).is_ok());
        assert_eq!(
            plain.check_keys(&[KeyId(1)]),
            Err(MismatchError::NotEncrypted)
        );
        assert!(plain.check_server("1", 16 << 20).is_err());
        assert!(plain.check_server("7300000000000000001", 1 << 20).is_err());
    }
}
