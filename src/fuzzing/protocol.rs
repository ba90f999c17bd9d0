//! The properties of the protocol targets: replication messages and
//! connection strings.

use bytes::{BufMut, Bytes, BytesMut};
use secrecy::ExposeSecret;

use super::{Fields, PASSWORD_MARKER};
use crate::lsn::Lsn;
use crate::protocol::conninfo::ConnInfo;
use crate::protocol::message::{
    PrimaryKeepalive, ReplicationMessage, StandbyStatusUpdate, XLogData, decode_replication_message,
};

/// The replication message decoder: arbitrary CopyData payloads either fail
/// or decode to a message that encodes back to the same bytes (a keepalive's
/// reply flag reads any non-zero byte as yes), exactly the well-formed
/// payloads are accepted, and XLogData hands its WAL out as a view of the
/// payload. The standby status update encodes every field in place.
pub fn replication_message(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    let decoded = decode_replication_message(payload.clone());
    let well_formed = match data.first() {
        Some(b'w') => data.len() >= 25,
        Some(b'k') => data.len() == 18,
        _ => false,
    };
    assert_eq!(
        decoded.is_ok(),
        well_formed,
        "accepted a malformed or rejected a well-formed payload: {decoded:?}"
    );
    if let Ok(message) = decoded {
        let mut encoded = BytesMut::new();
        encode_replication_message(&message, &mut encoded);
        let mut expected = data.to_vec();
        if let ReplicationMessage::Keepalive(k) = &message {
            expected[17] = u8::from(k.reply_requested);
            assert_eq!(k.reply_requested, data[17] != 0);
        }
        assert_eq!(&encoded[..], &expected[..], "re-encoding differs");
        let again = decode_replication_message(encoded.freeze()).expect("re-encoded decodes");
        assert_eq!(again, message, "decode(encode(x)) != x");
        if let ReplicationMessage::XLogData(x) = &message {
            assert_eq!(
                x.data.as_ptr(),
                payload[25..].as_ptr(),
                "XLogData copied its WAL"
            );
        }
    }

    let mut f = Fields::new(data);
    let mut word = || {
        let mut b = [0u8; 8];
        for byte in &mut b {
            *byte = f.u8();
        }
        u64::from_be_bytes(b)
    };
    let update = StandbyStatusUpdate {
        write: Lsn(word()),
        flush: Lsn(word()),
        apply: Lsn(word()),
        client_time: word() as i64,
        reply_requested: word() & 1 == 1,
    };
    let mut encoded = BytesMut::new();
    update.encode(&mut encoded);
    let mut expected = vec![b'r'];
    expected.extend_from_slice(&update.write.0.to_be_bytes());
    expected.extend_from_slice(&update.flush.0.to_be_bytes());
    expected.extend_from_slice(&update.apply.0.to_be_bytes());
    expected.extend_from_slice(&update.client_time.to_be_bytes());
    expected.push(u8::from(update.reply_requested));
    assert_eq!(&encoded[..], &expected[..], "standby status update layout");
}

/// The server's side of the replication messages, as the protocol documents
/// them; the library only decodes these.
fn encode_replication_message(message: &ReplicationMessage, buf: &mut BytesMut) {
    match message {
        ReplicationMessage::XLogData(XLogData {
            start,
            wal_end,
            send_time,
            data,
        }) => {
            buf.put_u8(b'w');
            buf.put_u64(start.0);
            buf.put_u64(wal_end.0);
            buf.put_i64(*send_time);
            buf.put_slice(data);
        }
        ReplicationMessage::Keepalive(PrimaryKeepalive {
            wal_end,
            send_time,
            reply_requested,
        }) => {
            buf.put_u8(b'k');
            buf.put_u64(wal_end.0);
            buf.put_i64(*send_time);
            buf.put_u8(u8::from(*reply_requested));
        }
    }
}

/// The connection-string parser, on the input as a string and on a string
/// built from it around a password: never panics; when it accepts, the
/// targets match the hosts and ports; a password never appears in an error,
/// in `Debug` or in [`ConnInfo::describe`]; a correctly quoted or encoded
/// password comes back unchanged.
pub fn connection_string(data: &[u8]) {
    let no_env = |_: &str| None;
    if let Ok(info) = ConnInfo::parse(&String::from_utf8_lossy(data), &no_env) {
        assert!(info.ports.len() == 1 || info.ports.len() == info.hosts.len());
        assert_eq!(info.targets().len(), info.hosts.len());
        let _ = info.describe();
        let _ = format!("{info:?}");
    }

    let mut f = Fields::new(data);
    let form = f.u8();
    let text = String::from_utf8_lossy(f.rest());
    let mut fields = text.split('\u{0}');
    let password = format!("{PASSWORD_MARKER}{}", fields.next().unwrap_or_default());
    let user = fields.next().unwrap_or_default();
    let host = fields.next().unwrap_or_default();
    let rest = fields.collect::<Vec<_>>().join("\u{0}");
    if [&password[PASSWORD_MARKER.len()..], user, host, &rest]
        .iter()
        .any(|t| t.contains(PASSWORD_MARKER))
    {
        return;
    }
    // Bit 0: URI or key=value; bit 1: password in the userinfo or the query
    // (URI only); bit 2: password written correctly, or as it came.
    let uri = form & 1 == 1;
    let in_query = form & 2 == 2;
    let exact = form & 4 == 4;
    let conninfo = if uri {
        let encode_part = |s: &str| percent_encode(s, |_| true);
        let password_text = if exact {
            encode_part(&password)
        } else if in_query {
            percent_encode(&password, |c| c == '&')
        } else {
            percent_encode(&password, |c| matches!(c, '/' | '?'))
        };
        let authority_host = percent_encode(host, |c| matches!(c, '@' | '/' | '?' | ','));
        if in_query {
            format!(
                "postgresql://{}@{authority_host}/?password={password_text}&{rest}",
                encode_part(user)
            )
        } else {
            format!(
                "postgresql://{}:{password_text}@{authority_host}/?{rest}",
                encode_part(user)
            )
        }
    } else {
        let password_text = if exact {
            quote_value(&password)
        } else {
            password.clone()
        };
        format!(
            "user={} host={} password={password_text} {rest}",
            quote_value(user),
            quote_value(host)
        )
    };

    match ConnInfo::parse(&conninfo, &no_env) {
        Err(e) => {
            assert!(
                !e.to_string().contains(PASSWORD_MARKER),
                "the password is in the error {e}"
            );
            assert!(
                !format!("{e:?}").contains(PASSWORD_MARKER),
                "the password is in the error {e:?}"
            );
        }
        Ok(info) => {
            assert!(
                !format!("{info:?}").contains(PASSWORD_MARKER),
                "Debug shows the password"
            );
            assert!(
                !info.describe().contains(PASSWORD_MARKER),
                "describe() shows the password"
            );
            // Another password later in the string would win, as in libpq.
            if exact && !rest.contains("pass") && !rest.contains('%') {
                let given = info
                    .password
                    .as_ref()
                    .map(|p| p.expose_secret().to_string());
                assert_eq!(given.as_deref(), Some(password.as_str()), "in {conninfo:?}");
            }
        }
    }
}

/// Percent-encodes the characters `escape` picks (and `%` whenever anything
/// is escaped); the rest stays as it is.
fn percent_encode(s: &str, escape: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if escape(c) && !c.is_ascii_alphanumeric() || c == '%' && escape('%') {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A key=value value in single quotes, as libpq reads them.
fn quote_value(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}
