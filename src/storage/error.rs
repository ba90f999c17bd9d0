//! What can go wrong with a repository, classified for callers that retry
//! or report.

use std::time::Duration;

use crate::format::chunk;
use crate::format::manifest::MismatchError;

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
    #[error("object {key} already exists with different content ({difference})")]
    Conflict {
        /// The key.
        key: String,
        /// How it differs: lengths, or the first byte that differs.
        difference: String,
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
    /// A new key list names keys the keyring does not hold.
    #[error(
        "the keyring lacks keys walvault.json would list ({missing}); give a key file holding every key to keep"
    )]
    KeysMissing {
        /// Their ids.
        missing: String,
    },
    /// A cloud store with no credentials configured, whose client would
    /// ask the cloud's metadata address.
    #[error("no credentials for {url}: {set}")]
    NoCredentials {
        /// The repository (without credentials).
        url: String,
        /// What to set.
        set: &'static str,
    },
    /// A new repository would be unencrypted for good, and nobody asked.
    #[error(
        "no key given for the new repository {repository}: a repository created without a key stays unencrypted for good. Make a key (walvault keygen > walvault.key && chmod 600 walvault.key), keep a copy safe and give it with --key-file or WALVAULT_KEY_FILE; or pass --unencrypted (WALVAULT_UNENCRYPTED=true) to store it unencrypted on purpose"
    )]
    NoKey {
        /// The repository.
        repository: String,
    },
    /// Another writer holds the repository's lease.
    #[error(
        "another walvault stream writes this repository ({holder}; lease {key}): one repository has one WAL writer. Stop the other, or give each cluster its own repository; a lease left by a process that died expires a minute after its last heartbeat"
    )]
    Leased {
        /// Who holds it.
        holder: String,
        /// Its lease object.
        key: String,
    },
    /// `walvault.json` says version 1, and that was not allowed.
    #[error(
        "{key} says format version 1, which has no authentication: whoever can write the bucket could have rewritten a version 2 repository this way, to change its settings or unbind its objects, so it is refused. Only a repository that walvault 0.1 created is version 1: if this is one, give --allow-version-1 (WALVAULT_ALLOW_VERSION_1=true), and move to a version 2 repository (docs/format.md)"
    )]
    VersionOne {
        /// The document.
        key: String,
    },
    /// A key cannot be retired.
    #[error("invalid key to retire \"{id}\": {reason}")]
    Retire {
        /// The key id.
        id: crate::format::KeyId,
        /// Why it stays.
        reason: String,
    },
    /// A stored document (pin, expire record) opened but does not parse.
    #[error("object {key} is not a valid document: {reason}")]
    BadDocument {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The repository belongs to another cluster or uses other keys.
    #[error(transparent)]
    Mismatch(#[from] MismatchError),
    /// `record-upgrade` refused the server.
    #[error(transparent)]
    Upgrade(#[from] crate::format::manifest::UpgradeError),
    /// The place a copy goes holds something else.
    #[error("cannot copy into {repository}: {reason}")]
    CopyTarget {
        /// The copy's URL.
        repository: String,
        /// Why.
        reason: String,
    },
    /// A reader asked for a system the repository does not hold.
    #[error(
        "the repository holds no system identifier {system} (it holds {systems}): the backup or settings file belongs to another repository"
    )]
    NoSuchSystem {
        /// Asked for.
        system: String,
        /// Held, oldest first.
        systems: String,
    },
}

impl Error {
    /// Whether the user must change settings (URL, keys, repository) to fix it.
    pub fn is_configuration(&self) -> bool {
        matches!(
            self,
            Error::Url { .. }
                | Error::Mismatch(_)
                | Error::KeysMissing { .. }
                | Error::Retire { .. }
                | Error::NoKey { .. }
                | Error::NoCredentials { .. }
                | Error::Leased { .. }
                | Error::VersionOne { .. }
                | Error::NoSuchSystem { .. }
                | Error::Upgrade(_)
                | Error::CopyTarget { .. }
        )
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
