//! The properties the fuzz targets check: one pure function per target.
//!
//! The cargo-fuzz targets in `fuzz/fuzz_targets/` and the corpus replay test
//! (`tests/fuzz_corpus.rs`) call these same functions, so each property is
//! written once, and this module is the only place that ties the targets to
//! the modules they exercise. Every function takes arbitrary bytes, must not
//! panic on them, and panics (with a message saying which property broke)
//! only when the code under test misbehaves.
//!
//! Not part of walvault's API: it is public only so that `fuzz/` and the
//! integration tests can reach it.

mod backup;
mod documents;
mod format;
mod protocol;

pub use backup::base_backup;
pub use documents::stored_documents;
pub use format::{sealed_object, tar_stream};
pub use protocol::{connection_string, replication_message};

/// The master key of the sealed-object targets: the key of the golden files
/// in `tests/data/golden/`, so their encrypted seeds open.
pub(super) const FUZZ_KEY_BYTES: [u8; 32] = [0x42; 32];

/// Another key, which must never open what [`FUZZ_KEY_BYTES`] sealed.
pub(super) const OTHER_KEY_BYTES: [u8; 32] = [0x43; 32];

/// Largest frame the seal round trip uses; small, so inputs span many frames.
pub(super) const MAX_FUZZ_FRAME_SIZE_BYTES: u32 = 4096;

/// Starts every password the connection-string target writes: text the rest
/// of the input does not contain, so finding it in an error or a log line
/// means the password leaked.
pub(super) const PASSWORD_MARKER: &str = "pw-7f3a9c";

/// WAL segment sizes the key parsers are checked with (PostgreSQL allows
/// powers of two from 1 MiB to 1 GiB).
pub(super) const SEGMENT_SIZES_BYTES: [u64; 3] = [1 << 20, 16 << 20, 1 << 30];

/// Reads fixed-size fields off the front of a fuzz input; missing bytes read
/// as zero, so every input is usable.
pub(super) struct Fields<'a> {
    data: &'a [u8],
}

impl<'a> Fields<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Fields { data }
    }

    pub(super) fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub(super) fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub(super) fn bytes(&mut self, n: usize) -> Vec<u8> {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken.to_vec()
    }

    /// A length byte (modulo `limit`), then up to that many bytes.
    pub(super) fn prefixed(&mut self, limit: usize) -> Vec<u8> {
        let n = usize::from(self.u8()) % limit;
        self.bytes(n)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(super) fn rest(self) -> &'a [u8] {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_hold_on_empty_and_short_inputs() {
        for data in [
            &b""[..],
            b"\0",
            b"w",
            b"k",
            b"WVLT\x01",
            b"{}",
            b"\xff\xff\xff",
        ] {
            replication_message(data);
            sealed_object(data);
            tar_stream(data);
            connection_string(data);
            stored_documents(data);
            base_backup(data);
        }
    }

    #[test]
    fn properties_hold_on_valid_inputs() {
        let mut xlogdata = vec![b'w'];
        xlogdata.extend_from_slice(&[0u8; 24]);
        xlogdata.extend_from_slice(b"wal");
        replication_message(&xlogdata);
        sealed_object(b"\x03\x00\x10\x00\x02\x07\x00\x05\x10\x00\x09hello, sealed world");
        connection_string(b"\x05pass word\0arch\0db.local\0sslmode=require");
        connection_string(b"\x07pass word\0arch\0db.local\0sslmode=require");
        stored_documents(b"1\t0/3000158\tno recovery target specified\n");
        stored_documents(b"wal/00000002/000000020000000100000003.d/00000000-00002000");
    }
}
