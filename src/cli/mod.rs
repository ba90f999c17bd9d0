//! Command-line interface: clap types and one module per subcommand. It
//! only parses and prints: each `run` resolves settings and calls into the
//! library. The shared argument groups live here; no subcommand module
//! imports another.

pub mod args;
pub mod backup;
pub mod check;
pub mod config_file;
pub mod copy;
pub mod drill;
pub mod expire;
pub mod info;
pub mod keep;
pub mod key;
pub mod keygen;
pub mod list;
pub mod log;
pub mod mark;
pub mod parse;
pub mod record_upgrade;
pub mod restore;
pub mod stream;
pub mod verify;
pub mod wal_fetch;
pub mod wal_push;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use args::LogFormatArg;

/// walvault: PostgreSQL WAL streaming archiver into encrypted object storage.
#[derive(Debug, Parser)]
#[command(name = "walvault", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log filter: error, warn, info, debug, trace or off, or TARGET=LEVEL directives (RUST_LOG
    /// wins when set).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "WALVAULT_LOG_LEVEL",
        default_value = "info",
        value_parser = args::parse_log_level
    )]
    pub log_level: String,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "WALVAULT_LOG_FORMAT",
        value_enum,
        default_value = "plain"
    )]
    pub log_format: LogFormatArg,
    /// TOML file with settings for every command (see walvault.example.toml); flags and WALVAULT_*
    /// variables win over it. Mode 0600 when it holds a key, credentials or a password.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "WALVAULT_CONFIG",
        value_name = "PATH"
    )]
    pub config: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
// Parsed once per process: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// Archive one WAL file into the repository (archive_command), beside the stream or alone.
    WalPush(wal_push::Args),
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
    /// Copy the repository into another place (resumable); the copy restores alone.
    Copy(copy::Args),
    /// After pg_upgrade: continue the repository with the upgraded cluster's new system identifier.
    RecordUpgrade(record_upgrade::Args),
    /// Rotate keys: list what each key seals, add the key file's new key, retire an old one.
    Key(key::Args),
    /// Print a new random encryption key (64 hexadecimal characters).
    Keygen(keygen::Args),
    /// Show the audit trail: who changed the repository, when, and how it ended.
    Log(log::Args),
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

/// Runs the parsed command.
///
/// # Errors
/// Whatever the command fails with; `main` maps it to an exit code.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Stream(args) => Box::pin(stream::run(args)).await,
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
        Command::RecordUpgrade(args) => record_upgrade::run(args).await,
        Command::Copy(args) => copy::run(args).await,
        Command::Keygen(args) => keygen::run(&args),
        Command::Log(args) => log::run(args).await,
        Command::WalPush(args) => wal_push::run(args).await,
    }
}

/// Exit code for an error: 2 for configuration and usage, 1 otherwise.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    let is_usage = err.chain().any(|e| {
        e.is::<crate::config::Error>()
            || e.is::<config_file::Error>()
            || e.is::<crate::protocol::conninfo::ConnInfoError>()
            || e.is::<crate::format::key::KeyError>()
            || e.is::<crate::format::manifest::MismatchError>()
            || e.downcast_ref::<crate::storage::Error>()
                .is_some_and(crate::storage::Error::is_configuration)
            || e.downcast_ref::<crate::wal::receiver::Error>()
                .is_some_and(crate::wal::receiver::Error::is_configuration)
            || e.is::<crate::restore::tablespaces::TablespaceError>()
            || e.downcast_ref::<crate::restore::prepare::PrepareError>()
                .is_some_and(crate::restore::prepare::PrepareError::is_usage)
            || e.downcast_ref::<crate::config::resolve::OpenError>()
                .is_some_and(crate::config::resolve::OpenError::is_configuration)
            || e.downcast_ref::<crate::restore::start::StartError>()
                .is_some_and(crate::restore::start::StartError::is_usage)
            || e.is::<crate::restore::drill::CannotRun>()
            || e.downcast_ref::<crate::retention::pins::PinError>()
                .is_some_and(crate::retention::pins::PinError::is_usage)
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
