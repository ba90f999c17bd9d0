//! Reading a connection string into `key=value` pairs: libpq's key=value
//! form (quoting, backslash escapes) and its URI form (user info, host list,
//! database, query parameters, percent-decoding).
//!
//! Owns the syntax only: it neither checks the keys (`resolve`, against the
//! tables in `keywords`) nor interprets the values. Errors name positions and
//! parts of the string, never its text, which may hold a password.

use super::ConnInfoError;
use super::keywords::KEYWORDS;

/// One `key=value` pair and where its key starts in the string.
pub(super) struct Pair {
    pub(super) key: String,
    pub(super) value: String,
    pub(super) position: usize,
    /// From a URI whose query holds an `@`: a password containing `?` may
    /// have been split into it, so none of it is shown.
    pub(super) suspect: bool,
}

/// A key for error messages: shown when libpq knows it, else only its position.
fn key_for_message(key: &str, position: usize) -> String {
    if KEYWORDS.iter().any(|(k, _)| *k == key) {
        key.to_string()
    } else {
        format!("the word at byte {position}")
    }
}

pub(super) fn parse_key_values(s: &str) -> Result<Vec<Pair>, ConnInfoError> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    let skip_spaces = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.peek().is_some_and(|(_, c)| c.is_whitespace()) {
            chars.next();
        }
    };
    loop {
        skip_spaces(&mut chars);
        let Some(&(position, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some(&(_, c)) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        skip_spaces(&mut chars);
        if chars.next().map(|(_, c)| c) != Some('=') {
            return Err(ConnInfoError::Syntax(format!(
                "missing \"=\" after {}",
                key_for_message(&key, position)
            )));
        }
        skip_spaces(&mut chars);
        let mut value = String::new();
        if chars.peek().map(|(_, c)| *c) == Some('\'') {
            chars.next();
            loop {
                match chars.next().map(|(_, c)| c) {
                    None => {
                        return Err(ConnInfoError::Syntax(format!(
                            "unterminated quoted string in the value of {}",
                            key_for_message(&key, position)
                        )));
                    }
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => {
                            return Err(ConnInfoError::Syntax(format!(
                                "unterminated quoted string in the value of {}",
                                key_for_message(&key, position)
                            )));
                        }
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&(_, c)) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push(Pair {
            key,
            value,
            position,
            suspect: false,
        });
    }
    Ok(out)
}

/// Percent-decodes one URI part; `what` names the part in errors (never its text).
fn percent_decode(s: &str, what: &str) -> Result<String, ConnInfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let b = s
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| {
                    ConnInfoError::Syntax(format!("invalid percent-encoding in the URI's {what}"))
                })?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| {
        ConnInfoError::Syntax(format!("percent-encoding in the URI's {what} is not UTF-8"))
    })
}

pub(super) fn parse_uri(s: &str) -> Result<Vec<Pair>, ConnInfoError> {
    let scheme_len = if s.starts_with("postgresql://") {
        "postgresql://".len()
    } else {
        "postgres://".len()
    };
    let rest = &s[scheme_len..];
    let (rest, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, dbname) = match rest.split_once('/') {
        Some((a, d)) => (a, Some(d)),
        None => (rest, None),
    };
    let mut out = Vec::new();
    // Positions: the user info starts right after the scheme.
    // A "?" in a password moves the rest of it, up to the "@", into the query.
    let suspect_query = query.is_some_and(|q| q.contains('@'));
    let mut push = |key: &str, value: String, position: usize| {
        let suspect = suspect_query && position > scheme_len;
        out.push(Pair {
            key: key.into(),
            value,
            position,
            suspect,
        });
    };
    let hostspec = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if let Some(p) = password {
                push("password", percent_decode(p, "password")?, scheme_len);
            }
            if !user.is_empty() {
                push("user", percent_decode(user, "user name")?, scheme_len);
            }
            hosts
        }
        None => authority,
    };
    // Everything after the scheme may hold a mistyped password (a "/" or "@"
    // in it splits the URI elsewhere), so nothing of the host list is echoed.
    if !hostspec.is_empty() {
        let (hosts, ports) = parse_uri_host_list(hostspec)?;
        push("host", hosts.join(","), scheme_len);
        if ports.iter().any(|p| !p.is_empty()) {
            push("port", ports.join(","), scheme_len);
        }
    }
    if let Some(d) = dbname.filter(|d| !d.is_empty()) {
        push("dbname", percent_decode(d, "database name")?, scheme_len);
    }
    if let Some(q) = query {
        let mut position = s.len() - q.len();
        for pair in q.split('&') {
            if !pair.is_empty() {
                let (k, v) = pair.split_once('=').ok_or_else(|| {
                    ConnInfoError::Syntax(format!(
                        "missing \"=\" in the URI parameter at byte {position}"
                    ))
                })?;
                let key = percent_decode(k, "parameters")?;
                push(&key, percent_decode(v, "parameters")?, position);
            }
            position += pair.len() + 1;
        }
    }
    Ok(out)
}

/// The hosts and ports of a URI's host list (`host[:port],…`, IPv6 addresses
/// in brackets), each port empty when not given.
fn parse_uri_host_list(hostspec: &str) -> Result<(Vec<String>, Vec<String>), ConnInfoError> {
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for (n, part) in hostspec.split(',').enumerate() {
        let (host, port) = if let Some(v6) = part.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| {
                ConnInfoError::Syntax(format!(
                    "unterminated IPv6 address in the URI's host list (entry {})",
                    n + 1
                ))
            })?;
            if !after.is_empty() && !after.starts_with(':') {
                return Err(ConnInfoError::Syntax(format!(
                    "unexpected text after the IPv6 address in the URI's host list (entry {})",
                    n + 1
                )));
            }
            (h.to_string(), after.strip_prefix(':').map(str::to_string))
        } else {
            match part.rsplit_once(':') {
                Some((h, p)) => (percent_decode(h, "host list")?, Some(p.to_string())),
                None => (percent_decode(part, "host list")?, None),
            }
        };
        if let Some(p) = &port
            && !p.is_empty()
            && !p.parse::<u16>().is_ok_and(|p| p > 0)
        {
            return Err(ConnInfoError::Syntax(format!(
                "invalid port in the URI's host list (entry {})",
                n + 1
            )));
        }
        hosts.push(host);
        ports.push(port.unwrap_or_default());
    }
    Ok((hosts, ports))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::super::tests::no_env;
    use super::super::{ChannelBindingMode, ConnInfo, ConnInfoError, Host, SslMode};

    #[test]
    fn key_value_form() {
        let c = ConnInfo::parse(
            "host=db.local port=5433 user=arch password='a b\\'c' sslmode=verify-full application_name=walvault",
            &no_env,
        )
        .unwrap();
        assert_eq!(c.hosts, vec![Host::Tcp("db.local".into())]);
        assert_eq!(c.ports, vec![5433]);
        assert_eq!(c.user, "arch");
        assert_eq!(c.password.unwrap().expose_secret(), "a b'c");
        assert_eq!(c.ssl_mode, SslMode::VerifyFull);
        assert_eq!(c.application_name.as_deref(), Some("walvault"));
        assert_eq!(c.channel_binding, ChannelBindingMode::Prefer);
        assert!(c.keepalives.enabled);
    }

    #[test]
    fn uri_form() {
        let c = ConnInfo::parse(
            "postgresql://arch:p%40ss@[::1]:6000,other/db?sslmode=require&application_name=x",
            &no_env,
        )
        .unwrap();
        assert_eq!(
            c.hosts,
            vec![Host::Tcp("::1".into()), Host::Tcp("other".into())]
        );
        assert_eq!(c.ports, vec![6000, 5432]);
        assert_eq!(c.password.unwrap().expose_secret(), "p@ss");
        assert_eq!(c.ssl_mode, SslMode::Require);
        let c = ConnInfo::parse("postgres://%2Fvar%2Frun%2Fpostgresql/x", &no_env).unwrap();
        assert_eq!(c.hosts, vec![Host::Unix("/var/run/postgresql".into())]);
    }

    #[test]
    fn bad_input_is_named() {
        assert!(matches!(
            ConnInfo::parse("host", &no_env),
            Err(ConnInfoError::Syntax(_))
        ));
        assert_eq!(
            ConnInfo::parse("nosuch=1", &no_env).unwrap_err(),
            ConnInfoError::UnknownKey("nosuch".into())
        );
        assert!(matches!(
            ConnInfo::parse("sslmode=sometimes", &no_env),
            Err(ConnInfoError::InvalidValue { .. })
        ));
    }
}
