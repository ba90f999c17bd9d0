//! Replication commands and the parsing of their results.
//!
//! Command text and result parsing are pure functions; the `impl` on
//! [`ReplicationConnection`] only sends and receives.

use crate::lsn::{Lsn, TimelineId};

use super::Error;
use super::connection::{QueryResult, ReplicationConnection};

/// What IDENTIFY_SYSTEM reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier (decimal text).
    pub system_identifier: String,
    /// The current timeline (on a standby: of the last replayed record).
    pub timeline: TimelineId,
    /// The current flush position.
    pub xlogpos: Lsn,
}

/// How START_REPLICATION answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartReplication {
    /// The copy stream is open.
    Streaming,
    /// The start point is the end of a historic timeline: go on with `next`.
    TimelineEnded {
        /// The next timeline.
        next_timeline: TimelineId,
        /// Where the next timeline begins.
        next_start: Lsn,
    },
}

/// A physical slot's state from READ_REPLICATION_SLOT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotState {
    /// Where the slot keeps WAL from (`None` if invalidated or not yet reserved).
    pub restart_lsn: Option<Lsn>,
    /// The timeline of `restart_lsn`.
    pub restart_timeline: Option<TimelineId>,
}

fn column<'a>(r: &'a QueryResult, name: &str, what: &str) -> Result<Option<&'a str>, Error> {
    let idx = r
        .columns
        .iter()
        .position(|c| c == name)
        .ok_or_else(|| Error::Protocol(format!("{what}: no column {name}")))?;
    Ok(r.get(0, idx))
}

fn parse_lsn(text: &str, what: &str) -> Result<Lsn, Error> {
    text.parse()
        .map_err(|_| Error::Protocol(format!("{what}: bad LSN {text:?}")))
}

fn parse_tli(text: &str, what: &str) -> Result<TimelineId, Error> {
    text.parse()
        .map_err(|_| Error::Protocol(format!("{what}: bad timeline {text:?}")))
}

/// Parses the IDENTIFY_SYSTEM result.
///
/// # Errors
/// When a column is missing or malformed.
pub fn parse_identify_system(r: &QueryResult) -> Result<SystemIdentity, Error> {
    const W: &str = "IDENTIFY_SYSTEM";
    let sysid = column(r, "systemid", W)?
        .ok_or_else(|| Error::Protocol("IDENTIFY_SYSTEM: NULL systemid".into()))?;
    let tli = column(r, "timeline", W)?
        .ok_or_else(|| Error::Protocol("IDENTIFY_SYSTEM: NULL timeline".into()))?;
    let pos = column(r, "xlogpos", W)?
        .ok_or_else(|| Error::Protocol("IDENTIFY_SYSTEM: NULL xlogpos".into()))?;
    Ok(SystemIdentity {
        system_identifier: sysid.to_string(),
        timeline: parse_tli(tli, W)?,
        xlogpos: parse_lsn(pos, W)?,
    })
}

/// Parses a size as SHOW prints it (`16MB`, `1GB`, `8kB`) into bytes.
///
/// # Errors
/// On an unknown unit.
pub fn parse_size_setting(text: &str) -> Result<u64, Error> {
    let text = text.trim();
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits
        .parse()
        .map_err(|_| Error::Protocol(format!("bad size setting {text:?}")))?;
    let unit = &text[digits.len()..];
    let mult = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return Err(Error::Protocol(format!("bad size unit in {text:?}"))),
    };
    n.checked_mul(mult)
        .ok_or_else(|| Error::Protocol(format!("size setting {text:?} is too large")))
}

/// Quotes a slot name as an identifier.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as an SQL string literal (standard_conforming_strings, on in
/// every supported major).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The START_REPLICATION command text.
pub fn start_replication_command(slot: Option<&str>, start: Lsn, timeline: TimelineId) -> String {
    match slot {
        Some(s) => format!(
            "START_REPLICATION SLOT {} PHYSICAL {start} TIMELINE {timeline}",
            quote_identifier(s)
        ),
        None => format!("START_REPLICATION PHYSICAL {start} TIMELINE {timeline}"),
    }
}

/// Parses the result set that ends a historic timeline (`next_tli`, `next_tli_startpos`).
///
/// # Errors
/// When the columns are missing or malformed.
pub fn parse_timeline_end(r: &QueryResult) -> Result<Option<(TimelineId, Lsn)>, Error> {
    if r.rows.is_empty() {
        return Ok(None);
    }
    const W: &str = "end of timeline";
    let tli = r
        .get(0, 0)
        .ok_or_else(|| Error::Protocol("end of timeline: NULL next_tli".into()))?;
    let pos = r
        .get(0, 1)
        .ok_or_else(|| Error::Protocol("end of timeline: NULL start".into()))?;
    Ok(Some((parse_tli(tli, W)?, parse_lsn(pos, W)?)))
}

impl ReplicationConnection {
    /// IDENTIFY_SYSTEM.
    ///
    /// # Errors
    /// On server or protocol errors.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, Error> {
        let r = self.simple_query("IDENTIFY_SYSTEM").await?;
        parse_identify_system(&r)
    }

    /// SHOW `name`, as text.
    ///
    /// # Errors
    /// On server or protocol errors.
    pub async fn show(&mut self, name: &str) -> Result<String, Error> {
        let r = self.simple_query(&format!("SHOW {name}")).await?;
        r.get(0, 0)
            .map(str::to_string)
            .ok_or_else(|| Error::Protocol(format!("SHOW {name} returned nothing")))
    }

    /// The server's WAL segment size in bytes.
    ///
    /// # Errors
    /// On server or protocol errors.
    pub async fn wal_segment_size(&mut self) -> Result<u64, Error> {
        let text = self.show("wal_segment_size").await?;
        let size = parse_size_setting(&text)?;
        if !size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&size) {
            return Err(Error::Protocol(format!(
                "implausible wal_segment_size {text:?}"
            )));
        }
        Ok(size)
    }

    /// TIMELINE_HISTORY: the history file of `timeline` (file name, content).
    ///
    /// # Errors
    /// On server or protocol errors (timeline 1 has no history: 58P01).
    pub async fn timeline_history(
        &mut self,
        timeline: TimelineId,
    ) -> Result<(String, Vec<u8>), Error> {
        let r = self
            .simple_query(&format!("TIMELINE_HISTORY {timeline}"))
            .await?;
        let name = r
            .get(0, 0)
            .ok_or_else(|| Error::Protocol("TIMELINE_HISTORY: no file name".into()))?;
        let content = r
            .get(0, 1)
            .ok_or_else(|| Error::Protocol("TIMELINE_HISTORY: no content".into()))?;
        Ok((name.to_string(), content.as_bytes().to_vec()))
    }

    /// READ_REPLICATION_SLOT (PostgreSQL 15+); `None` when the slot does not exist.
    ///
    /// # Errors
    /// On server or protocol errors (a syntax error on 14).
    pub async fn read_replication_slot(&mut self, slot: &str) -> Result<Option<SlotState>, Error> {
        let r = self
            .simple_query(&format!("READ_REPLICATION_SLOT {}", quote_identifier(slot)))
            .await?;
        const W: &str = "READ_REPLICATION_SLOT";
        if column(&r, "slot_type", W)?.is_none() {
            return Ok(None);
        }
        let restart_lsn = column(&r, "restart_lsn", W)?
            .map(|t| parse_lsn(t, W))
            .transpose()?;
        let restart_timeline = column(&r, "restart_tli", W)?
            .map(|t| parse_tli(t, W))
            .transpose()?;
        Ok(Some(SlotState {
            restart_lsn,
            restart_timeline,
        }))
    }

    /// A physical slot's restart LSN read from `pg_replication_slots`, on an
    /// ordinary SQL session ([`crate::protocol::ConnInfo::for_sql`]): what
    /// READ_REPLICATION_SLOT tells on 15+, for PostgreSQL 14. `None` when
    /// the slot does not exist; its timeline is not in the view.
    ///
    /// # Errors
    /// On server or protocol errors.
    pub async fn slot_restart_lsn_by_sql(
        &mut self,
        slot: &str,
    ) -> Result<Option<SlotState>, Error> {
        const W: &str = "pg_replication_slots";
        let r = self
            .simple_query(&format!(
                "SELECT restart_lsn::text AS restart_lsn FROM pg_catalog.pg_replication_slots \
                 WHERE slot_name = {} AND slot_type = 'physical'",
                quote_literal(slot)
            ))
            .await?;
        if r.rows.is_empty() {
            return Ok(None);
        }
        let restart_lsn = column(&r, "restart_lsn", W)?
            .map(|t| parse_lsn(t, W))
            .transpose()?;
        Ok(Some(SlotState {
            restart_lsn,
            restart_timeline: None,
        }))
    }

    /// CREATE_REPLICATION_SLOT `slot` PHYSICAL RESERVE_WAL; `false` if it already existed.
    ///
    /// # Errors
    /// On server errors other than "already exists" (42710).
    pub async fn create_physical_slot(&mut self, slot: &str) -> Result<bool, Error> {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} PHYSICAL RESERVE_WAL",
            quote_identifier(slot)
        );
        match self.simple_query(&sql).await {
            Ok(_) => Ok(true),
            Err(e) if e.sqlstate() == Some("42710") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// CREATE_REPLICATION_SLOT `slot` TEMPORARY PHYSICAL RESERVE_WAL: a slot
    /// that keeps WAL from the last checkpoint's redo until this connection ends.
    ///
    /// # Errors
    /// On server errors.
    pub async fn create_temporary_physical_slot(&mut self, slot: &str) -> Result<(), Error> {
        let sql = format!(
            "CREATE_REPLICATION_SLOT {} TEMPORARY PHYSICAL RESERVE_WAL",
            quote_identifier(slot)
        );
        self.simple_query(&sql).await.map(|_| ())
    }

    /// START_REPLICATION; on success the connection is in copy mode.
    ///
    /// # Errors
    /// On server errors (unknown slot, timeline not in history, WAL removed).
    pub async fn start_replication(
        &mut self,
        slot: Option<&str>,
        start: Lsn,
        timeline: TimelineId,
    ) -> Result<StartReplication, Error> {
        match self
            .query_copy_both(&start_replication_command(slot, start, timeline))
            .await?
        {
            None => Ok(StartReplication::Streaming),
            Some(r) => match parse_timeline_end(&r)? {
                Some((next_timeline, next_start)) => Ok(StartReplication::TimelineEnded {
                    next_timeline,
                    next_start,
                }),
                None => Err(Error::Protocol(
                    "START_REPLICATION returned no copy stream".into(),
                )),
            },
        }
    }
}

/// The longest replication slot name (NAMEDATALEN - 1).
pub const MAX_SLOT_NAME_BYTES: usize = 63;

/// Checks a replication slot name as PostgreSQL does: 1 to 63 lower-case
/// letters, digits and underscores. A longer name would be truncated by the
/// server (with only a notice), creating a slot of another name.
///
/// # Errors
/// Why the name is refused.
pub fn validate_slot_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a replication slot name cannot be empty".into());
    }
    if name.len() > MAX_SLOT_NAME_BYTES {
        return Err(format!(
            "a replication slot name has at most {MAX_SLOT_NAME_BYTES} bytes (this one has {})",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '_'))
    {
        return Err(format!(
            "a replication slot name holds only lower-case letters, digits and underscores, not {c:?}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_postgresql() {
        assert!(validate_slot_name("walvault").is_ok());
        assert!(validate_slot_name("a_1").is_ok());
        assert!(validate_slot_name(&"s".repeat(63)).is_ok());
        assert!(validate_slot_name(&"s".repeat(64)).is_err());
        assert!(validate_slot_name("").is_err());
        assert!(validate_slot_name("Walvault").is_err());
        assert!(validate_slot_name("wal-vault").is_err());
    }

    fn tli(n: u32) -> crate::lsn::TimelineId {
        crate::lsn::TimelineId::new(n).unwrap()
    }
    use crate::protocol::connection::Row;

    fn result(columns: &[&str], values: &[Option<&str>]) -> QueryResult {
        QueryResult {
            columns: columns.iter().map(|s| s.to_string()).collect(),
            rows: vec![Row {
                values: values.iter().map(|v| v.map(str::to_string)).collect(),
            }],
        }
    }

    #[test]
    fn parses_identify_system() {
        let r = result(
            &["systemid", "timeline", "xlogpos", "dbname"],
            &[
                Some("7436189372826591234"),
                Some("2"),
                Some("0/3000148"),
                None,
            ],
        );
        let id = parse_identify_system(&r).unwrap();
        assert_eq!(id.timeline, tli(2));
        assert_eq!(id.xlogpos, Lsn(0x300_0148));
    }

    #[test]
    fn parses_sizes_like_show() {
        assert_eq!(parse_size_setting("16MB").unwrap(), 16 << 20);
        assert_eq!(parse_size_setting("1GB").unwrap(), 1 << 30);
        assert!(parse_size_setting("16 parsecs").is_err());
        assert!(parse_size_setting("99999999999999TB").is_err());
    }

    #[test]
    fn start_replication_text() {
        assert_eq!(
            start_replication_command(Some("walvault"), Lsn(0x1_0000_0000), tli(3)),
            "START_REPLICATION SLOT \"walvault\" PHYSICAL 1/0 TIMELINE 3"
        );
    }

    #[test]
    fn parses_timeline_end() {
        let r = result(
            &["next_tli", "next_tli_startpos"],
            &[Some("2"), Some("0/5000A0")],
        );
        assert_eq!(
            parse_timeline_end(&r).unwrap(),
            Some((tli(2), Lsn(0x50_00A0)))
        );
    }
}
