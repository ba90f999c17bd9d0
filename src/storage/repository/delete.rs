//! Deleting objects, one at a time or in batches where the store has a
//! bulk delete. A missing object counts as deleted.
//!
//! It decides nothing about what may be deleted: retention and the cleanup
//! of interrupted backups do.

use futures::StreamExt;
use object_store::path::Path;

use crate::storage::Error;

use super::{BASE_REQUEST_TIMEOUT, Repository, RequestCounts};

impl Repository {
    /// Deletes an object (missing is fine).
    ///
    /// # Errors
    /// Store errors.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        self.settle_for(key).await?;
        RequestCounts::count(&self.requests.delete);
        match tokio::time::timeout(BASE_REQUEST_TIMEOUT, self.store.delete(&self.path(key))).await {
            Ok(Ok(()) | Err(object_store::Error::NotFound { .. })) => Ok(()),
            Ok(Err(source)) => Err(Error::Backend {
                key: key.to_string(),
                source,
            }),
            Err(_) => Err(Error::Timeout {
                key: key.to_string(),
                after: BASE_REQUEST_TIMEOUT,
            }),
        }
    }

    /// Deletes many objects, in batches where the store has a bulk delete
    /// (S3 `DeleteObjects`, up to 1,000 keys a request); missing is fine.
    /// Returns how many were deleted before the first error, if any.
    ///
    /// # Errors
    /// The first store error, naming its object.
    pub async fn delete_many(&self, keys: &[String]) -> Result<u64, Error> {
        const BATCH: usize = 1000;
        let mut deleted = 0u64;
        for key in keys.iter().take(1) {
            self.settle_for(key).await?;
        }
        for batch in keys.chunks(BATCH) {
            self.requests
                .delete
                .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let paths: Vec<object_store::Result<Path>> =
                batch.iter().map(|k| Ok(self.path(k))).collect();
            let stream = self
                .store
                .delete_stream(futures::stream::iter(paths).boxed());
            let results =
                tokio::time::timeout(BASE_REQUEST_TIMEOUT * 4, stream.collect::<Vec<_>>())
                    .await
                    .map_err(|_| Error::Timeout {
                        key: batch[0].clone(),
                        after: BASE_REQUEST_TIMEOUT * 4,
                    })?;
            for (key, result) in batch.iter().zip(results) {
                match result {
                    Ok(_) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                    Err(source) => {
                        return Err(Error::Backend {
                            key: key.clone(),
                            source,
                        });
                    }
                }
            }
        }
        Ok(deleted)
    }
}
