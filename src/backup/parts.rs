//! Cuts a tar stream into fixed-size parts.
//!
//! Each part is gathered into one buffer of the part size, taken from a
//! small pool and given back once the part is stored. The server's messages
//! are copied once, into that buffer, and released at once: holding them as
//! views would keep every read buffer they share alive until the last part
//! touching it is stored, and memory would follow the allocator's luck
//! rather than the number of parts in flight. With the pool, a backup holds
//! at most (parts in flight + 2) part buffers whatever the database's size.
//!
//! Pure apart from the pool's mutex: `Bytes` go in as the server sends
//! them; parts come out whole (the last may be shorter).

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

/// Buffers of one part size, reused across parts.
#[derive(Debug, Clone)]
pub struct BufferPool {
    size: usize,
    keep: usize,
    free: Arc<Mutex<Vec<BytesMut>>>,
}

impl BufferPool {
    /// A pool of buffers of `size` bytes keeping at most `keep` spare ones.
    pub fn new(size: usize, keep: usize) -> Self {
        BufferPool {
            size: size.max(1),
            keep,
            free: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn take(&self) -> BytesMut {
        self.free
            .lock()
            .expect("pool lock")
            .pop()
            .unwrap_or_else(|| BytesMut::with_capacity(self.size))
    }

    /// Returns a part's buffer once nothing else refers to it.
    pub fn give_back(&self, part: Part) {
        if let Ok(mut buf) = part.data.try_into_mut() {
            buf.clear();
            if buf.capacity() >= self.size {
                let mut free = self.free.lock().expect("pool lock");
                if free.len() < self.keep {
                    free.push(buf);
                }
            }
        }
    }
}

/// Accumulates a stream and hands out whole parts.
#[derive(Debug)]
pub struct PartCutter {
    pool: BufferPool,
    buf: Option<BytesMut>,
    next_index: u32,
}

/// One part of a stream.
#[derive(Debug, Clone)]
pub struct Part {
    /// Position in the stream, from 0.
    pub index: u32,
    /// The bytes.
    pub data: Bytes,
}

impl Part {
    /// Bytes in the part.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the part is empty.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl PartCutter {
    /// A cutter for parts of the pool's buffer size.
    pub fn new(pool: BufferPool) -> Self {
        PartCutter {
            pool,
            buf: None,
            next_index: 0,
        }
    }

    /// Adds bytes; returns the parts they completed.
    pub fn push(&mut self, data: &[u8]) -> Vec<Part> {
        let mut done = Vec::new();
        let mut data = data;
        while !data.is_empty() {
            let size = self.pool.size;
            let buf = self.buf.get_or_insert_with(|| self.pool.take());
            let n = (size - buf.len()).min(data.len());
            buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if buf.len() == size {
                done.push(self.take());
            }
        }
        done
    }

    /// Ends the stream: the last, possibly short, part (none if the stream
    /// ended on a boundary, unless it was empty: an empty stream is one empty part).
    pub fn finish(mut self) -> Option<Part> {
        if self.buf.as_ref().is_some_and(|b| !b.is_empty()) || self.next_index == 0 {
            Some(self.take())
        } else {
            None
        }
    }

    fn take(&mut self) -> Part {
        let data = self.buf.take().map(BytesMut::freeze).unwrap_or_default();
        let part = Part {
            index: self.next_index,
            data,
        };
        self.next_index += 1;
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
            let pool = BufferPool::new(part_size, 2);
            let mut cutter = PartCutter::new(pool.clone());
            let mut parts = Vec::new();
            let mut pos = 0usize;
            for c in cuts.iter().chain(std::iter::once(&usize::MAX)) {
                let end = pos.saturating_add(*c).min(data.len());
                for p in cutter.push(&data[pos..end]) {
                    // A part given back is reused for later parts.
                    parts.push(Part { index: p.index, data: Bytes::copy_from_slice(&p.data) });
                    pool.give_back(p);
                }
                pos = end;
                if pos == data.len() { break; }
            }
            parts.extend(cutter.finish());
            let joined: Vec<u8> = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
            prop_assert_eq!(&joined, &data);
            for (i, p) in parts.iter().enumerate() {
                prop_assert_eq!(p.index as usize, i);
                if i + 1 < parts.len() { prop_assert_eq!(p.len(), part_size); }
            }
        }
    }

    #[test]
    fn buffers_come_back_only_when_unshared() {
        let pool = BufferPool::new(4, 1);
        let mut cutter = PartCutter::new(pool.clone());
        let mut parts = cutter.push(b"abcdefgh");
        let second = parts.pop().unwrap();
        let first = parts.pop().unwrap();
        let shared = first.data.clone();
        pool.give_back(first);
        assert_eq!(pool.free.lock().unwrap().len(), 0, "still referenced");
        drop(shared);
        pool.give_back(second);
        assert_eq!(pool.free.lock().unwrap().len(), 1);
    }
}
