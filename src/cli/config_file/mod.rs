//! The configuration file (`--config walvault.toml`): every flag of every
//! command as a TOML setting, below flags and the environment.
//!
//! The file is read as a plain TOML table and checked against the clap
//! command tree, so commands and flags added later are covered with no code
//! here:
//!
//! - top-level keys are the global flags (`log_level`, `log_format`);
//! - `[repository]` holds the flags of the repository group (`repo`,
//!   `key_file`, `compression_level`, …) for every command that has them,
//!   and the repository's secrets, which are never flags: `key` and the
//!   store options of `[repository.options]`;
//! - `[<command>]` holds that command's flags (`wal-fetch` is `[wal_fetch]`)
//!   and wins over `[repository]`.
//!
//! Keys are long flag names with `-` written `_`. [`ConfigFile::apply`] makes
//! each setting the default of its flag, so clap itself gives the precedence
//! flags > environment > file > built-in defaults; like a built-in default, a
//! setting from the file never conflicts with, nor requires, another flag.
//! Relative paths are relative to the file's directory. Hidden (internal)
//! flags and positional arguments are not settings.
//!
//! The file is refused when others can write it, and when others can read it
//! while it holds a secret. No error shows a value that may be secret.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

mod error;
mod places;
mod secrets;
mod values;

pub use error::Error;
pub use secrets::RepositorySecrets;

use error::syntax_error;
use places::{Places, bracketed, label, suggestion, with_default};
use secrets::secrets_held;
use values::{check_value, scalar, type_name};

/// The table of repository flags and secrets.
pub const REPOSITORY_TABLE: &str = "repository";
/// The `[repository]` key holding the encryption key(s).
const KEY_SETTING: &str = "key";
/// The `[repository]` table of store options.
const OPTIONS_TABLE: &str = "options";
/// The `[repository]` flag naming a key file, which `key` excludes.
const KEY_FILE_SETTING: &str = "key_file";
/// Smallest Jaro-Winkler similarity that makes a "did you mean" (clap's own
/// threshold for mistyped flags).
const SUGGESTION_SIMILARITY: f64 = 0.8;
/// Permission bits that let others change the file: whoever can change it
/// chooses the repository and the key.
const OTHERS_WRITE_MODE: u32 = 0o022;
/// Permission bits that must be clear when the file holds a secret (0600 or
/// stricter, as the repository settings file).
const OTHERS_ANY_MODE: u32 = 0o077;

/// A flag whose value may carry a secret, and where the secret goes instead.
#[derive(Clone, Copy, Debug)]
pub struct SecretFlag {
    /// The flag's id, which is also its key in the file (`pg`).
    pub id: &'static str,
    /// What a value may hold, for messages ("a password").
    pub what: &'static str,
    /// Whether a value holds a secret.
    pub holds_secret: fn(&str) -> bool,
    /// Where to give the secret instead, for messages.
    pub instead: &'static str,
}

/// How the file maps onto the command tree.
#[derive(Clone, Copy, Debug)]
pub struct Layout<'a> {
    /// Ids of the repository group's flags: the settings of `[repository]`.
    pub repository: &'a [String],
    /// Id of the flag that names the configuration file: not a setting.
    pub config_flag: &'a str,
    /// Flags whose values may be secrets.
    pub secret_flags: &'a [SecretFlag],
}

/// A configuration file, read and checked.
pub struct ConfigFile {
    path: PathBuf,
    table: toml::Table,
    repository: RepositorySecrets,
}

impl std::fmt::Debug for ConfigFile {
    /// Shows the path and the names of the tables and keys: values may be
    /// secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<String> = self
            .table
            .iter()
            .flat_map(|(name, value)| match value.as_table() {
                Some(t) => t.keys().map(|k| format!("{name}.{k}")).collect(),
                None => vec![name.clone()],
            })
            .collect();
        f.debug_struct("ConfigFile")
            .field("path", &self.path)
            .field("keys", &keys)
            .finish()
    }
}

impl ConfigFile {
    /// Reads the file and checks its permissions, its TOML and the secrets
    /// of `[repository]`; [`ConfigFile::apply`] checks the other settings.
    ///
    /// # Errors
    /// When the file cannot be read, others can write it, others can read
    /// it while it holds a secret, or it is not valid.
    pub fn read(path: &Path, secret_flags: &[SecretFlag]) -> Result<Self, Error> {
        use std::os::unix::fs::PermissionsExt;
        let shown = path.display().to_string();
        let read_error = |source| Error::Read {
            path: shown.clone(),
            source,
        };
        // The mode and the text come from one open file.
        let mut file = std::fs::File::open(path).map_err(read_error)?;
        let mode = file.metadata().map_err(read_error)?.permissions().mode() & 0o777;
        if mode & OTHERS_WRITE_MODE != 0 {
            return Err(Error::Writable { path: shown, mode });
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(read_error)?;
        Self::from_text(path, &text, mode, secret_flags)
    }

    /// [`ConfigFile::read`] once the file's text and mode are read.
    ///
    /// # Errors
    /// As [`ConfigFile::read`], but for reading the file.
    pub fn from_text(
        path: &Path,
        text: &str,
        mode: u32,
        secret_flags: &[SecretFlag],
    ) -> Result<Self, Error> {
        let shown = path.display().to_string();
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| syntax_error(&shown, text, &e))?;
        let repository = RepositorySecrets::from_file(&shown, &table)?;
        let secrets = secrets_held(&table, &repository, secret_flags);
        if !secrets.is_empty() && mode & OTHERS_ANY_MODE != 0 {
            return Err(Error::Readable {
                path: shown,
                mode,
                secrets: secrets.join(", "),
            });
        }
        Ok(ConfigFile {
            path: path.to_path_buf(),
            table,
            repository,
        })
    }

    /// The repository's secrets (`key`, `[repository.options]`).
    pub fn repository(&self) -> &RepositorySecrets {
        &self.repository
    }

    /// Checks every setting of the file against the command tree `root`,
    /// and makes each one the default of its flag, in every command. Keys in
    /// `leave_out` are checked but not applied (the environment sets them
    /// another way).
    ///
    /// # Errors
    /// An unknown table or key, a value of the wrong type, or a value its
    /// flag refuses.
    pub fn apply(
        &self,
        root: Command,
        layout: &Layout<'_>,
        leave_out: &[&str],
    ) -> Result<Command, Error> {
        let places = Places::new(&root, layout);
        self.check(&places, layout)?;
        let empty = toml::Table::new();
        let repository = self.table_of(REPOSITORY_TABLE).unwrap_or(&empty);
        let mut defaults: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        let wanted = |key: &String| !leave_out.contains(&key.as_str());
        for (key, arg) in places.top.iter().filter(|(k, _)| wanted(k)) {
            if let Some(value) = self.table.get(key) {
                let values = self.values_of(arg, value, TOP_LEVEL, key, layout)?;
                defaults
                    .entry(String::new())
                    .or_default()
                    .insert(arg.get_id().to_string(), values);
            }
        }
        for command in &places.commands {
            let own = self.table_of(&command.table).unwrap_or(&empty);
            for (key, arg) in command.settings.iter().filter(|(k, _)| wanted(k)) {
                let is_repository = layout.repository.iter().any(|id| id == arg.get_id());
                let (value, table) = match own.get(key) {
                    Some(v) => (v, label(&command.table)),
                    None => match repository.get(key).filter(|_| is_repository) {
                        Some(v) => (v, label(REPOSITORY_TABLE)),
                        None => continue,
                    },
                };
                let values = self.values_of(arg, value, &table, key, layout)?;
                defaults
                    .entry(command.name.clone())
                    .or_default()
                    .insert(arg.get_id().to_string(), values);
            }
        }
        let mut root = match defaults.remove("") {
            Some(d) => root.mut_args(|a| with_default(a, &d)),
            None => root,
        };
        if !defaults.is_empty() {
            root = root.mut_subcommands(|sc| match defaults.get(sc.get_name()) {
                Some(d) => sc.mut_args(|a| with_default(a, d)),
                None => sc,
            });
        }
        Ok(root)
    }

    fn table_of(&self, name: &str) -> Option<&toml::Table> {
        self.table.get(name).and_then(toml::Value::as_table)
    }

    /// Checks every key and value of the file.
    fn check(&self, places: &Places<'_>, layout: &Layout<'_>) -> Result<(), Error> {
        let path = self.path.display().to_string();
        for (key, value) in &self.table {
            let table_names = places.table_names();
            if let Some(arg) = places.top.get(key) {
                self.values_of(arg, value, TOP_LEVEL, key, layout)?;
            } else if table_names.contains(key) {
                let Some(table) = value.as_table() else {
                    return Err(Error::WrongType {
                        path,
                        table: TOP_LEVEL.into(),
                        key: key.clone(),
                        expected: "a table",
                        found: type_name(value),
                    });
                };
                let own = places.keys_of(key);
                for (k, v) in table {
                    if key == REPOSITORY_TABLE && (k == KEY_SETTING || k == OPTIONS_TABLE) {
                        continue; // Checked by RepositorySecrets::from_file.
                    }
                    if !own.contains(k) {
                        return Err(Error::UnknownKey {
                            path,
                            table: label(key),
                            key: k.clone(),
                            hint: places.hint(k, Some(key)),
                        });
                    }
                    let arg = places.arg(key, k).expect("a key of the table");
                    self.values_of(arg, v, &label(key), k, layout)?;
                }
            } else if value.is_table() {
                return Err(Error::UnknownTable {
                    path,
                    table: key.clone(),
                    hint: suggestion(key, &table_names)
                        .map(|s| format!(" (did you mean [{s}]?)"))
                        .unwrap_or_else(|| format!(" (tables: {})", bracketed(&table_names))),
                });
            } else {
                return Err(Error::UnknownKey {
                    path,
                    table: TOP_LEVEL.into(),
                    key: key.clone(),
                    hint: places.hint(key, None),
                });
            }
        }
        Ok(())
    }

    /// The default values a setting gives its flag, checked by the flag's
    /// own parser; relative paths are made relative to the file's directory.
    fn values_of(
        &self,
        arg: &Arg,
        value: &toml::Value,
        table: &str,
        key: &str,
        layout: &Layout<'_>,
    ) -> Result<Vec<String>, Error> {
        let wrong = |expected| Error::WrongType {
            path: self.path.display().to_string(),
            table: table.into(),
            key: key.into(),
            expected,
            found: type_name(value),
        };
        let values = match arg.get_action() {
            ArgAction::SetTrue | ArgAction::SetFalse => match value {
                toml::Value::Boolean(b) => vec![b.to_string()],
                _ => return Err(wrong("true or false")),
            },
            ArgAction::Count => match value {
                toml::Value::Integer(n) if *n >= 0 => vec![n.to_string()],
                _ => return Err(wrong("a whole number")),
            },
            ArgAction::Append => match value {
                toml::Value::Array(items) => {
                    items
                        .iter()
                        .map(scalar)
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| wrong("a list of strings or numbers"))?
                }
                other => vec![scalar(other).ok_or_else(|| wrong("a list of strings or numbers"))?],
            },
            _ => vec![scalar(value).ok_or_else(|| wrong("a string, number or boolean"))?],
        };
        let is_path = arg.get_value_parser().type_id() == std::any::TypeId::of::<PathBuf>();
        let base = self.path.parent().unwrap_or(Path::new(""));
        let is_secret = layout
            .secret_flags
            .iter()
            .any(|f| f.id == arg.get_id().as_str());
        values
            .into_iter()
            .map(|v| {
                let v = if is_path && !v.is_empty() && Path::new(&v).is_relative() {
                    base.join(&v).display().to_string()
                } else {
                    v
                };
                check_value(arg, &v)
                    .map(|()| v)
                    .map_err(|reason| Error::InvalidValue {
                        path: self.path.display().to_string(),
                        table: table.into(),
                        key: key.into(),
                        reason: if is_secret {
                            "the value is refused (not shown: it may hold a secret)".into()
                        } else {
                            reason
                        },
                    })
            })
            .collect()
    }
}

/// Every setting a file may hold for the command tree `root`, as (table,
/// key); the table is `None` at the top level. `[repository]` lists its
/// secrets too (`key`, and `options` for its table).
pub fn setting_names(root: &Command, layout: &Layout<'_>) -> Vec<(Option<String>, String)> {
    let places = Places::new(root, layout);
    let mut names: Vec<(Option<String>, String)> =
        places.top.keys().map(|k| (None, k.clone())).collect();
    for table in places.table_names() {
        for key in places.keys_of(&table) {
            names.push((Some(table.clone()), key));
        }
    }
    names
}

/// Refuses a flag given on the command line (in `matches` or its
/// subcommand's) whose value holds a secret.
///
/// # Errors
/// [`Error::SecretOnCommandLine`] naming the flag, never the value.
pub fn check_command_line(matches: &ArgMatches, secret_flags: &[SecretFlag]) -> Result<(), Error> {
    for flag in secret_flags {
        let Ok(Some(raw)) = matches.try_get_raw(flag.id) else {
            continue;
        };
        let given = matches.value_source(flag.id) == Some(ValueSource::CommandLine);
        if given
            && raw
                .into_iter()
                .any(|v| (flag.holds_secret)(&v.to_string_lossy()))
        {
            return Err(Error::SecretOnCommandLine {
                flag: flag.id.replace('_', "-"),
                what: flag.what,
                instead: flag.instead,
            });
        }
    }
    match matches.subcommand() {
        Some((_, sub)) => check_command_line(sub, secret_flags),
        None => Ok(()),
    }
}

/// How the top level is named in messages.
const TOP_LEVEL: &str = "the top level";

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const KEY: &str = "7f3c1a9e5b2d4f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

    fn holds_password(v: &str) -> bool {
        v.contains("password=")
    }

    const SECRETS: &[SecretFlag] = &[SecretFlag {
        id: "pg",
        what: "a password",
        holds_secret: holds_password,
        instead: "use PGPASSWORD",
    }];

    /// A command tree like walvault's: a global flag, the config flag, a
    /// repository group flattened into two commands, and a third without it.
    fn tree() -> Command {
        let repository = || {
            [
                Arg::new("repo")
                    .long("repo")
                    .env("WALVAULT_TEST_UNSET_REPO"),
                Arg::new("key_file")
                    .long("key-file")
                    .value_parser(clap::value_parser!(PathBuf)),
                Arg::new("compression_level")
                    .long("compression-level")
                    .value_parser(clap::value_parser!(i32)),
            ]
        };
        Command::new("walvault")
            .arg(
                Arg::new("log_level")
                    .long("log-level")
                    .global(true)
                    .default_value("info"),
            )
            .arg(Arg::new("config").long("config").global(true))
            .subcommand(
                Command::new("stream")
                    .args(repository())
                    .arg(Arg::new("pg").long("pg").default_value(""))
                    .arg(Arg::new("slot").long("slot").default_value("walvault"))
                    // PATH is always set: the environment's value.
                    .arg(Arg::new("path").long("path").env("PATH"))
                    .arg(
                        Arg::new("synchronous")
                            .long("synchronous")
                            .action(ArgAction::SetTrue),
                    )
                    .arg(
                        Arg::new("upload_concurrency")
                            .long("upload-concurrency")
                            .value_parser(clap::value_parser!(usize))
                            .default_value("4"),
                    )
                    .arg(
                        Arg::new("checkpoint")
                            .long("checkpoint")
                            .value_parser(["fast", "spread"])
                            .default_value("spread"),
                    )
                    .arg(Arg::new("internal").long("internal").hide(true)),
            )
            .subcommand(
                Command::new("wal-fetch")
                    .args(repository())
                    .arg(Arg::new("file_name").required(true))
                    .arg(Arg::new("spool").long("spool"))
                    .arg(Arg::new("prefetch").long("prefetch").requires("spool"))
                    .arg(
                        Arg::new("target_time")
                            .long("target-time")
                            .conflicts_with("target_lsn"),
                    )
                    .arg(Arg::new("target_lsn").long("target-lsn"))
                    .arg(
                        Arg::new("map")
                            .long("map")
                            .action(ArgAction::Append)
                            .value_parser(clap::value_parser!(PathBuf)),
                    ),
            )
            .subcommand(
                Command::new("restore").arg(Arg::new("pgdata").long("pgdata").required(true)),
            )
            .subcommand(Command::new("keygen"))
    }

    fn repository_ids() -> Vec<String> {
        vec!["repo".into(), "key_file".into(), "compression_level".into()]
    }

    /// Writes `text` as a file with `mode`; returns the directory and path.
    fn file_with(text: &str, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("walvault.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    fn apply(text: &str) -> Result<Command, Error> {
        apply_leaving_out(text, &[])
    }

    fn apply_leaving_out(text: &str, leave_out: &[&str]) -> Result<Command, Error> {
        let (_dir, path) = file_with(text, 0o600);
        let ids = repository_ids();
        let layout = Layout {
            repository: &ids,
            config_flag: "config",
            secret_flags: SECRETS,
        };
        ConfigFile::read(&path, SECRETS)?.apply(tree(), &layout, leave_out)
    }

    fn parse(cmd: Command, args: &[&str]) -> ArgMatches {
        let argv = std::iter::once("walvault").chain(args.iter().copied());
        cmd.try_get_matches_from(argv).unwrap()
    }

    fn value<'a>(m: &'a ArgMatches, id: &str) -> Option<&'a String> {
        m.subcommand().unwrap().1.get_one::<String>(id)
    }

    #[test]
    fn flags_beat_the_environment_beats_the_file_beats_defaults() {
        let cmd = apply(
            "log_level = \"debug\"\n[stream]\nslot = \"from-file\"\npath = \"from-file\"\n\
             upload_concurrency = 8\nsynchronous = true\n",
        )
        .unwrap();
        let m = parse(cmd.clone(), &["stream"]);
        assert_eq!(value(&m, "slot").unwrap(), "from-file");
        assert_eq!(m.get_one::<String>("log_level").unwrap(), "debug");
        let sub = m.subcommand().unwrap().1;
        assert_eq!(*sub.get_one::<usize>("upload_concurrency").unwrap(), 8);
        assert!(sub.get_flag("synchronous"));
        // The environment (PATH) wins over the file.
        assert_eq!(value(&m, "path").unwrap(), &std::env::var("PATH").unwrap());
        // Flags win over both.
        let m = parse(
            cmd,
            &[
                "--log-level",
                "warn",
                "stream",
                "--slot",
                "flag",
                "--path",
                "flag",
            ],
        );
        assert_eq!(value(&m, "slot").unwrap(), "flag");
        assert_eq!(value(&m, "path").unwrap(), "flag");
        assert_eq!(m.get_one::<String>("log_level").unwrap(), "warn");
        // Without the file, the built-in defaults.
        let m = parse(tree(), &["stream"]);
        assert_eq!(value(&m, "slot").unwrap(), "walvault");
    }

    #[test]
    fn a_command_table_wins_over_repository() {
        let cmd = apply(
            "[repository]\nrepo = \"file:///all\"\ncompression_level = 3\n\
             [wal_fetch]\nrepo = \"file:///wal-fetch\"\n",
        )
        .unwrap();
        let m = parse(cmd.clone(), &["stream"]);
        assert_eq!(value(&m, "repo").unwrap(), "file:///all");
        let m = parse(cmd.clone(), &["wal-fetch", "f"]);
        assert_eq!(value(&m, "repo").unwrap(), "file:///wal-fetch");
        let sub = m.subcommand().unwrap().1;
        assert_eq!(*sub.get_one::<i32>("compression_level").unwrap(), 3);
        // A command without the repository flags is untouched.
        parse(cmd, &["keygen"]);
    }

    #[test]
    fn file_settings_are_defaults_not_flags() {
        // Required flags are satisfied; conflicts and requirements do not
        // fire; a flag given replaces the file's conflicting choice.
        let cmd = apply(
            "[restore]\npgdata = \"/data\"\n[wal_fetch]\nprefetch = 4\n\
             target_time = \"2026-01-01 00:00:00+00\"\n",
        )
        .unwrap();
        let m = parse(cmd.clone(), &["restore"]);
        assert_eq!(value(&m, "pgdata").unwrap(), "/data");
        let m = parse(cmd.clone(), &["wal-fetch", "f", "--target-lsn", "0/1"]);
        assert_eq!(value(&m, "target_lsn").unwrap(), "0/1");
        assert_eq!(value(&m, "prefetch").unwrap(), "4");
        // The command line still cannot combine them.
        assert!(
            cmd.try_get_matches_from(["walvault", "wal-fetch", "f", "--prefetch", "2"])
                .is_err()
        );
    }

    #[test]
    fn lists_and_relative_paths() {
        let (dir, path) = file_with(
            "[wal_fetch]\nkey_file = \"keys/k\"\nmap = [\"a\", \"/b\"]\n",
            0o600,
        );
        let ids = repository_ids();
        let layout = Layout {
            repository: &ids,
            config_flag: "config",
            secret_flags: SECRETS,
        };
        let cmd = ConfigFile::read(&path, SECRETS)
            .unwrap()
            .apply(tree(), &layout, &[])
            .unwrap();
        let m = parse(cmd, &["wal-fetch", "f"]);
        let sub = m.subcommand().unwrap().1;
        assert_eq!(
            sub.get_one::<PathBuf>("key_file").unwrap(),
            &dir.path().join("keys/k")
        );
        let maps: Vec<&PathBuf> = sub.get_many::<PathBuf>("map").unwrap().collect();
        assert_eq!(maps, [&dir.path().join("a"), &PathBuf::from("/b")]);
    }

    #[test]
    fn settings_left_out_are_checked_but_not_applied() {
        let cmd = apply_leaving_out("[repository]\nkey_file = \"/k\"\n", &["key_file"]).unwrap();
        let m = parse(cmd, &["stream"]);
        assert!(
            m.subcommand()
                .unwrap()
                .1
                .get_one::<PathBuf>("key_file")
                .is_none()
        );
        assert!(apply_leaving_out("[repository]\nkey_fil = \"/k\"\n", &["key_file"]).is_err());
    }

    fn message(text: &str) -> String {
        apply(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_tables_and_keys_are_named() {
        let m = message("[stream]\nslto = \"x\"\n");
        assert!(
            m.contains("unknown key slto in [stream]") && m.contains("did you mean slot?"),
            "{m}"
        );
        let m = message("[stream]\nupload-concurrency = 2\n");
        assert!(m.contains("did you mean upload_concurrency?"), "{m}");
        let m = message("[stream]\nsomething = 1\n");
        assert!(
            m.contains("valid keys: ") && m.contains("upload_concurrency"),
            "{m}"
        );
        let m = message("[strem]\nslot = \"x\"\n");
        assert!(
            m.contains("unknown table [strem]") && m.contains("did you mean [stream]?"),
            "{m}"
        );
        let m = message("[nothing_like_it]\n");
        assert!(
            m.contains("tables: [repository], [stream], [wal_fetch], [restore], [keygen]"),
            "{m}"
        );
        let m = message("repo = \"file:///x\"\n");
        assert!(
            m.contains("unknown key repo in the top level") && m.contains("[repository]"),
            "{m}"
        );
        let m = message("[restore]\nspool = \"/s\"\n");
        assert!(m.contains("it is a setting of [wal_fetch]"), "{m}");
        let m = message("[keygen]\nslot = \"x\"\n");
        assert!(m.contains("[stream]"), "{m}");
        let m = message("[stream]\nkey = \"x\"\n");
        assert!(m.contains("it is a setting of [repository]"), "{m}");
        // Hidden flags, help and the config flag are not settings.
        assert!(message("[stream]\ninternal = \"x\"\n").contains("unknown key internal"));
        assert!(message("config = \"x\"\n").contains("unknown key config"));
        assert!(
            message("[repository.options]\naws_secret_acess_key = \"s\"\n")
                .contains("unknown key aws_secret_acess_key in [repository.options]")
        );
    }

    #[test]
    fn wrong_types_and_values_are_named() {
        let m = message("[stream]\nsynchronous = \"yes\"\n");
        assert!(
            m.contains("synchronous in [stream]")
                && m.contains("must be true or false, not a string"),
            "{m}"
        );
        let m = message("[stream]\nslot = [\"a\"]\n");
        assert!(
            m.contains("slot in [stream]") && m.contains("not a list"),
            "{m}"
        );
        let m = message("[stream]\nupload_concurrency = \"lots\"\n");
        assert!(
            m.contains("invalid upload_concurrency in [stream]") && m.contains("invalid digit"),
            "{m}"
        );
        let m = message("[stream]\ncheckpoint = \"quick\"\n");
        assert!(m.contains("expected one of fast, spread"), "{m}");
        let m = message("[repository]\ncompression_level = 1.5\n");
        assert!(
            m.contains("invalid compression_level in [repository]"),
            "{m}"
        );
        let m = message("stream = 1\n");
        assert!(
            m.contains("stream in the top level") && m.contains("must be a table"),
            "{m}"
        );
        let m = message("[restore]\npgdata = 2026-01-01T00:00:00Z\n");
        assert!(m.contains("date-time (quote it)"), "{m}");
    }

    #[test]
    fn secrets_are_checked_and_never_shown() {
        let good = format!(
            "[repository]\nkey = \"{KEY}\"\n[repository.options]\naws_secret_access_key = \"s3cr3t\"\n"
        );
        let (_dir, path) = file_with(&good, 0o600);
        let file = ConfigFile::read(&path, SECRETS).unwrap();
        let shown = format!("{file:?}");
        assert!(!shown.contains(KEY) && !shown.contains("s3cr3t"), "{shown}");
        assert_eq!(
            file.repository().option_pairs(),
            [("aws_secret_access_key".to_string(), "s3cr3t".to_string())]
        );
        // A list of keys, the first sealing.
        let two = format!("[repository]\nkey = [\"{KEY}\", \"{}\"]\n", "ab".repeat(32));
        assert!(apply(&two).is_ok());
        for bad in [
            format!("[repository]\nkey = \"{}\"\n", &KEY[1..]),
            format!("[repository]\nkey = \"{KEY}\"\nkey_file = \"/k\"\n"),
            // A syntax error on the key's line shows the place, not the line.
            format!("[repository]\nkey = \"{KEY}\n"),
            format!("[repository]\nkey = {KEY}\n"),
            format!("[stream]\npg = \"password={KEY}\"\nslot = [1, {{}}]\n"),
        ] {
            let m = message(&bad);
            assert!(!m.contains(&KEY[1..40]), "{m}");
        }
        assert!(message(&format!("[repository]\nkey = \"{KEY}\n")).contains("line 2 column"));
    }

    #[test]
    fn permissions() {
        let secret = "[stream]\npg = \"host=db password=pw\"\n";
        let plain = "[stream]\nslot = \"s\"\n";
        let read = |text: &str, mode| {
            let (_dir, path) = file_with(text, mode);
            ConfigFile::read(&path, SECRETS).map(drop)
        };
        assert!(read(secret, 0o600).is_ok());
        assert!(read(secret, 0o400).is_ok());
        let m = read(secret, 0o640).unwrap_err().to_string();
        assert!(
            m.contains("holds secrets (pg in [stream])") && m.contains("chmod 600"),
            "{m}"
        );
        assert!(!m.contains("password=pw"), "{m}");
        assert!(read(plain, 0o644).is_ok());
        let m = read(plain, 0o664).unwrap_err().to_string();
        assert!(m.contains("writable by group or others"), "{m}");
        let key = format!("[repository]\nkey = \"{KEY}\"\n");
        assert!(read(&key, 0o604).is_err());
        assert!(read("[repository.options]\naws_region = \"r\"\n", 0o644).is_err());
    }

    #[test]
    fn secrets_on_the_command_line_are_refused() {
        let m = parse(tree(), &["stream", "--pg", "host=db password=hunter2"]);
        let err = check_command_line(&m, SECRETS).unwrap_err().to_string();
        assert!(
            err.contains("--pg on the command line holds a password"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
        assert!(
            check_command_line(&parse(tree(), &["stream", "--pg", "host=db"]), SECRETS).is_ok()
        );
        // From the file (a default), it is no command line.
        let cmd = apply("[stream]\npg = \"host=db password=hunter2\"\n").unwrap();
        assert!(check_command_line(&parse(cmd, &["stream"]), SECRETS).is_ok());
    }

    #[test]
    fn every_setting_is_listed() {
        let ids = repository_ids();
        let layout = Layout {
            repository: &ids,
            config_flag: "config",
            secret_flags: SECRETS,
        };
        let names = setting_names(&tree(), &layout);
        for (table, key) in [
            (None, "log_level"),
            (Some("repository"), "key"),
            (Some("repository"), "options"),
            (Some("repository"), "repo"),
            (Some("wal_fetch"), "repo"),
            (Some("stream"), "upload_concurrency"),
        ] {
            assert!(
                names.contains(&(table.map(str::to_string), key.to_string())),
                "{table:?} {key}: {names:?}"
            );
        }
        assert!(
            !names
                .iter()
                .any(|(_, k)| k == "internal" || k == "config" || k == "file_name")
        );
    }
}
