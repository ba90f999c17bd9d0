//! `pg_rewind --restore-target-wal` with `restore_command = walvault
//! wal-fetch --exact`: after a failover, the old primary's WAL that its
//! own pg_wal no longer holds comes from the repository, exactly as the
//! stream stored it, and the old primary follows the new one.

use std::time::Duration;

use crate::restore::text;
use crate::support::pg::{PgCluster, PgOptions, command_as_server_user, pg_program, pg18_tool};
use crate::support::process::{StreamProcess, walvault_bin};
use crate::support::s3::S3Server;
use crate::support::wait_for;
use crate::wal_push::settings_for_server;

async fn rows(pg: &PgCluster) -> String {
    pg.query_one("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ledger")
        .await
}

/// PostgreSQL 15 with Debian's pg_rewind, 18 with the PyPI wheel's.
async fn pg_rewind_reads_the_old_primarys_wal_from_the_repository(major: u32) {
    let pg_rewind = match major {
        18 => pg18_tool("pg_rewind"),
        _ => pg_program(major, "pg_rewind"),
    };
    let s3 = S3Server::start();
    let (env, repo) = crate::restore::s3_env(&s3, "rewind");
    let (_settings_dir, settings) = settings_for_server(&s3, &env);
    let mut old = PgCluster::start(
        major,
        &PgOptions {
            extra_conf: vec![
                "wal_log_hints = on".into(),
                "wal_keep_size = 0".into(),
                "max_wal_size = 32MB".into(),
            ],
            ..Default::default()
        },
    );
    old.execute("CREATE TABLE ledger (id int PRIMARY KEY)")
        .await;
    old.execute("INSERT INTO ledger SELECT generate_series(0, 9)")
        .await;
    let new = PgCluster::standby_of(&mut old);
    let stream = StreamProcess::start(&env, old.port, &["--flush-interval", "200ms"]);
    let lsn = old.switch_wal().await;
    new.wait_replayed(lsn).await;

    // Failover: the standby is promoted while the old primary still
    // writes (the split brain pg_rewind undoes).
    new.promote();
    new.execute("INSERT INTO ledger SELECT generate_series(10, 19)")
        .await;
    let diverged = old
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())")
        .await;
    wait_for(
        "the old primary to recycle the WAL where the two diverged",
        Duration::from_secs(90),
        || async {
            old.execute(
                "INSERT INTO ledger SELECT generate_series(100, 109) ON CONFLICT DO NOTHING",
            )
            .await;
            old.execute("SELECT pg_switch_wal()").await;
            old.execute("CHECKPOINT").await;
            let held = old
                .query_one(&format!(
                    "SELECT count(*)::text FROM pg_ls_waldir() WHERE name <= '{diverged}'"
                ))
                .await;
            (held == "0").then_some(())
        },
    )
    .await;
    let end = old.switch_wal().await;
    crate::support::archive::wait_archived(&repo, 1 << 20, 1, end, Duration::from_secs(60)).await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    old.stop_fast();

    let rewind = || {
        let mut c = command_as_server_user(&pg_rewind, major);
        c.arg("--target-pgdata").arg(&old.data_dir).arg(format!(
            "--source-server=host=127.0.0.1 port={} user=postgres dbname=postgres",
            new.port
        ));
        c
    };
    // Without the repository, pg_rewind cannot find the old primary's
    // last common checkpoint: its own pg_wal no longer holds it.
    let out = rewind().arg("--dry-run").output().unwrap();
    assert!(!out.status.success(), "pg_rewind: {}", text(&out));
    assert!(text(&out).contains("could not"), "{}", text(&out));

    // pg_rewind takes restore_command from the target's configuration.
    let conf = old.data_dir.join("postgresql.conf");
    let mut text_conf = std::fs::read_to_string(&conf).unwrap();
    text_conf.push_str(&format!(
        "\nrestore_command = '{} wal-fetch --exact --repo-config {} %f %p'\n",
        walvault_bin().display(),
        settings.display()
    ));
    std::fs::write(&conf, text_conf).unwrap();
    let out = rewind()
        .args(["-R", "--restore-target-wal"])
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_rewind: {}", text(&out));
    assert!(
        text(&out).contains("rewinding from last common checkpoint"),
        "{}",
        text(&out)
    );

    // The old primary follows the new one: the new rows, not its own.
    old.launch();
    new.execute("INSERT INTO ledger SELECT generate_series(20, 29)")
        .await;
    let lsn = new.current_lsn().await;
    old.wait_replayed(lsn).await;
    let want = crate::restore::ids(0..30);
    assert_eq!(rows(&old).await, want, "{}", old.log_text());
    assert_eq!(
        old.query_one("SELECT pg_is_in_recovery()::text").await,
        "true"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_rewind_pg15() {
    pg_rewind_reads_the_old_primarys_wal_from_the_repository(15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_rewind_pg18() {
    pg_rewind_reads_the_old_primarys_wal_from_the_repository(18).await;
}
