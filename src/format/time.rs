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

/// Reads a time in exactly the stored form; any other spelling of the same
/// moment (an offset, fractions, lower case) is an error, so that a
/// document's MAC covers one text per value.
///
/// # Errors
/// When the text is not `YYYY-MM-DDTHH:MM:SSZ`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    let text = String::deserialize(d)?;
    from_text(&text).map_err(serde::de::Error::custom)
}

/// Parses the stored text of a time (see [`deserialize`]).
///
/// # Errors
/// Naming the text when it is not `YYYY-MM-DDTHH:MM:SSZ`.
pub fn from_text(text: &str) -> Result<DateTime<Utc>, String> {
    let t = DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("invalid time {text:?}: {e}"))?;
    if to_text(&t) != text {
        return Err(format!(
            "invalid time {text:?}: stored times are written YYYY-MM-DDTHH:MM:SSZ"
        ));
    }
    Ok(t)
}

/// The stored text of a time.
pub fn to_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stored_spelling_is_read() {
        let t = from_text("2026-11-21T05:15:00Z").unwrap();
        assert_eq!(to_text(&t), "2026-11-21T05:15:00Z");
        for other in [
            "2026-11-21T05:15:00+00:00",
            "2026-11-21T05:15:00.000Z",
            "2026-11-21t05:15:00z",
            "2026-11-21T06:15:00+01:00",
            "2026-11-21 05:15:00Z",
        ] {
            let e = from_text(other).unwrap_err();
            assert!(e.contains(other), "{e}");
        }
    }
}
