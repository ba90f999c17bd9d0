//! Cuts a tar stream into fixed-size parts without copying.
//!
//! Pure: `Bytes` go in as the server sends them; parts come out as lists of
//! views whose lengths add up to the part size (the last may be shorter).

use bytes::Bytes;

/// Accumulates a stream and hands out whole parts.
#[derive(Debug)]
pub struct PartCutter {
    part_size: usize,
    pieces: Vec<Bytes>,
    held: usize,
    next_index: u32,
}

/// One part of a stream.
#[derive(Debug, Clone)]
pub struct Part {
    /// Position in the stream, from 0.
    pub index: u32,
    /// The bytes, in order.
    pub pieces: Vec<Bytes>,
}

impl Part {
    /// Bytes in the part.
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }

    /// Whether the part is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartCutter {
    /// A cutter for parts of `part_size` bytes (at least 1).
    pub fn new(part_size: usize) -> Self {
        PartCutter {
            part_size: part_size.max(1),
            pieces: Vec::new(),
            held: 0,
            next_index: 0,
        }
    }

    /// Adds bytes; returns the parts they completed.
    pub fn push(&mut self, mut data: Bytes) -> Vec<Part> {
        let mut done = Vec::new();
        while !data.is_empty() {
            let room = self.part_size - self.held;
            let piece = data.split_to(room.min(data.len()));
            self.held += piece.len();
            self.pieces.push(piece);
            if self.held == self.part_size {
                done.push(self.take());
            }
        }
        done
    }

    /// Ends the stream: the last, possibly short, part (none if the stream
    /// ended on a boundary, unless it was empty: an empty stream is one empty part).
    pub fn finish(mut self) -> Option<Part> {
        if self.held > 0 || self.next_index == 0 {
            Some(self.take())
        } else {
            None
        }
    }

    fn take(&mut self) -> Part {
        let part = Part {
            index: self.next_index,
            pieces: std::mem::take(&mut self.pieces),
        };
        self.next_index += 1;
        self.held = 0;
        part
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parts_reassemble_the_stream(data in proptest::collection::vec(any::<u8>(), 0..500),
                                       cuts in proptest::collection::vec(1usize..60, 0..20),
                                       part_size in 1usize..100) {
            let mut cutter = PartCutter::new(part_size);
            let mut parts = Vec::new();
            let mut pos = 0usize;
            for c in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                let end = pos.saturating_add(*c).min(data.len());
                parts.extend(cutter.push(Bytes::copy_from_slice(&data[pos..end])));
                pos = end;
                if pos == data.len() { break; }
            }
            parts.extend(cutter.finish());
            let joined: Vec<u8> = parts.iter().flat_map(|p| p.pieces.iter().flat_map(|b| b.iter().copied())).collect();
            prop_assert_eq!(&joined, &data);
            for (i, p) in parts.iter().enumerate() {
                prop_assert_eq!(p.index as usize, i);
                if i + 1 < parts.len() { prop_assert_eq!(p.len(), part_size); }
            }
        }
    }
}
