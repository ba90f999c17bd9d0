//! Where each tablespace of a backup is restored: its `--tablespace-map`
//! directory or its original location, which must be empty; and making the
//! restored cluster find it there.

use std::path::{Path, PathBuf};

use crate::format::backup::BackupMetadata;

/// A tablespace directory choice that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TablespaceError {
    /// Not `OID=DIR` with an absolute directory.
    #[error("invalid --tablespace-map {0:?}: use OID=DIR with a numeric OID and an absolute DIR")]
    Malformed(String),
    /// The backup has no tablespace of that OID.
    #[error("invalid --tablespace-map {oid:?}: backup {backup} has no tablespace with this OID")]
    Unknown {
        /// The OID given.
        oid: String,
        /// The backup.
        backup: String,
    },
    /// The directory holds files.
    #[error(
        "invalid --tablespace-map {dir:?}: tablespace {oid} would be restored into {dir}, which is not empty; map it to an empty directory with --tablespace-map {oid}=DIR"
    )]
    NotEmpty {
        /// The tablespace.
        oid: u32,
        /// The directory.
        dir: String,
    },
}

/// Parses `OID=DIR` mappings.
///
/// # Errors
/// [`TablespaceError::Malformed`] for anything else.
pub fn parse_map(items: &[String]) -> Result<Vec<(String, PathBuf)>, TablespaceError> {
    let mut out = Vec::new();
    for m in items {
        let (oid, dir) = m
            .split_once('=')
            .ok_or_else(|| TablespaceError::Malformed(m.clone()))?;
        if oid.parse::<u32>().is_err() || !Path::new(dir).is_absolute() {
            return Err(TablespaceError::Malformed(m.clone()));
        }
        out.push((oid.to_string(), PathBuf::from(dir)));
    }
    Ok(out)
}

/// Whether `dir` is absent or empty.
pub fn is_empty_dir(dir: &Path) -> bool {
    !dir.exists()
        || std::fs::read_dir(dir)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
}

/// Every tablespace of `backup` and the empty directory it goes to: its
/// mapping, or where it was on the source.
///
/// # Errors
/// A mapping for a tablespace the backup lacks, or a directory in use.
pub fn choose_dirs(
    backup: &BackupMetadata,
    map: &[(String, PathBuf)],
) -> Result<Vec<(String, PathBuf)>, TablespaceError> {
    for (oid, _) in map {
        if !backup
            .tablespaces
            .iter()
            .any(|t| t.oid.map(|o| o.to_string()).as_ref() == Some(oid))
        {
            return Err(TablespaceError::Unknown {
                oid: oid.clone(),
                backup: backup.id.clone(),
            });
        }
    }
    let mut dirs = Vec::new();
    for t in &backup.tablespaces {
        let Some(oid) = t.oid else { continue };
        let dir = map
            .iter()
            .find(|(o, _)| *o == oid.to_string())
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| PathBuf::from(t.location.clone().unwrap_or_default()));
        if !is_empty_dir(&dir) {
            return Err(TablespaceError::NotEmpty {
                oid,
                dir: dir.display().to_string(),
            });
        }
        dirs.push((oid.to_string(), dir));
    }
    Ok(dirs)
}

/// Makes the restored cluster find each tablespace in its directory: the
/// `tablespace_map` file of the backup (PostgreSQL makes the links from it
/// when recovery starts), or the `pg_tblspc` links themselves.
///
/// # Errors
/// File system errors.
pub fn point_tablespaces(pgdata: &Path, dirs: &[(String, PathBuf)]) -> std::io::Result<()> {
    let map_path = pgdata.join("tablespace_map");
    if let Ok(text) = std::fs::read_to_string(&map_path) {
        let mut out = String::new();
        for line in text.lines() {
            let oid = line.split(' ').next().unwrap_or("");
            match dirs.iter().find(|(o, _)| o == oid) {
                Some((_, dir)) => {
                    // tablespace_map escapes with a backslash.
                    let mut escaped = String::new();
                    for c in dir.display().to_string().chars() {
                        if matches!(c, '\\' | '\n' | '\r') {
                            escaped.push('\\');
                        }
                        escaped.push(c);
                    }
                    out.push_str(&format!("{oid} {escaped}\n"));
                }
                None => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        std::fs::write(&map_path, out)?;
        return Ok(());
    }
    for (oid, dir) in dirs {
        let link = pgdata.join("pg_tblspc").join(oid);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link)?;
        }
        std::os::unix::fs::symlink(dir, &link)?;
    }
    Ok(())
}
