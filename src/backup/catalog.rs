//! The backups of a repository that are not (yet) backups: choosing a new
//! backup id, and finding and removing what interrupted backups left
//! behind. Reading every `backup.json` is [`Repository::list_backups`].

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::warn;

use crate::storage::{self, Repository, layout};

/// A new backup id from the current UTC time.
fn new_backup_id() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

/// Backups without `backup.json`, by what their objects say.
#[derive(Debug, Default)]
pub struct Unfinished {
    /// Ids with an object newer than the grace period: running (or just
    /// interrupted; either way not to be touched yet).
    pub running: Vec<String>,
    /// Dead ones (every object, heartbeats included, older than the grace
    /// period): id and keys.
    pub dead: Vec<(String, Vec<String>)>,
}

/// Sorts the backups of a `backups/` listing that never wrote
/// `backup.json` into running and dead, by ages on the store's clock
/// (`now` from [`Repository::store_now`]: a running backup's heartbeat is
/// never taken for old because this host's clock is ahead).
pub fn unfinished(
    objects: &[storage::ObjectInfo],
    grace: Duration,
    now: chrono::DateTime<chrono::Utc>,
) -> Unfinished {
    let mut by_id: BTreeMap<&str, Vec<&storage::ObjectInfo>> = BTreeMap::new();
    for o in objects {
        if let Some(id) = layout::backup_id_of(&o.key) {
            by_id.entry(id).or_default().push(o);
        }
    }
    let mut out = Unfinished::default();
    for (id, objs) in by_id {
        if objs.iter().any(|o| o.key == layout::backup_json_key(id)) {
            continue;
        }
        let newest = objs.iter().map(|o| o.last_modified).max().unwrap_or(now);
        let age = (now - newest).to_std().unwrap_or_default();
        if age < grace {
            out.running.push(id.to_string());
        } else {
            out.dead
                .push((id.to_string(), objs.iter().map(|o| o.key.clone()).collect()));
        }
    }
    out
}

/// Deletes the objects of backups that never wrote `backup.json` and whose
/// newest object is older than `grace` (an interrupted run).
///
/// # Errors
/// Store errors.
pub async fn clean_orphans(repo: &Repository, grace: Duration) -> Result<usize, storage::Error> {
    let objects = repo.list(layout::BACKUPS_PREFIX).await?;
    let now = repo.store_now().await?;
    let mut deleted = 0;
    for (id, keys) in unfinished(&objects, grace, now).dead {
        warn!(
            id,
            objects = keys.len(),
            "deleting the parts of an interrupted backup"
        );
        deleted += repo.delete_many(&keys).await? as usize;
    }
    Ok(deleted)
}

/// A backup id no object uses yet: the start time, with `-NN` if taken.
///
/// # Errors
/// Store errors.
pub async fn unused_backup_id(repo: &Repository) -> Result<String, storage::Error> {
    let base = new_backup_id();
    let free = storage::first_free_id(&base, |id| async move {
        Ok(repo.list(&layout::backup_prefix(&id)).await?.is_empty())
    })
    .await?;
    Ok(free.unwrap_or_else(|| format!("{base}-{}", std::process::id())))
}
