//! What `walvault stream` was given, checked and assembled into the parts
//! the sidecar runs: the stream's options, the backup and drill schedules,
//! retention, and the metrics endpoint and notifications. Every value is
//! checked here, before anything connects or streams; a bad one is a
//! configuration error (exit code 2) that names the flag.

use std::path::PathBuf;
use std::time::Duration;

use tracing::info;

use super::{BackupSchedule, DrillSchedule, ExpireSchedule, Monitoring};
use crate::backup::{BackupOptions, DEFAULT_PART_SIZE_BYTES};
use crate::config::{Error, RepositorySource};
use crate::protocol::ConnInfo;
use crate::restore::drill::DrillOptions;
use crate::restore::plan::RecoveryTarget;
use crate::retention::policy::Policy;
use crate::schedule::Schedule;
use crate::storage::Repository;
use crate::wal::receiver::StreamOptions;

/// The smallest memory budget: room for a few WAL segments in flight.
const MIN_MEMORY_BUDGET_BYTES: u64 = 4 << 20;
/// The shortest time between expire runs.
const MIN_EXPIRE_INTERVAL: Duration = Duration::from_secs(1);
/// The port a drill's server is given (it listens on a socket only).
const DRILL_PORT: u16 = 5432;
/// The role a drill connects to its server as.
const DRILL_USER: &str = "postgres";

/// Everything `walvault stream` was given.
#[derive(Clone, Debug)]
pub struct SidecarSettings {
    /// The server.
    pub conninfo: ConnInfo,
    /// The replication slot.
    pub slot: String,
    /// How often the open segment's new WAL is stored.
    pub flush_interval: Duration,
    /// Store every batch as it arrives.
    pub synchronous: bool,
    /// Memory for WAL held before it is stored.
    pub memory_budget_bytes: u64,
    /// Uploads in flight at once.
    pub upload_concurrency: usize,
    /// How long a graceful shutdown may spend storing the tail.
    pub shutdown_timeout: Duration,
    /// Base backups on this cron schedule.
    pub backup_schedule: Option<String>,
    /// Scheduled backups start with an immediate checkpoint.
    pub backup_fast_checkpoint: bool,
    /// Rate limit of scheduled backups, bytes per second.
    pub backup_max_rate_bytes: Option<u64>,
    /// What retention keeps.
    pub retention: Policy,
    /// Time between expire runs.
    pub expire_interval: Duration,
    /// Serve `/metrics` and `/health` here.
    pub metrics_addr: Option<String>,
    /// Lag over this makes `/health` answer 503.
    pub rpo: Duration,
    /// A newest backup older than this makes `/health` degraded.
    pub backup_max_age: Duration,
    /// Post incidents to this webhook.
    pub notify_webhook: Option<String>,
    /// Restore drills on this cron schedule.
    pub drill_schedule: Option<String>,
    /// Where drills make their scratch directory (default: the temporary directory).
    pub drill_scratch: Option<PathBuf>,
    /// Directory of pg_ctl and pg_amcheck for drills.
    pub pg_bin: Option<PathBuf>,
}

/// The sidecar's parts, checked and ready to run.
pub struct Sidecar {
    /// The WAL stream.
    pub stream: StreamOptions,
    /// Scheduled backups.
    pub backups: Option<BackupSchedule>,
    /// Retention.
    pub expire: Option<ExpireSchedule>,
    /// Scheduled restore drills.
    pub drills: Option<DrillSchedule>,
    /// The metrics endpoint and notifications.
    pub monitoring: Option<Monitoring>,
}

fn invalid(what: &'static str, value: impl Into<String>, reason: impl Into<String>) -> Error {
    Error::Invalid {
        what,
        value: value.into(),
        reason: reason.into(),
    }
}

fn schedule(what: &'static str, text: &str) -> Result<Schedule, Error> {
    Schedule::parse(text).map_err(|e| invalid(what, text, e.to_string()))
}

impl SidecarSettings {
    /// Checks every setting that can be checked without the repository or
    /// the server: a command that would create the repository calls this
    /// first, so that a mistake creates nothing.
    ///
    /// # Errors
    /// A setting that cannot be used (exit code 2), naming its flag.
    pub fn check(&self) -> Result<(), Error> {
        crate::protocol::command::validate_slot_name(&self.slot)
            .map_err(|reason| invalid("--slot", self.slot.clone(), reason))?;
        if self.flush_interval.is_zero() {
            return Err(invalid(
                "--flush-interval",
                "0",
                "must be positive (use --synchronous for per-batch uploads)",
            ));
        }
        if self.memory_budget_bytes < MIN_MEMORY_BUDGET_BYTES {
            return Err(invalid(
                "--memory-budget",
                self.memory_budget_bytes.to_string(),
                "must hold at least 4 MiB",
            ));
        }
        if let Some(text) = &self.backup_schedule {
            schedule("--backup-schedule", text)?;
        }
        if let Some(text) = &self.drill_schedule {
            schedule("--drill-schedule", text)?;
        }
        if let Some(addr) = &self.metrics_addr {
            std::net::ToSocketAddrs::to_socket_addrs(addr.as_str()).map_err(|e| {
                invalid(
                    "--metrics-addr",
                    addr,
                    format!("not an address to listen on: {e}"),
                )
            })?;
        }
        if let Some(url) = &self.notify_webhook
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            // The URL is a credential: not shown.
            return Err(invalid(
                "--notify-webhook",
                "(not shown)",
                "give an http:// or https:// URL",
            ));
        }
        Ok(())
    }

    /// Checks every setting and assembles the sidecar writing to `repo`
    /// (reached as `source` says, for drills' `restore_command`); binds the
    /// metrics address, so a taken one fails before streaming.
    ///
    /// # Errors
    /// A setting that cannot be used (exit code 2), naming its flag.
    pub async fn assemble(
        self,
        repo: &Repository,
        source: &RepositorySource,
    ) -> Result<Sidecar, Error> {
        self.check()?;
        let stream = StreamOptions {
            conninfo: self.conninfo.clone(),
            slot: self.slot.clone(),
            flush_interval: self.flush_interval,
            synchronous: self.synchronous,
            memory_budget_bytes: self.memory_budget_bytes,
            upload_concurrency: self.upload_concurrency.max(1),
            shutdown_timeout: self.shutdown_timeout,
        };
        let backups = match &self.backup_schedule {
            Some(text) => Some(BackupSchedule {
                schedule: schedule("--backup-schedule", text)?,
                options: BackupOptions {
                    max_rate_bytes: self.backup_max_rate_bytes,
                    ..BackupOptions::new(
                        stream.conninfo.clone(),
                        self.backup_fast_checkpoint,
                        DEFAULT_PART_SIZE_BYTES,
                        stream.upload_concurrency,
                        stream.memory_budget_bytes,
                    )
                },
            }),
            None => None,
        };
        let monitoring = self.monitoring(repo, &stream).await?;
        let drills = match &self.drill_schedule {
            Some(text) => Some(self.drills(text, source)?),
            None => None,
        };
        let expire = (!self.retention.is_empty()).then(|| ExpireSchedule {
            policy: self.retention.clone(),
            interval: self.expire_interval.max(MIN_EXPIRE_INTERVAL),
        });
        Ok(Sidecar {
            stream,
            backups,
            expire,
            drills,
            monitoring,
        })
    }

    /// The endpoint (bound now) and the webhook, if either is asked for.
    async fn monitoring(
        &self,
        repo: &Repository,
        stream: &StreamOptions,
    ) -> Result<Option<Monitoring>, Error> {
        let listener = match &self.metrics_addr {
            Some(addr) => {
                let listener = crate::metrics::http::bind(addr).await.map_err(|e| {
                    invalid("--metrics-addr", addr, format!("cannot listen there: {e}"))
                })?;
                info!(addr = %listener.local_addr().map_or(addr.clone(), |a| a.to_string()), "serving /metrics and /health");
                Some(listener)
            }
            None => None,
        };
        Ok(
            (listener.is_some() || self.notify_webhook.is_some()).then(|| Monitoring {
                metrics: crate::metrics::Metrics::new(repo.clone()),
                listener,
                webhook: self.notify_webhook.clone(),
                thresholds: crate::metrics::health::Thresholds {
                    rpo: self.rpo,
                    backup_max_age: self.backup_max_age,
                },
                conninfo: stream.conninfo.clone(),
                slot: stream.slot.clone(),
            }),
        )
    }

    /// Drills on the schedule `text`, restoring to the end of the archive.
    fn drills(&self, text: &str, source: &RepositorySource) -> Result<DrillSchedule, Error> {
        let scratch = self
            .drill_scratch
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        let scratch_parent = std::path::absolute(&scratch).map_err(|e| {
            invalid(
                "--drill-scratch",
                scratch.display().to_string(),
                e.to_string(),
            )
        })?;
        let walvault = std::env::current_exe()
            .map_err(|e| invalid("the walvault binary", "", e.to_string()))?;
        Ok(DrillSchedule {
            schedule: schedule("--drill-schedule", text)?,
            options: DrillOptions {
                backup: None,
                target: RecoveryTarget::End,
                scratch_parent,
                pg_bin: self.pg_bin.clone(),
                port: DRILL_PORT,
                user: DRILL_USER.into(),
                check_sql: None,
                settings: source.settings()?,
                walvault,
            },
        })
    }
}
