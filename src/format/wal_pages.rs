//! WAL read as WAL: the page headers of a stored segment checked against
//! what they must say. Authenticated encryption proves the bytes are the
//! ones walvault stored, not that they are this cluster's WAL of that
//! place: a segment that was recycled or zeroed on the server, or sent
//! past a standby's valid end, is sealed as faithfully as a good one.
//!
//! Each page up to the segment's valid end (the whole segment, or the
//! bytes its deltas hold) must carry the major's `XLOG_PAGE_MAGIC`, its own
//! address (`xlp_pageaddr`), a timeline no newer than the segment's and no
//! older than the page before, and on the first page the long header with
//! the cluster's system identifier, the segment size and the page size.
//! The one run of zeroed pages allowed is the tail of a complete segment
//! (PostgreSQL zeroes the pages after a segment switch); a zeroed page
//! with WAL after it, or in the part a delta holds, is named. Pure: bytes
//! and expectations in, the problems out.

/// Bytes of a WAL page (`XLOG_BLCKSZ`, PostgreSQL's default, which
/// walvault's supported builds use).
pub const PAGE_BYTES: u64 = 8192;
/// `XLP_LONG_HEADER`.
const XLP_LONG_HEADER: u16 = 0x0002;
/// The flag bits PostgreSQL 14-18 define (`XLP_ALL_FLAGS`).
const XLP_ALL_FLAGS: u16 = 0x000F;

/// `XLOG_PAGE_MAGIC` of a PostgreSQL major, if walvault knows it.
pub fn page_magic(major: u32) -> Option<u16> {
    match major {
        14 => Some(0xD10D),
        15 => Some(0xD110),
        16 => Some(0xD113),
        17 => Some(0xD116),
        18 => Some(0xD118),
        _ => None,
    }
}

/// What a segment's pages must say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageExpect {
    /// The segment's timeline.
    pub timeline: u32,
    /// The segment's first byte (an LSN).
    pub start: u64,
    /// The segment size.
    pub segment_size_bytes: u64,
    /// The cluster's system identifier.
    pub system_identifier: u64,
    /// The server's `XLOG_PAGE_MAGIC` (`None`: any).
    pub magic: Option<u16>,
}

/// The problems of `segment`'s pages below `valid` bytes, each naming the
/// page's offset; empty when every page says what it must.
pub fn check_pages(segment: &[u8], valid: u64, expect: &PageExpect) -> Vec<String> {
    let mut problems = Vec::new();
    let complete = valid >= expect.segment_size_bytes;
    let valid = valid.min(segment.len() as u64);
    let mut previous_tli = 0u32;
    // The first zeroed page of the run now going on.
    let mut zeroed_from: Option<u64> = None;
    let mut offset = 0u64;
    while offset < valid {
        let page =
            &segment[offset as usize..(offset + PAGE_BYTES).min(segment.len() as u64) as usize];
        if page.iter().take(SHORT_HEADER_BYTES).all(|&b| b == 0) {
            zeroed_from.get_or_insert(offset);
            offset += PAGE_BYTES;
            continue;
        }
        if let Some(from) = zeroed_from.take() {
            problems.push(zeroed(from, offset));
        }
        if let Err(problem) = check_page(page, offset, expect, &mut previous_tli) {
            // One problem per page: the rest of a bad page says nothing more.
            problems.push(format!("page at offset {offset}: {problem}"));
        }
        offset += PAGE_BYTES;
    }
    // A zeroed tail: what a segment switch leaves in a complete segment,
    // never in the part a delta holds (nor on a segment's first page).
    if let Some(from) = zeroed_from
        && (!complete || from == 0)
    {
        problems.push(zeroed(from, valid));
    }
    problems
}

/// The problems of the pages whose headers lie inside `bytes`, the
/// segment's bytes from offset `from` on (a delta): none of them may be
/// zeroed, as a delta holds WAL written so far.
pub fn check_part_pages(bytes: &[u8], from: u64, expect: &PageExpect) -> Vec<String> {
    let mut problems = Vec::new();
    let mut previous_tli = 0u32;
    let end = from + bytes.len() as u64;
    let mut offset = from.div_ceil(PAGE_BYTES) * PAGE_BYTES;
    loop {
        let header = if offset == 0 {
            LONG_HEADER_BYTES
        } else {
            SHORT_HEADER_BYTES
        };
        if offset + header as u64 > end {
            return problems;
        }
        let at = (offset - from) as usize;
        let page = &bytes[at..(at + PAGE_BYTES as usize).min(bytes.len())];
        if page.iter().take(SHORT_HEADER_BYTES).all(|&b| b == 0) {
            problems.push(format!(
                "page at offset {offset}: it is zeroed, inside the WAL the archive holds"
            ));
        } else if let Err(problem) = check_page(page, offset, expect, &mut previous_tli) {
            problems.push(format!("page at offset {offset}: {problem}"));
        }
        offset += PAGE_BYTES;
    }
}

/// Bytes of a long page header (`SizeOfXLogLongPHD`).
const LONG_HEADER_BYTES: usize = 40;
/// Bytes of a short page header (`SizeOfXLogShortPHD`).
const SHORT_HEADER_BYTES: usize = 24;

/// The system identifier a segment's first page names in its long
/// header; `None` when the first page has no long header (a zeroed page,
/// or fewer bytes than the header).
pub fn first_page_system_identifier(segment: &[u8]) -> Option<u64> {
    let info = u16_at(segment, 2)?;
    if info & XLP_LONG_HEADER == 0 || segment.len() < LONG_HEADER_BYTES {
        return None;
    }
    u64_at(segment, 24)
}

fn zeroed(from: u64, to: u64) -> String {
    format!(
        "page at offset {from}: it is zeroed, and so is the WAL to offset {to}, inside the WAL the archive holds"
    )
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn check_page(
    page: &[u8],
    offset: u64,
    expect: &PageExpect,
    previous_tli: &mut u32,
) -> Result<(), String> {
    let short = || "it is cut short".to_string();
    let magic = u16_at(page, 0).ok_or_else(short)?;
    if let Some(want) = expect.magic
        && magic != want
    {
        return Err(format!(
            "its magic is {magic:#06x}, not {want:#06x} of the server's major"
        ));
    }
    let info = u16_at(page, 2).ok_or_else(short)?;
    if info & !XLP_ALL_FLAGS != 0 {
        return Err(format!("it has unknown flags {info:#06x}"));
    }
    let tli = u32_at(page, 4).ok_or_else(short)?;
    if tli == 0 || tli > expect.timeline || tli < *previous_tli {
        return Err(format!(
            "it says timeline {tli} (segment of timeline {}, page before on {})",
            expect.timeline, *previous_tli
        ));
    }
    *previous_tli = tli;
    let address = u64_at(page, 8).ok_or_else(short)?;
    let want = expect.start + offset;
    if address != want {
        return Err(format!(
            "it says it is at {:X}/{:X}, not at {:X}/{:X}: a stale page (a recycled segment's, say)",
            address >> 32,
            address & 0xFFFF_FFFF,
            want >> 32,
            want & 0xFFFF_FFFF
        ));
    }
    let long = info & XLP_LONG_HEADER != 0;
    if long != (offset == 0) {
        return Err(if long {
            "it has a long header, which only a segment's first page has".into()
        } else {
            "the segment's first page has no long header".into()
        });
    }
    if long {
        let sysid = u64_at(page, 24).ok_or_else(short)?;
        if sysid != expect.system_identifier {
            return Err(format!(
                "its system identifier is {sysid}, not the repository's {}: WAL of another cluster",
                expect.system_identifier
            ));
        }
        let seg_size = u32_at(page, 32).ok_or_else(short)?;
        if u64::from(seg_size) != expect.segment_size_bytes {
            return Err(format!(
                "it says segments of {seg_size} bytes, not {}",
                expect.segment_size_bytes
            ));
        }
        let blcksz = u32_at(page, 36).ok_or_else(short)?;
        if u64::from(blcksz) != PAGE_BYTES {
            return Err(format!("it says pages of {blcksz} bytes, not {PAGE_BYTES}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_page_names_its_cluster() {
        let e = expect();
        let seg = segment(2);
        assert_eq!(
            first_page_system_identifier(&seg),
            Some(e.system_identifier)
        );
        assert_eq!(first_page_system_identifier(&seg[..39]), None);
        assert_eq!(first_page_system_identifier(&vec![0u8; 8192]), None);
    }

    const SEG: u64 = 1 << 20;

    fn expect() -> PageExpect {
        PageExpect {
            timeline: 2,
            start: 5 * SEG,
            segment_size_bytes: SEG,
            system_identifier: 7_300_000_000_000_000_001,
            magic: page_magic(15),
        }
    }

    /// A segment whose every page says what it must, on timeline `tli`.
    fn segment(tli: u32) -> Vec<u8> {
        let e = expect();
        let mut seg = vec![0u8; SEG as usize];
        for n in 0..SEG / PAGE_BYTES {
            let at = (n * PAGE_BYTES) as usize;
            seg[at..at + 2].copy_from_slice(&0xD110u16.to_le_bytes());
            let info: u16 = if n == 0 { XLP_LONG_HEADER } else { 0 };
            seg[at + 2..at + 4].copy_from_slice(&info.to_le_bytes());
            seg[at + 4..at + 8].copy_from_slice(&tli.to_le_bytes());
            seg[at + 8..at + 16].copy_from_slice(&(e.start + n * PAGE_BYTES).to_le_bytes());
            seg[at + 16] = 1; // some rem_len, so no page header is all zeros
        }
        seg[24..32].copy_from_slice(&e.system_identifier.to_le_bytes());
        seg[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
        seg[36..40].copy_from_slice(&(PAGE_BYTES as u32).to_le_bytes());
        seg
    }

    #[test]
    fn a_good_segment_passes() {
        assert!(check_pages(&segment(2), SEG, &expect()).is_empty());
        assert!(check_pages(&segment(1), SEG, &expect()).is_empty());
    }

    #[test]
    fn each_wrong_field_is_named() {
        let e = expect();
        type Damage = Box<dyn Fn(&mut Vec<u8>)>;
        let cases: Vec<(Damage, &str)> = vec![
            (
                Box::new(|s| s[3 * 8192..3 * 8192 + 24].fill(0)),
                "offset 24576: it is zeroed",
            ),
            (Box::new(|s| s[..24].fill(0)), "offset 0: it is zeroed"),
            (Box::new(|s| s[8192] = 0x0D), "magic"),
            (Box::new(|s| s[8192 + 4] = 3), "timeline 3"),
            (
                Box::new(|s| s[2 * 8192 + 8..2 * 8192 + 16].copy_from_slice(&0u64.to_le_bytes())),
                "stale page",
            ),
            (Box::new(|s| s[24] ^= 1), "another cluster"),
            (
                Box::new(|s| s[32..36].copy_from_slice(&(2 * SEG as u32).to_le_bytes())),
                "segments of",
            ),
            (Box::new(|s| s[2] = 0), "no long header"),
            (
                Box::new(|s| s[8192 + 2] = XLP_LONG_HEADER as u8),
                "long header",
            ),
            (Box::new(|s| s[8192 + 3] = 0x80), "unknown flags"),
        ];
        for (damage, want) in cases {
            let mut seg = segment(2);
            damage(&mut seg);
            let problems = check_pages(&seg, SEG, &e);
            assert!(
                problems.iter().any(|p| p.contains(want)),
                "{want}: {problems:?}"
            );
        }
    }

    #[test]
    fn a_part_is_read_from_its_first_whole_header() {
        let seg = segment(2);
        let e = expect();
        assert!(check_part_pages(&seg[100..3 * 8192 + 10], 100, &e).is_empty());
        assert!(
            check_part_pages(&seg[..30], 0, &e).is_empty(),
            "no whole long header"
        );
        let mut bad = seg.clone();
        bad[2 * 8192 + 8] ^= 1;
        let problems = check_part_pages(&bad[8000..3 * 8192], 8000, &e);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("page at offset 16384: ") && problems[0].contains("stale"));
        bad[8192..8192 + 24].fill(0);
        assert!(check_part_pages(&bad[8192..8192 + 24], 8192, &e)[0].contains("zeroed"));
    }

    #[test]
    fn a_switched_tail_passes_and_only_the_valid_part_is_read() {
        let mut seg = segment(2);
        seg[4 * 8192..].fill(0);
        assert!(
            check_pages(&seg, SEG, &expect()).is_empty(),
            "the zeroed tail of a switch"
        );
        assert!(check_pages(&seg, 4 * 8192, &expect()).is_empty());
        assert!(check_pages(&seg, 4 * 8192 + 1, &expect())[0].contains("zeroed"));
        assert!(check_pages(&seg[..30], SEG, &expect())[0].contains("cut short"));
        assert!(check_pages(&[], SEG, &expect()).is_empty());
    }
}
