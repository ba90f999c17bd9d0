//! `walvault keygen`: print a new random master key.

use std::process::ExitCode;

/// Arguments of `keygen`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Print a new random 256-bit key as 64 hexadecimal characters, for --key-file or \
WALVAULT_KEY. Keep it safe: without it nothing in an encrypted repository can be restored. To rotate keys, \
put the new key first in the key file and keep the old one below it.",
    after_long_help = "Examples:\
\n  walvault keygen > walvault.key && chmod 600 walvault.key    # keep a copy somewhere safe"
)]
pub struct Args {}

/// Prints the key on stdout and its id on stderr.
///
/// # Errors
/// Never in practice.
pub fn run(_args: &Args) -> anyhow::Result<ExitCode> {
    let key = crate::config::keys::generate_key();
    println!("{}", key.to_hex());
    eprintln!("key id {}", key.id());
    Ok(ExitCode::SUCCESS)
}
