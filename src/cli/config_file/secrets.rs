//! The secrets of `[repository]` (the key and the store options), which
//! never become flags, and the list of secrets a file holds, for its
//! permission check.

use std::collections::BTreeMap;

use secrecy::SecretString;

use super::places::label;
use super::values::{scalar, type_name};
use super::{
    Error, KEY_FILE_SETTING, KEY_SETTING, OPTIONS_TABLE, REPOSITORY_TABLE, SecretFlag, TOP_LEVEL,
};

/// The repository's secrets from `[repository]`: they never become flags.
#[derive(Clone, Default)]
pub struct RepositorySecrets {
    /// The master key(s) as a key file holds them: 64 hexadecimal characters
    /// per line, the first seals new objects.
    pub key: Option<SecretString>,
    /// Store options (object_store configuration keys such as
    /// `aws_access_key_id`), as in the repository settings file.
    pub options: BTreeMap<String, String>,
}

impl std::fmt::Debug for RepositorySecrets {
    /// Shows the option names only: the key and option values (credentials)
    /// never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositorySecrets")
            .field("key", &self.key.as_ref().map(|_| "(hidden)"))
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl RepositorySecrets {
    /// The store options as name and value pairs.
    pub fn option_pairs(&self) -> Vec<(String, String)> {
        self.options
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Reads `key` and `[repository.options]` from the file's table.
    pub(super) fn from_file(path: &str, file: &toml::Table) -> Result<Self, Error> {
        let table_label = label(REPOSITORY_TABLE);
        let Some(value) = file.get(REPOSITORY_TABLE) else {
            return Ok(Self::default());
        };
        let Some(table) = value.as_table() else {
            return Err(Error::WrongType {
                path: path.into(),
                table: TOP_LEVEL.into(),
                key: REPOSITORY_TABLE.into(),
                expected: "a table",
                found: type_name(value),
            });
        };
        let wrong = |key: &str, expected, value: &toml::Value| Error::WrongType {
            path: path.into(),
            table: table_label.clone(),
            key: key.into(),
            expected,
            found: type_name(value),
        };
        let key = match table.get(KEY_SETTING) {
            None => None,
            Some(value) => {
                let expected = "a string of 64 hexadecimal characters, or a list of them";
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Array(items) => items
                        .iter()
                        .map(|i| i.as_str().map(str::to_string))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| wrong(KEY_SETTING, expected, value))?
                        .join("\n"),
                    other => return Err(wrong(KEY_SETTING, expected, other)),
                };
                let invalid = |reason: String| Error::InvalidValue {
                    path: path.into(),
                    table: table_label.clone(),
                    key: KEY_SETTING.into(),
                    reason,
                };
                if table.contains_key(KEY_FILE_SETTING) {
                    return Err(invalid(format!(
                        "give either {KEY_SETTING} or {KEY_FILE_SETTING}, not both"
                    )));
                }
                // The key error never shows the key.
                crate::format::Keyring::from_key_file_text(&text, &format!("{table_label} key"))
                    .map_err(|e| invalid(e.to_string()))?;
                Some(SecretString::from(text))
            }
        };
        let mut options = BTreeMap::new();
        if let Some(value) = table.get(OPTIONS_TABLE) {
            let Some(entries) = value.as_table() else {
                return Err(wrong(OPTIONS_TABLE, "a table", value));
            };
            let options_label = label(&format!("{REPOSITORY_TABLE}.{OPTIONS_TABLE}"));
            for (name, v) in entries {
                if !crate::storage::is_store_option(name) {
                    return Err(Error::UnknownKey {
                        path: path.into(),
                        table: options_label,
                        key: name.clone(),
                        hint: " (object_store options such as aws_endpoint, aws_region, \
                               aws_access_key_id, google_service_account, \
                               azure_storage_account_name)"
                            .into(),
                    });
                }
                let text = scalar(v).ok_or_else(|| Error::WrongType {
                    path: path.into(),
                    table: options_label.clone(),
                    key: name.clone(),
                    expected: "a string",
                    found: type_name(v),
                })?;
                options.insert(name.clone(), text);
            }
        }
        Ok(RepositorySecrets { key, options })
    }
}

/// Which settings of the file are secrets, for the permission check.
pub(super) fn secrets_held(
    file: &toml::Table,
    repository: &RepositorySecrets,
    secret_flags: &[SecretFlag],
) -> Vec<String> {
    let mut held = Vec::new();
    if repository.key.is_some() {
        held.push(format!("{KEY_SETTING} in {}", label(REPOSITORY_TABLE)));
    }
    if !repository.options.is_empty() {
        held.push(label(&format!("{REPOSITORY_TABLE}.{OPTIONS_TABLE}")));
    }
    let tables = std::iter::once((TOP_LEVEL.to_string(), file)).chain(
        file.iter()
            .filter_map(|(name, v)| v.as_table().map(|t| (label(name), t))),
    );
    for (table, entries) in tables {
        for flag in secret_flags {
            if entries
                .get(flag.id)
                .and_then(toml::Value::as_str)
                .is_some_and(flag.holds_secret)
            {
                held.push(format!("{} in {table}", flag.id));
            }
        }
    }
    held
}
