//! The repository's identity document, `walvault.json`: read it, check a
//! reader's keys and a writer's server against it, create it once.

use object_store::PutPayload;

use crate::format::chunk;
use crate::format::manifest::{REPOSITORY_MANIFEST_VERSION, RepositoryManifest};

use super::{Error, Repository, layout};

impl Repository {
    /// Reads `walvault.json`, if the repository has one, and validates every
    /// field (not its authentication: see [`Repository::open_manifest`]).
    ///
    /// # Errors
    /// On store errors, an unreadable document or a value out of range.
    pub async fn read_manifest(&self) -> Result<Option<RepositoryManifest>, Error> {
        let key = layout::REPOSITORY_MANIFEST;
        let Some(bytes) = self.get_stored(key).await? else {
            return Ok(None);
        };
        let m: RepositoryManifest =
            serde_json::from_slice(&bytes).map_err(|e| Error::BadManifest {
                key: key.into(),
                reason: e.to_string(),
            })?;
        m.validate().map_err(|e| Error::BadManifest {
            key: key.into(),
            reason: e.to_string(),
        })?;
        Ok(Some(m))
    }

    /// Reads `walvault.json`, checks that the given keys fit it and that it
    /// is authentic, and from then on reads objects as it says (bound to
    /// their keys or not, encrypted or not). Returns it as this handle's
    /// system sees it (see [`Repository::for_system`]).
    ///
    /// # Errors
    /// [`Error::Mismatch`] on the wrong key or missing key,
    /// [`Error::BadManifest`] when the document was changed.
    pub async fn open_manifest(&self) -> Result<Option<RepositoryManifest>, Error> {
        let m = self.read_manifest().await?;
        if let Some(m) = &m {
            if !m.binds_objects() && !self.version_1_allowed {
                return Err(Error::VersionOne {
                    key: layout::REPOSITORY_MANIFEST.into(),
                });
            }
            m.check_keys(&self.keyring.ids())?;
            m.verify(&self.keyring).map_err(|e| Error::BadManifest {
                key: layout::REPOSITORY_MANIFEST.into(),
                reason: e.to_string(),
            })?;
            self.adopt(m)?;
            // As this handle's system sees it (adopt found the system).
            if let Some(system) = &self.system {
                return Ok(m.system_view(system));
            }
        }
        Ok(m)
    }

    /// Records that the cluster was upgraded (`pg_upgrade` gave it the
    /// system identifier `system_identifier`): the current system becomes
    /// an earlier one, whose backups and WAL stay readable, and writers of
    /// the new system are accepted from now on. Returns the new document.
    ///
    /// # Errors
    /// [`Error::Upgrade`] for a server that is not a later system; the
    /// errors of [`Repository::rewrite_manifest`].
    pub async fn record_upgrade(
        &self,
        system_identifier: &str,
        pg_major: u32,
        wal_segment_size: u64,
    ) -> Result<RepositoryManifest, Error> {
        let at = self
            .store_now()
            .await
            .unwrap_or_else(|_| chrono::Utc::now());
        self.rewrite_manifest(|m| {
            *m = m.record_upgrade(system_identifier, pg_major, wal_segment_size, at)?;
            Ok(())
        })
        .await
    }

    /// Makes sure `walvault.json` exists and fits this server and these keys:
    /// the first writer creates it; later ones are checked against it.
    ///
    /// # Errors
    /// [`Error::Mismatch`] for another cluster, segment size or key setup;
    /// [`Error::NoKey`] when a new repository would be created without a key
    /// and that was not asked for.
    pub async fn ensure_manifest(
        &self,
        system_identifier: &str,
        pg_major: u32,
        wal_segment_size: u64,
    ) -> Result<RepositoryManifest, Error> {
        if !self.probe_create_only().await? {
            tracing::error!(
                repo = self.display(),
                "the store ignores create-only writes: walvault checks for an existing object before each write instead, which another writer can race; use a store that honours them (see docs/operations.md, Object stores)"
            );
        }
        let _creating = self.creating.lock().await;
        if let Some(m) = self.open_manifest().await? {
            m.check_server(system_identifier, wal_segment_size)?;
            return Ok(m);
        }
        if self.keyring.is_empty() && !self.unencrypted_allowed {
            return Err(Error::NoKey {
                repository: self.display.clone(),
            });
        }
        let m = RepositoryManifest {
            version: REPOSITORY_MANIFEST_VERSION,
            repository_id: Some(RepositoryManifest::new_repository_id()),
            system_identifier: system_identifier.to_string(),
            pg_major,
            wal_segment_size,
            compression: match self.seal.compression {
                chunk::Compression::None => "none".into(),
                chunk::Compression::Zstd { .. } => "zstd".into(),
            },
            encryption: if self.keyring.is_empty() {
                "none".into()
            } else {
                "aes-256-gcm".into()
            },
            key_ids: self.keyring.ids(),
            created_at: chrono::Utc::now(),
            earlier_systems: Vec::new(),
            macs: None,
        };
        let mut m = m;
        m.sign(&self.keyring);
        let body = serde_json::to_vec_pretty(&m).expect("manifest serializes");
        match self
            .put_create(layout::REPOSITORY_MANIFEST, PutPayload::from(body))
            .await
        {
            Ok(()) => {
                self.adopt(&m)?;
                Ok(m)
            }
            // Someone else created it first: check theirs.
            Err(Error::Backend {
                source: object_store::Error::AlreadyExists { .. },
                ..
            }) => {
                let theirs = self
                    .open_manifest()
                    .await?
                    .ok_or_else(|| Error::BadManifest {
                        key: layout::REPOSITORY_MANIFEST.into(),
                        reason: "vanished after a conflicting create".into(),
                    })?;
                theirs.check_server(system_identifier, wal_segment_size)?;
                Ok(theirs)
            }
            Err(e) => Err(e),
        }
    }
}
