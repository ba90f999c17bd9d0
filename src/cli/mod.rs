//! Command-line interface: clap types and one module per subcommand. It
//! only parses and prints: each `run` resolves settings and calls into the
//! library. The shared argument groups live here; no subcommand module
//! imports another.

pub mod backup;
pub mod check;
pub mod config_file;
pub mod drill;
pub mod expire;
pub mod info;
pub mod keep;
pub mod key;
pub mod keygen;
pub mod list;
pub mod mark;
pub mod parse;
pub mod restore;
pub mod stream;
pub mod verify;
pub mod wal_fetch;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::cli::config_file::{ConfigFile, RepositorySecrets};
use crate::format::manifest::RepositoryManifest;
use crate::storage::Repository;
use crate::telemetry::LogFormat;

/// Log output format on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(a: LogFormatArg) -> Self {
        match a {
            LogFormatArg::Plain => LogFormat::Plain,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

/// Checkpoint mode at the start of a backup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Checkpoint {
    /// Immediate checkpoint: the backup starts at once, with an I/O burst.
    Fast,
    /// Spread checkpoint: gentle on the server, may take up to checkpoint_timeout.
    Spread,
}

/// walvault: PostgreSQL WAL streaming archiver into encrypted object storage.
#[derive(Debug, Parser)]
#[command(name = "walvault", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log filter: error, warn, info, debug, trace (RUST_LOG wins when set).
    #[arg(
        long,
        global = true,
        env = "WALVAULT_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        env = "WALVAULT_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    pub log_format: LogFormatArg,
    /// TOML file with settings for every command (see walvault.example.toml); flags and WALVAULT_*
    /// variables win over it. Mode 0600 when it holds a key, credentials or a password.
    #[arg(long, global = true, env = "WALVAULT_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stream WAL from PostgreSQL into the repository (the sidecar).
    Stream(stream::Args),
    /// Take a base backup (with its WAL) into the repository.
    Backup(backup::Args),
    /// Check backups: every part, every file against the server's manifest, the WAL range.
    Verify(verify::Args),
    /// Restore a backup into an empty directory, with recovery to a target configured.
    Restore(Box<restore::Args>),
    /// Fetch one WAL segment or history file from the repository (for restore_command).
    WalFetch(wal_fetch::Args),
    /// Show what the repository holds: backups, timelines and WAL ranges.
    List(list::Args),
    /// Check the server, the repository, the key and the WAL; exit 0 ok, 1 warning, 2 critical.
    Check(check::Args),
    /// Test a restore into a scratch directory, check it, record the outcome and the RTO.
    Drill(drill::Args),
    /// Remove backups and WAL that the retention policy no longer keeps.
    Expire(expire::Args),
    /// Show backups, the restorable window per timeline, lag, retention, pins and marks.
    Info(info::Args),
    /// Pin a backup so that no retention policy removes it (or unpin it, or list pins).
    Keep(keep::Args),
    /// Create a named restore point and wait until its WAL is stored (before a migration).
    Mark(mark::Args),
    /// Rotate keys: list what each key seals, add the key file's new key, retire an old one.
    Key(key::Args),
    /// Print a new random encryption key (64 hexadecimal characters).
    Keygen(keygen::Args),
}

impl Command {
    /// Whether the command runs long with buffers of many MiB (streams,
    /// backups, restores), where malloc's thresholds matter
    /// ([`crate::malloc`]).
    pub fn holds_large_buffers(&self) -> bool {
        matches!(
            self,
            Command::Stream(_)
                | Command::Backup(_)
                | Command::Restore(_)
                | Command::Verify(_)
                | Command::Drill(_)
        )
    }
}

/// What retention keeps (`expire` and the sidecar). Policies add up: a
/// backup stays if any of them keeps it.
#[derive(Debug, Clone, Default, Args)]
pub struct RetentionArgs {
    /// Keep the newest N full backups, and the WAL to recover to any moment since the oldest.
    #[arg(long, env = "WALVAULT_RETAIN_FULL", value_parser = clap::value_parser!(u32).range(1..))]
    pub retain_full: Option<u32>,
    /// Keep every moment of this last span restorable (e.g. 7d, 30d): the backups that stopped
    /// inside it, the newest one before it, and the WAL from there on.
    #[arg(long, env = "WALVAULT_RETAIN_WINDOW", value_parser = crate::config::parse_duration)]
    pub retain_window: Option<std::time::Duration>,
    /// Keep the newest backup of each of the newest N days that have one (UTC).
    #[arg(long, env = "WALVAULT_RETAIN_DAILY", value_parser = clap::value_parser!(u32).range(1..))]
    pub retain_daily: Option<u32>,
    /// Keep the newest backup of each of the newest N ISO weeks that have one.
    #[arg(long, env = "WALVAULT_RETAIN_WEEKLY", value_parser = clap::value_parser!(u32).range(1..))]
    pub retain_weekly: Option<u32>,
    /// Keep the newest backup of each of the newest N months that have one.
    #[arg(long, env = "WALVAULT_RETAIN_MONTHLY", value_parser = clap::value_parser!(u32).range(1..))]
    pub retain_monthly: Option<u32>,
    /// Keep the newest backup of each of the newest N years that have one.
    #[arg(long, env = "WALVAULT_RETAIN_YEARLY", value_parser = clap::value_parser!(u32).range(1..))]
    pub retain_yearly: Option<u32>,
}

impl RetentionArgs {
    /// The policy these flags describe.
    pub fn policy(&self) -> crate::retention::policy::Policy {
        crate::retention::policy::Policy {
            full: self.retain_full,
            window: self.retain_window,
            daily: self.retain_daily,
            weekly: self.retain_weekly,
            monthly: self.retain_monthly,
            yearly: self.retain_yearly,
        }
    }
}

/// Where the repository is and how to read it.
#[derive(Debug, Clone, Args)]
pub struct RepoArgs {
    /// Repository URL: file:///path, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix.
    /// S3 settings come from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY.
    #[arg(long, env = "WALVAULT_REPO", required_unless_present = "repo_config")]
    pub repo: Option<String>,
    /// A JSON settings file (mode 0600) with the repository URL, key and store options, for use
    /// without the environment (as restore_command): {"version": 1, "repo": "s3://b/p",
    /// "key": "<64 hex>", "options": {"aws_endpoint": "...", "aws_access_key_id": "..."}}.
    /// When given, it wins over --repo, --key-file and the WALVAULT_* and AWS_* variables.
    #[arg(long, env = "WALVAULT_REPO_CONFIG")]
    pub repo_config: Option<PathBuf>,
    /// File with the encryption key(s): 64 hex characters per line, the first seals new objects.
    /// Without it (and without WALVAULT_KEY) objects are only compressed and checksummed.
    #[arg(long, env = "WALVAULT_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// zstd level for new objects (1-19).
    #[arg(long, env = "WALVAULT_COMPRESSION_LEVEL")]
    pub compression_level: Option<i32>,
    /// Storage class of new WAL objects (S3 `x-amz-storage-class`, GCS storage class), e.g.
    /// STANDARD. Default: the bucket's.
    #[arg(long, env = "WALVAULT_WAL_STORAGE_CLASS")]
    pub wal_storage_class: Option<String>,
    /// Storage class of new backup objects, e.g. STANDARD_IA. A restore from an archive class
    /// (GLACIER, DEEP_ARCHIVE) needs the objects restored by the store first.
    #[arg(long, env = "WALVAULT_BACKUP_STORAGE_CLASS")]
    pub backup_storage_class: Option<String>,
    /// The configuration file (`--config`), for the key and store options it may hold.
    #[arg(from_global)]
    pub config: Option<PathBuf>,
}

impl RepoArgs {
    /// Opens the repository; the key may also come from `WALVAULT_KEY`.
    ///
    /// # Errors
    /// Configuration errors (exit code 2).
    pub fn open(&self) -> Result<Repository, crate::config::Error> {
        let classes = crate::storage::StorageClasses {
            wal: self.wal_storage_class.clone(),
            backup: self.backup_storage_class.clone(),
        };
        Ok(self.open_store()?.with_storage_classes(classes))
    }

    fn open_store(&self) -> Result<Repository, crate::config::Error> {
        if let Some(path) = &self.repo_config {
            let cfg = crate::config::settings_file::load_repository_config(path)?;
            let keyring = match cfg.key.as_deref() {
                Some(text) => {
                    crate::format::Keyring::from_key_file_text(text, &path.display().to_string())?
                }
                None => crate::format::Keyring::none(),
            };
            let options: Vec<(String, String)> = cfg.options.into_iter().collect();
            return crate::config::open_repository_with(
                &cfg.repo,
                &options,
                keyring,
                self.compression_level,
            );
        }
        let env_key = std::env::var("WALVAULT_KEY").ok();
        let file = self.file_secrets()?;
        let keyring = match self.file_key(&file, env_key.as_deref()) {
            Some(text) => crate::format::Keyring::from_key_file_text(
                secrecy::ExposeSecret::expose_secret(text),
                "the configuration file's [repository] key",
            )?,
            None => crate::config::load_keyring(self.key_file.as_ref(), env_key.as_deref())?,
        };
        let url = self
            .repo
            .as_deref()
            .ok_or(crate::config::Error::Missing("--repo (or WALVAULT_REPO)"))?;
        let vars: Vec<(String, String)> = std::env::vars().collect();
        let options = crate::storage::options_under_environment(url, &file.option_pairs(), &vars)?;
        crate::config::open_repository_with(url, &options, keyring, self.compression_level)
    }

    /// The key and store options of the configuration file, if one is given.
    fn file_secrets(&self) -> Result<RepositorySecrets, crate::config::Error> {
        Ok(match &self.config {
            Some(path) => ConfigFile::read(path, parse::SECRET_FLAGS)?
                .repository()
                .clone(),
            None => RepositorySecrets::default(),
        })
    }

    /// The file's key, used only when neither a key file (flag, environment
    /// or the file's key_file) nor WALVAULT_KEY gives one: they win over it.
    fn file_key<'a>(
        &self,
        file: &'a RepositorySecrets,
        env_key: Option<&str>,
    ) -> Option<&'a secrecy::SecretString> {
        let env_key = env_key.filter(|k| !k.trim().is_empty());
        file.key
            .as_ref()
            .filter(|_| self.key_file.is_none() && env_key.is_none())
    }

    /// The settings a command run without the environment (restore_command)
    /// needs to reach this repository: the settings file given, or the URL,
    /// key and store options of this process's environment.
    ///
    /// # Errors
    /// Configuration errors.
    pub fn settings(&self) -> anyhow::Result<crate::config::settings_file::RepositoryConfigFile> {
        use crate::config::settings_file;
        if let Some(path) = &self.repo_config {
            return Ok(settings_file::load_repository_config(path)?);
        }
        let env_key = std::env::var("WALVAULT_KEY").ok();
        let file = self.file_secrets()?;
        let key = match (&self.key_file, self.file_key(&file, env_key.as_deref())) {
            (Some(path), _) => {
                // Every key of the file (old objects may need an older key).
                crate::config::keys::read_key_file(path)?;
                Some(std::fs::read_to_string(path)?)
            }
            (None, Some(text)) => Some(secrecy::ExposeSecret::expose_secret(text).to_string()),
            (None, None) => env_key,
        };
        let url = self
            .repo
            .as_deref()
            .ok_or(crate::config::Error::Missing("--repo (or WALVAULT_REPO)"))?;
        let vars: Vec<(String, String)> = std::env::vars().collect();
        let mut cfg = settings_file::from_environment(url, key, &vars)?;
        cfg.options
            .extend(crate::storage::options_under_environment(
                url,
                &file.option_pairs(),
                &vars,
            )?);
        Ok(cfg)
    }

    /// Opens a repository that must exist already, checking the keys against it.
    ///
    /// # Errors
    /// Configuration errors, a wrong key, or an empty repository.
    pub async fn open_existing(&self) -> anyhow::Result<(Repository, RepositoryManifest)> {
        let repo = self.open()?;
        let manifest = repo.open_manifest().await?.ok_or_else(|| {
            anyhow::anyhow!("repository {} is empty (no walvault.json)", repo.display())
        })?;
        Ok((repo, manifest))
    }
}

/// Runs the parsed command.
///
/// # Errors
/// Whatever the command fails with; `main` maps it to an exit code.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Stream(args) => stream::run(args).await,
        Command::Backup(args) => backup::run(args).await,
        Command::Verify(args) => verify::run(args).await,
        Command::Restore(args) => restore::run(*args).await,
        // PostgreSQL reads exit statuses 1-125 of restore_command as "not
        // in the archive": every failure must be above that.
        Command::WalFetch(args) => wal_fetch::run(args).await.or_else(|err| {
            eprintln!(
                "walvault wal-fetch: error: {}",
                crate::error::chain(err.as_ref())
            );
            Ok(ExitCode::from(crate::restore::serve::EXIT_FAILED))
        }),
        Command::List(args) => list::run(args).await,
        Command::Check(args) => check::run(args).await,
        Command::Drill(args) => drill::run(args).await,
        Command::Expire(args) => expire::run(args).await,
        Command::Info(args) => info::run(args).await,
        Command::Keep(args) => keep::run(args).await,
        Command::Key(args) => key::run(args).await,
        Command::Mark(args) => mark::run(args).await,
        Command::Keygen(args) => keygen::run(&args),
    }
}

/// Exit code for an error: 2 for configuration and usage, 1 otherwise.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    let is_usage = err.chain().any(|e| {
        e.is::<crate::config::Error>()
            || e.is::<crate::protocol::conninfo::ConnInfoError>()
            || e.is::<crate::format::key::KeyError>()
            || e.is::<crate::format::manifest::MismatchError>()
            || e.downcast_ref::<crate::storage::Error>()
                .is_some_and(crate::storage::Error::is_configuration)
            || e.downcast_ref::<crate::wal::receiver::Error>()
                .is_some_and(crate::wal::receiver::Error::is_configuration)
            || e.is::<crate::restore::tablespaces::TablespaceError>()
            || e.downcast_ref::<crate::wal::mark::Error>()
                .is_some_and(crate::wal::mark::Error::is_usage)
            || e.is::<crate::lsn::ParseWalFileError>()
            || e.downcast_ref::<crate::restore::plan::PlanError>()
                .is_some_and(crate::restore::plan::PlanError::is_usage)
            || e.downcast_ref::<crate::backup::Error>()
                .is_some_and(crate::backup::Error::is_configuration)
    });
    if is_usage {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}
