//! The TLS options: `sslmode`, the root certificates (`sslrootcert`), the
//! client certificate and key, CRLs, `sslcertmode`, `sslsni`, the protocol
//! version range, and the `sslnegotiation` and `sslcompression` values
//! walvault accepts, with libpq's defaults under `~/.postgresql/`.
//!
//! The files are only named here; `tls` reads them when connecting.

use std::net::IpAddr;
use std::path::PathBuf;

use secrecy::SecretString;

use super::resolve::{Values, parse_bool01};
use super::{ConnInfoError, RootCert, SslCertMode, SslMode, TlsVersion, invalid};

/// The TLS settings of a [`ConnInfo`](super::ConnInfo), named as its fields.
pub(super) struct SslSettings {
    pub(super) ssl_mode: SslMode,
    pub(super) ssl_root_cert: Option<RootCert>,
    pub(super) ssl_cert: Option<PathBuf>,
    pub(super) ssl_key: Option<PathBuf>,
    pub(super) ssl_cert_mode: SslCertMode,
    pub(super) ssl_password: Option<SecretString>,
    pub(super) ssl_crl: Option<PathBuf>,
    pub(super) ssl_crl_dir: Option<PathBuf>,
    pub(super) ssl_sni: bool,
    pub(super) ssl_min_protocol: TlsVersion,
    pub(super) ssl_max_protocol: Option<TlsVersion>,
}

/// The TLS options; `hostaddrs` for the check that verify-full has a host
/// name to verify.
pub(super) fn resolve_ssl(
    values: &Values<'_>,
    hostaddrs: &[Option<IpAddr>],
) -> Result<SslSettings, ConnInfoError> {
    let (ssl_root_cert, ssl_mode) = root_cert_and_mode(values)?;
    check_negotiation(values)?;
    let ssl_cert_mode = match values.get("sslcertmode").as_deref() {
        None | Some("allow") => SslCertMode::Allow,
        Some("disable") => SslCertMode::Disable,
        Some("require") => SslCertMode::Require,
        Some(other) => return Err(invalid("sslcertmode", other, "disable, allow or require")),
    };
    // libpq checks the certificate against the host name, never the address.
    if ssl_mode == SslMode::VerifyFull && !hostaddrs.is_empty() && values.get("host").is_none() {
        return Err(ConnInfoError::Syntax(
            "host name must be specified for a verified SSL connection (sslmode=verify-full with only hostaddr)".into(),
        ));
    }
    let ssl_sni = parse_bool01("sslsni", values.get("sslsni"), true)?;
    let (ssl_min_protocol, ssl_max_protocol) = protocol_range(values)?;
    let ssl_crl_file = values.get("sslcrl").map(PathBuf::from);
    let ssl_crl_dir = values.get("sslcrldir").map(PathBuf::from);
    let ssl_crl = if ssl_crl_file.is_none() && ssl_crl_dir.is_none() {
        values.in_home(".postgresql/root.crl")
    } else {
        ssl_crl_file
    };
    Ok(SslSettings {
        ssl_mode,
        ssl_root_cert,
        ssl_cert: values
            .get("sslcert")
            .map(PathBuf::from)
            .or_else(|| values.in_home(".postgresql/postgresql.crt")),
        ssl_key: values
            .get("sslkey")
            .map(PathBuf::from)
            .or_else(|| values.in_home(".postgresql/postgresql.key")),
        ssl_cert_mode,
        ssl_password: values.get("sslpassword").map(SecretString::from),
        ssl_crl,
        ssl_crl_dir,
        ssl_sni,
        ssl_min_protocol,
        ssl_max_protocol,
    })
}

/// `sslrootcert` (`system`, a file, else `~/.postgresql/root.crt`) and
/// `sslmode`, whose default depends on it.
fn root_cert_and_mode(values: &Values<'_>) -> Result<(Option<RootCert>, SslMode), ConnInfoError> {
    let ssl_root_cert = match values.get("sslrootcert") {
        Some(v) if v == "system" => Some(RootCert::System),
        Some(v) => Some(RootCert::File(PathBuf::from(v))),
        None => values.in_home(".postgresql/root.crt").map(RootCert::File),
    };
    let ssl_mode = match values.get("sslmode") {
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
    Ok((ssl_root_cert, ssl_mode))
}

/// `sslnegotiation` and `sslcompression`: the values that change nothing
/// here are accepted, the others refused.
fn check_negotiation(values: &Values<'_>) -> Result<(), ConnInfoError> {
    match values.get("sslnegotiation").as_deref() {
        None | Some("postgres") => {}
        Some("direct") => {
            return Err(ConnInfoError::Unsupported {
                key: "sslnegotiation".into(),
                reason: "direct TLS is not implemented; use sslnegotiation=postgres",
            });
        }
        Some(other) => return Err(invalid("sslnegotiation", other, "postgres or direct")),
    }
    match values.get("sslcompression").as_deref() {
        // TLS compression does not exist in rustls (nor in OpenSSL 1.1+
        // builds of libpq): both values mean an uncompressed connection.
        None | Some("0" | "1") => {}
        Some(other) => return Err(invalid("sslcompression", other, "0 or 1")),
    }
    Ok(())
}

/// `ssl_min_protocol_version` (default TLS 1.2) and
/// `ssl_max_protocol_version` (default: the newest).
fn protocol_range(values: &Values<'_>) -> Result<(TlsVersion, Option<TlsVersion>), ConnInfoError> {
    let ssl_min_protocol = match values.get("ssl_min_protocol_version") {
        Some(v) => TlsVersion::parse("ssl_min_protocol_version", &v)?,
        None => TlsVersion::Tls1_2,
    };
    let ssl_max_protocol = match values.get("ssl_max_protocol_version") {
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
    Ok((ssl_min_protocol, ssl_max_protocol))
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
