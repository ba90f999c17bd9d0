//! Retention, pure: which backups a policy keeps, and which WAL objects
//! nobody needs any more. Facts in, decisions out; no store, no clock.
//!
//! The rules, in the order an operator asks about them:
//! - Policies add up: a backup is kept if any policy (or a pin) keeps it.
//! - Only restorable backups (their WAL range is whole in the archive) count
//!   toward a policy. The newest restorable backup is always kept, and so is
//!   every backup newer than it (restorable or not: nothing is removed that
//!   might be the operator's only newer copy). With no restorable backup,
//!   nothing is removed at all.
//! - `full N` keeps the newest N; the window keeps every backup that stopped
//!   inside it and the newest one that stopped before it (the window's start
//!   is restored from that one); daily/weekly/monthly/yearly N keep the
//!   newest backup of each of the newest N days (weeks, months, years) that
//!   have one, by the backup's stop time in UTC.
//! - Point-in-time recovery stays possible from the oldest backup kept by
//!   `full`, the window or as the newest: that backup's start is the WAL
//!   *horizon*. WAL from the horizon on is kept on every timeline. Below it,
//!   a kept backup (GFS, pinned) keeps only the WAL range it needs to be
//!   consistent. History files are never removed.
//! - A delta of a segment that is also stored whole is superseded and goes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::format::retention::{Pin, PolicyRecord};
use crate::lsn::{Lsn, SegmentName, TimelineId};
use crate::storage::layout::WalObject;

/// What to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep the newest N full backups (and the WAL to recover from the oldest).
    pub full: Option<u32>,
    /// Keep every moment of this last span restorable.
    pub window: Option<Duration>,
    /// Keep the newest backup of each of the newest N days that have one.
    pub daily: Option<u32>,
    /// The same per ISO week.
    pub weekly: Option<u32>,
    /// The same per calendar month.
    pub monthly: Option<u32>,
    /// The same per year.
    pub yearly: Option<u32>,
}

impl Policy {
    /// Whether no policy is set (expire then refuses to run).
    pub fn is_empty(&self) -> bool {
        *self == Policy::default()
    }

    /// The form stored in expire records.
    pub fn to_record(&self) -> PolicyRecord {
        PolicyRecord {
            full: self.full,
            window_seconds: self.window.map(|w| w.as_secs()),
            daily: self.daily,
            weekly: self.weekly,
            monthly: self.monthly,
            yearly: self.yearly,
        }
    }
}

/// What retention needs to know of one backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupFacts {
    /// Backup id (sorts by start time).
    pub id: String,
    /// When the backup became restorable (its stop time).
    pub stop_time: DateTime<Utc>,
    /// The backup's start LSN (its WAL range starts here).
    pub start_lsn: Lsn,
    /// First and last segment of its WAL range.
    pub first_segment: SegmentName,
    /// Last segment of its WAL range.
    pub last_segment: SegmentName,
    /// Whether its WAL range is whole in the archive.
    pub restorable: bool,
}

/// Why a backup is kept.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// The newest restorable backup.
    Newest,
    /// Newer than every restorable backup.
    NewerThanRestorable,
    /// One of the newest `full` backups.
    Full,
    /// Inside the recovery window, or the base of its start.
    Window,
    /// The newest of its day (`YYYY-MM-DD`).
    Daily(String),
    /// The newest of its ISO week (`YYYY-Www`).
    Weekly(String),
    /// The newest of its month (`YYYY-MM`).
    Monthly(String),
    /// The newest of its year.
    Yearly(String),
    /// Pinned, with the pin's reason.
    Pinned(Option<String>),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Newest => write!(f, "newest restorable backup"),
            Reason::NewerThanRestorable => write!(f, "newer than every restorable backup"),
            Reason::Full => write!(f, "full"),
            Reason::Window => write!(f, "recovery window"),
            Reason::Daily(p) => write!(f, "daily {p}"),
            Reason::Weekly(p) => write!(f, "weekly {p}"),
            Reason::Monthly(p) => write!(f, "monthly {p}"),
            Reason::Yearly(p) => write!(f, "yearly {p}"),
            Reason::Pinned(Some(r)) => write!(f, "pinned: {r}"),
            Reason::Pinned(None) => write!(f, "pinned"),
        }
    }
}

impl Reason {
    /// Whether the reason keeps point-in-time recovery from this backup on.
    pub fn keeps_recovery(&self) -> bool {
        matches!(
            self,
            Reason::Newest | Reason::NewerThanRestorable | Reason::Full | Reason::Window
        )
    }
}

/// Which backups stay and which go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Kept backups with every reason that keeps them.
    pub keep: BTreeMap<String, Vec<Reason>>,
    /// Backups to remove, oldest first.
    pub remove: Vec<String>,
    /// WAL from here on is kept on every timeline (`None`: keep all WAL).
    pub horizon: Option<Lsn>,
}

/// A GFS level: how many periods, the period of a time, the reason.
type GfsRule = (
    Option<u32>,
    fn(&DateTime<Utc>) -> String,
    fn(String) -> Reason,
);

/// Applies `policy` at `now` to `backups` (any order) and the pins that hold.
pub fn decide(
    backups: &[BackupFacts],
    pins: &[Pin],
    policy: &Policy,
    now: DateTime<Utc>,
) -> Decision {
    let mut sorted: Vec<&BackupFacts> = backups.iter().collect();
    sorted.sort_by(|a, b| (a.stop_time, &a.id).cmp(&(b.stop_time, &b.id)));
    let mut keep: BTreeMap<String, Vec<Reason>> = BTreeMap::new();
    let mut add = |id: &str, r: Reason| keep.entry(id.to_string()).or_default().push(r);

    let restorable: Vec<&BackupFacts> = sorted.iter().copied().filter(|b| b.restorable).collect();
    let Some(newest) = restorable.last() else {
        // Nothing restorable: remove nothing.
        return Decision {
            keep: sorted
                .iter()
                .map(|b| (b.id.clone(), vec![Reason::NewerThanRestorable]))
                .collect(),
            remove: Vec::new(),
            horizon: None,
        };
    };
    add(&newest.id, Reason::Newest);
    for b in sorted.iter().filter(|b| b.stop_time > newest.stop_time) {
        add(&b.id, Reason::NewerThanRestorable);
    }
    if let Some(n) = policy.full {
        for b in restorable.iter().rev().take(n as usize) {
            add(&b.id, Reason::Full);
        }
    }
    if let Some(window) = policy.window {
        let start = now - chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
        // Stop times are whole seconds, cut down: the base must have ended
        // a full second before the window starts.
        let ended_before = |b: &&&BackupFacts| b.stop_time + chrono::Duration::seconds(1) <= start;
        let inside = restorable.iter().filter(|b| !ended_before(b));
        let base = restorable.iter().rev().find(ended_before);
        for b in inside.chain(base) {
            add(&b.id, Reason::Window);
        }
    }
    let periods: [GfsRule; 4] = [
        (
            policy.daily,
            |t| t.format("%Y-%m-%d").to_string(),
            Reason::Daily,
        ),
        (
            policy.weekly,
            |t| t.format("%G-W%V").to_string(),
            Reason::Weekly,
        ),
        (
            policy.monthly,
            |t| t.format("%Y-%m").to_string(),
            Reason::Monthly,
        ),
        (
            policy.yearly,
            |t| t.format("%Y").to_string(),
            Reason::Yearly,
        ),
    ];
    for (count, period, reason) in periods {
        let Some(count) = count else { continue };
        let mut seen = BTreeSet::new();
        for b in restorable.iter().rev() {
            let p = period(&b.stop_time);
            if seen.len() == count as usize && !seen.contains(&p) {
                break;
            }
            if seen.insert(p.clone()) {
                add(&b.id, reason(p));
            }
        }
    }
    for pin in pins.iter().filter(|p| p.holds_at(now)) {
        if sorted.iter().any(|b| b.id == pin.backup_id) {
            add(&pin.backup_id, Reason::Pinned(pin.reason.clone()));
        }
    }
    for reasons in keep.values_mut() {
        reasons.sort();
        reasons.dedup();
    }
    let horizon = sorted
        .iter()
        .filter(|b| {
            keep.get(&b.id)
                .is_some_and(|r| r.iter().any(Reason::keeps_recovery))
        })
        .map(|b| b.start_lsn)
        .min();
    let remove = sorted
        .iter()
        .filter(|b| !keep.contains_key(&b.id))
        .map(|b| b.id.clone())
        .collect();
    Decision {
        keep,
        remove,
        horizon,
    }
}

/// Why a WAL object goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalRemoval {
    /// Below the horizon and outside every kept backup's range.
    BelowHorizon,
    /// A delta of a segment that is stored whole.
    Superseded,
}

/// The WAL objects (key, parsed) that go, given the kept backups' facts
/// and the horizon. `complete` holds every segment stored whole.
pub fn wal_to_remove<'a>(
    objects: &'a [(String, WalObject)],
    kept: &[&BackupFacts],
    horizon: Option<Lsn>,
    segment_size_bytes: u64,
) -> Vec<(&'a str, WalRemoval)> {
    let complete: BTreeSet<SegmentName> = objects
        .iter()
        .filter_map(|(_, o)| match o {
            WalObject::Segment { segment } => Some(*segment),
            _ => None,
        })
        .collect();
    let needed = |s: SegmentName| {
        horizon.is_none_or(|h| s.number >= h.segment_number(segment_size_bytes))
            || kept.iter().any(|b| in_range(s, b))
    };
    objects
        .iter()
        .filter_map(|(key, o)| {
            let why = match o {
                WalObject::History { .. } => return None,
                WalObject::Delta { segment, .. } if complete.contains(segment) => {
                    WalRemoval::Superseded
                }
                WalObject::Delta { segment, .. } | WalObject::Segment { segment } => {
                    if needed(*segment) {
                        return None;
                    }
                    WalRemoval::BelowHorizon
                }
            };
            Some((key.as_str(), why))
        })
        .collect()
}

fn in_range(s: SegmentName, b: &BackupFacts) -> bool {
    let on = |t: TimelineId| s.timeline == t;
    (on(b.first_segment.timeline) || on(b.last_segment.timeline))
        && b.first_segment.number <= s.number
        && s.number <= b.last_segment.number
}

#[cfg(test)]
mod tests {
    use super::*;

    const SZ: u64 = 16;

    fn t(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn seg(tli: u32, n: u64) -> SegmentName {
        SegmentName {
            timeline: TimelineId::new(tli).unwrap(),
            number: n,
        }
    }

    /// A backup per entry: (id, stop time), each on its own segment.
    fn backups(specs: &[(&str, &str)]) -> Vec<BackupFacts> {
        specs
            .iter()
            .enumerate()
            .map(|(i, (id, stop))| BackupFacts {
                id: (*id).to_string(),
                stop_time: t(stop),
                start_lsn: Lsn(10 * i as u64 * SZ),
                first_segment: seg(1, 10 * i as u64),
                last_segment: seg(1, 10 * i as u64 + 1),
                restorable: true,
            })
            .collect()
    }

    fn kept(d: &Decision) -> Vec<&str> {
        d.keep.keys().map(String::as_str).collect()
    }

    /// One backup a day at 03:00 for 60 days from 2026-01-01.
    fn daily_backups() -> Vec<BackupFacts> {
        let start = t("2026-01-01T03:00:00Z");
        let specs: Vec<(String, String)> = (0..60)
            .map(|d| {
                let at = start + chrono::Duration::days(d);
                (at.format("%Y%m%dT%H%M%SZ").to_string(), at.to_rfc3339())
            })
            .collect();
        let refs: Vec<(&str, &str)> = specs
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        backups(&refs)
    }

    #[test]
    fn full_keeps_the_newest_n_and_sets_the_horizon() {
        let b = backups(&[
            ("a", "2026-01-01T00:00:00Z"),
            ("b", "2026-01-02T00:00:00Z"),
            ("c", "2026-01-03T00:00:00Z"),
        ]);
        let p = Policy {
            full: Some(2),
            ..Default::default()
        };
        let d = decide(&b, &[], &p, t("2026-01-04T00:00:00Z"));
        assert_eq!(kept(&d), ["b", "c"]);
        assert_eq!(d.remove, ["a"]);
        assert_eq!(d.horizon, Some(b[1].start_lsn));
        assert_eq!(d.keep["c"], [Reason::Newest, Reason::Full]);
    }

    #[test]
    fn the_window_keeps_its_base_backup() {
        let b = backups(&[
            ("a", "2026-01-01T00:00:00Z"),
            ("b", "2026-01-02T00:00:00Z"),
            ("c", "2026-01-03T00:00:00Z"),
            ("d", "2026-01-04T00:00:00Z"),
        ]);
        let p = Policy {
            window: Some(Duration::from_secs(36 * 3600)),
            ..Default::default()
        };
        // Window starts 2026-01-03T12:00: d is inside, c restores its start.
        let d = decide(&b, &[], &p, t("2026-01-05T00:00:00Z"));
        assert_eq!(kept(&d), ["c", "d"]);
        assert_eq!(d.horizon, Some(b[2].start_lsn));
        // A window longer than the history keeps everything.
        let p = Policy {
            window: Some(Duration::from_secs(3650 * 86400)),
            ..Default::default()
        };
        let d = decide(&b, &[], &p, t("2026-01-05T00:00:00Z"));
        assert_eq!(kept(&d), ["a", "b", "c", "d"]);
        assert!(d.remove.is_empty());
    }

    #[test]
    fn gfs_keeps_the_newest_of_each_period() {
        let b = daily_backups(); // 2026-01-01 .. 2026-03-01
        let p = Policy {
            daily: Some(3),
            weekly: Some(2),
            monthly: Some(3),
            ..Default::default()
        };
        let d = decide(&b, &[], &p, t("2026-03-02T00:00:00Z"));
        // Daily: Mar 1, Feb 28, Feb 27. Weekly (ISO, by the newest of each
        // week): Mar 1 (W09, a Sunday), Feb 22 (W08). Monthly: Mar 1, Feb 28,
        // Jan 31.
        assert_eq!(
            kept(&d),
            [
                "20260131T030000Z",
                "20260222T030000Z",
                "20260227T030000Z",
                "20260228T030000Z",
                "20260301T030000Z",
            ]
        );
        assert_eq!(
            d.keep["20260131T030000Z"],
            [Reason::Monthly("2026-01".into())]
        );
        assert_eq!(
            d.keep["20260228T030000Z"],
            [
                Reason::Daily("2026-02-28".into()),
                Reason::Monthly("2026-02".into())
            ]
        );
        // GFS alone keeps recovery only from the newest backup on.
        assert_eq!(d.horizon, Some(b[59].start_lsn));
        assert_eq!(d.remove.len(), 55);
    }

    #[test]
    fn yearly_and_counts_larger_than_history() {
        let b = daily_backups();
        let p = Policy {
            yearly: Some(5),
            daily: Some(100),
            ..Default::default()
        };
        let d = decide(&b, &[], &p, t("2026-03-02T00:00:00Z"));
        assert_eq!(d.keep.len(), 60);
        assert!(d.remove.is_empty());
    }

    #[test]
    fn pins_keep_until_they_lapse() {
        let b = backups(&[
            ("a", "2026-01-01T00:00:00Z"),
            ("b", "2026-01-02T00:00:00Z"),
            ("c", "2026-01-03T00:00:00Z"),
        ]);
        let pin = Pin {
            version: 1,
            backup_id: "a".into(),
            reason: Some("audit".into()),
            created: t("2026-01-01T00:00:00Z"),
            until: Some(t("2026-02-01T00:00:00Z")),
        };
        let p = Policy {
            full: Some(1),
            ..Default::default()
        };
        let d = decide(
            &b,
            std::slice::from_ref(&pin),
            &p,
            t("2026-01-10T00:00:00Z"),
        );
        assert_eq!(kept(&d), ["a", "c"]);
        assert_eq!(d.keep["a"], [Reason::Pinned(Some("audit".into()))]);
        // A pin keeps the backup, not recovery from it.
        assert_eq!(d.horizon, Some(b[2].start_lsn));
        let d = decide(&b, &[pin], &p, t("2026-02-01T00:00:00Z"));
        assert_eq!(kept(&d), ["c"]);
    }

    #[test]
    fn unrestorable_backups_neither_count_nor_shield() {
        let mut b = backups(&[
            ("a", "2026-01-01T00:00:00Z"),
            ("b", "2026-01-02T00:00:00Z"),
            ("c", "2026-01-03T00:00:00Z"),
            ("d", "2026-01-04T00:00:00Z"),
        ]);
        b[1].restorable = false;
        b[3].restorable = false;
        let p = Policy {
            full: Some(1),
            ..Default::default()
        };
        let d = decide(&b, &[], &p, t("2026-01-05T00:00:00Z"));
        // c is the newest restorable one; d is newer and kept; b goes.
        assert_eq!(kept(&d), ["c", "d"]);
        assert_eq!(d.remove, ["a", "b"]);
        assert_eq!(d.keep["d"], [Reason::NewerThanRestorable]);
        // Nothing restorable: nothing goes, and no WAL either.
        for x in &mut b {
            x.restorable = false;
        }
        let d = decide(&b, &[], &p, t("2026-01-05T00:00:00Z"));
        assert!(d.remove.is_empty());
        assert_eq!(d.horizon, None);
    }

    #[test]
    fn wal_below_the_horizon_goes_except_kept_ranges() {
        let tl = |n| TimelineId::new(n).unwrap();
        let mut objects: Vec<(String, WalObject)> = Vec::new();
        for n in 0..10 {
            objects.push((format!("s1-{n}"), WalObject::Segment { segment: seg(1, n) }));
        }
        // Timeline 2 forks at segment 8.
        for n in 8..12 {
            objects.push((format!("s2-{n}"), WalObject::Segment { segment: seg(2, n) }));
        }
        objects.push((
            "d1-3".into(),
            WalObject::Delta {
                segment: seg(1, 3),
                start: 0,
                end: 4,
            },
        ));
        objects.push((
            "d2-12".into(),
            WalObject::Delta {
                segment: seg(2, 12),
                start: 0,
                end: 4,
            },
        ));
        objects.push(("h2".into(), WalObject::History { timeline: tl(2) }));
        let pinned = BackupFacts {
            id: "p".into(),
            stop_time: t("2026-01-01T00:00:00Z"),
            start_lsn: Lsn(2 * SZ),
            first_segment: seg(1, 2),
            last_segment: seg(1, 3),
            restorable: true,
        };
        let horizon = Some(Lsn(9 * SZ + 3));
        let gone = wal_to_remove(&objects, &[&pinned], horizon, SZ);
        let keys: Vec<&str> = gone.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "s1-0", "s1-1", "s1-4", "s1-5", "s1-6", "s1-7", "s1-8", "s2-8", "d1-3"
            ]
        );
        assert_eq!(gone.last().unwrap().1, WalRemoval::Superseded);
        // No horizon: only superseded deltas go.
        let gone = wal_to_remove(&objects, &[], None, SZ);
        assert_eq!(gone, [("d1-3", WalRemoval::Superseded)]);
    }
}
