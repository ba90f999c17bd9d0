//! The cancellation tree of a command. `graceful` asks work to finish what
//! it holds and stop (the first SIGINT/SIGTERM); `abort` drops what is left
//! (a second signal, a failure, or a drain past its deadline). Every task
//! and every retry loop runs under a child of its command's tokens, never
//! under a fresh one, so cancelling a command reaches all of it.

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// The two cancellation levels of a command.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Finish what is held, then stop.
    pub graceful: CancellationToken,
    /// Stop now; what is not stored stays on the server (the slot) or is
    /// cleaned up later.
    pub abort: CancellationToken,
}

impl Shutdown {
    /// A new root.
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens for a part of this command: cancelled with it, or alone.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            graceful: self.graceful.child_token(),
            abort: self.abort.child_token(),
        }
    }

    /// Cancels `graceful` on the first SIGINT/SIGTERM; a second one cancels
    /// `abort` and exits at once.
    pub fn cancel_on_signals(&self) {
        let shutdown = self.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                error!("cannot install signal handlers");
                return;
            };
            let mut count = 0;
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                count += 1;
                if count == 1 {
                    info!(
                        "signal received: storing what is held, then exiting (send again to abort)"
                    );
                    shutdown.graceful.cancel();
                } else {
                    error!("second signal: aborting; unstored WAL stays in the slot on the server");
                    shutdown.abort.cancel();
                    std::process::exit(1);
                }
            }
        });
    }
}
