//! Pins: a backup kept against every retention policy (`walvault keep`),
//! with a reason and, optionally, an end. Expire keeps a pinned backup and
//! the WAL it needs to be consistent; a lapsed pin is removed by the next
//! expire run.

use chrono::{DateTime, Utc};

use crate::format::retention::{PIN_VERSION, Pin};
use crate::storage::{self, Repository};

/// Why a backup could not be pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// No backup has this id (exit code 2).
    #[error(transparent)]
    UnknownBackup(#[from] crate::config::Error),
    /// The pin would end past what a time can hold.
    #[error("--for is too long")]
    TooLong,
    /// The store failed.
    #[error("store the pin")]
    Store(#[source] storage::Error),
}

impl PinError {
    /// Whether the user asked for something that cannot be (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, PinError::UnknownBackup(_))
    }
}

/// Pins backup `id` of `repo` from `now` for `lasting` (default: for ever),
/// replacing an earlier pin of it.
///
/// # Errors
/// [`PinError`].
pub async fn pin(
    repo: &Repository,
    id: &str,
    reason: Option<String>,
    lasting: Option<std::time::Duration>,
    now: DateTime<Utc>,
) -> Result<Pin, PinError> {
    let result = write_pin(repo, id, reason, lasting, now).await;
    let outcome = match &result {
        Ok(p) => Ok(match (&p.until, &p.reason) {
            (Some(until), reason) => format!(
                "kept until {}{}",
                crate::format::time::to_text(until),
                reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
            (None, reason) => format!(
                "kept for ever{}",
                reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        }),
        Err(e) => Err(crate::error::chain(e)),
    };
    repo.audit("keep", Some(id), outcome).await;
    result
}

async fn write_pin(
    repo: &Repository,
    id: &str,
    reason: Option<String>,
    lasting: Option<std::time::Duration>,
    now: DateTime<Utc>,
) -> Result<Pin, PinError> {
    let listed = repo
        .list_backups_readable()
        .await
        .map_err(PinError::Store)?;
    if !listed.backups.iter().any(|b| b.id == id) && !listed.locked.iter().any(|b| b.id == id) {
        return Err(crate::config::Error::Invalid {
            what: "backup id",
            value: id.to_string(),
            reason: "no such backup in the repository (walvault list shows the ids)".into(),
        }
        .into());
    }
    let until = match lasting {
        Some(d) => Some(now + chrono::Duration::from_std(d).map_err(|_| PinError::TooLong)?),
        None => None,
    };
    let pin = Pin {
        version: PIN_VERSION,
        backup_id: id.to_string(),
        reason,
        created: now,
        until,
    };
    repo.write_pin(&pin).await.map_err(PinError::Store)?;
    Ok(pin)
}

/// Removes the pin of backup `id`, if it has one.
///
/// # Errors
/// Store errors.
pub async fn unpin(repo: &Repository, id: &str) -> Result<(), storage::Error> {
    let result = repo.delete_pin(id).await;
    let outcome = match &result {
        Ok(()) => Ok("no longer kept by a pin".to_string()),
        Err(e) => Err(crate::error::chain(e)),
    };
    repo.audit("unkeep", Some(id), outcome).await;
    result
}
