//! Listing: the objects under a prefix (all, or those after a key), and
//! the folders and objects directly under one. Keys come back relative to
//! the repository prefix, sorted, and only those under the prefix asked
//! for; a store that stops answering mid-listing is a timeout.
//!
//! It reads no objects.

use futures::StreamExt;
use object_store::path::Path;

use crate::storage::Error;

use super::{ObjectInfo, READ_TIMEOUT, Repository, RequestCounts};

impl Repository {
    /// Lists objects whose keys start with `prefix` (a folder ending in `/`, or empty).
    ///
    /// # Errors
    /// Store errors.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, Error> {
        self.list_after(prefix, None).await
    }

    /// Lists objects whose keys start with `prefix` and sort after `after`
    /// (a key, not necessarily of an object). Stores that can start a
    /// listing at a key (S3's `StartAfter`) are asked for just those, so the
    /// cost follows what is listed, not what the prefix holds.
    ///
    /// # Errors
    /// Store errors.
    pub async fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<Vec<ObjectInfo>, Error> {
        self.settle_for(prefix).await?;
        let path = self.start_listing(prefix);
        // A listing of many pages may take long as a whole; what must not
        // happen is a store that stops answering: the limit is per item (in
        // practice per page, as items arrive a page at a time).
        let mut stream = match after {
            Some(after) => self
                .store
                .list_with_offset(path.as_ref(), &self.path(after)),
            None => self.store.list(path.as_ref()),
        };
        let mut metas = Vec::new();
        loop {
            let item = async { stream.next().await.transpose() };
            let Some(m) = await_listing(prefix, item).await? else {
                break;
            };
            metas.push(m);
        }
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .map(|m| ObjectInfo {
                key: self.logical_key(prefix, self.relative(&m.location)),
                size: m.size,
                last_modified: m.last_modified,
            })
            .filter(|o| o.key.starts_with(prefix) && after.is_none_or(|a| o.key.as_str() > a))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The folders directly under `prefix` (a folder ending in `/`), each
    /// as a key prefix ending in `/`, and the objects directly in it: one
    /// request on object stores, whatever the folders hold.
    ///
    /// # Errors
    /// Store errors.
    pub async fn list_folders(
        &self,
        prefix: &str,
    ) -> Result<(Vec<String>, Vec<ObjectInfo>), Error> {
        self.settle_for(prefix).await?;
        let path = self.start_listing(prefix);
        let listed = await_listing(prefix, self.store.list_with_delimiter(path.as_ref())).await?;
        let mut folders: Vec<String> = listed
            .common_prefixes
            .iter()
            .map(|p| format!("{}/", self.logical_key(prefix, self.relative(p))))
            .filter(|k| k.starts_with(prefix))
            .collect();
        folders.sort();
        let mut objects: Vec<ObjectInfo> = listed
            .objects
            .into_iter()
            .map(|m| ObjectInfo {
                key: self.logical_key(prefix, self.relative(&m.location)),
                size: m.size,
                last_modified: m.last_modified,
            })
            .filter(|o| o.key.starts_with(prefix))
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((folders, objects))
    }

    /// Counts one listing request for `prefix` and returns the store path
    /// of its folder (`None`: the whole store, when the repository has no
    /// prefix).
    fn start_listing(&self, prefix: &str) -> Option<Path> {
        let folder = prefix.trim_end_matches('/');
        let path = if folder.is_empty() {
            (!self.prefix.as_ref().is_empty()).then(|| self.prefix.clone())
        } else {
            Some(self.path(folder))
        };
        RequestCounts::count(&self.requests.list);
        path
    }
}

/// Awaits one answer of the store while listing `prefix` (the next item of
/// a paged listing, or a whole listing by folder), within [`READ_TIMEOUT`];
/// a store error or the timeout names `prefix`.
async fn await_listing<T>(
    prefix: &str,
    answer: impl Future<Output = object_store::Result<T>>,
) -> Result<T, Error> {
    match tokio::time::timeout(READ_TIMEOUT, answer).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(source)) => Err(Error::Backend {
            key: prefix.to_string(),
            source,
        }),
        Err(_) => Err(Error::Timeout {
            key: prefix.to_string(),
            after: READ_TIMEOUT,
        }),
    }
}
