//! Log sequence numbers, timeline ids and WAL file names.
//!
//! Pure value types: [`Lsn`] prints as PostgreSQL does (`16/B374D848`),
//! [`TimelineId`] is never 0, and [`SegmentName`] builds and parses the
//! 24-hex file names of `pg_wal`. Nothing here touches I/O or reads a clock.
//!
//! Stored documents hold LSNs as `"X/X"` strings and timelines as numbers;
//! the serde implementations here read and write exactly that, and a
//! malformed value is a parse error, never a default.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A position in the WAL stream (a byte offset since the cluster began).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// A timeline id; timeline 1 is the one `initdb` creates, and 0 is not a
/// timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimelineId(u32);

/// An LSN that is not of the form `X/X`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid LSN {0:?}: expected the form X/X in hexadecimal")]
pub struct ParseLsnError(String);

/// A timeline id that is not a positive 32-bit number.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid timeline {0:?}: expected a number from 1 to 4294967295")]
pub struct ParseTimelineError(String);

impl TimelineId {
    /// The timeline `initdb` creates.
    pub const FIRST: TimelineId = TimelineId(1);

    /// The timeline `n`, unless `n` is 0.
    pub const fn new(n: u32) -> Option<TimelineId> {
        if n == 0 { None } else { Some(TimelineId(n)) }
    }

    /// The number.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The next timeline, unless this is the last one there can be.
    pub fn next(self) -> Option<TimelineId> {
        self.0.checked_add(1).map(TimelineId)
    }

    /// Parses 8 hexadecimal digits, as in WAL and history file names.
    ///
    /// # Errors
    /// When `hex` is not 8 hexadecimal digits of a timeline other than 0.
    pub fn from_hex(hex: &str) -> Result<TimelineId, ParseTimelineError> {
        let err = || ParseTimelineError(hex.to_string());
        if hex.len() != 8 {
            return Err(err());
        }
        u32::from_str_radix(hex, 16)
            .ok()
            .and_then(TimelineId::new)
            .ok_or_else(err)
    }
}

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::UpperHex for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::UpperHex::fmt(&self.0, f)
    }
}

impl FromStr for TimelineId {
    type Err = ParseTimelineError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<u32>()
            .ok()
            .and_then(TimelineId::new)
            .ok_or_else(|| ParseTimelineError(s.to_string()))
    }
}

impl Serialize for TimelineId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.0)
    }
}

impl<'de> Deserialize<'de> for TimelineId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        TimelineId::new(n).ok_or_else(|| serde::de::Error::custom("timeline 0 is not a timeline"))
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Lsn {
    /// The invalid LSN `0/0`.
    pub const INVALID: Lsn = Lsn(0);

    /// The segment number holding this LSN.
    pub fn segment_number(self, segment_size_bytes: u64) -> u64 {
        self.0 / segment_size_bytes
    }

    /// The byte offset of this LSN inside its segment.
    pub fn segment_offset(self, segment_size_bytes: u64) -> u64 {
        self.0 % segment_size_bytes
    }

    /// The first LSN of the segment holding this LSN.
    pub fn segment_start(self, segment_size_bytes: u64) -> Lsn {
        Lsn(self.0 - self.0 % segment_size_bytes)
    }

    /// Whether this LSN is the first byte of a segment.
    pub fn is_segment_start(self, segment_size_bytes: u64) -> bool {
        self.0.is_multiple_of(segment_size_bytes)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Padded, so that tables can align LSNs.
        f.pad(&format!("{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF))
    }
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl Lsn {
    /// `self + bytes`, unless that passes the last LSN there can be.
    pub fn checked_add(self, bytes: u64) -> Option<Lsn> {
        self.0.checked_add(bytes).map(Lsn)
    }
}

impl std::ops::Add<u64> for Lsn {
    type Output = Lsn;
    /// Adds a length that is known to fit (a segment offset or size).
    fn add(self, rhs: u64) -> Lsn {
        Lsn(self.0.saturating_add(rhs))
    }
}

/// A WAL segment file name: timeline and segment number, for one segment size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentName {
    /// The timeline the segment belongs to.
    pub timeline: TimelineId,
    /// The segment number (LSN / segment size).
    pub number: u64,
}

/// A file name that is neither a WAL segment nor a timeline history file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a WAL segment name (24 hexadecimal digits) or a history file name")]
pub struct ParseWalFileError(String);

impl SegmentName {
    /// The segment that holds `lsn` on `timeline`.
    pub fn from_lsn(timeline: TimelineId, lsn: Lsn, segment_size_bytes: u64) -> Self {
        SegmentName {
            timeline,
            number: lsn.segment_number(segment_size_bytes),
        }
    }

    /// The 24-hex name PostgreSQL gives this segment.
    pub fn to_file_name(self, segment_size_bytes: u64) -> String {
        let per_xlogid = segments_per_xlogid(segment_size_bytes);
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / per_xlogid,
            self.number % per_xlogid
        )
    }

    /// Parses a 24-hex segment file name.
    ///
    /// # Errors
    /// When `name` is not 24 hexadecimal digits with a valid timeline.
    pub fn parse(name: &str, segment_size_bytes: u64) -> Result<Self, ParseWalFileError> {
        let err = || ParseWalFileError(name.to_string());
        if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        let timeline = TimelineId::from_hex(&name[0..8]).map_err(|_| err())?;
        let xlogid = u64::from_str_radix(&name[8..16], 16).map_err(|_| err())?;
        let seg = u64::from_str_radix(&name[16..24], 16).map_err(|_| err())?;
        let per_xlogid = segments_per_xlogid(segment_size_bytes);
        if seg >= per_xlogid {
            return Err(err());
        }
        Ok(SegmentName {
            timeline,
            number: xlogid * per_xlogid + seg,
        })
    }

    /// The first LSN of this segment.
    pub fn start_lsn(self, segment_size_bytes: u64) -> Lsn {
        Lsn(self.number * segment_size_bytes)
    }
}

/// The file name of a timeline history file, `0000000N.history`.
pub fn history_file_name(timeline: TimelineId) -> String {
    format!("{timeline:08X}.history")
}

/// What a file name PostgreSQL asks `restore_command` for refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalFileName {
    /// A WAL segment, named by its 24 hex digits.
    Segment(SegmentName),
    /// A timeline history file.
    History(TimelineId),
}

impl WalFileName {
    /// Parses `%f` as PostgreSQL passes it to `restore_command`.
    ///
    /// # Errors
    /// When the name is neither a segment nor a history file name.
    pub fn parse(name: &str, segment_size_bytes: u64) -> Result<Self, ParseWalFileError> {
        if let Some(tli) = name.strip_suffix(".history") {
            return TimelineId::from_hex(tli)
                .map(WalFileName::History)
                .map_err(|_| ParseWalFileError(name.to_string()));
        }
        SegmentName::parse(name, segment_size_bytes).map(WalFileName::Segment)
    }
}

fn segments_per_xlogid(segment_size_bytes: u64) -> u64 {
    0x1_0000_0000 / segment_size_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB16: u64 = 16 * 1024 * 1024;

    fn tli(n: u32) -> TimelineId {
        TimelineId::new(n).unwrap()
    }

    #[test]
    fn stored_values_parse_strictly() {
        let l: Lsn = serde_json::from_str("\"16/B374D848\"").unwrap();
        assert_eq!(l, Lsn(0x16_B374_D848));
        assert_eq!(serde_json::to_string(&l).unwrap(), "\"16/B374D848\"");
        assert!(serde_json::from_str::<Lsn>("\"nonsense\"").is_err());
        assert!(serde_json::from_str::<Lsn>("\"\"").is_err());
        assert!(serde_json::from_str::<TimelineId>("0").is_err());
        assert_eq!(serde_json::from_str::<TimelineId>("3").unwrap(), tli(3));
        assert!("0".parse::<TimelineId>().is_err());
        assert_eq!(TimelineId::new(u32::MAX).unwrap().next(), None);
        assert!(TimelineId::from_hex("00000000").is_err());
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
    }

    #[test]
    fn lsn_prints_like_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn(0x0100_0028).to_string(), "0/1000028");
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap(), Lsn(0x16_B374_D848));
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn segment_names_match_postgres() {
        let name = SegmentName::from_lsn(TimelineId::FIRST, Lsn(0x0100_0028), MIB16);
        assert_eq!(name.to_file_name(MIB16), "000000010000000000000001");
        let name = SegmentName::from_lsn(tli(2), Lsn(0x1_0300_0000), MIB16);
        assert_eq!(name.to_file_name(MIB16), "000000020000000100000003");
        // 1 MiB segments: 4096 per xlogid.
        let mib = 1024 * 1024;
        let name = SegmentName::from_lsn(TimelineId::FIRST, Lsn(0x006F_F000), mib);
        assert_eq!(name.to_file_name(mib), "000000010000000000000006");
        assert_eq!(
            SegmentName::parse("000000020000000100000003", MIB16).unwrap(),
            SegmentName {
                timeline: tli(2),
                number: 259
            }
        );
        assert!(SegmentName::parse("000000020000000100000100", MIB16).is_err());
        assert_eq!(
            WalFileName::parse("0000000A.history", MIB16).unwrap(),
            WalFileName::History(tli(10))
        );
        assert!(WalFileName::parse("00000001000000000000000A.partial", MIB16).is_err());
    }

    proptest! {
        #[test]
        fn lsn_round_trips(v: u64) {
            prop_assert_eq!(Lsn(v).to_string().parse::<Lsn>().unwrap(), Lsn(v));
        }

        #[test]
        fn segment_name_round_trips(tl in 1u32.., number in 0u64..(1 << 40), shift in 20u32..31) {
            let size = 1u64 << shift;
            let number = number % (u64::MAX / size);
            let name = SegmentName { timeline: tli(tl), number };
            prop_assert_eq!(SegmentName::parse(&name.to_file_name(size), size).unwrap(), name);
        }
    }
}
