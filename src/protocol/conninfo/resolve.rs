//! Turns the pairs of a connection string and the environment into a
//! [`ConnInfo`]: every key checked against libpq's, then each option read
//! from the string or else its `PG*` variable, in a fixed order so that of
//! several problems the same one is always reported.
//!
//! Owns that order, [`Values`] and the options of no other file (user,
//! `replication`, protocol version, timeouts and keepalives,
//! `client_encoding`); hosts, TLS and authentication options are read by
//! `hosts`, `ssl` and `auth`, and the string is split by `syntax`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::auth::{RequireAuth, check_gss, resolve_channel_binding};
use super::hosts::{
    resolve_hosts, resolve_load_balance, resolve_ports, resolve_target_session_attrs,
};
use super::keywords::{KEYWORDS, SECRET_KEYS, UNSUPPORTED_KEYS};
use super::ssl::resolve_ssl;
use super::syntax::{Pair, parse_key_values, parse_uri};
use super::{ConnInfo, ConnInfoError, Keepalives, invalid};

/// Each keyword's value: as given in the string, else from its environment
/// variable (an empty value counts as not given); and `HOME`, where the
/// default files are.
pub(super) struct Values<'a> {
    given: HashMap<String, String>,
    env: &'a dyn Fn(&str) -> Option<String>,
    home: Option<PathBuf>,
}

impl<'a> Values<'a> {
    fn new(given: HashMap<String, String>, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        let home = env("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        Values { given, env, home }
    }

    /// The value of `key`, from the string or else the environment.
    pub(super) fn get(&self, key: &str) -> Option<String> {
        let var = KEYWORDS
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| *v);
        self.given
            .get(key)
            .cloned()
            .filter(|v| !v.is_empty())
            .or_else(|| var.and_then(self.env).filter(|v| !v.is_empty()))
    }

    /// `name` under the home directory, if there is one.
    pub(super) fn in_home(&self, name: &str) -> Option<PathBuf> {
        self.home.as_ref().map(|h| h.join(name))
    }
}

impl ConnInfo {
    /// [`ConnInfo::parse`], noting in `hidden` the keys whose values must
    /// not be shown in errors (they follow a password and may be part of it).
    pub(super) fn parse_hiding(
        s: &str,
        env: &dyn Fn(&str) -> Option<String>,
        hidden: &mut HashSet<String>,
    ) -> Result<Self, ConnInfoError> {
        let pairs = if s.starts_with("postgresql://") || s.starts_with("postgres://") {
            parse_uri(s)?
        } else {
            parse_key_values(s)?
        };
        let values = Values::new(given_values(pairs, hidden)?, env);
        refuse_unsupported_keys(&values)?;
        let (hosts, hostaddrs) = resolve_hosts(&values)?;
        let ports = resolve_ports(&values, hosts.len())?;
        let user = values
            .get("user")
            .or_else(|| env("USER"))
            .or_else(|| env("LOGNAME"))
            .unwrap_or_else(|| "postgres".into());

        check_replication(&values)?;
        let ssl = resolve_ssl(&values, &hostaddrs)?;
        check_protocol_version(&values)?;
        let channel_binding = resolve_channel_binding(&values)?;
        check_gss(&values)?;
        let connect_timeout = resolve_connect_timeout(&values)?;
        let keepalives = resolve_keepalives(&values)?;
        let tcp_user_timeout = resolve_tcp_user_timeout(&values)?;
        let target_session_attrs = resolve_target_session_attrs(&values)?;
        let load_balance_random = resolve_load_balance(&values)?;
        let client_encoding = resolve_client_encoding(&values)?;
        Ok(ConnInfo {
            hosts,
            hostaddrs,
            ports,
            user,
            password: values.get("password").map(SecretString::from),
            passfile: values
                .get("passfile")
                .map(PathBuf::from)
                .or_else(|| values.in_home(".pgpass")),
            ssl_mode: ssl.ssl_mode,
            ssl_root_cert: ssl.ssl_root_cert,
            ssl_cert: ssl.ssl_cert,
            ssl_key: ssl.ssl_key,
            ssl_cert_mode: ssl.ssl_cert_mode,
            ssl_password: ssl.ssl_password,
            ssl_crl: ssl.ssl_crl,
            ssl_crl_dir: ssl.ssl_crl_dir,
            ssl_sni: ssl.ssl_sni,
            ssl_min_protocol: ssl.ssl_min_protocol,
            ssl_max_protocol: ssl.ssl_max_protocol,
            channel_binding,
            application_name: values
                .get("application_name")
                .or_else(|| values.get("fallback_application_name")),
            client_encoding,
            connect_timeout,
            options: values.get("options"),
            dbname: values.get("dbname"),
            sql_session: false,
            keepalives,
            tcp_user_timeout,
            target_session_attrs,
            load_balance_random,
            require_peer: values.get("requirepeer"),
            require_auth: values
                .get("require_auth")
                .map(|t| RequireAuth::parse(&t))
                .transpose()?,
        })
    }
}

/// The value given for each key (the last one wins), once libpq is known
/// to know every key; notes in `hidden` the keys whose values follow a
/// password and may be part of it.
fn given_values(
    pairs: Vec<Pair>,
    hidden: &mut HashSet<String>,
) -> Result<HashMap<String, String>, ConnInfoError> {
    let first_secret = pairs
        .iter()
        .filter(|p| SECRET_KEYS.contains(&p.key.as_str()))
        .map(|p| p.position)
        .min();
    let mut given = HashMap::new();
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
    Ok(given)
}

/// Refuses the keywords walvault does not implement, whatever their value.
fn refuse_unsupported_keys(values: &Values<'_>) -> Result<(), ConnInfoError> {
    for &(key, reason) in UNSUPPORTED_KEYS {
        if values.get(key).is_some() {
            return Err(ConnInfoError::Unsupported {
                key: key.into(),
                reason,
            });
        }
    }
    Ok(())
}

/// `replication`: walvault decides the kind of connection, so only values
/// meaning a physical replication connection are accepted.
fn check_replication(values: &Values<'_>) -> Result<(), ConnInfoError> {
    if let Some(r) = values.get("replication") {
        // walvault always opens a physical replication connection.
        if !matches!(r.to_ascii_lowercase().as_str(), "true" | "on" | "yes" | "1") {
            return Err(ConnInfoError::Unsupported {
                key: "replication".into(),
                reason: "walvault always opens a physical replication connection (replication=true); remove the option",
            });
        }
    }
    Ok(())
}

/// `min_protocol_version` and `max_protocol_version`: only 3.0.
fn check_protocol_version(values: &Values<'_>) -> Result<(), ConnInfoError> {
    for key in ["min_protocol_version", "max_protocol_version"] {
        match values.get(key).as_deref() {
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
    Ok(())
}

/// `connect_timeout`, per host.
fn resolve_connect_timeout(values: &Values<'_>) -> Result<Option<Duration>, ConnInfoError> {
    Ok(match values.get("connect_timeout") {
        Some(t) => {
            let secs = parse_int("connect_timeout", &t)?;
            // libpq: 0 or less waits forever, 1 is raised to 2.
            (secs > 0).then(|| Duration::from_secs(secs.max(2) as u64))
        }
        None => None,
    })
}

/// `keepalives`, `keepalives_idle`, `keepalives_interval` and `keepalives_count`.
fn resolve_keepalives(values: &Values<'_>) -> Result<Keepalives, ConnInfoError> {
    Ok(Keepalives {
        enabled: parse_bool01("keepalives", values.get("keepalives"), true)?,
        idle: seconds("keepalives_idle", values.get("keepalives_idle"))?,
        interval: seconds("keepalives_interval", values.get("keepalives_interval"))?,
        count: match values.get("keepalives_count") {
            Some(v) => {
                Some(u32::try_from(parse_int("keepalives_count", &v)?.max(0)).unwrap_or(u32::MAX))
            }
            None => None,
        },
    })
}

/// `tcp_user_timeout`, in milliseconds.
fn resolve_tcp_user_timeout(values: &Values<'_>) -> Result<Option<Duration>, ConnInfoError> {
    Ok(match values.get("tcp_user_timeout") {
        Some(v) => {
            let ms = parse_int("tcp_user_timeout", &v)?;
            (ms > 0).then(|| Duration::from_millis(ms as u64))
        }
        None => None,
    })
}

/// `client_encoding`, sent at startup (`auto` is refused).
fn resolve_client_encoding(values: &Values<'_>) -> Result<Option<String>, ConnInfoError> {
    Ok(match values.get("client_encoding") {
        Some(e) if e.eq_ignore_ascii_case("auto") => {
            return Err(ConnInfoError::Unsupported {
                key: "client_encoding".into(),
                reason: "client_encoding=auto is not implemented; name the encoding (e.g. UTF8)",
            });
        }
        other => other,
    })
}

/// An integer as libpq's `parse_int_param` reads it (surrounding spaces allowed).
pub(super) fn parse_int(key: &str, v: &str) -> Result<i64, ConnInfoError> {
    v.trim()
        .parse::<i32>()
        .map(i64::from)
        .map_err(|_| invalid(key, v, "an integer"))
}

pub(super) fn parse_bool01(
    key: &str,
    v: Option<String>,
    default: bool,
) -> Result<bool, ConnInfoError> {
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

#[cfg(test)]
mod tests {
    use super::super::tests::no_env;
    use super::super::{
        ChannelBindingMode, Host, RootCert, SslCertMode, SslMode, TargetSessionAttrs, TlsVersion,
    };
    use super::*;

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
}
