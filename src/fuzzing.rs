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

use bytes::{BufMut, Bytes, BytesMut};
use secrecy::ExposeSecret;

use crate::backup::tar::{TarError, TarFile, TarWalker};
use crate::config::settings_file::RepositoryConfigFile;
use crate::format::backup::{BackupMetadata, parse_server_manifest};
use crate::format::chunk::{self, Compression, SealOptions};
use crate::format::key::{Keyring, MasterKey};
use crate::format::manifest::RepositoryManifest;
use crate::lsn::{Lsn, SegmentName, WalFileName};
use crate::protocol::conninfo::ConnInfo;
use crate::protocol::message::{
    PrimaryKeepalive, ReplicationMessage, StandbyStatusUpdate, XLogData, decode_replication_message,
};
use crate::storage::layout::{self, WalObject};
use crate::wal::history::{follow_history, parse_history};

/// The master key of the sealed-object targets: the key of the golden files
/// in `tests/data/golden/`, so their encrypted seeds open.
const FUZZ_KEY_BYTES: [u8; 32] = [0x42; 32];

/// Another key, which must never open what [`FUZZ_KEY_BYTES`] sealed.
const OTHER_KEY_BYTES: [u8; 32] = [0x43; 32];

/// Largest frame the seal round trip uses; small, so inputs span many frames.
const MAX_FUZZ_FRAME_SIZE_BYTES: u32 = 4096;

/// Starts every password the connection-string target writes: text the rest
/// of the input does not contain, so finding it in an error or a log line
/// means the password leaked.
const PASSWORD_MARKER: &str = "pw-7f3a9c";

/// WAL segment sizes the key parsers are checked with (PostgreSQL allows
/// powers of two from 1 MiB to 1 GiB).
const SEGMENT_SIZES_BYTES: [u64; 3] = [1 << 20, 16 << 20, 1 << 30];

/// Reads fixed-size fields off the front of a fuzz input; missing bytes read
/// as zero, so every input is usable.
struct Fields<'a> {
    data: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(data: &'a [u8]) -> Self {
        Fields { data }
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// The replication message decoder: arbitrary CopyData payloads either fail
/// or decode to a message that encodes back to the same bytes (a keepalive's
/// reply flag reads any non-zero byte as yes), exactly the well-formed
/// payloads are accepted, and XLogData hands its WAL out as a view of the
/// payload. The standby status update encodes every field in place.
pub fn replication_message(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    let decoded = decode_replication_message(payload.clone());
    let well_formed = match data.first() {
        Some(b'w') => data.len() >= 25,
        Some(b'k') => data.len() == 18,
        _ => false,
    };
    assert_eq!(
        decoded.is_ok(),
        well_formed,
        "accepted a malformed or rejected a well-formed payload: {decoded:?}"
    );
    if let Ok(message) = decoded {
        let mut encoded = BytesMut::new();
        encode_replication_message(&message, &mut encoded);
        let mut expected = data.to_vec();
        if let ReplicationMessage::Keepalive(k) = &message {
            expected[17] = u8::from(k.reply_requested);
            assert_eq!(k.reply_requested, data[17] != 0);
        }
        assert_eq!(&encoded[..], &expected[..], "re-encoding differs");
        let again = decode_replication_message(encoded.freeze()).expect("re-encoded decodes");
        assert_eq!(again, message, "decode(encode(x)) != x");
        if let ReplicationMessage::XLogData(x) = &message {
            assert_eq!(
                x.data.as_ptr(),
                payload[25..].as_ptr(),
                "XLogData copied its WAL"
            );
        }
    }

    let mut f = Fields::new(data);
    let mut word = || {
        let mut b = [0u8; 8];
        for byte in &mut b {
            *byte = f.u8();
        }
        u64::from_be_bytes(b)
    };
    let update = StandbyStatusUpdate {
        write: Lsn(word()),
        flush: Lsn(word()),
        apply: Lsn(word()),
        client_time: word() as i64,
        reply_requested: word() & 1 == 1,
    };
    let mut encoded = BytesMut::new();
    update.encode(&mut encoded);
    let mut expected = vec![b'r'];
    expected.extend_from_slice(&update.write.0.to_be_bytes());
    expected.extend_from_slice(&update.flush.0.to_be_bytes());
    expected.extend_from_slice(&update.apply.0.to_be_bytes());
    expected.extend_from_slice(&update.client_time.to_be_bytes());
    expected.push(u8::from(update.reply_requested));
    assert_eq!(&encoded[..], &expected[..], "standby status update layout");
}

/// The server's side of the replication messages, as the protocol documents
/// them; the library only decodes these.
fn encode_replication_message(message: &ReplicationMessage, buf: &mut BytesMut) {
    match message {
        ReplicationMessage::XLogData(XLogData {
            start,
            wal_end,
            send_time,
            data,
        }) => {
            buf.put_u8(b'w');
            buf.put_u64(start.0);
            buf.put_u64(wal_end.0);
            buf.put_i64(*send_time);
            buf.put_slice(data);
        }
        ReplicationMessage::Keepalive(PrimaryKeepalive {
            wal_end,
            send_time,
            reply_requested,
        }) => {
            buf.put_u8(b'k');
            buf.put_u64(wal_end.0);
            buf.put_i64(*send_time);
            buf.put_u8(u8::from(*reply_requested));
        }
    }
}

/// The sealed-object reader and writer, on the same input read two ways.
///
/// As an object: opening arbitrary bytes never panics, fails exactly as the
/// header says it must (no key for an encrypted object, the same result with
/// or without a key for a plain one), and never succeeds with a key that is
/// not the object's.
///
/// As a recipe (options, salt, a split point, a byte to flip and a place to
/// cut, then the plaintext): `open(seal(x)) == x` across pieces and frames,
/// with and without compression and encryption; a changed byte is always
/// detected under encryption and never yields other bytes without it; a
/// truncated object never opens; a wrong or missing key is named.
pub fn sealed_object(data: &[u8]) {
    open_arbitrary_object(data);
    seal_round_trip(data);
}

fn open_arbitrary_object(data: &[u8]) {
    let key = MasterKey::from_bytes(FUZZ_KEY_BYTES);
    let key_id = key.id();
    let keyed = chunk::open(data, &Keyring::single(key));
    let unkeyed = chunk::open(data, &Keyring::none());
    let other = chunk::open(
        data,
        &Keyring::single(MasterKey::from_bytes(OTHER_KEY_BYTES)),
    );
    match chunk::parse_header(data, None) {
        Err(e) => {
            assert_eq!(keyed.as_ref().err(), Some(&e), "open ignored a bad header");
            assert_eq!(unkeyed.err(), Some(e), "open ignored a bad header");
        }
        Ok(header) => match header.key_id {
            None => {
                assert_eq!(keyed, unkeyed, "a key changed how a plain object opens");
                assert_eq!(keyed, other, "a key changed how a plain object opens");
            }
            Some(id) => {
                assert!(
                    matches!(unkeyed, Err(chunk::Error::KeyRequired { key_id }) if key_id == id),
                    "an encrypted object opened without a key: {unkeyed:?}"
                );
                if id != key_id {
                    assert!(keyed.is_err(), "opened with a key it does not name");
                }
                if id != MasterKey::from_bytes(OTHER_KEY_BYTES).id() {
                    assert!(other.is_err(), "opened with a key it does not name");
                }
            }
        },
    }
}

fn seal_round_trip(data: &[u8]) {
    let mut f = Fields::new(data);
    let settings = f.u8();
    let frame_size_bytes = 1 + u32::from(f.u16()) % MAX_FUZZ_FRAME_SIZE_BYTES;
    let split_at = usize::from(f.u16());
    let salt = [f.u8(); 16];
    let flip_at = usize::from(f.u16());
    let flip_mask = f.u8().max(1);
    let cut_at = usize::from(f.u16());
    let plaintext = f.rest();

    let encrypt = settings & 1 == 1;
    let compression = match (settings >> 1) & 3 {
        0 => Compression::None,
        level => Compression::Zstd {
            level: i32::from(level),
        },
    };
    let options = SealOptions {
        compression,
        frame_size_bytes,
    };
    let split_at = split_at % (plaintext.len() + 1);
    let pieces = [
        Bytes::copy_from_slice(&plaintext[..split_at]),
        Bytes::new(),
        Bytes::copy_from_slice(&plaintext[split_at..]),
    ];
    let key = encrypt.then(|| MasterKey::from_bytes(FUZZ_KEY_BYTES));
    let ring = || {
        if encrypt {
            Keyring::single(MasterKey::from_bytes(FUZZ_KEY_BYTES))
        } else {
            Keyring::none()
        }
    };
    let sealed = chunk::seal(&pieces, &options, key.as_ref(), salt);

    let header = chunk::parse_header(&sealed, None).expect("a sealed header parses");
    assert_eq!(header.key_id, key.as_ref().map(MasterKey::id));
    assert_eq!(header.frame_size_bytes, frame_size_bytes);
    assert_eq!(header.compressed, compression != Compression::None);
    let opened = chunk::open(&sealed, &ring()).expect("a sealed object opens");
    assert!(opened == plaintext, "open(seal(x)) != x");

    let mut flipped = sealed.clone();
    flipped[flip_at % sealed.len()] ^= flip_mask;
    match chunk::open(&flipped, &ring()) {
        Err(_) => {}
        Ok(bytes) => {
            assert!(!encrypt, "a changed byte opened under encryption");
            assert!(bytes == plaintext, "a changed byte opened to other bytes");
        }
    }

    let cut_at = cut_at % sealed.len();
    assert!(
        chunk::open(&sealed[..cut_at], &ring()).is_err(),
        "a truncated object opened"
    );

    if encrypt {
        assert!(matches!(
            chunk::open(&sealed, &Keyring::none()),
            Err(chunk::Error::KeyRequired { .. })
        ));
        assert!(matches!(
            chunk::open(
                &sealed,
                &Keyring::single(MasterKey::from_bytes(OTHER_KEY_BYTES))
            ),
            Err(chunk::Error::UnknownKey { .. })
        ));
    }
}

/// The tar walker: the archive (after a two-byte split point and a one-byte
/// step) gives the same files, errors and end as when fed whole, split at the
/// point, and fed `step` bytes at a time; what it reports is consistent with
/// the bytes it was fed.
pub fn tar_stream(data: &[u8]) {
    let mut f = Fields::new(data);
    let split_at = usize::from(f.u16());
    let step = usize::from(f.u8()) + 1;
    let archive = f.rest();
    let split_at = split_at % (archive.len() + 1);

    let whole = walk_tar([archive]);
    let halves = walk_tar([&archive[..split_at], &archive[split_at..]]);
    assert_eq!(whole, halves, "split at {split_at} changed the walk");
    let steps = walk_tar(archive.chunks(step));
    assert_eq!(
        whole, steps,
        "feeding {step} bytes at a time changed the walk"
    );

    if let Ok((files, _)) = &whole {
        let content: u64 = files.iter().map(|file| file.size).sum();
        assert!(
            content <= archive.len() as u64,
            "files hold more bytes than the archive"
        );
        for file in files {
            if file.size == 0 {
                assert_eq!(file.crc32c, 0, "an empty file has a checksum");
            }
        }
    }
}

/// Walks an archive fed in `pieces`: the files and how it ended, or the first
/// error a piece raised.
fn walk_tar<'a>(
    pieces: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(Vec<TarFile>, Result<(), TarError>), TarError> {
    let mut walker = TarWalker::new();
    let mut files = Vec::new();
    for piece in pieces {
        files.extend(walker.feed(piece)?);
    }
    Ok((files, walker.finish()))
}

/// The connection-string parser, on the input as a string and on a string
/// built from it around a password: never panics; when it accepts, the
/// targets match the hosts and ports; a password never appears in an error,
/// in `Debug` or in [`ConnInfo::describe`]; a correctly quoted or encoded
/// password comes back unchanged.
pub fn connection_string(data: &[u8]) {
    let no_env = |_: &str| None;
    if let Ok(info) = ConnInfo::parse(&String::from_utf8_lossy(data), &no_env) {
        assert!(info.ports.len() == 1 || info.ports.len() == info.hosts.len());
        assert_eq!(info.targets().len(), info.hosts.len());
        let _ = info.describe();
        let _ = format!("{info:?}");
    }

    let mut f = Fields::new(data);
    let form = f.u8();
    let text = String::from_utf8_lossy(f.rest());
    let mut fields = text.split('\u{0}');
    let password = format!("{PASSWORD_MARKER}{}", fields.next().unwrap_or_default());
    let user = fields.next().unwrap_or_default();
    let host = fields.next().unwrap_or_default();
    let rest = fields.collect::<Vec<_>>().join("\u{0}");
    if [&password[PASSWORD_MARKER.len()..], user, host, &rest]
        .iter()
        .any(|t| t.contains(PASSWORD_MARKER))
    {
        return;
    }
    // Bit 0: URI or key=value; bit 1: password in the userinfo or the query
    // (URI only); bit 2: password written correctly, or as it came.
    let uri = form & 1 == 1;
    let in_query = form & 2 == 2;
    let exact = form & 4 == 4;
    let conninfo = if uri {
        let encode_part = |s: &str| percent_encode(s, |_| true);
        let password_text = if exact {
            encode_part(&password)
        } else if in_query {
            percent_encode(&password, |c| c == '&')
        } else {
            percent_encode(&password, |c| matches!(c, '/' | '?'))
        };
        let authority_host = percent_encode(host, |c| matches!(c, '@' | '/' | '?' | ','));
        if in_query {
            format!(
                "postgresql://{}@{authority_host}/?password={password_text}&{rest}",
                encode_part(user)
            )
        } else {
            format!(
                "postgresql://{}:{password_text}@{authority_host}/?{rest}",
                encode_part(user)
            )
        }
    } else {
        let password_text = if exact {
            quote_value(&password)
        } else {
            password.clone()
        };
        format!(
            "user={} host={} password={password_text} {rest}",
            quote_value(user),
            quote_value(host)
        )
    };

    match ConnInfo::parse(&conninfo, &no_env) {
        Err(e) => {
            assert!(
                !e.to_string().contains(PASSWORD_MARKER),
                "the password is in the error {e}"
            );
            assert!(
                !format!("{e:?}").contains(PASSWORD_MARKER),
                "the password is in the error {e:?}"
            );
        }
        Ok(info) => {
            assert!(
                !format!("{info:?}").contains(PASSWORD_MARKER),
                "Debug shows the password"
            );
            assert!(
                !info.describe().contains(PASSWORD_MARKER),
                "describe() shows the password"
            );
            // Another password later in the string would win, as in libpq.
            if exact && !rest.contains("pass") && !rest.contains('%') {
                let given = info
                    .password
                    .as_ref()
                    .map(|p| p.expose_secret().to_string());
                assert_eq!(given.as_deref(), Some(password.as_str()), "in {conninfo:?}");
            }
        }
    }
}

/// Percent-encodes the characters `escape` picks (and `%` whenever anything
/// is escaped); the rest stays as it is.
fn percent_encode(s: &str, escape: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if escape(c) && !c.is_ascii_alphanumeric() || c == '%' && escape('%') {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A key=value value in single quotes, as libpq reads them.
fn quote_value(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Every document walvault reads from storage or the operator, on the same
/// bytes: `backup.json`, `walvault.json`, the repository settings file,
/// PostgreSQL's `backup_manifest`, timeline history files, key files, WAL
/// object keys and WAL file names. None panics; whatever parses writes back
/// out in a form that parses to the same value and writes out identically.
pub fn stored_documents(data: &[u8]) {
    backup_metadata(data);
    repository_manifest(data);
    repository_settings(data);
    server_manifest(data);
    let text = String::from_utf8_lossy(data);
    timeline_history(&text);
    key_file(&text);
    for size in SEGMENT_SIZES_BYTES {
        wal_names(&text, size);
    }
}

fn backup_metadata(data: &[u8]) {
    if let Ok(meta) = serde_json::from_slice::<BackupMetadata>(data) {
        let text = serde_json::to_string(&meta).expect("backup.json serializes");
        let again: BackupMetadata = serde_json::from_str(&text).expect("backup.json re-parses");
        assert_eq!(again, meta, "backup.json changed in a round trip");
        let text_again = serde_json::to_string(&again).expect("backup.json serializes");
        assert_eq!(text, text_again, "backup.json does not serialize stably");
        let pretty = serde_json::to_vec_pretty(&meta).expect("backup.json serializes");
        let from_pretty: BackupMetadata =
            serde_json::from_slice(&pretty).expect("stored backup.json re-parses");
        assert_eq!(
            from_pretty, meta,
            "stored backup.json changed in a round trip"
        );
    }
}

fn repository_manifest(data: &[u8]) {
    if let Ok(manifest) = serde_json::from_slice::<RepositoryManifest>(data) {
        let text = serde_json::to_string(&manifest).expect("walvault.json serializes");
        let again: RepositoryManifest =
            serde_json::from_str(&text).expect("walvault.json re-parses");
        assert_eq!(again, manifest, "walvault.json changed in a round trip");
        assert_eq!(
            text,
            serde_json::to_string(&again).expect("walvault.json serializes"),
            "walvault.json does not serialize stably"
        );
        let pretty = serde_json::to_vec_pretty(&manifest).expect("walvault.json serializes");
        let from_pretty: RepositoryManifest =
            serde_json::from_slice(&pretty).expect("stored walvault.json re-parses");
        assert_eq!(from_pretty, manifest);
        let _ = manifest.check_keys(&[MasterKey::from_bytes(FUZZ_KEY_BYTES).id()]);
        let _ = manifest.check_server("7300000000000000001", 16 << 20);
    }
}

fn repository_settings(data: &[u8]) {
    // Read-only: walvault never writes this file, so only parsing is checked.
    if let Ok(settings) = serde_json::from_slice::<RepositoryConfigFile>(data)
        && let Some(key) = &settings.key
    {
        let _ = Keyring::from_key_file_text(key, "repository settings file");
    }
}

fn server_manifest(data: &[u8]) {
    let Ok(files) = parse_server_manifest(data) else {
        return;
    };
    // Written back the way PostgreSQL writes it, the manifest lists the same files.
    let entries: Vec<serde_json::Value> = files
        .iter()
        .map(|file| {
            let mut entry = serde_json::json!({ "Path": file.path, "Size": file.size });
            if let Some(crc) = &file.crc32c {
                entry["Checksum-Algorithm"] = "CRC32C".into();
                entry["Checksum"] = crc.as_str().into();
            }
            entry
        })
        .collect();
    let document = serde_json::json!({
        "PostgreSQL-Backup-Manifest-Version": 1,
        "Files": entries,
    });
    let bytes = serde_json::to_vec(&document).expect("manifest serializes");
    let again = parse_server_manifest(&bytes).expect("a written manifest parses");
    assert_eq!(again, files, "backup_manifest changed in a round trip");
}

fn timeline_history(text: &str) {
    let Ok(history) = parse_history(text) else {
        return;
    };
    let written: String = history
        .iter()
        .map(|e| {
            format!(
                "{}\t{}\tno recovery target specified\n",
                e.timeline, e.switch_lsn
            )
        })
        .collect();
    let again = parse_history(&written).expect("a written history parses");
    assert_eq!(again, history, "history changed in a round trip");

    // Following the history from any of its switch points ends, on a
    // timeline no older than the one it started from.
    let current = history
        .iter()
        .map(|e| e.timeline)
        .max()
        .map_or(crate::lsn::TimelineId::FIRST, |t| t.next().unwrap_or(t));
    for entry in history.iter().take(8) {
        for lsn in [Lsn::INVALID, entry.switch_lsn, Lsn(u64::MAX)] {
            let (timeline, _, _) = follow_history(&history, current, entry.timeline, lsn, 16 << 20);
            assert!(timeline >= entry.timeline, "went back to an older timeline");
        }
    }
}

fn key_file(text: &str) {
    if let Ok(ring) = Keyring::from_key_file_text(text, "key file") {
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        assert_eq!(ring.ids().len(), keys, "a key line was lost");
        assert_eq!(
            ring.write_key().map(MasterKey::id),
            ring.ids().first().copied()
        );
    }
}

fn wal_names(text: &str, segment_size_bytes: u64) {
    if let Some(object) = layout::parse_wal_key(text, segment_size_bytes) {
        let key = wal_object_key(&object, segment_size_bytes);
        assert_eq!(
            layout::parse_wal_key(&key, segment_size_bytes),
            Some(object),
            "{key} does not parse back"
        );
    }
    if let Ok(name) = WalFileName::parse(text, segment_size_bytes) {
        let file_name = match name {
            WalFileName::Segment(segment) => segment.to_file_name(segment_size_bytes),
            WalFileName::History(timeline) => crate::lsn::history_file_name(timeline),
        };
        assert_eq!(
            WalFileName::parse(&file_name, segment_size_bytes),
            Ok(name),
            "{file_name} does not parse back"
        );
    }
    if let Ok(segment) = SegmentName::parse(text, segment_size_bytes) {
        let start = segment.start_lsn(segment_size_bytes);
        assert_eq!(
            SegmentName::from_lsn(segment.timeline, start, segment_size_bytes),
            segment
        );
    }
}

fn wal_object_key(object: &WalObject, segment_size_bytes: u64) -> String {
    match *object {
        WalObject::Segment { segment } => layout::segment_key(segment, segment_size_bytes),
        WalObject::Delta {
            segment,
            start,
            end,
        } => layout::delta_key(segment, start, end, segment_size_bytes),
        WalObject::History { timeline } => layout::history_key(timeline),
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
