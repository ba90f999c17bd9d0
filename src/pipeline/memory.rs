//! One memory budget for every buffer of the data path.
//!
//! Receivers add what they hold and wait for room before reading more; the
//! uploader releases what it has stored. The budget is a soft limit checked
//! before each read, so the overshoot is at most one message.
//!
//! Part of the budget is headroom that WAL never takes: the sealed copies
//! of the uploads in flight and the process's fixed buffers (see
//! [`upload_headroom`]), so that what the process holds in all stays
//! within the configured figure.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// A byte budget shared by producers and consumers.
#[derive(Debug)]
pub struct MemoryBudget {
    limit_bytes: u64,
    headroom_bytes: AtomicU64,
    used_bytes: AtomicU64,
    released: Notify,
}

/// Memory the process holds besides WAL: the program's own pages, the
/// runtime, the socket's read buffer, logging.
const FIXED_BYTES: u64 = 24 << 20;
/// What one upload holds besides its plaintext and sealed copy at most: a
/// compressor's context and two frames of scratch.
const PER_UPLOAD_BYTES: u64 = 4 << 20;

/// The headroom of a budget whose WAL is sealed by `concurrency` uploads of
/// objects up to `object_bytes` each: their sealed copies (never larger than
/// the plaintext plus frame headers), their working memory, and the fixed
/// part.
pub fn upload_headroom(concurrency: usize, object_bytes: u64) -> u64 {
    FIXED_BYTES + concurrency.max(1) as u64 * (object_bytes + PER_UPLOAD_BYTES)
}

impl MemoryBudget {
    /// A budget of `limit_bytes`.
    pub fn new(limit_bytes: u64) -> Self {
        MemoryBudget {
            limit_bytes,
            headroom_bytes: AtomicU64::new(0),
            used_bytes: AtomicU64::new(0),
            released: Notify::new(),
        }
    }

    /// Records `n` more bytes held.
    pub fn add(&self, n: u64) {
        self.used_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Records `n` bytes freed and wakes waiters.
    pub fn release(&self, n: u64) {
        let _ = self
            .used_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(n))
            });
        self.released.notify_waiters();
    }

    /// Bytes held now.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// The limit.
    pub fn limit_bytes(&self) -> u64 {
        self.limit_bytes
    }

    /// Keeps `headroom` bytes of the limit out of reach of
    /// [`MemoryBudget::has_room_for`], but never so much that fewer than
    /// `floor` bytes remain for WAL. Returns the bytes left for WAL.
    pub fn set_headroom(&self, headroom: u64, floor: u64) -> u64 {
        let wal = self.limit_bytes.saturating_sub(headroom).max(floor);
        self.headroom_bytes
            .store(self.limit_bytes.saturating_sub(wal), Ordering::Relaxed);
        wal
    }

    /// Whether `n` more bytes fit beside the headroom.
    pub fn has_room_for(&self, n: u64) -> bool {
        self.used_bytes() + n + self.headroom_bytes.load(Ordering::Relaxed) <= self.limit_bytes
    }

    /// Waits until something is released.
    ///
    /// # Cancel safety
    /// Safe.
    pub async fn released(&self) {
        self.released.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headroom_is_kept_out_of_the_wal_part() {
        const MIB: u64 = 1 << 20;
        // The defaults: 4 uploads of 16 MiB segments in a 256 MiB budget.
        let headroom = upload_headroom(4, 16 * MIB);
        assert_eq!(headroom, 104 * MIB);
        let budget = MemoryBudget::new(256 * MIB);
        assert_eq!(budget.set_headroom(headroom, 32 * MIB), 152 * MIB);
        budget.add(150 * MIB);
        assert!(budget.has_room_for(2 * MIB));
        assert!(!budget.has_room_for(2 * MIB + 1));
        budget.release(150 * MIB);
        // Too small a budget still leaves two segments for WAL.
        let small = MemoryBudget::new(64 * MIB);
        assert_eq!(small.set_headroom(headroom, 32 * MIB), 32 * MIB);
        assert!(small.has_room_for(32 * MIB));
        assert!(!small.has_room_for(32 * MIB + 1));
    }
}
