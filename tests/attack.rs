//! The archive under attack: objects moved, swapped, forged, truncated or
//! edited in the bucket by someone who holds no key; a crafted tar stream;
//! a store that fails during recovery. Each must be refused with the object
//! named, and a refused restore writes nothing.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use walvault::format::SealOptions;
use walvault::format::chunk::{Binding, seal_bound};
use walvault::lsn::{SegmentName, TimelineId};
use walvault::storage::{Repository, layout};

use crate::pg_test;
use crate::support::archive::wait_archived;
use crate::support::pg::{PgCluster, PgOptions, pg_program};
use crate::support::process::{KEY, RepoEnv, StreamProcess};
use crate::support::s3::{S3Server, SECRET_KEY};

const MIB: u64 = 1 << 20;
const PREFIX: &str = "attack";

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A PostgreSQL 15 cluster, an encrypted archive with two backups (several
/// 1 MiB parts each) and the WAL around them; the stream has stopped.
pub(crate) struct Archive {
    pub(crate) pg: PgCluster,
    s3: S3Server,
    pub(crate) env: RepoEnv,
    pub(crate) repo: Repository,
    pub(crate) backups: Vec<String>,
    segments: Vec<u64>,
}

pub(crate) async fn archive(major: u32) -> Archive {
    let pg = PgCluster::start(major, &PgOptions::default());
    let s3 = S3Server::start();
    let (env, repo) = s3.encrypted(PREFIX);
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.pgbench(&["-i", "-s", "2", "-q"]);
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        pg.port
    );
    let mut backups = Vec::new();
    for round in 0..2 {
        pg.execute(&format!(
            "CREATE TABLE t{round} AS SELECT generate_series(1, 1000) AS x"
        ))
        .await;
        let out = env.run(&[
            "backup",
            "--pg",
            &conn,
            "--checkpoint",
            "fast",
            "--part-size",
            "1MiB",
            "--json",
        ]);
        assert!(out.status.success(), "backup: {}", text(&out));
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        backups.push(meta["id"].as_str().unwrap().to_string());
        // Backup ids are start times to the second.
        crate::support::wait_for("the next second", Duration::from_secs(3), || async {
            let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
            (backups.last().is_some_and(|b| !b.starts_with(&now))).then_some(())
        })
        .await;
    }
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    // Objects this test seals are bound as walvault binds them: to the
    // repository id walvault.json names, and their keys.
    repo.open_manifest().await.unwrap().expect("walvault.json");
    let inv = walvault::wal::inventory::WalInventory::scan(&repo, MIB)
        .await
        .unwrap();
    let segments = inv.timelines[&TimelineId::FIRST]
        .complete
        .iter()
        .copied()
        .collect();
    Archive {
        pg,
        s3,
        env,
        repo,
        backups,
        segments,
    }
}

impl Archive {
    fn path(&self, key: &str) -> std::path::PathBuf {
        self.s3.object_path(PREFIX, key)
    }

    /// Replaces the object at `key` with `bytes`; returns what was there.
    fn replace(&self, key: &str, bytes: &[u8]) -> Vec<u8> {
        let old = std::fs::read(self.path(key)).unwrap_or_else(|e| panic!("{key}: {e}"));
        std::fs::write(self.path(key), bytes).unwrap();
        old
    }

    /// Copies the object at `from` over the one at `to`; returns what was there.
    fn copy_over(&self, from: &str, to: &str) -> Vec<u8> {
        let bytes = std::fs::read(self.path(from)).unwrap();
        self.replace(to, &bytes)
    }

    fn segment_key(&self, n: u64) -> String {
        layout::segment_key(
            SegmentName {
                timeline: TimelineId::FIRST,
                number: n,
            },
            MIB,
        )
    }

    /// Segment `n` as the archive holds it (the server's own copy may be
    /// recycled already: only the stream's slot kept it, until stored).
    async fn stored_segment(&self, n: u64) -> Vec<u8> {
        let seg = SegmentName {
            timeline: TimelineId::FIRST,
            number: n,
        };
        self.repo
            .get_opened(&layout::segment_key(seg, MIB))
            .await
            .unwrap()
            .expect("the segment is archived")
    }

    fn segment_name(&self, n: u64) -> String {
        SegmentName {
            timeline: TimelineId::FIRST,
            number: n,
        }
        .to_file_name(MIB)
    }

    fn wal_fetch(&self, n: u64) -> std::process::Output {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("RECOVERYXLOG");
        self.env
            .run(&["wal-fetch", &self.segment_name(n), dest.to_str().unwrap()])
    }

    /// A restore that must be refused: its output, with nothing written.
    pub(crate) fn refused_restore(&self, args: &[&str]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path().join("data");
        let mut full = vec!["restore", "--pgdata", pgdata.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = self.env.run(&full);
        assert!(!out.status.success(), "restore {args:?} succeeded");
        assert!(
            !pgdata.exists(),
            "a refused restore left {}",
            pgdata.display()
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "a refused restore left files beside the data directory"
        );
        text(&out)
    }
}

/// Moved, swapped, forged, truncated and edited objects: wal-fetch exits
/// 200 (recovery stops), verify and restore name the object, `list` refuses
/// a swapped backup.json, and no refused restore writes anything.
async fn moved_forged_and_edited_objects_are_refused(major: u32) {
    let a = archive(major).await;
    let (n, m) = (a.segments[1], a.segments[2]);
    let (seg_n, seg_m) = (a.segment_key(n), a.segment_key(m));

    // Segment N copied over segment M.
    let old = a.copy_over(&seg_n, &seg_m);
    let out = a.wal_fetch(m);
    assert_eq!(out.status.code(), Some(200), "{}", text(&out));
    assert!(text(&out).contains(&seg_m), "{}", text(&out));
    assert!(
        text(&out).contains("moved or copied here"),
        "{}",
        text(&out)
    );
    let out = a.env.run(&["verify", "--wal", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let failures = report["wal"]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{report}");
    assert_eq!(failures[0]["object"], seg_m.as_str());
    // A segment gone from the middle: a gap, named.
    std::fs::remove_file(a.path(&seg_m)).unwrap();
    let out = a.env.run(&["verify", "--wal"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("gap"), "{}", text(&out));
    std::fs::write(a.path(&seg_m), &old).unwrap();
    assert!(a.wal_fetch(m).status.success());
    let out = a.env.run(&["verify", "--wal"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("WAL: OK"), "{}", text(&out));

    // Part 1 of a backup copied over its part 2; then a truncated part.
    let first = a.backups[0].as_str();
    let part = |i| layout::backup_part_key(first, "base", i);
    let old = a.copy_over(&part(1), &part(2));
    let report = a.refused_restore(&["--backup", first]);
    assert!(report.contains(&part(2)), "{report}");
    let out = a.env.run(&["verify", "--backup", first]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&part(2)), "{}", text(&out));
    a.replace(&part(2), &old[..old.len() / 2]);
    let report = a.refused_restore(&["--backup", first]);
    assert!(
        report.contains(&part(2)) && report.contains("truncated"),
        "{report}"
    );
    a.replace(&part(2), &old);

    // One backup's backup.json over another's.
    let (json_a, json_b) = (
        layout::backup_json_key(&a.backups[0]),
        layout::backup_json_key(&a.backups[1]),
    );
    let old = a.copy_over(&json_a, &json_b);
    let out = a.env.run(&["list", "--json"]);
    assert!(!out.status.success(), "list accepted a moved backup.json");
    assert!(text(&out).contains(&json_b), "{}", text(&out));
    a.refused_restore(&[]);
    a.replace(&json_b, &old);

    // A plaintext object forged where an encrypted one belongs.
    let forged = seal_bound(
        &[Bytes::from(a.stored_segment(m).await)],
        &SealOptions::default(),
        None,
        [0; 16],
        Binding::Key(&format!("{PREFIX}/{seg_m}")),
    );
    let bound_here = a.repo.policy().bound_name(&seg_m).unwrap();
    let forged_here = seal_bound(
        &[Bytes::from(a.stored_segment(m).await)],
        &SealOptions::default(),
        None,
        [0; 16],
        Binding::Key(&bound_here),
    );
    for bytes in [&forged, &forged_here] {
        let old = a.replace(&seg_m, bytes);
        let out = a.wal_fetch(m);
        assert_eq!(out.status.code(), Some(200), "{}", text(&out));
        assert!(text(&out).contains(&seg_m), "{}", text(&out));
        a.replace(&seg_m, &old);
    }
    let out = a.wal_fetch(m);
    assert!(out.status.success(), "{}", text(&out));

    // walvault.json edited: a field changed, then a value out of range.
    let identity = std::fs::read_to_string(a.path("walvault.json")).unwrap();
    let (major_is, major_edited) = (
        format!("\"pg_major\": {major}"),
        format!("\"pg_major\": {}", major + 1),
    );
    for (from, to, says) in [
        (
            major_is.as_str(),
            major_edited.as_str(),
            "fails authentication",
        ),
        (
            "\"wal_segment_size\": 1048576",
            "\"wal_segment_size\": 0",
            "wal_segment_size 0",
        ),
    ] {
        let edited = identity.replacen(from, to, 1);
        assert_ne!(edited, identity, "{from}");
        std::fs::write(a.path("walvault.json"), &edited).unwrap();
        let out = a.env.run(&["list"]);
        assert!(!out.status.success(), "{to}: {}", text(&out));
        assert!(text(&out).contains(says), "{to}: {}", text(&out));
        let out = a.wal_fetch(m);
        assert_eq!(out.status.code(), Some(200), "{to}: {}", text(&out));
        a.refused_restore(&[]);
    }
    std::fs::write(a.path("walvault.json"), &identity).unwrap();
    let out = a.env.run(&["verify"]);
    assert!(out.status.success(), "the repaired archive: {}", text(&out));
}
pg_test!(moved_forged_and_edited_objects_are_refused);

/// A tar stream crafted to write outside the data directory, sealed into the
/// repository as a backup's part (with backup.json made to match, as only a
/// key holder could): the restore refuses it and writes nothing anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_tar_streams_cannot_escape_the_target() {
    let a = archive(15).await;
    let id = a.backups[0].clone();
    let json_key = layout::backup_json_key(&id);
    let original = a
        .repo
        .get_opened(&json_key)
        .await
        .unwrap()
        .expect("backup.json");
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    let victim_s = victim.display().to_string();
    let link_target = outside.path().display().to_string();
    type Entry<'a> = (&'a str, tar::EntryType, Option<&'a str>);
    let cases: [(&str, Vec<Entry>); 4] = [
        (
            "dot-dot",
            vec![("../../victim", tar::EntryType::Regular, None)],
        ),
        (
            "absolute",
            vec![(victim_s.as_str(), tar::EntryType::Regular, None)],
        ),
        (
            "symlink",
            vec![
                ("evil", tar::EntryType::Symlink, Some(link_target.as_str())),
                ("evil/victim", tar::EntryType::Regular, None),
            ],
        ),
        (
            "hard link",
            vec![("hl", tar::EntryType::Link, Some(victim_s.as_str()))],
        ),
    ];
    for (what, entries) in cases {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o600);
            h.set_size(1);
            let name = h.as_old_mut().name.as_mut();
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_cksum();
            let body: &[u8] = if kind == tar::EntryType::Regular {
                b"x"
            } else {
                b""
            };
            if kind != tar::EntryType::Regular {
                h.set_size(0);
                h.set_cksum();
            }
            b.append(&h, body).unwrap();
        }
        let crafted = b.into_inner().unwrap();
        // The crafted stream replaces the main directory's parts.
        let mut meta: serde_json::Value = serde_json::from_slice(&original).unwrap();
        let base = meta["tablespaces"]
            .as_array_mut()
            .unwrap()
            .last_mut()
            .unwrap();
        base["parts"] = serde_json::json!([{
            "index": 0,
            "plain_bytes": crafted.len(),
            "stored_bytes": 0,
            "crc32c": format!("{:08x}", crc32c::crc32c(&crafted)),
        }]);
        let part_key = layout::backup_part_key(&id, "base", 0);
        a.repo.delete(&part_key).await.unwrap();
        a.repo
            .put_sealed(&part_key, vec![Bytes::from(crafted)])
            .await
            .unwrap();
        a.repo.delete(&json_key).await.unwrap();
        a.repo
            .put_sealed(
                &json_key,
                vec![Bytes::from(serde_json::to_vec(&meta).unwrap())],
            )
            .await
            .unwrap();
        let report = a.refused_restore(&["--backup", &id]);
        assert!(report.contains("refusing tar entry"), "{what}: {report}");
        assert!(!victim.exists(), "{what} wrote outside the target");
        assert_eq!(
            std::fs::read_dir(outside.path()).unwrap().count(),
            0,
            "{what}"
        );
    }
}

/// With the store down, restore_command fails with a status above 125 and
/// recovery stops (no promotion, nothing replayed past the archive); once
/// the store is back, the same directory recovers completely.
async fn recovery_stops_when_the_store_fails(major: u32) {
    let mut a = archive(major).await;
    let rows = a.pg.query_one("SELECT count(*) FROM t1").await;
    let dir = tempfile::Builder::new()
        .prefix("walvault-restore")
        .tempdir()
        .unwrap();
    let pgdata = dir.path().join("data");
    let out = a.env.run(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--fetch-timeout",
        "3s",
    ]);
    assert!(out.status.success(), "restore: {}", text(&out));
    a.s3.stop();
    let mut restored = PgCluster::restored(major, pgdata.clone());
    let log = restored.run_until_exit(Duration::from_secs(120));
    assert!(
        log.contains("could not restore file") && log.contains("exit code 200"),
        "recovery did not stop on the failing store:\n{log}"
    );
    assert!(
        !log.contains("selected new timeline") && !log.contains("ready to accept"),
        "recovery ended early and promoted:\n{log}"
    );
    a.s3.launch();
    restored.launch();
    crate::support::wait_for("promotion", Duration::from_secs(90), || async {
        (restored.query_one("SELECT pg_is_in_recovery()").await == "f").then_some(())
    })
    .await;
    assert_eq!(restored.query_one("SELECT count(*) FROM t1").await, rows);
}
pg_test!(recovery_stops_when_the_store_fails);

/// A segment removed from the bucket after the restore planned to replay it
/// (an expire on another host, a bucket writer, a clean-up) stops recovery:
/// `wal-fetch` exits 200 naming it instead of 1 ("not in the archive"),
/// so PostgreSQL neither ends recovery there nor promotes. Past the
/// planned end, and on a timeline the plan does not read, a file the
/// archive lacks is still "not in the archive" (1). With the segment back,
/// the same directory recovers every row.
async fn recovery_never_ends_inside_the_plan(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    let s3 = S3Server::start();
    let (env, repo) = s3.encrypted("plan");
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        pg.port
    );
    let out = env.run(&["backup", "--pg", &conn, "--checkpoint", "fast"]);
    assert!(out.status.success(), "backup: {}", text(&out));
    let first = pg.switch_wal().await;
    // 12,000 rows over about a dozen segments after the backup.
    pg.execute("CREATE TABLE ledger (id int, pad text)").await;
    for chunk in 0..12 {
        pg.execute(&format!(
            "INSERT INTO ledger SELECT g, repeat('x', 800) FROM generate_series({}, {}) g",
            chunk * 1000,
            chunk * 1000 + 999
        ))
        .await;
    }
    let end = pg.switch_wal().await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    let dir = tempfile::Builder::new()
        .prefix("walvault-restore")
        .tempdir()
        .unwrap();
    let pgdata = dir.path().join("data");
    let out = env.run(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert!(out.status.success(), "restore: {}", text(&out));
    // A segment in the middle of the replay, past what restore prefetched.
    let missing = SegmentName {
        timeline: TimelineId::FIRST,
        number: first.segment_number(MIB) + 6,
    };
    assert!(missing.number < end.segment_number(MIB) - 2);
    let name = missing.to_file_name(MIB);
    let key = layout::segment_key(missing, MIB);
    let path = s3.object_path("plan", &key);
    let held = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let settings = dir.path().join("data.walvault.json");
    let fetch = |file: &str| {
        let out = std::process::Command::new(crate::support::process::walvault_bin())
            .env_clear()
            .args([
                "wal-fetch",
                "--repo-config",
                settings.to_str().unwrap(),
                file,
            ])
            .arg(dir.path().join("fetched"))
            .output()
            .unwrap();
        (out.status.code(), text(&out))
    };
    let (code, message) = fetch(&name);
    assert_eq!(code, Some(200), "{message}");
    assert!(
        message.contains(&name) && message.contains("planned"),
        "{message}"
    );
    let past = SegmentName {
        timeline: TimelineId::FIRST,
        number: end.segment_number(MIB) + 8,
    }
    .to_file_name(MIB);
    assert_eq!(fetch(&past).0, Some(1), "past the planned end");
    let off_plan = SegmentName {
        timeline: TimelineId::new(2).unwrap(),
        number: missing.number,
    }
    .to_file_name(MIB);
    assert_eq!(
        fetch(&off_plan).0,
        Some(1),
        "a timeline the plan does not read"
    );
    assert_eq!(fetch("00000002.history").0, Some(1));

    let mut restored = PgCluster::restored(major, pgdata.clone());
    let log = restored.run_until_exit(Duration::from_secs(120));
    assert!(
        log.contains(&format!("could not restore file \"{name}\""))
            && log.contains("exit code 200"),
        "recovery did not stop at the removed segment:\n{log}"
    );
    assert!(
        !log.contains("selected new timeline")
            && !log.contains("database system is ready to accept connections"),
        "recovery ended early and promoted:\n{log}"
    );
    std::fs::write(&path, &held).unwrap();
    restored.launch();
    crate::support::wait_for("promotion", Duration::from_secs(90), || async {
        (restored.query_one("SELECT pg_is_in_recovery()").await == "f").then_some(())
    })
    .await;
    assert_eq!(
        restored.query_one("SELECT count(*) FROM ledger").await,
        "12000"
    );
}
pg_test!(recovery_never_ends_inside_the_plan);

/// WAL is read as WAL: a segment whose pages are not this cluster's WAL of
/// that place is named by `verify` (the backup's range and `--wal`) even
/// when it is sealed with the right key, as walvault would have stored a
/// segment the server sent wrong: a page zeroed inside the valid range, a
/// stale page from elsewhere, and another cluster's segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reads_wal_as_wal() {
    use walvault::format::{Keyring, MasterKey};
    let a = archive(15).await;
    let keyring = Keyring::single(MasterKey::from_hex(KEY).unwrap());
    // A segment full of WAL (pgbench's load), not one ended by a switch.
    let full = a.segments[a.segments.len() / 2];
    let seg = SegmentName {
        timeline: TimelineId::FIRST,
        number: full,
    };
    let key = layout::segment_key(seg, MIB);
    let good = a.stored_segment(full).await;
    let bound = a.repo.policy().bound_name(&key).unwrap();
    let reseal = |bytes: Vec<u8>| {
        seal_bound(
            &[Bytes::from(bytes)],
            &SealOptions::default(),
            keyring.write_key(),
            rand::random(),
            Binding::Key(&bound),
        )
    };
    let out = a.env.run(&["verify", "--wal"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut zeroed = good.clone();
    zeroed[3 * 8192..4 * 8192].fill(0);
    let mut stale = good.clone();
    let earlier = a.stored_segment(a.segments[0]).await;
    stale[5 * 8192..6 * 8192].copy_from_slice(&earlier[5 * 8192..6 * 8192]);
    let mut foreign = good.clone();
    foreign[24] ^= 0x5a;
    for (bytes, want) in [
        (
            zeroed,
            "page at offset 24576: it is zeroed, and so is the WAL to offset 32768",
        ),
        (stale, "page at offset 40960"),
        (foreign, "another cluster"),
    ] {
        let old = a.replace(&key, &reseal(bytes));
        let out = a.env.run(&["verify", "--wal", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains(want) && text(&out).contains(&key),
            "{want}: {}",
            text(&out)
        );
        a.replace(&key, &old);
    }
    let out = a.env.run(&["verify", "--wal"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// A version 2 `walvault.json` rewritten by a bucket writer as version 1
/// (no MAC), with an edited segment size and system identifier, is
/// refused by name by every reader, `restore_command` included; only a
/// repository the operator says is version 1 is read as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downgrade_to_version_1_is_refused() {
    let a = archive(15).await;
    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("data");
    let out = a
        .env
        .run(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert!(out.status.success(), "restore: {}", text(&out));
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.path(layout::REPOSITORY_MANIFEST)).unwrap())
            .unwrap();
    let original = serde_json::to_vec_pretty(&doc).unwrap();
    doc["version"] = 1.into();
    doc.as_object_mut().unwrap().remove("macs");
    doc.as_object_mut().unwrap().remove("repository_id");
    doc["wal_segment_size"] = (2 * MIB).into();
    doc["system_identifier"] = "7300000000000000001".into();
    std::fs::write(
        a.path(layout::REPOSITORY_MANIFEST),
        serde_json::to_vec_pretty(&doc).unwrap(),
    )
    .unwrap();
    for args in [vec!["list"], vec!["verify"], vec!["info"]] {
        let out = a.env.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("says format version 1")
                && text(&out).contains("--allow-version-1"),
            "{args:?}: {}",
            text(&out)
        );
    }
    let segment = SegmentName {
        timeline: TimelineId::FIRST,
        number: a.segments[0],
    }
    .to_file_name(MIB);
    let out = std::process::Command::new(crate::support::process::walvault_bin())
        .env_clear()
        .args(["wal-fetch", "--repo-config"])
        .arg(dir.path().join("data.walvault.json"))
        .arg(&segment)
        .arg(dir.path().join("fetched"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(200), "{}", text(&out));
    assert!(
        text(&out).contains("says format version 1"),
        "{}",
        text(&out)
    );
    std::fs::write(a.path(layout::REPOSITORY_MANIFEST), original).unwrap();
    let out = a.env.run(&["list"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// The key and store credentials stay out of the restored data directory
/// (the settings file sits beside it, mode 0600); PostgreSQL's own
/// pg_verifybackup accepts the restored files; and a base backup of the
/// restored cluster works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_cluster_holds_no_secret_and_backs_up() {
    let a = archive(15).await;
    let dir = tempfile::Builder::new()
        .prefix("walvault-restore")
        .tempdir()
        .unwrap();
    let pgdata = dir.path().join("data");
    let out = a
        .env
        .run(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert!(out.status.success(), "restore: {}", text(&out));
    let settings = dir.path().join("data.walvault.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&settings).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(&settings).unwrap().contains(KEY));
    assert_no_secret_in(&pgdata);
    let verify = std::process::Command::new(pg_program(15, "pg_verifybackup"))
        .arg("-n")
        .arg(&pgdata)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "pg_verifybackup: {}",
        text(&verify)
    );

    let restored = PgCluster::start_restored(15, pgdata.clone());
    crate::support::wait_for("promotion", Duration::from_secs(90), || async {
        (restored.query_one("SELECT pg_is_in_recovery()").await == "f").then_some(())
    })
    .await;
    assert_no_secret_in(&pgdata);
    let (env2, _) = a.s3.encrypted("attack-restored");
    let out = env2.run(&[
        "backup",
        "--pg",
        &format!(
            "host=127.0.0.1 port={} user=postgres sslmode=disable",
            restored.port
        ),
        "--checkpoint",
        "fast",
    ]);
    assert!(
        out.status.success(),
        "backup of the restored cluster: {}",
        text(&out)
    );
}

/// No file under `dir` holds the key or the store secret.
fn assert_no_secret_in(dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let path = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                for secret in [KEY, SECRET_KEY] {
                    assert!(
                        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                        "{} holds a secret",
                        path.display()
                    );
                }
            }
        }
    }
}

/// Every command at debug log level, with a known key, database password
/// and store secret, given in the environment and in a configuration file:
/// none of them appears in any output (errors included), in the server's
/// log (restore_command's stderr goes there) or in any file walvault leaves
/// in the restored data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_output() {
    const PASSWORD: &str = "pw-7c1e9a3f5b2d";
    let pg = PgCluster::start(
        15,
        &PgOptions {
            hba_first: vec![
                "host replication archiver 127.0.0.1/32 scram-sha-256".into(),
                "host all archiver 127.0.0.1/32 scram-sha-256".into(),
            ],
            ..Default::default()
        },
    );
    pg.execute(&format!(
        "CREATE ROLE archiver LOGIN REPLICATION SUPERUSER PASSWORD '{PASSWORD}'"
    ))
    .await;
    let s3 = S3Server::start();
    let (mut env, _repo) = s3.encrypted("secrets");
    env.env.push(("PGPASSWORD".into(), PASSWORD.into()));
    env.env.push(("WALVAULT_LOG_LEVEL".into(), "debug".into()));
    let conn = format!(
        "host=127.0.0.1 port={} user=archiver sslmode=disable",
        pg.port
    );
    let mut outputs = Vec::new();
    let mut stream_cmd = env.command();
    stream_cmd.args(["stream", "--pg", &conn, "--flush-interval", "200ms"]);
    let stream = StreamProcess::spawn(stream_cmd);
    pg.execute("CREATE TABLE t AS SELECT generate_series(1, 10000) AS x")
        .await;
    let out = env.run(&["backup", "--pg", &conn, "--checkpoint", "fast"]);
    assert!(out.status.success(), "{}", text(&out));
    outputs.push(text(&out));
    pg.switch_wal().await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    outputs.push(log);
    for args in [
        vec!["list"],
        vec!["list", "--json"],
        vec!["verify", "--wal"],
        vec!["wal-fetch", "00000001000000000000000F", "/dev/null"],
    ] {
        outputs.push(text(&env.run(&args)));
    }
    let dir = tempfile::Builder::new()
        .prefix("walvault-restore")
        .tempdir()
        .unwrap();
    let pgdata = dir.path().join("data");
    let out = env.run(&["restore", "--pgdata", pgdata.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    outputs.push(text(&out));
    let restored = PgCluster::start_restored(15, pgdata.clone());
    crate::support::wait_for("promotion", Duration::from_secs(90), || async {
        (restored.query_one("SELECT pg_is_in_recovery()").await == "f").then_some(())
    })
    .await;
    outputs.push(restored.log_text());
    outputs.extend(config_file_outputs(&s3, &env.url, pg.port, PASSWORD));
    for (i, output) in outputs.iter().enumerate() {
        for secret in [KEY, PASSWORD, SECRET_KEY] {
            assert!(
                !output.contains(secret),
                "output {i} shows a secret:\n{output}"
            );
        }
    }
    assert!(
        outputs.iter().any(|o| o.contains("DEBUG")),
        "nothing was logged at debug level"
    );
    assert_no_secret_in(&pgdata);
}

/// What walvault prints when a configuration file holds the key, the
/// store's credentials and the server's password (at debug level, help
/// included), when that file has mistakes or others may read it, and when a
/// password is given on the command line.
fn config_file_outputs(s3: &S3Server, url: &str, port: u16, password: &str) -> Vec<String> {
    use crate::support::config::{bare_command, run_with_config, write_config};
    use crate::support::s3::{ACCESS_KEY, REGION};
    let dir = tempfile::tempdir().unwrap();
    let conn = format!("host=127.0.0.1 port={port} user=archiver sslmode=disable");
    let secrets = format!(
        "log_level = \"debug\"\n\
         [repository]\nrepo = \"{url}\"\nkey = \"{KEY}\"\n\
         [repository.options]\naws_endpoint = \"{endpoint}\"\n\
         aws_access_key_id = \"{ACCESS_KEY}\"\naws_secret_access_key = \"{SECRET_KEY}\"\n\
         aws_region = \"{REGION}\"\n\
         [backup]\npg = \"{conn} password={password}\"\ncheckpoint = \"fast\"\n",
        endpoint = s3.endpoint(),
    );
    let config = write_config(dir.path(), "walvault.toml", &secrets);
    let mut outputs = Vec::new();
    for args in [
        vec!["backup"],
        vec!["list"],
        vec!["verify"],
        vec!["backup", "--help"],
    ] {
        let out = run_with_config(&config, &[], &args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        outputs.push(text(&out));
    }
    // Mistakes in the file name keys and places, never values.
    for broken in [
        format!("{secrets}[backup]\n"),
        format!("{secrets}label = [\"x\"]\n"),
        secrets.replace("checkpoint", "checkpiont"),
        secrets.replace(&format!("key = \"{KEY}\""), &format!("key = \"{KEY}")),
        secrets.replace(&format!("key = \"{KEY}\""), &format!("key = {KEY}")),
        secrets.replace(
            &format!("password={password}"),
            &format!("password={password} notakey=1"),
        ),
    ] {
        let path = write_config(dir.path(), "broken.toml", &broken);
        let out = run_with_config(&path, &[], &["backup"]);
        assert!(!out.status.success(), "{broken}: {}", text(&out));
        outputs.push(text(&out));
    }
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let out = run_with_config(&config, &[], &["list"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    outputs.push(text(&out));
    let out = bare_command()
        .args(["backup", "--pg", &format!("{conn} password={password}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    outputs.push(text(&out));
    outputs
}

/// A store that stops answering (frozen, not refusing) during recovery:
/// wal-fetch gives up after --fetch-timeout with exit 200 and recovery
/// stops instead of ending early; once the store answers, it completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_stops_when_the_store_stalls() {
    let a = archive(15).await;
    let rows = a.pg.query_one("SELECT count(*) FROM t1").await;
    let dir = tempfile::Builder::new()
        .prefix("walvault-restore")
        .tempdir()
        .unwrap();
    let pgdata = dir.path().join("data");
    let out = a.env.run(&[
        "restore",
        "--pgdata",
        pgdata.to_str().unwrap(),
        "--fetch-timeout",
        "3s",
    ]);
    assert!(out.status.success(), "restore: {}", text(&out));
    a.s3.pause();
    let mut restored = PgCluster::restored(15, pgdata.clone());
    let log = restored.run_until_exit(Duration::from_secs(120));
    a.s3.resume();
    assert!(
        log.contains("could not restore file") && log.contains("exit code 200"),
        "recovery did not stop on the stalled store:\n{log}"
    );
    assert!(
        !log.contains("selected new timeline") && !log.contains("ready to accept"),
        "recovery ended early and promoted:\n{log}"
    );
    restored.launch();
    crate::support::wait_for("promotion", Duration::from_secs(90), || async {
        (restored.query_one("SELECT pg_is_in_recovery()").await == "f").then_some(())
    })
    .await;
    assert_eq!(restored.query_one("SELECT count(*) FROM t1").await, rows);
}
