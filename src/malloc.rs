//! glibc malloc's thresholds for the long-running commands.
//!
//! glibc raises its mmap threshold each time a block above it is freed (up
//! to 32 MiB), and its trim threshold with it: after the first 16 MiB
//! buffer is freed, buffers of that size come from the arenas, and each
//! arena keeps up to twice that in freed memory. With a thread per upload
//! and per writer, the process then held 100–150 MiB more than the memory
//! budget counts. A fixed threshold keeps large buffers in their own
//! mappings, given back to the system when freed.
//!
//! The thresholds are read when the program starts, from
//! `GLIBC_TUNABLES`, so [`use_fixed_thresholds`] starts the program again
//! with it set; programs walvault runs (PostgreSQL, hooks) get the
//! environment walvault was started with ([`child_command`]). A
//! `GLIBC_TUNABLES` the user set is left as it is.

use std::os::unix::process::CommandExt;
use std::process::Command;

const TUNABLES_VAR: &str = "GLIBC_TUNABLES";
/// Set beside the tunables when walvault added them.
const MARK_VAR: &str = "WALVAULT_MALLOC_TUNED";
/// Blocks of 256 KiB and more are mapped on their own.
const TUNABLES: &str = "glibc.malloc.mmap_threshold=262144";

/// Starts this program again, with the same arguments, under fixed malloc
/// thresholds, unless it runs so already, `GLIBC_TUNABLES` is set, or the
/// C library is not glibc. Returns only when it did not (or could not).
pub fn use_fixed_thresholds() {
    if !cfg!(all(target_os = "linux", target_env = "gnu"))
        || std::env::var_os(TUNABLES_VAR).is_some()
        || std::env::var_os(MARK_VAR).is_some()
    {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut cmd = Command::new(exe);
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    // exec returns only on failure; the defaults then stay.
    let _ = cmd
        .args(args)
        .env(TUNABLES_VAR, TUNABLES)
        .env(MARK_VAR, "1")
        .exec();
}

/// A command for `program` with the environment walvault was started
/// with: without the tunables [`use_fixed_thresholds`] added.
pub fn child_command(program: impl AsRef<std::ffi::OsStr>) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    if std::env::var_os(MARK_VAR).is_some() {
        cmd.env_remove(TUNABLES_VAR).env_remove(MARK_VAR);
    }
    cmd
}
