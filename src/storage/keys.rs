//! Key rotation: which master key sealed each object, the rules for adding
//! and retiring keys, and rewriting the key ids `walvault.json` lists (the
//! only document walvault ever replaces; it is authenticated by a MAC under
//! each listed key).

use std::collections::BTreeMap;

use futures::StreamExt;
use object_store::{PutMode, PutOptions, PutPayload};

use crate::format::KeyId;
use crate::format::chunk::{self, HEADER_LEN};
use crate::format::manifest::{RepositoryManifest, join_ids};

use super::{Error, Repository, layout};

/// Header reads in flight at once while counting objects per key.
const SCAN_CONCURRENCY: usize = 16;

/// One key as `walvault key list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyLine {
    /// The key id.
    pub id: KeyId,
    /// Whether `walvault.json` lists it.
    pub listed: bool,
    /// Whether the keyring (key file) holds it.
    pub in_keyring: bool,
    /// Whether it seals new objects (first in the key file).
    pub seals_new_objects: bool,
    /// Objects sealed with it.
    pub objects: u64,
    /// Their stored bytes.
    pub bytes: u64,
}

/// Every key the repository or the keyring knows, and what each seals.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct KeyReport {
    /// Listed keys first, then keys only in the keyring or only in headers.
    pub keys: Vec<KeyLine>,
    /// Objects sealed with no key.
    pub unencrypted: KeyUsage,
}

/// Objects and stored bytes sealed by one master key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyUsage {
    /// Objects.
    pub objects: u64,
    /// Stored bytes.
    pub bytes: u64,
}

impl Repository {
    /// Reads the header of every object (except `walvault.json`, probes
    /// and leases, whose contents are never read back, and the audit
    /// trail, which must not keep a key from retiring: `log` counts the
    /// records a retired key sealed) and counts objects
    /// and bytes by the key that sealed them (`None`: not encrypted). One
    /// ranged read per object.
    ///
    /// # Errors
    /// Store errors; an object whose header is damaged or misplaced, named.
    pub async fn key_usage(&self) -> Result<BTreeMap<Option<KeyId>, KeyUsage>, Error> {
        // Every object by its stored name, whichever system's it is.
        let this = &self.unmapped();
        let objects: Vec<_> = this
            .list("")
            .await?
            .into_iter()
            .filter(|o| {
                o.key != layout::REPOSITORY_MANIFEST
                    && !o.key.starts_with(layout::PROBE_PREFIX)
                    && !o.key.starts_with(layout::LEASE_PREFIX)
                    && !o.key.starts_with(layout::AUDIT_PREFIX)
            })
            .collect();
        let policy = this.settled_policy().await?;
        let mut usage: BTreeMap<Option<KeyId>, KeyUsage> = BTreeMap::new();
        let mut reads = futures::stream::iter(objects)
            .map(|o| async move {
                let head = this.get_head(&o.key, HEADER_LEN).await?;
                let bound = policy.bound_name(&o.key);
                let header = chunk::parse_header(&head, bound.as_deref()).map_err(|source| {
                    Error::Corrupt {
                        key: o.key.clone(),
                        source,
                    }
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
        self.settle_for(key).await?;
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
    pub async fn rewrite_key_ids(&self, key_ids: Vec<KeyId>) -> Result<RepositoryManifest, Error> {
        self.rewrite_manifest(|m| {
            m.key_ids = key_ids;
            Ok(())
        })
        .await
    }

    /// Replaces `walvault.json` with the stored document as `change`
    /// leaves it, signed by every key it lists. The keyring must confirm
    /// the current document and hold every key listed in the new one.
    ///
    /// # Errors
    /// [`Error::KeysMissing`] when the keyring lacks a listed key; those of
    /// `change`; store errors; the checks of [`Repository::open_manifest`].
    pub async fn rewrite_manifest(
        &self,
        change: impl FnOnce(&mut RepositoryManifest) -> Result<(), Error>,
    ) -> Result<RepositoryManifest, Error> {
        let empty = || Error::BadManifest {
            key: layout::REPOSITORY_MANIFEST.into(),
            reason: "the repository is empty".into(),
        };
        // The keys fit; then the document as stored now (never a view of
        // one system, never one read earlier), authenticated.
        self.open_manifest().await?.ok_or_else(empty)?;
        let mut m = self.read_manifest().await?.ok_or_else(empty)?;
        m.verify(&self.keyring).map_err(|e| Error::BadManifest {
            key: layout::REPOSITORY_MANIFEST.into(),
            reason: e.to_string(),
        })?;
        change(&mut m)?;
        let key_ids = m.key_ids.clone();
        let signing = self.keyring.only(&key_ids);
        let missing: Vec<KeyId> = key_ids
            .iter()
            .filter(|id| !signing.ids().contains(id))
            .copied()
            .collect();
        if !missing.is_empty() || key_ids.is_empty() {
            return Err(Error::KeysMissing {
                missing: join_ids(&missing),
            });
        }
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

    /// Lists every key of the keyring in `walvault.json` (`walvault key
    /// add`), keeping the keys it lists already; `None` when it lists them
    /// all already (nothing is rewritten).
    ///
    /// # Errors
    /// The checks of [`Repository::rewrite_key_ids`].
    pub async fn add_keyring_keys(
        &self,
        manifest: &RepositoryManifest,
    ) -> Result<Option<RepositoryManifest>, Error> {
        let result = self.add_keys(manifest).await;
        match &result {
            Ok(Some(m)) => {
                let listed = format!("walvault.json lists {}", join_ids(&m.key_ids));
                self.audit("key-add", None, Ok(listed)).await;
            }
            Ok(None) => {}
            Err(e) => {
                let why = crate::error::chain(e);
                self.audit("key-add", None, Err(why)).await;
            }
        }
        result
    }

    async fn add_keys(
        &self,
        manifest: &RepositoryManifest,
    ) -> Result<Option<RepositoryManifest>, Error> {
        if self
            .keyring()
            .ids()
            .iter()
            .all(|k| manifest.key_ids.contains(k))
        {
            return Ok(None);
        }
        let mut ids = self.keyring().ids();
        for listed in &manifest.key_ids {
            if !ids.contains(listed) {
                ids.push(*listed);
            }
        }
        self.rewrite_key_ids(ids).await.map(Some)
    }

    /// Removes key `id` from `walvault.json` (`walvault key retire`): only a
    /// listed key that does not seal new objects and seals no object any more.
    ///
    /// # Errors
    /// [`Error::Retire`] naming why the key stays; store errors.
    pub async fn retire_key(
        &self,
        manifest: &RepositoryManifest,
        id: KeyId,
    ) -> Result<RepositoryManifest, Error> {
        let result = self.retire(manifest, id).await;
        let outcome = match &result {
            Ok(m) => Ok(format!("walvault.json lists {}", join_ids(&m.key_ids))),
            Err(e) => Err(crate::error::chain(e)),
        };
        self.audit("key-retire", Some(&id.to_string()), outcome)
            .await;
        result
    }

    async fn retire(
        &self,
        manifest: &RepositoryManifest,
        id: KeyId,
    ) -> Result<RepositoryManifest, Error> {
        let refuse = |reason: String| Error::Retire { id, reason };
        if !manifest.key_ids.contains(&id) {
            return Err(refuse(format!(
                "walvault.json lists {}",
                join_ids(&manifest.key_ids)
            )));
        }
        if self.keyring().write_key().is_some_and(|k| k.id() == id) {
            return Err(refuse(
                "it seals new objects (it is first in the key file): put the new key first".into(),
            ));
        }
        let usage = self.key_usage().await?;
        if let Some(u) = usage.get(&Some(id)).filter(|u| u.objects > 0) {
            return Err(refuse(format!(
                "{} objects ({}) are still sealed with it; let expire remove them (walvault expire), or keep the key",
                u.objects,
                crate::progress::human_bytes(u.bytes)
            )));
        }
        let ids: Vec<KeyId> = manifest
            .key_ids
            .iter()
            .filter(|k| **k != id)
            .copied()
            .collect();
        self.rewrite_key_ids(ids).await
    }

    /// Every key `walvault.json` lists, the keyring holds or an object's
    /// header names, with what each seals (reads every object's header).
    ///
    /// # Errors
    /// Store errors; a damaged header, named.
    pub async fn key_report(&self, manifest: &RepositoryManifest) -> Result<KeyReport, Error> {
        let usage = self.key_usage().await?;
        let keyring = self.keyring().ids();
        let mut ids: Vec<KeyId> = manifest.key_ids.clone();
        for id in keyring.iter().chain(usage.keys().flatten()) {
            if !ids.contains(id) {
                ids.push(*id);
            }
        }
        let keys = ids
            .iter()
            .map(|id| {
                let u = usage.get(&Some(*id)).copied().unwrap_or_default();
                KeyLine {
                    id: *id,
                    listed: manifest.key_ids.contains(id),
                    in_keyring: keyring.contains(id),
                    seals_new_objects: keyring.first() == Some(id),
                    objects: u.objects,
                    bytes: u.bytes,
                }
            })
            .collect();
        Ok(KeyReport {
            keys,
            unencrypted: usage.get(&None).copied().unwrap_or_default(),
        })
    }
}
