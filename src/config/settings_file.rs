//! The repository settings file: the repository URL, its keys and the
//! store options in one JSON file (mode 0600), for commands that run
//! without the user's environment, as `restore_command` does. Written by
//! `restore` and read by every command given `--repo-config`.

use std::path::Path;

use super::Error;
use crate::lsn::{Lsn, TimelineId};

/// A repository settings file (`--repo-config`): everything needed to reach
/// and open the repository without the environment, as `restore_command`
/// runs. It may hold a key and credentials, so it must be mode 0600 (or
/// stricter).
#[derive(Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfigFile {
    /// Format version (1).
    pub version: u32,
    /// The repository URL.
    pub repo: String,
    /// The master key(s), if the repository is encrypted: 64 hex characters
    /// each, one per line, as in a key file.
    #[serde(default)]
    pub key: Option<String>,
    /// object_store options (e.g. `aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`, `aws_secret_access_key`, `aws_allow_http`).
    #[serde(default)]
    pub options: std::collections::BTreeMap<String, String>,
    /// What the restore that wrote this file planned to replay: inside it,
    /// a WAL file the archive lacks stops recovery instead of ending it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<PlannedWal>,
}

/// The WAL a restore planned: the timelines replay crosses and the end of
/// the archive on the last one when the plan was made.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedWal {
    /// The timelines, from the backup's to the target's.
    pub path: Vec<PlannedStep>,
    /// The end of the WAL held without a hole on the path.
    pub end: Lsn,
    /// The system whose WAL replay reads: the backup's (one held before an
    /// upgrade has its own WAL); absent in files of earlier releases, which
    /// read the current system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<String>,
}

/// One timeline of a [`PlannedWal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PlannedStep {
    /// The timeline.
    pub timeline: TimelineId,
    /// Where replay enters it.
    pub begin: Lsn,
    /// Where it forks to the next one (`None` for the last).
    pub end: Option<Lsn>,
}

impl std::fmt::Debug for RepositoryConfigFile {
    /// Shows the URL and the option names only: the key and option values
    /// (credentials) never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepositoryConfigFile")
            .field("version", &self.version)
            .field("repo", &self.repo)
            .field("key", &self.key.as_ref().map(|_| "(hidden)"))
            .field("options", &self.options.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Reads a repository settings file, refusing one that others can read.
///
/// # Errors
/// When it cannot be read, is readable by group or others, or does not parse.
pub fn load_repository_config(path: &std::path::Path) -> Result<RepositoryConfigFile, Error> {
    use std::os::unix::fs::PermissionsExt;
    let invalid = |reason: String| Error::Invalid {
        what: "repository settings file",
        value: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| invalid(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(invalid(format!(
            "it may hold a key and credentials, so it must not be readable by others (mode {mode:04o}; run chmod 600)"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    let cfg: RepositoryConfigFile =
        serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    if cfg.version != 1 {
        return Err(invalid(format!("version {} is not supported", cfg.version)));
    }
    Ok(cfg)
}

/// The settings a command run with `url`, the key file text `key` and the
/// environment `vars` uses, as a settings file would hold them.
///
/// # Errors
/// When the URL does not parse.
pub fn from_environment(
    url: &str,
    key: Option<String>,
    vars: &[(String, String)],
) -> Result<RepositoryConfigFile, Error> {
    let options = crate::storage::environment_options(url, vars)?
        .into_iter()
        .collect();
    Ok(RepositoryConfigFile {
        version: 1,
        repo: url.to_string(),
        key,
        options,
        recovery: None,
    })
}

/// Writes a settings file with mode 0600 (from its creation on), synced,
/// replacing one left by an earlier restore.
///
/// # Errors
/// When the file cannot be written.
pub fn write_repository_config(path: &Path, cfg: &RepositoryConfigFile) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(cfg).expect("settings serialize");
    crate::local_file::write_private(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_settings_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("settings.json");
        let vars = vec![
            ("AWS_REGION".to_string(), "us-east-1".to_string()),
            (
                "AWS_ENDPOINT_URL".to_string(),
                "http://127.0.0.1:1".to_string(),
            ),
        ];
        let cfg = from_environment("s3://b/p", Some("ab".repeat(32)), &vars).unwrap();
        write_repository_config(&path, &cfg).unwrap();
        let back = load_repository_config(&path).unwrap();
        assert_eq!(back.repo, "s3://b/p");
        assert_eq!(back.options["aws_endpoint"], "http://127.0.0.1:1");
        let shown = format!("{back:?}");
        assert!(
            !shown.contains(&"ab".repeat(32)) && !shown.contains("127.0.0.1:1"),
            "{shown}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A second restore to the same place replaces it.
        write_repository_config(&path, &cfg).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
