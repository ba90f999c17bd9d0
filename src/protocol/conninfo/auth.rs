//! The authentication options: `require_auth` (which methods the server may
//! use), `channel_binding`, and the GSSAPI options, which walvault accepts
//! only where they change nothing (it has no GSSAPI).
//!
//! Settings only: the password and password file are passed through by
//! `resolve`, and `connection` runs the authentication exchange.

use super::resolve::{Values, parse_bool01};
use super::{ChannelBindingMode, ConnInfoError, invalid};

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
    pub(super) fn parse(text: &str) -> Result<Self, ConnInfoError> {
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

/// `channel_binding` (default prefer).
pub(super) fn resolve_channel_binding(
    values: &Values<'_>,
) -> Result<ChannelBindingMode, ConnInfoError> {
    Ok(match values.get("channel_binding").as_deref() {
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
    })
}

/// `gssencmode`, `gsslib` and `gssdelegation`: refused where they would
/// need GSSAPI, else checked and set aside.
pub(super) fn check_gss(values: &Values<'_>) -> Result<(), ConnInfoError> {
    match values.get("gssencmode").as_deref() {
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
    if let Some(v) = values.get("gsslib")
        && v != "gssapi"
        && v != "sspi"
    {
        return Err(invalid("gsslib", &v, "gssapi or sspi"));
    }
    parse_bool01("gssdelegation", values.get("gssdelegation"), false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::ConnInfo;
    use super::super::tests::no_env;
    use super::*;

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
}
