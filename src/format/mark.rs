//! A mark (`walvault mark NAME`): a named restore point on the server whose
//! WAL was stored before the command returned. `restore --target-name NAME`
//! uses its LSN to choose a backup that ends before it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::lsn::{Lsn, TimelineId};

/// The mark document version this code writes.
pub const MARK_VERSION: u32 = 1;

/// The longest restore point name PostgreSQL accepts (MAXFNAMELEN - 1).
pub const MAX_NAME_BYTES: usize = 63;

/// `marks/{name}.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mark {
    /// Format version.
    pub version: u32,
    /// The restore point name.
    pub name: String,
    /// The end of the restore point record (what pg_create_restore_point returned).
    pub lsn: Lsn,
    /// The timeline it was created on.
    pub timeline: TimelineId,
    /// The server's clock when it was created.
    #[serde(with = "super::time")]
    pub time: DateTime<Utc>,
}

/// Checks a mark name: 1 to 63 bytes of letters, digits, `.`, `_` and `-`
/// (a restore point name and an object key alike).
///
/// # Errors
/// Why the name is refused.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!("a mark name has 1 to {MAX_NAME_BYTES} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        || name.starts_with('.')
    {
        return Err("a mark name holds only letters, digits, '.', '_' and '-' (and does not start with '.')".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("before-v2_migration.1").is_ok());
        for bad in ["", "has space", "a/b", "..", "quote'", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_name(&"x".repeat(63)).is_ok());
    }
}
