//! The graceful end of a stream: queue the tail held in memory, wait (up to
//! the shutdown timeout) until it is stored, report it, end the copy.

use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use crate::lsn::Lsn;
use crate::protocol::ReplicationConnection;

use super::super::segmenter::Segmenter;
use super::{Error, Stream};

/// How often status updates keep the walsender alive while draining.
const DRAIN_STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// How long ending the copy may take once the tail is stored.
const END_COPY_TIMEOUT: Duration = Duration::from_secs(5);

impl Stream<'_> {
    /// Graceful end: store the tail, report it, end the copy and close.
    pub(super) async fn drain(&mut self, conn: &mut ReplicationConnection) -> Result<(), Error> {
        info!("shutting down: storing the open segment's tail");
        self.queue_delta();
        let target = self
            .segmenter
            .as_ref()
            .map_or(Lsn::INVALID, Segmenter::handed_out_position);
        let deadline = tokio::time::sleep(self.opts.shutdown_timeout);
        tokio::pin!(deadline);
        let mut status_tick = tokio::time::interval(DRAIN_STATUS_INTERVAL);
        let jobs_tx = self.jobs_tx.clone();
        loop {
            // Everything before the stream's start counts as stored (as in
            // the status updates): a stream stopped before it received
            // anything has nothing to wait for.
            let durable = (*self.durable_rx.borrow()).max(self.last_reported);
            if self.pending.is_empty() && durable >= target {
                break;
            }
            tokio::select! {
                biased;
                () = &mut deadline => return Err(Error::ShutdownTimeout),
                permit = jobs_tx.reserve(), if !self.pending.is_empty() => {
                    let permit = permit.map_err(|_| Error::UploaderStopped)?;
                    permit.send(self.pending.pop_front().expect("not empty"));
                }
                changed = self.durable_rx.changed() => {
                    if changed.is_err() {
                        return Err(Error::UploaderStopped);
                    }
                }
                _ = status_tick.tick() => {
                    // Keep the walsender from timing out; the connection may be gone.
                    let _ = self.send_status(conn, false).await;
                }
            }
        }
        self.send_status(conn, false).await?;
        info!(durable = %self.last_reported, "tail stored; final status sent");
        // Ending the copy can fail if the server is already gone; the data is safe.
        let _ = tokio::time::timeout(END_COPY_TIMEOUT, conn.end_copy(false)).await;
        Ok(())
    }

    /// Shutdown while disconnected: store what is held, without a server.
    pub(super) async fn drain_without_server(&mut self) -> Result<(), Error> {
        self.queue_delta();
        let deadline = Instant::now() + self.opts.shutdown_timeout;
        while let Some(job) = self.pending.pop_front() {
            match tokio::time::timeout_at(deadline, self.jobs_tx.send(job)).await {
                Ok(Ok(())) => {}
                _ => return Err(Error::ShutdownTimeout),
            }
        }
        Ok(())
    }
}
