//! The repository type: sealed objects under a prefix of one store.
//!
//! Every object goes through [`crate::format::chunk`]: `put_sealed` seals on
//! the blocking pool and writes create-only; `get_opened` reads and opens.
//! A retry that finds an object already there with the same plaintext counts
//! as success; different plaintext is an integrity error.
//!
//! Files: `write` (sealing, create-only writes, what an existing object
//! means), `read` (reading and opening), `list`, `delete`; the type, its
//! settings and its request counts live here.

mod delete;
mod list;
mod read;
mod write;

pub use write::SealedObject;

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::path::Path;

use crate::format::chunk::SealOptions;
use crate::format::key::Keyring;
use crate::format::manifest::{REPOSITORY_ID_BYTES, RepositoryManifest};

use super::Error;
use super::open::OpenMode;

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
    /// And to this repository id (`walvault.json` version 3).
    pub repository: Option<[u8; REPOSITORY_ID_BYTES]>,
    /// Objects without a cipher are refused.
    pub require_cipher: bool,
}

impl ObjectPolicy {
    /// The policy `walvault.json` sets.
    pub fn of(manifest: &RepositoryManifest) -> Self {
        ObjectPolicy {
            bound: manifest.binds_objects(),
            repository: manifest.repository_id.as_deref().map(|id| {
                let mut bytes = [0u8; REPOSITORY_ID_BYTES];
                hex::decode_to_slice(id, &mut bytes).expect("validated repository id");
                bytes
            }),
            require_cipher: manifest.is_encrypted(),
        }
    }

    /// The name an object stored at `key` is bound to: the key, after the
    /// repository id and a slash when there is one; `None` when objects
    /// are not bound (repositories of the first format).
    pub fn bound_name(&self, key: &str) -> Option<String> {
        match (self.bound, self.repository) {
            (false, _) => None,
            (true, None) => Some(key.to_string()),
            (true, Some(id)) => Some(format!("{}/{key}", hex::encode(id))),
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

/// Whether `key` names WAL of one system: placed under that system's
/// prefix by [`Repository::physical_key`].
fn is_system_key(key: &str) -> bool {
    let wal = super::layout::WAL_PREFIX;
    key.starts_with(wal) || key == wal.trim_end_matches('/') || key == super::layout::WAL_INDEX
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
    /// `walvault.json` as first opened (or created) by this handle, and
    /// the object policy it gives.
    /// The first is the document as this handle's system sees it (see
    /// [`Repository::for_system`]), the last as stored.
    #[allow(clippy::type_complexity)]
    pub(super) identity:
        Arc<std::sync::OnceLock<(RepositoryManifest, ObjectPolicy, Arc<RepositoryManifest>)>>,
    /// Held while `walvault.json` is looked for and created, so tasks of
    /// one process sharing the handle (the sidecar's stream and its first
    /// backup) never each create one: a store whose create-only writes
    /// race would keep one and leave the other task sealing for an id
    /// that is not stored.
    pub(super) creating: Arc<tokio::sync::Mutex<()>>,
    /// Whether the store honours create-only writes, once probed.
    pub(super) create_only: Arc<std::sync::OnceLock<bool>>,
    /// Storage classes of new objects (S3, GCS), by kind.
    pub(super) storage_classes: StorageClasses,
    /// Requests made, by kind.
    pub(super) requests: Arc<RequestCounts>,
    /// Where the store's credentials come from, in words.
    pub(super) credentials: Arc<str>,
    /// Whether a new repository may be created without a key.
    pub(super) unencrypted_allowed: bool,
    /// Whether a `walvault.json` of format version 1 is read.
    pub(super) version_1_allowed: bool,
    /// The system whose WAL this handle reads (`None`: the current one);
    /// see [`Repository::for_system`].
    pub(super) system: Option<Arc<str>>,
    /// Whether WAL keys are placed under the system's prefix (off for a
    /// handle that walks every object by its stored name).
    pub(super) map_system_keys: bool,
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
        Self::open_with_mode(
            url,
            options,
            keyring,
            seal,
            OpenMode {
                create: true,
                instance_credentials: false,
            },
        )
    }

    /// [`Repository::open_with`], creating a missing local directory only
    /// when `mode` says so, and letting a cloud client use the instance
    /// metadata service only when `mode` chose it.
    ///
    /// # Errors
    /// As [`Repository::open_with`]; a missing local directory without
    /// `mode.create`; a cloud store without credentials.
    pub fn open_with_mode(
        url: &str,
        options: &[(String, String)],
        keyring: Keyring,
        seal: SealOptions,
        mode: OpenMode,
    ) -> Result<Self, Error> {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        super::open::open(url, options, &vars, keyring, seal, mode)
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
            identity: Arc::new(std::sync::OnceLock::new()),
            creating: Arc::new(tokio::sync::Mutex::new(())),
            create_only: Arc::new(std::sync::OnceLock::new()),
            storage_classes: StorageClasses::default(),
            requests: Arc::new(RequestCounts::default()),
            credentials: Arc::from("given by the caller"),
            unencrypted_allowed: false,
            version_1_allowed: false,
            system: None,
            map_system_keys: true,
        }
    }

    /// The same repository, reading the WAL of the system
    /// `system_identifier` (the current one or one held before an upgrade)
    /// under its own prefix, and checking stored objects against that
    /// system's identity. Only for reading and expiring: writers use the
    /// current system.
    ///
    /// # Errors
    /// [`Error::NoSuchSystem`] when `walvault.json`, already read, holds
    /// no such system.
    pub fn for_system(&self, system_identifier: &str) -> Result<Self, Error> {
        let mut repo = self.clone();
        repo.system = Some(Arc::from(system_identifier));
        repo.identity = Arc::new(std::sync::OnceLock::new());
        if let Some((_, _, stored)) = self.identity.get() {
            repo.adopt(stored)?;
        }
        Ok(repo)
    }

    /// The same store, reading and sealing with `other`'s keys (a copy of
    /// `other` in another place).
    pub fn with_keys_of(mut self, other: &Repository) -> Self {
        self.keyring = other.keyring.clone();
        self
    }

    /// The same repository with every key taken as the object's stored
    /// name (for walks over every object, such as [`Repository::key_usage`]).
    pub(super) fn unmapped(&self) -> Self {
        let mut repo = self.clone();
        repo.map_system_keys = false;
        repo
    }

    /// Where `key` is stored: the WAL keys (`wal/...`, the WAL index) of a
    /// system after the first under its prefix (see
    /// [`crate::format::manifest::system_prefix`]); every other key as is.
    pub(super) fn physical_key<'a>(&self, key: &'a str) -> std::borrow::Cow<'a, str> {
        let namespace = self
            .identity
            .get()
            .filter(|_| self.map_system_keys && is_system_key(key))
            .and_then(|(m, _, _)| m.wal_namespace());
        match namespace {
            Some(ns) => std::borrow::Cow::Owned(format!("{ns}{key}")),
            None => std::borrow::Cow::Borrowed(key),
        }
    }

    /// Where `key` is stored, relative to the repository (for messages:
    /// the name an operator finds in the bucket).
    pub fn stored_key(&self, key: &str) -> String {
        self.physical_key(key).into_owned()
    }

    /// A listed key as callers name it: the system's prefix taken off the
    /// keys of a listing of `prefix` (a WAL prefix).
    pub(super) fn logical_key(&self, prefix: &str, key: String) -> String {
        if !self.map_system_keys || !is_system_key(prefix) {
            return key;
        }
        match self.identity.get().and_then(|(m, _, _)| m.wal_namespace()) {
            Some(ns) => key
                .strip_prefix(ns.as_str())
                .map_or_else(|| key.clone(), str::to_string),
            None => key,
        }
    }

    /// Reads (or not, the default) a repository whose `walvault.json` is
    /// format version 1: it has no authentication, so a version 2 document
    /// rewritten as version 1 by a bucket writer would look the same.
    pub fn allowing_version_1(mut self, allow: bool) -> Self {
        self.version_1_allowed = allow;
        self
    }

    /// Allows (or not, the default) creating this repository without a
    /// key: unencrypted for good, since encryption cannot be added later.
    pub fn allowing_unencrypted(mut self, allow: bool) -> Self {
        self.unencrypted_allowed = allow;
        self
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

    /// How objects are sealed and opened.
    pub fn policy(&self) -> ObjectPolicy {
        self.identity
            .get()
            .map(|(_, p, _)| *p)
            .unwrap_or(ObjectPolicy {
                bound: true,
                repository: None,
                require_cipher: !self.keyring.is_empty(),
            })
    }

    /// The policy, reading `walvault.json` first when this handle has not
    /// yet: an object is never sealed or opened under a guess of how the
    /// repository binds its objects. A repository without the document
    /// (a new one) binds objects to their keys until it has one.
    ///
    /// # Errors
    /// As [`Repository::open_manifest`].
    pub(super) async fn settled_policy(&self) -> Result<ObjectPolicy, Error> {
        self.settle().await?;
        Ok(self.policy())
    }

    /// Reads `walvault.json` when this handle has not yet, so that a key
    /// is never placed under a guess of which system's prefix it has.
    ///
    /// # Errors
    /// As [`Repository::open_manifest`].
    pub(super) async fn settle_for(&self, key: &str) -> Result<(), Error> {
        if self.map_system_keys && is_system_key(key) {
            self.settle().await?;
        }
        Ok(())
    }

    async fn settle(&self) -> Result<(), Error> {
        if self.identity.get().is_none() {
            self.open_manifest().await?;
        }
        Ok(())
    }

    /// Adopts `walvault.json`: the policy it gives and the identity the
    /// stored backups and WAL are checked against (once; later calls
    /// agree), as seen by this handle's system.
    ///
    /// # Errors
    /// [`Error::NoSuchSystem`] when the document holds no system this
    /// handle was made for.
    pub(super) fn adopt(&self, manifest: &RepositoryManifest) -> Result<(), Error> {
        let view = match &self.system {
            None => manifest.clone(),
            Some(system) => manifest
                .system_view(system)
                .ok_or_else(|| Error::NoSuchSystem {
                    system: system.to_string(),
                    systems: manifest
                        .systems()
                        .into_iter()
                        .map(|(id, major, _)| format!("{id} (PostgreSQL {major})"))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?,
        };
        let _ = self.identity.get_or_init(|| {
            let policy = ObjectPolicy::of(&view);
            (view, policy, Arc::new(manifest.clone()))
        });
        Ok(())
    }

    /// `walvault.json` as this handle first opened or created it, seen by
    /// its system (see [`Repository::for_system`]); `None` before that.
    pub fn identity(&self) -> Option<&RepositoryManifest> {
        self.identity.get().map(|(m, _, _)| m)
    }

    /// `walvault.json` as stored (every system it holds); `None` before
    /// this handle read it.
    pub fn stored_identity(&self) -> Option<&RepositoryManifest> {
        self.identity.get().map(|(_, _, m)| m.as_ref())
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
        let key = self.physical_key(key);
        if self.prefix.as_ref().is_empty() {
            Path::from(key.as_ref())
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
}
