//! Progress of long operations: a redrawn line on a terminal, periodic log
//! lines otherwise.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a non-terminal progress line is logged.
const LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often the terminal line is redrawn.
const DRAW_INTERVAL: Duration = Duration::from_millis(200);

/// Progress of one operation in bytes.
pub struct Progress {
    what: String,
    /// Counting files instead of bytes.
    files: bool,
    total_bytes: Mutex<u64>,
    state: Mutex<State>,
    terminal: bool,
    started: Instant,
}

struct State {
    done_bytes: u64,
    last_output: Option<Instant>,
}

impl Progress {
    /// Starts tracking `what` with an estimated total (0 if unknown).
    pub fn new(what: &str, total_bytes: u64) -> Self {
        Progress {
            what: what.to_string(),
            files: false,
            total_bytes: Mutex::new(total_bytes),
            state: Mutex::new(State {
                done_bytes: 0,
                last_output: None,
            }),
            terminal: std::io::stderr().is_terminal(),
            started: Instant::now(),
        }
    }

    /// Starts tracking `what` in files (objects) rather than bytes.
    pub fn files(what: &str, total: u64) -> Self {
        Progress {
            files: true,
            ..Self::new(what, total)
        }
    }

    /// Sets the estimated total.
    pub fn set_total(&self, total_bytes: u64) {
        *self.total_bytes.lock().expect("progress lock") = total_bytes;
    }

    /// Sets the bytes done so far and reports when due.
    pub fn set_done(&self, done_bytes: u64) {
        let mut st = self.state.lock().expect("progress lock");
        st.done_bytes = done_bytes.max(st.done_bytes);
        let interval = if self.terminal {
            DRAW_INTERVAL
        } else {
            LOG_INTERVAL
        };
        if st.last_output.is_some_and(|t| t.elapsed() < interval) {
            return;
        }
        st.last_output = Some(Instant::now());
        let line = self.line(st.done_bytes);
        drop(st);
        if self.terminal {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r{line}\x1b[K");
            let _ = err.flush();
        } else {
            tracing::info!("{line}");
        }
    }

    /// Ends the display (a final newline on a terminal).
    pub fn finish(&self) {
        if self.terminal {
            let done = self.state.lock().expect("progress lock").done_bytes;
            eprintln!("\r{}\x1b[K", self.line(done));
        }
    }

    fn line(&self, done: u64) -> String {
        let total = (*self.total_bytes.lock().expect("progress lock")).max(done);
        if self.files {
            return format!("{}: {done} / {total} files", self.what);
        }
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = done as f64 / secs;
        let eta = if rate > 0.0 && total > done {
            format!("{:.0}s", (total - done) as f64 / rate)
        } else {
            "-".into()
        };
        let pct = if total > 0 {
            100.0 * done as f64 / total as f64
        } else {
            0.0
        };
        format!(
            "{}: {} / {} ({pct:.0}%), {}/s, ETA {eta}",
            self.what,
            human_bytes(done),
            human_bytes(total),
            human_bytes(rate as u64)
        )
    }
}

/// Bytes as B, KiB, MiB, GiB or TiB with one decimal.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_sizes() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(3 << 20), "3.0 MiB");
    }
}
