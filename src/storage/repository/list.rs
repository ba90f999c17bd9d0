//! Listing: the objects under a prefix (all, or those after a key), and
//! the folders and objects directly under one. Keys come back relative to
//! the repository prefix, sorted, and only those under the prefix asked
//! for; a store that stops answering mid-listing is a timeout.
//!
//! It reads no objects.

use futures::StreamExt;

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
        let folder = prefix.trim_end_matches('/');
        let path = if folder.is_empty() {
            (!self.prefix.as_ref().is_empty()).then(|| self.prefix.clone())
        } else {
            Some(self.path(folder))
        };
        RequestCounts::count(&self.requests.list);
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
            match tokio::time::timeout(READ_TIMEOUT, stream.next()).await {
                Ok(Some(Ok(m))) => metas.push(m),
                Ok(Some(Err(source))) => {
                    return Err(Error::Backend {
                        key: prefix.to_string(),
                        source,
                    });
                }
                Ok(None) => break,
                Err(_) => {
                    return Err(Error::Timeout {
                        key: prefix.to_string(),
                        after: READ_TIMEOUT,
                    });
                }
            }
        }
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .map(|m| ObjectInfo {
                key: self.relative(&m.location),
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
        let folder = prefix.trim_end_matches('/');
        let path = if folder.is_empty() {
            (!self.prefix.as_ref().is_empty()).then(|| self.prefix.clone())
        } else {
            Some(self.path(folder))
        };
        RequestCounts::count(&self.requests.list);
        let listed =
            match tokio::time::timeout(READ_TIMEOUT, self.store.list_with_delimiter(path.as_ref()))
                .await
            {
                Ok(Ok(l)) => l,
                Ok(Err(source)) => {
                    return Err(Error::Backend {
                        key: prefix.to_string(),
                        source,
                    });
                }
                Err(_) => {
                    return Err(Error::Timeout {
                        key: prefix.to_string(),
                        after: READ_TIMEOUT,
                    });
                }
            };
        let mut folders: Vec<String> = listed
            .common_prefixes
            .iter()
            .map(|p| format!("{}/", self.relative(p)))
            .filter(|k| k.starts_with(prefix))
            .collect();
        folders.sort();
        let mut objects: Vec<ObjectInfo> = listed
            .objects
            .into_iter()
            .map(|m| ObjectInfo {
                key: self.relative(&m.location),
                size: m.size,
                last_modified: m.last_modified,
            })
            .filter(|o| o.key.starts_with(prefix))
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((folders, objects))
    }
}
