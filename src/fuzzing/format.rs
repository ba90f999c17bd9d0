//! The properties of the sealed-object and tar-stream targets.

use bytes::Bytes;

use super::{FUZZ_KEY_BYTES, Fields, MAX_FUZZ_FRAME_SIZE_BYTES, OTHER_KEY_BYTES};
use crate::backup::tar::{TarError, TarFile, TarWalker};
use crate::format::chunk::{self, Compression, SealOptions};
use crate::format::key::{Keyring, MasterKey};

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
