//! `/health`, pure: the sidecar's numbers in, a verdict out. 200 when
//! streaming with the lag under the RPO; 207 when degraded (no recent
//! backup, the slot near its limit, a failed drill or expire); 503 when
//! failing (not streaming, lag over the RPO, the store unreachable, the
//! slot lost).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::State;
use crate::progress::human_bytes;

/// Below this share of `max_slot_wal_keep_size` left, the slot is at risk.
const SLOT_RISK_SHARE: f64 = 0.2;

/// How healthy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Working.
    Ok,
    /// Working, but something needs attention.
    Degraded,
    /// The promise does not hold right now.
    Failing,
}

impl Level {
    /// 0, 1 or 2.
    pub fn level(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::Degraded => 1,
            Level::Failing => 2,
        }
    }

    /// The HTTP status `/health` answers with.
    pub fn http_status(self) -> u16 {
        match self {
            Level::Ok => 200,
            Level::Degraded => 207,
            Level::Failing => 503,
        }
    }
}

/// One check.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// What.
    pub name: &'static str,
    /// How it went.
    pub status: Level,
    /// Why.
    pub message: String,
}

/// The verdict and its reasons (the JSON body of `/health`).
#[derive(Clone, Debug, Serialize)]
pub struct Health {
    /// The worst finding.
    pub status: Level,
    /// Every finding.
    pub checks: Vec<Finding>,
}

/// The limits health is judged by.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// Lag over this fails health (`--rpo`).
    pub rpo: Duration,
    /// A newest backup older than this degrades health.
    pub backup_max_age: Duration,
}

/// What health is judged on.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// A replication connection copies WAL.
    pub streaming: bool,
    /// Seconds the oldest unstored WAL has waited.
    pub lag_seconds: f64,
    /// Bytes not stored.
    pub lag_bytes: u64,
    /// The store fails every attempt.
    pub store_unreachable: bool,
    /// The slower state.
    pub state: State,
    /// Now.
    pub now: DateTime<Utc>,
}

/// Judges `inputs`.
pub fn evaluate(inputs: &Inputs, t: &Thresholds) -> Health {
    let mut checks = Vec::new();
    let mut add = |name, status, message: String| {
        checks.push(Finding {
            name,
            status,
            message,
        })
    };
    if inputs.streaming {
        add("stream", Level::Ok, "streaming WAL from the server".into());
    } else {
        add(
            "stream",
            Level::Failing,
            "not streaming: the replication connection is down or reconnecting".into(),
        );
    }
    let lag = format!(
        "lag {:.1}s ({}) against an RPO of {}",
        inputs.lag_seconds,
        human_bytes(inputs.lag_bytes),
        humantime::format_duration(t.rpo)
    );
    if inputs.lag_seconds > t.rpo.as_secs_f64() {
        add(
            "lag",
            Level::Failing,
            format!("{lag}: WAL older than the RPO is not stored"),
        );
    } else {
        add("lag", Level::Ok, lag);
    }
    if inputs.store_unreachable {
        add(
            "store",
            Level::Failing,
            "the object store fails every attempt; WAL waits in memory and on the server".into(),
        );
    } else {
        add("store", Level::Ok, "the object store takes uploads".into());
    }
    let s = &inputs.state;
    match &s.newest_backup {
        None => add(
            "backup",
            Level::Degraded,
            "no backup in the repository: nothing can be restored".into(),
        ),
        Some(b) => {
            let age = (inputs.now - b.stop_time).to_std().unwrap_or_default();
            if age > t.backup_max_age {
                add(
                    "backup",
                    Level::Degraded,
                    format!(
                        "the newest backup {} is {} old, older than {}",
                        b.id,
                        humantime::format_duration(Duration::from_secs(age.as_secs())),
                        humantime::format_duration(t.backup_max_age)
                    ),
                );
            } else if s.last_backup_failed {
                add(
                    "backup",
                    Level::Degraded,
                    format!("the last scheduled backup failed; the newest is {}", b.id),
                );
            } else {
                add(
                    "backup",
                    Level::Ok,
                    format!(
                        "the newest backup {} is {} old",
                        b.id,
                        humantime::format_duration(Duration::from_secs(age.as_secs()))
                    ),
                );
            }
        }
    }
    match &s.slot {
        None => add("slot", Level::Ok, "slot status not read yet".into()),
        Some(slot) => {
            let share = match (slot.safe_wal_size, slot.max_keep_bytes) {
                (Some(safe), Some(max)) if max > 0 => Some(safe as f64 / max as f64),
                _ => None,
            };
            let (level, why) = match slot.wal_status.as_str() {
                "lost" => (
                    Level::Failing,
                    "the slot is lost: WAL that was never stored is gone; take a new backup"
                        .to_string(),
                ),
                "missing" => (Level::Degraded, "the slot does not exist".to_string()),
                "unreserved" | "extended" => (
                    Level::Degraded,
                    format!(
                        "wal_status {}: the slot holds WAL beyond max_wal_size and is at risk",
                        slot.wal_status
                    ),
                ),
                _ if share.is_some_and(|x| x < SLOT_RISK_SHARE) => (
                    Level::Degraded,
                    format!(
                        "only {} left before max_slot_wal_keep_size invalidates the slot",
                        human_bytes(slot.safe_wal_size.unwrap_or(0).max(0) as u64)
                    ),
                ),
                other => (Level::Ok, format!("wal_status {other}")),
            };
            add("slot", level, why);
        }
    }
    match &s.last_drill {
        Some(d) if !d.success => add(
            "drill",
            Level::Degraded,
            format!(
                "the last restore drill, at {}, failed",
                crate::format::time::to_text(&d.time)
            ),
        ),
        Some(d) => add(
            "drill",
            Level::Ok,
            format!(
                "the last restore drill, at {}, succeeded",
                crate::format::time::to_text(&d.time)
            ),
        ),
        None => add("drill", Level::Ok, "no restore drill recorded".into()),
    }
    if s.last_expire_failed {
        add(
            "expire",
            Level::Degraded,
            "the last expire run failed".into(),
        );
    }
    let status = checks.iter().map(|c| c.status).max().unwrap_or(Level::Ok);
    Health { status, checks }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{BackupFacts, DrillFacts, SlotFacts};

    fn healthy() -> Inputs {
        let now = Utc::now();
        Inputs {
            streaming: true,
            lag_seconds: 0.4,
            lag_bytes: 100,
            store_unreachable: false,
            state: State {
                newest_backup: Some(BackupFacts {
                    id: "b".into(),
                    stop_time: now - chrono::Duration::hours(2),
                    size_bytes: 1,
                    stored_bytes: 1,
                    duration_seconds: 1.0,
                }),
                slot: Some(SlotFacts {
                    wal_status: "reserved".into(),
                    safe_wal_size: Some(900),
                    max_keep_bytes: Some(1000),
                }),
                ..State::default()
            },
            now,
        }
    }

    const T: Thresholds = Thresholds {
        rpo: Duration::from_secs(60),
        backup_max_age: Duration::from_secs(26 * 3600),
    };

    #[test]
    fn each_cause_moves_the_verdict() {
        assert_eq!(evaluate(&healthy(), &T).status, Level::Ok);
        let degraded: [fn(&mut Inputs); 5] = [
            |i| i.state.newest_backup = None,
            |i| {
                i.state.newest_backup.as_mut().unwrap().stop_time =
                    i.now - chrono::Duration::hours(30)
            },
            |i| i.state.slot.as_mut().unwrap().safe_wal_size = Some(100),
            |i| i.state.slot.as_mut().unwrap().wal_status = "extended".into(),
            |i| {
                i.state.last_drill = Some(DrillFacts {
                    success: false,
                    time: i.now,
                })
            },
        ];
        for (n, f) in degraded.iter().enumerate() {
            let mut i = healthy();
            f(&mut i);
            let h = evaluate(&i, &T);
            assert_eq!(h.status, Level::Degraded, "case {n}: {h:?}");
            assert_eq!(h.status.http_status(), 207);
        }
        let failing: [fn(&mut Inputs); 4] = [
            |i| i.streaming = false,
            |i| i.lag_seconds = 61.0,
            |i| i.store_unreachable = true,
            |i| i.state.slot.as_mut().unwrap().wal_status = "lost".into(),
        ];
        for (n, f) in failing.iter().enumerate() {
            let mut i = healthy();
            f(&mut i);
            let h = evaluate(&i, &T);
            assert_eq!(h.status, Level::Failing, "case {n}: {h:?}");
            assert_eq!(h.status.http_status(), 503);
        }
    }
}
