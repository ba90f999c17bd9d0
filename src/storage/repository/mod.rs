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
    pub(super) identity: Arc<std::sync::OnceLock<(RepositoryManifest, ObjectPolicy)>>,
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
            .map(|(_, p)| *p)
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
        if self.identity.get().is_none() {
            self.open_manifest().await?;
        }
        Ok(self.policy())
    }

    /// Adopts `walvault.json`: the policy it gives and the identity the
    /// stored backups and WAL are checked against (once; later calls agree).
    pub(super) fn adopt(&self, manifest: &RepositoryManifest) {
        let _ = self
            .identity
            .get_or_init(|| (manifest.clone(), ObjectPolicy::of(manifest)));
    }

    /// `walvault.json` as this handle first opened or created it; `None`
    /// before that.
    pub fn identity(&self) -> Option<&RepositoryManifest> {
        self.identity.get().map(|(m, _)| m)
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
}
