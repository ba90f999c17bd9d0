//! Reading the command line with the configuration file under it: find
//! `--config` (or `WALVAULT_CONFIG`), make the file's settings the defaults
//! of their flags (see [`super::config_file`]), parse, and refuse secrets
//! given as flags. Nothing here names a command or a flag other than the
//! secret-bearing ones, so commands added later are covered.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args as _, CommandFactory, FromArgMatches};

use super::Cli;
use super::args::{KEY_VARIABLE, RepoArgs};
use super::config_file::{self, ConfigFile, Layout, SecretFlag};

/// Flags whose values may carry a secret. The command line is visible to
/// every user of the machine, so such values are refused there; the
/// environment and the configuration file (mode 0600) take them.
pub const SECRET_FLAGS: &[SecretFlag] = &[
    SecretFlag {
        id: "pg",
        what: "a password",
        holds_secret: crate::protocol::conninfo::has_secret,
        instead: "give the password in PGPASSWORD, in a password file (passfile=, PGPASSFILE or \
                  ~/.pgpass), or in the connection string in WALVAULT_PG or in the configuration \
                  file (--config, mode 0600)",
    },
    SecretFlag {
        id: "repo",
        what: "a password in its URL",
        holds_secret: url_has_password,
        instead: "give the store's credentials in its environment variables (AWS_SECRET_ACCESS_KEY, \
                  …) or in [repository.options] of the configuration file (--config, mode 0600)",
    },
    SecretFlag {
        id: "notify_webhook",
        what: "a webhook URL (its path is the credential)",
        holds_secret: |_| true,
        instead: "give it in WALVAULT_NOTIFY_WEBHOOK or as notify_webhook in [stream] of the \
                  configuration file (--config, mode 0600)",
    },
];

/// The id of the global flag naming the configuration file.
const CONFIG_FLAG: &str = "config";
/// The command whose failures must exit above 125 (PostgreSQL's
/// restore_command reads 1 to 125 as "not in the archive").
const WAL_FETCH: &str = "wal-fetch";

/// Why the command line gave no command to run.
#[derive(Debug)]
pub enum ParseError {
    /// A usage error, or help or the version: clap prints it.
    Clap {
        /// What clap says.
        error: clap::Error,
        /// The command asked for, if known.
        command: Option<String>,
    },
    /// A configuration file problem or a secret on the command line.
    Config {
        /// What is wrong.
        error: Box<config_file::Error>,
        /// The command asked for, if known.
        command: Option<String>,
    },
}

impl ParseError {
    /// Prints the error on stderr (help and version on stdout) and returns
    /// the exit code: clap's for its own, 2 for a configuration problem, and
    /// for a `wal-fetch` that cannot run the code that stops recovery (never
    /// 1 to 125, which PostgreSQL reads as "not in the archive").
    pub fn report(self) -> ExitCode {
        match self {
            ParseError::Clap { error, command } => {
                let _ = error.print();
                let code = error.exit_code();
                if code != 0 && command.as_deref() == Some(WAL_FETCH) {
                    return ExitCode::from(crate::restore::serve::EXIT_FAILED);
                }
                ExitCode::from(u8::try_from(code).unwrap_or(2))
            }
            ParseError::Config { error, command } => {
                eprintln!("walvault: error: {}", crate::error::chain(error.as_ref()));
                if command.as_deref() == Some(WAL_FETCH) {
                    ExitCode::from(crate::restore::serve::EXIT_FAILED)
                } else {
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// Parses `argv` (program name first) with the configuration file's
/// settings as the flags' defaults, and refuses secrets given as flags.
///
/// # Errors
/// A usage error (or help and version to print), a configuration file
/// problem, or a secret on the command line.
pub fn parse_args<I, T>(argv: I) -> Result<Cli, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let lenient = lenient_parse(&argv);
    let command = lenient
        .as_ref()
        .and_then(|m| m.subcommand_name().map(str::to_string));
    let config_error = |error: config_file::Error, command: Option<String>| ParseError::Config {
        error: Box::new(error),
        command,
    };
    // First, so that a secret on the command line is refused whatever else
    // is wrong there.
    if let Some(m) = &lenient {
        config_file::check_command_line(m, SECRET_FLAGS)
            .map_err(|e| config_error(e, command.clone()))?;
    }
    let config = lenient.and_then(|m| m.get_one::<PathBuf>(CONFIG_FLAG).cloned());
    let mut root = protect_secret_flags(Cli::command());
    if let Some(path) = &config {
        let file =
            ConfigFile::read(path, SECRET_FLAGS).map_err(|e| config_error(e, command.clone()))?;
        let repository = repository_flags();
        let layout = Layout {
            repository: &repository,
            config_flag: CONFIG_FLAG,
            secret_flags: SECRET_FLAGS,
        };
        // The key is one setting: WALVAULT_KEY stands above the file's
        // key_file as WALVAULT_KEY_FILE does (and above its key, see RepoArgs).
        let key_in_environment = std::env::var(KEY_VARIABLE).is_ok_and(|k| !k.trim().is_empty());
        let leave_out: &[&str] = if key_in_environment {
            &["key_file"]
        } else {
            &[]
        };
        root = file
            .apply(root, &layout, leave_out)
            .map_err(|e| config_error(e, command.clone()))?;
    }
    let matches = root
        .try_get_matches_from_mut(&argv)
        .map_err(|error| ParseError::Clap {
            error,
            command: command.clone(),
        })?;
    config_file::check_command_line(&matches, SECRET_FLAGS)
        .map_err(|e| config_error(e, matches.subcommand_name().map(str::to_string)))?;
    Cli::from_arg_matches(&matches).map_err(|e| ParseError::Clap {
        error: e.format(&mut root),
        command,
    })
}

/// A lenient parse, for the configuration file, the command and the
/// secrets given on the command line before the real one: required flags
/// may come from the file, and help is shown only once the file's defaults
/// are in.
fn lenient_parse(argv: &[OsString]) -> Option<clap::ArgMatches> {
    Cli::command()
        .ignore_errors(true)
        .disable_help_flag(true)
        .disable_help_subcommand(true)
        .mut_subcommands(|sc| sc.disable_help_flag(true))
        .try_get_matches_from(argv)
        .ok()
}

/// The ids of the repository group's flags.
fn repository_flags() -> Vec<String> {
    RepoArgs::augment_args(clap::Command::new("repository"))
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect()
}

/// Keeps the values of secret-bearing flags out of `--help`, which shows
/// defaults (now from the file) and environment values.
fn protect_secret_flags(root: clap::Command) -> clap::Command {
    let hide = |arg: clap::Arg| {
        if SECRET_FLAGS.iter().any(|f| f.id == arg.get_id().as_str()) {
            arg.hide_default_value(true).hide_env_values(true)
        } else {
            arg
        }
    };
    root.mut_args(hide).mut_subcommands(|sc| sc.mut_args(hide))
}

/// Whether a repository URL carries a password (`s3://id:secret@bucket`).
fn url_has_password(text: &str) -> bool {
    url::Url::parse(text).is_ok_and(|u| u.password().is_some())
}

/// A configuration file's text read and applied to the whole command
/// tree, as `--config` would (mode 0600): for the fuzz targets.
///
/// # Errors
/// As [`ConfigFile::read`] and [`ConfigFile::apply`].
#[cfg(feature = "fuzzing")]
pub fn check_config_text(text: &str) -> Result<(), config_file::Error> {
    let repository = repository_flags();
    let layout = Layout {
        repository: &repository,
        config_flag: CONFIG_FLAG,
        secret_flags: SECRET_FLAGS,
    };
    ConfigFile::from_text(
        std::path::Path::new("walvault.toml"),
        text,
        0o600,
        SECRET_FLAGS,
    )?
    .apply(Cli::command(), &layout, &[])
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::cli::config_file::setting_names;

    const EXAMPLE: &str = include_str!("../../walvault.example.toml");
    const KEY: &str = "7f3c1a9e5b2d4f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

    /// Writes a configuration file (mode 0600) into a new directory.
    fn config(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("walvault.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        (dir, path)
    }

    fn apply(text: &str) -> Result<clap::Command, crate::cli::config_file::Error> {
        let (_dir, path) = config(text);
        let repository = repository_flags();
        let layout = Layout {
            repository: &repository,
            config_flag: CONFIG_FLAG,
            secret_flags: SECRET_FLAGS,
        };
        ConfigFile::read(&path, SECRET_FLAGS)?.apply(Cli::command(), &layout, &[])
    }

    /// The key of a commented-out setting of the example (`#name = value`).
    fn commented_setting(line: &str) -> Option<&str> {
        let (key, _) = line.strip_prefix('#')?.split_once(" = ")?;
        key.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            .then_some(key)
    }

    /// The example file loads, each of its settings is valid when
    /// uncommented, and it shows every setting of every table.
    #[test]
    fn the_example_file_is_valid_and_complete() {
        apply(EXAMPLE).unwrap().debug_assert();
        let lines: Vec<&str> = EXAMPLE.lines().collect();
        let mut table: Option<String> = None;
        let mut shown: Vec<(Option<String>, String)> = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                table = Some(name.to_string());
                if let Some((parent, child)) = name.split_once('.') {
                    shown.push((Some(parent.to_string()), child.to_string()));
                }
                continue;
            }
            let Some(key) = commented_setting(line) else {
                continue;
            };
            // The key's placeholder becomes a key.
            let uncommented = if key == "key" {
                format!("key = \"{KEY}\"")
            } else {
                line[1..].to_string()
            };
            let mut text = lines.clone();
            text[i] = &uncommented;
            apply(&text.join("\n"))
                .unwrap_or_else(|e| panic!("line {} ({line}): {e}", i + 1))
                .debug_assert();
            shown.push((table.clone(), key.to_string()));
        }
        let repository = repository_flags();
        let layout = Layout {
            repository: &repository,
            config_flag: CONFIG_FLAG,
            secret_flags: SECRET_FLAGS,
        };
        let missing: Vec<String> = setting_names(&Cli::command(), &layout)
            .into_iter()
            .filter(|name| !shown.contains(name))
            // A repository setting is shown once, in [repository].
            .filter(|(_, key)| !shown.contains(&(Some("repository".to_string()), key.clone())))
            .map(|(table, key)| format!("[{}] {key}", table.unwrap_or_default()))
            .collect();
        assert!(
            missing.is_empty(),
            "walvault.example.toml lacks these settings (add each, commented out and explained, to its table): {}",
            missing.join(", ")
        );
    }

    /// The configuration files shipped under packaging/ load: a flag
    /// renamed or removed shows up here, not on an operator's machine.
    #[test]
    fn the_packaged_files_are_valid() {
        for (name, text) in [
            (
                "packaging/walvault.toml",
                include_str!("../../packaging/walvault.toml"),
            ),
            (
                "packaging/docker/walvault.toml",
                include_str!("../../packaging/docker/walvault.toml"),
            ),
            (
                "packaging/kubernetes/walvault.toml",
                include_str!("../../packaging/kubernetes/walvault.toml"),
            ),
        ] {
            apply(text)
                .unwrap_or_else(|e| panic!("{name}: {e}"))
                .debug_assert();
        }
    }

    #[test]
    fn the_file_fills_in_flags_wherever_config_is_given() {
        let (dir, path) = config(
            "[repository]\nrepo = \"file:///srv/walvault\"\nkey_file = \"walvault.key\"\n[list]\njson = true\n",
        );
        let path_arg = path.to_str().unwrap();
        for argv in [
            ["walvault", "--config", path_arg, "list"],
            ["walvault", "list", "--config", path_arg],
        ] {
            let cli = parse_args(argv).unwrap();
            let super::super::Command::List(args) = cli.command else {
                panic!("not list");
            };
            assert!(args.json);
            assert_eq!(args.repo.repo.as_deref(), Some("file:///srv/walvault"));
            assert_eq!(args.repo.key_file, Some(dir.path().join("walvault.key")));
            assert_eq!(args.repo.config.as_deref(), Some(path.as_path()));
        }
        let cli = parse_args([
            "walvault",
            "--config",
            path_arg,
            "list",
            "--repo",
            "file:///x",
        ])
        .unwrap();
        let super::super::Command::List(args) = cli.command else {
            panic!("not list");
        };
        assert_eq!(args.repo.repo.as_deref(), Some("file:///x"));
    }

    #[test]
    fn errors_name_the_command_for_its_exit_code() {
        let (_dir, path) = config("[wal_fetch]\nprefech = 2\n");
        let path_arg = path.to_str().unwrap();
        match parse_args(["walvault", "--config", path_arg, "wal-fetch", "a", "b"]) {
            Err(ParseError::Config { error, command }) => {
                assert_eq!(command.as_deref(), Some("wal-fetch"));
                let m = error.to_string();
                assert!(m.contains("unknown key prefech in [wal_fetch]"), "{m}");
                assert!(m.contains("did you mean prefetch?"), "{m}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn secrets_are_refused_on_the_command_line_and_hidden_in_help() {
        for argv in [
            vec!["walvault", "stream", "--pg", "host=db password=hunter2"],
            vec!["walvault", "backup", "--pg", "postgresql://u:hunter2@db/x"],
            vec!["walvault", "list", "--repo", "s3://id:hunter2@bucket/p"],
        ] {
            match parse_args(&argv) {
                Err(ParseError::Config { error, .. }) => {
                    let m = error.to_string();
                    assert!(m.contains("on the command line holds"), "{m}");
                    assert!(!m.contains("hunter2"), "{m}");
                }
                other => panic!("{argv:?}: {other:?}"),
            }
        }
        let (_dir, path) =
            config("[stream]\npg = \"host=db password=hunter2\"\nslot = \"from_file\"\n");
        match parse_args([
            "walvault",
            "--config",
            path.to_str().unwrap(),
            "stream",
            "--help",
        ]) {
            Err(ParseError::Clap { error: e, .. }) => {
                let help = e.to_string();
                assert!(help.contains("[default: from_file]"), "{help}");
                assert!(!help.contains("hunter2"), "{help}");
            }
            other => panic!("{other:?}"),
        }
    }
}
