//! Durability of a `file://` repository: an object counts as stored only
//! once it and its directory are on disk, as it counts once acknowledged
//! by a cloud store.

use super::{Error, Repository};

impl Repository {
    /// On a local repository, fsyncs a new object and its directory, so that
    /// "stored" means on disk, as it means acknowledged by a cloud store.
    pub(super) async fn sync_local(&self, key: &str) -> Result<(), Error> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = root.join(key);
        let result = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&file)?.sync_all()?;
            match file.parent() {
                Some(dir) => std::fs::File::open(dir)?.sync_all(),
                None => Ok(()),
            }
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
