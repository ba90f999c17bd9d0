//! Configuration files (`--config`) for walvault processes that see nothing
//! else: no WALVAULT_*, AWS_* or PG* variables.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::process::walvault_bin;

/// Writes `text` to `dir/name` with mode 0600 (it may hold secrets).
pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A walvault command whose environment holds only PATH and HOME.
pub fn bare_command() -> Command {
    let mut c = Command::new(walvault_bin());
    c.env_clear();
    c.env("PATH", std::env::var("PATH").unwrap_or_default());
    c.env("HOME", std::env::var("HOME").unwrap_or_default());
    c
}

/// Runs `walvault --config PATH ARGS...` with the bare environment and `env`.
pub fn run_with_config(path: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = bare_command();
    c.envs(env.iter().copied());
    c.arg("--config").arg(path).args(args).output().unwrap()
}

/// stdout and stderr of a finished process.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
