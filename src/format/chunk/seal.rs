//! Sealing: plaintext pieces in, one object out (the header, then frames of
//! zstd and AES-256-GCM), keeping the compressor and the frame buffers
//! between objects.
//!
//! It reads no randomness (the caller draws the salt) and opens nothing
//! (see `open`). Every frame but the last holds exactly the frame size; a
//! frame zstd would not make smaller is stored as it is.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use bytes::Bytes;

use crate::format::key::MasterKey;

use super::header::{associated_data, encode_header, frame_crc, nonce};
use super::{
    Compression, FLAG_LAST, FLAG_STORED, FRAME_HEADER_LEN, HEADER_LEN, MAX_FRAME_SIZE_BYTES, Salt,
    SealOptions, TAG_LEN,
};

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
