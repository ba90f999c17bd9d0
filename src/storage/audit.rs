//! The audit trail: a sealed record per operation that changed the
//! repository (`format::audit`), appended create-only under `log/`, and
//! read back in time order by `walvault log` and `info`.

use tracing::warn;

use super::{Error, Repository, layout};
use crate::format::audit::{AUDIT_VERSION, AuditRecord};

impl Repository {
    /// Appends a record of `operation` (on `target`) ending now with
    /// `result`: what it did, or why it failed. Never fails the operation
    /// itself: a record that cannot be stored is a warning. A repository
    /// without `walvault.json` (nothing was ever stored) gets no record.
    pub async fn audit(
        &self,
        operation: &str,
        target: Option<&str>,
        result: Result<String, String>,
    ) {
        if self.identity().is_none() && !matches!(self.open_manifest().await, Ok(Some(_))) {
            return;
        }
        let (result, detail) = match result {
            Ok(d) => ("success", d),
            Err(d) => ("failure", d),
        };
        let record = AuditRecord {
            version: AUDIT_VERSION,
            at: chrono::Utc::now(),
            operation: operation.to_string(),
            target: target.map(str::to_string),
            result: result.to_string(),
            detail,
            host: crate::telemetry::hostname(),
            user: user_name(),
            pid: std::process::id(),
            walvault_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let key = layout::audit_key(&record.at, operation, rand::random());
        let body = serde_json::to_vec_pretty(&record).expect("a record serializes");
        if let Err(e) = self.put_sealed(&key, vec![body.into()]).await {
            warn!(key, operation, error = %crate::error::chain(&e),
                "could not append the audit record");
        }
    }

    /// The audit records whose key passes `pick` (given the time stamp
    /// `YYYYMMDDTHHMMSS.mmmZ` and the operation in the key, so nothing else is
    /// read), oldest first, and how many of those were sealed with a key
    /// the keyring lacks (a retired key's).
    ///
    /// # Errors
    /// Store errors; a record that does not open, parse or validate, or
    /// whose time or operation is not the one in its name, naming it.
    pub async fn read_audit(
        &self,
        pick: impl Fn(&str, &str) -> bool,
    ) -> Result<(Vec<AuditRecord>, usize), Error> {
        let mut out = Vec::new();
        let mut locked = 0;
        for o in self.list(layout::AUDIT_PREFIX).await? {
            let Some((stamp, operation)) = layout::audit_key_parts(&o.key) else {
                return Err(Error::BadDocument {
                    key: o.key,
                    reason: "not the name of an audit record".into(),
                });
            };
            if !pick(stamp, operation) {
                continue;
            }
            let (stamp, operation) = (stamp.to_string(), operation.to_string());
            let record = match self.read_document::<AuditRecord>(&o.key).await {
                Ok(Some(record)) => record,
                Ok(None) => continue,
                Err(Error::Corrupt {
                    source: crate::format::chunk::Error::UnknownKey { .. },
                    ..
                }) => {
                    locked += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let bad = |reason: String| Error::BadDocument {
                key: o.key.clone(),
                reason,
            };
            record.validate().map_err(bad)?;
            // The record's time is whole seconds; its name's to the millisecond.
            if !stamp.starts_with(&record.at.format("%Y%m%dT%H%M%S").to_string())
                || record.operation != operation
            {
                return Err(bad(format!(
                    "it records {} at {}, not what its name says",
                    record.operation,
                    crate::format::time::to_text(&record.at)
                )));
            }
            out.push((o.key, record));
        }
        out.sort_by(|(a, _), (b, _)| a.cmp(b));
        Ok((out.into_iter().map(|(_, r)| r).collect(), locked))
    }
}

/// The user this process runs as: `$USER`, else `$LOGNAME`, else the uid.
fn user_name() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(var)
            && !u.is_empty()
        {
            return u;
        }
    }
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(|u| format!("uid {u}")))
        })
        .unwrap_or_else(|| "unknown user".into())
}
