//! Timeline history files: parsing, and which timeline holds an LSN.
//!
//! A history file of timeline N lists, oldest first, each ancestor and the
//! LSN where the next timeline forked from it: `parentTLI<TAB>switchLSN<TAB>reason`.

use crate::lsn::{Lsn, TimelineId};

/// One line of a history file: `timeline` ended at `switch_lsn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The ancestor timeline.
    pub timeline: TimelineId,
    /// Where the next timeline forked from it.
    pub switch_lsn: Lsn,
}

/// A malformed history file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid timeline history line {line:?}: {reason}")]
pub struct ParseHistoryError {
    /// The offending line.
    pub line: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses a history file; blank lines and `#` comments are skipped.
///
/// Timelines must increase from line to line, as PostgreSQL's
/// `readTimeLineHistory` requires: [`follow_history`] relies on it to end.
///
/// # Errors
/// On a line without a timeline and LSN, or a timeline not above the one
/// before it.
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, ParseHistoryError> {
    let mut out: Vec<HistoryEntry> = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let err = |reason| ParseHistoryError {
            line: line.to_string(),
            reason,
        };
        let mut fields = trimmed.split_whitespace();
        let timeline = fields
            .next()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| err("no timeline id"))?;
        let switch_lsn = fields
            .next()
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| err("no switch LSN"))?;
        if out.last().is_some_and(|last| timeline <= last.timeline) {
            return Err(err("timeline ids must increase"));
        }
        out.push(HistoryEntry {
            timeline,
            switch_lsn,
        });
    }
    Ok(out)
}

/// Given the history of `current` and a position (`timeline`, `lsn`), returns
/// the timeline and start LSN from which streaming must go on: while `lsn` is
/// at or past the switch point of its timeline, move to the next timeline at
/// the start of the segment holding the switch point (the new timeline's copy
/// of that segment holds the old timeline's bytes up to the switch).
pub fn follow_history(
    history: &[HistoryEntry],
    current: TimelineId,
    mut timeline: TimelineId,
    mut lsn: Lsn,
    segment_size_bytes: u64,
) -> (TimelineId, Lsn, bool) {
    let mut moved = false;
    while timeline < current {
        let Some(idx) = history.iter().position(|e| e.timeline == timeline) else {
            break;
        };
        let switch = history[idx].switch_lsn;
        if lsn < switch {
            break;
        }
        timeline = history.get(idx + 1).map_or(current, |e| e.timeline);
        lsn = switch.segment_start(segment_size_bytes);
        moved = true;
    }
    (timeline, lsn, moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tli(n: u32) -> crate::lsn::TimelineId {
        crate::lsn::TimelineId::new(n).unwrap()
    }

    #[test]
    fn parses_with_blank_lines() {
        let text =
            "1\t0/1301028\tno recovery target specified\n\n2\t0/3000000\tbefore 2026-01-01\n";
        let h = parse_history(text).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(
            h[1],
            HistoryEntry {
                timeline: tli(2),
                switch_lsn: Lsn(0x300_0000)
            }
        );
        assert!(parse_history("x y\n").is_err());
    }

    #[test]
    fn rejects_timelines_that_do_not_increase() {
        // Following such a history went back to an older timeline (or, with
        // a repeated timeline, never ended).
        for text in [
            "1\t0/0\tx\n1\t0/0\ty\n",
            "2\t0/3000000\tx\n1\t0/1000000\ty\n",
        ] {
            let err = parse_history(text).unwrap_err();
            assert_eq!(err.reason, "timeline ids must increase");
        }
    }

    #[test]
    fn follows_switches() {
        let sz = 16 << 20;
        let h = parse_history("1\t0/1301028\tx\n2\t0/3000100\ty\n").unwrap();
        assert_eq!(
            follow_history(&h, tli(3), tli(1), Lsn(0x100_0000), sz),
            (tli(1), Lsn(0x100_0000), false)
        );
        assert_eq!(
            follow_history(&h, tli(3), tli(1), Lsn(0x130_1028), sz),
            (tli(2), Lsn(0x100_0000), true)
        );
        // WAL of timeline 1 past its fork is not on the path: go on at the fork.
        assert_eq!(
            follow_history(&h, tli(3), tli(1), Lsn(0x400_0000), sz),
            (tli(2), Lsn(0x100_0000), true)
        );
        assert_eq!(
            follow_history(&h, tli(3), tli(2), Lsn(0x300_0100), sz),
            (tli(3), Lsn(0x300_0000), true)
        );
        assert_eq!(
            follow_history(&h, tli(3), tli(3), Lsn(0x500_0000), sz),
            (tli(3), Lsn(0x500_0000), false)
        );
    }
}
