//! `log/{time}-{operation}-{random}.json`: one operation that changed the repository
//! (a backup, an expire run, a pin, a mark, a drill, a key rotation), who
//! ran it where, and how it ended. Sealed and bound to its name like every
//! object, so a record cannot be forged or changed without the key.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The record version this code writes.
pub const AUDIT_VERSION: u32 = 1;

/// The operations recorded.
pub const OPERATIONS: &[&str] = &[
    "backup",
    "expire",
    "keep",
    "unkeep",
    "mark",
    "drill",
    "key-add",
    "key-retire",
    "record-upgrade",
    "copy",
];

/// One audit record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Format version.
    pub version: u32,
    /// When the operation ended (the writer's clock).
    #[serde(with = "super::time")]
    pub at: DateTime<Utc>,
    /// One of [`OPERATIONS`].
    pub operation: String,
    /// What it acted on: a backup id, a mark name, key ids (if any).
    pub target: Option<String>,
    /// `success` or `failure`.
    pub result: String,
    /// What it did, or why it failed.
    pub detail: String,
    /// The host it ran on.
    pub host: String,
    /// The user it ran as.
    pub user: String,
    /// Its process id.
    pub pid: u32,
    /// The walvault version that ran it.
    pub walvault_version: String,
}

impl AuditRecord {
    /// Refuses a record this code does not know how to read.
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != AUDIT_VERSION {
            return Err(format!(
                "audit record version {}, but this walvault reads version {AUDIT_VERSION}",
                self.version
            ));
        }
        if !OPERATIONS.contains(&self.operation.as_str()) {
            return Err(format!("unknown operation {:?}", self.operation));
        }
        if self.result != "success" && self.result != "failure" {
            return Err(format!("unknown result {:?}", self.result));
        }
        Ok(())
    }

    /// Whether the operation succeeded.
    pub fn succeeded(&self) -> bool {
        self.result == "success"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(operation: &str, result: &str) -> AuditRecord {
        AuditRecord {
            version: AUDIT_VERSION,
            at: "2026-12-07T12:00:00Z".parse().unwrap(),
            operation: operation.into(),
            target: Some("20261207T120000Z".into()),
            result: result.into(),
            detail: "done".into(),
            host: "db1".into(),
            user: "postgres".into(),
            pid: 42,
            walvault_version: "0.1.0".into(),
        }
    }

    #[test]
    fn records_round_trip_and_unknown_values_are_refused() {
        let r = record("backup", "success");
        assert!(r.validate().is_ok());
        assert!(r.succeeded());
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<AuditRecord>(&text).unwrap(), r);
        let failed = record("expire", "failure");
        assert!(!failed.succeeded());
        for (field, value) in [("operation", "format"), ("result", "maybe")] {
            let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
            v[field] = value.into();
            let bad: AuditRecord = serde_json::from_value(v).unwrap();
            assert!(bad.validate().is_err(), "{field}={value} accepted");
        }
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["version"] = 2.into();
        let bad: AuditRecord = serde_json::from_value(v).unwrap();
        assert!(bad.validate().unwrap_err().contains("version 2"));
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["extra"] = 1.into();
        assert!(serde_json::from_value::<AuditRecord>(v).is_err());
    }
}
