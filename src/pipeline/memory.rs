//! One memory budget for every buffer of the data path.
//!
//! Receivers add what they hold and wait for room before reading more; the
//! uploader releases what it has stored. The budget is a soft limit checked
//! before each read, so the overshoot is at most one message.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

/// A byte budget shared by producers and consumers.
#[derive(Debug)]
pub struct MemoryBudget {
    limit_bytes: u64,
    used_bytes: AtomicU64,
    released: Notify,
}

impl MemoryBudget {
    /// A budget of `limit_bytes`.
    pub fn new(limit_bytes: u64) -> Self {
        MemoryBudget {
            limit_bytes,
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

    /// Whether `n` more bytes fit.
    pub fn has_room_for(&self, n: u64) -> bool {
        self.used_bytes() + n <= self.limit_bytes
    }

    /// Waits until something is released.
    ///
    /// # Cancel safety
    /// Safe.
    pub async fn released(&self) {
        self.released.notified().await;
    }
}
