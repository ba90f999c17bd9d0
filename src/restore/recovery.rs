//! The recovery configuration of a restored cluster, as a pure function:
//! the source's `postgresql.auto.conf` in, the new one out (with
//! `restore_command`, the target and what to do there), and the signal file
//! to create. Nothing here touches the file system.

use std::path::Path;

use super::plan::{RecoveryTarget, TargetAction, TimelineTarget};
use crate::config::ByteSize;

/// The signal file that starts targeted recovery.
pub const RECOVERY_SIGNAL: &str = "recovery.signal";
/// The signal file that starts standby mode.
pub const STANDBY_SIGNAL: &str = "standby.signal";

/// Settings a source may carry that must not survive into the restored
/// cluster: they would make it follow another server or run the source's
/// recovery commands.
const DISABLED_SETTINGS: &[&str] = &[
    "primary_conninfo",
    "primary_slot_name",
    "restore_command",
    "recovery_end_command",
];

/// How recovery fetches WAL and where it stops.
#[derive(Clone, Debug)]
pub struct RecoverySettings<'a> {
    /// The walvault binary.
    pub walvault: &'a Path,
    /// The repository settings file `restore_command` reads.
    pub settings_file: &'a Path,
    /// The prefetch spool directory, when prefetching.
    pub spool: Option<&'a Path>,
    /// Segments fetched ahead (0: none).
    pub prefetch: u64,
    /// The spool's size limit.
    pub spool_max: ByteSize,
    /// How long restore_command retries a failing store.
    pub fetch_timeout: std::time::Duration,
    /// Where recovery stops.
    pub target: &'a RecoveryTarget,
    /// Stop just before the target.
    pub exclusive: bool,
    /// What to do at the target.
    pub action: TargetAction,
    /// `recovery_target_timeline`.
    pub timeline: TimelineTarget,
    /// Standby mode instead of targeted recovery.
    pub standby: bool,
}

/// The signal file to create (the other one, if the source had it, goes).
pub fn signal_file(standby: bool) -> &'static str {
    if standby {
        STANDBY_SIGNAL
    } else {
        RECOVERY_SIGNAL
    }
}

/// One recovery setting walvault adds: its name and its value, unquoted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Setting {
    /// The parameter.
    pub name: &'static str,
    /// Its value, as PostgreSQL reads it (before postgresql.conf quoting).
    pub value: String,
}

impl Setting {
    fn new(name: &'static str, value: impl Into<String>) -> Setting {
        Setting {
            name,
            value: value.into(),
        }
    }
}

/// The new `postgresql.auto.conf`: the source's lines with its replication
/// and recovery settings commented out, then walvault's.
pub fn render_auto_conf(existing: &str, settings: &[Setting]) -> String {
    let mut text = disable_source_settings(existing);
    text.push_str("# Added by walvault restore\n");
    text.push_str(&render_settings(settings));
    text
}

/// The source's `postgresql.auto.conf` with its replication and recovery
/// settings commented out: they would make the restored cluster follow
/// another server or run the source's commands. Ends with a newline.
pub fn disable_source_settings(existing: &str) -> String {
    let mut text: String = existing
        .lines()
        .map(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            if DISABLED_SETTINGS.contains(&key) || key.starts_with("recovery_target") {
                format!("# {l}  (disabled by walvault restore)")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    text.push('\n');
    text
}

/// The settings as `postgresql.conf` lines.
pub fn render_settings(settings: &[Setting]) -> String {
    settings
        .iter()
        .map(|s| {
            if s.name == "recovery_target_inclusive" {
                format!("{} = {}\n", s.name, s.value)
            } else {
                format!("{} = {}\n", s.name, quote(&s.value))
            }
        })
        .collect()
}

/// The settings as one JSON document: the signal file to create, the
/// settings file `restore_command` reads, and each setting by name.
pub fn settings_document(
    standby: bool,
    settings_file: &Path,
    settings: &[Setting],
) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = settings
        .iter()
        .map(|s| (s.name.to_string(), s.value.clone().into()))
        .collect();
    serde_json::json!({
        "signal_file": signal_file(standby),
        "settings_file": settings_file,
        "settings": map,
    })
}

/// walvault's recovery settings, in the order they are written.
pub fn recovery_settings(s: &RecoverySettings<'_>) -> Vec<Setting> {
    // The source's replication settings (postgresql.conf of a standby, say)
    // must not make the restored cluster follow another server.
    let mut out = vec![
        Setting::new("primary_conninfo", ""),
        Setting::new("primary_slot_name", ""),
    ];
    let mut fetch = format!(
        "{} wal-fetch --repo-config {}",
        sh_quote(&s.walvault.display().to_string()),
        sh_quote(&s.settings_file.display().to_string())
    );
    if s.fetch_timeout != crate::restore::serve::DEFAULT_FETCH_TIMEOUT {
        fetch.push_str(&format!(
            " --fetch-timeout {}s",
            s.fetch_timeout.as_secs().max(1)
        ));
    }
    match s.spool.filter(|_| s.prefetch > 0) {
        None => out.push(Setting::new("restore_command", format!("{fetch} %f %p"))),
        Some(spool) => {
            let spool = sh_quote(&spool.display().to_string());
            out.push(Setting::new(
                "restore_command",
                format!(
                    "{fetch} --spool {spool} --prefetch {} --spool-max {} %f %p",
                    s.prefetch, s.spool_max
                ),
            ));
            out.push(Setting::new(
                "recovery_end_command",
                format!("{fetch} --spool {spool} --clean-spool"),
            ));
        }
    }
    match s.target {
        RecoveryTarget::End => {}
        RecoveryTarget::Time(t) => out.push(Setting::new(
            "recovery_target_time",
            t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
        )),
        RecoveryTarget::Lsn(l) => out.push(Setting::new("recovery_target_lsn", l.to_string())),
        RecoveryTarget::Xid(x) => out.push(Setting::new("recovery_target_xid", x.to_string())),
        RecoveryTarget::Name(n) => out.push(Setting::new("recovery_target_name", n.clone())),
        RecoveryTarget::Immediate => out.push(Setting::new("recovery_target", "immediate")),
    }
    if !matches!(s.target, RecoveryTarget::End) {
        out.push(Setting::new(
            "recovery_target_inclusive",
            if s.exclusive { "off" } else { "on" },
        ));
        let action = match s.action {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        };
        out.push(Setting::new("recovery_target_action", action));
    }
    out.push(Setting::new(
        "recovery_target_timeline",
        s.timeline.to_string(),
    ));
    out
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

/// Quotes a value for postgresql.conf.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    fn settings<'a>(target: &'a RecoveryTarget, spool: Option<&'a Path>) -> RecoverySettings<'a> {
        RecoverySettings {
            walvault: Path::new("/usr/bin/walvault"),
            settings_file: Path::new("/restore/it's here.json"),
            spool,
            prefetch: 8,
            spool_max: "512MiB".parse().unwrap(),
            fetch_timeout: crate::restore::serve::DEFAULT_FETCH_TIMEOUT,
            target,
            exclusive: false,
            action: TargetAction::Promote,
            timeline: TimelineTarget::Latest,
            standby: false,
        }
    }

    #[test]
    fn source_replication_settings_are_disabled() {
        let existing =
            "work_mem = '8MB'\nprimary_conninfo = 'host=old'\nrecovery_target_name = 'x'";
        let out = render_auto_conf(
            existing,
            &recovery_settings(&settings(&RecoveryTarget::End, None)),
        );
        assert!(out.starts_with("work_mem = '8MB'\n# primary_conninfo = 'host=old'  (disabled by walvault restore)\n# recovery_target_name = 'x'  (disabled"));
        assert!(out.contains("\nprimary_conninfo = ''\nprimary_slot_name = ''\n"));
        // The end of the archive: no target settings, only the timeline.
        assert!(!out.contains("recovery_target_action"));
        assert!(out.ends_with("recovery_target_timeline = 'latest'\n"));
    }

    #[test]
    fn restore_command_quotes_for_the_shell_and_the_config() {
        let out = render_auto_conf(
            "",
            &recovery_settings(&settings(&RecoveryTarget::End, None)),
        );
        assert!(
            out.contains(
                "restore_command = '/usr/bin/walvault wal-fetch --repo-config ''/restore/it''\\\\''''s here.json'' %f %p'\n"
            ),
            "{out}"
        );
        assert!(!out.contains("recovery_end_command"));
    }

    #[test]
    fn prefetch_adds_the_spool_and_its_cleanup() {
        let spool = Path::new("/data/walvault-spool");
        let out = render_auto_conf(
            "",
            &recovery_settings(&settings(&RecoveryTarget::End, Some(spool))),
        );
        assert!(
            out.contains("--spool /data/walvault-spool --prefetch 8 --spool-max 512MiB %f %p'\n")
        );
        assert!(out.contains(
            "recovery_end_command = '/usr/bin/walvault wal-fetch --repo-config ''/restore/it''\\\\''''s here.json'' --spool /data/walvault-spool --clean-spool'\n"
        ));
    }

    #[test]
    fn targets_are_written_with_their_action() {
        let t = RecoveryTarget::Time("2026-11-21T10:15:00.25Z".parse().unwrap());
        let mut s = settings(&t, None);
        s.exclusive = true;
        s.action = TargetAction::Pause;
        let out = render_auto_conf("", &recovery_settings(&s));
        assert!(out.contains("recovery_target_time = '2026-11-21 10:15:00.250000+00'\n"));
        assert!(out.contains("recovery_target_inclusive = off\n"));
        assert!(out.contains("recovery_target_action = 'pause'\n"));
        let l = RecoveryTarget::Lsn(Lsn(0x1_0000_0028));
        let out = render_auto_conf("", &recovery_settings(&settings(&l, None)));
        assert!(out.contains("recovery_target_lsn = '1/28'\nrecovery_target_inclusive = on\nrecovery_target_action = 'promote'\n"));
        let n = RecoveryTarget::Name("before 'migration'".into());
        let out = render_auto_conf("", &recovery_settings(&settings(&n, None)));
        assert!(out.contains("recovery_target_name = 'before ''migration'''\n"));
        assert_eq!(signal_file(true), "standby.signal");
        assert_eq!(signal_file(false), "recovery.signal");
    }
}
