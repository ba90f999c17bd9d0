//! Durability of a `file://` repository: an object counts as stored only
//! once it and every directory on the way to it (created by the write,
//! perhaps) are on disk, as it counts once acknowledged by a cloud store.
//! A write retried after a failed sync finds the object there and syncs
//! again (see `Repository::put_sealed_with`).

use super::{Error, Repository};

impl Repository {
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
