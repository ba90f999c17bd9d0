//! The properties of the sealed-object and tar-stream targets.

use bytes::Bytes;

use super::{FUZZ_KEY_BYTES, Fields, MAX_FUZZ_FRAME_SIZE_BYTES, OTHER_KEY_BYTES};
use crate::backup::tar::{TarError, TarFile, TarWalker};
use crate::format::chunk::{self, Binding, Compression, Expect, SealOptions};
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
    open_arbitrary_object_in_place(data);
    seal_round_trip(data);
    seal_bound_round_trip(data);
}

/// The key the bound properties read objects from.
const FUZZ_OBJECT_KEY: &str = "wal/00000001/000000010000000000000003";

/// Arbitrary bytes read as a repository reads them (version 2 only, a
/// cipher required, from one key): they open only when they are a bound,
/// encrypted object of that key under the given master key, and then to
/// what the unchecked reader gives.
fn open_arbitrary_object_in_place(data: &[u8]) {
    let ring = Keyring::single(MasterKey::from_bytes(FUZZ_KEY_BYTES));
    let expect = Expect {
        key: FUZZ_OBJECT_KEY,
        allow_unbound: false,
        require_cipher: true,
    };
    if let Ok(bytes) = chunk::open_expected(data, &ring, expect) {
        let header = chunk::parse_header(data, Some(FUZZ_OBJECT_KEY))
            .expect("an object that opens has a header bound here");
        assert_eq!(
            header.version, 2,
            "an unbound object opened where binding is required"
        );
        assert_eq!(
            header.key_id,
            Some(ring.ids()[0]),
            "opened without its cipher"
        );
        assert_eq!(
            chunk::open(data, &ring).ok(),
            Some(bytes),
            "two readers disagree"
        );
    }
}

/// The bound (version 2) envelope, as repositories use it: an object
/// opens at the key it was sealed for, never at another; where binding is
/// required an unbound one is refused, and where a cipher is required a
/// plain one is refused, whatever their CRCs.
fn seal_bound_round_trip(data: &[u8]) {
    let mut f = Fields::new(data);
    let settings = f.u8();
    let salt = [f.u8(); 16];
    let other_key_len = usize::from(f.u8());
    let plaintext = f.rest();
    let encrypt = settings & 1 == 1;
    let options = SealOptions {
        compression: if settings & 2 == 0 {
            Compression::None
        } else {
            Compression::Zstd { level: 1 }
        },
        frame_size_bytes: 1 + u32::from(settings >> 2) * 7,
    };
    let master = MasterKey::from_bytes(FUZZ_KEY_BYTES);
    let key = encrypt.then_some(&master);
    let ring = if encrypt {
        Keyring::single(MasterKey::from_bytes(FUZZ_KEY_BYTES))
    } else {
        Keyring::none()
    };
    let pieces = [Bytes::copy_from_slice(plaintext)];
    let expect = |at: &'static str, require_cipher: bool| Expect {
        key: at,
        allow_unbound: false,
        require_cipher,
    };
    let bound = chunk::seal_bound(&pieces, &options, key, salt, Binding::Key(FUZZ_OBJECT_KEY));
    let opened = chunk::open_expected(&bound, &ring, expect(FUZZ_OBJECT_KEY, encrypt))
        .expect("a bound object opens where it was sealed for");
    assert!(opened == plaintext, "open(seal(x)) != x for a bound object");
    // Another key, or the same key with a byte more or less.
    let others: [&'static str; 3] = [
        "wal/00000001/000000010000000000000004",
        "wal/00000001/00000001000000000000000",
        "wal/00000001/0000000100000000000000033",
    ];
    let other = others[other_key_len % others.len()];
    assert!(
        chunk::open_expected(&bound, &ring, expect(other, encrypt)).is_err(),
        "a bound object opened at another key"
    );
    let unbound = chunk::seal_bound(&pieces, &options, key, salt, Binding::Unbound);
    assert!(
        chunk::open_expected(&unbound, &ring, expect(FUZZ_OBJECT_KEY, encrypt)).is_err(),
        "an unbound object opened where binding is required"
    );
    if !encrypt {
        assert!(
            chunk::open_expected(&bound, &ring, expect(FUZZ_OBJECT_KEY, true)).is_err(),
            "a plain object opened where a cipher is required"
        );
    }
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
        unpack_agrees(archive, files);
    }
}

/// The restore's tar reader on the same archive, unpacking into a new
/// directory: it writes nothing outside it, and when it accepts the
/// archive, every file the walker checksummed (the CRCs `verify` and
/// the server's manifest are compared with) is on disk with that size and
/// CRC: the walker and the writer read one archive the same way.
fn unpack_agrees(archive: &[u8], files: &[TarFile]) {
    let base = std::env::temp_dir().join(format!(
        "walvault-fuzz-unpack-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let target = base.join("data");
    std::fs::create_dir_all(&target).expect("a temporary directory");
    let unpacked = crate::restore::unpack::unpack_tar(archive, &target, true);
    let outside: Vec<_> = std::fs::read_dir(&base)
        .expect("the temporary directory")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    let checked = unpacked.is_ok().then(|| {
        // The writer reads a path as its components (`./a`, `a/` and `a`
        // are one file) and a later entry replaces an earlier one: compare
        // the last entry of each path.
        let mut last = std::collections::BTreeMap::new();
        for file in files {
            let rel: std::path::PathBuf = std::path::Path::new(&file.path)
                .components()
                .filter(|c| !matches!(c, std::path::Component::CurDir))
                .collect();
            if !rel.as_os_str().is_empty() {
                last.insert(rel, file);
            }
        }
        last.into_iter()
            .map(|(rel, file)| {
                let on_disk = std::fs::read(target.join(rel)).ok();
                (file, on_disk)
            })
            .filter_map(|(file, on_disk)| match on_disk {
                Some(bytes)
                    if bytes.len() as u64 == file.size && crc32c::crc32c(&bytes) == file.crc32c =>
                {
                    None
                }
                other => Some(format!(
                    "{}: the walker says {} bytes CRC {:08x}, the disk holds {:?}",
                    file.path,
                    file.size,
                    file.crc32c,
                    other.map(|b| (b.len(), crc32c::crc32c(&b)))
                )),
            })
            .collect::<Vec<_>>()
    });
    let _ = std::fs::remove_dir_all(&base);
    assert_eq!(
        outside,
        vec![std::ffi::OsString::from("data")],
        "the unpack wrote outside its directory"
    );
    if let Some(disagreements) = checked {
        assert!(
            disagreements.is_empty(),
            "walker and writer disagree: {disagreements:?}"
        );
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
