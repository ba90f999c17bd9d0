//! Cuts the replication stream into WAL segments and delta ranges.
//!
//! Pure: XLogData payloads go in as [`Bytes`] views, complete segments and
//! delta ranges come out as lists of views (no copies). The segmenter holds
//! the open segment from its first byte, so a complete segment can always be
//! stored whole even when deltas of it were stored before.

use bytes::Bytes;

use crate::lsn::{Lsn, SegmentName, TimelineId};

/// A complete segment, ready to store.
#[derive(Debug, Clone)]
pub struct CompleteSegment {
    /// Its name.
    pub segment: SegmentName,
    /// Its bytes, in order; they add up to the segment size.
    pub pieces: Vec<Bytes>,
}

/// Bytes `[start, end)` of the open segment, not yet handed out.
#[derive(Debug, Clone)]
pub struct DeltaRange {
    /// The open segment.
    pub segment: SegmentName,
    /// Offset of the first byte.
    pub start: u64,
    /// Offset one past the last byte.
    pub end: u64,
    /// The bytes.
    pub pieces: Vec<Bytes>,
}

/// The stream does not continue where the segmenter expects.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("WAL stream jumped from {expected} to {got}")]
pub struct GapError {
    /// Where the next byte should start.
    pub expected: Lsn,
    /// Where it started.
    pub got: Lsn,
}

/// The open segment of one timeline.
#[derive(Debug)]
pub struct Segmenter {
    segment_size: u64,
    timeline: TimelineId,
    segment_number: u64,
    pieces: Vec<Bytes>,
    /// Bytes held of the open segment, from offset 0.
    held: u64,
    /// Offset up to which bytes were handed out as deltas.
    handed_out: u64,
}

impl Segmenter {
    /// Starts at `start` on `timeline`. `prefix` holds the bytes of the open
    /// segment before `start` (from offset 0), e.g. deltas read back from the
    /// repository after a restart; they count as already handed out.
    ///
    /// # Panics
    /// If `prefix` does not add up to the offset of `start` in its segment.
    pub fn new(
        timeline: TimelineId,
        start: Lsn,
        segment_size_bytes: u64,
        prefix: Vec<Bytes>,
    ) -> Self {
        let offset = start.segment_offset(segment_size_bytes);
        let prefix_len: u64 = prefix.iter().map(|b| b.len() as u64).sum();
        assert_eq!(
            prefix_len, offset,
            "prefix must cover the open segment up to the start"
        );
        Segmenter {
            segment_size: segment_size_bytes,
            timeline,
            segment_number: start.segment_number(segment_size_bytes),
            pieces: prefix,
            held: offset,
            handed_out: offset,
        }
    }

    /// The timeline being cut.
    pub fn timeline(&self) -> TimelineId {
        self.timeline
    }

    /// The LSN the next byte must have.
    pub fn position(&self) -> Lsn {
        Lsn(self.segment_number * self.segment_size + self.held)
    }

    /// Bytes of the open segment held in memory.
    pub fn held_bytes(&self) -> u64 {
        self.held
    }

    /// The LSN up to which bytes were handed out (as deltas or segments).
    pub fn handed_out_position(&self) -> Lsn {
        Lsn(self.segment_number * self.segment_size + self.handed_out)
    }

    /// Adds the bytes of one XLogData message; returns the segments it completed.
    ///
    /// Bytes before [`Segmenter::position`] (a resend) are skipped.
    ///
    /// # Errors
    /// [`GapError`] when `start` is past the expected position.
    pub fn push(&mut self, start: Lsn, mut data: Bytes) -> Result<Vec<CompleteSegment>, GapError> {
        let expected = self.position();
        if start > expected {
            return Err(GapError {
                expected,
                got: start,
            });
        }
        let overlap = (expected.0 - start.0) as usize;
        if overlap >= data.len() {
            return Ok(Vec::new());
        }
        let _ = data.split_to(overlap);
        let mut done = Vec::new();
        while !data.is_empty() {
            let room = (self.segment_size - self.held) as usize;
            let piece = data.split_to(room.min(data.len()));
            self.held += piece.len() as u64;
            self.pieces.push(piece);
            if self.held == self.segment_size {
                done.push(CompleteSegment {
                    segment: SegmentName {
                        timeline: self.timeline,
                        number: self.segment_number,
                    },
                    pieces: std::mem::take(&mut self.pieces),
                });
                self.segment_number += 1;
                self.held = 0;
                self.handed_out = 0;
            }
        }
        Ok(done)
    }

    /// Hands out the bytes of the open segment not handed out before, if any.
    pub fn take_delta(&mut self) -> Option<DeltaRange> {
        if self.held == self.handed_out {
            return None;
        }
        let (start, end) = (self.handed_out, self.held);
        let pieces = slice_pieces(&self.pieces, start, end);
        self.handed_out = end;
        Some(DeltaRange {
            segment: SegmentName {
                timeline: self.timeline,
                number: self.segment_number,
            },
            start,
            end,
            pieces,
        })
    }
}

/// The views covering `[start, end)` of a list of pieces.
fn slice_pieces(pieces: &[Bytes], start: u64, end: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut off = 0u64;
    for p in pieces {
        let p_end = off + p.len() as u64;
        if p_end > start && off < end {
            let s = start.saturating_sub(off) as usize;
            let e = (end.min(p_end) - off) as usize;
            out.push(p.slice(s..e));
        }
        off = p_end;
        if off >= end {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tli(n: u32) -> crate::lsn::TimelineId {
        crate::lsn::TimelineId::new(n).unwrap()
    }
    use proptest::prelude::*;

    fn concat(pieces: &[Bytes]) -> Vec<u8> {
        pieces.iter().flat_map(|b| b.iter().copied()).collect()
    }

    #[test]
    fn cuts_at_segment_boundaries_and_hands_out_deltas() {
        let size = 16u64;
        let mut s = Segmenter::new(tli(1), Lsn(0), size, Vec::new());
        assert!(
            s.push(Lsn(0), Bytes::from_static(b"0123456789"))
                .unwrap()
                .is_empty()
        );
        let d = s.take_delta().unwrap();
        assert_eq!((d.start, d.end), (0, 10));
        assert!(s.take_delta().is_none());
        let done = s.push(Lsn(10), Bytes::from_static(b"abcdefghij")).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(concat(&done[0].pieces), b"0123456789abcdef");
        assert_eq!(s.position(), Lsn(20));
        let d = s.take_delta().unwrap();
        assert_eq!((d.segment.number, d.start, d.end), (1, 0, 4));
        assert_eq!(concat(&d.pieces), b"ghij");
        assert_eq!(
            s.push(Lsn(30), Bytes::from_static(b"x"))
                .unwrap_err()
                .expected,
            Lsn(20)
        );
        // A resend of bytes already held is skipped.
        assert!(
            s.push(Lsn(18), Bytes::from_static(b"ijk"))
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.position(), Lsn(21));
    }

    #[test]
    fn resumes_with_a_prefix() {
        let mut s = Segmenter::new(tli(2), Lsn(16 + 4), 16, vec![Bytes::from_static(b"abcd")]);
        assert!(s.take_delta().is_none());
        let done = s
            .push(Lsn(20), Bytes::from_static(b"efghijklmnop"))
            .unwrap();
        assert_eq!(concat(&done[0].pieces), b"abcdefghijklmnop");
        assert_eq!(
            done[0].segment,
            SegmentName {
                timeline: tli(2),
                number: 1
            }
        );
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_segments(data in proptest::collection::vec(any::<u8>(), 0..300),
                                             cuts in proptest::collection::vec(1usize..40, 0..20)) {
            let size = 32u64;
            let mut s = Segmenter::new(tli(1), Lsn(0), size, Vec::new());
            let mut out = Vec::new();
            let mut pos = 0usize;
            let mut deltas = Vec::new();
            for c in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                let end = pos.saturating_add(*c).min(data.len());
                for seg in s.push(Lsn(pos as u64), Bytes::copy_from_slice(&data[pos..end])).unwrap() {
                    out.extend(concat(&seg.pieces));
                }
                if let Some(d) = s.take_delta() { deltas.push(d); }
                pos = end;
                if pos == data.len() { break; }
            }
            let whole = data.len() / size as usize * size as usize;
            prop_assert_eq!(&out[..], &data[..whole]);
            // The deltas of the open segment cover its bytes exactly, in order.
            let open: Vec<u8> = deltas.iter()
                .filter(|d| d.segment.number == (data.len() as u64 / size))
                .flat_map(|d| concat(&d.pieces)).collect();
            prop_assert_eq!(&open[..], &data[whole..]);
        }
    }
}
