//! The WAL index: what an expire run saw in `wal/`, after its deletions,
//! so `list` reads one document instead of every WAL object.
//!
//! It is a cache, written by expire beside its record and valid only with
//! that record (same `expire_seq`): an index older than the newest expire
//! record is ignored. Per timeline it covers the keys up to and including
//! segment `through` and its deltas; `list` lists the rest. Restore, verify,
//! expire and the stream never read it: they list the store.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The index version this code writes.
pub const WAL_INDEX_VERSION: u32 = 1;

/// `index/wal.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalIndex {
    /// Format version.
    pub version: u32,
    /// The expire record written by the same run.
    pub expire_seq: u64,
    /// When the run listed `wal/`.
    #[serde(with = "super::time")]
    pub time: DateTime<Utc>,
    /// The repository's WAL segment size.
    pub wal_segment_size: u64,
    /// Per timeline, oldest first.
    pub timelines: Vec<TimelineIndex>,
}

/// One timeline's objects up to `through`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineIndex {
    /// Timeline id.
    pub timeline: u32,
    /// The last segment number covered: keys of later segments are listed.
    pub through: u64,
    /// Complete segments, as inclusive runs `[first, last]` of numbers.
    pub complete: Vec<(u64, u64)>,
    /// Delta objects of covered segments: `[segment, start, end]`.
    pub deltas: Vec<(u64, u64, u64)>,
    /// Stored bytes of the covered objects.
    pub stored_bytes: u64,
}

impl WalIndex {
    /// Checks what parsing cannot: runs and deltas in order, inside
    /// `through`, and one entry per timeline.
    ///
    /// # Errors
    /// What is wrong, in words.
    pub fn check(&self, segment_size_bytes: u64) -> Result<(), String> {
        if self.version != WAL_INDEX_VERSION {
            return Err(format!(
                "version {} (this walvault reads {WAL_INDEX_VERSION})",
                self.version
            ));
        }
        if self.wal_segment_size != segment_size_bytes {
            return Err(format!(
                "it is for {}-byte segments, the repository has {segment_size_bytes}",
                self.wal_segment_size
            ));
        }
        let mut previous = 0;
        for t in &self.timelines {
            if t.timeline <= previous {
                return Err(format!("timeline {} out of order", t.timeline));
            }
            previous = t.timeline;
            let mut next = 0;
            for &(first, last) in &t.complete {
                if first < next || last < first || last > t.through {
                    return Err(format!(
                        "timeline {}: run {first}..{last} out of order or past {}",
                        t.timeline, t.through
                    ));
                }
                next = last + 2;
            }
            for &(segment, start, end) in &t.deltas {
                if segment > t.through || start >= end || end > segment_size_bytes {
                    return Err(format!(
                        "timeline {}: delta {segment} {start}..{end} out of range",
                        t.timeline
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> WalIndex {
        WalIndex {
            version: WAL_INDEX_VERSION,
            expire_seq: 3,
            time: DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
                .unwrap()
                .with_timezone(&Utc),
            wal_segment_size: 16,
            timelines: vec![TimelineIndex {
                timeline: 1,
                through: 20,
                complete: vec![(2, 5), (7, 20)],
                deltas: vec![(6, 0, 8)],
                stored_bytes: 1000,
            }],
        }
    }

    #[test]
    fn round_trips_and_checks() {
        let ix = index();
        let text = serde_json::to_string(&ix).unwrap();
        assert_eq!(serde_json::from_str::<WalIndex>(&text).unwrap(), ix);
        assert_eq!(ix.check(16), Ok(()));
        assert!(ix.check(32).unwrap_err().contains("16-byte segments"));
        let mut bad = ix.clone();
        bad.timelines[0].complete = vec![(7, 20), (2, 5)];
        assert!(bad.check(16).unwrap_err().contains("out of order"));
        let mut bad = ix.clone();
        bad.timelines[0].complete.push((22, 22));
        assert!(bad.check(16).is_err());
        let mut bad = ix.clone();
        bad.timelines[0].deltas = vec![(6, 4, 17)];
        assert!(bad.check(16).unwrap_err().contains("delta"));
        let mut bad = ix;
        bad.version = 2;
        assert!(bad.check(16).unwrap_err().contains("version 2"));
        assert!(
            serde_json::from_str::<WalIndex>(&text.replace("\"through\"", "\"thru\"")).is_err()
        );
    }
}
