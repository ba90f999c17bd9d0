//! The properties of the stored-documents target: every JSON document and
//! text file walvault reads back, and object keys.

use super::{FUZZ_KEY_BYTES, SEGMENT_SIZES_BYTES};
use crate::config::settings_file::RepositoryConfigFile;
use crate::format::backup::{BackupMetadata, parse_server_manifest};
use crate::format::key::{Keyring, MasterKey};
use crate::format::manifest::RepositoryManifest;
use crate::lsn::{Lsn, SegmentName, WalFileName};
use crate::storage::layout::{self, WalObject};
use crate::wal::history::{follow_history, parse_history};

/// Every document walvault reads from storage or the operator, on the same
/// bytes: `backup.json`, `walvault.json`, the repository settings file,
/// PostgreSQL's `backup_manifest`, timeline history files, key files, WAL
/// object keys and WAL file names, the records beside the backups (WAL
/// index, pins, expire records, marks, drills, leases, conflicts, audit
/// records), the
/// configuration file and the password file. None panics; whatever parses
/// writes back out in a form that parses to the same value and writes out
/// identically.
pub fn stored_documents(data: &[u8]) {
    backup_metadata(data);
    repository_manifest(data);
    repository_settings(data);
    server_manifest(data);
    records(data);
    let text = String::from_utf8_lossy(data);
    timeline_history(&text);
    key_file(&text);
    configuration(&text);
    password_file(&text);
    for size in SEGMENT_SIZES_BYTES {
        wal_names(&text, size);
    }
}

/// A document that parses writes back out (compact and pretty) to one
/// that parses to the same value and writes out identically.
fn round_trip<T>(data: &[u8], what: &str) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let value = serde_json::from_slice::<T>(data).ok()?;
    let text = serde_json::to_string(&value).expect("a document serializes");
    let again: T = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what} does not re-parse: {e}: {text}"));
    assert_eq!(again, value, "{what} changed in a round trip");
    assert_eq!(
        text,
        serde_json::to_string(&again).expect("a document serializes"),
        "{what} does not serialize stably"
    );
    let pretty = serde_json::to_vec_pretty(&value).expect("a document serializes");
    let from_pretty: T = serde_json::from_slice(&pretty).expect("a stored document re-parses");
    assert_eq!(from_pretty, value, "stored {what} changed in a round trip");
    Some(value)
}

/// The records beside the backups: the WAL index (and its own checks at
/// every segment size), pins, expire records, marks, drill records,
/// leases, WAL conflict records and audit records (and their keys).
fn records(data: &[u8]) {
    use crate::format::{audit, conflict, drill, lease, mark, retention, wal_index};
    if let Some(index) = round_trip::<wal_index::WalIndex>(data, "index/wal.json") {
        for size in SEGMENT_SIZES_BYTES {
            let _ = index.check(size);
        }
    }
    round_trip::<retention::Pin>(data, "a pin");
    round_trip::<retention::ExpireRecord>(data, "an expire record");
    if let Some(m) = round_trip::<mark::Mark>(data, "a mark") {
        let _ = mark::validate_name(&m.name);
    }
    round_trip::<drill::DrillRecord>(data, "a drill record");
    round_trip::<lease::Lease>(data, "a lease");
    round_trip::<conflict::WalConflict>(data, "a WAL conflict record");
    if let Some(r) = round_trip::<audit::AuditRecord>(data, "an audit record") {
        let _ = r.validate();
    }
    if let Ok(key) = std::str::from_utf8(data) {
        let _ = layout::audit_key_parts(key);
    }
}

/// The configuration file, read and applied to every command: never a
/// panic, and a key it holds never shows in the error.
fn configuration(text: &str) {
    if let Err(e) = crate::cli::parse::check_config_text(text) {
        let shown = format!("{e} {e:?}");
        for line in text.lines() {
            if let Some((name, value)) = line.split_once('=')
                && name.trim() == "key"
            {
                let value = value.trim().trim_matches('"');
                if value.len() >= 16 {
                    assert!(!shown.contains(value), "a key shows in an error: {shown}");
                }
            }
        }
    }
}

/// The password file: a lookup never panics, and a password found is one
/// line's last field.
fn password_file(text: &str) {
    use crate::protocol::passfile::lookup;
    for (host, port, database, user) in [
        ("localhost", "5432", "replication", "walvault"),
        ("db.example", "6432", "postgres", "u:x"),
        ("/run/postgresql", "5432", "replication", "*"),
    ] {
        if let Some(password) = lookup(text, host, port, database, user) {
            assert!(
                !password.contains('\n'),
                "a password spans lines: {password:?}"
            );
        }
    }
}

fn backup_metadata(data: &[u8]) {
    if let Ok(meta) = serde_json::from_slice::<BackupMetadata>(data) {
        let text = serde_json::to_string(&meta).expect("backup.json serializes");
        let again: BackupMetadata = serde_json::from_str(&text).expect("backup.json re-parses");
        assert_eq!(again, meta, "backup.json changed in a round trip");
        let text_again = serde_json::to_string(&again).expect("backup.json serializes");
        assert_eq!(text, text_again, "backup.json does not serialize stably");
        let pretty = serde_json::to_vec_pretty(&meta).expect("backup.json serializes");
        let from_pretty: BackupMetadata =
            serde_json::from_slice(&pretty).expect("stored backup.json re-parses");
        assert_eq!(
            from_pretty, meta,
            "stored backup.json changed in a round trip"
        );
    }
}

fn repository_manifest(data: &[u8]) {
    if let Ok(manifest) = serde_json::from_slice::<RepositoryManifest>(data) {
        let text = serde_json::to_string(&manifest).expect("walvault.json serializes");
        let again: RepositoryManifest =
            serde_json::from_str(&text).expect("walvault.json re-parses");
        assert_eq!(again, manifest, "walvault.json changed in a round trip");
        assert_eq!(
            text,
            serde_json::to_string(&again).expect("walvault.json serializes"),
            "walvault.json does not serialize stably"
        );
        let pretty = serde_json::to_vec_pretty(&manifest).expect("walvault.json serializes");
        let from_pretty: RepositoryManifest =
            serde_json::from_slice(&pretty).expect("stored walvault.json re-parses");
        assert_eq!(from_pretty, manifest);
        let _ = manifest.check_keys(&[MasterKey::from_bytes(FUZZ_KEY_BYTES).id()]);
        let _ = manifest.check_server("7300000000000000001", 16 << 20);
    }
}

fn repository_settings(data: &[u8]) {
    // Read-only: walvault never writes this file, so only parsing is checked.
    if let Ok(settings) = serde_json::from_slice::<RepositoryConfigFile>(data)
        && let Some(key) = &settings.key
    {
        let _ = Keyring::from_key_file_text(key, "repository settings file");
    }
}

fn server_manifest(data: &[u8]) {
    let Ok(files) = parse_server_manifest(data) else {
        return;
    };
    // Written back the way PostgreSQL writes it, the manifest lists the same files.
    let entries: Vec<serde_json::Value> = files
        .iter()
        .map(|file| {
            let mut entry = serde_json::json!({ "Path": file.path, "Size": file.size });
            if let Some(crc) = &file.crc32c {
                entry["Checksum-Algorithm"] = "CRC32C".into();
                entry["Checksum"] = crc.as_str().into();
            }
            entry
        })
        .collect();
    let document = serde_json::json!({
        "PostgreSQL-Backup-Manifest-Version": 1,
        "Files": entries,
    });
    let bytes = serde_json::to_vec(&document).expect("manifest serializes");
    let again = parse_server_manifest(&bytes).expect("a written manifest parses");
    assert_eq!(again, files, "backup_manifest changed in a round trip");
}

fn timeline_history(text: &str) {
    let Ok(history) = parse_history(text) else {
        return;
    };
    let written: String = history
        .iter()
        .map(|e| {
            format!(
                "{}\t{}\tno recovery target specified\n",
                e.timeline, e.switch_lsn
            )
        })
        .collect();
    let again = parse_history(&written).expect("a written history parses");
    assert_eq!(again, history, "history changed in a round trip");

    // Following the history from any of its switch points ends, on a
    // timeline no older than the one it started from.
    let current = history
        .iter()
        .map(|e| e.timeline)
        .max()
        .map_or(crate::lsn::TimelineId::FIRST, |t| t.next().unwrap_or(t));
    for entry in history.iter().take(8) {
        for lsn in [Lsn::INVALID, entry.switch_lsn, Lsn(u64::MAX)] {
            let (timeline, _, _) = follow_history(&history, current, entry.timeline, lsn, 16 << 20);
            assert!(timeline >= entry.timeline, "went back to an older timeline");
        }
    }
}

fn key_file(text: &str) {
    if let Ok(ring) = Keyring::from_key_file_text(text, "key file") {
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        assert_eq!(ring.ids().len(), keys, "a key line was lost");
        assert_eq!(
            ring.write_key().map(MasterKey::id),
            ring.ids().first().copied()
        );
    }
}

fn wal_names(text: &str, segment_size_bytes: u64) {
    if let Some(object) = layout::parse_wal_key(text, segment_size_bytes) {
        let key = wal_object_key(&object, segment_size_bytes);
        assert_eq!(
            layout::parse_wal_key(&key, segment_size_bytes),
            Some(object),
            "{key} does not parse back"
        );
    }
    if let Ok(name) = WalFileName::parse(text, segment_size_bytes) {
        let file_name = match name {
            WalFileName::Segment(segment) => segment.to_file_name(segment_size_bytes),
            WalFileName::History(timeline) => crate::lsn::history_file_name(timeline),
        };
        assert_eq!(
            WalFileName::parse(&file_name, segment_size_bytes),
            Ok(name),
            "{file_name} does not parse back"
        );
    }
    if let Ok(segment) = SegmentName::parse(text, segment_size_bytes) {
        let start = segment.start_lsn(segment_size_bytes);
        assert_eq!(
            SegmentName::from_lsn(segment.timeline, start, segment_size_bytes),
            segment
        );
    }
}

fn wal_object_key(object: &WalObject, segment_size_bytes: u64) -> String {
    match *object {
        WalObject::Segment { segment } => layout::segment_key(segment, segment_size_bytes),
        WalObject::Delta {
            segment,
            start,
            end,
        } => layout::delta_key(segment, start, end, segment_size_bytes),
        WalObject::History { timeline } => layout::history_key(timeline),
    }
}
