//! The repository type: sealed objects under a prefix of one store.
//!
//! Every object goes through [`crate::format::chunk`]: `put_sealed` seals on
//! the blocking pool and writes create-only; `get_opened` reads and opens.
//! A retry that finds an object already there with the same plaintext counts
//! as success; different plaintext is an integrity error.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use crate::format::chunk::{self, Binding, Expect, SealOptions};
use crate::format::key::Keyring;
use crate::format::manifest::RepositoryManifest;

use super::Error;

/// Limit for one store request, plus [`TIMEOUT_PER_MIB`] per MiB of payload.
const BASE_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time allowed per MiB of payload (a slow link still finishes).
const TIMEOUT_PER_MIB: Duration = Duration::from_secs(2);
/// Limit for reading one object or listing a prefix.
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// How objects of this repository are sealed and which ones open: set from
/// `walvault.json` once it is read; before that (a new repository), bound
/// objects only, encrypted whenever a key is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectPolicy {
    /// Objects are bound to their keys (envelope version 2).
    pub bound: bool,
    /// Objects without a cipher are refused.
    pub require_cipher: bool,
}

impl ObjectPolicy {
    /// The policy `walvault.json` sets.
    pub fn of(manifest: &RepositoryManifest) -> Self {
        ObjectPolicy {
            bound: manifest.binds_objects(),
            require_cipher: manifest.is_encrypted(),
        }
    }
}

/// Requests made to the store, by kind, since the repository was opened
/// (object_store's own retries of a request are not counted apart).
#[derive(Debug, Default)]
pub struct RequestCounts {
    /// Object writes.
    pub put: std::sync::atomic::AtomicU64,
    /// Object reads.
    pub get: std::sync::atomic::AtomicU64,
    /// Listings (one per prefix listed; a listing of many pages counts once).
    pub list: std::sync::atomic::AtomicU64,
    /// Deletions.
    pub delete: std::sync::atomic::AtomicU64,
}

impl RequestCounts {
    pub(super) fn count(counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// `PUT n GET n LIST n DELETE n`, for logs.
    pub fn summary(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        format!(
            "PUT {} GET {} LIST {} DELETE {}",
            self.put.load(Relaxed),
            self.get.load(Relaxed),
            self.list.load(Relaxed),
            self.delete.load(Relaxed)
        )
    }
}

/// An object's key and stored size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the repository prefix.
    pub key: String,
    /// Stored (sealed) size in bytes.
    pub size: u64,
    /// When the object was last written.
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

/// A repository of sealed objects.
#[derive(Clone)]
pub struct Repository {
    pub(super) store: Arc<dyn ObjectStore>,
    pub(super) prefix: Path,
    pub(super) display: String,
    pub(super) keyring: Arc<Keyring>,
    pub(super) seal: SealOptions,
    /// For `file://` repositories: the directory, so writes can be fsynced.
    pub(super) local_root: Option<std::path::PathBuf>,
    /// Set once `walvault.json` is read.
    pub(super) policy: Arc<std::sync::OnceLock<ObjectPolicy>>,
    /// Whether the store honours create-only writes, once probed.
    pub(super) create_only: Arc<std::sync::OnceLock<bool>>,
    /// Storage classes of new objects (S3, GCS), by kind.
    pub(super) storage_classes: StorageClasses,
    /// Requests made, by kind.
    pub(super) requests: Arc<RequestCounts>,
    /// Where the store's credentials come from, in words.
    pub(super) credentials: Arc<str>,
}

/// The storage class new objects are written with, by kind (for example
/// `STANDARD` for WAL and `STANDARD_IA` for backups on S3); `None` leaves
/// the store's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StorageClasses {
    /// WAL segments, deltas and history files.
    pub wal: Option<String>,
    /// Backup parts, manifests and `backup.json`.
    pub backup: Option<String>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.display)
    }
}

impl Repository {
    /// Opens the repository at `url` with store settings from the process
    /// environment (see [`super::environment_options`]).
    ///
    /// # Errors
    /// [`Error::Url`] for an unknown scheme or a store that cannot be built.
    pub fn open(url: &str, keyring: Keyring, seal: SealOptions) -> Result<Self, Error> {
        Self::open_with(url, &[], keyring, seal)
    }

    /// [`Repository::open`] with store options given explicitly
    /// (object_store configuration keys such as `aws_endpoint`); they win over
    /// the environment. This is how `restore_command` reaches the store
    /// without the user's environment.
    ///
    /// # Errors
    /// [`Error::Url`] for an unknown scheme, an unknown option, or a store
    /// that cannot be built.
    pub fn open_with(
        url: &str,
        options: &[(String, String)],
        keyring: Keyring,
        seal: SealOptions,
    ) -> Result<Self, Error> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        super::open::open(url, options, &vars, keyring, seal)
    }

    /// A repository over any store (tests wrap stores to inject faults).
    pub fn from_store(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        display: String,
        keyring: Keyring,
        seal: SealOptions,
    ) -> Self {
        Repository {
            store,
            prefix: Path::from(prefix.trim_matches('/')),
            display,
            keyring: Arc::new(keyring),
            seal,
            local_root: None,
            policy: Arc::new(std::sync::OnceLock::new()),
            create_only: Arc::new(std::sync::OnceLock::new()),
            storage_classes: StorageClasses::default(),
            requests: Arc::new(RequestCounts::default()),
            credentials: Arc::from("given by the caller"),
        }
    }

    /// A repository in a local directory, whose writes are fsynced.
    pub(super) fn from_local_dir(
        store: Arc<dyn ObjectStore>,
        dir: std::path::PathBuf,
        display: String,
        keyring: Keyring,
        seal: SealOptions,
    ) -> Self {
        let mut repo = Self::from_store(store, "", display, keyring, seal);
        repo.local_root = Some(dir);
        repo
    }

    /// Writes `key` unless something is there already, for stores that do
    /// not honour create-only writes (a race with another writer stays
    /// possible there; `walvault check` reports such stores).
    async fn put_after_check(&self, key: &str, payload: PutPayload) -> Result<(), Error> {
        if self.get_raw(key).await?.is_some() {
            return Err(Error::Backend {
                key: key.to_string(),
                source: object_store::Error::AlreadyExists {
                    path: key.to_string(),
                    source: "exists".into(),
                },
            });
        }
        let path = self.path(key);
        let mut opts = PutOptions::default();
        if let Some(class) = self.storage_class(key) {
            opts.attributes.insert(
                object_store::Attribute::StorageClass,
                object_store::AttributeValue::from(class.to_string()),
            );
        }
        RequestCounts::count(&self.requests.put);
        self.store
            .put_opts(&path, payload, opts)
            .await
            .map_err(|source| Error::Backend {
                key: key.to_string(),
                source,
            })?;
        self.sync_local(key).await
    }

    /// Whether the store refuses a create-only write over an existing
    /// object, as walvault's integrity checks need: probed once per
    /// repository (a probe object written twice, then deleted). `false`
    /// means the store ignored the condition; from then on every write
    /// checks for an existing object first, and the caller should say so.
    ///
    /// # Errors
    /// Store errors while probing.
    pub async fn probe_create_only(&self) -> Result<bool, Error> {
        if let Some(honoured) = self.create_only.get() {
            return Ok(*honoured);
        }
        let key = format!(
            "{}{:016x}",
            super::layout::PROBE_PREFIX,
            rand::random::<u64>()
        );
        let path = self.path(&key);
        let create = || PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        RequestCounts::count(&self.requests.put);
        let first = self
            .store
            .put_opts(&path, PutPayload::from_static(b"1"), create())
            .await;
        let second = match first {
            Err(object_store::Error::NotImplemented) => None,
            Err(source) => return Err(Error::Backend { key, source }),
            Ok(_) => {
                RequestCounts::count(&self.requests.put);
                Some(
                    self.store
                        .put_opts(&path, PutPayload::from_static(b"2"), create())
                        .await,
                )
            }
        };
        let honoured = match second {
            None => false,
            Some(second) => match second {
                Ok(_) => false,
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => true,
                Err(source) => {
                    let _ = self.delete(&key).await;
                    return Err(Error::Backend { key, source });
                }
            },
        };
        self.delete(&key).await?;
        let _ = self.create_only.set(honoured);
        Ok(honoured)
    }

    /// Where the store's credentials come from (for `check`): the
    /// environment, a settings file, or none (and what the client then does).
    pub fn credential_source(&self) -> &str {
        &self.credentials
    }

    /// The same repository, describing its credentials' source.
    pub(super) fn with_credential_source(mut self, source: String) -> Self {
        self.credentials = Arc::from(source);
        self
    }

    /// The requests made so far, by kind.
    pub fn requests(&self) -> &RequestCounts {
        &self.requests
    }

    /// The same repository, writing new objects with these storage classes.
    pub fn with_storage_classes(mut self, classes: StorageClasses) -> Self {
        self.storage_classes = classes;
        self
    }

    /// The storage class for a new object at `key`, if one is set.
    fn storage_class(&self, key: &str) -> Option<&str> {
        if key.starts_with(super::layout::WAL_PREFIX) {
            self.storage_classes.wal.as_deref()
        } else if key.starts_with(super::layout::BACKUPS_PREFIX) {
            self.storage_classes.backup.as_deref()
        } else {
            None
        }
    }

    /// How objects are sealed and opened.
    pub fn policy(&self) -> ObjectPolicy {
        self.policy.get().copied().unwrap_or(ObjectPolicy {
            bound: true,
            require_cipher: !self.keyring.is_empty(),
        })
    }

    /// Sets the policy `walvault.json` gives (once; later calls agree).
    pub(super) fn set_policy(&self, policy: ObjectPolicy) {
        let _ = self.policy.set(policy);
    }

    /// The URL, without credentials, for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The keys this repository reads with.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    pub(super) fn path(&self, key: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(key)
        } else {
            Path::from(format!("{}/{key}", self.prefix))
        }
    }

    fn relative(&self, path: &Path) -> String {
        let p = path.as_ref();
        let pre = self.prefix.as_ref();
        if pre.is_empty() {
            p.to_string()
        } else {
            p.strip_prefix(pre)
                .map_or(p, |r| r.trim_start_matches('/'))
                .to_string()
        }
    }

    /// Seals `plaintext` and stores it at `key`, create-only. Returns the
    /// stored size.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the key holds other content; store errors.
    ///
    /// # Cancel safety
    /// Safe: the object is either written whole or not at all.
    pub async fn put_sealed(&self, key: &str, plaintext: Vec<Bytes>) -> Result<u64, Error> {
        self.put_sealed_with(key, plaintext, self.seal).await
    }

    /// [`Repository::put_sealed`] with other seal options (e.g. no compression
    /// for data the server already compressed).
    ///
    /// # Errors
    /// As [`Repository::put_sealed`].
    ///
    /// # Cancel safety
    /// Safe: the object is either written whole or not at all.
    pub async fn put_sealed_with(
        &self,
        key: &str,
        plaintext: Vec<Bytes>,
        seal: SealOptions,
    ) -> Result<u64, Error> {
        let keyring = self.keyring.clone();
        let for_seal = plaintext.clone();
        let salt: chunk::Salt = if keyring.write_key().is_some() {
            rand::random()
        } else {
            [0; chunk::SALT_LEN]
        };
        let bound = self.policy().bound;
        let object_key = key.to_string();
        let sealed = tokio::task::spawn_blocking(move || {
            let binding = if bound {
                Binding::Key(&object_key)
            } else {
                Binding::Unbound
            };
            chunk::seal_bound(&for_seal, &seal, keyring.write_key(), salt, binding)
        })
        .await
        .expect("sealing does not panic");
        let size = sealed.len() as u64;
        match self.put_create(key, PutPayload::from(sealed)).await {
            Ok(()) => Ok(size),
            Err(Error::Backend {
                source: object_store::Error::AlreadyExists { .. },
                ..
            }) => {
                let existing = self.get_opened(key).await?;
                match existing.map(|e| first_difference(&plaintext, &e)) {
                    Some(None) => {
                        // A retry of a write whose sync failed: sync again.
                        self.sync_local(key).await?;
                        Ok(size)
                    }
                    Some(Some(difference)) => Err(Error::Conflict {
                        key: key.to_string(),
                        difference,
                    }),
                    None => Err(Error::Conflict {
                        key: key.to_string(),
                        difference: "it vanished after the store said it exists".into(),
                    }),
                }
            }
            Err(e) => Err(e),
        }
    }

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
        let policy = self.policy();
        let object_key = key.to_string();
        let opened = tokio::task::spawn_blocking(move || {
            let expect = Expect {
                key: &object_key,
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

    /// Deletes an object (missing is fine).
    ///
    /// # Errors
    /// Store errors.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
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

    pub(super) async fn put_create(&self, key: &str, payload: PutPayload) -> Result<(), Error> {
        let after = BASE_REQUEST_TIMEOUT
            + TIMEOUT_PER_MIB * (payload.content_length() / (1 << 20) + 1) as u32;
        if self.create_only.get() == Some(&false) {
            return self.put_after_check(key, payload).await;
        }
        let mut opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        if let Some(class) = self.storage_class(key) {
            opts.attributes.insert(
                object_store::Attribute::StorageClass,
                object_store::AttributeValue::from(class.to_string()),
            );
        }
        let path = self.path(key);
        RequestCounts::count(&self.requests.put);
        if let Some(written) = self.put_local_create(key, payload.clone()).await {
            written?;
            return self.sync_local(key).await;
        }
        match tokio::time::timeout(after, self.store.put_opts(&path, payload.clone(), opts)).await {
            Ok(Ok(_)) => self.sync_local(key).await,
            // Stores without conditional writes: check for an existing object, then write.
            Ok(Err(object_store::Error::NotImplemented)) => {
                let _ = self.create_only.set(false);
                self.put_after_check(key, payload).await
            }
            Ok(Err(source)) => Err(Error::Backend {
                key: key.to_string(),
                source,
            }),
            Err(_) => Err(Error::Timeout {
                key: key.to_string(),
                after,
            }),
        }
    }
}

/// Where `ours` (in pieces) and `theirs` first differ, for the conflict
/// error: `None` when they are the same.
fn first_difference(ours: &[Bytes], theirs: &[u8]) -> Option<String> {
    let total: usize = ours.iter().map(Bytes::len).sum();
    let mut offset = 0;
    for piece in ours {
        let end = (offset + piece.len()).min(theirs.len());
        if let Some(i) = piece
            .iter()
            .zip(&theirs[offset.min(end)..end])
            .position(|(a, b)| a != b)
        {
            return Some(format!(
                "{} bytes stored, {total} to store; first difference at byte {}",
                theirs.len(),
                offset + i
            ));
        }
        offset += piece.len();
    }
    (total != theirs.len()).then(|| format!("{} bytes stored, {total} to store", theirs.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_located() {
        let ours = [Bytes::from_static(b"abc"), Bytes::from_static(b"def")];
        assert_eq!(first_difference(&ours, b"abcdef"), None);
        assert_eq!(
            first_difference(&ours, b"abcdXf").as_deref(),
            Some("6 bytes stored, 6 to store; first difference at byte 4")
        );
        assert_eq!(
            first_difference(&ours, b"abcd").as_deref(),
            Some("4 bytes stored, 6 to store")
        );
        assert_eq!(
            first_difference(&ours, b"abcdefgh").as_deref(),
            Some("8 bytes stored, 6 to store")
        );
    }
}
