//! WAL records read back from a segment's bytes, as far as a restore plan
//! needs them: the commit and abort records (their transaction ids and
//! times), the newest transaction id assigned, and restore points. Pure:
//! bytes in, facts out; a page or record that does not parse ends the
//! scan there (a zeroed or partial tail is the end of the WAL).
//!
//! The layout (PostgreSQL 14-18, `access/xlogrecord.h`, `xlog_internal.h`):
//! pages of `XLOG_BLCKSZ` bytes, each starting with a header (24 bytes; 40
//! with the long header of a segment's first page); records MAXALIGNed (8
//! bytes), each a 24-byte header (`xl_tot_len`, `xl_xid`, `xl_prev`,
//! `xl_info`, `xl_rmid`, `xl_crc`) and its data, continued across pages
//! (`XLP_FIRST_IS_CONTRECORD`). Integers are little-endian (the server's
//! order on x86-64 and arm64).

use chrono::{DateTime, Utc};

/// Bytes of a page header (`SizeOfXLogShortPHD`).
const SHORT_PAGE_HEADER: usize = 24;
/// Bytes of a segment's first page header (`SizeOfXLogLongPHD`).
const LONG_PAGE_HEADER: usize = 40;
/// `XLP_FIRST_IS_CONTRECORD`: the page starts with the rest of a record.
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// `XLP_LONG_HEADER`.
const XLP_LONG_HEADER: u16 = 0x0002;
/// Bytes of a record header (`SizeOfXLogRecord`).
const RECORD_HEADER: usize = 24;
/// Records start at multiples of this (`MAXALIGN`).
const ALIGN: usize = 8;
/// The page size when the segment's long header does not say.
const DEFAULT_PAGE_BYTES: usize = 8192;
/// `RM_XLOG_ID`.
const RM_XLOG: u8 = 0;
/// `RM_XACT_ID`.
const RM_XACT: u8 = 1;
/// `XLOG_RESTORE_POINT` (of `RM_XLOG_ID`).
const XLOG_RESTORE_POINT: u8 = 0x70;
/// `XLOG_XACT_OPMASK`.
const XACT_OPMASK: u8 = 0x70;
/// `XLOG_XACT_COMMIT`, `_ABORT`, `_COMMIT_PREPARED`, `_ABORT_PREPARED`.
const XACT_COMMIT: u8 = 0x00;
const XACT_ABORT: u8 = 0x20;
const XACT_COMMIT_PREPARED: u8 = 0x30;
const XACT_ABORT_PREPARED: u8 = 0x40;
/// Block ids of the data headers (`XLR_BLOCK_ID_*`).
const BLOCK_ID_DATA_SHORT: u8 = 255;
const BLOCK_ID_DATA_LONG: u8 = 254;
const BLOCK_ID_ORIGIN: u8 = 253;
const BLOCK_ID_TOPLEVEL_XID: u8 = 252;
/// Bytes of a restore point's name (`MAXFNAMELEN`).
const RESTORE_POINT_NAME_BYTES: usize = 64;
/// PostgreSQL's epoch (2000-01-01 00:00 UTC) in Unix microseconds.
const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// What a segment says, as far as a restore plan asks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalFacts {
    /// Commit and abort records, in WAL order: (xid, time, committed).
    pub ends: Vec<(u32, DateTime<Utc>, bool)>,
    /// Restore points, in WAL order: (name, time).
    pub restore_points: Vec<(String, DateTime<Utc>)>,
    /// The newest transaction id any record carries (by 32-bit wraparound
    /// order), if any does.
    pub newest_xid: Option<u32>,
}

impl WalFacts {
    /// The time of the last commit or abort, the last a time target can reach.
    pub fn last_end_time(&self) -> Option<DateTime<Utc>> {
        self.ends.iter().map(|(_, t, _)| *t).max()
    }
}

/// Whether xid `a` comes after `b` (PostgreSQL's `TransactionIdFollows`).
pub fn xid_follows(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Reads the records of one segment (or of its known prefix, zero-padded).
pub fn scan_segment(segment: &[u8]) -> WalFacts {
    let mut facts = WalFacts::default();
    let mut reader = Reader::new(segment);
    reader.skip_continuation();
    while let Some(record) = reader.next_record() {
        note(&mut facts, &record);
    }
    facts
}

fn note(facts: &mut WalFacts, record: &[u8]) {
    let xid = u32::from_le_bytes(record[4..8].try_into().expect("a record header"));
    let (info, rmid) = (record[16], record[17]);
    if xid != 0 && facts.newest_xid.is_none_or(|n| xid_follows(xid, n)) {
        facts.newest_xid = Some(xid);
    }
    let Some(data) = main_data(record) else {
        return;
    };
    match rmid {
        RM_XACT => {
            let committed = match info & XACT_OPMASK {
                XACT_COMMIT | XACT_COMMIT_PREPARED => true,
                XACT_ABORT | XACT_ABORT_PREPARED => false,
                _ => return,
            };
            if let Some(time) = data.get(..8).and_then(pg_time) {
                facts.ends.push((xid, time, committed));
            }
        }
        RM_XLOG if info & 0xF0 == XLOG_RESTORE_POINT => {
            let Some(time) = data.get(..8).and_then(pg_time) else {
                return;
            };
            let Some(raw) = data.get(8..8 + RESTORE_POINT_NAME_BYTES) else {
                return;
            };
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let name = String::from_utf8_lossy(&raw[..end]).into_owned();
            facts.restore_points.push((name, time));
        }
        _ => {}
    }
}

/// A record's main data, when it has no block references (commit, abort
/// and restore point records have none): the last bytes of the record.
fn main_data(record: &[u8]) -> Option<&[u8]> {
    let mut pos = RECORD_HEADER;
    loop {
        let id = *record.get(pos)?;
        pos += 1;
        let len = match id {
            BLOCK_ID_DATA_SHORT => usize::from(*record.get(pos)?),
            BLOCK_ID_DATA_LONG => {
                u32::from_le_bytes(record.get(pos..pos + 4)?.try_into().ok()?) as usize
            }
            BLOCK_ID_ORIGIN => {
                pos += 2;
                continue;
            }
            BLOCK_ID_TOPLEVEL_XID => {
                pos += 4;
                continue;
            }
            _ => return None,
        };
        return record.get(record.len().checked_sub(len)?..);
    }
}

/// A PostgreSQL `TimestampTz` (microseconds since 2000-01-01 UTC).
fn pg_time(bytes: &[u8]) -> Option<DateTime<Utc>> {
    let micros = i64::from_le_bytes(bytes.try_into().ok()?);
    DateTime::from_timestamp_micros(micros.checked_add(PG_EPOCH_UNIX_MICROS)?)
}

/// Walks a segment's pages and hands out whole records.
struct Reader<'a> {
    segment: &'a [u8],
    page_bytes: usize,
    /// The next byte to read (an offset in the segment).
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(segment: &'a [u8]) -> Self {
        let page_bytes = segment
            .get(36..40)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .filter(|n| n.is_power_of_two() && (1024..=65536).contains(n))
            .unwrap_or(DEFAULT_PAGE_BYTES);
        Reader {
            segment,
            page_bytes,
            pos: 0,
        }
    }

    /// The page header at `page_start`: its flags and length, or `None`
    /// for a page that is not written (zeros) or is cut off.
    fn page_header(&self, page_start: usize) -> Option<(u16, usize)> {
        let header = self
            .segment
            .get(page_start..page_start + SHORT_PAGE_HEADER)?;
        let magic = u16::from_le_bytes([header[0], header[1]]);
        if magic == 0 {
            return None;
        }
        let info = u16::from_le_bytes([header[2], header[3]]);
        let len = if info & XLP_LONG_HEADER != 0 {
            LONG_PAGE_HEADER
        } else {
            SHORT_PAGE_HEADER
        };
        Some((info, len))
    }

    /// Skips the end of a record that began in the previous segment.
    fn skip_continuation(&mut self) {
        let Some((info, len)) = self.page_header(0) else {
            self.pos = self.segment.len();
            return;
        };
        self.pos = len;
        if info & XLP_FIRST_IS_CONTRECORD == 0 {
            return;
        }
        let rem = self.segment.get(16..20).map_or(0, |b| {
            u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize
        });
        if self.take(rem).is_none() {
            self.pos = self.segment.len();
        }
        self.align();
    }

    fn align(&mut self) {
        self.pos = self.pos.div_ceil(ALIGN) * ALIGN;
    }

    /// Reads `n` bytes of record data from `pos` on, across page headers.
    fn take(&mut self, mut n: usize) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        while n > 0 {
            let offset_in_page = self.pos % self.page_bytes;
            if offset_in_page == 0 {
                let (info, len) = self.page_header(self.pos)?;
                if info & XLP_FIRST_IS_CONTRECORD == 0 && !out.is_empty() {
                    return None;
                }
                self.pos += len;
                continue;
            }
            let room = self.page_bytes - offset_in_page;
            let step = room.min(n);
            out.extend_from_slice(self.segment.get(self.pos..self.pos + step)?);
            self.pos += step;
            n -= step;
        }
        Some(out)
    }

    /// The next whole record, or `None` at the end of the WAL.
    fn next_record(&mut self) -> Option<Vec<u8>> {
        if self.pos.is_multiple_of(self.page_bytes) {
            let (_, len) = self.page_header(self.pos)?;
            self.pos += len;
        }
        let len_bytes = self.segment.get(self.pos..self.pos + 4)?;
        let total = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
        if total < RECORD_HEADER || total > self.segment.len() {
            return None;
        }
        let record = self.take(total)?;
        self.align();
        Some(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: usize = 8192;

    /// A record of `rmid`/`info` with `data` as its short main data.
    fn record(xid: u32, rmid: u8, info: u8, data: &[u8]) -> Vec<u8> {
        let total = RECORD_HEADER + 2 + data.len();
        let mut r = Vec::new();
        r.extend_from_slice(&(total as u32).to_le_bytes());
        r.extend_from_slice(&xid.to_le_bytes());
        r.extend_from_slice(&[0; 8]);
        r.push(info);
        r.push(rmid);
        r.extend_from_slice(&[0; 6]);
        r.push(BLOCK_ID_DATA_SHORT);
        r.push(data.len() as u8);
        r.extend_from_slice(data);
        r
    }

    fn time_bytes(unix_micros: i64) -> Vec<u8> {
        (unix_micros - PG_EPOCH_UNIX_MICROS).to_le_bytes().to_vec()
    }

    /// A segment of pages holding `records` one after another.
    fn segment(records: &[Vec<u8>], pages: usize) -> Vec<u8> {
        let mut seg = vec![0u8; PAGE * pages];
        let mut stream: Vec<u8> = Vec::new();
        for r in records {
            stream.extend_from_slice(r);
            while !stream.len().is_multiple_of(ALIGN) {
                stream.push(0);
            }
        }
        let mut pos = 0;
        let mut page = 0;
        let mut left = stream.as_slice();
        while page < pages {
            let start = page * PAGE;
            let header = if page == 0 {
                LONG_PAGE_HEADER
            } else {
                SHORT_PAGE_HEADER
            };
            seg[start..start + 2].copy_from_slice(&0xD10Du16.to_le_bytes());
            let mut info = if page == 0 { XLP_LONG_HEADER } else { 0 };
            if pos > 0 && !left.is_empty() {
                info |= XLP_FIRST_IS_CONTRECORD;
            }
            seg[start + 2..start + 4].copy_from_slice(&info.to_le_bytes());
            if page == 0 {
                seg[36..40].copy_from_slice(&(PAGE as u32).to_le_bytes());
            }
            let room = PAGE - header;
            let n = room.min(left.len());
            seg[start + header..start + header + n].copy_from_slice(&left[..n]);
            left = &left[n..];
            pos += n;
            page += 1;
        }
        seg
    }

    #[test]
    fn commits_aborts_and_restore_points_are_found_across_pages() {
        let t1 = 1_765_000_000_000_000;
        let mut name = b"before-migration".to_vec();
        name.resize(RESTORE_POINT_NAME_BYTES, 0);
        let mut rp = time_bytes(t1 + 5);
        rp.extend_from_slice(&name);
        // A long record pushes the later ones across a page boundary.
        let filler = record(700, 10, 0, &[7u8; 200]);
        let mut records = vec![record(500, RM_XACT, XACT_COMMIT, &time_bytes(t1))];
        records.extend(std::iter::repeat_n(filler, 60));
        records.push(record(0, RM_XLOG, XLOG_RESTORE_POINT, &rp));
        records.push(record(501, RM_XACT, XACT_ABORT, &time_bytes(t1 + 9)));
        let facts = scan_segment(&segment(&records, 4));
        assert_eq!(facts.ends.len(), 2);
        assert_eq!(facts.ends[0].0, 500);
        assert!(facts.ends[0].2 && !facts.ends[1].2);
        assert_eq!(
            facts.last_end_time(),
            DateTime::from_timestamp_micros(t1 + 9)
        );
        assert_eq!(facts.restore_points.len(), 1);
        assert_eq!(facts.restore_points[0].0, "before-migration");
        assert_eq!(facts.newest_xid, Some(700));
    }

    #[test]
    fn zeros_and_garbage_end_the_scan() {
        assert_eq!(scan_segment(&[]), WalFacts::default());
        assert_eq!(scan_segment(&vec![0u8; PAGE * 2]), WalFacts::default());
        let mut seg = segment(&[record(9, RM_XACT, XACT_COMMIT, &time_bytes(0))], 2);
        seg[LONG_PAGE_HEADER] = 3; // a record shorter than its header
        assert!(scan_segment(&seg).ends.is_empty());
        for cut in [0, 10, 41, 100, PAGE + 3] {
            let _ = scan_segment(&seg[..cut.min(seg.len())]);
        }
    }

    #[test]
    fn xids_follow_with_wraparound() {
        assert!(xid_follows(5, 3));
        assert!(!xid_follows(3, 5));
        assert!(xid_follows(3, u32::MAX - 2));
    }
}
