//! Key rotation: which master key sealed each object, and rewriting the
//! key ids `walvault.json` lists (the only document walvault ever
//! replaces; it is authenticated by a MAC under each listed key).

use std::collections::BTreeMap;

use futures::StreamExt;
use object_store::{PutMode, PutOptions, PutPayload};

use crate::format::chunk::{self, HEADER_LEN};
use crate::format::manifest::RepositoryManifest;

use super::{Error, Repository, layout};

/// Header reads in flight at once while counting objects per key.
const SCAN_CONCURRENCY: usize = 16;

/// Objects and stored bytes sealed by one master key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyUsage {
    /// Objects.
    pub objects: u64,
    /// Stored bytes.
    pub bytes: u64,
}

impl Repository {
    /// Reads the header of every object (except `walvault.json` and probes)
    /// and counts objects and bytes by the key that sealed them (`None`:
    /// not encrypted). One ranged read per object.
    ///
    /// # Errors
    /// Store errors; an object whose header is damaged or misplaced, named.
    pub async fn key_usage(&self) -> Result<BTreeMap<Option<u32>, KeyUsage>, Error> {
        let objects: Vec<_> = self
            .list("")
            .await?
            .into_iter()
            .filter(|o| {
                o.key != layout::REPOSITORY_MANIFEST && !o.key.starts_with(layout::PROBE_PREFIX)
            })
            .collect();
        let mut usage: BTreeMap<Option<u32>, KeyUsage> = BTreeMap::new();
        let mut reads = futures::stream::iter(objects)
            .map(|o| async move {
                let head = self.get_head(&o.key, HEADER_LEN).await?;
                let header =
                    chunk::parse_header(&head, Some(&o.key)).map_err(|source| Error::Corrupt {
                        key: o.key.clone(),
                        source,
                    })?;
                Ok::<_, Error>((header.key_id, o.size))
            })
            .buffer_unordered(SCAN_CONCURRENCY);
        while let Some(r) = reads.next().await {
            let (id, size) = r?;
            let u = usage.entry(id).or_default();
            u.objects += 1;
            u.bytes += size;
        }
        Ok(usage)
    }

    /// The first `n` bytes of an object (all of it if shorter).
    ///
    /// # Errors
    /// Store errors; a missing object.
    pub async fn get_head(&self, key: &str, n: usize) -> Result<bytes::Bytes, Error> {
        super::RequestCounts::count(&self.requests.get);
        let path = self.path(key);
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(|source| Error::Backend {
                key: key.to_string(),
                source,
            })?;
        let end = (n as u64).min(meta.size);
        self.store
            .get_range(&path, 0..end)
            .await
            .map_err(|source| Error::Backend {
                key: key.to_string(),
                source,
            })
    }

    /// Replaces `walvault.json` with the same identity listing `key_ids`,
    /// signed by each of them. The keyring must confirm the current document
    /// and hold every key listed in the new one.
    ///
    /// # Errors
    /// [`Error::KeysMissing`] when the keyring lacks a listed key; store
    /// errors; the checks of [`Repository::open_manifest`].
    pub async fn rewrite_key_ids(&self, key_ids: Vec<String>) -> Result<RepositoryManifest, Error> {
        let mut m = self
            .open_manifest()
            .await?
            .ok_or_else(|| Error::BadManifest {
                key: layout::REPOSITORY_MANIFEST.into(),
                reason: "the repository is empty".into(),
            })?;
        let signing = self.keyring.only(&key_ids);
        let missing: Vec<String> = key_ids
            .iter()
            .filter(|id| !signing.ids().iter().any(|k| &format!("{k:08x}") == *id))
            .cloned()
            .collect();
        if !missing.is_empty() || key_ids.is_empty() {
            return Err(Error::KeysMissing {
                missing: missing.join(", "),
            });
        }
        m.key_ids = key_ids;
        m.macs = None;
        m.sign(&signing);
        m.validate().map_err(|e| Error::BadManifest {
            key: layout::REPOSITORY_MANIFEST.into(),
            reason: e.to_string(),
        })?;
        let body = serde_json::to_vec_pretty(&m).expect("manifest serializes");
        super::RequestCounts::count(&self.requests.put);
        self.store
            .put_opts(
                &self.path(layout::REPOSITORY_MANIFEST),
                PutPayload::from(body),
                PutOptions {
                    mode: PutMode::Overwrite,
                    ..Default::default()
                },
            )
            .await
            .map_err(|source| Error::Backend {
                key: layout::REPOSITORY_MANIFEST.into(),
                source,
            })?;
        self.sync_local(layout::REPOSITORY_MANIFEST).await?;
        Ok(m)
    }
}
