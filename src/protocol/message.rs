//! The CopyData sub-messages of physical streaming replication.
//!
//! Server to client: `w` XLogData and `k` primary keepalive. Client to server:
//! `r` standby status update. Times are µs since 2000-01-01 UTC. Sans-IO:
//! decoders take the CopyData payload as [`Bytes`] and hand WAL out as a view
//! of it, never a copy.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::lsn::Lsn;

use super::Error;

/// A run of WAL bytes starting at `start`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XLogData {
    /// LSN of the first byte of `data`.
    pub start: Lsn,
    /// The server's flush position when it sent this.
    pub wal_end: Lsn,
    /// Send time (µs since 2000-01-01 UTC).
    pub send_time: i64,
    /// The WAL bytes.
    pub data: Bytes,
}

/// A keepalive from the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// The walsender's sent position.
    pub wal_end: Lsn,
    /// Send time (µs since 2000-01-01 UTC).
    pub send_time: i64,
    /// Whether the server wants a status update now.
    pub reply_requested: bool,
}

/// A CopyData message the server sends during replication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `w`.
    XLogData(XLogData),
    /// `k`.
    Keepalive(PrimaryKeepalive),
}

/// Decodes one CopyData payload received during replication.
///
/// # Errors
/// [`Error::Protocol`] on an unknown type or a short message.
pub fn decode_replication_message(mut payload: Bytes) -> Result<ReplicationMessage, Error> {
    if payload.is_empty() {
        return Err(Error::Protocol("empty CopyData message".into()));
    }
    let kind = payload.get_u8();
    match kind {
        b'w' => {
            if payload.len() < 24 {
                return Err(Error::Protocol("XLogData message is too short".into()));
            }
            let start = Lsn(payload.get_u64());
            let wal_end = Lsn(payload.get_u64());
            let send_time = payload.get_i64();
            Ok(ReplicationMessage::XLogData(XLogData {
                start,
                wal_end,
                send_time,
                data: payload,
            }))
        }
        b'k' => {
            if payload.len() != 17 {
                return Err(Error::Protocol(
                    "keepalive message has the wrong length".into(),
                ));
            }
            let wal_end = Lsn(payload.get_u64());
            let send_time = payload.get_i64();
            let reply_requested = payload.get_u8() != 0;
            Ok(ReplicationMessage::Keepalive(PrimaryKeepalive {
                wal_end,
                send_time,
                reply_requested,
            }))
        }
        other => Err(Error::Protocol(format!(
            "unexpected replication message type {:?}",
            char::from(other)
        ))),
    }
}

/// A standby status update (`r`): positions are "last byte + 1".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandbyStatusUpdate {
    /// Received and written.
    pub write: Lsn,
    /// Durable; the slot's restart LSN follows this.
    pub flush: Lsn,
    /// Applied.
    pub apply: Lsn,
    /// Client time (µs since 2000-01-01 UTC).
    pub client_time: i64,
    /// Ask the server to answer with a keepalive.
    pub reply_requested: bool,
}

impl StandbyStatusUpdate {
    /// Appends the CopyData payload (34 bytes) to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(b'r');
        buf.put_u64(self.write.0);
        buf.put_u64(self.flush.0);
        buf.put_u64(self.apply.0);
        buf.put_i64(self.client_time);
        buf.put_u8(u8::from(self.reply_requested));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_xlogdata_as_a_view() {
        let mut m = BytesMut::new();
        m.put_u8(b'w');
        m.put_u64(0x100_0000);
        m.put_u64(0x100_0010);
        m.put_i64(42);
        m.put_slice(b"walbytes");
        let payload = m.freeze();
        let ReplicationMessage::XLogData(x) = decode_replication_message(payload.clone()).unwrap()
        else {
            panic!("not XLogData");
        };
        assert_eq!(x.start, Lsn(0x100_0000));
        assert_eq!(x.wal_end, Lsn(0x100_0010));
        assert_eq!(&x.data[..], b"walbytes");
        // Zero-copy: the WAL is a slice of the received buffer.
        assert_eq!(x.data.as_ptr(), payload[25..].as_ptr());
    }

    #[test]
    fn status_update_is_34_bytes() {
        let mut b = BytesMut::new();
        StandbyStatusUpdate {
            write: Lsn(1),
            flush: Lsn(2),
            apply: Lsn(3),
            client_time: 4,
            reply_requested: true,
        }
        .encode(&mut b);
        assert_eq!(b.len(), 34);
        assert_eq!(b[0], b'r');
        assert_eq!(b[33], 1);
    }

    proptest! {
        #[test]
        fn arbitrary_payloads_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_replication_message(Bytes::from(data));
        }

        #[test]
        fn keepalive_round_trip(end: u64, time: i64, reply: bool) {
            let mut m = BytesMut::new();
            m.put_u8(b'k');
            m.put_u64(end);
            m.put_i64(time);
            m.put_u8(u8::from(reply));
            let decoded = decode_replication_message(m.freeze()).unwrap();
            prop_assert_eq!(decoded, ReplicationMessage::Keepalive(PrimaryKeepalive {
                wal_end: Lsn(end), send_time: time, reply_requested: reply,
            }));
        }
    }
}
