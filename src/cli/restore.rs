//! `walvault restore`: rebuild a cluster from the repository to a target.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::backup::list_backups;
use crate::progress::{Progress, human_bytes};
use crate::restore::unpack::{sync_tree, unpack_backup};
use crate::restore::{RecoveryTarget, TargetAction, TimelineTarget, plan_restore};

use super::RepoArgs;

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
#[command(
    long_about = "Restore a base backup into an empty directory and configure recovery to replay the \
archive to the target (default: the end of the archive). Before anything is written, walvault picks the newest \
backup that ends before the target (or --backup), checks that the directory is empty, that the key fits, and \
that the WAL from the backup's start has no gap. It writes recovery.signal (standby.signal with --standby), \
restore_command and the target settings in postgresql.auto.conf, and the repository settings in \
walvault-restore.json (mode 0600) for restore_command. Start PostgreSQL on the directory to recover."
)]
pub struct Args {
    /// The data directory to create (must be empty or absent).
    #[arg(long)]
    pub pgdata: PathBuf,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Restore this backup instead of the newest one before the target.
    #[arg(long)]
    pub backup: Option<String>,
    /// Recover to this time (with an explicit UTC offset, e.g. "2026-11-21 10:15:00+00").
    #[arg(long, conflicts_with_all = ["target_lsn", "target_xid", "target_name"])]
    pub target_time: Option<String>,
    /// Recover to this LSN.
    #[arg(long, conflicts_with_all = ["target_xid", "target_name"])]
    pub target_lsn: Option<String>,
    /// Recover to this transaction id.
    #[arg(long, conflicts_with = "target_name")]
    pub target_xid: Option<String>,
    /// Recover to this restore point (pg_create_restore_point).
    #[arg(long)]
    pub target_name: Option<String>,
    /// recovery_target_timeline: latest, current, or a number.
    #[arg(long, default_value = "latest")]
    pub target_timeline: String,
    /// What PostgreSQL does at the target.
    #[arg(long, value_enum, default_value = "promote")]
    pub target_action: TargetAction,
    /// Stop just before the target instead of just after it.
    #[arg(long)]
    pub exclusive: bool,
    /// Restore tablespace OID into DIR instead of its original location (repeatable).
    #[arg(long, value_name = "OID=DIR")]
    pub tablespace_map: Vec<String>,
    /// Restore as a standby that keeps following the archive.
    #[arg(long)]
    pub standby: bool,
    /// WAL segments restore_command fetches ahead of replay, in parallel (0: none).
    #[arg(long, default_value_t = 8)]
    pub prefetch: u64,
    /// Most bytes the prefetch spool (walvault-spool in the data directory) may hold.
    #[arg(long, default_value = "512MiB")]
    pub spool_max: String,
    /// Print the plan and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Start PostgreSQL on the restored directory, wait until recovery reaches the target and
    /// the target action has happened, print where it stopped, and leave the server running.
    #[arg(long)]
    pub start: bool,
    /// Directory holding pg_ctl and postgres (default: /usr/lib/postgresql/<major>/bin, then PATH).
    #[arg(long, requires = "start")]
    pub pg_bin: Option<PathBuf>,
    /// Port for the started server.
    #[arg(long, default_value_t = 5432, requires = "start")]
    pub port: u16,
    /// Unix socket directory for the started server (default: the data directory).
    #[arg(long, requires = "start")]
    pub socket_dir: Option<PathBuf>,
    /// Role to connect as while waiting for recovery.
    #[arg(long, default_value = "postgres", requires = "start")]
    pub user: String,
}

fn usage(what: &'static str, value: &str, reason: impl Into<String>) -> crate::config::Error {
    crate::config::Error::Invalid {
        what,
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn parse_target(args: &Args) -> Result<RecoveryTarget, crate::config::Error> {
    if let Some(t) = &args.target_time {
        let parsed = chrono::DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%#z")
            .or_else(|_| chrono::DateTime::parse_from_rfc3339(t))
            .map_err(|e| {
                usage(
                    "--target-time",
                    t,
                    format!("{e}; give a time with its UTC offset, e.g. 2026-11-21 10:15:00+00"),
                )
            })?;
        return Ok(RecoveryTarget::Time(parsed.with_timezone(&chrono::Utc)));
    }
    if let Some(l) = &args.target_lsn {
        return Ok(RecoveryTarget::Lsn(l.parse().map_err(
            |e: crate::lsn::ParseLsnError| usage("--target-lsn", l, e.to_string()),
        )?));
    }
    if let Some(x) = &args.target_xid {
        if x.parse::<u64>().is_err() {
            return Err(usage("--target-xid", x, "a transaction id is a number"));
        }
        return Ok(RecoveryTarget::Xid(x.clone()));
    }
    if let Some(n) = &args.target_name {
        return Ok(RecoveryTarget::Name(n.clone()));
    }
    Ok(RecoveryTarget::End)
}

/// Quotes a word for restore_command: PostgreSQL expands `%` escapes, then
/// runs the command with /bin/sh. Plain words stay as they are.
fn sh_quote(s: &str) -> String {
    let s = s.replace('%', "%%");
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:@%".contains(&b))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// Restores, and prints where recovery will stop.
///
/// # Errors
/// Refusals before writing (usage errors, exit 2, or plan errors, exit 1)
/// and failures while fetching.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let target = parse_target(&args)?;
    let timeline: TimelineTarget = args
        .target_timeline
        .parse()
        .map_err(|e: String| usage("--target-timeline", &args.target_timeline, e))?;
    if let Err(e) = crate::config::parse_byte_size(&args.spool_max) {
        anyhow::bail!(usage("--spool-max", &args.spool_max, e.to_string()));
    }
    let mut ts_map = Vec::new();
    for m in &args.tablespace_map {
        let (oid, dir) = m
            .split_once('=')
            .ok_or_else(|| usage("--tablespace-map", m, "use OID=DIR"))?;
        if oid.parse::<u32>().is_err() || !Path::new(dir).is_absolute() {
            anyhow::bail!(usage(
                "--tablespace-map",
                m,
                "use OID=DIR with a numeric OID and an absolute DIR"
            ));
        }
        ts_map.push((oid.to_string(), PathBuf::from(dir)));
    }
    if args.pgdata.exists()
        && std::fs::read_dir(&args.pgdata)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        anyhow::bail!(usage(
            "--pgdata",
            &args.pgdata.display().to_string(),
            "the directory is not empty; restore into an empty or new directory",
        ));
    }
    let (repo, _) = args.repo.open_existing().await?;
    let backups = list_backups(&repo).await.context("list backups")?;
    let plan = plan_restore(&repo, backups, args.backup.as_deref(), &target, timeline).await?;
    let b = &plan.backup;
    println!(
        "plan: backup {} ({} taken {} .. {}, {}, timeline {}), WAL on timeline {} from {} to {} (archive end {}), target {}",
        b.id,
        human_bytes(b.plain_bytes),
        b.start_time,
        b.stop_time,
        b.source.role,
        b.timeline,
        plan.path
            .iter()
            .map(|s| s.timeline.to_string())
            .collect::<Vec<_>>()
            .join(" -> "),
        plan.first_segment,
        plan.last_segment,
        plan.wal_end,
        match &target {
            RecoveryTarget::End => "end of the archive".to_string(),
            RecoveryTarget::Time(t) => format!("time {}", t.to_rfc3339()),
            RecoveryTarget::Lsn(l) => format!("LSN {l}"),
            RecoveryTarget::Xid(x) => format!("xid {x}"),
            RecoveryTarget::Name(n) => format!("restore point {n:?}"),
        }
    );
    // Every tablespace goes to an empty directory: its mapping, or where it
    // was on the source.
    let mut ts_dirs = Vec::new();
    for (oid, _) in &ts_map {
        if !b
            .tablespaces
            .iter()
            .any(|t| t.oid.map(|o| o.to_string()).as_ref() == Some(oid))
        {
            anyhow::bail!(usage(
                "--tablespace-map",
                oid,
                format!("backup {} has no tablespace with this OID", b.id)
            ));
        }
    }
    for t in &b.tablespaces {
        let Some(oid) = t.oid else { continue };
        let dir = ts_map
            .iter()
            .find(|(o, _)| *o == oid.to_string())
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| PathBuf::from(t.location.clone().unwrap_or_default()));
        if dir.exists()
            && std::fs::read_dir(&dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            anyhow::bail!(usage(
                "--tablespace-map",
                &dir.display().to_string(),
                format!(
                    "tablespace {oid} would be restored into {}, which is not empty; map it to an empty directory with --tablespace-map {oid}=DIR",
                    dir.display()
                )
            ));
        }
        ts_dirs.push((oid.to_string(), dir));
    }
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }

    std::fs::create_dir_all(&args.pgdata)
        .with_context(|| format!("create {}", args.pgdata.display()))?;
    set_mode(&args.pgdata, 0o700)?;
    let started = std::time::Instant::now();
    let progress = Progress::new(&format!("restore {}", b.id), b.plain_bytes);
    unpack_backup(&repo, b, &args.pgdata, &ts_dirs, &progress)
        .await
        .context("restore the backup")?;
    progress.finish();
    point_tablespaces(&args.pgdata, &ts_dirs)
        .context("point the tablespaces at their directories")?;

    write_recovery_config(&args, &target)?;
    let pgdata = args.pgdata.clone();
    let mut dirs = vec![pgdata.clone()];
    dirs.extend(ts_dirs.iter().map(|(_, d)| d.clone()));
    let unpacked = started.elapsed();
    tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|d| sync_tree(d)))
        .await
        .expect("sync does not panic")
        .context("sync the restored files")?;
    println!(
        "restored backup {} into {}: {} unpacked in {:.1}s, synced in {:.1}s",
        b.id,
        args.pgdata.display(),
        human_bytes(b.plain_bytes),
        unpacked.as_secs_f64(),
        (started.elapsed() - unpacked).as_secs_f64()
    );
    if args.start {
        start_and_wait(&args, b.pg_major).await?;
    } else {
        println!("start PostgreSQL on it to recover");
    }
    Ok(ExitCode::SUCCESS)
}

/// The prefetch spool, inside the data directory.
const SPOOL_DIR: &str = "walvault-spool";

/// How long `--start` waits for recovery before giving up (the server keeps running).
const RECOVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// Starts PostgreSQL, waits for the target action, reports where it stopped.
async fn start_and_wait(args: &Args, major: u32) -> anyhow::Result<()> {
    let bin = match &args.pg_bin {
        Some(b) => b.clone(),
        None => {
            let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
            if debian.join("pg_ctl").exists() {
                debian
            } else {
                PathBuf::new()
            }
        }
    };
    let pg_ctl = if bin.as_os_str().is_empty() {
        PathBuf::from("pg_ctl")
    } else {
        bin.join("pg_ctl")
    };
    let socket_dir = args
        .socket_dir
        .clone()
        .unwrap_or_else(|| args.pgdata.clone());
    let log = args.pgdata.join("walvault-start.log");
    let options = format!("-p {} -k '{}'", args.port, socket_dir.display());
    let out = tokio::process::Command::new(&pg_ctl)
        .arg("-D")
        .arg(&args.pgdata)
        .arg("-l")
        .arg(&log)
        .args(["-o", &options, "-W", "start"])
        .output()
        .await
        .with_context(|| format!("run {}", pg_ctl.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    println!(
        "PostgreSQL started on port {} (socket {}), log {}",
        args.port,
        socket_dir.display(),
        log.display()
    );
    let connstr = format!(
        "host={} port={} user={} dbname=postgres",
        socket_dir.display(),
        args.port,
        args.user
    );
    let pg_status = || async {
        tokio::process::Command::new(&pg_ctl)
            .arg("-D")
            .arg(&args.pgdata)
            .arg("status")
            .output()
            .await
            .map(|o| o.status.code())
    };
    let started = tokio::time::Instant::now();
    let deadline = started + RECOVERY_WAIT;
    // pg_ctl start -W returns before the postmaster writes its pid file:
    // "not running" means stopped only once it was seen running (or late).
    let mut seen_running = false;
    let has_stopped = async |seen: &mut bool| -> anyhow::Result<bool> {
        match pg_status().await? {
            Some(0) => {
                *seen = true;
                Ok(false)
            }
            Some(3) => Ok(*seen || started.elapsed() > std::time::Duration::from_secs(30)),
            _ => Ok(false),
        }
    };
    loop {
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "recovery did not reach its target within {RECOVERY_WAIT:?}; the server is still running"
            );
        }
        if args.target_action == TargetAction::Shutdown {
            if has_stopped(&mut seen_running).await? {
                println!(
                    "recovery reached the target and the server shut down as asked; see {}",
                    log.display()
                );
                return Ok(());
            }
        } else if let Ok((client, conn)) =
            tokio_postgres::connect(&connstr, tokio_postgres::NoTls).await
        {
            tokio::spawn(conn);
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await?
                .get(0);
            let done = if args.target_action == TargetAction::Promote {
                !in_recovery
            } else {
                in_recovery
                    && client
                        .query_one("SELECT pg_get_wal_replay_pause_state()::text", &[])
                        .await?
                        .get::<_, String>(0)
                        == "paused"
            };
            if done {
                let row = client
                    .query_one(
                        "SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,
                                CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint())::text
                                     ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::text END,
                                coalesce(pg_last_xact_replay_timestamp()::text, 'none')",
                        &[],
                    )
                    .await?;
                let (lsn, tli, ts): (String, String, String) = (row.get(0), row.get(1), row.get(2));
                let state = if in_recovery {
                    "paused at the target"
                } else {
                    "promoted"
                };
                println!(
                    "recovery {state}: final LSN {lsn}, timeline {tli}, last replayed commit at {ts}"
                );
                return Ok(());
            }
        } else if has_stopped(&mut seen_running).await? {
            anyhow::bail!(
                "PostgreSQL stopped during recovery; the end of its log:\n{}",
                tail(&std::fs::read_to_string(&log).unwrap_or_default(), 20)
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Makes the restored cluster find each tablespace in its directory: the
/// `tablespace_map` file of the backup (PostgreSQL makes the links from it
/// when recovery starts), or the `pg_tblspc` links themselves.
fn point_tablespaces(pgdata: &Path, dirs: &[(String, PathBuf)]) -> anyhow::Result<()> {
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

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Writes the signal file, the repository settings for restore_command and
/// the recovery settings; drops the source's standby settings.
fn write_recovery_config(args: &Args, target: &RecoveryTarget) -> anyhow::Result<()> {
    let dir = &args.pgdata;
    // A backup of a standby brings its signal file and replication settings.
    let _ = std::fs::remove_file(dir.join("standby.signal"));
    let _ = std::fs::remove_file(dir.join("recovery.signal"));
    let signal = if args.standby {
        "standby.signal"
    } else {
        "recovery.signal"
    };
    std::fs::write(dir.join(signal), "").context("write the signal file")?;

    let cfg_path = dir.join("walvault-restore.json");
    let cfg = repository_settings(&args.repo)?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&cfg_path)
            .with_context(|| format!("create {}", cfg_path.display()))?;
        f.write_all(
            serde_json::to_string_pretty(&cfg)
                .expect("serializes")
                .as_bytes(),
        )?;
        f.sync_all()?;
    }
    let exe = std::env::current_exe().context("find the walvault binary")?;
    let auto = dir.join("postgresql.auto.conf");
    let existing = std::fs::read_to_string(&auto).unwrap_or_default();
    let mut text: String = existing
        .lines()
        .map(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            if [
                "primary_conninfo",
                "primary_slot_name",
                "restore_command",
                "recovery_end_command",
            ]
            .contains(&key)
                || key.starts_with("recovery_target")
            {
                format!("# {l}  (disabled by walvault restore)")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    text.push_str("\n# Added by walvault restore\n");
    // The source's replication settings (postgresql.conf of a standby, say)
    // must not make the restored cluster follow another server.
    text.push_str("primary_conninfo = ''\nprimary_slot_name = ''\n");
    let fetch = format!(
        "{} wal-fetch --repo-config {}",
        sh_quote(&exe.display().to_string()),
        sh_quote(&cfg_path.display().to_string())
    );
    if args.prefetch == 0 {
        text.push_str(&format!(
            "restore_command = {}\n",
            quote(&format!("{fetch} %f %p"))
        ));
    } else {
        let spool = dir.join(SPOOL_DIR);
        text.push_str(&format!(
            "restore_command = {}\n",
            quote(&format!(
                "{fetch} --spool {} --prefetch {} --spool-max {} %f %p",
                sh_quote(&spool.display().to_string()),
                args.prefetch,
                args.spool_max
            ))
        ));
        text.push_str(&format!(
            "recovery_end_command = {}\n",
            quote(&format!(
                "{fetch} --spool {} --clean-spool",
                sh_quote(&spool.display().to_string())
            ))
        ));
    }
    match target {
        RecoveryTarget::End => {}
        RecoveryTarget::Time(t) => text.push_str(&format!(
            "recovery_target_time = {}\n",
            quote(&t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
        )),
        RecoveryTarget::Lsn(l) => text.push_str(&format!(
            "recovery_target_lsn = {}\n",
            quote(&l.to_string())
        )),
        RecoveryTarget::Xid(x) => text.push_str(&format!("recovery_target_xid = {}\n", quote(x))),
        RecoveryTarget::Name(n) => text.push_str(&format!("recovery_target_name = {}\n", quote(n))),
    }
    if !matches!(target, RecoveryTarget::End) {
        text.push_str(&format!(
            "recovery_target_inclusive = {}\n",
            if args.exclusive { "off" } else { "on" }
        ));
        let action = match args.target_action {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        };
        text.push_str(&format!("recovery_target_action = '{action}'\n"));
    }
    text.push_str(&format!(
        "recovery_target_timeline = {}\n",
        quote(&args.target_timeline)
    ));
    std::fs::write(&auto, text).context("write postgresql.auto.conf")?;
    Ok(())
}

/// The settings restore_command needs, taken from this command's own
/// repository settings and environment.
fn repository_settings(repo: &RepoArgs) -> anyhow::Result<serde_json::Value> {
    if let Some(path) = &repo.repo_config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        return Ok(serde_json::from_str(&text)?);
    }
    let key = match (&repo.key_file, std::env::var("WALVAULT_KEY").ok()) {
        (Some(path), _) => {
            // Every key of the file (old objects may need an older key).
            crate::format::Keyring::from_key_file(path)?;
            Some(std::fs::read_to_string(path)?)
        }
        (None, k) => k,
    };
    let mut options = serde_json::Map::new();
    for (var, option) in [
        ("AWS_ENDPOINT_URL", "aws_endpoint"),
        ("AWS_ENDPOINT", "aws_endpoint"),
        ("AWS_REGION", "aws_region"),
        ("AWS_DEFAULT_REGION", "aws_region"),
        ("AWS_ACCESS_KEY_ID", "aws_access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
        ("AWS_SESSION_TOKEN", "aws_session_token"),
        ("AWS_ALLOW_HTTP", "aws_allow_http"),
    ] {
        if let Ok(v) = std::env::var(var)
            && !options.contains_key(option)
        {
            options.insert(option.to_string(), serde_json::Value::String(v));
        }
    }
    if let Some(ep) = options.get("aws_endpoint").and_then(|v| v.as_str())
        && (ep.starts_with("http://127.")
            || ep.starts_with("http://localhost")
            || ep.starts_with("http://[::1]"))
    {
        options.insert(
            "aws_allow_http".into(),
            serde_json::Value::String("true".into()),
        );
    }
    Ok(serde_json::json!({
        "version": 1,
        "repo": repo.repo.clone().unwrap_or_default(),
        "key": key,
        "options": options,
    }))
}
