//! Where to connect: the hosts, their addresses and ports (`host`,
//! `hostaddr`, `port`), the order they are tried in (`load_balance_hosts`),
//! what the server must be (`target_session_attrs`), and how a target is
//! named in logs and errors.
//!
//! Names targets only: `connection` opens the sockets and checks
//! `target_session_attrs` against the server.

use std::net::IpAddr;
use std::path::PathBuf;

use super::resolve::Values;
use super::{ConnInfo, ConnInfoError, DEFAULT_PORT, Host, TargetSessionAttrs, invalid};

/// `host` and `hostaddr`: the hosts to try (the default socket directory
/// when neither is given) and the address of each, if any.
pub(super) fn resolve_hosts(
    values: &Values<'_>,
) -> Result<(Vec<Host>, Vec<Option<IpAddr>>), ConnInfoError> {
    let hosts: Vec<Host> = match values.get("host") {
        Some(h) => h.split(',').map(parse_host).collect(),
        None => Vec::new(),
    };
    let hostaddrs = resolve_hostaddrs(values)?;
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
    Ok((hosts, hostaddrs))
}

/// `hostaddr`: numeric addresses, comma-separated (an empty entry is none).
fn resolve_hostaddrs(values: &Values<'_>) -> Result<Vec<Option<IpAddr>>, ConnInfoError> {
    Ok(match values.get("hostaddr") {
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
    })
}

/// `port`: one port, or one per host.
pub(super) fn resolve_ports(
    values: &Values<'_>,
    host_count: usize,
) -> Result<Vec<u16>, ConnInfoError> {
    let ports: Vec<u16> = match values.get("port") {
        Some(p) => {
            p.split(',')
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
                .collect::<Result<_, _>>()?
        }
        None => vec![DEFAULT_PORT],
    };
    if ports.len() != 1 && ports.len() != host_count {
        return Err(ConnInfoError::Syntax(format!(
            "could not match {} port numbers to {} hosts",
            ports.len(),
            host_count
        )));
    }
    Ok(ports)
}

/// `target_session_attrs` (default any).
pub(super) fn resolve_target_session_attrs(
    values: &Values<'_>,
) -> Result<TargetSessionAttrs, ConnInfoError> {
    Ok(match values.get("target_session_attrs").as_deref() {
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
    })
}

/// `load_balance_hosts`: whether to try the hosts in random order.
pub(super) fn resolve_load_balance(values: &Values<'_>) -> Result<bool, ConnInfoError> {
    Ok(match values.get("load_balance_hosts").as_deref() {
        None | Some("disable") => false,
        Some("random") => true,
        Some(other) => return Err(invalid("load_balance_hosts", other, "disable or random")),
    })
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

impl ConnInfo {
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

#[cfg(test)]
mod tests {
    use super::super::tests::no_env;
    use super::*;

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
}
