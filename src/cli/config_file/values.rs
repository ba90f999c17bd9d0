//! A setting's TOML value as the text its flag takes, checked by the
//! flag's own parser.

use std::ffi::OsString;

use clap::{Arg, ArgAction, Command};

/// Checks `value` with the parser of `arg`; the reason when refused.
pub(super) fn check_value(arg: &Arg, value: &str) -> Result<(), String> {
    let probe = Arg::new("value")
        .long("value")
        .action(ArgAction::Set)
        .allow_hyphen_values(true)
        .value_parser(arg.get_value_parser().clone());
    Command::new("walvault")
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(probe)
        .try_get_matches_from([OsString::from(format!("--value={value}"))])
        .map(drop)
        .map_err(|err| {
            use clap::error::{ContextKind, ContextValue};
            if let Some(source) = std::error::Error::source(&err) {
                return source.to_string();
            }
            if let Some(ContextValue::Strings(valid)) = err.get(ContextKind::ValidValue) {
                return format!("expected one of {}", valid.join(", "));
            }
            err.kind().to_string()
        })
}

/// A scalar TOML value as the text a flag takes.
pub(super) fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(n) => Some(n.to_string()),
        toml::Value::Float(x) => Some(x.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Datetime(_) | toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

pub(super) fn type_name(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time (quote it)",
        toml::Value::Array(_) => "a list",
        toml::Value::Table(_) => "a table",
    }
}
