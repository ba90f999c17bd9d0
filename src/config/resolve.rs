//! The one resolution of where a repository is and which key opens it, for
//! every command: from the flags and `WALVAULT_*` variables, the
//! configuration file's `[repository]` secrets, or a repository settings
//! file (`--repo-config`), which wins over all of them.
//!
//! The key's precedence is decided once, in [`RepositorySource::key_source`]:
//! a key file (flag, `WALVAULT_KEY_FILE` or the file's `key_file`) or
//! `WALVAULT_KEY` (never both), and only without either the configuration
//! file's `key`. Opening the repository and writing the settings
//! `restore_command` reads both follow it.

use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use super::settings_file::{self, RepositoryConfigFile};
use super::{Error, keys, open_repository_with};
use crate::format::Keyring;
use crate::format::key::KeyError;
use crate::format::manifest::RepositoryManifest;
use crate::storage::{OpenMode, Repository, StorageClasses};

/// Everything a command was given about its repository, unresolved.
#[derive(Clone, Default)]
pub struct RepositorySource {
    /// The repository URL (`--repo`, `WALVAULT_REPO`).
    pub url: Option<String>,
    /// A repository settings file (`--repo-config`): wins over the rest.
    pub settings_file: Option<PathBuf>,
    /// A key file (`--key-file`, `WALVAULT_KEY_FILE`, the file's `key_file`).
    pub key_file: Option<PathBuf>,
    /// `WALVAULT_KEY`.
    pub env_key: Option<SecretString>,
    /// The configuration file's `[repository] key`.
    pub file_key: Option<SecretString>,
    /// The configuration file's `[repository.options]`.
    pub file_options: Vec<(String, String)>,
    /// The process's environment, for the stores' own variables (`AWS_*`…).
    pub environment: Vec<(String, String)>,
    /// zstd level of new objects.
    pub compression_level: Option<i32>,
    /// Storage classes of new objects.
    pub classes: StorageClasses,
    /// A new repository may be created without a key (unencrypted).
    pub allow_unencrypted: bool,
    /// A `walvault.json` of format version 1 is read.
    pub allow_version_1: bool,
    /// Whether a missing local directory may be created (writing
    /// commands, once their arguments are checked), and whether a cloud
    /// client may use the instance metadata service.
    pub mode: OpenMode,
}

impl std::fmt::Debug for RepositorySource {
    /// The URL and paths only: keys and store options are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositorySource")
            .field("url", &self.url)
            .field("settings_file", &self.settings_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

/// Why an existing repository could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The settings are wrong (exit code 2).
    #[error(transparent)]
    Config(#[from] Error),
    /// The store failed, or `walvault.json` does not fit the key.
    #[error(transparent)]
    Store(#[from] crate::storage::Error),
    /// There is no repository at the URL.
    #[error("repository {0} is empty (no walvault.json)")]
    Empty(String),
}

impl OpenError {
    /// Whether the user must change settings to fix it.
    pub fn is_configuration(&self) -> bool {
        match self {
            OpenError::Config(_) => true,
            OpenError::Store(e) => e.is_configuration(),
            OpenError::Empty(_) => false,
        }
    }
}

/// Where the key comes from.
enum KeySource<'a> {
    /// No key: an unencrypted repository.
    None,
    /// A key file: every key in it, the first seals new objects.
    KeyFile(&'a Path),
    /// `WALVAULT_KEY`: one key.
    Environment(&'a str),
    /// The configuration file's `key`.
    ConfigFile(&'a str),
}

impl RepositorySource {
    /// Opens the repository (nothing is read from the store yet).
    ///
    /// # Errors
    /// Configuration errors: a missing URL, a bad key, option or level.
    pub fn open(&self) -> Result<Repository, Error> {
        Ok(self
            .open_store()?
            .with_storage_classes(self.classes.clone())
            .allowing_unencrypted(self.allow_unencrypted)
            .allowing_version_1(self.allow_version_1))
    }

    /// Opens a repository that must exist already, checking the keys
    /// against its `walvault.json`.
    ///
    /// # Errors
    /// [`OpenError`].
    pub async fn open_existing(&self) -> Result<(Repository, RepositoryManifest), OpenError> {
        let mut repo = self.open()?;
        // A restore of a backup taken before an upgrade reads that
        // system's WAL.
        if let Some(system) = self.planned_wal()?.and_then(|p| p.system_identifier) {
            repo = repo.for_system(&system)?;
        }
        let manifest = repo
            .open_manifest()
            .await?
            .ok_or_else(|| OpenError::Empty(repo.display().to_string()))?;
        Ok((repo, manifest))
    }

    /// Opens the repository for a command that writes it (`stream`,
    /// `backup`), once every argument is checked: a missing local directory
    /// is created, except that a repository is never created without a key
    /// unless `allow_unencrypted` says so (it would stay unencrypted for
    /// good): nothing is created then.
    ///
    /// # Errors
    /// [`OpenError`]; [`crate::storage::Error::NoKey`] for a new repository
    /// without a key.
    pub async fn open_for_writing(&self) -> Result<Repository, OpenError> {
        let creating = RepositorySource {
            mode: OpenMode {
                create: true,
                ..self.mode
            },
            ..self.clone()
        };
        if self.has_key()? || self.allow_unencrypted {
            return Ok(creating.open()?);
        }
        // Without a key: only an existing (unencrypted) repository.
        let existing = match self.open() {
            Ok(repo) => repo.read_manifest().await?.map(|_| repo),
            Err(Error::Repository(crate::storage::Error::Url { .. })) if self.is_local() => None,
            Err(e) => return Err(e.into()),
        };
        existing.ok_or_else(|| {
            OpenError::Store(crate::storage::Error::NoKey {
                repository: self.url.clone().unwrap_or_default(),
            })
        })
    }

    /// Whether a key is given (a key file, `WALVAULT_KEY`, the configuration
    /// file's key, or a settings file that holds one).
    fn has_key(&self) -> Result<bool, Error> {
        if let Some(path) = &self.settings_file {
            return Ok(settings_file::load_repository_config(path)?.key.is_some());
        }
        Ok(!matches!(self.key_source()?, KeySource::None))
    }

    /// Whether the URL names a local directory.
    fn is_local(&self) -> bool {
        self.url.as_deref().is_some_and(|u| u.starts_with("file:"))
    }

    fn open_store(&self) -> Result<Repository, Error> {
        if let Some(path) = &self.settings_file {
            let cfg = settings_file::load_repository_config(path)?;
            let keyring = match cfg.key.as_deref() {
                Some(text) => Keyring::from_key_file_text(text, &path.display().to_string())?,
                None => Keyring::none(),
            };
            let options: Vec<(String, String)> = cfg.options.into_iter().collect();
            return open_repository_with(
                &cfg.repo,
                &options,
                keyring,
                self.compression_level,
                self.mode,
            );
        }
        let keyring = match self.key_source()? {
            KeySource::None => Keyring::none(),
            KeySource::KeyFile(path) => keys::read_key_file(path)?,
            KeySource::Environment(hex) => keys::keyring_from_hex(hex)?,
            KeySource::ConfigFile(text) => {
                Keyring::from_key_file_text(text, "the configuration file's [repository] key")?
            }
        };
        let url = self.url()?;
        let options =
            crate::storage::options_under_environment(url, &self.file_options, &self.environment)?;
        open_repository_with(url, &options, keyring, self.compression_level, self.mode)
    }

    /// The settings a command run without the environment (restore_command)
    /// needs to reach this repository: the settings file given, or the URL,
    /// key and store options resolved here.
    ///
    /// # Errors
    /// Configuration errors.
    pub fn settings(&self) -> Result<RepositoryConfigFile, Error> {
        if let Some(path) = &self.settings_file {
            return settings_file::load_repository_config(path);
        }
        let key = match self.key_source()? {
            KeySource::None => None,
            KeySource::KeyFile(path) => {
                // Every key of the file (old objects may need an older key).
                keys::read_key_file(path)?;
                Some(
                    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
                        path: path.display().to_string(),
                        source,
                    })?,
                )
            }
            KeySource::Environment(text) | KeySource::ConfigFile(text) => Some(text.to_string()),
        };
        let url = self.url()?;
        let mut cfg = settings_file::from_environment(url, key, &self.environment)?;
        cfg.options
            .extend(crate::storage::options_under_environment(
                url,
                &self.file_options,
                &self.environment,
            )?);
        Ok(cfg)
    }

    /// What the restore that wrote the settings file planned to replay, if
    /// a settings file with a plan is given.
    ///
    /// # Errors
    /// The settings file cannot be read.
    pub fn planned_wal(&self) -> Result<Option<super::settings_file::PlannedWal>, Error> {
        match &self.settings_file {
            Some(path) => Ok(settings_file::load_repository_config(path)?.recovery),
            None => Ok(None),
        }
    }

    fn url(&self) -> Result<&str, Error> {
        self.url
            .as_deref()
            .ok_or(Error::Missing("--repo (or WALVAULT_REPO)"))
    }

    /// The key's source, by precedence: a key file or `WALVAULT_KEY` (not
    /// both), then the configuration file's key.
    fn key_source(&self) -> Result<KeySource<'_>, Error> {
        let env_key = self
            .env_key
            .as_ref()
            .map(ExposeSecret::expose_secret)
            .filter(|k| !k.trim().is_empty());
        match (&self.key_file, env_key, &self.file_key) {
            (Some(_), Some(_), _) => Err(Error::Invalid {
                what: "key settings",
                value: String::new(),
                reason: "give either --key-file or WALVAULT_KEY, not both".into(),
            }),
            (Some(path), None, _) => Ok(KeySource::KeyFile(path)),
            (None, Some(hex), _) => Ok(KeySource::Environment(hex)),
            (None, None, Some(text)) => Ok(KeySource::ConfigFile(text.expose_secret())),
            (None, None, None) => Ok(KeySource::None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(key_file: Option<&str>, env: Option<&str>, file: Option<&str>) -> RepositorySource {
        RepositorySource {
            url: Some("file:///nonexistent-walvault-test".into()),
            key_file: key_file.map(PathBuf::from),
            env_key: env.map(SecretString::from),
            file_key: file.map(SecretString::from),
            ..RepositorySource::default()
        }
    }

    #[test]
    fn key_sources_follow_their_precedence() {
        let (a, b) = ("ab".repeat(32), "cd".repeat(32));
        assert!(matches!(
            source(Some("/x"), Some(&a), None).key_source(),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            source(Some("/x"), None, Some(&b)).key_source(),
            Ok(KeySource::KeyFile(_))
        ));
        assert!(matches!(
            source(None, Some(&a), Some(&b)).key_source(),
            Ok(KeySource::Environment(k)) if k == a
        ));
        assert!(matches!(
            source(None, Some("  "), Some(&b)).key_source(),
            Ok(KeySource::ConfigFile(k)) if k == b
        ));
        assert!(matches!(
            source(None, None, None).key_source(),
            Ok(KeySource::None)
        ));
        let settings = source(None, Some(&a), Some(&b)).settings().unwrap();
        assert_eq!(settings.key.as_deref(), Some(a.as_str()));
    }
}
