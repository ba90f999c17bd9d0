//! The stream's own counters: what the server reported, what arrived, what
//! is stored, and the data-loss window in bytes and seconds. The receiver
//! writes them from its loop; whoever reports on the stream (the metrics
//! endpoint, `/health`) reads them when asked, as [`UploadStats`] is read
//! for the uploads. Nothing here knows about metrics.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::lsn::Lsn;
use crate::pipeline::memory::MemoryBudget;
use crate::pipeline::upload::UploadStats;

/// Received WAL is grouped into steps of this length for the lag in
/// seconds; the lag is exact to about this.
const LAG_STEP: Duration = Duration::from_millis(100);
/// The most steps kept; older ones merge (about 30 minutes at one step per
/// 100 ms, far beyond any RPO worth alerting on).
const MAX_LAG_STEPS: usize = 18_000;

/// The counters of one stream, shared with its readers.
#[derive(Debug)]
pub struct StreamStats {
    /// Uploads of the stream.
    pub upload: Arc<UploadStats>,
    memory: OnceLock<Arc<MemoryBudget>>,
    /// Whether a replication connection is copying WAL now.
    pub streaming: AtomicBool,
    /// Replication connections made after the first.
    pub reconnects: AtomicU64,
    server_lsn: AtomicU64,
    received_lsn: AtomicU64,
    durable_lsn: AtomicU64,
    lag: Mutex<LagSteps>,
}

/// Received WAL in time order: (end LSN, when received).
#[derive(Debug, Default)]
struct LagSteps {
    steps: VecDeque<(u64, Instant)>,
}

impl Default for StreamStats {
    fn default() -> Self {
        StreamStats {
            upload: Arc::new(UploadStats::default()),
            memory: OnceLock::new(),
            streaming: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            server_lsn: AtomicU64::new(0),
            received_lsn: AtomicU64::new(0),
            durable_lsn: AtomicU64::new(0),
            lag: Mutex::new(LagSteps::default()),
        }
    }
}

impl StreamStats {
    /// The memory budget the stream counts in.
    pub fn set_memory(&self, memory: Arc<MemoryBudget>) {
        let _ = self.memory.set(memory);
    }

    /// WAL held in memory and the budget, in bytes (zeros before the
    /// stream set its budget).
    pub fn memory_bytes(&self) -> (u64, u64) {
        self.memory
            .get()
            .map_or((0, 0), |m| (m.used_bytes(), m.limit_bytes()))
    }

    /// The server's WAL position, from XLogData and keepalives.
    pub fn server_at(&self, lsn: Lsn) {
        self.server_lsn.fetch_max(lsn.0, Relaxed);
    }

    /// WAL up to `end` arrived now.
    pub fn received(&self, end: Lsn) {
        self.received_lsn.fetch_max(end.0, Relaxed);
        self.server_at(end);
        let now = Instant::now();
        let mut lag = self.lag.lock().expect("not poisoned");
        match lag.steps.back_mut() {
            Some((last_end, at)) if now.duration_since(*at) < LAG_STEP => {
                *last_end = (*last_end).max(end.0);
            }
            _ => lag.steps.push_back((end.0, now)),
        }
        if lag.steps.len() > MAX_LAG_STEPS {
            // Merge the two oldest: the older time stays, so the lag errs long.
            let (_, at) = lag.steps.pop_front().expect("not empty");
            if let Some(front) = lag.steps.front_mut() {
                front.1 = at;
            }
        }
    }

    /// Everything below `lsn` is stored.
    pub fn durable(&self, lsn: Lsn) {
        self.durable_lsn.fetch_max(lsn.0, Relaxed);
        let mut lag = self.lag.lock().expect("not poisoned");
        while lag.steps.front().is_some_and(|(end, _)| *end <= lsn.0) {
            lag.steps.pop_front();
        }
    }

    /// The server's WAL position as last reported.
    pub fn server_lsn(&self) -> Lsn {
        Lsn(self.server_lsn.load(Relaxed))
    }

    /// The end of the WAL received.
    pub fn received_lsn(&self) -> Lsn {
        Lsn(self.received_lsn.load(Relaxed))
    }

    /// The end of the WAL stored without a hole.
    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.durable_lsn.load(Relaxed))
    }

    /// Bytes received (or known on the server) but not stored.
    pub fn lag_bytes(&self) -> u64 {
        let ahead = self
            .server_lsn
            .load(Relaxed)
            .max(self.received_lsn.load(Relaxed));
        ahead.saturating_sub(self.durable_lsn.load(Relaxed))
    }

    /// How long the oldest WAL not yet stored has waited: the data-loss
    /// window right now.
    pub fn lag_seconds(&self) -> f64 {
        let lag = self.lag.lock().expect("not poisoned");
        lag.steps
            .front()
            .map_or(0.0, |(_, at)| at.elapsed().as_secs_f64())
    }

    /// The store failed the last attempts of an upload and is being retried.
    pub fn store_unreachable(&self) -> bool {
        self.upload.unreachable.load(Relaxed)
    }
}
