//! What can be wrong with a configuration file. No message shows a value
//! that may be secret: a syntax error names the line and column only.

/// A configuration file problem (exit code 2). No message shows a value
/// that may be secret.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("cannot read configuration file {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Others can change the file.
    #[error(
        "configuration file {path} is writable by group or others (mode {mode:04o}): whoever can change it chooses the repository and the key; run chmod go-w {path}"
    )]
    Writable {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// Others can read the secrets in the file.
    #[error(
        "configuration file {path} holds secrets ({secrets}) but others may read it (mode {mode:04o}); run chmod 600 {path}"
    )]
    Readable {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
        /// Which settings are secret.
        secrets: String,
    },
    /// The file is not TOML. The message names the place, never the text.
    #[error("configuration file {path}, line {line} column {column}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A table no command has.
    #[error("unknown table [{table}] in configuration file {path}{hint}")]
    UnknownTable {
        /// The file.
        path: String,
        /// The table.
        table: String,
        /// The closest table, or the valid ones.
        hint: String,
    },
    /// A key that is no setting of its table.
    #[error("unknown key {key} in {table} of configuration file {path}{hint}")]
    UnknownKey {
        /// The file.
        path: String,
        /// Where: `[stream]`, or `the top level`.
        table: String,
        /// The key.
        key: String,
        /// The closest key, where it belongs, or the valid ones.
        hint: String,
    },
    /// A value of the wrong TOML type.
    #[error("{key} in {table} of configuration file {path} must be {expected}, not {found}")]
    WrongType {
        /// The file.
        path: String,
        /// Where.
        table: String,
        /// The key.
        key: String,
        /// What it must be.
        expected: &'static str,
        /// What it is.
        found: &'static str,
    },
    /// A value its flag refuses.
    #[error("invalid {key} in {table} of configuration file {path}: {reason}")]
    InvalidValue {
        /// The file.
        path: String,
        /// Where.
        table: String,
        /// The key.
        key: String,
        /// Why (never the value of a secret).
        reason: String,
    },
    /// A secret given on the command line, where every user of the machine
    /// can read it.
    #[error(
        "--{flag} on the command line holds {what}, which every user of this machine can read there (ps, /proc/PID/cmdline): {instead}"
    )]
    SecretOnCommandLine {
        /// The flag, without dashes.
        flag: String,
        /// What it holds.
        what: &'static str,
        /// What to do instead.
        instead: &'static str,
    },
}

/// A TOML syntax error by line and column only: the toml crate's own
/// rendering quotes the line, which may hold a secret.
pub(super) fn syntax_error(path: &str, text: &str, err: &toml::de::Error) -> Error {
    let at = err.span().map_or(0, |s| s.start);
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Error::Syntax {
        path: path.into(),
        line,
        column,
        message: err.message().trim().to_string(),
    }
}
