//! Connection strings as libpq reads them: URI and key=value forms, with the
//! `PG*` environment variables filling in whatever the string leaves out.
//!
//! Pure: the environment is passed in as a lookup function, so tests (and the
//! CLI) decide where values come from.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

/// libpq's default port.
pub const DEFAULT_PORT: u16 = 5432;

/// Where to reach the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address (TCP).
    Tcp(String),
    /// A directory holding the Unix socket `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

/// libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// Plain first (walvault treats `allow` like `disable`: it never retries with TLS).
    Allow,
    /// TLS if the server offers it, without certificate checks.
    Prefer,
    /// TLS, without certificate checks (as libpq without a root certificate).
    Require,
    /// TLS with the server certificate checked against the root certificates.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, ConnInfoError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(ConnInfoError::InvalidValue {
                    key: "sslmode".into(),
                    value: other.into(),
                });
            }
        })
    }
}

/// A resolved connection target.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Hosts to try in order; each pairs with the port at the same index (or the only port).
    pub hosts: Vec<Host>,
    /// Ports (one, or one per host).
    pub ports: Vec<u16>,
    /// Role name.
    pub user: String,
    /// Password, if any.
    pub password: Option<SecretString>,
    /// TLS policy.
    pub ssl_mode: SslMode,
    /// PEM file of trusted root certificates (`sslrootcert`).
    pub ssl_root_cert: Option<PathBuf>,
    /// `application_name` sent at startup (what `synchronous_standby_names` matches).
    pub application_name: Option<String>,
    /// Connect timeout per host.
    pub connect_timeout: Option<Duration>,
    /// `options` (command-line options for the backend).
    pub options: Option<String>,
    /// The database (ignored by a physical replication connection).
    pub dbname: Option<String>,
}

/// A connection string walvault cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnInfoError {
    /// Bad syntax.
    #[error("invalid connection string: {0}")]
    Syntax(String),
    /// A key libpq does not know.
    #[error("invalid connection option {0:?}")]
    UnknownKey(String),
    /// A value that does not fit its key.
    #[error("invalid value {value:?} for connection option {key}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
}

/// Keys accepted but not used by walvault (libpq knows them).
const IGNORED_KEYS: &[&str] = &[
    "replication",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "target_session_attrs",
    "gssencmode",
    "channel_binding",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslcrl",
    "sslsni",
    "requirepeer",
    "krbsrvname",
    "gsslib",
    "client_encoding",
    "fallback_application_name",
    "service",
    "load_balance_hosts",
    "sslnegotiation",
    "passfile",
    "hostaddr",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
];

impl ConnInfo {
    /// Parses `s` (URI or key=value, possibly empty) and fills the rest from
    /// `env` the way libpq reads `PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`,
    /// `PGSSLMODE`, `PGSSLROOTCERT`, `PGAPPNAME`, `PGCONNECT_TIMEOUT`,
    /// `PGOPTIONS` and `PGDATABASE`.
    ///
    /// # Errors
    /// On bad syntax, an unknown key or a bad value.
    pub fn parse(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConnInfoError> {
        let pairs = if s.starts_with("postgresql://") || s.starts_with("postgres://") {
            parse_uri(s)?
        } else {
            parse_key_values(s)?
        };
        let mut get = std::collections::HashMap::new();
        for (k, v) in pairs {
            if !IGNORED_KEYS.contains(&k.as_str())
                && ![
                    "host",
                    "port",
                    "user",
                    "password",
                    "sslmode",
                    "sslrootcert",
                    "application_name",
                    "connect_timeout",
                    "options",
                    "dbname",
                ]
                .contains(&k.as_str())
            {
                return Err(ConnInfoError::UnknownKey(k));
            }
            get.insert(k, v);
        }
        let value = |key: &str, var: &str| -> Option<String> {
            get.get(key)
                .cloned()
                .filter(|v| !v.is_empty())
                .or_else(|| env(var).filter(|v| !v.is_empty()))
        };

        let host_text = value("host", "PGHOST");
        let hosts: Vec<Host> = match host_text {
            Some(h) => h.split(',').map(parse_host).collect(),
            None => vec![default_host()],
        };
        let ports: Vec<u16> = match value("port", "PGPORT") {
            Some(p) => p
                .split(',')
                .map(|p| {
                    if p.is_empty() {
                        Ok(DEFAULT_PORT)
                    } else {
                        p.trim().parse().map_err(|_| ConnInfoError::InvalidValue {
                            key: "port".into(),
                            value: p.into(),
                        })
                    }
                })
                .collect::<Result<_, _>>()?,
            None => vec![DEFAULT_PORT],
        };
        if ports.len() != 1 && ports.len() != hosts.len() {
            return Err(ConnInfoError::Syntax(format!(
                "{} ports given for {} hosts",
                ports.len(),
                hosts.len()
            )));
        }
        let user = value("user", "PGUSER")
            .or_else(|| env("USER"))
            .or_else(|| env("LOGNAME"))
            .unwrap_or_else(|| "postgres".into());
        let ssl_mode = match value("sslmode", "PGSSLMODE") {
            Some(m) => SslMode::parse(&m)?,
            None => SslMode::Prefer,
        };
        let connect_timeout = match value("connect_timeout", "PGCONNECT_TIMEOUT") {
            Some(t) => {
                let secs: i64 = t.trim().parse().map_err(|_| ConnInfoError::InvalidValue {
                    key: "connect_timeout".into(),
                    value: t.clone(),
                })?;
                (secs > 0).then(|| Duration::from_secs(secs.max(2) as u64))
            }
            None => None,
        };
        Ok(ConnInfo {
            hosts,
            ports,
            user,
            password: value("password", "PGPASSWORD").map(SecretString::from),
            ssl_mode,
            ssl_root_cert: value("sslrootcert", "PGSSLROOTCERT").map(PathBuf::from),
            application_name: value("application_name", "PGAPPNAME"),
            connect_timeout,
            options: value("options", "PGOPTIONS"),
            dbname: value("dbname", "PGDATABASE"),
        })
    }

    /// The (host, port) pairs to try, in order.
    pub fn targets(&self) -> Vec<(Host, u16)> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                (
                    h.clone(),
                    if self.ports.len() == 1 {
                        self.ports[0]
                    } else {
                        self.ports[i]
                    },
                )
            })
            .collect()
    }

    /// A description safe to log: hosts and user, never the password.
    pub fn describe(&self) -> String {
        let targets: Vec<String> = self
            .targets()
            .iter()
            .map(|(h, p)| match h {
                Host::Tcp(name) => format!("{name}:{p}"),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{p}", dir.display()),
            })
            .collect();
        format!("{} as {}", targets.join(","), self.user)
    }
}

fn parse_host(h: &str) -> Host {
    if h.starts_with('/') {
        Host::Unix(PathBuf::from(h))
    } else if h.is_empty() {
        default_host()
    } else {
        Host::Tcp(h.to_string())
    }
}

fn default_host() -> Host {
    let debian = std::path::Path::new("/var/run/postgresql");
    if debian.is_dir() {
        Host::Unix(debian.to_path_buf())
    } else {
        Host::Unix(PathBuf::from("/tmp"))
    }
}

fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(ConnInfoError::Syntax(format!(
                "missing \"=\" after {key:?}"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(ConnInfoError::Syntax("unterminated quoted string".into())),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(ConnInfoError::Syntax("unterminated quoted string".into()));
                        }
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Decodes `%XX` escapes in one part of a URI. The error names the part but
/// never repeats its text, which may be a password.
fn percent_decode(s: &str, part: &str) -> Result<String, ConnInfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let bad = || ConnInfoError::Syntax(format!("bad percent-encoding in the {part}"));
            let hex = s.get(i + 1..i + 3).ok_or_else(bad)?;
            let b = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ConnInfoError::Syntax(format!("percent-encoding in the {part} is not UTF-8")))
}

fn parse_uri(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .expect("caller checked the scheme");
    let (rest, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, dbname) = match rest.split_once('/') {
        Some((a, d)) => (a, Some(d)),
        None => (rest, None),
    };
    let mut out = Vec::new();
    let hostspec = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.push(("user".into(), percent_decode(user, "user name")?));
            }
            if let Some(p) = password {
                out.push(("password".into(), percent_decode(p, "password")?));
            }
            hosts
        }
        None => authority,
    };
    if !hostspec.is_empty() {
        let mut hosts = Vec::new();
        let mut ports = Vec::new();
        for part in hostspec.split(',') {
            let (host, port) = if let Some(v6) = part.strip_prefix('[') {
                let (h, after) = v6
                    .split_once(']')
                    .ok_or_else(|| ConnInfoError::Syntax("unterminated IPv6 address".into()))?;
                (h.to_string(), after.strip_prefix(':').map(str::to_string))
            } else {
                match part.rsplit_once(':') {
                    Some((h, p)) => (percent_decode(h, "host")?, Some(p.to_string())),
                    None => (percent_decode(part, "host")?, None),
                }
            };
            hosts.push(host);
            ports.push(port.unwrap_or_default());
        }
        out.push(("host".into(), hosts.join(",")));
        if ports.iter().any(|p| !p.is_empty()) {
            out.push(("port".into(), ports.join(",")));
        }
    }
    if let Some(d) = dbname.filter(|d| !d.is_empty()) {
        out.push(("dbname".into(), percent_decode(d, "database name")?));
    }
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                ConnInfoError::Syntax(format!("missing \"=\" in URI parameter {pair:?}"))
            })?;
            let key = percent_decode(k, "URI parameter name")?;
            let value = percent_decode(v, &format!("value of URI parameter {key:?}"))?;
            out.push((key, value));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn no_env(_: &str) -> Option<String> {
        None
    }

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
    fn environment_fills_gaps() {
        let env = |k: &str| match k {
            "PGHOST" => Some("/run/pg".to_string()),
            "PGPORT" => Some("5444".to_string()),
            "PGUSER" => Some("envuser".to_string()),
            "PGSSLMODE" => Some("disable".to_string()),
            _ => None,
        };
        let c = ConnInfo::parse("", &env).unwrap();
        assert_eq!(c.hosts, vec![Host::Unix("/run/pg".into())]);
        assert_eq!(c.ports, vec![5444]);
        assert_eq!(c.user, "envuser");
        assert_eq!(c.ssl_mode, SslMode::Disable);
        // The string wins over the environment.
        let c = ConnInfo::parse("user=given", &env).unwrap();
        assert_eq!(c.user, "given");
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

    #[test]
    fn bad_percent_encoding_does_not_show_the_password() {
        for s in [
            "postgresql://arch:s3cr%zzet@db/x",
            "postgresql://arch@db/x?password=s3cr%zzet",
            "postgresql://arch:s3cr%C3et@db/x",
        ] {
            let err = ConnInfo::parse(s, &no_env).unwrap_err();
            assert!(!err.to_string().contains("s3cr"), "{err}");
            assert!(!format!("{err:?}").contains("s3cr"), "{err:?}");
        }
        assert_eq!(
            ConnInfo::parse("postgresql://arch:s3cr%zzet@db/x", &no_env).unwrap_err(),
            ConnInfoError::Syntax("bad percent-encoding in the password".into())
        );
    }
}
