//! A copy of the repository in another place: every object, byte for byte,
//! under the same names, so the copy is the same repository (the same
//! `walvault.json`, whose repository id every object is bound to) and every
//! command reads it as it reads the original.
//!
//! Resumable and idempotent: an object the copy holds already (same size)
//! is not read again; what is copied is written create-only and read back.
//! Order: every object, then each backup's `backup.json` (a backup exists
//! in the copy only once its parts are there), then `walvault.json` (a
//! copy that was never finished is no repository).

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::StreamExt;
use object_store::PutPayload;
use serde::Serialize;

use super::{Error, ObjectInfo, Repository, layout};

/// What a copy did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CopyReport {
    /// Objects written to the copy (and read back).
    pub copied: u64,
    /// Their bytes.
    pub copied_bytes: u64,
    /// Objects the copy held already.
    pub present: u64,
    /// Replaceable documents (pins, the WAL index, `walvault.json`) brought
    /// up to date.
    pub replaced: u64,
}

/// Objects that are not copied: probes, the stream's lease (the copy has
/// its own writers, if any), running backups' heartbeats.
fn is_local_state(key: &str) -> bool {
    key.starts_with(layout::PROBE_PREFIX)
        || key.starts_with(layout::LEASE_PREFIX)
        || (key.starts_with(layout::BACKUPS_PREFIX) && key.contains("/heartbeat/"))
}

/// Documents walvault replaces in place: compared by content, and replaced
/// in the copy when they differ.
fn is_replaceable(key: &str) -> bool {
    key == layout::REPOSITORY_MANIFEST
        || key.ends_with(layout::WAL_INDEX)
        || key.starts_with(layout::PINS_PREFIX)
}

impl Repository {
    /// Copies every object of this repository that `to` lacks into `to`
    /// (see the module documentation), `concurrency` objects at once;
    /// `done` is told the bytes copied.
    ///
    /// # Errors
    /// [`Error::CopyTarget`] when `to` holds another repository; a
    /// [`Error::Conflict`] naming an object the copy holds with other
    /// content, or that reads back otherwise than written; store errors.
    pub async fn copy_into(
        &self,
        to: &Repository,
        concurrency: usize,
        done: &(dyn Fn(u64) + Sync),
    ) -> Result<CopyReport, Error> {
        let (from, to) = (self.unmapped(), to.unmapped());
        let manifest = from
            .open_manifest()
            .await?
            .ok_or_else(|| Error::BadManifest {
                key: layout::REPOSITORY_MANIFEST.into(),
                reason: "the repository to copy is empty".into(),
            })?;
        let identity = from
            .get_stored(layout::REPOSITORY_MANIFEST)
            .await?
            .expect("opened above");
        if let Some(theirs) = to.read_manifest().await? {
            // The copy may hold a system the cluster was upgraded from.
            let held_system = manifest
                .systems()
                .iter()
                .any(|(id, _, _)| *id == theirs.system_identifier);
            if theirs.repository_id != manifest.repository_id || !held_system {
                return Err(Error::CopyTarget {
                    repository: to.display().to_string(),
                    reason: format!(
                        "it holds repository {} of system {}, not a copy of this one ({} of system {})",
                        theirs.repository_id.as_deref().unwrap_or("(no id)"),
                        theirs.system_identifier,
                        manifest.repository_id.as_deref().unwrap_or("(no id)"),
                        manifest.system_identifier
                    ),
                });
            }
            theirs
                .verify(&self.keyring)
                .map_err(|e| Error::BadManifest {
                    key: format!("{} in {}", layout::REPOSITORY_MANIFEST, to.display()),
                    reason: e.to_string(),
                })?;
        }
        let listed = from.list("").await?;
        let finished: std::collections::BTreeSet<&str> = listed
            .iter()
            .filter(|o| o.key.ends_with("/backup.json"))
            .filter_map(|o| layout::backup_id_of(&o.key))
            .collect();
        let objects: Vec<&ObjectInfo> = listed
            .iter()
            .filter(|o| o.key != layout::REPOSITORY_MANIFEST && !is_local_state(&o.key))
            // An unfinished backup (running, or the leftovers of one
            // interrupted) is not part of the repository.
            .filter(|o| layout::backup_id_of(&o.key).is_none_or(|id| finished.contains(id)))
            .collect();
        let held: BTreeMap<String, u64> = to
            .list("")
            .await?
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        let (last, first): (Vec<&ObjectInfo>, Vec<&ObjectInfo>) = objects
            .into_iter()
            .partition(|o| o.key.ends_with("/backup.json"));
        let mut report = CopyReport::default();
        let mut copied_bytes = 0u64;
        for batch in [first, last] {
            let mut results = futures::stream::iter(batch.into_iter().map(|o| {
                let (from, to, held) = (&from, &to, &held);
                async move { copy_one(from, to, o, held.get(&o.key).copied()).await }
            }))
            .buffer_unordered(concurrency.max(1));
            while let Some(r) = results.next().await {
                match r? {
                    Copied::Present => report.present += 1,
                    Copied::Replaced => report.replaced += 1,
                    Copied::Written(n) => {
                        report.copied += 1;
                        report.copied_bytes += n;
                        copied_bytes += n;
                        done(copied_bytes);
                    }
                }
            }
        }
        // Last: the identity, which makes the copy a repository.
        match to.get_stored(layout::REPOSITORY_MANIFEST).await? {
            Some(theirs) if theirs == identity => report.present += 1,
            Some(_) => {
                to.put_replacing(layout::REPOSITORY_MANIFEST, identity)
                    .await?;
                report.replaced += 1;
            }
            None => {
                to.put_create(layout::REPOSITORY_MANIFEST, PutPayload::from(identity))
                    .await?;
                report.copied += 1;
            }
        }
        Ok(report)
    }
}

enum Copied {
    Present,
    Replaced,
    Written(u64),
}

async fn copy_one(
    from: &Repository,
    to: &Repository,
    object: &ObjectInfo,
    held: Option<u64>,
) -> Result<Copied, Error> {
    let key = object.key.as_str();
    let replaceable = is_replaceable(key);
    if held == Some(object.size) && !replaceable {
        return Ok(Copied::Present);
    }
    // Gone since the listing (expired, a pin removed): nothing to copy.
    let Some(bytes) = from.get_stored(key).await? else {
        return Ok(Copied::Present);
    };
    if held.is_some() {
        if replaceable {
            if to.get_stored(key).await?.as_ref() == Some(&bytes) {
                return Ok(Copied::Present);
            }
            to.put_replacing(key, bytes).await?;
            return Ok(Copied::Replaced);
        }
        return Err(Error::Conflict {
            key: format!("{key} in {}", to.display()),
            difference: format!(
                "the copy holds {} bytes, this repository {}: remove the copy's object (or the copy) and copy again",
                held.unwrap_or(0),
                bytes.len()
            ),
        });
    }
    let n = bytes.len() as u64;
    to.put_create(key, PutPayload::from(bytes.clone())).await?;
    check_read_back(to, key, &bytes).await?;
    Ok(Copied::Written(n))
}

/// Reads an object just copied back from the copy.
async fn check_read_back(to: &Repository, key: &str, bytes: &Bytes) -> Result<(), Error> {
    match to.get_stored(key).await? {
        Some(back) if back == *bytes => Ok(()),
        back => Err(Error::Conflict {
            key: format!("{key} in {}", to.display()),
            difference: format!(
                "read back as {} after writing {} bytes",
                back.map_or("missing".to_string(), |b| format!("{} bytes", b.len())),
                bytes.len()
            ),
        }),
    }
}
