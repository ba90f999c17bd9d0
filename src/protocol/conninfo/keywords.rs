//! The keywords libpq knows: those walvault reads, with the environment
//! variable that supplies each one's default; those whose values are
//! secrets; and those it refuses. [`has_secret`] finds secrets in a
//! connection string.
//!
//! Only tables and that check: `syntax` splits the string into pairs and
//! `resolve` turns their values into settings.

use super::syntax::{parse_key_values, parse_uri};

/// Every keyword libpq (up to 18) knows, with the environment variable that
/// supplies its default.
pub(super) const KEYWORDS: &[(&str, Option<&str>)] = &[
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
pub(super) const SECRET_KEYS: &[&str] = &[
    "password",
    "sslpassword",
    "oauth_client_secret",
    "scram_client_key",
    "scram_server_key",
];

/// Keywords libpq knows that walvault refuses whatever their value, with what to do instead.
pub(super) const UNSUPPORTED_KEYS: &[(&str, &str)] = &[
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

#[cfg(test)]
mod tests {
    use super::*;

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
