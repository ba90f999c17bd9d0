//! The startup of a connection: the StartupMessage, then the authentication
//! the server asks for, one `authenticate_*` per method (cleartext password,
//! MD5, SASL SCRAM-SHA-256 with or without channel binding), checked against
//! `require_auth` and `channel_binding` as libpq checks them, until
//! ReadyForQuery.
//!
//! Does not open sockets or set up TLS (`connect`). The password comes from
//! the connection string or else the password file, read here only when the
//! server asks for a password.

use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use secrecy::ExposeSecret;

use crate::protocol::conninfo::{AuthMethod, ChannelBindingMode, ConnInfo};
use crate::protocol::{Error, passfile, tls};

use super::{ReplicationConnection, Transport, server_error};

/// What the authentication exchange has learnt and done so far.
struct AuthExchange<'a> {
    info: &'a ConnInfo,
    passfile_host: &'a str,
    port: u16,
    require_binding: bool,
    /// The password, from the connection string or else the password file,
    /// read only when the server asks for one.
    password: Option<Option<Vec<u8>>>,
    scram: Option<ScramSha256>,
    scram_plus: bool,
    channel_bound: bool,
    /// We sent a password, or verified the server's SCRAM signature.
    client_finished_auth: bool,
}

impl ReplicationConnection {
    /// Sends the StartupMessage and authenticates as the server asks, until
    /// it is ready for queries.
    pub(super) async fn startup(
        &mut self,
        info: &ConnInfo,
        passfile_host: &str,
        port: u16,
    ) -> Result<(), Error> {
        self.send_startup_message(info).await?;
        let mut auth = AuthExchange::new(info, passfile_host, port);
        loop {
            match self.read_message().await? {
                backend::Message::AuthenticationOk => auth.check_ok()?,
                backend::Message::AuthenticationCleartextPassword => {
                    self.authenticate_cleartext(&mut auth).await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    self.authenticate_md5(&mut auth, body.salt()).await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    self.authenticate_sasl(&mut auth, &body).await?;
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    self.continue_sasl(&mut auth, body.data()).await?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    auth.finish_sasl(body.data())?;
                }
                backend::Message::AuthenticationKerberosV5
                | backend::Message::AuthenticationScmCredential
                | backend::Message::AuthenticationGss
                | backend::Message::AuthenticationSspi
                | backend::Message::AuthenticationGssContinue(_) => {
                    return Err(auth.refuse_unsupported_method());
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
                        && matches!(auth.password, Some(Some(_)))
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

    /// Sends the StartupMessage: for a physical replication connection, or
    /// for an ordinary SQL session to `dbname`.
    async fn send_startup_message(&mut self, info: &ConnInfo) -> Result<(), Error> {
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
        self.flush_write().await
    }

    /// AuthenticationCleartextPassword: sends the password as it is.
    async fn authenticate_cleartext(&mut self, auth: &mut AuthExchange<'_>) -> Result<(), Error> {
        auth.check_method(AuthMethod::Password, "a cleartext password")?;
        if auth.require_binding {
            return Err(refuse_without_binding());
        }
        let pw = auth.get_password(&self.target)?;
        frontend::password_message(&pw, &mut self.write_buf)?;
        self.flush_write().await?;
        auth.client_finished_auth = true;
        Ok(())
    }

    /// AuthenticationMD5Password: sends the password hashed with the user
    /// name and the server's `salt`.
    async fn authenticate_md5(
        &mut self,
        auth: &mut AuthExchange<'_>,
        salt: [u8; 4],
    ) -> Result<(), Error> {
        auth.check_method(AuthMethod::Md5, "a hashed password")?;
        if auth.require_binding {
            return Err(refuse_without_binding());
        }
        let pw = auth.get_password(&self.target)?;
        let hash =
            postgres_protocol::authentication::md5_hash(auth.info.user.as_bytes(), &pw, salt);
        frontend::password_message(hash.as_bytes(), &mut self.write_buf)?;
        self.flush_write().await?;
        auth.client_finished_auth = true;
        Ok(())
    }

    /// AuthenticationSASL: picks SCRAM-SHA-256-PLUS (channel binding to the
    /// server certificate) or SCRAM-SHA-256 as `channel_binding` and the
    /// offer allow, and sends the client-first message.
    async fn authenticate_sasl(
        &mut self,
        auth: &mut AuthExchange<'_>,
        body: &backend::AuthenticationSaslBody,
    ) -> Result<(), Error> {
        let info = auth.info;
        auth.check_method(AuthMethod::ScramSha256, "SASL authentication")?;
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
        if auth.require_binding && !use_plus {
            return Err(Error::Auth(
                "channel binding is required, but server did not offer an authentication method that supports channel binding".into(),
            ));
        }
        if !use_plus && !has_scram {
            return Err(Error::Auth(
                "none of the server's SASL authentication mechanisms are supported".into(),
            ));
        }
        let pw = auth.get_password(&self.target)?;
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
        auth.scram = Some(s);
        auth.scram_plus = use_plus;
        Ok(())
    }

    /// AuthenticationSASLContinue: answers the server-first message.
    async fn continue_sasl(
        &mut self,
        auth: &mut AuthExchange<'_>,
        data: &[u8],
    ) -> Result<(), Error> {
        let s = auth
            .scram
            .as_mut()
            .ok_or_else(|| Error::Protocol("SASLContinue before SASL".into()))?;
        s.update(data)
            .map_err(|e| Error::Auth(format!("SCRAM exchange failed: {e}")))?;
        frontend::sasl_response(s.message(), &mut self.write_buf)?;
        self.flush_write().await
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
}

impl<'a> AuthExchange<'a> {
    fn new(info: &'a ConnInfo, passfile_host: &'a str, port: u16) -> Self {
        AuthExchange {
            info,
            passfile_host,
            port,
            require_binding: info.channel_binding == ChannelBindingMode::Require,
            password: None,
            scram: None,
            scram_plus: false,
            channel_bound: false,
            client_finished_auth: false,
        }
    }

    /// The password, read on first use; `target` names the server in the
    /// error when there is none.
    fn get_password(&mut self, target: &str) -> Result<Vec<u8>, Error> {
        let (info, passfile_host, port) = (self.info, self.passfile_host, self.port);
        let pw = self.password.get_or_insert_with(|| match &info.password {
            Some(p) => Some(p.expose_secret().as_bytes().to_vec()),
            None => password_from_file(info, passfile_host, port).map(String::into_bytes),
        });
        pw.clone().ok_or_else(|| {
            Error::Auth(format!(
                "server {} asked for a password for role {:?}, but none was given (set password in --pg, PGPASSWORD or a password file)",
                target, info.user
            ))
        })
    }

    /// require_auth, checked before answering each request as libpq does.
    fn check_method(&self, method: AuthMethod, what: &str) -> Result<(), Error> {
        match &self.info.require_auth {
            Some(r) if !r.allows(method) => Err(Error::Auth(format!(
                "authentication method requirement {:?} failed: server requested {what}",
                r.text
            ))),
            _ => Ok(()),
        }
    }

    /// AuthenticationOk: whether the exchange satisfies `require_auth` and
    /// `channel_binding`.
    fn check_ok(&self) -> Result<(), Error> {
        if let Some(r) = &self.info.require_auth
            && r.auth_required
            && !self.client_finished_auth
        {
            return Err(Error::Auth(format!(
                "authentication method requirement {:?} failed: server did not complete authentication",
                r.text
            )));
        }
        // channel_binding=require: the server must have proven
        // itself with SCRAM-SHA-256-PLUS, not trust or a certificate.
        if self.require_binding && !self.channel_bound {
            return Err(Error::Auth(
                "channel binding required, but server authenticated client without channel binding"
                    .into(),
            ));
        }
        Ok(())
    }

    /// AuthenticationSASLFinal: checks the server's signature.
    fn finish_sasl(&mut self, data: &[u8]) -> Result<(), Error> {
        let s = self
            .scram
            .as_mut()
            .ok_or_else(|| Error::Protocol("SASLFinal before SASL".into()))?;
        s.finish(data)
            .map_err(|e| Error::Auth(format!("server's SCRAM signature is invalid: {e}")))?;
        self.channel_bound = self.scram_plus;
        self.client_finished_auth = true;
        Ok(())
    }

    /// The error for a method walvault does not implement (GSSAPI, SSPI,
    /// Kerberos, SCM credentials).
    fn refuse_unsupported_method(&self) -> Error {
        if let Some(r) = &self.info.require_auth {
            return Error::Auth(format!(
                "authentication method requirement {:?} failed: server requested an authentication type walvault does not support",
                r.text
            ));
        }
        if self.require_binding {
            return refuse_without_binding();
        }
        Error::Auth(
            "server asks for an authentication method walvault does not support (use scram-sha-256, md5, password, cert or trust)".into(),
        )
    }
}

fn refuse_without_binding() -> Error {
    Error::Auth(
        "channel binding required but not supported by server's authentication request".into(),
    )
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
