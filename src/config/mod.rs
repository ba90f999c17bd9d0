//! Settings shared by the commands: repository, keys, sizes and durations.
//! Precedence is flags > `WALVAULT_*` environment > configuration file >
//! built-in defaults (clap resolves all four: the command line makes the
//! file's settings the flags' defaults); this module validates and resolves
//! once.
//!
//! - [`resolve`] is the one resolution of the repository and its key, for
//!   every command;
//! - [`keys`] reads key files and `WALVAULT_KEY`, and draws new keys;
//! - [`settings_file`] writes and reads the repository settings file that
//!   `restore_command` uses instead of the environment.

pub mod keys;
pub mod resolve;
pub mod settings_file;

use crate::format::chunk::{Compression, SealOptions};
use crate::format::key::{KeyError, Keyring};
use crate::storage::{OpenMode, Repository};

pub use keys::load_keyring;
pub use resolve::RepositorySource;

pub use crate::format::chunk::DEFAULT_ZSTD_LEVEL;

/// A configuration problem (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required setting is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A value does not parse.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        /// Which setting.
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// Key problems.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Repository URL problems.
    #[error(transparent)]
    Repository(#[from] crate::storage::Error),
}

/// Opens the repository with the keyring and zstd level.
///
/// # Errors
/// On a bad URL or level.
pub fn open_repository(
    url: &str,
    keyring: Keyring,
    zstd_level: Option<i32>,
) -> Result<Repository, Error> {
    open_repository_with(
        url,
        &[],
        keyring,
        zstd_level,
        OpenMode {
            create: true,
            instance_credentials: false,
        },
    )
}

/// [`open_repository`] with explicit store options.
///
/// # Errors
/// On a bad URL, option or level.
pub fn open_repository_with(
    url: &str,
    options: &[(String, String)],
    keyring: Keyring,
    zstd_level: Option<i32>,
    mode: OpenMode,
) -> Result<Repository, Error> {
    let level = zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL);
    if !(1..=19).contains(&level) {
        return Err(Error::Invalid {
            what: "compression level",
            value: level.to_string(),
            reason: "zstd levels run from 1 to 19".into(),
        });
    }
    let seal = SealOptions {
        compression: Compression::Zstd { level },
        ..SealOptions::default()
    };
    Ok(Repository::open_with_mode(
        url, options, keyring, seal, mode,
    )?)
}

/// A number of bytes, given as `256MiB`, `1GiB` or `4096` ([`parse_byte_size`])
/// and shown in the largest binary unit that holds it exactly (`512MiB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_byte_size(s).map(ByteSize)
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0;
        for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n != 0 && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

/// Parses a byte size: `268435456`, `256MiB`, `1GiB`, `512MB`, `64k`.
///
/// # Errors
/// On anything else.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let digits: String = t.chars().take_while(|c| c.is_ascii_digit()).collect();
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 256MiB"))?;
    let mult: u64 = match t[digits.len()..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} (use KiB, MiB or GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| "size too large".to_string())
}

/// Parses a duration like `1s`, `500ms`, `2m` (humantime).
///
/// # Errors
/// On anything else.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (use e.g. 1s, 500ms, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_byte_size("256MiB").unwrap(), 256 << 20);
        assert_eq!(parse_byte_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_byte_size("4096").unwrap(), 4096);
        assert!(parse_byte_size("lots").is_err());
        assert_eq!(
            parse_duration("500ms").unwrap(),
            std::time::Duration::from_millis(500)
        );
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn byte_sizes_show_as_given() {
        for text in ["512MiB", "2MiB", "1GiB", "4KiB", "1000", "0"] {
            assert_eq!(text.parse::<ByteSize>().unwrap().to_string(), text);
        }
        assert_eq!("1048576".parse::<ByteSize>().unwrap().to_string(), "1MiB");
    }

    #[test]
    fn key_sources_are_exclusive() {
        use std::path::PathBuf;
        let key = "ab".repeat(32);
        assert!(
            load_keyring(None, Some(&key))
                .unwrap()
                .write_key()
                .is_some()
        );
        assert!(load_keyring(None, None).unwrap().is_empty());
        assert!(load_keyring(Some(&PathBuf::from("/x")), Some(&key)).is_err());
        assert!(load_keyring(None, Some("nothex")).is_err());
    }
}
