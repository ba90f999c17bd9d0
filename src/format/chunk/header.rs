//! The object header and what authenticates a frame: encoding and parsing
//! the 36 header bytes, the header CRC (which from version 2 covers the
//! object's key too), the frame CRC, the AES-GCM associated data and the
//! nonce.
//!
//! Frames themselves are written in `seal` and read in `open`; this file
//! only builds and checks the bytes both sides must agree on, as
//! `docs/format.md` specifies them.

use aes_gcm::Nonce;

use crate::format::key::{KeyId, MasterKey};

use super::{
    Compression, Error, FRAME_HEADER_LEN, HEADER_LEN, Header, MAGIC, MAX_FRAME_SIZE_BYTES,
    SALT_LEN, SealOptions, VERSION, VERSION_UNBOUND,
};

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
        1 => Some(KeyId(key_id)),
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

pub(super) fn encode_header(
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
    h[8..12].copy_from_slice(&key.map_or(0, |k| k.id().0).to_be_bytes());
    h[12..28].copy_from_slice(salt);
    h[28..32].copy_from_slice(&frame_size.to_be_bytes());
    let crc = header_crc(&h[..32], bound_to);
    h[32..36].copy_from_slice(&crc.to_be_bytes());
    h
}

pub(super) fn frame_crc(frame_header_fields: &[u8], plaintext: &[u8]) -> u32 {
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
pub(super) fn associated_data(
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

pub(super) fn nonce(index: u32) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&index.to_be_bytes());
    Nonce::clone_from_slice(&n)
}
