//! Connecting: choosing hosts (`load_balance_hosts`, `target_session_attrs`,
//! libpq's retries), opening the TCP or Unix socket with libpq's socket
//! options and `requirepeer` check, and SSLRequest then TLS as `sslmode`
//! asks, before the startup in `auth`.
//!
//! Does not build the TLS configuration or read certificates (`tls`), nor
//! authenticate (`auth`).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::protocol::conninfo::{
    ConnInfo, Host, SslCertMode, SslMode, TargetSessionAttrs, describe_target,
};
use crate::protocol::{Error, tls};

use super::{READ_SLAB_BYTES, ReplicationConnection, Transport};

/// Default limit for connecting and authenticating to one host.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

impl ReplicationConnection {
    /// Connects to the first suitable host of `info` as a physical
    /// replication client and authenticates.
    ///
    /// Hosts are tried in order (shuffled with `load_balance_hosts=random`);
    /// a host that fails with a retryable error, or does not match
    /// `target_session_attrs`, is skipped, as libpq does.
    ///
    /// # Errors
    /// When no host accepts the connection, TLS cannot be set up as `sslmode`
    /// demands, or authentication fails (with the server's SQLSTATE).
    ///
    /// # Cancel safety
    /// Not cancel safe; drop the half-made connection.
    pub async fn connect(info: &ConnInfo) -> Result<Self, Error> {
        let timeout = info.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let mut targets = info.targets();
        if info.load_balance_random {
            use rand::seq::SliceRandom;
            targets.shuffle(&mut rand::thread_rng());
        }
        // prefer-standby: a first pass wants a standby, a second takes any server.
        let passes: &[TargetSessionAttrs] = match info.target_session_attrs {
            TargetSessionAttrs::PreferStandby => {
                &[TargetSessionAttrs::Standby, TargetSessionAttrs::Any]
            }
            TargetSessionAttrs::Any => &[TargetSessionAttrs::Any],
            TargetSessionAttrs::ReadWrite => &[TargetSessionAttrs::ReadWrite],
            TargetSessionAttrs::ReadOnly => &[TargetSessionAttrs::ReadOnly],
            TargetSessionAttrs::Primary => &[TargetSessionAttrs::Primary],
            TargetSessionAttrs::Standby => &[TargetSessionAttrs::Standby],
        };
        let mut last_err = None;
        for want in passes {
            for (host, addr, port) in &targets {
                let attempt =
                    tokio::time::timeout(timeout, Self::connect_allowing(info, host, *addr, *port))
                        .await;
                match attempt {
                    Ok(Ok(conn)) => match conn.session_mismatch(*want) {
                        None => return Ok(conn),
                        Some(reason) => {
                            last_err = Some(Error::SessionAttrs {
                                target: conn.target.clone(),
                                reason,
                            });
                            conn.terminate().await;
                        }
                    },
                    Ok(Err(e)) if e.is_retryable() => last_err = Some(e),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        last_err = Some(Error::Timeout {
                            what: "connecting to the server",
                            after: timeout,
                        })
                    }
                }
            }
        }
        Err(last_err.unwrap_or(Error::Protocol("no host to connect to".into())))
    }

    /// Why this server does not fit `want` (libpq's wording), if it does not.
    fn session_mismatch(&self, want: TargetSessionAttrs) -> Option<&'static str> {
        // PostgreSQL 14+ reports both at startup.
        let on = |name: &str| self.parameter(name) == Some("on");
        let hot_standby = on("in_hot_standby");
        let read_only = hot_standby || on("default_transaction_read_only");
        match want {
            TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby => None,
            TargetSessionAttrs::ReadWrite if read_only => Some("session is read-only"),
            TargetSessionAttrs::ReadOnly if !read_only => Some("session is not read-only"),
            TargetSessionAttrs::Primary if hot_standby => Some("server is in hot standby mode"),
            TargetSessionAttrs::Standby if !hot_standby => {
                Some("server is not in hot standby mode")
            }
            _ => None,
        }
    }

    /// [`Self::connect_one`], and for `sslmode=allow` over TCP, as libpq: when
    /// the server refuses the plain connection, once more with TLS (checked
    /// as for `require`).
    async fn connect_allowing(
        info: &ConnInfo,
        host: &Host,
        addr: Option<IpAddr>,
        port: u16,
    ) -> Result<Self, Error> {
        let result = Self::connect_one(info, host, addr, port).await;
        let is_tcp = matches!(host, Host::Tcp(_)) || addr.is_some();
        match result {
            Err(Error::Server(first)) if info.ssl_mode == SslMode::Allow && is_tcp => {
                let mut with_tls = info.clone();
                with_tls.ssl_mode = SslMode::Require;
                match Box::pin(Self::connect_one(&with_tls, host, addr, port)).await {
                    Ok(conn) => Ok(conn),
                    // The plain refusal says more than a TLS failure after it.
                    Err(Error::Tls(_)) => Err(Error::Server(first)),
                    Err(e) => Err(e),
                }
            }
            other => other,
        }
    }

    async fn connect_one(
        info: &ConnInfo,
        host: &Host,
        addr: Option<IpAddr>,
        port: u16,
    ) -> Result<Self, Error> {
        let target = describe_target(host, addr, port);
        // The password file is matched with the host name, else the address.
        let passfile_host = match host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(dir) => match addr {
                Some(a) => a.to_string(),
                None => dir.display().to_string(),
            },
        };
        let (transport, is_tls, cert_use) = open_transport(info, host, addr, port, &target).await?;
        let mut conn = ReplicationConnection {
            transport,
            read_buf: BytesMut::with_capacity(READ_SLAB_BYTES),
            retired: VecDeque::new(),
            write_buf: BytesMut::new(),
            parameters: HashMap::new(),
            target,
            is_tls,
        };
        conn.startup(info, &passfile_host, port).await?;
        if info.ssl_cert_mode == SslCertMode::Require {
            // libpq's sslcertmode=require checks, once the server is satisfied.
            match cert_use {
                Some(u) if u.was_sent() => {}
                Some(u) if u.was_requested() => {
                    return Err(Error::Auth(
                        "server accepted connection without a valid SSL certificate".into(),
                    ));
                }
                _ => {
                    return Err(Error::Auth(
                        "server did not request an SSL certificate (sslcertmode=require)".into(),
                    ));
                }
            }
        }
        Ok(conn)
    }
}

/// Opens the socket to `host` (at `addr`, if given) and, over TCP, sets up
/// TLS as `sslmode` asks. Returns the transport, whether it is encrypted,
/// and with TLS what tells whether a client certificate was asked for and
/// sent.
async fn open_transport(
    info: &ConnInfo,
    host: &Host,
    addr: Option<IpAddr>,
    port: u16,
    target: &str,
) -> Result<(Transport, bool, Option<Arc<tls::ClientCertUse>>), Error> {
    match (host, addr) {
        (Host::Unix(dir), None) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            let s = UnixStream::connect(&path)
                .await
                .map_err(|source| Error::Connect {
                    target: target.to_string(),
                    source,
                })?;
            // As libpq, sslmode does not apply to Unix sockets (they
            // never carry TLS); requirepeer authenticates the server.
            if let Some(required) = &info.require_peer {
                check_peer(&s, required)?;
            }
            Ok((Transport::Unix(s), false, None))
        }
        _ => {
            let s = connect_tcp(info, host, addr, port, target).await?;
            if matches!(info.ssl_mode, SslMode::Disable | SslMode::Allow) {
                Ok((Transport::Tcp(s), false, None))
            } else {
                request_tls(info, host, addr, port, target, s).await
            }
        }
    }
}

/// Sends SSLRequest on `s` and sets up TLS when the server agrees; as
/// `sslmode=prefer` allows, goes on without TLS when the server refuses or
/// TLS fails.
async fn request_tls(
    info: &ConnInfo,
    host: &Host,
    addr: Option<IpAddr>,
    port: u16,
    target: &str,
    mut s: TcpStream,
) -> Result<(Transport, bool, Option<Arc<tls::ClientCertUse>>), Error> {
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    s.write_all(&req).await?;
    // Read exactly one byte: anything buffered after it would be
    // plaintext injected before the handshake.
    let answer = s.read_u8().await?;
    match answer {
        b'S' => {
            // The TLS name is the host, even when hostaddr says where to go.
            let name = match (host, addr) {
                (Host::Tcp(h), _) => tls::server_name(h)?,
                (Host::Unix(_), Some(a)) => tls::server_name(&a.to_string())?,
                (Host::Unix(_), None) => {
                    unreachable!("Unix sockets without hostaddr are handled above")
                }
            };
            match start_tls(info, name, s, target).await {
                Ok((tls, used)) => Ok((Transport::Tls(Box::new(tls)), true, Some(used))),
                // As libpq: with prefer, a failed TLS set-up or
                // handshake is retried once without TLS.
                Err(e) if info.ssl_mode == SslMode::Prefer => {
                    tracing::warn!(
                        target = %target,
                        error = %e,
                        "TLS failed, retrying without TLS as sslmode=prefer allows"
                    );
                    let s = connect_tcp(info, host, addr, port, target).await?;
                    Ok((Transport::Tcp(s), false, None))
                }
                Err(e) => Err(e),
            }
        }
        b'N' if info.ssl_mode == SslMode::Prefer => Ok((Transport::Tcp(s), false, None)),
        b'N' => Err(Error::Tls(format!(
            "server {target} does not support TLS, but sslmode is {:?}",
            info.ssl_mode
        ))),
        // Never show what follows: it could be an unauthenticated ErrorResponse.
        _ => Err(Error::Protocol("unexpected answer to SSLRequest".into())),
    }
}

/// Opens the TCP connection to `addr` (or `host`) with libpq's socket options.
async fn connect_tcp(
    info: &ConnInfo,
    host: &Host,
    addr: Option<IpAddr>,
    port: u16,
    target: &str,
) -> Result<TcpStream, Error> {
    let connected = match (addr, host) {
        (Some(a), _) => TcpStream::connect((a, port)).await,
        (None, Host::Tcp(h)) => TcpStream::connect((h.as_str(), port)).await,
        (None, Host::Unix(_)) => {
            return Err(Error::Protocol("a Unix socket is not a TCP address".into()));
        }
    };
    let s = connected.map_err(|source| Error::Connect {
        target: target.to_string(),
        source,
    })?;
    s.set_nodelay(true)?;
    set_tcp_options(&s, info)?;
    Ok(s)
}

/// Sets up TLS on `s` after the server accepted the SSLRequest.
async fn start_tls(
    info: &ConnInfo,
    name: rustls::pki_types::ServerName<'static>,
    s: TcpStream,
    target: &str,
) -> Result<
    (
        tokio_rustls::client::TlsStream<TcpStream>,
        Arc<tls::ClientCertUse>,
    ),
    Error,
> {
    let (config, cert_use) = tls::client_config(info)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = connector
        .connect(name, s)
        .await
        .map_err(|e| Error::Tls(format!("handshake with {target} failed: {e}")))?;
    Ok((tls, cert_use))
}

/// Applies libpq's TCP options: keepalives (on by default) and `tcp_user_timeout`.
fn set_tcp_options(s: &TcpStream, info: &ConnInfo) -> Result<(), Error> {
    let sock = socket2::SockRef::from(s);
    let k = &info.keepalives;
    if k.enabled {
        let mut params = socket2::TcpKeepalive::new();
        if let Some(idle) = k.idle {
            params = params.with_time(idle);
        }
        if let Some(interval) = k.interval {
            params = params.with_interval(interval);
        }
        if let Some(count) = k.count {
            params = params.with_retries(count);
        }
        sock.set_tcp_keepalive(&params)?;
    }
    if let Some(t) = info.tcp_user_timeout {
        sock.set_tcp_user_timeout(Some(t))?;
    }
    Ok(())
}

/// `requirepeer`: the server's process must run as `required` (Unix sockets).
fn check_peer(s: &UnixStream, required: &str) -> Result<(), Error> {
    let cred = s.peer_cred()?;
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(cred.uid()))
        .ok()
        .flatten()
        .map(|u| u.name)
        .ok_or_else(|| {
            Error::Auth(format!(
                "requirepeer: no user name for the server's uid {}",
                cred.uid()
            ))
        })?;
    if name != required {
        return Err(Error::Auth(format!(
            "requirepeer specifies {required:?}, but actual peer user name is {name:?}"
        )));
    }
    Ok(())
}
