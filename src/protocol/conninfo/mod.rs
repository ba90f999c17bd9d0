//! Connection strings as libpq reads them: URI and key=value forms, with the
//! `PG*` environment variables filling in whatever the string leaves out.
//!
//! Pure: the environment (including `HOME`) is passed in as a lookup function,
//! so tests (and the CLI) decide where values come from. Files named here
//! (password file, certificates, keys, CRLs) are read at connect time by
//! `connection.rs` and `tls.rs`, never by this module.
//!
//! Every keyword libpq knows is either honoured as libpq honours it or
//! refused with [`ConnInfoError::Unsupported`]; nothing is silently ignored.
//! Errors never echo a password: syntax errors name positions, not text, and
//! text that follows a password is not shown.

use std::net::IpAddr;
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
    /// Plain first; if the server refuses, once more with TLS.
    Allow,
    /// TLS if the server offers it; the chain is checked only when a root
    /// certificate file exists (as libpq).
    Prefer,
    /// TLS; the chain is checked only when a root certificate file exists (as libpq).
    Require,
    /// TLS with the server certificate checked against the root certificates.
    VerifyCa,
    /// As `VerifyCa`, and the certificate must name the host.
    VerifyFull,
}

/// libpq's `channel_binding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelBindingMode {
    /// Never bind (SCRAM-SHA-256 with GS2 flag `n`).
    Disable,
    /// Bind when TLS is used and the server offers SCRAM-SHA-256-PLUS.
    Prefer,
    /// Authenticate only with SCRAM-SHA-256-PLUS; anything else is an error.
    Require,
}

/// libpq's `sslcertmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslCertMode {
    /// Never send a client certificate.
    Disable,
    /// Send one if the server asks and the file exists.
    Allow,
    /// As `Allow`, and fail unless the server asked for and got one.
    Require,
}

/// Authentication methods a server may ask for, as `require_auth` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// Cleartext password.
    Password,
    /// MD5 password hash.
    Md5,
    /// GSSAPI.
    Gss,
    /// SSPI.
    Sspi,
    /// SCRAM-SHA-256 (SASL).
    ScramSha256,
    /// OAuth bearer tokens (SASL OAUTHBEARER, PostgreSQL 18).
    OAuth,
}

impl AuthMethod {
    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// libpq's `require_auth`: which methods the server may use, and whether it
/// may let the client in without any (trust, cert).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequireAuth {
    /// The option as given, for error messages.
    pub text: String,
    allowed: u8,
    /// The server must complete an authentication exchange (no `none`).
    pub auth_required: bool,
}

impl RequireAuth {
    /// Whether the server may ask for `method`.
    pub fn allows(&self, method: AuthMethod) -> bool {
        self.allowed & method.bit() != 0
    }

    /// Parses the list as libpq does: all methods plain (allowed) or all
    /// negated with `!` (refused), each once; `none` allows no authentication.
    fn parse(text: &str) -> Result<Self, ConnInfoError> {
        let mut allowed: u8 = 0;
        let mut auth_required = true;
        let mut negated = false;
        for (i, part) in text.split(',').enumerate() {
            let part = part.trim();
            let method = match part.strip_prefix('!') {
                Some(m) => {
                    if i == 0 {
                        // Start from everything and subtract.
                        allowed = u8::MAX;
                        auth_required = false;
                        negated = true;
                    } else if !negated {
                        return Err(require_auth_error(
                            "negative methods cannot be mixed with non-negative ones",
                        ));
                    }
                    m
                }
                None if negated => {
                    return Err(require_auth_error(
                        "non-negative methods cannot be mixed with negative ones",
                    ));
                }
                None => part,
            };
            let bit = match method {
                "password" => AuthMethod::Password.bit(),
                "md5" => AuthMethod::Md5.bit(),
                "gss" => AuthMethod::Gss.bit(),
                "sspi" => AuthMethod::Sspi.bit(),
                "scram-sha-256" => AuthMethod::ScramSha256.bit(),
                "oauth" => AuthMethod::OAuth.bit(),
                "none" => {
                    // "none" lets trust/cert in; "!none" refuses them.
                    if negated == auth_required {
                        return Err(require_auth_error("a method is given more than once"));
                    }
                    auth_required = negated;
                    continue;
                }
                _ => {
                    return Err(invalid(
                        "require_auth",
                        text,
                        "a list of password, md5, gss, sspi, scram-sha-256, oauth or none, all or none of them negated with !",
                    ));
                }
            };
            if negated {
                if allowed & bit == 0 {
                    return Err(require_auth_error("a method is given more than once"));
                }
                allowed &= !bit;
            } else {
                if allowed & bit != 0 {
                    return Err(require_auth_error("a method is given more than once"));
                }
                allowed |= bit;
            }
        }
        Ok(RequireAuth {
            text: text.to_string(),
            allowed,
            auth_required,
        })
    }
}

fn require_auth_error(reason: &'static str) -> ConnInfoError {
    ConnInfoError::Syntax(format!("invalid require_auth: {reason}"))
}

/// libpq's `target_session_attrs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    /// Any server.
    Any,
    /// A server that accepts read-write transactions by default.
    ReadWrite,
    /// A server in read-only mode (a hot standby, or `default_transaction_read_only=on`).
    ReadOnly,
    /// A server that is not in hot standby.
    Primary,
    /// A server in hot standby.
    Standby,
    /// A standby if any host is one, else any server.
    PreferStandby,
}

/// A TLS protocol version for `ssl_min_protocol_version`/`ssl_max_protocol_version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.0 (rustls cannot speak it).
    Tls1_0,
    /// TLS 1.1 (rustls cannot speak it).
    Tls1_1,
    /// TLS 1.2.
    Tls1_2,
    /// TLS 1.3.
    Tls1_3,
}

/// Where the trusted root certificates come from (`sslrootcert`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file (used only if it exists, unless `sslmode` is verify-ca/verify-full).
    File(PathBuf),
    /// `sslrootcert=system`: the bundled Mozilla roots (webpki-roots).
    System,
}

/// TCP keepalive settings (`keepalives*`), applied as libpq applies them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalives {
    /// `keepalives` (default on).
    pub enabled: bool,
    /// `keepalives_idle`: idle time before the first probe (system default if `None`).
    pub idle: Option<Duration>,
    /// `keepalives_interval`: time between probes.
    pub interval: Option<Duration>,
    /// `keepalives_count`: probes lost before the connection is dead.
    pub count: Option<u32>,
}

/// A resolved connection target.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Hosts to try in order; each pairs with the port at the same index (or the only port).
    pub hosts: Vec<Host>,
    /// `hostaddr`: numeric addresses, one per host (empty when not given).
    /// Where one is given, walvault connects to it and `host` is used only
    /// for TLS and the password file.
    pub hostaddrs: Vec<Option<IpAddr>>,
    /// Ports (one, or one per host).
    pub ports: Vec<u16>,
    /// Role name.
    pub user: String,
    /// Password, if any.
    pub password: Option<SecretString>,
    /// Password file (`passfile`, `PGPASSFILE`, else `~/.pgpass`); read at
    /// connect time when no password is given.
    pub passfile: Option<PathBuf>,
    /// TLS policy.
    pub ssl_mode: SslMode,
    /// Trusted roots: `sslrootcert`, else `~/.postgresql/root.crt`.
    pub ssl_root_cert: Option<RootCert>,
    /// Client certificate chain (`sslcert`, else `~/.postgresql/postgresql.crt`),
    /// sent when the file exists (as libpq, a missing file means no certificate).
    pub ssl_cert: Option<PathBuf>,
    /// Client private key (`sslkey`, else `~/.postgresql/postgresql.key`).
    pub ssl_key: Option<PathBuf>,
    /// `sslcertmode` (default allow).
    pub ssl_cert_mode: SslCertMode,
    /// Password for an encrypted client key (`sslpassword`); encrypted keys
    /// are refused, so this only matters for the error message.
    pub ssl_password: Option<SecretString>,
    /// Certificate revocation list (`sslcrl`, else `~/.postgresql/root.crl`).
    pub ssl_crl: Option<PathBuf>,
    /// Directory of CRL files (`sslcrldir`).
    pub ssl_crl_dir: Option<PathBuf>,
    /// `sslsni` (default on).
    pub ssl_sni: bool,
    /// `ssl_min_protocol_version` (default TLS 1.2).
    pub ssl_min_protocol: TlsVersion,
    /// `ssl_max_protocol_version` (default: the newest).
    pub ssl_max_protocol: Option<TlsVersion>,
    /// `channel_binding` (default prefer).
    pub channel_binding: ChannelBindingMode,
    /// `application_name` (or `fallback_application_name`) sent at startup
    /// (what `synchronous_standby_names` matches).
    pub application_name: Option<String>,
    /// `client_encoding` sent at startup.
    pub client_encoding: Option<String>,
    /// Connect timeout per host.
    pub connect_timeout: Option<Duration>,
    /// `options` (command-line options for the backend).
    pub options: Option<String>,
    /// The database (ignored by a physical replication connection; the
    /// password file is matched against `replication`).
    pub dbname: Option<String>,
    /// TCP keepalives.
    pub keepalives: Keepalives,
    /// `tcp_user_timeout` (system default if `None`).
    pub tcp_user_timeout: Option<Duration>,
    /// `target_session_attrs` (default any).
    pub target_session_attrs: TargetSessionAttrs,
    /// `load_balance_hosts=random`: try the hosts in random order.
    pub load_balance_random: bool,
    /// `requirepeer`: the OS user the server must run as (Unix sockets only).
    pub require_peer: Option<String>,
    /// `require_auth`: the authentication methods the server may use.
    pub require_auth: Option<RequireAuth>,
    /// An ordinary SQL session to `dbname` instead of a physical replication
    /// connection (for checks and restore points); set with [`ConnInfo::for_sql`].
    pub sql_session: bool,
}

impl ConnInfo {
    /// The same server and credentials for an ordinary SQL session (the
    /// database from `dbname`, else `postgres`).
    pub fn for_sql(&self) -> ConnInfo {
        ConnInfo {
            sql_session: true,
            ..self.clone()
        }
    }
}

/// A connection string walvault cannot use. The messages never contain a
/// password, nor text that may be part of one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnInfoError {
    /// Bad syntax; the reason names positions, never the text.
    #[error("invalid connection string: {0}")]
    Syntax(String),
    /// A key libpq does not know.
    #[error("invalid connection option {0:?}")]
    UnknownKey(String),
    /// A key libpq does not know, not shown because it follows a password and
    /// may be part of it.
    #[error(
        "invalid connection option at byte {position} (not shown: it follows a password and may be part of it; quote values that contain spaces)"
    )]
    UnknownKeyAfterPassword {
        /// Byte offset of the key in the string.
        position: usize,
    },
    /// A value that does not fit its key.
    #[error("invalid value {value:?} for connection option {key} (expected {expected})")]
    InvalidValue {
        /// The key.
        key: String,
        /// The value (never the value of a password key).
        value: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// A value that does not fit its key, not shown because it may hold a
    /// password (it follows one, or looks like more than a plain value).
    #[error(
        "invalid value for connection option {key} (expected {expected}; the value is not shown as it may contain a password)"
    )]
    InvalidValueHidden {
        /// The key.
        key: String,
        /// What would be accepted.
        expected: &'static str,
    },
    /// A key libpq knows and walvault does not implement (or not with this value).
    #[error("connection option {key} is not supported by walvault: {reason}")]
    Unsupported {
        /// The key.
        key: String,
        /// Why, and what to do instead.
        reason: &'static str,
    },
}

/// Every keyword libpq (up to 18) knows, with the environment variable that
/// supplies its default.
const KEYWORDS: &[(&str, Option<&str>)] = &[
    ("host", Some("PGHOST")),
    ("hostaddr", Some("PGHOSTADDR")),
    ("port", Some("PGPORT")),
    ("dbname", Some("PGDATABASE")),
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("passfile", Some("PGPASSFILE")),
    ("channel_binding", Some("PGCHANNELBINDING")),
    ("connect_timeout", Some("PGCONNECT_TIMEOUT")),
    ("client_encoding", Some("PGCLIENTENCODING")),
    ("options", Some("PGOPTIONS")),
    ("application_name", Some("PGAPPNAME")),
    ("fallback_application_name", None),
    ("keepalives", None),
    ("keepalives_idle", None),
    ("keepalives_interval", None),
    ("keepalives_count", None),
    ("tcp_user_timeout", None),
    ("replication", None),
    ("sslmode", Some("PGSSLMODE")),
    ("sslnegotiation", Some("PGSSLNEGOTIATION")),
    ("sslcompression", Some("PGSSLCOMPRESSION")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("sslcertmode", Some("PGSSLCERTMODE")),
    ("sslpassword", None),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcrl", Some("PGSSLCRL")),
    ("sslcrldir", Some("PGSSLCRLDIR")),
    ("sslsni", Some("PGSSLSNI")),
    ("sslkeylogfile", None),
    ("requirepeer", Some("PGREQUIREPEER")),
    ("require_auth", Some("PGREQUIREAUTH")),
    ("ssl_min_protocol_version", Some("PGSSLMINPROTOCOLVERSION")),
    ("ssl_max_protocol_version", Some("PGSSLMAXPROTOCOLVERSION")),
    ("min_protocol_version", Some("PGMINPROTOCOLVERSION")),
    ("max_protocol_version", Some("PGMAXPROTOCOLVERSION")),
    ("gssencmode", Some("PGGSSENCMODE")),
    ("krbsrvname", Some("PGKRBSRVNAME")),
    ("gsslib", Some("PGGSSLIB")),
    ("gssdelegation", Some("PGGSSDELEGATION")),
    ("target_session_attrs", Some("PGTARGETSESSIONATTRS")),
    ("load_balance_hosts", Some("PGLOADBALANCEHOSTS")),
    ("service", Some("PGSERVICE")),
    ("servicefile", None),
    ("scram_client_key", None),
    ("scram_server_key", None),
    ("oauth_issuer", None),
    ("oauth_client_id", None),
    ("oauth_client_secret", None),
    ("oauth_scope", None),
];

/// Keywords whose values are secrets: never echoed, and text after them is suspect.
const SECRET_KEYS: &[&str] = &[
    "password",
    "sslpassword",
    "oauth_client_secret",
    "scram_client_key",
    "scram_server_key",
];

/// Keywords libpq knows that walvault refuses whatever their value, with what to do instead.
const UNSUPPORTED_KEYS: &[(&str, &str)] = &[
    (
        "service",
        "connection service files are not read; put the parameters in the connection string",
    ),
    (
        "servicefile",
        "connection service files are not read; put the parameters in the connection string",
    ),
    (
        "sslkeylogfile",
        "TLS key logging is not implemented; remove the option",
    ),
    (
        "scram_client_key",
        "SCRAM keys cannot be given directly; use a password",
    ),
    (
        "scram_server_key",
        "SCRAM keys cannot be given directly; use a password",
    ),
    (
        "oauth_issuer",
        "OAuth authentication is not implemented; use scram-sha-256 or certificates",
    ),
    (
        "oauth_client_id",
        "OAuth authentication is not implemented; use scram-sha-256 or certificates",
    ),
    (
        "oauth_client_secret",
        "OAuth authentication is not implemented; use scram-sha-256 or certificates",
    ),
    (
        "oauth_scope",
        "OAuth authentication is not implemented; use scram-sha-256 or certificates",
    ),
];

/// One `key=value` pair and where its key starts in the string.
struct Pair {
    key: String,
    value: String,
    position: usize,
    /// From a URI whose query holds an `@`: a password containing `?` may
    /// have been split into it, so none of it is shown.
    suspect: bool,
}

impl ConnInfo {
    /// Parses `s` (URI or key=value, possibly empty) and fills the rest from
    /// `env` the way libpq reads its `PG*` variables (`PGHOST`, `PGHOSTADDR`,
    /// `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGPASSFILE`, `PGSSLMODE`,
    /// `PGSSLROOTCERT`, `PGSSLCERT`, `PGSSLKEY`, `PGSSLCRL`,
    /// `PGCHANNELBINDING`, …); `HOME` locates `~/.pgpass` and
    /// `~/.postgresql/`.
    ///
    /// # Errors
    /// On bad syntax, an unknown key, a bad value, or a libpq option walvault
    /// does not implement. No error contains a password.
    pub fn parse(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConnInfoError> {
        let mut hidden = std::collections::HashSet::new();
        Self::parse_hiding(s, env, &mut hidden).map_err(|e| match e {
            ConnInfoError::InvalidValue {
                key,
                value,
                expected,
            } if hidden.contains(&key) || !is_plain_value(&value) => {
                ConnInfoError::InvalidValueHidden { key, expected }
            }
            other => other,
        })
    }

    /// [`ConnInfo::parse`], noting in `hidden` the keys whose values must
    /// not be shown in errors (they follow a password and may be part of it).
    fn parse_hiding(
        s: &str,
        env: &dyn Fn(&str) -> Option<String>,
        hidden: &mut std::collections::HashSet<String>,
    ) -> Result<Self, ConnInfoError> {
        let pairs = if s.starts_with("postgresql://") || s.starts_with("postgres://") {
            parse_uri(s)?
        } else {
            parse_key_values(s)?
        };
        let first_secret = pairs
            .iter()
            .filter(|p| SECRET_KEYS.contains(&p.key.as_str()))
            .map(|p| p.position)
            .min();
        let mut given = std::collections::HashMap::new();
        for p in pairs {
            let hide = p.suspect || first_secret.is_some_and(|at| at <= p.position);
            if !KEYWORDS.iter().any(|(k, _)| *k == p.key) {
                return Err(if hide {
                    ConnInfoError::UnknownKeyAfterPassword {
                        position: p.position,
                    }
                } else {
                    ConnInfoError::UnknownKey(p.key)
                });
            }
            if hide {
                hidden.insert(p.key.clone());
            } else {
                hidden.remove(&p.key);
            }
            given.insert(p.key, p.value);
        }
        let value = |key: &str| -> Option<String> {
            let var = KEYWORDS
                .iter()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| *v);
            given
                .get(key)
                .cloned()
                .filter(|v| !v.is_empty())
                .or_else(|| var.and_then(env).filter(|v| !v.is_empty()))
        };
        for &(key, reason) in UNSUPPORTED_KEYS {
            if value(key).is_some() {
                return Err(ConnInfoError::Unsupported {
                    key: key.into(),
                    reason,
                });
            }
        }
        let home = env("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        let in_home = |name: &str| home.as_ref().map(|h| h.join(name));

        let hosts: Vec<Host> = match value("host") {
            Some(h) => h.split(',').map(parse_host).collect(),
            None => Vec::new(),
        };
        let hostaddrs: Vec<Option<IpAddr>> = match value("hostaddr") {
            Some(a) => a
                .split(',')
                .map(|a| {
                    let a = a.trim();
                    if a.is_empty() {
                        Ok(None)
                    } else {
                        a.parse()
                            .map(Some)
                            .map_err(|_| ConnInfoError::InvalidValue {
                                key: "hostaddr".into(),
                                value: a.into(),
                                expected: "numeric IPv4 or IPv6 addresses, comma-separated",
                            })
                    }
                })
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        // As libpq: with both lists they pair up; hostaddr alone gives the count.
        let hosts = match (hosts.is_empty(), hostaddrs.is_empty()) {
            (true, true) => vec![default_host()],
            (false, true) => hosts,
            (true, false) => hostaddrs
                .iter()
                .map(|a| match a {
                    Some(ip) => Host::Tcp(ip.to_string()),
                    None => default_host(),
                })
                .collect(),
            (false, false) => {
                if hosts.len() != hostaddrs.len() {
                    return Err(ConnInfoError::Syntax(format!(
                        "could not match {} host names to {} hostaddr values",
                        hosts.len(),
                        hostaddrs.len()
                    )));
                }
                hosts
            }
        };
        let ports: Vec<u16> = match value("port") {
            Some(p) => p
                .split(',')
                .map(|p| {
                    let p = p.trim();
                    if p.is_empty() {
                        Ok(DEFAULT_PORT)
                    } else {
                        p.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                            ConnInfoError::InvalidValue {
                                key: "port".into(),
                                value: p.into(),
                                expected: "port numbers 1-65535, comma-separated",
                            }
                        })
                    }
                })
                .collect::<Result<_, _>>()?,
            None => vec![DEFAULT_PORT],
        };
        if ports.len() != 1 && ports.len() != hosts.len() {
            return Err(ConnInfoError::Syntax(format!(
                "could not match {} port numbers to {} hosts",
                ports.len(),
                hosts.len()
            )));
        }
        let user = value("user")
            .or_else(|| env("USER"))
            .or_else(|| env("LOGNAME"))
            .unwrap_or_else(|| "postgres".into());

        if let Some(r) = value("replication") {
            // walvault always opens a physical replication connection.
            if !matches!(r.to_ascii_lowercase().as_str(), "true" | "on" | "yes" | "1") {
                return Err(ConnInfoError::Unsupported {
                    key: "replication".into(),
                    reason: "walvault always opens a physical replication connection (replication=true); remove the option",
                });
            }
        }
        let ssl_root_cert = match value("sslrootcert") {
            Some(v) if v == "system" => Some(RootCert::System),
            Some(v) => Some(RootCert::File(PathBuf::from(v))),
            None => in_home(".postgresql/root.crt").map(RootCert::File),
        };
        let ssl_mode = match value("sslmode") {
            Some(m) => {
                let mode = SslMode::parse(&m)?;
                if ssl_root_cert == Some(RootCert::System) && mode != SslMode::VerifyFull {
                    return Err(ConnInfoError::Unsupported {
                        key: "sslmode".into(),
                        reason: "weak sslmode may not be used with sslrootcert=system (use verify-full), as in libpq",
                    });
                }
                mode
            }
            // libpq 16+: sslrootcert=system makes verify-full the default.
            None if ssl_root_cert == Some(RootCert::System) => SslMode::VerifyFull,
            None => SslMode::Prefer,
        };
        match value("sslnegotiation").as_deref() {
            None | Some("postgres") => {}
            Some("direct") => {
                return Err(ConnInfoError::Unsupported {
                    key: "sslnegotiation".into(),
                    reason: "direct TLS is not implemented; use sslnegotiation=postgres",
                });
            }
            Some(other) => return Err(invalid("sslnegotiation", other, "postgres or direct")),
        }
        match value("sslcompression").as_deref() {
            // TLS compression does not exist in rustls (nor in OpenSSL 1.1+
            // builds of libpq): both values mean an uncompressed connection.
            None | Some("0" | "1") => {}
            Some(other) => return Err(invalid("sslcompression", other, "0 or 1")),
        }
        let ssl_cert_mode = match value("sslcertmode").as_deref() {
            None | Some("allow") => SslCertMode::Allow,
            Some("disable") => SslCertMode::Disable,
            Some("require") => SslCertMode::Require,
            Some(other) => return Err(invalid("sslcertmode", other, "disable, allow or require")),
        };
        // libpq checks the certificate against the host name, never the address.
        if ssl_mode == SslMode::VerifyFull && !hostaddrs.is_empty() && value("host").is_none() {
            return Err(ConnInfoError::Syntax(
                "host name must be specified for a verified SSL connection (sslmode=verify-full with only hostaddr)".into(),
            ));
        }
        let ssl_sni = parse_bool01("sslsni", value("sslsni"), true)?;
        let ssl_min_protocol = match value("ssl_min_protocol_version") {
            Some(v) => TlsVersion::parse("ssl_min_protocol_version", &v)?,
            None => TlsVersion::Tls1_2,
        };
        let ssl_max_protocol = match value("ssl_max_protocol_version") {
            Some(v) => Some(TlsVersion::parse("ssl_max_protocol_version", &v)?),
            None => None,
        };
        if let Some(max) = ssl_max_protocol {
            if max < TlsVersion::Tls1_2 {
                return Err(ConnInfoError::Unsupported {
                    key: "ssl_max_protocol_version".into(),
                    reason: "walvault speaks TLS 1.2 and 1.3 only; use TLSv1.2 or TLSv1.3",
                });
            }
            if max < ssl_min_protocol {
                return Err(ConnInfoError::Syntax(
                    "invalid SSL protocol version range: ssl_min_protocol_version is above ssl_max_protocol_version".into(),
                ));
            }
        }
        for key in ["min_protocol_version", "max_protocol_version"] {
            match value(key).as_deref() {
                None | Some("3.0") => {}
                Some("3.2" | "latest") => {
                    return Err(ConnInfoError::Unsupported {
                        key: key.into(),
                        reason: "walvault speaks protocol version 3.0 only; use 3.0",
                    });
                }
                Some(other) => return Err(invalid(key, other, "3.0, 3.2 or latest")),
            }
        }
        let channel_binding = match value("channel_binding").as_deref() {
            None | Some("prefer") => ChannelBindingMode::Prefer,
            Some("disable") => ChannelBindingMode::Disable,
            Some("require") => ChannelBindingMode::Require,
            Some(other) => {
                return Err(invalid(
                    "channel_binding",
                    other,
                    "disable, prefer or require",
                ));
            }
        };
        match value("gssencmode").as_deref() {
            // walvault has no GSSAPI: "prefer" finds no credentials and goes on,
            // as libpq does without a Kerberos ticket.
            None | Some("disable" | "prefer") => {}
            Some("require") => {
                return Err(ConnInfoError::Unsupported {
                    key: "gssencmode".into(),
                    reason: "GSSAPI encryption is not implemented; use TLS (sslmode) instead",
                });
            }
            Some(other) => return Err(invalid("gssencmode", other, "disable, prefer or require")),
        }
        // krbsrvname and gsslib only matter for GSSAPI authentication, which
        // walvault refuses when a server asks for it; accepted as harmless.
        if let Some(v) = value("gsslib")
            && v != "gssapi"
            && v != "sspi"
        {
            return Err(invalid("gsslib", &v, "gssapi or sspi"));
        }
        parse_bool01("gssdelegation", value("gssdelegation"), false)?;
        let connect_timeout = match value("connect_timeout") {
            Some(t) => {
                let secs = parse_int("connect_timeout", &t)?;
                // libpq: 0 or less waits forever, 1 is raised to 2.
                (secs > 0).then(|| Duration::from_secs(secs.max(2) as u64))
            }
            None => None,
        };
        let keepalives = Keepalives {
            enabled: parse_bool01("keepalives", value("keepalives"), true)?,
            idle: seconds("keepalives_idle", value("keepalives_idle"))?,
            interval: seconds("keepalives_interval", value("keepalives_interval"))?,
            count: match value("keepalives_count") {
                Some(v) => Some(
                    u32::try_from(parse_int("keepalives_count", &v)?.max(0)).unwrap_or(u32::MAX),
                ),
                None => None,
            },
        };
        let tcp_user_timeout = match value("tcp_user_timeout") {
            Some(v) => {
                let ms = parse_int("tcp_user_timeout", &v)?;
                (ms > 0).then(|| Duration::from_millis(ms as u64))
            }
            None => None,
        };
        let target_session_attrs = match value("target_session_attrs").as_deref() {
            None | Some("any") => TargetSessionAttrs::Any,
            Some("read-write") => TargetSessionAttrs::ReadWrite,
            Some("read-only") => TargetSessionAttrs::ReadOnly,
            Some("primary") => TargetSessionAttrs::Primary,
            Some("standby") => TargetSessionAttrs::Standby,
            Some("prefer-standby") => TargetSessionAttrs::PreferStandby,
            Some(other) => {
                return Err(invalid(
                    "target_session_attrs",
                    other,
                    "any, read-write, read-only, primary, standby or prefer-standby",
                ));
            }
        };
        let load_balance_random = match value("load_balance_hosts").as_deref() {
            None | Some("disable") => false,
            Some("random") => true,
            Some(other) => return Err(invalid("load_balance_hosts", other, "disable or random")),
        };
        let client_encoding = match value("client_encoding") {
            Some(e) if e.eq_ignore_ascii_case("auto") => {
                return Err(ConnInfoError::Unsupported {
                    key: "client_encoding".into(),
                    reason: "client_encoding=auto is not implemented; name the encoding (e.g. UTF8)",
                });
            }
            other => other,
        };
        let ssl_crl_file = value("sslcrl").map(PathBuf::from);
        let ssl_crl_dir = value("sslcrldir").map(PathBuf::from);
        let ssl_crl = if ssl_crl_file.is_none() && ssl_crl_dir.is_none() {
            in_home(".postgresql/root.crl")
        } else {
            ssl_crl_file
        };
        Ok(ConnInfo {
            hosts,
            hostaddrs,
            ports,
            user,
            password: value("password").map(SecretString::from),
            passfile: value("passfile")
                .map(PathBuf::from)
                .or_else(|| in_home(".pgpass")),
            ssl_mode,
            ssl_root_cert,
            ssl_cert: value("sslcert")
                .map(PathBuf::from)
                .or_else(|| in_home(".postgresql/postgresql.crt")),
            ssl_key: value("sslkey")
                .map(PathBuf::from)
                .or_else(|| in_home(".postgresql/postgresql.key")),
            ssl_cert_mode,
            ssl_password: value("sslpassword").map(SecretString::from),
            ssl_crl,
            ssl_crl_dir,
            ssl_sni,
            ssl_min_protocol,
            ssl_max_protocol,
            channel_binding,
            application_name: value("application_name")
                .or_else(|| value("fallback_application_name")),
            client_encoding,
            connect_timeout,
            options: value("options"),
            dbname: value("dbname"),
            sql_session: false,
            keepalives,
            tcp_user_timeout,
            target_session_attrs,
            load_balance_random,
            require_peer: value("requirepeer"),
            require_auth: value("require_auth")
                .map(|t| RequireAuth::parse(&t))
                .transpose()?,
        })
    }

    /// The (host, hostaddr, port) triples to try, in the given order.
    pub fn targets(&self) -> Vec<(Host, Option<IpAddr>, u16)> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                (
                    h.clone(),
                    self.hostaddrs.get(i).copied().flatten(),
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
            .map(|(h, addr, p)| describe_target(h, *addr, *p))
            .collect();
        format!("{} as {}", targets.join(","), self.user)
    }
}

/// `host:port`, `host (addr):port` or the socket path, for logs and errors.
pub(crate) fn describe_target(host: &Host, addr: Option<IpAddr>, port: u16) -> String {
    match (host, addr) {
        (Host::Tcp(name), Some(a)) if name != &a.to_string() => format!("{name} ({a}):{port}"),
        (_, Some(a)) => format!("{a}:{port}"),
        (Host::Tcp(name), None) => format!("{name}:{port}"),
        (Host::Unix(dir), None) => format!("{}/.s.PGSQL.{port}", dir.display()),
    }
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
                return Err(invalid(
                    "sslmode",
                    other,
                    "disable, allow, prefer, require, verify-ca or verify-full",
                ));
            }
        })
    }
}

impl TlsVersion {
    fn parse(key: &str, s: &str) -> Result<Self, ConnInfoError> {
        // libpq compares these case-insensitively.
        Ok(match s.to_ascii_lowercase().as_str() {
            "tlsv1" => TlsVersion::Tls1_0,
            "tlsv1.1" => TlsVersion::Tls1_1,
            "tlsv1.2" => TlsVersion::Tls1_2,
            "tlsv1.3" => TlsVersion::Tls1_3,
            _ => return Err(invalid(key, s, "TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3")),
        })
    }
}

/// Whether the connection string `s` holds a secret (`password`,
/// `sslpassword`, a password in a URI's user info, …), which must then not
/// be given where others can read it, such as the command line. A string
/// that does not parse counts as holding one when it may: when it mentions
/// a password, or is a URI with `user:…@` before its host.
pub fn has_secret(s: &str) -> bool {
    let is_uri = s.starts_with("postgresql://") || s.starts_with("postgres://");
    let pairs = if is_uri {
        parse_uri(s)
    } else {
        parse_key_values(s)
    };
    match pairs {
        Ok(pairs) => pairs
            .iter()
            .any(|p| SECRET_KEYS.contains(&p.key.as_str()) && !p.value.is_empty()),
        Err(_) => {
            let lower = s.to_ascii_lowercase();
            SECRET_KEYS.iter().any(|k| lower.contains(k))
                || (is_uri
                    && s.rsplit_once('@')
                        .is_some_and(|(before, _)| before.matches(':').count() > 1))
        }
    }
}

/// Whether a value is plain enough to show in an error: every value walvault
/// checks is a word, number, address or list of them, so anything else (an
/// `=`, a space, a quote: e.g. `sslmode= password=…` that swallowed the next
/// pair) may be a password.
fn is_plain_value(value: &str) -> bool {
    value.len() <= 64
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ',' | ':' | '/' | '+' | '!')
        })
}

fn invalid(key: &str, value: &str, expected: &'static str) -> ConnInfoError {
    ConnInfoError::InvalidValue {
        key: key.into(),
        value: value.into(),
        expected,
    }
}

/// An integer as libpq's `parse_int_param` reads it (surrounding spaces allowed).
fn parse_int(key: &str, v: &str) -> Result<i64, ConnInfoError> {
    v.trim()
        .parse::<i32>()
        .map(i64::from)
        .map_err(|_| invalid(key, v, "an integer"))
}

fn parse_bool01(key: &str, v: Option<String>, default: bool) -> Result<bool, ConnInfoError> {
    match v.as_deref() {
        None => Ok(default),
        Some(s) => match parse_int(key, s) {
            Ok(0) => Ok(false),
            Ok(_) if key == "keepalives" => Ok(true),
            Ok(1) => Ok(true),
            _ => Err(invalid(key, s, "0 or 1")),
        },
    }
}

fn seconds(key: &str, v: Option<String>) -> Result<Option<Duration>, ConnInfoError> {
    match v {
        Some(v) => {
            let s = parse_int(key, &v)?;
            Ok((s > 0).then(|| Duration::from_secs(s as u64)))
        }
        None => Ok(None),
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

/// The socket directory used when no host is given.
pub(crate) fn default_host() -> Host {
    let debian = std::path::Path::new("/var/run/postgresql");
    if debian.is_dir() {
        Host::Unix(debian.to_path_buf())
    } else {
        Host::Unix(PathBuf::from("/tmp"))
    }
}

/// A key for error messages: shown when libpq knows it, else only its position.
fn key_for_message(key: &str, position: usize) -> String {
    if KEYWORDS.iter().any(|(k, _)| *k == key) {
        key.to_string()
    } else {
        format!("the word at byte {position}")
    }
}

fn parse_key_values(s: &str) -> Result<Vec<Pair>, ConnInfoError> {
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

fn parse_uri(s: &str) -> Result<Vec<Pair>, ConnInfoError> {
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
    fn environment_fills_gaps() {
        let env = |k: &str| match k {
            "PGHOST" => Some("/run/pg".to_string()),
            "PGPORT" => Some("5444".to_string()),
            "PGUSER" => Some("envuser".to_string()),
            "PGSSLMODE" => Some("disable".to_string()),
            "PGCHANNELBINDING" => Some("require".to_string()),
            "PGHOSTADDR" => Some("10.0.0.1".to_string()),
            "PGSSLCERT" => Some("/c.crt".to_string()),
            "PGSSLCRL" => Some("/r.crl".to_string()),
            "PGPASSFILE" => Some("/pw".to_string()),
            "HOME" => Some("/home/u".to_string()),
            _ => None,
        };
        let c = ConnInfo::parse("", &env).unwrap();
        assert_eq!(c.hosts, vec![Host::Unix("/run/pg".into())]);
        assert_eq!(c.hostaddrs, vec![Some("10.0.0.1".parse().unwrap())]);
        assert_eq!(c.ports, vec![5444]);
        assert_eq!(c.user, "envuser");
        assert_eq!(c.ssl_mode, SslMode::Disable);
        assert_eq!(c.channel_binding, ChannelBindingMode::Require);
        assert_eq!(c.ssl_cert, Some("/c.crt".into()));
        assert_eq!(c.ssl_key, Some("/home/u/.postgresql/postgresql.key".into()));
        assert_eq!(c.ssl_crl, Some("/r.crl".into()));
        assert_eq!(
            c.ssl_root_cert,
            Some(RootCert::File("/home/u/.postgresql/root.crt".into()))
        );
        assert_eq!(c.passfile, Some("/pw".into()));
        // The string wins over the environment.
        let c = ConnInfo::parse("user=given passfile=/other", &env).unwrap();
        assert_eq!(c.user, "given");
        assert_eq!(c.passfile, Some("/other".into()));
        // Defaults under HOME.
        let home = |k: &str| (k == "HOME").then(|| "/h".to_string());
        let c = ConnInfo::parse("", &home).unwrap();
        assert_eq!(c.passfile, Some("/h/.pgpass".into()));
        assert_eq!(c.ssl_cert, Some("/h/.postgresql/postgresql.crt".into()));
        assert_eq!(c.ssl_crl, Some("/h/.postgresql/root.crl".into()));
        // sslcrldir alone replaces the default CRL file.
        let c = ConnInfo::parse("sslcrldir=/crls", &home).unwrap();
        assert_eq!(c.ssl_crl, None);
        assert_eq!(c.ssl_crl_dir, Some("/crls".into()));
    }

    #[test]
    fn hostaddr_pairs_with_host() {
        let c = ConnInfo::parse(
            "host=db.example,other hostaddr=127.0.0.1,::1 port=1,2",
            &no_env,
        )
        .unwrap();
        let t = c.targets();
        assert_eq!(t[0].0, Host::Tcp("db.example".into()));
        assert_eq!(t[0].1, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(t[1].1, Some("::1".parse().unwrap()));
        assert_eq!(t[1].2, 2);
        assert!(c.describe().contains("db.example (127.0.0.1):1"));
        // hostaddr alone gives the hosts.
        let c = ConnInfo::parse("hostaddr=10.1.2.3", &no_env).unwrap();
        assert_eq!(c.hosts, vec![Host::Tcp("10.1.2.3".into())]);
        assert!(matches!(
            ConnInfo::parse("host=a,b hostaddr=10.0.0.1", &no_env),
            Err(ConnInfoError::Syntax(_))
        ));
        assert!(matches!(
            ConnInfo::parse("hostaddr=10.1.2.3 sslmode=verify-full", &no_env),
            Err(ConnInfoError::Syntax(_))
        ));
        assert!(matches!(
            ConnInfo::parse("hostaddr=db.example", &no_env),
            Err(ConnInfoError::InvalidValue { .. })
        ));
    }

    #[test]
    fn supported_options_take_effect() {
        let c = ConnInfo::parse(
            "keepalives=1 keepalives_idle=30 keepalives_interval=5 keepalives_count=3 \
             tcp_user_timeout=9000 client_encoding=UTF8 fallback_application_name=fb \
             target_session_attrs=standby load_balance_hosts=random sslsni=0 \
             ssl_min_protocol_version=TLSv1.3 channel_binding=disable gssencmode=prefer \
             replication=true sslnegotiation=postgres requirepeer=postgres \
             sslcertmode=disable krbsrvname=postgres sslcompression=0",
            &no_env,
        )
        .unwrap();
        assert_eq!(c.keepalives.idle, Some(Duration::from_secs(30)));
        assert_eq!(c.keepalives.interval, Some(Duration::from_secs(5)));
        assert_eq!(c.keepalives.count, Some(3));
        assert_eq!(c.tcp_user_timeout, Some(Duration::from_millis(9000)));
        assert_eq!(c.client_encoding.as_deref(), Some("UTF8"));
        assert_eq!(c.application_name.as_deref(), Some("fb"));
        assert_eq!(c.target_session_attrs, TargetSessionAttrs::Standby);
        assert!(c.load_balance_random);
        assert!(!c.ssl_sni);
        assert_eq!(c.ssl_min_protocol, TlsVersion::Tls1_3);
        assert_eq!(c.channel_binding, ChannelBindingMode::Disable);
        assert_eq!(c.require_peer.as_deref(), Some("postgres"));
        assert_eq!(c.ssl_cert_mode, SslCertMode::Disable);
        let c =
            ConnInfo::parse("application_name=a fallback_application_name=fb", &no_env).unwrap();
        assert_eq!(c.application_name.as_deref(), Some("a"));
        let c = ConnInfo::parse("keepalives=0", &no_env).unwrap();
        assert!(!c.keepalives.enabled);
        // sslrootcert=system makes verify-full the default, as libpq 16+.
        let c = ConnInfo::parse("sslrootcert=system", &no_env).unwrap();
        assert_eq!(c.ssl_mode, SslMode::VerifyFull);
        assert_eq!(c.ssl_root_cert, Some(RootCert::System));
    }

    #[test]
    fn require_auth_lists() {
        let r = RequireAuth::parse("scram-sha-256,md5").unwrap();
        assert!(r.allows(AuthMethod::ScramSha256) && r.allows(AuthMethod::Md5));
        assert!(!r.allows(AuthMethod::Password));
        assert!(r.auth_required);
        let r = RequireAuth::parse("!password,!md5").unwrap();
        assert!(r.allows(AuthMethod::ScramSha256) && !r.allows(AuthMethod::Md5));
        assert!(!r.auth_required);
        let r = RequireAuth::parse("!none").unwrap();
        assert!(r.auth_required && r.allows(AuthMethod::Password));
        let r = RequireAuth::parse("none").unwrap();
        assert!(!r.auth_required && !r.allows(AuthMethod::ScramSha256));
        for bad in [
            "md5,!password",
            "!md5,password",
            "md5,md5",
            "!none,!none",
            "kerberos",
        ] {
            assert!(RequireAuth::parse(bad).is_err(), "{bad}");
        }
        let c = ConnInfo::parse("require_auth=scram-sha-256", &no_env).unwrap();
        assert!(c.require_auth.unwrap().allows(AuthMethod::ScramSha256));
    }

    #[test]
    fn unsupported_options_are_errors() {
        for s in [
            "service=main",
            "servicefile=/x",
            "sslkeylogfile=/tmp/k",
            "oauth_issuer=https://x",
            "gssencmode=require",
            "sslnegotiation=direct",
            "replication=database",
            "replication=false",
            "client_encoding=auto",
            "max_protocol_version=latest",
            "ssl_max_protocol_version=TLSv1.1",
            "sslmode=require sslrootcert=system",
        ] {
            match ConnInfo::parse(s, &no_env) {
                Err(ConnInfoError::Unsupported { key, .. }) => {
                    assert!(
                        s.starts_with(&key) || s.contains(&format!(" {key}=")),
                        "{s}: {key}"
                    )
                }
                other => panic!("{s}: {other:?}"),
            }
        }
        // From the environment too: PGSERVICE is not silently ignored.
        let env = |k: &str| (k == "PGSERVICE").then(|| "main".to_string());
        assert!(matches!(
            ConnInfo::parse("", &env),
            Err(ConnInfoError::Unsupported { .. })
        ));
        for s in [
            "channel_binding=maybe",
            "target_session_attrs=any-old",
            "load_balance_hosts=yes",
            "keepalives_idle=soon",
            "sslsni=2",
            "ssl_min_protocol_version=SSLv3",
            "gssencmode=always",
        ] {
            assert!(
                matches!(
                    ConnInfo::parse(s, &no_env),
                    Err(ConnInfoError::InvalidValue { .. })
                ),
                "{s}"
            );
        }
        assert!(matches!(
            ConnInfo::parse(
                "ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
                &no_env
            ),
            Err(ConnInfoError::Syntax(_))
        ));
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

    proptest::proptest! {
        /// Arbitrary text around a password never panics the parser and
        /// never brings the password into an error.
        #[test]
        fn arbitrary_text_never_shows_the_password(
            before in "[ -~]{0,40}",
            user in "[a-z0-9]{0,10}",
            after in "[ -~]{0,40}",
            uri in proptest::bool::ANY,
        ) {
            const PW: &str = "Zq7pW3";
            let s = if uri {
                format!("postgresql://{user}:{PW}{after}")
            } else {
                format!("{before} password={PW}{after}")
            };
            if let Err(e) = ConnInfo::parse(&s, &no_env) {
                proptest::prop_assert!(!e.to_string().contains(PW), "{}: {}", s, e);
                proptest::prop_assert!(!format!("{e:?}").contains(PW), "{}: {:?}", s, e);
            }
        }
    }

    /// Whatever is wrong with a string holding a password, the error (its
    /// Display, Debug and whole source chain) never shows the password.
    #[test]
    fn errors_never_show_the_password() {
        const PW: &str = "Tr0ub4dor";
        let cases = [
            format!("host=db password={PW} {PW}"),
            format!("host=db password={PW} {PW}=x"),
            format!("host=db password=x{PW} user=u sslmod=require"),
            format!("password='{PW}"),
            format!("password='{PW}\\"),
            format!("password={PW}x y"),
            format!("postgresql://u:{PW}@host:notaport/db"),
            format!("postgresql://u:{PW}/db"),
            format!("postgresql://u:{PW}@[::1/db"),
            format!("postgresql://u:{PW}@[::1]x/db"),
            format!("postgresql://u:{PW}%zz@host/db"),
            format!("postgresql://u:{PW}%ff@host/db"),
            format!("postgresql://u:{PW}@host/db?{PW}"),
            format!("postgresql://u:{PW}@host/db?{PW}=1"),
            format!("postgresql://u@host/db?password={PW}&x"),
            format!("postgresql://u@host/db?password={PW}%zz"),
            format!("postgresql://u@host/db?password={PW}&nosuch=1"),
            format!("postgres://host:{PW}"),
            format!("host=db password=ab {PW}=x"),
            format!("sslmode= password={PW}"),
            format!("port= password={PW}"),
            format!("channel_binding='password={PW}'"),
            format!("host=db password=ab port={PW}"),
            format!("host=db password=ab sslmode={PW}"),
            format!("postgresql://u:pa?{PW}=1@host/db"),
            format!("postgresql://u:pa?sslmode={PW}@host/db"),
            format!("postgresql://u:pa?port={PW}@host/db"),
            format!("postgres://u:{PW}@h1,h2:{PW}"),
        ];
        for s in &cases {
            let err = ConnInfo::parse(s, &no_env)
                .err()
                .unwrap_or_else(|| panic!("{s} should fail"));
            let mut texts = vec![err.to_string(), format!("{err:?}"), format!("{err:#}")];
            let wrapped = crate::protocol::Error::from(err);
            texts.push(wrapped.to_string());
            texts.push(format!("{wrapped:?}"));
            let mut source: Option<&dyn std::error::Error> = Some(&wrapped);
            while let Some(e) = source {
                texts.push(e.to_string());
                source = e.source();
            }
            for t in texts {
                assert!(!t.contains(PW), "{s}: {t}");
                assert!(!t.contains("Tr0ub"), "{s}: {t}");
            }
        }
        // Plain values are still shown, to help fix them.
        assert!(
            ConnInfo::parse("sslmode=requir", &no_env)
                .unwrap_err()
                .to_string()
                .contains("\"requir\"")
        );
        // Debug of a parsed ConnInfo hides the passwords too.
        let c = ConnInfo::parse(&format!("password={PW} sslpassword={PW}"), &no_env).unwrap();
        assert!(!format!("{c:?}").contains(PW));
        assert!(!c.describe().contains(PW));
    }

    #[test]
    fn secrets_in_connection_strings_are_found() {
        for s in [
            "host=db password=hunter2",
            "host=db sslpassword=x",
            "postgresql://u:hunter2@db/x",
            "postgres://db/x?password=hunter2",
            // Malformed, but may hold one.
            "host=db password='unterminated",
            "postgres://u:p%zz@db",
        ] {
            assert!(has_secret(s), "{s}");
        }
        for s in [
            "",
            "host=db user=walvault",
            "postgresql://u@db:5432/x",
            "host=db password=",
            "host='unterminated",
        ] {
            assert!(!has_secret(s), "{s}");
        }
    }
}
