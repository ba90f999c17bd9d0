//! What retention stores: pins (`walvault keep`) and the record of each
//! expire run, which carries the retention floor.
//!
//! The floor is the LSN below which WAL is absent by design: expire removed
//! it. Gap checks (`list`, `verify`, the stream's resume point) start there,
//! so what retention removed is never taken for a lost upload. Both documents
//! are sealed and bound to their keys like every object; deleting one can
//! only make gaps louder or a backup unpinned, never hide data.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;

/// The pin document version this code writes.
pub const PIN_VERSION: u32 = 1;
/// The expire record version this code writes.
pub const EXPIRE_RECORD_VERSION: u32 = 1;

/// A pinned backup: no retention policy removes it while the pin holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// Format version.
    pub version: u32,
    /// The backup pinned.
    pub backup_id: String,
    /// Why, in the operator's words.
    pub reason: Option<String>,
    /// When the pin was set.
    #[serde(with = "super::time")]
    pub created: DateTime<Utc>,
    /// When the pin lapses (`None`: never).
    #[serde(default, with = "optional_time")]
    pub until: Option<DateTime<Utc>>,
}

impl Pin {
    /// Whether the pin still holds at `now`.
    pub fn holds_at(&self, now: DateTime<Utc>) -> bool {
        self.until.is_none_or(|u| now < u)
    }
}

/// The retention settings an expire run applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRecord {
    /// Newest full backups kept.
    pub full: Option<u32>,
    /// Recovery window in seconds.
    pub window_seconds: Option<u64>,
    /// Daily backups kept.
    pub daily: Option<u32>,
    /// Weekly backups kept.
    pub weekly: Option<u32>,
    /// Monthly backups kept.
    pub monthly: Option<u32>,
    /// Yearly backups kept.
    pub yearly: Option<u32>,
}

/// One expire run, stored at `retention/expire/{seq}`; the newest wins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpireRecord {
    /// Format version.
    pub version: u32,
    /// When the run decided.
    #[serde(with = "super::time")]
    pub time: DateTime<Utc>,
    /// The policy applied.
    pub policy: PolicyRecord,
    /// WAL below this LSN was removed except for kept backups' own ranges;
    /// never lower than an earlier record's floor.
    pub floor_lsn: Option<Lsn>,
    /// Backups removed by this run.
    pub removed_backups: Vec<String>,
    /// WAL objects removed by this run.
    pub removed_wal_objects: u64,
    /// Stored bytes removed by this run.
    pub removed_bytes: u64,
}

mod optional_time {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&super::super::time::to_text(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        super::super::time::from_text(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_round_trip_and_lapse() {
        let created = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let pin = Pin {
            version: PIN_VERSION,
            backup_id: "20260102T030405Z".into(),
            reason: Some("before the v2 migration".into()),
            created,
            until: Some(created + chrono::Duration::days(30)),
        };
        let text = serde_json::to_string(&pin).unwrap();
        assert!(text.contains(r#""until":"2026-02-01T03:04:05Z""#), "{text}");
        assert_eq!(serde_json::from_str::<Pin>(&text).unwrap(), pin);
        assert!(pin.holds_at(created));
        assert!(!pin.holds_at(created + chrono::Duration::days(30)));
        let forever = Pin { until: None, ..pin };
        assert!(forever.holds_at(created + chrono::Duration::days(3650)));
        let bad = text.replace("2026-02-01T03:04:05Z", "soon");
        assert!(serde_json::from_str::<Pin>(&bad).is_err());
    }
}
