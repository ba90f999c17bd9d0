//! `walvault verify`: reads every object of a backup back, opens it, checks
//! the part checksums, walks the tar streams against the server's manifest
//! (each file's size and CRC32C), and opens every WAL segment and history
//! file of the backup's range; with `--wal`, every WAL object of the
//! archive, and the gaps in it.
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
use crate::format::manifest::RepositoryManifest;
use crate::format::wal_pages::{PageExpect, check_pages, page_magic};
use crate::lsn::{SegmentName, TimelineId, WalFileName};
use crate::progress::Progress;
use crate::storage::{self, Repository, layout};
use crate::wal::fetch::{FetchedWal, fetch_wal_file};
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
    /// WAL segments (and history files) of the backup's range opened.
    pub wal_files_checked: usize,
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
        wal_files_checked: 0,
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

    // The WAL range, in the backup's system (its own after an upgrade).
    let system_repo = repo.for_system(&meta.system_identifier)?;
    let repo = &system_repo;
    let range = &meta.wal_range;
    let inv = WalInventory::scan(repo, meta.wal_segment_size).await?;
    if let Some(missing) = inv.first_missing(
        range.timeline,
        range.start_lsn,
        range.stop_lsn,
        meta.wal_segment_size,
    ) {
        report.failures.push(fail(
            Some(&repo.stored_key(&layout::segment_key(missing, meta.wal_segment_size))),
            None,
            format!(
                "WAL segment {} of the backup's range {}..{} is missing",
                missing.to_file_name(meta.wal_segment_size),
                range.start_lsn,
                range.stop_lsn
            ),
        ));
    }
    // Every WAL file of the range opens (decrypted, checked), not only exists.
    let size = meta.wal_segment_size;
    let first = range.start_lsn.segment_number(size);
    let last = crate::lsn::Lsn(range.stop_lsn.0.saturating_sub(1))
        .max(range.start_lsn)
        .segment_number(size);
    let mut files: Vec<WalFileName> = (first..=last)
        .map(|number| {
            WalFileName::Segment(SegmentName {
                timeline: range.timeline,
                number,
            })
        })
        .collect();
    if range.timeline != TimelineId::FIRST {
        files.push(WalFileName::History(range.timeline));
    }
    let cluster = Cluster {
        system_identifier: meta.system_identifier.parse().unwrap_or(0),
        pg_major: meta.pg_major,
    };
    let (checked, failures) = open_wal_files(repo, &inv, files, size, &cluster, None).await;
    report.wal_files_checked = checked;
    report.failures.extend(failures);
    Ok(report)
}

/// The result of `verify --wal`: every WAL object of the archive opened.
#[derive(Clone, Debug, Serialize)]
pub struct WalReport {
    /// Segments and history files opened.
    pub files_checked: usize,
    /// Problems, each naming its object.
    pub failures: Vec<Failure>,
}

/// Opens every WAL segment and history file of the archive, and reports the
/// segments missing between a timeline's first and last.
///
/// # Errors
/// Only when the store cannot be listed.
pub async fn verify_wal(
    repo: &Repository,
    manifest: &RepositoryManifest,
    progress: &Progress,
) -> Result<WalReport, storage::Error> {
    let segment_size_bytes = manifest.wal_segment_size;
    let cluster = Cluster {
        system_identifier: manifest.system_identifier.parse().unwrap_or(0),
        pg_major: manifest.pg_major,
    };
    let inv = WalInventory::scan(repo, segment_size_bytes).await?;
    let mut files = Vec::new();
    let mut failures = Vec::new();
    for (&timeline, t) in &inv.timelines {
        let numbers: std::collections::BTreeSet<u64> =
            t.complete.iter().chain(t.deltas.keys()).copied().collect();
        files.extend(
            numbers
                .into_iter()
                .map(|number| WalFileName::Segment(SegmentName { timeline, number })),
        );
        for number in t.missing_segments() {
            let seg = SegmentName { timeline, number };
            failures.push(fail(
                Some(&repo.stored_key(&layout::segment_key(seg, segment_size_bytes))),
                None,
                format!(
                    "WAL segment {} is missing: the archive has a gap on timeline {timeline}; restoring across it needs a base backup taken after it",
                    seg.to_file_name(segment_size_bytes)
                ),
            ));
        }
    }
    files.extend(inv.histories.iter().map(|&t| WalFileName::History(t)));
    progress.set_total(files.len() as u64);
    let (files_checked, opened) = open_wal_files(
        repo,
        &inv,
        files,
        segment_size_bytes,
        &cluster,
        Some(progress),
    )
    .await;
    failures.extend(opened);
    Ok(WalReport {
        files_checked,
        failures,
    })
}

/// The cluster whose WAL a repository holds, for reading its pages.
struct Cluster {
    system_identifier: u64,
    pg_major: u32,
}

/// Opens each file (a segment whole or from its deltas, or a history file)
/// and reads each segment's pages up to its valid end as WAL
/// ([`crate::format::wal_pages`]); returns how many were opened and the problems,
/// each naming its object.
async fn open_wal_files(
    repo: &Repository,
    inv: &WalInventory,
    files: Vec<WalFileName>,
    segment_size_bytes: u64,
    cluster: &Cluster,
    progress: Option<&Progress>,
) -> (usize, Vec<Failure>) {
    let mut fetched = futures::stream::iter(files.into_iter().map(|f| async move {
        let r = fetch_wal_file(repo, f, segment_size_bytes).await;
        (f, r)
    }))
    .buffered(FETCH_AHEAD);
    let (mut checked, mut failures) = (0, Vec::new());
    while let Some((file, result)) = fetched.next().await {
        checked += 1;
        if let Some(p) = progress {
            p.set_done(checked as u64);
        }
        let key = repo.stored_key(&match file {
            WalFileName::History(t) => layout::history_key(t),
            WalFileName::Segment(seg) => {
                let complete = inv
                    .timelines
                    .get(&seg.timeline)
                    .is_some_and(|t| t.complete.contains(&seg.number));
                if complete {
                    layout::segment_key(seg, segment_size_bytes)
                } else {
                    layout::delta_prefix(seg, segment_size_bytes)
                }
            }
        });
        match result {
            Ok(Some(fetched)) => {
                let (bytes, valid) = match &fetched {
                    FetchedWal::Complete(b) => (b, b.len() as u64),
                    FetchedWal::Partial { bytes, known } => (bytes, *known),
                    FetchedWal::History(_) => continue,
                };
                let WalFileName::Segment(seg) = file else {
                    continue;
                };
                let expect = PageExpect {
                    timeline: seg.timeline.get(),
                    start: seg.start_lsn(segment_size_bytes).0,
                    segment_size_bytes,
                    system_identifier: cluster.system_identifier,
                    magic: page_magic(cluster.pg_major),
                };
                for problem in check_pages(bytes, valid, &expect) {
                    failures.push(fail(Some(&key), None, problem));
                }
            }
            Ok(None) => failures.push(fail(Some(&key), None, "not in the archive")),
            Err(e) => failures.push(fail(Some(&key), None, crate::error::chain(&e))),
        }
    }
    (checked, failures)
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
