//! Standby status updates: the one place that decides the flush position
//! PostgreSQL hears. `write`, `flush` and `apply` are all the durable LSN
//! (every byte below it is in an object the store acknowledged), and it
//! never moves backwards.

use std::time::Duration;

use tracing::error;

use crate::protocol::ReplicationConnection;
use crate::protocol::message::StandbyStatusUpdate;

use super::{Error, Stream};

/// Most often we send a status update without a reason.
const MAX_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// The current time as PostgreSQL's protocol counts it: µs since 2000-01-01 UTC.
fn now_pg_micros() -> i64 {
    let since_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_unix.as_micros()).unwrap_or(i64::MAX) - PG_EPOCH_OFFSET_MICROS
}

impl Stream<'_> {
    /// Reports the durable LSN as write, flush and apply.
    pub(super) async fn send_status(
        &mut self,
        conn: &mut ReplicationConnection,
        reply: bool,
    ) -> Result<(), Error> {
        let durable = (*self.durable_rx.borrow_and_update()).max(self.last_reported);
        self.last_reported = durable;
        if let Some(m) = &self.stats {
            m.durable(durable);
        }
        conn.send_status(&StandbyStatusUpdate {
            write: durable,
            flush: durable,
            apply: durable,
            client_time: now_pg_micros(),
            reply_requested: reply,
        })
        .await?;
        Ok(())
    }
}

/// How often to send status updates: a third of `wal_sender_timeout`, at most
/// [`MAX_STATUS_INTERVAL`], at least 1 s.
pub(super) async fn status_interval(conn: &mut ReplicationConnection) -> Duration {
    let timeout = match conn.show("wal_sender_timeout").await {
        Ok(text) => parse_pg_duration(&text),
        Err(e) => {
            error!(error = %e, "cannot read wal_sender_timeout; assuming 60s");
            None
        }
    };
    match timeout {
        Some(t) if !t.is_zero() => (t / 3).clamp(Duration::from_secs(1), MAX_STATUS_INTERVAL),
        _ => MAX_STATUS_INTERVAL,
    }
}

/// Parses a time setting as SHOW prints it (`60s`, `1min`, `500ms`, `0`).
fn parse_pg_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits.parse().ok()?;
    Some(match &text[digits.len()..] {
        "" | "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "min" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        "d" => Duration::from_secs(n.checked_mul(86400)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sender_timeouts() {
        assert_eq!(parse_pg_duration("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("1min"), Some(Duration::from_secs(60)));
        assert_eq!(parse_pg_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_pg_duration("soon"), None);
        assert_eq!(parse_pg_duration("99999999999999999999d"), None);
        assert_eq!(parse_pg_duration("999999999999999999d"), None);
    }
}
