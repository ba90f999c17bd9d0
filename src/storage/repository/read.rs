//! Reading objects: an object's stored bytes, and those bytes opened (on
//! the blocking pool) as the repository's object policy allows. A missing
//! object is `None`, not an error; one that does not open is
//! [`Error::Corrupt`] naming it.
//!
//! It neither lists nor writes.

use bytes::Bytes;

use crate::format::chunk::{self, Expect};
use crate::storage::Error;

use super::{READ_TIMEOUT, Repository, RequestCounts};

impl Repository {
    /// Reads and opens the object at `key`; `None` if it does not exist.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the object when it does not open; store errors.
    pub async fn get_opened(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        self.get_opened_into(key, Vec::new()).await
    }

    /// [`Repository::get_opened`] into `buffer` (its allocation is reused:
    /// callers that read many large objects keep a few buffers).
    ///
    /// # Errors
    /// As [`Repository::get_opened`].
    pub async fn get_opened_into(
        &self,
        key: &str,
        mut buffer: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, Error> {
        let Some(raw) = self.get_raw(key).await? else {
            return Ok(None);
        };
        let keyring = self.keyring.clone();
        let policy = self.settled_policy().await?;
        let bound_name = policy
            .bound_name(&self.physical_key(key))
            .unwrap_or_else(|| key.to_string());
        let opened = tokio::task::spawn_blocking(move || {
            let expect = Expect {
                key: &bound_name,
                allow_unbound: !policy.bound,
                require_cipher: policy.require_cipher,
            };
            chunk::open_expected_into(&raw, &keyring, expect, &mut buffer).map(|()| buffer)
        })
        .await
        .expect("opening does not panic");
        opened.map(Some).map_err(|source| Error::Corrupt {
            key: key.to_string(),
            source,
        })
    }

    /// Reads an object's stored bytes; `None` if it does not exist.
    ///
    /// # Errors
    /// Store errors.
    pub async fn get_raw(&self, key: &str) -> Result<Option<Bytes>, Error> {
        self.settle_for(key).await?;
        self.get_stored(key).await
    }

    /// [`Repository::get_raw`] without reading `walvault.json` first (for
    /// reading it).
    pub(in crate::storage) async fn get_stored(&self, key: &str) -> Result<Option<Bytes>, Error> {
        let path = self.path(key);
        let fut = async {
            RequestCounts::count(&self.requests.get);
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        match tokio::time::timeout(READ_TIMEOUT, fut).await {
            Ok(r) => r.map_err(|source| Error::Backend {
                key: key.to_string(),
                source,
            }),
            Err(_) => Err(Error::Timeout {
                key: key.to_string(),
                after: READ_TIMEOUT,
            }),
        }
    }
}
