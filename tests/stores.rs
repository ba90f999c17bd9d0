//! Every store kind walvault accepts, against a real server of its kind on
//! loopback: Azurite for `az://`, fake-gcs-server for `gs://`, and two S3
//! implementations (moto and s3s-fs) for `s3://`.
//!
//! Each test drives the [`Repository`] API end to end (sealed round trip,
//! create-only writes and conflicts, a listing past the server's page size,
//! delete, a large object) and pins down what the server itself does with
//! object_store's requests: `PutMode::Create`, listing order and page size,
//! multipart uploads. Then the walvault binary, given only the URL and the
//! server's `env()` (or a settings file of store options, as
//! `restore_command` uses), lists the same repository, and `walvault stream`
//! archives a PostgreSQL server's WAL into it. The findings are tabled in
//! `docs/operations.md` under "Object stores".

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use rand::{RngCore, SeedableRng};
use walvault::format::{Keyring, MasterKey, SealOptions};
use walvault::storage::{self, Repository};

use crate::support::archive::{assert_segments_match, wait_archived};
use crate::support::azurite::AzuriteServer;
use crate::support::gcs::GcsServer;
use crate::support::moto::MotoServer;
use crate::support::pg::{PgCluster, PgOptions};
use crate::support::process::{KEY, RepoEnv, StreamProcess};
use crate::support::s3::S3Server;

/// The repository prefix every test uses (each test has its own server).
const PREFIX: &str = "smoke";
/// Size of the large object: well past the part sizes multipart clients use
/// (5 to 16 MiB); walvault still writes it with one PUT, so a store that
/// limits single writes would show it.
const LARGE_OBJECT_BYTES: usize = 33 << 20;
/// Size of each part in the multipart probe (S3's minimum for all but the last).
const MULTIPART_PART_BYTES: usize = 5 << 20;
/// Page size asked for explicitly, to follow continuation tokens on every store.
const PAGE_KEYS: usize = 400;
/// Uploads in flight while filling a listing.
const FILL_CONCURRENCY: usize = 16;
/// The PostgreSQL major the streaming checks run (the stream tests cover
/// every major on s3s-fs).
const STREAM_PG_MAJOR: u32 = 16;
/// A system identifier for repository manifests written by these tests.
const SYSTEM_ID: &str = "7300000000000000001";

/// What a store does with `PutMode::Create` on a key that already exists.
#[derive(Debug, PartialEq, Eq)]
enum CreateOnly {
    /// The second write fails with `AlreadyExists`.
    Honoured,
    /// The second write succeeds and replaces the object.
    Ignored,
    /// object_store refuses the mode for this store.
    NotImplemented,
}

/// What one store kind does, as observed (the findings table).
#[derive(Debug)]
struct Expected {
    create_only: CreateOnly,
    /// Keys the server returns in one listing page when the client names no
    /// limit (S3 and GCS: 1,000; Azure: 5,000).
    page_size: usize,
    /// Whether the server lists keys in lexicographic order.
    sorted_listing: bool,
    /// Whether object_store's multipart upload completes.
    multipart: bool,
}

fn keyring() -> Keyring {
    Keyring::single(MasterKey::from_hex(KEY).unwrap())
}

fn seal_options() -> SealOptions {
    SealOptions::default()
}

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

fn listing_keys(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("list/{i:05}")).collect()
}

/// Writes the same key twice with `PutMode::Create` straight through
/// object_store and reports what the store did.
async fn probe_create_only<S: ObjectStore>(store: &S, path: &Path) -> CreateOnly {
    let create = || PutOptions {
        mode: PutMode::Create,
        ..Default::default()
    };
    match store
        .put_opts(path, PutPayload::from_static(b"first"), create())
        .await
    {
        Ok(_) => {}
        Err(object_store::Error::NotImplemented) => return CreateOnly::NotImplemented,
        Err(e) => panic!("first create-only write of {path} failed: {e}"),
    }
    let second = store
        .put_opts(path, PutPayload::from_static(b"second"), create())
        .await;
    let stored = store.get(path).await.unwrap().bytes().await.unwrap();
    match second {
        Ok(_) => {
            assert_eq!(&stored[..], b"second", "a write that succeeded was lost");
            CreateOnly::Ignored
        }
        Err(e @ object_store::Error::AlreadyExists { .. }) => {
            println!("create-only on an existing key: {e}");
            assert_eq!(&stored[..], b"first", "a refused write changed the object");
            CreateOnly::Honoured
        }
        Err(e) => panic!("second create-only write of {path} failed otherwise: {e:?}"),
    }
}

/// Uploads two parts with object_store's multipart API; `Err` is the
/// store's answer.
async fn probe_multipart<S: ObjectStore>(store: &S, path: &Path) -> Result<(), String> {
    let mut upload = store.put_multipart(path).await.map_err(|e| e.to_string())?;
    let first = noise(MULTIPART_PART_BYTES, 3);
    let second = noise(1 << 20, 4);
    upload
        .put_part(PutPayload::from(first.clone()))
        .await
        .map_err(|e| e.to_string())?;
    upload
        .put_part(PutPayload::from(second.clone()))
        .await
        .map_err(|e| e.to_string())?;
    upload.complete().await.map_err(|e| e.to_string())?;
    let stored = store.get(path).await.unwrap().bytes().await.unwrap();
    assert_eq!(stored.len(), first.len() + second.len());
    assert!(stored[..first.len()] == first[..] && stored[first.len()..] == second[..]);
    Ok(())
}

/// The first page of a listing and whether the server offered another.
async fn first_page<S: PaginatedListStore>(store: &S, prefix: &str) -> (Vec<String>, bool) {
    let page = store
        .list_paginated(Some(prefix), PaginatedListOptions::default())
        .await
        .unwrap();
    let keys = page
        .result
        .objects
        .iter()
        .map(|m| m.location.to_string())
        .collect();
    (keys, page.page_token.is_some())
}

/// Lists `prefix` in pages of at most `max_keys`, following the server's
/// continuation tokens; returns the number of pages and the keys.
async fn paged_listing<S: PaginatedListStore>(
    store: &S,
    prefix: &str,
    max_keys: usize,
) -> (usize, Vec<String>) {
    let mut pages = 0;
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let page = store
            .list_paginated(
                Some(prefix),
                PaginatedListOptions {
                    max_keys: Some(max_keys),
                    page_token: token.take(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        pages += 1;
        assert!(page.result.objects.len() <= max_keys, "page too long");
        keys.extend(page.result.objects.iter().map(|m| m.location.to_string()));
        match page.page_token {
            Some(t) => token = Some(t),
            None => return (pages, keys),
        }
    }
}

/// Lists straight through object_store, in the order the server sent.
async fn raw_listing<S: ObjectStore>(store: &S, prefix: &str) -> Vec<String> {
    store
        .list(Some(&Path::from(prefix)))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

/// A sealed round trip to `wal/one`; then create-only: the same content
/// again is a retry, other content is an integrity error, and the stored
/// object stays as it was.
async fn sealed_round_trip_create_only(repo: &Repository) {
    let plain = vec![Bytes::from_static(b"hello "), Bytes::from_static(b"store")];
    repo.put_sealed("wal/one", plain.clone()).await.unwrap();
    assert_eq!(
        repo.get_opened("wal/one").await.unwrap().as_deref(),
        Some(&b"hello store"[..])
    );
    assert_eq!(repo.get_opened("wal/missing").await.unwrap(), None);
    repo.put_sealed("wal/one", plain.clone()).await.unwrap();
    let err = repo
        .put_sealed("wal/one", vec![Bytes::from_static(b"other")])
        .await
        .unwrap_err();
    assert!(
        matches!(err, storage::Error::Conflict { ref key, .. } if key == "wal/one"),
        "{err:?}"
    );
    assert_eq!(
        repo.get_opened("wal/one").await.unwrap().as_deref(),
        Some(&b"hello store"[..])
    );
}

/// The Repository API end to end on a store that takes writes.
async fn exercise<S: ObjectStore + PaginatedListStore>(
    store: Arc<S>,
    repo: Repository,
    expected: Expected,
) {
    sealed_round_trip_create_only(&repo).await;
    let create_only = probe_create_only(&*store, &Path::from(format!("{PREFIX}/raw/create"))).await;
    assert_eq!(create_only, expected.create_only);

    // A listing one key past the server's page size, written in reverse order.
    let keys = listing_keys(expected.page_size + 1);
    let started = Instant::now();
    futures::stream::iter(keys.iter().rev())
        .map(|k| {
            let repo = &repo;
            async move {
                repo.put_sealed(k, vec![Bytes::from(k.clone())])
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(FILL_CONCURRENCY)
        .try_collect::<()>()
        .await
        .unwrap();
    println!("{} objects written in {:?}", keys.len(), started.elapsed());
    let listed: Vec<String> = repo
        .list("list/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed, keys, "the repository lists every key, sorted");
    let raw = raw_listing(&*store, &format!("{PREFIX}/list")).await;
    assert_eq!(raw.len(), keys.len(), "object_store follows every page");
    assert_eq!(raw.is_sorted(), expected.sorted_listing, "listing order");
    let (page, more) = first_page(&*store, &format!("{PREFIX}/list/")).await;
    assert_eq!(
        (page.len(), more),
        (expected.page_size, true),
        "the first page holds the server's page size and promises more"
    );
    let (pages, paged) = paged_listing(&*store, &format!("{PREFIX}/list/"), PAGE_KEYS).await;
    assert_eq!(pages, keys.len().div_ceil(PAGE_KEYS));
    assert_eq!(paged, raw, "explicit pages add up to the whole listing");

    // Delete: gone afterwards; deleting a missing key is fine.
    repo.delete("list/00000").await.unwrap();
    assert_eq!(repo.get_opened("list/00000").await.unwrap(), None);
    assert_eq!(repo.list("list/").await.unwrap().len(), keys.len() - 1);
    repo.delete("list/00000").await.unwrap();

    // A large object: walvault writes it with one PUT.
    let large = noise(LARGE_OBJECT_BYTES, 1);
    let started = Instant::now();
    let stored = repo
        .put_sealed("base/large", vec![Bytes::from(large.clone())])
        .await
        .unwrap();
    assert!(stored >= LARGE_OBJECT_BYTES as u64);
    let back = repo.get_opened("base/large").await.unwrap().unwrap();
    assert!(back == large, "the large object comes back unchanged");
    println!(
        "{LARGE_OBJECT_BYTES} bytes written and read back in {:?}",
        started.elapsed()
    );

    // object_store's multipart upload, which walvault does not use today.
    let multipart = probe_multipart(&*store, &Path::from(format!("{PREFIX}/raw/multipart"))).await;
    if let Err(e) = &multipart {
        println!("multipart upload: {e}");
    }
    assert_eq!(multipart.is_ok(), expected.multipart, "{multipart:?}");
}

/// The binary, given only the URL and the server's environment, opens the
/// repository and lists it.
fn binary_lists(url: String, mut env: Vec<(String, String)>) {
    env.push(("WALVAULT_KEY".into(), KEY.into()));
    assert_listed(&RepoEnv { url, env }.run(&["list", "--json"]));
}

/// The way `restore_command` runs: no store environment at all, only a
/// settings file with the URL, the key and object_store options.
fn binary_lists_with_options(url: String, options: serde_json::Value) -> std::process::Output {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("repo.json");
    let settings = serde_json::json!({"version": 1, "repo": url, "key": KEY, "options": options});
    std::fs::write(&path, settings.to_string()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    RepoEnv { url, env: vec![] }.run(&["list", "--json", "--repo-config", path.to_str().unwrap()])
}

fn assert_listed(out: &std::process::Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "walvault list failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(listing["system_identifier"], SYSTEM_ID);
}

/// How a test stops and restarts a store (SIGSTOP/SIGCONT).
type Outage<'a> = (&'a dyn Fn(), &'a dyn Fn());

/// The core story on one store, with the walvault binary given only the URL
/// and the store's environment: `stream` with deltas (the archive reaches
/// the server's flush position inside a segment), a base backup, an outage
/// of the store while commits go on (when `outage` is given: the stream
/// holds the WAL and stores it once the store is back), WAL that matches
/// the server's own segments, `verify --wal`, and a restore to a time
/// through `wal-fetch` with prefetch that holds exactly the rows committed
/// by then.
async fn core_story(
    url: String,
    mut env: Vec<(String, String)>,
    repo: Repository,
    outage: Option<Outage<'_>>,
) {
    use std::time::Duration;
    env.push(("WALVAULT_KEY".into(), KEY.into()));
    let env = RepoEnv { url, env };
    let pg = PgCluster::start(
        STREAM_PG_MAJOR,
        &PgOptions {
            extra_conf: vec!["track_commit_timestamp = on".into()],
            ..Default::default()
        },
    );
    let segment_size = 1 << 20;
    let stream = StreamProcess::start(&env, pg.port, &["--flush-interval", "200ms"]);
    pg.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        .await;
    pg.pgbench(&["-i", "-s", "1", "-q"]);
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=disable",
        pg.port
    );
    let out = env.run(&["backup", "--pg", &conn, "--checkpoint", "fast"]);
    assert!(out.status.success(), "backup: {}", text(&out));
    for i in 0..10 {
        pg.execute(&format!("INSERT INTO ledger VALUES ({i}, 'before')"))
            .await;
    }
    // Deltas: the archive reaches a flush position inside a segment.
    let flushed = pg.flush_lsn().await;
    assert!(!flushed.is_segment_start(segment_size));
    wait_archived(&repo, segment_size, 1, flushed, Duration::from_secs(60)).await;
    if let Some((stop, start)) = outage {
        stop();
        for i in 10..20 {
            pg.execute(&format!(
                "INSERT INTO ledger VALUES ({i}, 'during the outage')"
            ))
            .await;
        }
        crate::support::wait_for("an upload to fail", Duration::from_secs(120), || async {
            stream
                .log_text()
                .contains("object store request failed, retrying")
                .then_some(())
        })
        .await;
        start();
    } else {
        for i in 10..20 {
            pg.execute(&format!("INSERT INTO ledger VALUES ({i}, 'no outage')"))
                .await;
        }
    }
    // Stored stop times are whole seconds: a time target is placed only a
    // full second after the backup's stop.
    let stop = repo.list_backups().await.unwrap()[0].stop_time;
    let after = walvault::format::time::to_text(&(stop + chrono::Duration::seconds(1)));
    let sql = format!("SELECT clock_timestamp() > '{after}'");
    crate::support::wait_for(
        "the server clock to pass the backup's stop",
        Duration::from_secs(5),
        || {
            let (pg, sql) = (&pg, &sql);
            async move { (pg.query_one(sql).await == "t").then_some(()) }
        },
    )
    .await;
    for i in 20..30 {
        pg.execute(&format!("INSERT INTO ledger VALUES ({i}, 'after')"))
            .await;
    }
    let t = pg
        .query_one(
            "SELECT to_char(pg_xact_commit_timestamp(xmin) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') FROM ledger WHERE id = 25",
        )
        .await;
    for i in 30..40 {
        pg.execute(&format!("INSERT INTO ledger VALUES ({i}, 'later')"))
            .await;
    }
    let end = pg.switch_wal().await;
    wait_archived(&repo, segment_size, 1, end, Duration::from_secs(120)).await;
    let compared = assert_segments_match(&repo, &pg, segment_size, 1).await;
    assert!(compared >= 2, "only {compared} segments compared");
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    if outage.is_some() {
        assert!(
            log.contains("succeeded after retries") || log.contains("reachable again"),
            "{log}"
        );
    }
    let out = env.run(&["verify", "--wal"]);
    assert!(out.status.success(), "verify: {}", text(&out));
    drop(pg);
    let target = format!("{t}+00");
    let (got, restored) =
        crate::restore::restore_ledger(STREAM_PG_MAJOR, &env, &["--target-time", &target]).await;
    assert_eq!(
        got,
        crate::restore::ids(0..26),
        "{}",
        restored.pg.log_text()
    );
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// moto (S3): create-only writes honoured (`If-None-Match: *` answered 412),
/// pages of 1,000 in key order, multipart uploads work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto() {
    let server = MotoServer::start();
    let repo = server.repository(PREFIX, keyring());
    exercise(
        server.store(),
        repo.clone(),
        Expected {
            create_only: CreateOnly::Honoured,
            page_size: 1000,
            sorted_listing: true,
            multipart: true,
        },
    )
    .await;
    repo.ensure_manifest(SYSTEM_ID, 16, 16 << 20).await.unwrap();
    binary_lists(server.url(PREFIX), server.env());
    assert_listed(&binary_lists_with_options(
        server.url(PREFIX),
        serde_json::json!({
            "aws_endpoint": server.endpoint(),
            "aws_access_key_id": crate::support::moto::ACCESS_KEY,
            "aws_secret_access_key": crate::support::moto::SECRET_KEY,
            "aws_region": crate::support::moto::REGION,
        }),
    ));
}

/// The core story on moto, with an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moto_core_story() {
    let server = MotoServer::start();
    let (stop, start) = (|| server.pause(), || server.resume());
    core_story(
        server.url(PREFIX),
        server.env(),
        server.repository(PREFIX, keyring()),
        Some((&stop, &start)),
    )
    .await;
}

/// The core story on Azurite, with an outage; `restore_command` reaches
/// the emulator through the settings file alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite_core_story() {
    let server = AzuriteServer::start();
    let (stop, start) = (|| server.pause(), || server.resume());
    core_story(
        server.url(PREFIX),
        server.env(),
        server.repository(PREFIX, keyring()),
        Some((&stop, &start)),
    )
    .await;
}

/// The core story on a local directory (no store process to stop: its
/// faults are the fault wrapper's tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_core_story() {
    let dir = tempfile::tempdir().unwrap();
    crate::support::pg::give_to_server_user(dir.path());
    let url = format!("file://{}", dir.path().display());
    let repo = Repository::open(&url, keyring(), seal_options()).unwrap();
    core_story(url, Vec::new(), repo, None).await;
}

/// A local directory: walvault writes its objects itself (direct I/O, a
/// staging name, then a link only if nothing is there), so the store's
/// promises are checked on the files: create-only writes, conflicts, no
/// staging file left or listed, a large object whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_directory_writes() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let repo = Repository::open(&url, keyring(), seal_options()).unwrap();
    sealed_round_trip_create_only(&repo).await;
    // Sizes around the direct-I/O block and chunk, in a new directory.
    for (i, len) in [0, 4095, 4096, 4097, (1 << 20) + 1, LARGE_OBJECT_BYTES]
        .into_iter()
        .enumerate()
    {
        let data = noise(len, i as u64);
        let key = format!("base/deep/part{i}");
        repo.put_sealed(&key, vec![Bytes::from(data.clone())])
            .await
            .unwrap();
        let back = repo.get_opened(&key).await.unwrap().unwrap();
        assert!(back == data, "{len} bytes come back unchanged");
    }
    // A staging file left by a write that was killed is not an object.
    std::fs::write(dir.path().join("wal/two#1234"), b"half").unwrap();
    let listed: Vec<String> = repo
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !k.starts_with("probe"))
        .collect();
    let mut want = vec!["wal/one".to_string()];
    want.extend((0..6).map(|i| format!("base/deep/part{i}")));
    want.sort();
    assert_eq!(listed, want);
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains('#') && !p.ends_with("wal/two#1234"))
        .collect();
    assert!(leftovers.is_empty(), "staging files left: {leftovers:?}");
}

/// On its way to a new object in a local directory, walvault fsyncs the
/// object and every directory from its own up to the repository's root
/// after linking it into place, before it counts as stored. Seen from the
/// system calls of the binary (`strace`): a new object under a new
/// directory, written by `walvault check`'s probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_object_and_its_directories_are_fsynced() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    std::fs::create_dir(&root).unwrap();
    let trace = dir.path().join("trace.txt");
    let out = std::process::Command::new("strace")
        .args(["-f", "-y", "-e", "trace=link,linkat,fsync,fdatasync", "-o"])
        .arg(&trace)
        .arg(crate::support::process::walvault_bin())
        .args(["check", "--no-server", "--json", "--repo"])
        .arg(format!("file://{}", root.display()))
        .env("WALVAULT_KEY", KEY)
        .output()
        .expect("strace (scripts/setup-test-env.sh)");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let repository = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "repository")
        .unwrap();
    assert_eq!(repository["status"], "ok", "{report}");
    let trace = std::fs::read_to_string(&trace).unwrap();
    let lines: Vec<&str> = trace.lines().collect();
    let probe_dir = root.join("probe");
    let probe_dir = probe_dir.to_str().unwrap();
    // The link of the probe object from its staging name.
    let (at, object) = lines
        .iter()
        .enumerate()
        .find_map(|(i, l)| {
            let rest = l.split_once("link")?.1;
            let target = rest.split('"').nth(3)?;
            (target.starts_with(probe_dir) && !target.contains('#'))
                .then(|| (i, target.to_string()))
        })
        .unwrap_or_else(|| panic!("no link into {probe_dir}:\n{trace}"));
    let synced = |path: &str| {
        lines[at..]
            .iter()
            .any(|l| l.contains("fsync(") && l.contains(&format!("<{path}>)")))
    };
    for path in [object.as_str(), probe_dir, root.to_str().unwrap()] {
        assert!(
            synced(path),
            "{path} was not fsynced after the link:\n{trace}"
        );
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// s3s-fs (S3), for comparison with moto.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3s_fs() {
    let server = S3Server::start();
    let repo = server.repository(PREFIX, keyring());
    exercise(
        server.store(),
        repo.clone(),
        Expected {
            create_only: CreateOnly::Honoured,
            page_size: 1000,
            sorted_listing: true,
            multipart: true,
        },
    )
    .await;
    repo.ensure_manifest(SYSTEM_ID, 16, 16 << 20).await.unwrap();
    binary_lists(server.url(PREFIX), server.env());
}

/// Azurite (Azure Blob): create-only writes honoured, pages of 5,000 in key
/// order, block-list multipart uploads work; survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azurite() {
    let mut server = AzuriteServer::start();
    let repo = server.repository(PREFIX, keyring());
    exercise(
        server.store(),
        repo.clone(),
        Expected {
            create_only: CreateOnly::Honoured,
            page_size: 5000,
            sorted_listing: true,
            multipart: true,
        },
    )
    .await;
    repo.ensure_manifest(SYSTEM_ID, 16, 16 << 20).await.unwrap();
    server.stop();
    server.launch();
    binary_lists(server.url(PREFIX), server.env());
    let out = binary_lists_with_options(
        server.url(PREFIX),
        serde_json::json!({
            "azure_storage_account_name": crate::support::azurite::ACCOUNT,
            "azure_storage_account_key": crate::support::azurite::ACCOUNT_KEY,
            "azure_storage_endpoint": server.blob_endpoint(),
        }),
    );
    assert_listed(&out);
}

/// fake-gcs-server (GCS). object_store writes through Google's XML API,
/// which this emulator does not serve: every object_store write is answered
/// 400 "invalid uploadType" and stores nothing. So objects are written
/// through the emulator's JSON API instead, and everything object_store
/// reads (GET, the XML listing with continuation tokens, DELETE) is checked
/// against it. Untested for `gs://`: create-only writes
/// (`x-goog-if-generation-match: 0` and the 412 that object_store maps to
/// `AlreadyExists`), walvault's conflict handling on GCS, the XML API
/// single PUT of a large object, and XML multipart uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs() {
    let mut server = GcsServer::start();
    let store = server.store();
    let repo = server.repository(PREFIX, keyring());
    // Sealed as walvault seals: bound to the key the object is read from.
    let seal = |key: &str, plain: &[u8]| {
        walvault::format::chunk::seal_bound(
            &[Bytes::copy_from_slice(plain)],
            &seal_options(),
            keyring().write_key(),
            rand::random(),
            walvault::format::chunk::Binding::Key(key),
        )
    };

    // Writes through object_store fail and store nothing.
    let err = repo
        .put_sealed("wal/one", vec![Bytes::from_static(b"hello store")])
        .await
        .unwrap_err();
    let text = format!("{err:?}");
    assert!(
        matches!(
            err,
            storage::Error::Backend {
                source: object_store::Error::Generic { .. },
                ..
            }
        ) && text.contains("400")
            && text.contains("invalid uploadType"),
        "{text}"
    );
    println!("put through object_store: {}", walvault::error::chain(&err));
    assert_eq!(repo.get_opened("wal/one").await.unwrap(), None);

    // Sealed round trip, the object written through the JSON API.
    server.upload(
        &format!("{PREFIX}/wal/one"),
        &seal("wal/one", b"hello store"),
    );
    assert_eq!(
        repo.get_opened("wal/one").await.unwrap().as_deref(),
        Some(&b"hello store"[..])
    );
    assert_eq!(repo.get_opened("wal/missing").await.unwrap(), None);
    // A create-only write of a key that exists meets the same refusal.
    let err = repo
        .put_sealed("wal/one", vec![Bytes::from_static(b"hello store")])
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("invalid uploadType"), "{err:?}");

    // A listing one key past the page size of 1,000, written in reverse order.
    let keys = listing_keys(1001);
    for k in keys.iter().rev() {
        server.upload(&format!("{PREFIX}/{k}"), &seal(k, k.as_bytes()));
    }
    let listed: Vec<String> = repo
        .list("list/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(listed, keys, "the repository lists every key, sorted");
    let raw = raw_listing(&*store, &format!("{PREFIX}/list")).await;
    assert_eq!(raw.len(), keys.len(), "object_store follows every page");
    assert!(raw.is_sorted(), "listing order");
    // fake-gcs-server's XML listing has no pages: it ignores Google's
    // default page size of 1,000 and an explicit `max-keys` alike, and
    // answers the whole listing at once without a continuation token. So
    // object_store's handling of GCS continuation tokens stays untested.
    let (page, more) = first_page(&*store, &format!("{PREFIX}/list/")).await;
    assert_eq!((page.len(), more), (keys.len(), false));
    let asked = store
        .list_paginated(
            Some(&format!("{PREFIX}/list/")),
            PaginatedListOptions {
                max_keys: Some(PAGE_KEYS),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (asked.result.objects.len(), asked.page_token.is_some()),
        (keys.len(), false)
    );
    assert_eq!(
        repo.get_opened("list/01000").await.unwrap().as_deref(),
        Some(&b"list/01000"[..])
    );

    // Delete: gone afterwards; deleting a missing key is fine.
    repo.delete("list/00000").await.unwrap();
    assert_eq!(repo.get_opened("list/00000").await.unwrap(), None);
    assert_eq!(repo.list("list/").await.unwrap().len(), keys.len() - 1);
    repo.delete("list/00000").await.unwrap();

    // A large object read back through object_store.
    let large = noise(LARGE_OBJECT_BYTES, 1);
    server.upload(&format!("{PREFIX}/base/large"), &seal("base/large", &large));
    let back = repo.get_opened("base/large").await.unwrap().unwrap();
    assert!(back == large, "the large object comes back unchanged");

    // object_store's multipart upload starts with an XML API POST, also refused.
    let multipart = probe_multipart(&*store, &Path::from(format!("{PREFIX}/raw/multipart"))).await;
    println!("multipart upload: {multipart:?}");
    assert!(multipart.is_err());

    // The binary reads a repository manifest written the same way, after a restart.
    let staging = Repository::from_store(
        Arc::new(object_store::memory::InMemory::new()),
        "",
        "memory".into(),
        keyring(),
        seal_options(),
    );
    staging
        .ensure_manifest(SYSTEM_ID, 16, 16 << 20)
        .await
        .unwrap();
    let manifest = staging
        .get_raw(walvault::storage::layout::REPOSITORY_MANIFEST)
        .await
        .unwrap()
        .unwrap();
    server.upload(
        &format!(
            "{PREFIX}/{}",
            walvault::storage::layout::REPOSITORY_MANIFEST
        ),
        &manifest,
    );
    server.stop();
    server.launch();
    binary_lists(server.url(PREFIX), server.env());
    assert_listed(&binary_lists_with_options(
        server.url(PREFIX),
        serde_json::json!({
            "google_service_account": server.service_account_path().display().to_string(),
        }),
    ));
}

/// `walvault stream` into fake-gcs-server: the first write, the create-only
/// probe, is refused (400 "invalid uploadType"), and walvault stops at once
/// with exit code 1 naming the object, without retrying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_stream() {
    use std::io::Read;
    let server = GcsServer::start();
    let pg = PgCluster::start(STREAM_PG_MAJOR, &PgOptions::default());
    let mut env = server.env();
    env.push(("WALVAULT_KEY".into(), KEY.into()));
    let mut child = RepoEnv {
        url: server.url(PREFIX),
        env,
    }
    .command()
    .arg("stream")
    .args([
        "--pg",
        &format!(
            "host=127.0.0.1 port={} user=postgres sslmode=disable",
            pg.port
        ),
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("walvault stream kept running against a store that refuses writes");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    // The first write is the create-only probe, before walvault.json.
    assert!(
        stderr.contains("probe/")
            && stderr.contains(
                "400 Bad Request: {\"error\":{\"code\":400,\"message\":\"invalid uploadType\""
            ),
        "{stderr}"
    );
}

/// Storage classes set per kind of object reach the store: WAL with one
/// class, backup objects with another, the identity document with the
/// bucket's default (moto reports them on HEAD).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_classes_per_kind() {
    let server = MotoServer::start();
    let mut env = server.env();
    env.push(("WALVAULT_KEY".into(), KEY.into()));
    env.push(("WALVAULT_WAL_STORAGE_CLASS".into(), "ONEZONE_IA".into()));
    env.push(("WALVAULT_BACKUP_STORAGE_CLASS".into(), "STANDARD_IA".into()));
    let env = RepoEnv {
        url: server.url(PREFIX),
        env,
    };
    let pg = PgCluster::start(STREAM_PG_MAJOR, &PgOptions::default());
    let out = env.run(&[
        "backup",
        "--pg",
        &format!(
            "host=127.0.0.1 port={} user=postgres sslmode=disable",
            pg.port
        ),
        "--checkpoint",
        "fast",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = meta["id"].as_str().unwrap();
    // moto refuses unsigned HEAD requests; its own state API lists each
    // key with the headers it answers with.
    let class_of = |key: &str| {
        let r = crate::support::http::request(server.port, "GET", "/moto-api/data.json", &[], b"")
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.head);
        let state: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        let name = format!("{PREFIX}/{key}");
        let entry = state["s3"]["FakeKey"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| {
                k["name"] == name.as_str() && k["bucket_name"] == crate::support::moto::BUCKET
            })
            .unwrap_or_else(|| panic!("{name} is not in moto"))
            .clone();
        entry["response_dict"]["x-amz-storage-class"]
            .as_str()
            .unwrap_or("STANDARD")
            .to_string()
    };
    assert_eq!(
        class_of(&walvault::storage::layout::backup_json_key(id)),
        "STANDARD_IA"
    );
    assert_eq!(
        class_of(&walvault::storage::layout::backup_part_key(id, "base", 0)),
        "STANDARD_IA"
    );
    let repo = server.repository(PREFIX, keyring());
    let wal = repo.list("wal/").await.unwrap();
    assert!(!wal.is_empty());
    for o in wal.iter().take(3) {
        assert_eq!(class_of(&o.key), "ONEZONE_IA", "{}", o.key);
    }
    assert_eq!(class_of("walvault.json"), "STANDARD");
}
