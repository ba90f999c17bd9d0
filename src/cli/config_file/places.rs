//! Where each setting of the file belongs: the top level, `[repository]`
//! and one table per command, read off the clap command tree; and the help
//! for a key that belongs nowhere (or elsewhere).

use std::collections::BTreeMap;

use clap::builder::Resettable;
use clap::{Arg, ArgAction, Command};

use super::{
    KEY_SETTING, Layout, OPTIONS_TABLE, REPOSITORY_TABLE, SUGGESTION_SIMILARITY, TOP_LEVEL,
};

/// One command's table and settings.
pub(super) struct CommandPlace<'c> {
    /// The command's name (`wal-fetch`).
    pub(super) name: String,
    /// Its table (`wal_fetch`).
    pub(super) table: String,
    /// Key → flag.
    pub(super) settings: BTreeMap<String, &'c Arg>,
}

/// Every table of the file and the settings each may hold.
pub(super) struct Places<'c> {
    pub(super) top: BTreeMap<String, &'c Arg>,
    pub(super) repository: BTreeMap<String, &'c Arg>,
    pub(super) commands: Vec<CommandPlace<'c>>,
}

impl<'c> Places<'c> {
    pub(super) fn new(root: &'c Command, layout: &Layout<'_>) -> Self {
        let top = settings_of(root.get_arguments(), layout.config_flag);
        let commands: Vec<CommandPlace<'c>> = root
            .get_subcommands()
            .map(|sc| CommandPlace {
                name: sc.get_name().to_string(),
                table: sc.get_name().replace('-', "_"),
                settings: settings_of(
                    sc.get_arguments().filter(|a| !a.is_global_set()),
                    layout.config_flag,
                ),
            })
            .collect();
        let mut repository = BTreeMap::new();
        for command in &commands {
            for (key, arg) in &command.settings {
                if layout.repository.iter().any(|id| id == arg.get_id()) {
                    repository.entry(key.clone()).or_insert(*arg);
                }
            }
        }
        Places {
            top,
            repository,
            commands,
        }
    }

    /// The tables a file may have.
    pub(super) fn table_names(&self) -> Vec<String> {
        std::iter::once(REPOSITORY_TABLE.to_string())
            .chain(self.commands.iter().map(|c| c.table.clone()))
            .collect()
    }

    /// The keys of a table (`None`: the top level).
    pub(super) fn keys_of(&self, table: &str) -> Vec<String> {
        if table == REPOSITORY_TABLE {
            let mut keys: Vec<String> = self.repository.keys().cloned().collect();
            keys.extend([KEY_SETTING.to_string(), OPTIONS_TABLE.to_string()]);
            keys.sort();
            return keys;
        }
        self.commands
            .iter()
            .find(|c| c.table == table)
            .map(|c| c.settings.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The flag of a setting in a table.
    pub(super) fn arg(&self, table: &str, key: &str) -> Option<&'c Arg> {
        if table == REPOSITORY_TABLE {
            return self.repository.get(key).copied();
        }
        self.commands
            .iter()
            .find(|c| c.table == table)
            .and_then(|c| c.settings.get(key).copied())
    }

    /// Help for an unknown key in `table` (`None`: the top level): where it
    /// belongs, the closest key, or the valid keys.
    pub(super) fn hint(&self, key: &str, table: Option<&str>) -> String {
        // `flush-interval` is looked up as `flush_interval`.
        let key = key.replace('-', "_");
        let key = key.as_str();
        if table != Some(REPOSITORY_TABLE)
            && self.keys_of(REPOSITORY_TABLE).iter().any(|k| k == key)
        {
            return format!(" (it is a setting of {})", label(REPOSITORY_TABLE));
        }
        let elsewhere: Vec<String> = std::iter::once(None)
            .chain(self.table_names().into_iter().map(Some))
            .filter(|t| t.as_deref() != table)
            .filter(|t| match t {
                None => self.top.contains_key(key),
                Some(t) => self.keys_of(t).iter().any(|k| k == key),
            })
            .map(|t| t.map_or_else(|| TOP_LEVEL.to_string(), |t| label(&t)))
            .collect();
        if !elsewhere.is_empty() {
            return format!(" (it is a setting of {})", elsewhere.join(", "));
        }
        let here: Vec<String> = match table {
            None => self.top.keys().cloned().collect(),
            Some(t) => self.keys_of(t),
        };
        match suggestion(key, &here) {
            Some(s) => format!(" (did you mean {s}?)"),
            None if here.is_empty() => " (this table takes no settings)".into(),
            None => format!(" (valid keys: {})", here.join(", ")),
        }
    }
}

/// The settings among `args`: long flags that are not hidden, help, version
/// or the configuration file itself, by key (long name with `_`).
fn settings_of<'c>(
    args: impl Iterator<Item = &'c Arg>,
    config_flag: &str,
) -> BTreeMap<String, &'c Arg> {
    args.filter(|a| {
        !a.is_hide_set()
            && a.get_id() != config_flag
            && !matches!(
                a.get_action(),
                ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
            )
    })
    .filter_map(|a| a.get_long().map(|l| (l.replace('-', "_"), a)))
    .collect()
}

/// `arg` with `values` from the file as its default, if it has any. The
/// file gives the value, so the flag is no longer required.
pub(super) fn with_default(arg: Arg, defaults: &BTreeMap<String, Vec<String>>) -> Arg {
    match defaults.get(arg.get_id().as_str()) {
        Some(values) => arg
            .default_values(values.clone())
            .required(false)
            .required_unless_present(Resettable::Reset),
        None => arg,
    }
}

pub(super) fn label(table: &str) -> String {
    format!("[{table}]")
}

pub(super) fn bracketed(names: &[String]) -> String {
    names
        .iter()
        .map(|n| label(n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The candidate closest to `key`, if it is close enough.
pub(super) fn suggestion(key: &str, candidates: &[String]) -> Option<String> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(key, c), c))
        .filter(|(score, _)| *score > SUGGESTION_SIMILARITY)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.clone())
}
