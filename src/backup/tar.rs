//! A streaming tar reader for verification: file names, sizes and CRC32C of
//! the contents, fed a part at a time so no file is held in memory.
//!
//! Understands what PostgreSQL writes (ustar headers) plus GNU long names
//! (`L`) and pax `path` records. Pure: bytes in, entries out.

/// One regular file of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarFile {
    /// Path inside the archive.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// CRC32C of the contents.
    pub crc32c: u32,
}

/// A malformed archive.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TarError {
    /// A header's checksum or fields are wrong.
    #[error("bad tar header at byte {offset}: {reason}")]
    BadHeader {
        /// Stream offset of the header.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The stream ended inside an entry or without the end-of-archive blocks.
    #[error("tar stream ends early (at byte {offset})")]
    Truncated {
        /// Where it ended.
        offset: u64,
    },
}

enum State {
    Header,
    /// Contents of an entry: bytes left, padding after, what to do with them.
    Data {
        left: u64,
        pad: u64,
        kind: DataKind,
    },
    Done,
}

enum DataKind {
    File { path: String, size: u64, crc: u32 },
    LongName(Vec<u8>),
    Pax(Vec<u8>),
    Skip,
}

/// Incremental tar reader.
pub struct TarWalker {
    state: State,
    header: Vec<u8>,
    offset: u64,
    zero_blocks: u32,
    long_name: Option<String>,
}

impl Default for TarWalker {
    fn default() -> Self {
        Self::new()
    }
}

const BLOCK: usize = 512;
/// Largest long-name or pax record accepted (bounds memory on bad input).
const MAX_META_BYTES: u64 = 1 << 20;

impl TarWalker {
    /// A reader at the start of an archive.
    pub fn new() -> Self {
        TarWalker {
            state: State::Header,
            header: Vec::with_capacity(BLOCK),
            offset: 0,
            zero_blocks: 0,
            long_name: None,
        }
    }

    /// Feeds the next bytes; returns the files completed by them.
    ///
    /// # Errors
    /// On a malformed header.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<Vec<TarFile>, TarError> {
        let mut out = Vec::new();
        while !data.is_empty() {
            match &mut self.state {
                State::Done => {
                    // Bytes after the end blocks (padding to a record) are ignored.
                    self.offset += data.len() as u64;
                    return Ok(out);
                }
                State::Header => {
                    let need = BLOCK - self.header.len();
                    let take = need.min(data.len());
                    self.header.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    self.offset += take as u64;
                    if self.header.len() == BLOCK {
                        let header = std::mem::take(&mut self.header);
                        self.header = Vec::with_capacity(BLOCK);
                        self.start_entry(&header, &mut out)?;
                    }
                }
                State::Data { left, pad, kind } => {
                    if *left > 0 {
                        let take = (*left).min(data.len() as u64) as usize;
                        match kind {
                            DataKind::File { crc, .. } => {
                                *crc = crc32c::crc32c_append(*crc, &data[..take])
                            }
                            DataKind::LongName(v) | DataKind::Pax(v) => {
                                v.extend_from_slice(&data[..take])
                            }
                            DataKind::Skip => {}
                        }
                        *left -= take as u64;
                        data = &data[take..];
                        self.offset += take as u64;
                    } else {
                        let take = (*pad).min(data.len() as u64) as usize;
                        *pad -= take as u64;
                        data = &data[take..];
                        self.offset += take as u64;
                    }
                    if *left == 0 && *pad == 0 {
                        let State::Data { kind, .. } =
                            std::mem::replace(&mut self.state, State::Header)
                        else {
                            unreachable!("matched Data above")
                        };
                        self.finish_entry(kind, &mut out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Ends the stream.
    ///
    /// # Errors
    /// [`TarError::Truncated`] unless the archive ended properly.
    pub fn finish(self) -> Result<(), TarError> {
        match self.state {
            State::Done => Ok(()),
            _ => Err(TarError::Truncated {
                offset: self.offset,
            }),
        }
    }

    fn start_entry(&mut self, h: &[u8], out: &mut Vec<TarFile>) -> Result<(), TarError> {
        let at = self.offset - BLOCK as u64;
        let bad = |reason: &str| TarError::BadHeader {
            offset: at,
            reason: reason.to_string(),
        };
        if h.iter().all(|&b| b == 0) {
            self.zero_blocks += 1;
            if self.zero_blocks == 2 {
                self.state = State::Done;
            }
            return Ok(());
        }
        if self.zero_blocks > 0 {
            return Err(bad("data after an end-of-archive block"));
        }
        let stored = parse_octal(&h[148..156]).ok_or_else(|| bad("unreadable checksum"))?;
        let sum: u64 = h[..148]
            .iter()
            .chain([b' '; 8].iter())
            .chain(h[156..].iter())
            .map(|&b| u64::from(b))
            .sum();
        if stored != sum {
            return Err(bad("checksum mismatch"));
        }
        let size = parse_size(&h[124..136]).ok_or_else(|| bad("unreadable size"))?;
        let typeflag = h[156];
        let name = cstr(&h[0..100]);
        let path = match self.long_name.take() {
            Some(long) => long,
            None => {
                let prefix = if &h[257..262] == b"ustar" {
                    cstr(&h[345..500])
                } else {
                    String::new()
                };
                if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                }
            }
        };
        let pad = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        let kind = match typeflag {
            b'0' | 0 | b'7' => DataKind::File { path, size, crc: 0 },
            b'L' | b'x' if size > MAX_META_BYTES => return Err(bad("oversized name record")),
            b'L' => DataKind::LongName(Vec::new()),
            b'x' => DataKind::Pax(Vec::new()),
            _ => DataKind::Skip,
        };
        if size == 0 {
            self.finish_entry(kind, out);
            return Ok(());
        }
        self.state = State::Data {
            left: size,
            pad,
            kind,
        };
        Ok(())
    }

    fn finish_entry(&mut self, kind: DataKind, out: &mut Vec<TarFile>) {
        match kind {
            DataKind::File { path, size, crc } => out.push(TarFile {
                path,
                size,
                crc32c: crc,
            }),
            DataKind::LongName(v) => self.long_name = Some(cstr(&v)),
            DataKind::Pax(v) => {
                if let Some(p) = pax_path(&v) {
                    self.long_name = Some(p);
                }
            }
            DataKind::Skip => {}
        }
    }
}

/// The contents of the archive's first entry when it is the regular file
/// `name`, at most `max` bytes, whole within `head` (the archive's first
/// bytes) and under a sound header: PostgreSQL sends `backup_label` first
/// in the main directory's archive.
pub fn leading_file(head: &[u8], name: &str, max: u64) -> Option<Vec<u8>> {
    let size = parse_size(head.get(124..136)?)?;
    if size > max {
        return None;
    }
    let end = BLOCK + size as usize;
    let padded = end + (BLOCK - end % BLOCK) % BLOCK;
    let files = TarWalker::new().feed(head.get(..padded)?).ok()?;
    match files.as_slice() {
        [f] if f.path == name && f.size == size => Some(head[BLOCK..end].to_vec()),
        _ => None,
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn parse_octal(b: &[u8]) -> Option<u64> {
    let s: String = b
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as char)
        .collect::<String>()
        .trim()
        .to_string();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(&s, 8).ok()
}

fn parse_size(b: &[u8]) -> Option<u64> {
    if b[0] & 0x80 != 0 {
        // GNU base-256 for sizes of 8 GiB and more.
        let mut v: u64 = u64::from(b[0] & 0x7f);
        for &c in &b[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(c))?;
        }
        return Some(v);
    }
    parse_octal(b)
}

/// The `path` of a pax extended header, if present.
fn pax_path(records: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(records);
    let mut rest: &str = &text;
    while !rest.is_empty() {
        let (len, _) = rest.split_once(' ')?;
        let n: usize = len.parse().ok()?;
        let record = rest.get(..n)?;
        rest = &rest[n..];
        let body = record.split_once(' ')?.1.trim_end_matches('\n');
        if let Some(p) = body.strip_prefix("path=") {
            return Some(p.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, size: u64, typeflag: u8) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000600");
        h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn archive() -> Vec<u8> {
        let mut a = Vec::new();
        a.extend(header("backup_label", 5, b'0'));
        a.extend(b"hello");
        a.extend(vec![0; BLOCK - 5]);
        a.extend(header("global/", 0, b'5'));
        a.extend(header("empty", 0, b'0'));
        a.extend(header("base/1/1259", 1024, b'0'));
        a.extend(vec![7u8; 1024]);
        a.extend(vec![0; 2 * BLOCK]);
        a
    }

    #[test]
    fn walks_files_fed_in_any_pieces() {
        let a = archive();
        for step in [1, 7, 512, 513, 100_000] {
            let mut w = TarWalker::new();
            let mut files = Vec::new();
            for chunk in a.chunks(step) {
                files.extend(w.feed(chunk).unwrap());
            }
            w.finish().unwrap();
            assert_eq!(files.len(), 3, "step {step}");
            assert_eq!(
                files[0],
                TarFile {
                    path: "backup_label".into(),
                    size: 5,
                    crc32c: crc32c::crc32c(b"hello")
                }
            );
            assert_eq!(files[1].path, "empty");
            assert_eq!(files[2].crc32c, crc32c::crc32c(&[7u8; 1024]));
        }
    }

    #[test]
    fn the_leading_file_is_read_only_when_whole_and_sound() {
        let a = archive();
        assert_eq!(
            leading_file(&a, "backup_label", 1024).as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(leading_file(&a, "tablespace_map", 1024), None);
        assert_eq!(leading_file(&a, "backup_label", 4), None);
        assert_eq!(leading_file(&a[..515], "backup_label", 1024), None);
        let mut damaged = a.clone();
        damaged[0] = b'B';
        assert_eq!(leading_file(&damaged, "backup_label", 1024), None);
    }

    #[test]
    fn damage_is_reported() {
        let mut a = archive();
        a[10] ^= 1;
        assert!(matches!(
            TarWalker::new().feed(&a),
            Err(TarError::BadHeader { .. })
        ));
        let a = archive();
        let mut w = TarWalker::new();
        w.feed(&a[..a.len() - 600]).unwrap();
        assert!(w.finish().is_err());
    }
}
