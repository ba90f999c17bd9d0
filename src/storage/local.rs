//! Durability of a `file://` repository: an object counts as stored only
//! once it and every directory on the way to it (created by the write,
//! perhaps) are on disk, as it counts once acknowledged by a cloud store.
//! A write retried after a failed sync finds the object there and syncs
//! again (see `Repository::put_sealed_with`).
//!
//! New objects are written by walvault itself rather than the store's
//! client: with direct I/O (see [`crate::local_file`]), under a staging
//! name the store's listings skip (`{name}#{digits}`, as the store's own
//! writes use), then linked to their name only if nothing is there, as a
//! create-only write to a cloud store.

use std::path::Path;

use object_store::PutPayload;

use super::{Error, Repository};

impl Repository {
    /// On a local repository, writes a new object at `key` with direct I/O
    /// and links it into place unless an object is there
    /// (`object_store::Error::AlreadyExists` then, as from the store);
    /// not yet synced. `None` for other repositories.
    pub(super) async fn put_local_create(
        &self,
        key: &str,
        payload: PutPayload,
    ) -> Option<Result<(), Error>> {
        let root = self.local_root.clone()?;
        let dest = root.join(key);
        let result = tokio::task::spawn_blocking(move || create_linked(&dest, &payload))
            .await
            .expect("writing a file does not panic");
        Some(result.map_err(|e| Error::Backend {
            key: key.to_string(),
            source: if e.kind() == std::io::ErrorKind::AlreadyExists {
                object_store::Error::AlreadyExists {
                    path: key.to_string(),
                    source: Box::new(e),
                }
            } else {
                object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: Box::new(e),
                }
            },
        }))
    }

    /// On a local repository, fsyncs a new object and each directory from
    /// its own up to the repository's root, so that "stored" means on disk,
    /// as it means acknowledged by a cloud store.
    pub(super) async fn sync_local(&self, key: &str) -> Result<(), Error> {
        let Some(root) = self.local_root.clone() else {
            return Ok(());
        };
        let file = root.join(key);
        let result = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&file)?.sync_all()?;
            let mut dir = file.parent();
            while let Some(d) = dir {
                std::fs::File::open(d)?.sync_all()?;
                if d == root {
                    break;
                }
                dir = d.parent();
            }
            Ok::<_, std::io::Error>(())
        })
        .await
        .expect("fsync does not panic");
        result.map_err(|e| Error::Backend {
            key: key.to_string(),
            source: object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            },
        })
    }
}

/// Writes `payload` to a new staging file beside `dest` and links it to
/// `dest` unless `dest` exists (`AlreadyExists`); the staging file is
/// removed either way.
fn create_linked(dest: &Path, payload: &PutPayload) -> std::io::Result<()> {
    let pieces: Vec<&[u8]> = payload.iter().map(AsRef::as_ref).collect();
    let name = dest
        .file_name()
        .map_or_else(|| "object".into(), |n| n.to_string_lossy().into_owned());
    let staging = loop {
        let candidate = dest.with_file_name(format!("{name}#{}", rand::random::<u32>()));
        match crate::local_file::write_new_file_direct(&candidate, &pieces) {
            Ok(()) => break candidate,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = dest.parent().expect("an object's path has a directory");
                std::fs::create_dir_all(parent)?;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&candidate);
                return Err(e);
            }
        }
    };
    let linked = std::fs::hard_link(&staging, dest);
    let _ = std::fs::remove_file(&staging);
    linked
}
