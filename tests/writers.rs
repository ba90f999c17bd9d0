//! One writer per WAL object: a backup beside a running sidecar stores
//! only WAL the sidecar never will, and a WAL object offered again with
//! other bytes never stops the stream while the stored version is valid
//! WAL.

use std::time::Duration;

use bytes::Bytes;
use walvault::format::{Keyring, MasterKey};
use walvault::lsn::{Lsn, SegmentName};
use walvault::storage::{Repository, layout};
use walvault::wal::inventory::WalInventory;

use crate::metrics::{scrape, value};
use crate::support::archive::{tli, wait_archived};
use crate::support::pg::{PgCluster, PgOptions, free_port};
use crate::support::process::{KEY, RepoEnv, StreamProcess};
use crate::support::s3::S3Server;
use crate::support::wait_for;

const MIB: u64 = 1 << 20;

fn s3_repo(s3: &S3Server, prefix: &str) -> (RepoEnv, Repository) {
    let mut env = s3.env();
    env.push(("WALVAULT_KEY".into(), KEY.into()));
    (
        RepoEnv {
            url: s3.url(prefix),
            env,
        },
        s3.repository(prefix, Keyring::single(MasterKey::from_hex(KEY).unwrap())),
    )
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn pg_arg(pg: &PgCluster) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        pg.port
    )
}

/// A directory the server's archive_command copies completed segments
/// into: the reference every archived segment is compared with.
fn reference_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("walvault-ref")
        .tempdir()
        .unwrap();
    crate::support::pg::give_to_server_user(dir.path());
    dir
}

/// A PostgreSQL standby with `wal_keep_size = 0` and WAL recycling on (the
/// default), read by the sidecar; under write load on the primary, three
/// `walvault backup` runs of the standby, then a promotion. Each backup
/// waits for the sidecar's archive instead of streaming beside it; the
/// sidecar never stops, no WAL object is offered twice with other bytes,
/// and every segment in the archive equals the one PostgreSQL itself
/// archived (`archive_command` into a reference directory).
async fn a_backup_of_a_standby_beside_the_sidecar_has_one_writer(major: u32) {
    let reference = reference_dir();
    let archive_command = format!(
        "archive_command = 'test -f {0}/%f || cp %p {0}/%f'",
        reference.path().display()
    );
    let mut primary = PgCluster::start(
        major,
        &PgOptions {
            extra_conf: vec![
                "wal_keep_size = 0".into(),
                "archive_mode = on".into(),
                archive_command,
            ],
            ..PgOptions::default()
        },
    );
    primary.pgbench(&["-i", "-s", "1", "-q"]);
    let standby = PgCluster::standby_of(&mut primary);
    primary.execute("CHECKPOINT").await;
    standby.wait_replayed(primary.current_lsn().await).await;
    let s3 = S3Server::start();
    let (env, repo) = s3_repo(&s3, "standby");
    let mut stream = StreamProcess::start(&env, standby.port, &["--flush-interval", "300ms"]);

    for round in 0..3 {
        let load = primary.pgbench_background(4, 2);
        let out = env.run(&[
            "backup",
            "--pg",
            &pg_arg(&standby),
            "--checkpoint",
            "fast",
            "--json",
        ]);
        assert!(out.status.success(), "backup {round}: {}", text(&out));
        assert!(
            text(&out).contains("another walvault streams this repository's WAL"),
            "backup {round} did not wait for the sidecar: {}",
            text(&out)
        );
        assert!(load.join().unwrap().status.success());
        assert!(stream.is_running(), "{}", stream.log_text());
    }

    // The primary goes away; the standby is promoted and written to.
    let end = primary.switch_wal().await;
    standby.wait_replayed(end).await;
    primary.stop_fast();
    standby.promote();
    wait_for("the promotion", Duration::from_secs(30), || async {
        (standby.query_one("SELECT pg_is_in_recovery()::text").await == "false").then_some(())
    })
    .await;
    standby.pgbench(&["-N", "-t", "200"]);
    let end = standby.switch_wal().await;
    wait_archived(&repo, MIB, 2, end, Duration::from_secs(60)).await;
    assert!(stream.is_running(), "{}", stream.log_text());

    // Every complete segment of both timelines equals PostgreSQL's own copy.
    let inv = WalInventory::scan(&repo, MIB).await.unwrap();
    let mut compared = 0;
    for timeline in [1, 2] {
        let t = &inv.timelines[&tli(timeline)];
        for &number in &t.complete {
            let seg = SegmentName {
                timeline: tli(timeline),
                number,
            };
            let name = seg.to_file_name(MIB);
            let path = reference.path().join(&name);
            let server = wait_for(
                &format!("PostgreSQL to archive {name}"),
                Duration::from_secs(60),
                || async { std::fs::read(&path).ok() },
            )
            .await;
            let stored = repo
                .get_opened(&layout::segment_key(seg, MIB))
                .await
                .unwrap()
                .unwrap();
            assert!(
                stored == server,
                "{name} differs from PostgreSQL's archived copy"
            );
            compared += 1;
        }
    }
    assert!(compared >= 6, "only {compared} segments compared");
    assert!(
        repo.list(layout::CONFLICTS_PREFIX)
            .await
            .unwrap()
            .is_empty(),
        "a WAL object was offered twice"
    );
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("other bytes"), "{log}");
    assert!(
        !log.contains("could not read the slot's restart LSN"),
        "{log}"
    );
}

mod a_backup_of_a_standby_beside_the_sidecar_has_one_writer {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg14() {
        super::a_backup_of_a_standby_beside_the_sidecar_has_one_writer(14).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pg18() {
        super::a_backup_of_a_standby_beside_the_sidecar_has_one_writer(18).await
    }
}

/// A segment whose every page header says what PostgreSQL's would (the
/// major's magic, timeline 1, its own address, the long header's system
/// identifier and sizes), with other record bytes: valid WAL to a page
/// check, and different from what the server will send.
fn header_valid_segment(seg: SegmentName, system_identifier: u64, magic: u16) -> Vec<u8> {
    let start = seg.start_lsn(MIB).0;
    let mut bytes = vec![0xA5u8; MIB as usize];
    for n in 0..MIB / 8192 {
        let at = (n * 8192) as usize;
        bytes[at..at + 2].copy_from_slice(&magic.to_le_bytes());
        let info: u16 = if n == 0 { 0x0002 } else { 0 };
        bytes[at + 2..at + 4].copy_from_slice(&info.to_le_bytes());
        bytes[at + 4..at + 8].copy_from_slice(&seg.timeline.get().to_le_bytes());
        bytes[at + 8..at + 16].copy_from_slice(&(start + n * 8192).to_le_bytes());
    }
    bytes[24..32].copy_from_slice(&system_identifier.to_le_bytes());
    bytes[32..36].copy_from_slice(&(MIB as u32).to_le_bytes());
    bytes[36..40].copy_from_slice(&8192u32.to_le_bytes());
    bytes
}

/// Writes WAL until the server's current segment is past `seg`.
async fn write_past(pg: &PgCluster, seg: SegmentName) -> Lsn {
    let target = seg.start_lsn(MIB).0 + MIB;
    loop {
        pg.execute("INSERT INTO t SELECT generate_series(1, 100)")
            .await;
        let lsn = pg.switch_wal().await;
        if lsn.0 >= target {
            return lsn;
        }
    }
}

/// A WAL segment another writer stored first with other bytes: while the
/// stored version is valid WAL the stream keeps it and goes on, and the
/// conflict is logged with both versions, counted in `/metrics` and named
/// by `check`. A stored version that is not valid WAL (a zeroed page with
/// WAL after it) stops the stream by name, and nothing past it is
/// reported durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wal_object_offered_again_with_other_bytes() {
    let pg = PgCluster::start(15, &PgOptions::default());
    pg.execute("CREATE TABLE t (x int)").await;
    let system: u64 = pg
        .query_one("SELECT system_identifier::text FROM pg_control_system()")
        .await
        .parse()
        .unwrap();
    let s3 = S3Server::start();
    let (env, repo) = s3_repo(&s3, "conflict");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut stream = StreamProcess::start(
        &env,
        pg.port,
        &["--flush-interval", "200ms", "--metrics-addr", &addr],
    );
    let current = |name: String| SegmentName::parse(&name, MIB).unwrap();
    let now = current(
        pg.query_one("SELECT pg_walfile_name(pg_current_wal_lsn())")
            .await,
    );

    // A valid version of a segment the server has not written yet.
    let ahead = SegmentName {
        number: now.number + 2,
        ..now
    };
    let forged = header_valid_segment(ahead, system, 0xD110);
    repo.put_sealed(
        &layout::segment_key(ahead, MIB),
        vec![Bytes::from(forged.clone())],
    )
    .await
    .unwrap();
    let end = write_past(&pg, ahead).await;
    wait_for(
        "the conflict to be met",
        Duration::from_secs(60),
        || async {
            stream
                .log_text()
                .contains("the stored version is valid WAL and kept")
                .then_some(())
        },
    )
    .await;
    wait_archived(&repo, MIB, 1, end, Duration::from_secs(60)).await;
    assert!(stream.is_running(), "{}", stream.log_text());
    let kept = repo
        .get_opened(&layout::segment_key(ahead, MIB))
        .await
        .unwrap()
        .unwrap();
    assert!(kept == forged, "the stored version was replaced");
    let log = stream.log_text();
    assert!(
        log.contains("the stored version is valid WAL and kept"),
        "{log}"
    );
    let s = scrape(port).await;
    assert_eq!(value(&s, "walvault_wal_conflicts_total", None), 1.0);
    let out = env.run(&["check", "--no-server", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let finding = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "wal_conflicts")
        .unwrap_or_else(|| panic!("{report}"))
        .clone();
    assert_eq!(finding["status"], "warning", "{report}");
    let ahead_name = ahead.to_file_name(MIB);
    assert!(
        finding["message"].as_str().unwrap().contains(&ahead_name),
        "{report}"
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // A stored version with a zeroed page inside: damage, not a race.
    let now = current(
        pg.query_one("SELECT pg_walfile_name(pg_current_wal_lsn())")
            .await,
    );
    let bad = SegmentName {
        number: now.number + 2,
        ..now
    };
    let mut damaged = header_valid_segment(bad, system, 0xD110);
    damaged[5 * 8192..6 * 8192].fill(0);
    repo.put_sealed(&layout::segment_key(bad, MIB), vec![Bytes::from(damaged)])
        .await
        .unwrap();
    write_past(&pg, bad).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while stream.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream did not stop: {}",
            stream.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = stream.log_text();
    assert!(
        log.contains("the stored version is not valid WAL") && log.contains("page at offset 40960"),
        "{log}"
    );
    let slot_lsn: Lsn = pg
        .query_one(
            "SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = 'walvault'",
        )
        .await
        .parse()
        .unwrap();
    assert!(
        slot_lsn <= bad.start_lsn(MIB),
        "the server was told WAL past the damaged object is safe: slot at {slot_lsn}"
    );
}
