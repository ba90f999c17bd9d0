//! The repository: sealed objects in an [`ObjectStore`] under a prefix.
//!
//! Every object goes through [`crate::format::chunk`]: `put_sealed` seals on
//! the blocking pool and writes create-only; `get_opened` reads and opens.
//! A retry that finds an object already there with the same plaintext counts
//! as success; different plaintext is an integrity error.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};

use crate::format::chunk::{self, SealOptions};
use crate::format::key::Keyring;
use crate::format::manifest::{MismatchError, REPOSITORY_MANIFEST_VERSION, RepositoryManifest};

use super::layout;

/// Limit for one store request, plus [`TIMEOUT_PER_MIB`] per MiB of payload.
const BASE_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time allowed per MiB of payload (a slow link still finishes).
const TIMEOUT_PER_MIB: Duration = Duration::from_secs(2);

/// What can go wrong with the repository.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository URL is not usable.
    #[error("invalid repository URL {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// An immutable object exists with different content.
    #[error("object {key} already exists with different content")]
    Conflict {
        /// The key.
        key: String,
    },
    /// A request took too long.
    #[error("request for {key} timed out after {after:?}")]
    Timeout {
        /// The key.
        key: String,
        /// The limit.
        after: Duration,
    },
    /// The store failed the request.
    #[error("object store request for {key} failed")]
    Backend {
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// An object does not open: damaged, truncated, foreign, or the wrong key.
    #[error("object {key} cannot be opened")]
    Corrupt {
        /// The key.
        key: String,
        /// The cause.
        #[source]
        source: chunk::Error,
    },
    /// `walvault.json` is unreadable.
    #[error("repository manifest {key} is invalid: {reason}")]
    BadManifest {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The repository belongs to another cluster or uses other keys.
    #[error(transparent)]
    Mismatch(#[from] MismatchError),
}

impl Error {
    /// Whether the user must change settings (URL, keys, repository) to fix it.
    pub fn is_configuration(&self) -> bool {
        matches!(self, Error::Url { .. } | Error::Mismatch(_))
    }

    /// Whether the same request may succeed later (network, timeouts, 5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            Error::Backend { source, .. } => !matches!(
                source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented
                    | object_store::Error::UnknownConfigurationKey { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            _ => false,
        }
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
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    display: String,
    keyring: Arc<Keyring>,
    seal: SealOptions,
    /// For `file://` repositories: the directory, so writes can be fsynced.
    local_root: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.display)
    }
}

impl Repository {
    /// Opens the repository at `url`: `file:///path`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix` or `az://container/prefix`. Cloud settings come
    /// from the provider's standard environment variables (`AWS_*`,
    /// `GOOGLE_*`, `AZURE_*`); plain HTTP is allowed for a loopback S3 or
    /// Azure endpoint (GCS allows it for the base URL a service-account file names).
    ///
    /// # Errors
    /// [`Error::Url`] for an unknown scheme or a store that cannot be built.
    pub fn open(url: &str, keyring: Keyring, seal: SealOptions) -> Result<Self, Error> {
        Self::open_with(url, &[], keyring, seal)
    }

    /// [`Repository::open`] with store options given explicitly (object_store
    /// configuration keys such as `aws_endpoint`, `aws_access_key_id`,
    /// `google_service_account`, `azure_storage_account_key`); they win over
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
        let bad = |reason: String| Error::Url {
            url: url.to_string(),
            reason,
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let (store, prefix): (Arc<dyn ObjectStore>, String) = match parsed.scheme() {
            "file" => {
                let dir = parsed.to_file_path().map_err(|()| {
                    bad("a file URL needs an absolute path, e.g. file:///var/lib/walvault".into())
                })?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| bad(e.to_string()))?
                    .with_automatic_cleanup(true);
                let mut repo =
                    Self::from_store(Arc::new(fs), "", redact_url(&parsed), keyring, seal);
                repo.local_root = Some(dir);
                return Ok(repo);
            }
            "s3" | "s3a" => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_retry(store_retry_config());
                let mut endpoint = std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .ok();
                for (k, v) in options {
                    let key: object_store::aws::AmazonS3ConfigKey = k
                        .parse()
                        .map_err(|_| bad(format!("unknown S3 option {k:?}")))?;
                    if matches!(key, object_store::aws::AmazonS3ConfigKey::Endpoint) {
                        endpoint = Some(v.clone());
                    } else {
                        b = b.with_config(key, v);
                    }
                }
                if let Some(ep) = endpoint {
                    if is_loopback_http(&ep) {
                        b = b.with_allow_http(true);
                    }
                    b = b.with_endpoint(ep);
                }
                (
                    Arc::new(b.build().map_err(|e| bad(e.to_string()))?),
                    parsed.path().to_string(),
                )
            }
            "gs" => {
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .with_retry(store_retry_config());
                for (k, v) in options {
                    let key: object_store::gcp::GoogleConfigKey = k
                        .parse()
                        .map_err(|_| bad(format!("unknown GCS option {k:?}")))?;
                    b = b.with_config(key, v);
                }
                (
                    Arc::new(b.build().map_err(|e| bad(e.to_string()))?),
                    parsed.path().to_string(),
                )
            }
            "az" | "azure" | "abfs" | "abfss" => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_retry(store_retry_config());
                for (k, v) in options {
                    let key: object_store::azure::AzureConfigKey = k
                        .parse()
                        .map_err(|_| bad(format!("unknown Azure option {k:?}")))?;
                    b = b.with_config(key, v);
                }
                let endpoint = b.get_config_value(&object_store::azure::AzureConfigKey::Endpoint);
                if endpoint.is_some_and(|ep| is_loopback_http(&ep)) {
                    b = b.with_allow_http(true);
                }
                (
                    Arc::new(b.build().map_err(|e| bad(e.to_string()))?),
                    parsed.path().to_string(),
                )
            }
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other:?}; use file://, s3://, gs:// or az://"
                )));
            }
        };
        let display = redact_url(&parsed);
        Ok(Self::from_store(store, &prefix, display, keyring, seal))
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
        }
    }

    /// The URL, without credentials, for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The keys this repository reads with.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    fn path(&self, key: &str) -> Path {
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

    /// Reads `walvault.json`, if the repository has one.
    ///
    /// # Errors
    /// On store errors or an unreadable document.
    pub async fn read_manifest(&self) -> Result<Option<RepositoryManifest>, Error> {
        let key = layout::REPOSITORY_MANIFEST;
        let Some(bytes) = self.get_raw(key).await? else {
            return Ok(None);
        };
        let m: RepositoryManifest =
            serde_json::from_slice(&bytes).map_err(|e| Error::BadManifest {
                key: key.into(),
                reason: e.to_string(),
            })?;
        if m.version > REPOSITORY_MANIFEST_VERSION {
            return Err(Error::BadManifest {
                key: key.into(),
                reason: format!("version {} is newer than this walvault reads", m.version),
            });
        }
        Ok(Some(m))
    }

    /// Reads `walvault.json` and checks that the given keys fit it.
    ///
    /// # Errors
    /// [`Error::Mismatch`] on the wrong key or missing key, and when the repository is empty.
    pub async fn open_manifest(&self) -> Result<Option<RepositoryManifest>, Error> {
        let m = self.read_manifest().await?;
        if let Some(m) = &m {
            m.check_keys(&self.keyring.ids())?;
        }
        Ok(m)
    }

    /// Makes sure `walvault.json` exists and fits this server and these keys:
    /// the first writer creates it; later ones are checked against it.
    ///
    /// # Errors
    /// [`Error::Mismatch`] for another cluster, segment size or key setup.
    pub async fn ensure_manifest(
        &self,
        system_identifier: &str,
        pg_major: u32,
        wal_segment_size: u64,
    ) -> Result<RepositoryManifest, Error> {
        if let Some(m) = self.open_manifest().await? {
            m.check_server(system_identifier, wal_segment_size)?;
            return Ok(m);
        }
        let m = RepositoryManifest {
            version: REPOSITORY_MANIFEST_VERSION,
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
            key_ids: self
                .keyring
                .ids()
                .iter()
                .map(|id| format!("{id:08x}"))
                .collect(),
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        let body = serde_json::to_vec_pretty(&m).expect("manifest serializes");
        match self
            .put_create(layout::REPOSITORY_MANIFEST, PutPayload::from(body))
            .await
        {
            Ok(()) => Ok(m),
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
        let sealed =
            tokio::task::spawn_blocking(move || chunk::seal(&for_seal, &seal, keyring.write_key()))
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
                let same = existing.is_some_and(|e| {
                    let mut off = 0;
                    let total: usize = plaintext.iter().map(Bytes::len).sum();
                    total == e.len()
                        && plaintext.iter().all(|p| {
                            let ok = e[off..off + p.len()] == p[..];
                            off += p.len();
                            ok
                        })
                });
                if same {
                    Ok(size)
                } else {
                    Err(Error::Conflict {
                        key: key.to_string(),
                    })
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
        let Some(raw) = self.get_raw(key).await? else {
            return Ok(None);
        };
        let keyring = self.keyring.clone();
        let opened = tokio::task::spawn_blocking(move || chunk::open(&raw, &keyring))
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
            match self.store.get(&path).await {
                Ok(r) => r.bytes().await.map(Some),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(e),
            }
        };
        match tokio::time::timeout(BASE_REQUEST_TIMEOUT * 4, fut).await {
            Ok(r) => r.map_err(|source| Error::Backend {
                key: key.to_string(),
                source,
            }),
            Err(_) => Err(Error::Timeout {
                key: key.to_string(),
                after: BASE_REQUEST_TIMEOUT * 4,
            }),
        }
    }

    /// Lists objects whose keys start with `prefix` (a folder ending in `/`, or empty).
    ///
    /// # Errors
    /// Store errors.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, Error> {
        let folder = prefix.trim_end_matches('/');
        let path = if folder.is_empty() {
            (!self.prefix.as_ref().is_empty()).then(|| self.prefix.clone())
        } else {
            Some(self.path(folder))
        };
        let fut = self.store.list(path.as_ref()).try_collect::<Vec<_>>();
        let metas = match tokio::time::timeout(BASE_REQUEST_TIMEOUT * 4, fut).await {
            Ok(r) => r.map_err(|source| Error::Backend {
                key: prefix.to_string(),
                source,
            })?,
            Err(_) => {
                return Err(Error::Timeout {
                    key: prefix.to_string(),
                    after: BASE_REQUEST_TIMEOUT * 4,
                });
            }
        };
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .map(|m| ObjectInfo {
                key: self.relative(&m.location),
                size: m.size,
                last_modified: m.last_modified,
            })
            .filter(|o| o.key.starts_with(prefix))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Deletes an object (missing is fine).
    ///
    /// # Errors
    /// Store errors.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
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

    /// On a local repository, fsyncs a new object and its directory, so that
    /// "stored" means on disk, as it means acknowledged by a cloud store.
    async fn sync_local(&self, key: &str) -> Result<(), Error> {
        let Some(root) = &self.local_root else {
            return Ok(());
        };
        let file = root.join(key);
        let result = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&file)?.sync_all()?;
            match file.parent() {
                Some(dir) => std::fs::File::open(dir)?.sync_all(),
                None => Ok(()),
            }
        })
        .await
        .expect("fsync does not panic");
        result.map_err(|e| Error::Backend {
            key: key.to_string(),
            source: object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(e),
            },
        })
    }

    async fn put_create(&self, key: &str, payload: PutPayload) -> Result<(), Error> {
        let after = BASE_REQUEST_TIMEOUT
            + TIMEOUT_PER_MIB * (payload.content_length() / (1 << 20) + 1) as u32;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let path = self.path(key);
        match tokio::time::timeout(after, self.store.put_opts(&path, payload.clone(), opts)).await {
            Ok(Ok(_)) => self.sync_local(key).await,
            // Stores without conditional writes: check for an existing object, then write.
            Ok(Err(object_store::Error::NotImplemented)) => {
                if self.get_raw(key).await?.is_some() {
                    return Err(Error::Backend {
                        key: key.to_string(),
                        source: object_store::Error::AlreadyExists {
                            path: key.to_string(),
                            source: "exists".into(),
                        },
                    });
                }
                self.store
                    .put(&path, payload)
                    .await
                    .map(|_| ())
                    .map_err(|source| Error::Backend {
                        key: key.to_string(),
                        source,
                    })
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

/// Retries inside object_store stay short, so an outage reaches walvault's
/// own retry loop quickly, where it is logged once and waited out.
pub fn store_retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
        ..Default::default()
    }
}

fn is_loopback_http(endpoint: &str) -> bool {
    let Ok(u) = url::Url::parse(endpoint) else {
        return false;
    };
    u.scheme() == "http"
        && match u.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
}

fn redact_url(u: &url::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

/// Retries `op` while it fails with a retryable error, backing off
/// exponentially with jitter up to `max_backoff`, at most `attempts` times
/// (`None`: until it succeeds or `cancel` fires). Each retry is logged once.
///
/// # Errors
/// The last error, or a non-retryable one at once.
///
/// # Cancel safety
/// Safe if `op` is.
pub async fn retry<T, F, Fut>(
    what: &str,
    attempts: Option<u32>,
    max_backoff: Duration,
    cancel: &tokio_util::sync::CancellationToken,
    mut op: F,
) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut attempt: u32 = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        attempt += 1;
        match op().await {
            Ok(v) => {
                if attempt > 1 {
                    tracing::info!(
                        what,
                        attempt,
                        "object store request succeeded after retries"
                    );
                }
                return Ok(v);
            }
            Err(e)
                if e.is_retryable()
                    && attempts.is_none_or(|n| attempt < n)
                    && !cancel.is_cancelled() =>
            {
                tracing::warn!(what, attempt, error = %crate::error::chain(&e), "object store request failed, retrying");
                let jitter = rand::random::<f64>() * 0.5 + 0.75;
                let sleep = backoff.mul_f64(jitter);
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return Err(e),
                    () = tokio::time::sleep(sleep) => {}
                }
                backoff = (backoff * 2).min(max_backoff);
            }
            Err(e) => return Err(e),
        }
    }
}
