//! TLS for the replication connection, as libpq sets it up.
//!
//! The server certificate chain is checked whenever a root certificate is
//! available: `sslrootcert` (a file, or `system` for the bundled Mozilla
//! roots) or else `~/.postgresql/root.crt`, for `prefer` and `require` too
//! when that file exists; `verify-ca` and `verify-full` fail without one.
//! Only `verify-full` checks the name: the subjectAltName entries of the
//! host's kind, else the subject's Common Name. CRLs (`sslcrl`, default
//! `~/.postgresql/root.crl`, and `sslcrldir`) apply whenever the chain is
//! checked. A client certificate (`sslcert`, default
//! `~/.postgresql/postgresql.crt`) is offered when its file exists, with its
//! key (`sslkey`), which must not be readable by group or others.
//!
//! The server certificate's hash for `tls-server-end-point` channel binding
//! (RFC 5929) is computed here too.
//!
//! This file owns the client configuration: protocol versions, the
//! verifier, the client certificate offered, SNI. The verifiers, name
//! matching and certificate parsing are in `verify`; reading roots, CRLs,
//! client certificates and keys (and checking key permissions) in `files`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, SignatureScheme};

use super::Error;
use super::conninfo::{ConnInfo, SslMode, TlsVersion};

mod files;
mod verify;

pub(super) use verify::tls_server_end_point;

use files::{client_identity, load_crls, root_store};
use verify::{ChainVerifier, NoNameNoChain};

/// Whether the server asked for a client certificate and got one, for
/// `sslcertmode=require`.
#[derive(Debug, Default)]
pub(super) struct ClientCertUse {
    requested: AtomicBool,
    sent: AtomicBool,
}

impl ClientCertUse {
    /// The server sent a CertificateRequest.
    pub(super) fn was_requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// A certificate went back.
    pub(super) fn was_sent(&self) -> bool {
        self.sent.load(Ordering::Relaxed)
    }
}

/// Builds the rustls client configuration for `info` (reads the root
/// certificate, CRL, client certificate and key files), and what will tell
/// whether a client certificate was asked for and sent.
pub(super) fn client_config(
    info: &ConnInfo,
) -> Result<(Arc<ClientConfig>, Arc<ClientCertUse>), Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let max = info.ssl_max_protocol.unwrap_or(TlsVersion::Tls1_3);
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if max >= TlsVersion::Tls1_3 {
        versions.push(&rustls::version::TLS13);
    }
    // rustls has nothing older than TLS 1.2: a lower minimum allows 1.2.
    if info.ssl_min_protocol <= TlsVersion::Tls1_2 && max >= TlsVersion::Tls1_2 {
        versions.push(&rustls::version::TLS12);
    }
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| Error::Tls(e.to_string()))?;

    let roots = root_store(info)?;
    let builder = match roots {
        Some(roots) => {
            let crls = load_crls(info)?;
            let mut verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            if !crls.is_empty() {
                // As OpenSSL with CRL_CHECK_ALL: every certificate of the
                // chain needs its issuer's CRL, and an expired CRL fails.
                verifier = verifier.with_crls(crls).enforce_revocation_expiration();
            }
            let inner = verifier.build().map_err(|e| Error::Tls(e.to_string()))?;
            let check_name = info.ssl_mode == SslMode::VerifyFull;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainVerifier { inner, check_name }))
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoNameNoChain(provider))),
    };
    let key = match client_identity(info)? {
        Some((chain, key)) => Some(Arc::new(
            rustls::sign::CertifiedKey::from_der(
                chain,
                key,
                &rustls::crypto::ring::default_provider(),
            )
            .map_err(|e| Error::Tls(format!("unusable client certificate or key: {e}")))?,
        )),
        None => None,
    };
    let used = Arc::new(ClientCertUse::default());
    let mut config = builder.with_client_cert_resolver(Arc::new(ClientCertResolver {
        key,
        used: used.clone(),
    }));
    config.enable_sni = info.ssl_sni;
    Ok((Arc::new(config), used))
}

/// The server name for SNI and verify-full: the host name, or the address
/// when the host is an IP address (no SNI is sent for addresses).
pub(super) fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.to_string())
        .map_err(|e| Error::Tls(format!("invalid server name {host:?}: {e}")))
}

/// Offers the client certificate when the server asks (as OpenSSL does for
/// libpq) and records that it asked.
#[derive(Debug)]
struct ClientCertResolver {
    key: Option<Arc<rustls::sign::CertifiedKey>>,
    used: Arc<ClientCertUse>,
}

impl rustls::client::ResolvesClientCert for ClientCertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.used.requested.store(true, Ordering::Relaxed);
        let key = self.key.as_ref()?;
        key.key.choose_scheme(sigschemes)?;
        self.used.sent.store(true, Ordering::Relaxed);
        Some(key.clone())
    }

    fn has_certs(&self) -> bool {
        self.key.is_some()
    }
}
