//! Backup metadata (`backup.json`) and the server's `backup_manifest`.
//!
//! `backup.json` is written last: a backup exists if and only if it does.
//! The server's manifest is parsed only as far as verification needs: each
//! file's path, size and CRC32C.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::lsn::{Lsn, TimelineId};

/// The `backup.json` version this code writes. Version 2 added
/// `backup_label` and `annotations`; version 1 documents are read as they are.
pub const BACKUP_METADATA_VERSION: u32 = 2;

/// Most annotations one backup carries.
pub const MAX_ANNOTATIONS: usize = 32;
/// Longest annotation key, in bytes.
const MAX_ANNOTATION_KEY: usize = 64;
/// Longest annotation value, in bytes.
const MAX_ANNOTATION_VALUE: usize = 1024;

/// Parses `KEY=VALUE` of `backup --annotate`: the key of letters, digits,
/// `_`, `.`, `-` and `/` (at most 64 bytes), the value any text without
/// control characters (at most 1024 bytes).
///
/// # Errors
/// The rule the text breaks.
pub fn parse_annotation(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    if key.is_empty()
        || key.len() > MAX_ANNOTATION_KEY
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
    {
        return Err(format!(
            "annotation key {key:?}: use 1 to {MAX_ANNOTATION_KEY} letters, digits, '_', '.', '-' or '/'"
        ));
    }
    if value.len() > MAX_ANNOTATION_VALUE || value.chars().any(char::is_control) {
        return Err(format!(
            "annotation {key}: the value must be at most {MAX_ANNOTATION_VALUE} bytes, without control characters"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

/// The annotations of `backup --annotate`, each key once.
///
/// # Errors
/// A malformed pair, a key given twice, or more than [`MAX_ANNOTATIONS`].
pub fn annotations_from(
    pairs: &[(String, String)],
) -> Result<std::collections::BTreeMap<String, String>, String> {
    if pairs.len() > MAX_ANNOTATIONS {
        return Err(format!(
            "{} annotations: a backup carries at most {MAX_ANNOTATIONS}",
            pairs.len()
        ));
    }
    let mut out = std::collections::BTreeMap::new();
    for (k, v) in pairs {
        if out.insert(k.clone(), v.clone()).is_some() {
            return Err(format!("annotation {k} is given twice"));
        }
    }
    Ok(out)
}

/// One stored part of a tablespace's tar stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartRecord {
    /// Position in the stream, from 0.
    pub index: u32,
    /// Plaintext bytes.
    pub plain_bytes: u64,
    /// Stored (sealed) bytes.
    pub stored_bytes: u64,
    /// CRC32C of the plaintext, 8 hex digits.
    pub crc32c: String,
}

/// One tablespace's tar stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TablespaceRecord {
    /// `base` for the main data directory, else the tablespace OID.
    pub name: String,
    /// The tablespace OID (`None` for the main directory).
    pub oid: Option<u32>,
    /// The tablespace's location on the source server.
    pub location: Option<String>,
    /// The parts, in order.
    pub parts: Vec<PartRecord>,
    /// Plaintext bytes of the tar stream.
    pub plain_bytes: u64,
    /// Stored bytes.
    pub stored_bytes: u64,
}

/// The WAL a backup needs to be consistent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalRange {
    /// Timeline of the WAL.
    pub timeline: TimelineId,
    /// First LSN needed (the backup's start, the checkpoint's redo).
    pub start_lsn: Lsn,
    /// The LSN replay must reach for consistency (the backup's end).
    pub stop_lsn: Lsn,
    /// First segment file.
    pub first_segment: String,
    /// Last segment file.
    pub last_segment: String,
}

/// Where a backup was taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSource {
    /// The server (host:port or socket), without credentials.
    pub server: String,
    /// `primary` or `standby`.
    pub role: String,
}

/// `backup.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupMetadata {
    /// Format version of this document.
    pub version: u32,
    /// Backup id (UTC start time, `YYYYMMDDTHHMMSSZ`).
    pub id: String,
    /// Label given to BASE_BACKUP.
    pub label: String,
    /// The cluster's system identifier.
    pub system_identifier: String,
    /// `server_version` of the source.
    pub server_version: String,
    /// Major version of the source.
    pub pg_major: u32,
    /// Where it was taken.
    pub source: BackupSource,
    /// Timeline at the start.
    pub timeline: TimelineId,
    /// Start LSN.
    pub start_lsn: Lsn,
    /// Stop LSN.
    pub stop_lsn: Lsn,
    /// Start time (RFC 3339, UTC, whole seconds).
    #[serde(with = "super::time")]
    pub start_time: DateTime<Utc>,
    /// Stop time (RFC 3339, UTC, whole seconds).
    #[serde(with = "super::time")]
    pub stop_time: DateTime<Utc>,
    /// Seconds from start to `backup.json`.
    pub duration_seconds: f64,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// The WAL the backup needs.
    pub wal_range: WalRange,
    /// Tablespaces, main directory last (as the server sends them).
    pub tablespaces: Vec<TablespaceRecord>,
    /// Plaintext bytes of the server's manifest.
    pub manifest_bytes: u64,
    /// Plaintext bytes of all tar streams.
    pub plain_bytes: u64,
    /// Stored bytes of all parts and the manifest.
    pub stored_bytes: u64,
    /// Plaintext bytes per part (the last part of each stream may be shorter).
    pub part_size_bytes: u64,
    /// Server-side compression of the tar streams (`zstd`), if requested:
    /// the parts then hold the compressed stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_compression: Option<String>,
    /// The `backup_label` file the server wrote into the backup (version
    /// 2; absent in version 1 and when it could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_label: Option<String>,
    /// User metadata of `backup --annotate KEY=VALUE` (version 2).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl BackupMetadata {
    /// Refuses a document of a version this code does not read.
    ///
    /// # Errors
    /// The version, and what to do.
    pub fn check_version(&self) -> Result<(), String> {
        if self.version == 0 || self.version > BACKUP_METADATA_VERSION {
            return Err(format!(
                "backup.json version {}, but this walvault reads versions 1 to {BACKUP_METADATA_VERSION}: upgrade walvault",
                self.version
            ));
        }
        Ok(())
    }
}

/// One file of the server's manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    /// Path relative to the data directory (tablespaces under `pg_tblspc/<oid>/`).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC32C as the manifest writes it (8 hex digits, server byte order), if any.
    pub crc32c: Option<String>,
}

/// A manifest walvault cannot read.
#[derive(Debug, thiserror::Error)]
#[error("invalid backup manifest: {0}")]
pub struct ManifestError(pub String);

/// Parses the files of a PostgreSQL `backup_manifest` (versions 1 and 2).
///
/// # Errors
/// On malformed JSON or entries.
pub fn parse_server_manifest(bytes: &[u8]) -> Result<Vec<ManifestFile>, ManifestError> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ManifestError(e.to_string()))?;
    let files = v
        .get("Files")
        .and_then(|f| f.as_array())
        .ok_or_else(|| ManifestError("no Files array".into()))?;
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let path = match (
            f.get("Path").and_then(|p| p.as_str()),
            f.get("Encoded-Path").and_then(|p| p.as_str()),
        ) {
            (Some(p), _) => p.to_string(),
            (None, Some(hexed)) => {
                let raw =
                    hex::decode(hexed).map_err(|e| ManifestError(format!("Encoded-Path: {e}")))?;
                String::from_utf8_lossy(&raw).into_owned()
            }
            (None, None) => return Err(ManifestError("a file without Path".into())),
        };
        let size = f
            .get("Size")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| ManifestError(format!("{path}: no Size")))?;
        let crc32c = match f.get("Checksum-Algorithm").and_then(|a| a.as_str()) {
            Some(alg) if alg.eq_ignore_ascii_case("CRC32C") => f
                .get("Checksum")
                .and_then(|c| c.as_str())
                .map(str::to_ascii_lowercase),
            _ => None,
        };
        out.push(ManifestFile { path, size, crc32c });
    }
    Ok(out)
}

/// Checks a file of a backup (size and CRC-32C) against the server's
/// manifest and crosses it off `expected`; the error says what differs.
///
/// # Errors
/// A file the manifest does not list, or another size or checksum.
pub fn check_against_manifest(
    expected: &mut std::collections::BTreeMap<String, ManifestFile>,
    path: &str,
    size: u64,
    crc32c: u32,
) -> Result<(), String> {
    let m = expected
        .remove(path)
        .ok_or_else(|| "not in the server's manifest".to_string())?;
    if m.size != size {
        return Err(format!(
            "size {size}, the server's manifest says {}",
            m.size
        ));
    }
    if let Some(want) = m.crc32c
        && manifest_crc32c_hex(crc32c) != want
    {
        return Err(format!(
            "CRC32C {} differs from the server's manifest ({want})",
            manifest_crc32c_hex(crc32c)
        ));
    }
    Ok(())
}

/// Formats a CRC32C the way the server's manifest does (its 4 bytes in
/// little-endian memory order, as hex).
pub fn manifest_crc32c_hex(crc: u32) -> String {
    hex::encode(crc.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_manifest() {
        let m = br#"{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [
{ "Path": "backup_label", "Size": 227, "Last-Modified": "2026-11-21 05:00:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "2E5A0B8C" },
{ "Encoded-Path": "6162", "Size": 0, "Last-Modified": "2026-11-21 05:00:00 GMT" }
],
"WAL-Ranges": [ { "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" } ],
"Manifest-Checksum": "00"}
"#;
        let files = parse_server_manifest(m).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].crc32c.as_deref(), Some("2e5a0b8c"));
        assert_eq!(files[1].path, "ab");
        assert!(parse_server_manifest(b"{}").is_err());
        assert_eq!(manifest_crc32c_hex(0x0102_0304), "04030201");
    }

    /// The typed document writes exactly the JSON values of the golden file:
    /// every field, string and number as version 1 stores it.
    #[test]
    fn golden_backup_metadata_v1() {
        let text = include_str!("../../tests/data/golden/backup-v1.json");
        let m: BackupMetadata = serde_json::from_str(text).unwrap();
        assert_eq!(m.version, 1);
        assert_eq!(m.tablespaces[0].parts[0].crc32c, "0a1b2c3d");
        assert_eq!(m.start_lsn, Lsn(0x200_0028));
        assert_eq!(m.timeline, TimelineId::FIRST);
        let golden: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_value(&m).unwrap(), golden);
    }

    #[test]
    fn annotations_are_checked() {
        assert_eq!(
            parse_annotation("ticket=OPS-12 = b").unwrap(),
            ("ticket".into(), "OPS-12 = b".into())
        );
        assert_eq!(
            parse_annotation("k8s.io/app=").unwrap(),
            ("k8s.io/app".into(), String::new())
        );
        for bad in ["noequals", "=v", "a b=c", "k=line\nbreak"] {
            assert!(parse_annotation(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_annotation(&format!("{}=v", "k".repeat(65))).is_err());
        assert!(parse_annotation(&format!("k={}", "v".repeat(1025))).is_err());
        let twice = [("a".to_string(), "1".to_string()), ("a".into(), "2".into())];
        assert!(annotations_from(&twice).unwrap_err().contains("twice"));
        let many: Vec<_> = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(annotations_from(&many).is_err());
        assert_eq!(annotations_from(&many[..32]).unwrap().len(), 32);
    }

    /// Version 2 adds the label file and the annotations; a version this
    /// code does not know is refused by name.
    #[test]
    fn version_2_fields_and_newer_versions() {
        let text = include_str!("../../tests/data/golden/backup-v1.json");
        let mut m: BackupMetadata = serde_json::from_str(text).unwrap();
        assert!(m.check_version().is_ok());
        m.version = 2;
        m.backup_label = Some("START WAL LOCATION: 0/2000028\n".into());
        m.annotations.insert("ticket".into(), "OPS-12".into());
        let again: BackupMetadata =
            serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(again, m);
        m.version = 3;
        assert!(m.check_version().unwrap_err().contains("upgrade walvault"));
    }

    #[test]
    fn malformed_values_are_errors() {
        let text = include_str!("../../tests/data/golden/backup-v1.json");
        for (from, to) in [
            ("\"0/2000028\"", "\"0-2000028\""),
            ("\"timeline\": 1", "\"timeline\": 0"),
            ("2026-11-21T05:15:09Z", "yesterday"),
        ] {
            let broken = text.replacen(from, to, 1);
            assert_ne!(broken, text);
            assert!(
                serde_json::from_str::<BackupMetadata>(&broken).is_err(),
                "{to} parsed"
            );
        }
    }
}
