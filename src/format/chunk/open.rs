//! Opening: one sealed object in, its plaintext out, or an [`Error`] for
//! the first check that fails, in the order `docs/format.md` gives under
//! "Reading".
//!
//! It seals nothing, and decides nothing about repositories: what a reader
//! accepts (unbound objects, objects without a cipher) comes in as
//! [`Expect`]. Any damage is an error: nothing is returned from a damaged
//! object.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Tag};

use crate::format::key::Keyring;

use super::header::{associated_data, frame_crc, nonce, parse_header};
use super::{
    Error, FLAG_LAST, FLAG_STORED, FRAME_HEADER_LEN, HEADER_LEN, TAG_LEN, VERSION, VERSION_UNBOUND,
};

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
                        .map(ToString::to_string)
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
