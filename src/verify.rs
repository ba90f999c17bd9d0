//! `walvault verify`: reads every object of a backup back, opens it, checks
//! the part checksums, walks the tar streams against the server's manifest
//! (each file's size and CRC32C) and checks that the WAL range is present.
//!
//! Every problem is reported with the object and file it concerns; nothing
//! stops at the first failure.

use std::collections::BTreeMap;

use futures::StreamExt;
use serde::Serialize;

use crate::backup::tar::TarWalker;
use crate::format::backup::{
    BackupMetadata, ManifestFile, check_against_manifest, parse_server_manifest,
};
use crate::storage::{self, Repository, layout};
use crate::wal::inventory::WalInventory;

/// Parts fetched ahead while verifying.
const FETCH_AHEAD: usize = 4;

/// One problem found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// The object concerned, if one.
    pub object: Option<String>,
    /// The file inside the backup concerned, if one.
    pub file: Option<String>,
    /// What is wrong.
    pub problem: String,
}

/// The result for one backup.
#[derive(Clone, Debug, Serialize)]
pub struct BackupReport {
    /// Backup id.
    pub id: String,
    /// Parts read and opened.
    pub parts_checked: usize,
    /// Files compared with the manifest.
    pub files_checked: usize,
    /// Problems; empty means the backup verified clean.
    pub failures: Vec<Failure>,
}

fn fail(object: Option<&str>, file: Option<&str>, problem: impl Into<String>) -> Failure {
    Failure {
        object: object.map(str::to_string),
        file: file.map(str::to_string),
        problem: problem.into(),
    }
}

/// Verifies one backup.
///
/// # Errors
/// Only when the store cannot be listed; damage is reported in the report.
pub async fn verify_backup(
    repo: &Repository,
    meta: &BackupMetadata,
) -> Result<BackupReport, storage::Error> {
    let mut report = BackupReport {
        id: meta.id.clone(),
        parts_checked: 0,
        files_checked: 0,
        failures: Vec::new(),
    };
    let manifest_key = layout::backup_manifest_key(&meta.id);
    let mut expected: Option<BTreeMap<String, ManifestFile>> =
        match repo.get_opened(&manifest_key).await {
            Ok(Some(bytes)) => match parse_server_manifest(&bytes) {
                Ok(files) => Some(files.into_iter().map(|f| (f.path.clone(), f)).collect()),
                Err(e) => {
                    report
                        .failures
                        .push(fail(Some(&manifest_key), None, e.to_string()));
                    None
                }
            },
            Ok(None) => {
                report.failures.push(fail(
                    Some(&manifest_key),
                    None,
                    "the server's manifest is missing",
                ));
                None
            }
            Err(e) => {
                report
                    .failures
                    .push(fail(Some(&manifest_key), None, crate::error::chain(&e)));
                None
            }
        };

    let server_zstd = match meta.server_compression.as_deref() {
        None => false,
        Some("zstd") => true,
        Some(other) => {
            report.failures.push(fail(
                Some(&layout::backup_json_key(&meta.id)),
                None,
                format!("unknown server compression {other:?}"),
            ));
            return Ok(report);
        }
    };
    for ts in &meta.tablespaces {
        let mut walker = Some(TarWalker::new());
        let mut decoder = server_zstd
            .then(|| zstd::stream::write::Decoder::new(Vec::new()).expect("zstd context"));
        let keys: Vec<(String, &crate::format::backup::PartRecord)> = ts
            .parts
            .iter()
            .map(|p| (layout::backup_part_key(&meta.id, &ts.name, p.index), p))
            .collect();
        let mut fetched = futures::stream::iter(keys.into_iter().map(|(key, rec)| async move {
            let r = repo.get_opened(&key).await;
            (key, rec, r)
        }))
        .buffered(FETCH_AHEAD);
        while let Some((key, rec, result)) = fetched.next().await {
            report.parts_checked += 1;
            let bytes = match result {
                Ok(Some(b)) => b,
                Ok(None) => {
                    report
                        .failures
                        .push(fail(Some(&key), None, "part is missing"));
                    walker = None;
                    continue;
                }
                Err(e) => {
                    report
                        .failures
                        .push(fail(Some(&key), None, crate::error::chain(&e)));
                    walker = None;
                    continue;
                }
            };
            let crc = format!("{:08x}", crc32c::crc32c(&bytes));
            if bytes.len() as u64 != rec.plain_bytes || crc != rec.crc32c {
                report.failures.push(fail(
                    Some(&key),
                    None,
                    format!(
                        "part holds {} bytes with CRC32C {crc}, backup.json says {} bytes with {}",
                        bytes.len(),
                        rec.plain_bytes,
                        rec.crc32c
                    ),
                ));
                walker = None;
                continue;
            }
            let Some(w) = walker.as_mut() else { continue };
            let tar_bytes = match decoder.as_mut() {
                None => bytes,
                Some(d) => {
                    use std::io::Write;
                    if let Err(e) = d.write_all(&bytes).and_then(|()| d.flush()) {
                        report.failures.push(fail(
                            Some(&key),
                            None,
                            format!("server-compressed stream: {e}"),
                        ));
                        walker = None;
                        continue;
                    }
                    std::mem::take(d.get_mut())
                }
            };
            match w.feed(&tar_bytes) {
                Ok(files) => {
                    for f in files {
                        report.files_checked += 1;
                        let path = match ts.oid {
                            Some(oid) => format!("pg_tblspc/{oid}/{}", f.path),
                            None => f.path.clone(),
                        };
                        check_file(
                            &mut expected,
                            &path,
                            f.size,
                            f.crc32c,
                            &key,
                            &mut report.failures,
                        );
                    }
                }
                Err(e) => {
                    report.failures.push(fail(Some(&key), None, e.to_string()));
                    walker = None;
                }
            }
        }
        match walker {
            Some(w) => {
                if let Err(e) = w.finish() {
                    report
                        .failures
                        .push(fail(None, None, format!("tablespace {}: {e}", ts.name)));
                }
            }
            None => report.failures.push(fail(
                None,
                None,
                format!(
                    "tablespace {}: files after the damaged part were not checked",
                    ts.name
                ),
            )),
        }
    }
    if let Some(rest) = expected {
        for (path, _) in rest {
            report.failures.push(fail(
                None,
                Some(&path),
                "listed in the server's manifest but not in the backup",
            ));
        }
    }

    // The WAL range.
    let range = &meta.wal_range;
    let inv = WalInventory::scan(repo, meta.wal_segment_size).await?;
    if let Some(missing) = inv.first_missing(
        range.timeline,
        range.start_lsn,
        range.stop_lsn,
        meta.wal_segment_size,
    ) {
        report.failures.push(fail(
            Some(&layout::segment_key(missing, meta.wal_segment_size)),
            None,
            format!(
                "WAL segment {} of the backup's range {}..{} is missing",
                missing.to_file_name(meta.wal_segment_size),
                range.start_lsn,
                range.stop_lsn
            ),
        ));
    }
    Ok(report)
}

fn check_file(
    expected: &mut Option<BTreeMap<String, ManifestFile>>,
    path: &str,
    size: u64,
    crc: u32,
    part_key: &str,
    failures: &mut Vec<Failure>,
) {
    if let Some(expected) = expected.as_mut()
        && let Err(problem) = check_against_manifest(expected, path, size, crc)
    {
        failures.push(fail(Some(part_key), Some(path), problem));
    }
}
