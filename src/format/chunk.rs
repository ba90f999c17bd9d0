//! The sealed-object envelope: header | frames of zstd, then AES-256-GCM.
//!
//! Every object walvault stores (WAL segments, deltas, history files, backup
//! parts) goes through [`seal`] and comes back through [`open`]. The exact
//! bytes are specified in `docs/format.md`; a golden-file test pins them.
//!
//! Invariants:
//! - the header is authenticated (AES-GCM associated data, or its own CRC32
//!   when unencrypted) so any edit of it is detected;
//! - from envelope version 2 an object is bound to its repository key: the
//!   key is part of the authenticated data (and of the header CRC), so a
//!   genuine object copied or moved to another key does not open;
//! - each frame carries its index and a last-frame flag inside the
//!   authenticated data, so reordering, dropping and truncation are detected;
//! - no nonce repeats under one key: every object has its own data key (HKDF
//!   over a random salt) and the nonce is the frame index;
//! - malformed input returns [`Error`], never panics, never yields wrong bytes.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use bytes::Bytes;

use super::key::{Keyring, MasterKey};

/// First four bytes of every sealed object.
pub const MAGIC: [u8; 4] = *b"WVLT";
/// The envelope version this code writes: objects bound to their key.
pub const VERSION: u8 = 2;
/// The first envelope version, without the binding to the key; read only
/// in repositories whose identity document is of that first format.
pub const VERSION_UNBOUND: u8 = 1;
/// Bytes in the object header.
pub const HEADER_LEN: usize = 36;
/// Bytes in each frame header.
pub const FRAME_HEADER_LEN: usize = 17;
/// Bytes in an AES-GCM tag.
const TAG_LEN: usize = 16;
/// Bytes of per-object salt.
pub const SALT_LEN: usize = 16;

/// The random per-object salt the data key is derived from. The caller
/// draws it (this module reads no randomness); zero without a cipher.
pub type Salt = [u8; SALT_LEN];
/// Default plaintext bytes per frame: large enough for good compression,
/// small enough that restore can open frames in parallel.
pub const DEFAULT_FRAME_SIZE_BYTES: u32 = 4 * 1024 * 1024;
/// Default zstd level. Measured on real WAL (docs/benchmarks.md): level 1
/// compresses as well as level 3 (3.1x vs 3.0x on pgbench updates, 35x vs
/// 35x on bulk loads) at 1.7-1.8x the speed.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;
/// Largest frame size a reader accepts; bounds what a corrupt header can make
/// it allocate.
pub const MAX_FRAME_SIZE_BYTES: u32 = 64 * 1024 * 1024;

const FLAG_LAST: u8 = 0x01;
const FLAG_STORED: u8 = 0x02;

/// The compression of frame payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Payloads are stored as they are.
    None,
    /// Payloads are zstd frames at the given level.
    Zstd {
        /// zstd level (1 fastest … 19).
        level: i32,
    },
}

/// How new objects are sealed.
#[derive(Clone, Copy, Debug)]
pub struct SealOptions {
    /// Compression of each frame.
    pub compression: Compression,
    /// Plaintext bytes per frame.
    pub frame_size_bytes: u32,
}

impl Default for SealOptions {
    fn default() -> Self {
        SealOptions {
            compression: Compression::Zstd {
                level: DEFAULT_ZSTD_LEVEL,
            },
            frame_size_bytes: DEFAULT_FRAME_SIZE_BYTES,
        }
    }
}

/// Why a sealed object could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The bytes do not start with the walvault magic.
    #[error("not a walvault object (bad magic)")]
    BadMagic,
    /// A version this build does not read.
    #[error("unsupported object format version {0}")]
    UnsupportedVersion(u8),
    /// The object ends early.
    #[error("object is truncated")]
    Truncated,
    /// A field holds a value the format does not allow.
    #[error("object is corrupt: {0}")]
    Corrupt(&'static str),
    /// A CRC does not match.
    #[error("checksum mismatch in {0}")]
    Checksum(&'static str),
    /// The object is encrypted and no key was given.
    #[error(
        "object is encrypted with key {key_id:08x} but no key was given (set --key-file or WALVAULT_KEY)"
    )]
    KeyRequired {
        /// The key the object names.
        key_id: u32,
    },
    /// The object names a key the keyring does not hold.
    #[error("object is encrypted with key {key_id:08x}, which is not among the given keys {given}")]
    UnknownKey {
        /// The key the object names.
        key_id: u32,
        /// The ids that were given.
        given: String,
    },
    /// The header does not match the key the object was read from.
    #[error(
        "object header does not match this key: the object was moved or copied here from elsewhere, or damaged"
    )]
    Misplaced,
    /// Authentication failed: tampered, truncated, moved, or the wrong key.
    #[error(
        "frame {frame} failed authentication (object tampered with or moved here from elsewhere, or wrong key)"
    )]
    Authentication {
        /// The frame index.
        frame: u32,
    },
    /// An object without a cipher where the repository is encrypted.
    #[error(
        "object is not encrypted, but the repository is: refusing it (it was not written by walvault with this repository's key)"
    )]
    NotEncrypted,
    /// An object of the first envelope version where only bound ones are valid.
    #[error(
        "object is of envelope version 1, which this repository (format 2) never writes: refusing it"
    )]
    Unbound,
    /// zstd could not decompress a frame.
    #[error("frame {frame} does not decompress")]
    Decompress {
        /// The frame index.
        frame: u32,
    },
}

/// A parsed object header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Envelope version (1 or 2).
    pub version: u8,
    /// Whether frames are zstd-compressed.
    pub compressed: bool,
    /// The master key id, when encrypted.
    pub key_id: Option<u32>,
    /// The per-object salt.
    pub salt: [u8; SALT_LEN],
    /// Plaintext bytes per frame.
    pub frame_size_bytes: u32,
}

/// Seals `plaintext` (given as pieces, read in order) into one object.
///
/// With a key, frames are encrypted under a data key derived from the key and
/// `salt`, which must be fresh random bytes for every object (a repeated salt
/// repeats nonces); without a key they are only compressed and checksummed,
/// and the salt is stored as given (walvault gives zeros).
pub fn seal(
    plaintext: &[Bytes],
    options: &SealOptions,
    key: Option<&MasterKey>,
    salt: Salt,
) -> Vec<u8> {
    seal_object(plaintext, options, key, salt, None)
}

/// Where a sealed object lives and so may be opened: its repository key
/// (envelope version 2), or nowhere in particular (version 1, for
/// repositories of the first format).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding<'a> {
    /// Version 2: bound to this repository key.
    Key(&'a str),
    /// Version 1: not bound.
    Unbound,
}

/// Seals `plaintext` for the place `binding` names (see [`seal`]).
pub fn seal_bound(
    plaintext: &[Bytes],
    options: &SealOptions,
    key: Option<&MasterKey>,
    salt: Salt,
    binding: Binding<'_>,
) -> Vec<u8> {
    match binding {
        Binding::Key(k) => seal_object(plaintext, options, key, salt, Some(k)),
        Binding::Unbound => seal_object(plaintext, options, key, salt, None),
    }
}

/// What sealing keeps from one object to the next: the compressor's
/// context and the buffers of one frame, so that it does not take fresh
/// memory (page faults, and memory the allocator keeps) per object.
#[derive(Default)]
struct SealScratch {
    compressor: Option<(i32, zstd::bulk::Compressor<'static>)>,
    gather: Vec<u8>,
    payload: Vec<u8>,
}

/// Scratch kept between objects, for this many objects sealed at once (the
/// default upload concurrency); more at once take their own.
const SEAL_SCRATCH_KEPT: usize = 4;

static SEAL_SCRATCH: std::sync::Mutex<Vec<SealScratch>> = std::sync::Mutex::new(Vec::new());

fn seal_object(
    plaintext: &[Bytes],
    options: &SealOptions,
    key: Option<&MasterKey>,
    salt: Salt,
    bound_to: Option<&str>,
) -> Vec<u8> {
    let frame_size = options.frame_size_bytes.clamp(1, MAX_FRAME_SIZE_BYTES) as usize;
    let total: usize = plaintext.iter().map(Bytes::len).sum();
    let header = encode_header(options, key, &salt, frame_size as u32, bound_to);
    let cipher =
        key.map(|k| Aes256Gcm::new_from_slice(&k.derive_object_key(&salt)).expect("32-byte key"));
    let mut out = Vec::with_capacity(HEADER_LEN + total / 2 + 64);
    out.extend_from_slice(&header);
    let mut scratch = SEAL_SCRATCH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .pop()
        .unwrap_or_default();
    {
        let SealScratch {
            compressor,
            gather,
            payload,
        } = &mut scratch;
        let mut compressor = match options.compression {
            Compression::Zstd { level } => {
                if compressor.as_ref().is_none_or(|(l, _)| *l != level) {
                    *compressor = Some((
                        level,
                        zstd::bulk::Compressor::new(level).expect("valid zstd level"),
                    ));
                }
                compressor.as_mut().map(|(_, c)| c)
            }
            Compression::None => None,
        };
        let mut reader = PieceReader::new(plaintext);
        let mut index: u32 = 0;
        loop {
            let is_last = reader.remaining <= frame_size;
            let frame = reader.take(frame_size, gather);
            payload.clear();
            let stored = match compressor.as_deref_mut() {
                Some(c) => {
                    payload.reserve(zstd::zstd_safe::compress_bound(frame.len()));
                    c.compress_to_buffer(frame, payload)
                        .expect("zstd compression of a bounded frame");
                    if payload.len() < frame.len() {
                        false
                    } else {
                        payload.clear();
                        payload.extend_from_slice(frame);
                        true
                    }
                }
                None => {
                    payload.extend_from_slice(frame);
                    true
                }
            };
            let mut flags = 0;
            if is_last {
                flags |= FLAG_LAST;
            }
            if stored {
                flags |= FLAG_STORED;
            }
            let payload_len = payload.len() + if cipher.is_some() { TAG_LEN } else { 0 };
            let mut fh = [0u8; FRAME_HEADER_LEN];
            fh[0] = flags;
            fh[1..5].copy_from_slice(&index.to_be_bytes());
            fh[5..9].copy_from_slice(&(frame.len() as u32).to_be_bytes());
            fh[9..13].copy_from_slice(&(payload_len as u32).to_be_bytes());
            let crc = frame_crc(&fh[..13], frame);
            fh[13..17].copy_from_slice(&crc.to_be_bytes());
            out.extend_from_slice(&fh);
            if let Some(cipher) = &cipher {
                let aad = associated_data(&header, &fh, bound_to);
                let tag = cipher
                    .encrypt_in_place_detached(&nonce(index), &aad, payload)
                    .expect("AES-GCM encryption of a bounded frame");
                out.extend_from_slice(payload);
                out.extend_from_slice(&tag);
            } else {
                out.extend_from_slice(payload);
            }
            if is_last {
                break;
            }
            index += 1;
        }
    }
    let mut kept = SEAL_SCRATCH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if kept.len() < SEAL_SCRATCH_KEPT {
        kept.push(scratch);
    }
    drop(kept);
    out
}

/// Reads just the header of a sealed object.
///
/// # Errors
/// When the bytes are not a valid header.
pub fn parse_header(input: &[u8], bound_to: Option<&str>) -> Result<Header, Error> {
    if input.len() < MAGIC.len() {
        return Err(Error::Truncated);
    }
    if input[..4] != MAGIC {
        return Err(Error::BadMagic);
    }
    if input.len() < 5 {
        return Err(Error::Truncated);
    }
    let version = input[4];
    if version != VERSION && version != VERSION_UNBOUND {
        return Err(Error::UnsupportedVersion(version));
    }
    if input.len() < HEADER_LEN {
        return Err(Error::Truncated);
    }
    let stored_crc = u32::from_be_bytes(input[32..36].try_into().expect("4 bytes"));
    if header_crc(&input[..32], bound_to.filter(|_| version == VERSION)) != stored_crc {
        return Err(if version == VERSION && bound_to.is_some() {
            Error::Misplaced
        } else {
            Error::Checksum("object header")
        });
    }
    let compressed = match input[5] {
        0 => false,
        1 => true,
        _ => return Err(Error::Corrupt("unknown compression")),
    };
    let key_id = u32::from_be_bytes(input[8..12].try_into().expect("4 bytes"));
    let key_id = match input[6] {
        0 => None,
        1 => Some(key_id),
        _ => return Err(Error::Corrupt("unknown cipher")),
    };
    if input[7] != 0 {
        return Err(Error::Corrupt("reserved header byte is set"));
    }
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&input[12..28]);
    let frame_size_bytes = u32::from_be_bytes(input[28..32].try_into().expect("4 bytes"));
    if frame_size_bytes == 0 || frame_size_bytes > MAX_FRAME_SIZE_BYTES {
        return Err(Error::Corrupt("frame size out of range"));
    }
    Ok(Header {
        version,
        compressed,
        key_id,
        salt,
        frame_size_bytes,
    })
}

/// What a reader accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect<'a> {
    /// The repository key the object was read from.
    pub key: &'a str,
    /// Whether objects of envelope version 1 (not bound to their key) are
    /// accepted: only in repositories of the first format.
    pub allow_unbound: bool,
    /// Whether an object without a cipher is refused (an encrypted
    /// repository).
    pub require_cipher: bool,
}

/// Opens a sealed object and returns its plaintext, accepting any version
/// and no cipher (tests and tools that read objects outside a repository).
///
/// # Errors
/// On any damage, truncation, unknown or missing key; see [`Error`].
pub fn open(input: &[u8], keyring: &Keyring) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    open_object(input, keyring, None, true, false, &mut out)?;
    Ok(out)
}

/// Opens an object read from the repository key `expect.key`.
///
/// # Errors
/// As [`open`], and [`Error::Unbound`], [`Error::NotEncrypted`] or a failed
/// authentication (a moved object) where `expect` says so.
pub fn open_expected(
    input: &[u8],
    keyring: &Keyring,
    expect: Expect<'_>,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    open_expected_into(input, keyring, expect, &mut out)?;
    Ok(out)
}

/// [`open_expected`] into `out` (cleared first), so a caller that opens
/// many objects reuses one allocation.
///
/// # Errors
/// As [`open_expected`]; `out` then holds no usable plaintext.
pub fn open_expected_into(
    input: &[u8],
    keyring: &Keyring,
    expect: Expect<'_>,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    open_object(
        input,
        keyring,
        Some(expect.key),
        expect.allow_unbound,
        expect.require_cipher,
        out,
    )
}

/// The plaintext length the frame headers of `input` announce (capped at
/// what the input could hold), to size the output once. Only a hint: the
/// frames are checked as they are opened.
fn plaintext_len_hint(input: &[u8], frame_size: usize) -> usize {
    let mut pos = HEADER_LEN;
    let mut total = 0usize;
    while input.len().saturating_sub(pos) >= FRAME_HEADER_LEN {
        let fh = &input[pos..pos + FRAME_HEADER_LEN];
        let plain_len = u32::from_be_bytes(fh[5..9].try_into().expect("4")) as usize;
        let payload_len = u32::from_be_bytes(fh[9..13].try_into().expect("4")) as usize;
        total += plain_len.min(frame_size);
        pos = pos
            .saturating_add(FRAME_HEADER_LEN)
            .saturating_add(payload_len);
        if fh[0] & FLAG_LAST != 0 {
            break;
        }
    }
    // A forged header cannot make us allocate more than a frame per
    // input byte of frame header.
    total.min(input.len() / FRAME_HEADER_LEN * frame_size)
}

fn open_object(
    input: &[u8],
    keyring: &Keyring,
    key: Option<&str>,
    allow_unbound: bool,
    require_cipher: bool,
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    out.clear();
    let header = parse_header(input, key)?;
    if header.version == VERSION_UNBOUND && !allow_unbound {
        return Err(Error::Unbound);
    }
    if header.key_id.is_none() && require_cipher {
        return Err(Error::NotEncrypted);
    }
    if header.version == VERSION && key.is_none() {
        return Err(Error::Corrupt("a bound object opened without its key"));
    }
    let bound_to = key.filter(|_| header.version == VERSION);
    let header_bytes = &input[..HEADER_LEN];
    let cipher = match header.key_id {
        None => None,
        Some(key_id) => {
            let key = if keyring.is_empty() {
                return Err(Error::KeyRequired { key_id });
            } else {
                keyring.get(key_id).ok_or_else(|| Error::UnknownKey {
                    key_id,
                    given: keyring
                        .ids()
                        .iter()
                        .map(|id| format!("{id:08x}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?
            };
            Some(
                Aes256Gcm::new_from_slice(&key.derive_object_key(&header.salt))
                    .expect("32-byte key"),
            )
        }
    };
    let frame_size = header.frame_size_bytes as usize;
    let max_payload = zstd::zstd_safe::compress_bound(frame_size).max(frame_size) + TAG_LEN;
    let mut decompressor = zstd::bulk::Decompressor::new().expect("zstd context");
    // One allocation of the whole plaintext, frames decompressed straight
    // into it; one buffer for every frame's ciphertext.
    out.reserve(plaintext_len_hint(input, frame_size));
    let mut payload = Vec::new();
    let mut pos = HEADER_LEN;
    let mut expected_index: u32 = 0;
    loop {
        if input.len() - pos < FRAME_HEADER_LEN {
            return Err(Error::Truncated);
        }
        let fh: [u8; FRAME_HEADER_LEN] = input[pos..pos + FRAME_HEADER_LEN].try_into().expect("17");
        pos += FRAME_HEADER_LEN;
        let flags = fh[0];
        if flags & !(FLAG_LAST | FLAG_STORED) != 0 {
            return Err(Error::Corrupt("unknown frame flags"));
        }
        let index = u32::from_be_bytes(fh[1..5].try_into().expect("4"));
        let plain_len = u32::from_be_bytes(fh[5..9].try_into().expect("4")) as usize;
        let payload_len = u32::from_be_bytes(fh[9..13].try_into().expect("4")) as usize;
        let crc = u32::from_be_bytes(fh[13..17].try_into().expect("4"));
        if index != expected_index {
            return Err(Error::Corrupt("frames out of order"));
        }
        if plain_len > frame_size || payload_len > max_payload {
            return Err(Error::Corrupt("frame length out of range"));
        }
        if input.len() - pos < payload_len {
            return Err(Error::Truncated);
        }
        payload.clear();
        payload.extend_from_slice(&input[pos..pos + payload_len]);
        pos += payload_len;
        if let Some(cipher) = &cipher {
            if payload.len() < TAG_LEN {
                return Err(Error::Authentication { frame: index });
            }
            let tag_at = payload.len() - TAG_LEN;
            let tag = Tag::clone_from_slice(&payload[tag_at..]);
            payload.truncate(tag_at);
            let aad = associated_data(header_bytes, &fh, bound_to);
            cipher
                .decrypt_in_place_detached(&nonce(index), &aad, &mut payload, &tag)
                .map_err(|_| Error::Authentication { frame: index })?;
        }
        let start = out.len();
        if flags & FLAG_STORED != 0 || !header.compressed {
            if payload.len() != plain_len {
                return Err(Error::Corrupt("stored frame length mismatch"));
            }
            out.extend_from_slice(&payload);
        } else {
            out.reserve(plain_len);
            let mut cursor = std::io::Cursor::new(std::mem::take(out));
            cursor.set_position(start as u64);
            let written = decompressor.decompress_to_buffer(&payload, &mut cursor);
            *out = cursor.into_inner();
            let written = written.map_err(|_| Error::Decompress { frame: index })?;
            if written != plain_len || out.len() != start + plain_len {
                return Err(Error::Corrupt("decompressed frame length mismatch"));
            }
        }
        if frame_crc(&fh[..13], &out[start..]) != crc {
            return Err(Error::Checksum("frame"));
        }
        if flags & FLAG_LAST != 0 {
            break;
        }
        if plain_len != frame_size {
            return Err(Error::Corrupt("short frame before the last"));
        }
        expected_index = expected_index
            .checked_add(1)
            .ok_or(Error::Corrupt("too many frames"))?;
    }
    if pos != input.len() {
        return Err(Error::Corrupt("bytes after the last frame"));
    }
    Ok(())
}

fn encode_header(
    options: &SealOptions,
    key: Option<&MasterKey>,
    salt: &[u8; SALT_LEN],
    frame_size: u32,
    bound_to: Option<&str>,
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4] = if bound_to.is_some() {
        VERSION
    } else {
        VERSION_UNBOUND
    };
    h[5] = match options.compression {
        Compression::None => 0,
        Compression::Zstd { .. } => 1,
    };
    h[6] = u8::from(key.is_some());
    h[7] = 0;
    h[8..12].copy_from_slice(&key.map_or(0, MasterKey::id).to_be_bytes());
    h[12..28].copy_from_slice(salt);
    h[28..32].copy_from_slice(&frame_size.to_be_bytes());
    let crc = header_crc(&h[..32], bound_to);
    h[32..36].copy_from_slice(&crc.to_be_bytes());
    h
}

fn frame_crc(frame_header_fields: &[u8], plaintext: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(frame_header_fields);
    h.update(plaintext);
    h.finalize()
}

/// The header CRC: over the first 32 header bytes, and (version 2) the
/// object's key, so that a plain object moved elsewhere is noticed too.
fn header_crc(fields: &[u8], bound_to: Option<&str>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(fields);
    if let Some(key) = bound_to {
        h.update(&(key.len() as u32).to_be_bytes());
        h.update(key.as_bytes());
    }
    h.finalize()
}

/// AES-GCM associated data: the header, the frame header and (version 2)
/// the object's key, length first.
fn associated_data(
    header: &[u8],
    frame_header: &[u8; FRAME_HEADER_LEN],
    bound_to: Option<&str>,
) -> Vec<u8> {
    let key = bound_to.unwrap_or("");
    let mut aad = Vec::with_capacity(HEADER_LEN + FRAME_HEADER_LEN + 4 + key.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(frame_header);
    if let Some(key) = bound_to {
        aad.extend_from_slice(&(key.len() as u32).to_be_bytes());
        aad.extend_from_slice(key.as_bytes());
    }
    aad
}

fn nonce(index: u32) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&index.to_be_bytes());
    Nonce::clone_from_slice(&n)
}

/// Reads a list of `Bytes` pieces as one stream, a frame at a time.
struct PieceReader<'a> {
    pieces: &'a [Bytes],
    piece: usize,
    offset: usize,
    remaining: usize,
}

impl<'a> PieceReader<'a> {
    fn new(pieces: &'a [Bytes]) -> Self {
        PieceReader {
            pieces,
            piece: 0,
            offset: 0,
            remaining: pieces.iter().map(Bytes::len).sum(),
        }
    }

    /// The next `n` bytes (or fewer at the end): borrowed when they lie in
    /// one piece, otherwise gathered into `scratch`.
    fn take<'s>(&'s mut self, n: usize, scratch: &'s mut Vec<u8>) -> &'s [u8]
    where
        'a: 's,
    {
        let n = n.min(self.remaining);
        self.remaining -= n;
        while self.piece < self.pieces.len() && self.offset == self.pieces[self.piece].len() {
            self.piece += 1;
            self.offset = 0;
        }
        if n == 0 {
            return &[];
        }
        let current = &self.pieces[self.piece];
        if current.len() - self.offset >= n {
            let s = &current[self.offset..self.offset + n];
            self.offset += n;
            return s;
        }
        scratch.clear();
        let mut need = n;
        while need > 0 {
            let p = &self.pieces[self.piece];
            let take = (p.len() - self.offset).min(need);
            scratch.extend_from_slice(&p[self.offset..self.offset + take]);
            self.offset += take;
            need -= take;
            if self.offset == p.len() {
                self.piece += 1;
                self.offset = 0;
            }
        }
        scratch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::key::{Keyring, MasterKey};
    use proptest::prelude::*;

    fn salt() -> Salt {
        rand::random()
    }

    fn key() -> MasterKey {
        MasterKey::from_hex(&"42".repeat(32)).unwrap()
    }

    fn opts(level: Option<i32>, frame: u32) -> SealOptions {
        SealOptions {
            compression: level.map_or(Compression::None, |level| Compression::Zstd { level }),
            frame_size_bytes: frame,
        }
    }

    /// Text that compresses like WAL: repetitive with some noise.
    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| {
                if i % 7 == 0 {
                    (i / 7 % 251) as u8
                } else {
                    b'a' + (i % 5) as u8
                }
            })
            .collect()
    }

    fn golden_path(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/golden")
            .join(name)
    }

    /// The bytes of format version 1 are fixed: these files were written by
    /// this code and are documented in docs/format.md. Regenerate only for a
    /// new format version (WALVAULT_BLESS=1), never to make a change pass.
    #[test]
    fn golden_files_v1() {
        let plaintext = Bytes::from(sample(10_000));
        let cases: [(&str, Option<MasterKey>, SealOptions); 3] = [
            ("v1-zstd-aes.bin", Some(key()), opts(Some(3), 4096)),
            ("v1-zstd-plain.bin", None, opts(Some(3), 4096)),
            ("v1-stored-aes.bin", Some(key()), opts(None, 8192)),
        ];
        for (name, k, o) in cases {
            let sealed = seal(std::slice::from_ref(&plaintext), &o, k.as_ref(), [7u8; 16]);
            let path = golden_path(name);
            if std::env::var_os("WALVAULT_BLESS").is_some() {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, &sealed).unwrap();
            }
            let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                sealed, golden,
                "{name}: sealed bytes differ from the golden file"
            );
            let ring = k.map_or_else(Keyring::none, Keyring::single);
            assert_eq!(open(&golden, &ring).unwrap(), plaintext.as_ref(), "{name}");
        }
    }

    /// Envelope version 2: the same cases, each bound to a repository key.
    #[test]
    fn golden_files_v2() {
        let plaintext = Bytes::from(sample(10_000));
        let key_path = "wal/00000001/000000010000000000000003";
        let cases: [(&str, Option<MasterKey>, SealOptions); 3] = [
            ("v2-zstd-aes.bin", Some(key()), opts(Some(3), 4096)),
            ("v2-zstd-plain.bin", None, opts(Some(3), 4096)),
            ("v2-stored-aes.bin", Some(key()), opts(None, 8192)),
        ];
        for (name, k, o) in cases {
            let salt = if k.is_some() { [7u8; 16] } else { [0u8; 16] };
            let sealed = seal_bound(
                std::slice::from_ref(&plaintext),
                &o,
                k.as_ref(),
                salt,
                Binding::Key(key_path),
            );
            let path = golden_path(name);
            if std::env::var_os("WALVAULT_BLESS").is_some() {
                std::fs::write(&path, &sealed).unwrap();
            }
            let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(
                sealed, golden,
                "{name}: sealed bytes differ from the golden file"
            );
            let ring = k.map_or_else(Keyring::none, Keyring::single);
            let expect = Expect {
                key: key_path,
                allow_unbound: false,
                require_cipher: false,
            };
            assert_eq!(
                open_expected(&golden, &ring, expect).unwrap(),
                plaintext.as_ref()
            );
        }
    }

    #[test]
    fn bound_objects_open_only_where_they_were_written() {
        let data = Bytes::from(sample(5_000));
        for k in [Some(key()), None] {
            let ring = k.as_ref().map_or_else(Keyring::none, |k| {
                Keyring::single(MasterKey::from_hex(&k.to_hex()).unwrap())
            });
            let sealed = seal_bound(
                std::slice::from_ref(&data),
                &opts(Some(1), 1024),
                k.as_ref(),
                salt(),
                Binding::Key("wal/00000001/000000010000000000000003"),
            );
            let at = |key| Expect {
                key,
                allow_unbound: false,
                require_cipher: false,
            };
            assert_eq!(
                open_expected(&sealed, &ring, at("wal/00000001/000000010000000000000003")).unwrap(),
                data.as_ref()
            );
            // Copied over another segment, another part, another backup's document.
            for other in [
                "wal/00000001/000000010000000000000004",
                "backups/20261121T051500Z/data/base/000001",
                "backups/20261121T051500Z/backup.json",
            ] {
                assert!(open_expected(&sealed, &ring, at(other)).is_err(), "{other}");
            }
        }
    }

    #[test]
    fn unbound_and_plain_objects_are_refused_where_they_do_not_belong() {
        let data = Bytes::from(sample(100));
        let ring = Keyring::single(key());
        let v1 = seal(
            std::slice::from_ref(&data),
            &SealOptions::default(),
            Some(&key()),
            salt(),
        );
        let strict = Expect {
            key: "wal/x",
            allow_unbound: false,
            require_cipher: true,
        };
        assert_eq!(open_expected(&v1, &ring, strict), Err(Error::Unbound));
        let legacy = Expect {
            allow_unbound: true,
            ..strict
        };
        assert_eq!(open_expected(&v1, &ring, legacy).unwrap(), data.as_ref());
        let forged = seal_bound(
            std::slice::from_ref(&data),
            &SealOptions::default(),
            None,
            [0; 16],
            Binding::Key("wal/x"),
        );
        assert_eq!(
            open_expected(&forged, &ring, strict),
            Err(Error::NotEncrypted)
        );
    }

    #[test]
    fn round_trip_across_pieces_and_frames() {
        let data = sample(50_000);
        let pieces: Vec<Bytes> = data.chunks(3001).map(Bytes::copy_from_slice).collect();
        for (level, k) in [
            (Some(1), Some(key())),
            (Some(3), None),
            (None, Some(key())),
            (None, None),
        ] {
            let sealed = seal(&pieces, &opts(level, 4096), k.as_ref(), salt());
            let ring = k.map_or_else(Keyring::none, Keyring::single);
            assert_eq!(open(&sealed, &ring).unwrap(), data);
        }
        let empty = seal(&[], &SealOptions::default(), Some(&key()), salt());
        assert_eq!(
            open(&empty, &Keyring::single(key())).unwrap(),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn wrong_or_missing_key_is_named() {
        let sealed = seal(
            &[Bytes::from(sample(100))],
            &SealOptions::default(),
            Some(&key()),
            salt(),
        );
        let other = MasterKey::from_hex(&"43".repeat(32)).unwrap();
        assert!(matches!(
            open(&sealed, &Keyring::single(other)),
            Err(Error::UnknownKey { key_id, .. }) if key_id == key().id()
        ));
        assert!(matches!(
            open(&sealed, &Keyring::none()),
            Err(Error::KeyRequired { .. })
        ));
    }

    #[test]
    fn dropping_the_last_frame_is_detected() {
        let data = Bytes::from(sample(10_000));
        for k in [Some(key()), None] {
            let sealed = seal(
                std::slice::from_ref(&data),
                &opts(Some(3), 4096),
                k.as_ref(),
                salt(),
            );
            let ring = k.map_or_else(Keyring::none, Keyring::single);
            // Cut the object right after its second frame.
            let mut pos = HEADER_LEN;
            for _ in 0..2 {
                let len =
                    u32::from_be_bytes(sealed[pos + 9..pos + 13].try_into().unwrap()) as usize;
                pos += FRAME_HEADER_LEN + len;
            }
            assert!(open(&sealed[..pos], &ring).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..20_000),
                      frame in 1u32..6000, level in proptest::option::of(1i32..4), encrypt: bool) {
            let k = encrypt.then(key);
            let sealed = seal(&[Bytes::from(data.clone())], &opts(level, frame), k.as_ref(), salt());
            let ring = k.map_or_else(Keyring::none, Keyring::single);
            prop_assert_eq!(open(&sealed, &ring).unwrap(), data);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = open(&data, &Keyring::single(key()));
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&data);
            prop_assert!(open(&with_magic, &Keyring::single(key())).is_err() || data.len() > 40);
        }

        #[test]
        fn truncation_is_detected(data in proptest::collection::vec(any::<u8>(), 1..5000),
                                  cut in any::<prop::sample::Index>(), encrypt: bool) {
            let k = encrypt.then(key);
            let sealed = seal(&[Bytes::from(data)], &opts(Some(1), 1024), k.as_ref(), salt());
            let ring = k.map_or_else(Keyring::none, Keyring::single);
            let cut = cut.index(sealed.len());
            prop_assert!(open(&sealed[..cut], &ring).is_err());
        }

        #[test]
        fn bit_flips_are_detected(data in proptest::collection::vec(any::<u8>(), 1..5000),
                                  at in any::<prop::sample::Index>(), bit in 0u8..8, encrypt: bool) {
            let k = encrypt.then(key);
            let mut sealed = seal(&[Bytes::from(data.clone())], &opts(Some(1), 1024), k.as_ref(), salt());
            let ring = k.map_or_else(Keyring::none, Keyring::single);
            let at = at.index(sealed.len());
            sealed[at] ^= 1 << bit;
            // Either an error, or (never) the exact original bytes: wrong bytes are not allowed.
            match open(&sealed, &ring) {
                Err(_) => {}
                Ok(out) => prop_assert_eq!(out, data),
            }
        }
    }
}
