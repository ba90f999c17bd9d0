//! Times in stored documents: RFC 3339 in UTC to the second
//! (`2026-11-21T05:15:00Z`), as every document version has written them.
//! For `#[serde(with = "crate::format::time")]`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer};

/// Writes `t` as `YYYY-MM-DDTHH:MM:SSZ`.
///
/// # Errors
/// Those of the serializer.
pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&to_text(t))
}

/// Reads any RFC 3339 time; a malformed one is an error.
///
/// # Errors
/// When the text is not an RFC 3339 time.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| serde::de::Error::custom(format!("invalid time {text:?}: {e}")))
}

/// The stored text of a time.
pub fn to_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}
