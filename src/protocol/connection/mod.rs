//! A replication connection: socket or TLS, startup, authentication, simple
//! queries and the CopyBoth stream.
//!
//! This is the only file in `protocol/` that does I/O. Reads go into one
//! [`BytesMut`]; a message is consumed only once it is complete, so every read
//! method is cancel safe.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use secrecy::ExposeSecret;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::conninfo::{
    AuthMethod, ChannelBindingMode, ConnInfo, Host, SslCertMode, SslMode, TargetSessionAttrs,
    describe_target,
};
use super::message::StandbyStatusUpdate;
use super::{Error, ServerError, passfile, tls};

/// Default limit for connecting and authenticating to one host.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest message accepted from the server; bounds what a broken peer can
/// make us buffer (BASE_BACKUP and XLogData messages are far smaller).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Room made for a read: a few XLogData messages (each at most 128 KiB).
const READ_BUFFER_BYTES: usize = 512 * 1024;
/// The size of a read buffer: room for a read beside a message begun.
const READ_SLAB_BYTES: usize = 1024 * 1024;
/// Read buffers nothing points into that are kept for reuse: two segments'
/// worth, as a stored segment gives back 16 at once. A new buffer is taken
/// only when none is idle, so this never adds to the buffers held at the
/// peak.
const IDLE_READ_BUFFERS: usize = 32;

/// The transport under a connection.
enum Transport {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Unix(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One row of a simple-query result, all columns as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// Column values (`None` for NULL).
    pub values: Vec<Option<String>>,
}

/// A simple-query result: column names and rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryResult {
    /// Column names.
    pub columns: Vec<String>,
    /// Rows.
    pub rows: Vec<Row>,
}

impl QueryResult {
    /// The text value at (row, column), or `None` for NULL or out of range.
    pub fn get(&self, row: usize, column: usize) -> Option<&str> {
        self.rows.get(row)?.values.get(column)?.as_deref()
    }
}

/// What the server sent on the copy stream.
#[derive(Debug)]
pub enum CopyEvent {
    /// A CopyData payload.
    Data(Bytes),
    /// The server ended the copy (CopyDone).
    Done,
}

/// One message of a command's response, for drivers of multi-part
/// responses such as BASE_BACKUP.
#[derive(Debug)]
pub enum ResponseEvent {
    /// Column names of the next rows.
    RowDescription(Vec<String>),
    /// One row.
    DataRow(Row),
    /// A command (or result set) finished, with its tag.
    CommandComplete(String),
    /// A COPY OUT stream begins.
    CopyOutStart,
    /// A CopyData payload.
    CopyData(Bytes),
    /// The COPY stream ended.
    CopyDone,
    /// The server reported an error (the connection stays usable).
    Error(ServerError),
    /// ReadyForQuery: the response is over.
    Ready,
}

/// A connection to a walsender (`replication=true`).
pub struct ReplicationConnection {
    transport: Transport,
    read_buf: BytesMut,
    /// Earlier read buffers, oldest first, that messages may still point
    /// into (XLogData payloads held until their segment is stored): each
    /// is read into again once they are gone ([`make_room`]).
    retired: VecDeque<BytesMut>,
    write_buf: BytesMut,
    parameters: HashMap<String, String>,
    target: String,
    is_tls: bool,
}

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
        let mut cert_use = None;
        let (transport, is_tls) = match (host, addr) {
            (Host::Unix(dir), None) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let s = UnixStream::connect(&path)
                    .await
                    .map_err(|source| Error::Connect {
                        target: target.clone(),
                        source,
                    })?;
                // As libpq, sslmode does not apply to Unix sockets (they
                // never carry TLS); requirepeer authenticates the server.
                if let Some(required) = &info.require_peer {
                    check_peer(&s, required)?;
                }
                (Transport::Unix(s), false)
            }
            _ => {
                let mut s = connect_tcp(info, host, addr, port, &target).await?;
                if matches!(info.ssl_mode, SslMode::Disable | SslMode::Allow) {
                    (Transport::Tcp(s), false)
                } else {
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
                            match start_tls(info, name, s, &target).await {
                                Ok((tls, used)) => {
                                    cert_use = Some(used);
                                    (Transport::Tls(Box::new(tls)), true)
                                }
                                // As libpq: with prefer, a failed TLS set-up or
                                // handshake is retried once without TLS.
                                Err(e) if info.ssl_mode == SslMode::Prefer => {
                                    tracing::warn!(
                                        target = %target,
                                        error = %e,
                                        "TLS failed, retrying without TLS as sslmode=prefer allows"
                                    );
                                    let s = connect_tcp(info, host, addr, port, &target).await?;
                                    (Transport::Tcp(s), false)
                                }
                                Err(e) => return Err(e),
                            }
                        }
                        b'N' if info.ssl_mode == SslMode::Prefer => (Transport::Tcp(s), false),
                        b'N' => {
                            return Err(Error::Tls(format!(
                                "server {target} does not support TLS, but sslmode is {:?}",
                                info.ssl_mode
                            )));
                        }
                        // Never show what follows: it could be an unauthenticated ErrorResponse.
                        _ => return Err(Error::Protocol("unexpected answer to SSLRequest".into())),
                    }
                }
            }
        };
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

    /// The server certificate's `tls-server-end-point` hash.
    fn server_end_point(&self) -> Result<Vec<u8>, Error> {
        let Transport::Tls(tls) = &self.transport else {
            return Err(Error::Tls("channel binding needs a TLS connection".into()));
        };
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| Error::Tls("the server sent no certificate".into()))?;
        tls::tls_server_end_point(cert)
    }

    async fn startup(
        &mut self,
        info: &ConnInfo,
        passfile_host: &str,
        port: u16,
    ) -> Result<(), Error> {
        let mut params: Vec<(&str, &str)> = if info.sql_session {
            vec![
                ("user", info.user.as_str()),
                ("database", info.dbname.as_deref().unwrap_or("postgres")),
            ]
        } else {
            vec![("user", info.user.as_str()), ("replication", "true")]
        };
        let app = info.application_name.as_deref().unwrap_or("walvault");
        params.push(("application_name", app));
        if let Some(o) = &info.options {
            params.push(("options", o));
        }
        if let Some(e) = &info.client_encoding {
            params.push(("client_encoding", e));
        }
        frontend::startup_message(params.iter().copied(), &mut self.write_buf)?;
        self.flush_write().await?;

        let require_binding = info.channel_binding == ChannelBindingMode::Require;
        // The password, from the connection string or else the password file,
        // read only when the server asks for one.
        let mut password: Option<Option<Vec<u8>>> = None;
        let mut get_password = |this: &Self| -> Result<Vec<u8>, Error> {
            let pw = password.get_or_insert_with(|| match &info.password {
                Some(p) => Some(p.expose_secret().as_bytes().to_vec()),
                None => password_from_file(info, passfile_host, port).map(String::into_bytes),
            });
            pw.clone().ok_or_else(|| {
                Error::Auth(format!(
                    "server {} asked for a password for role {:?}, but none was given (set password in --pg, PGPASSWORD or a password file)",
                    this.target, info.user
                ))
            })
        };
        let refuse_without_binding = || {
            Error::Auth(
                "channel binding required but not supported by server's authentication request"
                    .into(),
            )
        };
        // require_auth, checked before answering each request as libpq does.
        let check_method = |method: AuthMethod, what: &str| -> Result<(), Error> {
            match &info.require_auth {
                Some(r) if !r.allows(method) => Err(Error::Auth(format!(
                    "authentication method requirement {:?} failed: server requested {what}",
                    r.text
                ))),
                _ => Ok(()),
            }
        };
        let mut scram: Option<ScramSha256> = None;
        let mut scram_plus = false;
        let mut channel_bound = false;
        // We sent a password, or verified the server's SCRAM signature.
        let mut client_finished_auth = false;
        loop {
            match self.read_message().await? {
                backend::Message::AuthenticationOk => {
                    if let Some(r) = &info.require_auth
                        && r.auth_required
                        && !client_finished_auth
                    {
                        return Err(Error::Auth(format!(
                            "authentication method requirement {:?} failed: server did not complete authentication",
                            r.text
                        )));
                    }
                    // channel_binding=require: the server must have proven
                    // itself with SCRAM-SHA-256-PLUS, not trust or a certificate.
                    if require_binding && !channel_bound {
                        return Err(Error::Auth(
                            "channel binding required, but server authenticated client without channel binding".into(),
                        ));
                    }
                }
                backend::Message::AuthenticationCleartextPassword => {
                    check_method(AuthMethod::Password, "a cleartext password")?;
                    if require_binding {
                        return Err(refuse_without_binding());
                    }
                    let pw = get_password(self)?;
                    frontend::password_message(&pw, &mut self.write_buf)?;
                    self.flush_write().await?;
                    client_finished_auth = true;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    check_method(AuthMethod::Md5, "a hashed password")?;
                    if require_binding {
                        return Err(refuse_without_binding());
                    }
                    let pw = get_password(self)?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        info.user.as_bytes(),
                        &pw,
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)?;
                    self.flush_write().await?;
                    client_finished_auth = true;
                }
                backend::Message::AuthenticationSasl(body) => {
                    check_method(AuthMethod::ScramSha256, "SASL authentication")?;
                    let mut mechanisms = body.mechanisms();
                    let (mut has_scram, mut has_plus) = (false, false);
                    while let Some(m) = mechanisms.next()? {
                        match m {
                            "SCRAM-SHA-256" => has_scram = true,
                            "SCRAM-SHA-256-PLUS" => has_plus = true,
                            _ => {}
                        }
                    }
                    if has_plus && !self.is_tls {
                        // Not sane: TLS may have been stripped by a proxy.
                        return Err(Error::Auth(
                            "server offered SCRAM-SHA-256-PLUS authentication over a non-TLS connection".into(),
                        ));
                    }
                    let use_plus = has_plus && info.channel_binding != ChannelBindingMode::Disable;
                    if require_binding && !use_plus {
                        return Err(Error::Auth(
                            "channel binding is required, but server did not offer an authentication method that supports channel binding".into(),
                        ));
                    }
                    if !use_plus && !has_scram {
                        return Err(Error::Auth(
                            "none of the server's SASL authentication mechanisms are supported"
                                .into(),
                        ));
                    }
                    let pw = get_password(self)?;
                    let (mechanism, binding) = if use_plus {
                        (
                            "SCRAM-SHA-256-PLUS",
                            ChannelBinding::tls_server_end_point(self.server_end_point()?),
                        )
                    } else if self.is_tls && info.channel_binding != ChannelBindingMode::Disable {
                        // GS2 flag "y": we could bind, but the server did not offer it.
                        ("SCRAM-SHA-256", ChannelBinding::unrequested())
                    } else {
                        ("SCRAM-SHA-256", ChannelBinding::unsupported())
                    };
                    let s = ScramSha256::new(&pw, binding);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut self.write_buf)?;
                    self.flush_write().await?;
                    scram = Some(s);
                    scram_plus = use_plus;
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| Error::Protocol("SASLContinue before SASL".into()))?;
                    s.update(body.data())
                        .map_err(|e| Error::Auth(format!("SCRAM exchange failed: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.write_buf)?;
                    self.flush_write().await?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| Error::Protocol("SASLFinal before SASL".into()))?;
                    s.finish(body.data()).map_err(|e| {
                        Error::Auth(format!("server's SCRAM signature is invalid: {e}"))
                    })?;
                    channel_bound = scram_plus;
                    client_finished_auth = true;
                }
                backend::Message::AuthenticationKerberosV5
                | backend::Message::AuthenticationScmCredential
                | backend::Message::AuthenticationGss
                | backend::Message::AuthenticationSspi
                | backend::Message::AuthenticationGssContinue(_) => {
                    if let Some(r) = &info.require_auth {
                        return Err(Error::Auth(format!(
                            "authentication method requirement {:?} failed: server requested an authentication type walvault does not support",
                            r.text
                        )));
                    }
                    if require_binding {
                        return Err(refuse_without_binding());
                    }
                    return Err(Error::Auth(
                        "server asks for an authentication method walvault does not support (use scram-sha-256, md5, password, cert or trust)".into(),
                    ));
                }
                backend::Message::ParameterStatus(p) => {
                    self.parameters
                        .insert(p.name()?.to_string(), p.value()?.to_string());
                }
                backend::Message::BackendKeyData(_) | backend::Message::NoticeResponse(_) => {}
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ErrorResponse(body) => {
                    let mut e = server_error(&body)?;
                    // As libpq: say where a refused password came from.
                    if e.code == "28P01"
                        && info.password.is_none()
                        && matches!(password, Some(Some(_)))
                        && e.hint.is_none()
                        && let Some(path) = &info.passfile
                    {
                        e.hint = Some(format!("password retrieved from file {}", path.display()));
                    }
                    return Err(Error::Server(e));
                }
                _ => return Err(Error::Protocol("unexpected message during startup".into())),
            }
        }
    }

    /// A parameter the server reported at startup (e.g. `server_version`).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The server's major version, from `server_version`.
    pub fn server_major(&self) -> Option<u32> {
        let v = self.parameter("server_version")?;
        let digits: String = v.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    /// Where this connection goes (host:port or socket path), for logs.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.is_tls
    }

    /// Runs one command with the simple query protocol and collects its rows.
    ///
    /// # Errors
    /// [`Error::Server`] when the server rejects it (the connection stays usable).
    ///
    /// # Cancel safety
    /// Not cancel safe: a half-read result leaves the connection unusable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, Error> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush_write().await?;
        self.read_query_result().await
    }

    /// Reads a result until ReadyForQuery.
    pub(crate) async fn read_query_result(&mut self) -> Result<QueryResult, Error> {
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            match self.read_message().await? {
                backend::Message::RowDescription(body) => {
                    result.columns = body.fields().map(|f| Ok(f.name().to_string())).collect()?;
                }
                backend::Message::DataRow(body) => result.rows.push(decode_row(&body)?),
                backend::Message::ErrorResponse(body) => error = Some(server_error(&body)?),
                backend::Message::ReadyForQuery(_) => break,
                backend::Message::CommandComplete(_)
                | backend::Message::EmptyQueryResponse
                | backend::Message::NoticeResponse(_) => {}
                backend::Message::ParameterStatus(p) => {
                    self.parameters
                        .insert(p.name()?.to_string(), p.value()?.to_string());
                }
                _ => {
                    return Err(Error::Protocol(
                        "unexpected message in a query result".into(),
                    ));
                }
            }
        }
        match error {
            Some(e) => Err(Error::Server(e)),
            None => Ok(result),
        }
    }

    /// Sends a command without waiting for its answer; read it with
    /// [`ReplicationConnection::next_response_event`].
    ///
    /// # Errors
    /// On I/O errors.
    pub async fn send_query(&mut self, sql: &str) -> Result<(), Error> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush_write().await
    }

    /// Reads the next message of a command's response (notices skipped).
    ///
    /// # Errors
    /// On I/O or protocol errors; server errors are an event, not an error.
    ///
    /// # Cancel safety
    /// Safe: a message is either fully decoded or left in the read buffer.
    pub async fn next_response_event(&mut self) -> Result<ResponseEvent, Error> {
        loop {
            return Ok(match self.read_message().await? {
                backend::Message::RowDescription(body) => ResponseEvent::RowDescription(
                    body.fields().map(|f| Ok(f.name().to_string())).collect()?,
                ),
                backend::Message::DataRow(body) => ResponseEvent::DataRow(decode_row(&body)?),
                backend::Message::CommandComplete(body) => {
                    ResponseEvent::CommandComplete(body.tag()?.to_string())
                }
                backend::Message::CopyOutResponse(_) => ResponseEvent::CopyOutStart,
                backend::Message::CopyData(body) => ResponseEvent::CopyData(body.into_bytes()),
                backend::Message::CopyDone => ResponseEvent::CopyDone,
                backend::Message::ErrorResponse(body) => ResponseEvent::Error(server_error(&body)?),
                backend::Message::ReadyForQuery(_) => ResponseEvent::Ready,
                backend::Message::NoticeResponse(_) => continue,
                backend::Message::ParameterStatus(p) => {
                    self.parameters
                        .insert(p.name()?.to_string(), p.value()?.to_string());
                    continue;
                }
                _ => {
                    return Err(Error::Protocol(
                        "unexpected message in a command response".into(),
                    ));
                }
            });
        }
    }

    /// Sends a command that answers with CopyBoth (START_REPLICATION) or with
    /// a result set; returns `None` once in copy mode, or the result.
    ///
    /// # Errors
    /// [`Error::Server`] when the server rejects the command.
    pub(crate) async fn query_copy_both(
        &mut self,
        sql: &str,
    ) -> Result<Option<QueryResult>, Error> {
        frontend::query(sql, &mut self.write_buf)?;
        self.flush_write().await?;
        // Peek the tag: postgres-protocol does not parse CopyBothResponse.
        // Anything else is an ordinary result (or an error).
        let header = self.fill_message().await?;
        if header.tag() == b'W' {
            let len = header.len() as usize + 1;
            let _ = self.read_buf.split_to(len);
            return Ok(None);
        }
        self.read_query_result().await.map(Some)
    }

    /// Reads the next CopyData or CopyDone of the copy stream.
    ///
    /// # Errors
    /// [`Error::Server`] when the server ends the stream with an error,
    /// [`Error::Closed`] when it closes the socket (e.g. at shutdown after
    /// `COPY 0`).
    ///
    /// # Cancel safety
    /// Safe: a message is either fully decoded or left in the read buffer.
    pub async fn next_copy_event(&mut self) -> Result<CopyEvent, Error> {
        loop {
            match self.read_message().await? {
                backend::Message::CopyData(body) => return Ok(CopyEvent::Data(body.into_bytes())),
                backend::Message::CopyDone => return Ok(CopyEvent::Done),
                backend::Message::ErrorResponse(body) => {
                    return Err(Error::Server(server_error(&body)?));
                }
                backend::Message::NoticeResponse(_) => {}
                backend::Message::ParameterStatus(p) => {
                    self.parameters
                        .insert(p.name()?.to_string(), p.value()?.to_string());
                }
                // At shutdown the walsender sends CommandComplete "COPY 0" and closes.
                backend::Message::CommandComplete(_) => return Err(Error::Closed),
                _ => {
                    return Err(Error::Protocol(
                        "unexpected message in the copy stream".into(),
                    ));
                }
            }
        }
    }

    /// Whether a whole message is already buffered (reading it would not wait).
    pub fn has_buffered_message(&self) -> bool {
        matches!(
            backend::Header::parse(&self.read_buf),
            Ok(Some(h)) if self.read_buf.len() > h.len() as usize
        )
    }

    /// Sends a standby status update.
    ///
    /// # Cancel safety
    /// Not cancel safe: a partly written message breaks the stream.
    pub async fn send_status(&mut self, update: &StandbyStatusUpdate) -> Result<(), Error> {
        let mut payload = BytesMut::with_capacity(34);
        update.encode(&mut payload);
        frontend::CopyData::new(&payload[..])?.write(&mut self.write_buf);
        self.flush_write().await
    }

    /// Sends CopyDone and reads to ReadyForQuery; returns the result set the
    /// server sends at the end of a historic timeline (next timeline and its
    /// start), if any. CopyData still in flight is discarded.
    ///
    /// # Errors
    /// On I/O or protocol errors.
    pub async fn end_copy(&mut self, server_done: bool) -> Result<QueryResult, Error> {
        frontend::copy_done(&mut self.write_buf);
        self.flush_write().await?;
        if !server_done {
            loop {
                match self.read_message().await? {
                    backend::Message::CopyDone => break,
                    backend::Message::CopyData(_) | backend::Message::NoticeResponse(_) => {}
                    backend::Message::ErrorResponse(body) => {
                        return Err(Error::Server(server_error(&body)?));
                    }
                    _ => {
                        return Err(Error::Protocol(
                            "unexpected message while ending the copy".into(),
                        ));
                    }
                }
            }
        }
        self.read_query_result().await
    }

    /// Sends Terminate and closes the socket.
    pub async fn terminate(mut self) {
        frontend::terminate(&mut self.write_buf);
        let _ = self.flush_write().await;
        let _ = self.transport.shutdown().await;
    }

    async fn flush_write(&mut self) -> Result<(), Error> {
        self.transport.write_all(&self.write_buf).await?;
        self.transport.flush().await?;
        self.write_buf.clear();
        Ok(())
    }

    /// Makes sure a whole message is in the read buffer and returns its header.
    ///
    /// # Cancel safety
    /// Safe: only appends to the read buffer.
    async fn fill_message(&mut self) -> Result<backend::Header, Error> {
        loop {
            if let Some(header) = backend::Header::parse(&self.read_buf)? {
                let len = header.len() as usize + 1;
                if len > MAX_MESSAGE_BYTES {
                    return Err(Error::Protocol(format!(
                        "message of {len} bytes is too large"
                    )));
                }
                if self.read_buf.len() >= len {
                    return Ok(header);
                }
                let missing = len - self.read_buf.len();
                make_room(&mut self.read_buf, &mut self.retired, missing);
            } else if self.read_buf.capacity() - self.read_buf.len() < 4096 {
                make_room(&mut self.read_buf, &mut self.retired, READ_BUFFER_BYTES);
            }
            let n = self.transport.read_buf(&mut self.read_buf).await?;
            if n == 0 {
                return Err(Error::Closed);
            }
        }
    }

    /// Reads one whole backend message.
    ///
    /// # Cancel safety
    /// Safe: the message is removed from the buffer only once complete.
    async fn read_message(&mut self) -> Result<backend::Message, Error> {
        let header = self.fill_message().await?;
        if header.tag() == b'W' {
            return Err(Error::Protocol("unexpected CopyBothResponse".into()));
        }
        match backend::Message::parse(&mut self.read_buf)? {
            Some(m) => Ok(m),
            None => Err(Error::Protocol("incomplete message".into())),
        }
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

/// The password for this host from the password file, as libpq finds it:
/// only a regular file without group or other access is read (otherwise a
/// warning is logged and the file ignored); the database matched is
/// `replication`.
fn password_from_file(info: &ConnInfo, host: &str, port: u16) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let path = info.passfile.as_ref()?;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!(path = %path.display(), "password file is not a plain file, ignored");
        return None;
    }
    if !passfile::is_private_mode(meta.mode()) {
        tracing::warn!("{}", passfile::insecure_warning(path));
        return None;
    }
    let contents = std::fs::read_to_string(path).ok()?;
    passfile::lookup(
        &contents,
        passfile::host_field(host),
        &port.to_string(),
        if info.sql_session {
            info.dbname.as_deref().unwrap_or("postgres")
        } else {
            passfile::REPLICATION_DATABASE
        },
        &info.user,
    )
}

fn decode_row(body: &backend::DataRowBody) -> Result<Row, Error> {
    let buf = body.buffer();
    let values = body
        .ranges()
        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
        .collect()?;
    Ok(Row { values })
}

fn server_error(body: &backend::ErrorResponseBody) -> Result<ServerError, Error> {
    let mut e = ServerError::default();
    let mut fields = body.fields();
    while let Some(f) = fields.next()? {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'V' => e.severity = v,
            b'S' if e.severity.is_empty() => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    Ok(e)
}

/// Makes room in `buf` for `additional` more bytes, reusing memory: the
/// buffer itself when nothing points into it any more, else a retired
/// buffer nothing points into, else a new one of [`READ_SLAB_BYTES`]; the
/// buffer left is retired. A stream holding WAL in memory so reads into
/// the same buffers over and over, instead of the allocator handing out
/// fresh pages (a page fault each) or keeping freed ones it does not reuse
/// (memory above the budget). Beyond [`IDLE_READ_BUFFERS`], buffers nothing
/// points into are given back.
fn make_room(buf: &mut BytesMut, retired: &mut VecDeque<BytesMut>, additional: usize) {
    if buf.try_reclaim(additional) {
        return;
    }
    let need = buf.len() + additional;
    let mut next: Option<BytesMut> = None;
    let mut idle = 0;
    retired.retain_mut(|b| {
        // Every buffer holds at least a slab: this fails only while
        // something points into it.
        if !b.try_reclaim(READ_SLAB_BYTES) {
            return true;
        }
        if next.is_none() && b.try_reclaim(need) {
            next = Some(std::mem::take(b));
            return false;
        }
        idle += 1;
        idle <= IDLE_READ_BUFFERS
    });
    let mut next = next.unwrap_or_else(|| BytesMut::with_capacity(need.max(READ_SLAB_BYTES)));
    next.extend_from_slice(buf);
    let mut old = std::mem::replace(buf, next);
    old.clear();
    retired.push_back(old);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffers_are_reused_once_released() {
        let mut buf = BytesMut::with_capacity(READ_SLAB_BYTES);
        let mut retired = VecDeque::new();
        buf.extend_from_slice(&vec![1u8; READ_SLAB_BYTES - 10]);
        let held = buf.split_to(READ_SLAB_BYTES - 20).freeze();
        let first = held.as_ptr();
        // Ten bytes of a message wait, and a view into the buffer is held:
        // a new buffer, holding the ten bytes.
        make_room(&mut buf, &mut retired, READ_BUFFER_BYTES);
        assert_eq!(&buf[..], &[1u8; 10][..]);
        assert_ne!(buf.as_ptr(), first);
        assert_eq!(retired.len(), 1);
        assert_eq!(&held[..3], &[1, 1, 1]);
        // Once the view is gone, the retired buffer is read into again.
        drop(held);
        let room = buf.capacity() - buf.len();
        buf.extend_from_slice(&vec![2u8; room]);
        let second = buf.split().freeze();
        make_room(&mut buf, &mut retired, READ_BUFFER_BYTES);
        assert_eq!(buf.as_ptr(), first);
        assert_eq!(retired.len(), 1);
        // A buffer nothing points into is reclaimed in place.
        drop(second);
        let here = buf.as_ptr();
        let room = buf.capacity();
        buf.extend_from_slice(&vec![3u8; room]);
        drop(buf.split());
        make_room(&mut buf, &mut retired, READ_BUFFER_BYTES);
        assert_eq!(buf.as_ptr(), here);
        // Idle buffers beyond a few are given back.
        let mut views = Vec::new();
        for _ in 0..IDLE_READ_BUFFERS + 10 {
            let room = buf.capacity() - buf.len();
            buf.extend_from_slice(&vec![4u8; room]);
            views.push(buf.split().freeze());
            make_room(&mut buf, &mut retired, READ_BUFFER_BYTES);
        }
        assert_eq!(retired.len(), IDLE_READ_BUFFERS + 10);
        drop(views);
        make_room(&mut buf, &mut retired, READ_SLAB_BYTES + 1);
        assert_eq!(retired.len(), IDLE_READ_BUFFERS + 1);
    }
}
