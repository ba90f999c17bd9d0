//! The argument groups several commands share: the repository, retention,
//! the checkpoint mode and the log format. Each command's own flags live in
//! its file.

use std::path::PathBuf;

use clap::Args;
use secrecy::SecretString;

use super::config_file::{ConfigFile, RepositorySecrets};
use chrono::{DateTime, Utc};

use crate::config::settings_file::RepositoryConfigFile;
use crate::config::{ByteSize, RepositorySource};
use crate::format::manifest::RepositoryManifest;
use crate::lsn::Lsn;
use crate::restore::{TargetAction, TimelineTarget};
use crate::storage::{OpenMode, Repository, StorageClasses};
use crate::telemetry::LogFormat;

/// The variable holding the key, which wins over the file's key settings.
pub const KEY_VARIABLE: &str = "WALVAULT_KEY";

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

/// What retention keeps (`expire` and the sidecar). Policies add up: a
/// backup stays if any of them keeps it.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Retention")]
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
#[command(next_help_heading = "Repository")]
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
    /// Create the repository without a key, unencrypted for good (encryption cannot be added
    /// later). Without a key and without this flag, a command refuses to create a repository.
    #[arg(long, env = "WALVAULT_UNENCRYPTED")]
    pub unencrypted: bool,
    /// Let an S3, GCS or Azure client take its credentials from the cloud's instance metadata
    /// service (IMDS, the GCE metadata server, Azure managed identity) when none are configured.
    /// Without it, a repository without credentials is refused and no request goes there.
    #[arg(long, env = "WALVAULT_INSTANCE_CREDENTIALS")]
    pub instance_credentials: bool,
    /// Read a repository whose walvault.json is format version 1 (made by walvault 0.1): it has no
    /// authentication, so without this flag it is refused as a possible downgrade.
    #[arg(long, env = "WALVAULT_ALLOW_VERSION_1")]
    pub allow_version_1: bool,
    /// The configuration file (`--config`), for the key and store options it may hold.
    #[arg(from_global)]
    pub config: Option<PathBuf>,
}

impl RepoArgs {
    /// What was given about the repository, with the configuration file's
    /// secrets and the environment, for the one resolution in
    /// [`crate::config::resolve`].
    ///
    /// # Errors
    /// The configuration file cannot be read or is not valid.
    pub fn source(&self) -> Result<RepositorySource, super::config_file::Error> {
        let file = match &self.config {
            Some(path) => ConfigFile::read(path, super::parse::SECRET_FLAGS)?
                .repository()
                .clone(),
            None => RepositorySecrets::default(),
        };
        Ok(RepositorySource {
            url: self.repo.clone(),
            settings_file: self.repo_config.clone(),
            key_file: self.key_file.clone(),
            env_key: std::env::var(KEY_VARIABLE).ok().map(SecretString::from),
            file_key: file.key.clone(),
            file_options: file.option_pairs(),
            environment: std::env::vars().collect(),
            compression_level: self.compression_level,
            classes: StorageClasses {
                wal: self.wal_storage_class.clone(),
                backup: self.backup_storage_class.clone(),
            },
            allow_unencrypted: self.unencrypted,
            allow_version_1: self.allow_version_1,
            mode: OpenMode {
                create: false,
                instance_credentials: self.instance_credentials,
            },
        })
    }

    /// Opens the repository; the key may also come from `WALVAULT_KEY`.
    ///
    /// # Errors
    /// Configuration errors (exit code 2).
    pub fn open(&self) -> anyhow::Result<Repository> {
        Ok(self.source()?.open()?)
    }

    /// The settings a command run without the environment (restore_command)
    /// needs to reach this repository.
    ///
    /// # Errors
    /// Configuration errors.
    pub fn settings(&self) -> anyhow::Result<RepositoryConfigFile> {
        Ok(self.source()?.settings()?)
    }

    /// Opens a repository that must exist already, checking the keys against it.
    ///
    /// # Errors
    /// Configuration errors, a wrong key, or an empty repository.
    pub async fn open_existing(&self) -> anyhow::Result<(Repository, RepositoryManifest)> {
        Ok(self.source()?.open_existing().await?)
    }
}

/// What PostgreSQL does at the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetActionArg {
    /// End recovery and open for writes.
    Promote,
    /// Stay paused in recovery.
    Pause,
    /// Shut down at the target.
    Shutdown,
}

impl From<TargetActionArg> for TargetAction {
    fn from(a: TargetActionArg) -> Self {
        match a {
            TargetActionArg::Promote => TargetAction::Promote,
            TargetActionArg::Pause => TargetAction::Pause,
            TargetActionArg::Shutdown => TargetAction::Shutdown,
        }
    }
}

/// `--slot`: a replication slot name as PostgreSQL takes it.
///
/// # Errors
/// Why the name is refused (checked before connecting).
pub fn parse_slot_name(text: &str) -> Result<String, String> {
    crate::protocol::command::validate_slot_name(text).map(|()| text.to_string())
}

/// `--flush-interval`: a positive duration.
///
/// # Errors
/// Zero, or not a duration.
pub fn parse_flush_interval(text: &str) -> Result<std::time::Duration, String> {
    let d = crate::config::parse_duration(text)?;
    if d.is_zero() {
        return Err("must be positive (use --synchronous for per-batch uploads)".into());
    }
    Ok(d)
}

/// `--memory-budget`: a size of at least 4 MiB.
///
/// # Errors
/// Too small, or not a size.
pub fn parse_memory_budget(text: &str) -> Result<u64, String> {
    let n = crate::config::parse_byte_size(text)?;
    if n < 4 << 20 {
        return Err("must hold at least 4 MiB".into());
    }
    Ok(n)
}

/// A cron schedule (`--backup-schedule`, `--drill-schedule`).
///
/// # Errors
/// Why the schedule does not parse.
pub fn parse_schedule(text: &str) -> Result<String, String> {
    crate::schedule::Schedule::parse(text)
        .map(|_| text.to_string())
        .map_err(|e| e.to_string())
}

/// `--metrics-addr`: an address to listen on (`127.0.0.1:9187`).
///
/// # Errors
/// Not such an address.
pub fn parse_listen_addr(text: &str) -> Result<String, String> {
    std::net::ToSocketAddrs::to_socket_addrs(text)
        .map(|_| text.to_string())
        .map_err(|e| format!("not an address to listen on: {e}"))
}

/// The levels a log filter takes.
const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace", "off"];

/// `--log-level`: a level, or comma-separated `TARGET=LEVEL` directives
/// (`info,walvault=debug`). A word that is no level is refused: tracing
/// would read it as a target and log nothing.
///
/// # Errors
/// The unknown level, with the valid ones.
pub fn parse_log_level(text: &str) -> Result<String, String> {
    for directive in text.split(',') {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, l)| l)
            .trim();
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "unknown log level {level:?}: use one of {} (or TARGET=LEVEL, comma-separated)",
                LOG_LEVELS.join(", ")
            ));
        }
    }
    Ok(text.to_string())
}

/// `--target-time`: a time with its UTC offset.
///
/// # Errors
/// A usage error naming the flag.
pub fn parse_target_time(text: &str) -> Result<DateTime<Utc>, crate::config::Error> {
    crate::restore::plan::parse_target_time(text).map_err(|e| usage("--target-time", text, e))
}

/// `--target-lsn`.
///
/// # Errors
/// A usage error naming the flag.
pub fn parse_target_lsn(text: &str) -> Result<Lsn, crate::config::Error> {
    text.parse()
        .map_err(|e: crate::lsn::ParseLsnError| usage("--target-lsn", text, e.to_string()))
}

/// `--target-xid`: a transaction id.
///
/// # Errors
/// A usage error naming the flag.
pub fn parse_target_xid(text: &str) -> Result<u64, crate::config::Error> {
    text.parse()
        .map_err(|_| usage("--target-xid", text, "a transaction id is a number"))
}

/// `--target-timeline`: latest, current or a number.
///
/// # Errors
/// A usage error naming the flag.
pub fn parse_target_timeline(text: &str) -> Result<TimelineTarget, crate::config::Error> {
    text.parse()
        .map_err(|e: String| usage("--target-timeline", text, e))
}

/// A byte size flag (`512MiB`).
///
/// # Errors
/// Why the text is not a size.
pub fn parse_byte_size_arg(text: &str) -> Result<ByteSize, String> {
    text.parse()
}

fn usage(what: &'static str, value: &str, reason: impl Into<String>) -> crate::config::Error {
    crate::config::Error::Invalid {
        what,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// Where `restore` puts its recovery settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SettingsOutput {
    /// Into postgresql.auto.conf.
    Write,
    /// On stdout, as postgresql.conf lines.
    Print,
    /// On stdout, as a JSON object.
    Json,
}
