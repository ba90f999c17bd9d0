//! Object keys: the only place that builds or parses them.
//!
//! ```text
//! walvault.json                                    repository identity
//! wal/{tli:08X}/{segment}                          a complete WAL segment
//! wal/{tli:08X}/{segment}.d/{start:08X}-{end:08X}  bytes [start,end) of an open segment
//! wal/{tli:08X}.history                            timeline history file
//! backups/{id}/data/{tablespace}/{n:06}            base-backup tar stream, in parts
//! backups/{id}/backup_manifest                     the server's backup manifest
//! backups/{id}/backup.json                         backup metadata, written last
//! backups/{id}/heartbeat/{n:08}                    a running backup's heartbeat
//! retention/pins/{id}.json                         a pinned backup (`walvault keep`)
//! retention/expire/{seq:010}                       an expire run and the retention floor
//! marks/{name}.json                                a named restore point (`walvault mark`)
//! drills/{id}.json                                 a restore drill's record
//! ```

use crate::lsn::{SegmentName, TimelineId};

/// The repository identity document.
pub const REPOSITORY_MANIFEST: &str = "walvault.json";
/// The prefix of all WAL objects.
pub const WAL_PREFIX: &str = "wal/";

/// The prefix of probe objects (written and deleted again to learn what
/// the store does).
pub const PROBE_PREFIX: &str = "probe/";

/// The prefix of all backups.
pub const BACKUPS_PREFIX: &str = "backups/";

/// The prefix of pins (`walvault keep`).
pub const PINS_PREFIX: &str = "retention/pins/";

/// The prefix of drill records.
pub const DRILLS_PREFIX: &str = "drills/";

/// The key of a drill record (`id` is its UTC end time, `YYYYMMDDTHHMMSSZ`).
pub fn drill_key(id: &str) -> String {
    format!("{DRILLS_PREFIX}{id}.json")
}

/// The id of a drill record's key (`drills/{id}.json`).
pub fn drill_id(key: &str) -> Option<&str> {
    key.strip_prefix(DRILLS_PREFIX)?.strip_suffix(".json")
}

/// The prefix of the WAL writer's lease: `{holder}.json` (the holder,
/// written once) and `{holder}.alive` (its heartbeat, rewritten).
pub const LEASE_PREFIX: &str = "leases/stream/";

/// The lease document of `holder`.
pub fn lease_key(holder: &str) -> String {
    format!("{LEASE_PREFIX}{holder}.json")
}

/// The heartbeat of `holder`'s lease: its store time is the lease's age.
pub fn lease_heartbeat_key(holder: &str) -> String {
    format!("{LEASE_PREFIX}{holder}.alive")
}

/// The holder of a lease key (`.json` or `.alive`), and which of the two it is.
pub fn lease_holder(key: &str) -> Option<(&str, bool)> {
    let rest = key.strip_prefix(LEASE_PREFIX)?;
    if let Some(h) = rest.strip_suffix(".json") {
        return Some((h, true));
    }
    rest.strip_suffix(".alive").map(|h| (h, false))
}

/// The prefix of WAL conflict records (`format::conflict`).
pub const CONFLICTS_PREFIX: &str = "conflicts/wal/";

/// The key of a WAL conflict record: its time (`YYYYMMDDTHHMMSSZ`, so keys
/// sort by time) and a random suffix.
pub fn conflict_key(at: &chrono::DateTime<chrono::Utc>, suffix: u64) -> String {
    format!(
        "{CONFLICTS_PREFIX}{}-{suffix:016x}.json",
        at.format("%Y%m%dT%H%M%SZ")
    )
}

/// The prefix of audit records (`format::audit`).
pub const AUDIT_PREFIX: &str = "log/";

/// The key of an audit record: its time to the millisecond
/// (`YYYYMMDDTHHMMSS.mmmZ`, so keys sort in the order operations ended,
/// several in one second included), its operation (so a reader picks
/// records without opening them) and a random suffix.
pub fn audit_key(at: &chrono::DateTime<chrono::Utc>, operation: &str, suffix: u64) -> String {
    format!(
        "{AUDIT_PREFIX}{}-{operation}-{suffix:016x}.json",
        at.format("%Y%m%dT%H%M%S%.3fZ")
    )
}

/// The time stamp and operation in an audit record's key.
pub fn audit_key_parts(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(AUDIT_PREFIX)?.strip_suffix(".json")?;
    let (stamp, rest) = rest.split_once('-')?;
    let (operation, suffix) = rest.rsplit_once('-')?;
    (stamp.len() == 20 && suffix.len() == 16).then_some((stamp, operation))
}

/// The prefix of marks.
pub const MARKS_PREFIX: &str = "marks/";

/// The key of a mark (the name is checked by `format::mark::validate_name`).
pub fn mark_key(name: &str) -> String {
    format!("{MARKS_PREFIX}{name}.json")
}

/// The prefix of expire records.
pub const EXPIRE_PREFIX: &str = "retention/expire/";

/// The key of a backup's pin.
pub fn pin_key(id: &str) -> String {
    format!("{PINS_PREFIX}{id}.json")
}

/// The backup id a pin key names.
pub fn pin_backup_id(key: &str) -> Option<&str> {
    key.strip_prefix(PINS_PREFIX)?
        .strip_suffix(".json")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// The WAL index: a cache of `wal/` for `list`, replaced by each expire run.
pub const WAL_INDEX: &str = "index/wal.json";

/// The key of expire record number `seq` (the highest is the newest).
pub fn expire_record_key(seq: u64) -> String {
    format!("{EXPIRE_PREFIX}{seq:010}")
}

/// The number of an expire record key.
pub fn expire_record_seq(key: &str) -> Option<u64> {
    let digits = key.strip_prefix(EXPIRE_PREFIX)?;
    (digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The prefix of one backup's objects.
pub fn backup_prefix(id: &str) -> String {
    format!("backups/{id}/")
}

/// The key of one part of a tablespace's tar stream (`base` or the tablespace OID).
pub fn backup_part_key(id: &str, tablespace: &str, index: u32) -> String {
    format!("backups/{id}/data/{tablespace}/{index:06}")
}

/// The key of the server's backup manifest.
pub fn backup_manifest_key(id: &str) -> String {
    format!("backups/{id}/backup_manifest")
}

/// The key of a running backup's heartbeat number `n`: a backup without
/// `backup.json` whose objects (heartbeats included) are all old is dead.
pub fn backup_heartbeat_key(id: &str, n: u64) -> String {
    format!("backups/{id}/heartbeat/{n:08}")
}

/// The key of the backup metadata; a backup exists if and only if it does.
pub fn backup_json_key(id: &str) -> String {
    format!("backups/{id}/backup.json")
}

/// The backup id a key belongs to, if it is under `backups/`.
pub fn backup_id_of(key: &str) -> Option<&str> {
    key.strip_prefix(BACKUPS_PREFIX)?
        .split('/')
        .next()
        .filter(|id| !id.is_empty())
}

/// Ids made from a time taken more than once in its second: `base`, then
/// `base-01` to `base-99`, which sort after it and in order.
pub const SAME_SECOND_IDS: u32 = 100;

/// The `n`th id made from `base` (see [`SAME_SECOND_IDS`]).
pub fn numbered_id(base: &str, n: u32) -> String {
    if n == 0 {
        base.to_string()
    } else {
        format!("{base}-{n:02}")
    }
}

/// A WAL object in the repository, as its key describes it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WalObject {
    /// A complete segment.
    Segment {
        /// Timeline and number.
        segment: SegmentName,
    },
    /// Bytes `[start, end)` of a segment that was not complete when stored.
    Delta {
        /// Timeline and number.
        segment: SegmentName,
        /// First byte offset inside the segment.
        start: u64,
        /// One past the last byte offset.
        end: u64,
    },
    /// A timeline history file.
    History {
        /// The timeline the file describes.
        timeline: TimelineId,
    },
}

/// The key of a complete segment.
pub fn segment_key(segment: SegmentName, segment_size_bytes: u64) -> String {
    format!(
        "wal/{:08X}/{}",
        segment.timeline,
        segment.to_file_name(segment_size_bytes)
    )
}

/// The key prefix under which a segment's deltas live.
pub fn delta_prefix(segment: SegmentName, segment_size_bytes: u64) -> String {
    format!("{}.d/", segment_key(segment, segment_size_bytes))
}

/// The key of a delta object.
pub fn delta_key(segment: SegmentName, start: u64, end: u64, segment_size_bytes: u64) -> String {
    format!(
        "{}{start:08X}-{end:08X}",
        delta_prefix(segment, segment_size_bytes)
    )
}

/// The key of a timeline history file.
pub fn history_key(timeline: TimelineId) -> String {
    format!("wal/{timeline:08X}.history")
}

/// The timeline of a folder of WAL objects (`wal/00000002/`), as a
/// delimited listing of [`WAL_PREFIX`] gives it.
pub fn wal_folder_timeline(folder: &str) -> Option<TimelineId> {
    folder
        .strip_prefix(WAL_PREFIX)
        .and_then(|t| t.strip_suffix('/'))
        .and_then(|t| TimelineId::from_hex(t).ok())
}

/// Parses a WAL object key (relative to the repository prefix).
pub fn parse_wal_key(key: &str, segment_size_bytes: u64) -> Option<WalObject> {
    let rest = key.strip_prefix(WAL_PREFIX)?;
    if let Some(tli) = rest.strip_suffix(".history") {
        let timeline = TimelineId::from_hex(tli).ok()?;
        return Some(WalObject::History { timeline });
    }
    let (tli_dir, name) = rest.split_once('/')?;
    let timeline = TimelineId::from_hex(tli_dir).ok()?;
    if let Some((seg, range)) = name.split_once(".d/") {
        let segment = SegmentName::parse(seg, segment_size_bytes).ok()?;
        let (start, end) = range.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        if segment.timeline != timeline || start >= end || end > segment_size_bytes {
            return None;
        }
        return Some(WalObject::Delta {
            segment,
            start,
            end,
        });
    }
    let segment = SegmentName::parse(name, segment_size_bytes).ok()?;
    (segment.timeline == timeline).then_some(WalObject::Segment { segment })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SZ: u64 = 16 << 20;

    #[test]
    fn keys_round_trip() {
        let seg = SegmentName {
            timeline: TimelineId::new(2).unwrap(),
            number: 0x1_03,
        };
        assert_eq!(
            segment_key(seg, SZ),
            "wal/00000002/000000020000000100000003"
        );
        assert_eq!(
            delta_key(seg, 0, 0x2000, SZ),
            "wal/00000002/000000020000000100000003.d/00000000-00002000"
        );
        assert_eq!(
            history_key(TimelineId::new(3).unwrap()),
            "wal/00000003.history"
        );
        assert_eq!(
            parse_wal_key(&segment_key(seg, SZ), SZ),
            Some(WalObject::Segment { segment: seg })
        );
        assert_eq!(
            parse_wal_key(&delta_key(seg, 16, 0x2000, SZ), SZ),
            Some(WalObject::Delta {
                segment: seg,
                start: 16,
                end: 0x2000
            })
        );
        assert_eq!(
            parse_wal_key("wal/00000003.history", SZ),
            Some(WalObject::History {
                timeline: TimelineId::new(3).unwrap()
            })
        );
        assert_eq!(parse_wal_key("wal/00000001/junk", SZ), None);
        assert_eq!(
            parse_wal_key("wal/00000001/000000020000000100000003", SZ),
            None
        );
    }
}
