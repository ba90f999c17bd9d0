//! Connection strings as libpq reads them: URI and key=value forms, with the
//! `PG*` environment variables filling in whatever the string leaves out.
//!
//! Pure: the environment (including `HOME`) is passed in as a lookup function,
//! so tests (and the CLI) decide where values come from. Files named here
//! (password file, certificates, keys, CRLs) are read at connect time by
//! `connection` and `tls`, never by this module.
//!
//! Every keyword libpq knows is either honoured as libpq honours it or
//! refused with [`ConnInfoError::Unsupported`]; nothing is silently ignored.
//! Errors never echo a password: syntax errors name positions, not text, and
//! text that follows a password is not shown.
//!
//! This file owns the types ([`ConnInfo`], its option enums,
//! [`ConnInfoError`]) and [`ConnInfo::parse`], which hides values that may
//! hold a password. The keyword tables are in `keywords`, reading the string
//! in `syntax`, and turning its pairs and the environment into a [`ConnInfo`]
//! in `resolve`, with `hosts`, `ssl` and `auth` for those options.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

mod auth;
mod hosts;
mod keywords;
mod resolve;
mod ssl;
mod syntax;

pub use auth::{AuthMethod, RequireAuth};
pub(crate) use hosts::describe_target;
pub use keywords::has_secret;

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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn no_env(_: &str) -> Option<String> {
        None
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
}
