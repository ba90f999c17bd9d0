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

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::Digest;

use super::Error;
use super::conninfo::{ConnInfo, RootCert, SslCertMode, SslMode, TlsVersion};

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

    let roots = match &info.ssl_root_cert {
        Some(RootCert::System) => {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            Some(roots)
        }
        Some(RootCert::File(path)) if std::fs::metadata(path).is_ok() => Some(load_roots(path)?),
        Some(RootCert::File(path)) => {
            if matches!(info.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) {
                return Err(Error::Tls(format!(
                    "root certificate file {} does not exist; provide the file, use sslrootcert=system, or choose an sslmode that does not verify the server certificate",
                    path.display()
                )));
            }
            None
        }
        None => {
            if matches!(info.ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) {
                return Err(Error::Tls(
                    "no home directory to find ~/.postgresql/root.crt; set sslrootcert".into(),
                ));
            }
            None
        }
    };
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

/// The `tls-server-end-point` channel binding data (RFC 5929): the hash of
/// the server's DER certificate with its signature's hash function, SHA-256
/// for MD5 and SHA-1, as libpq and the server compute it.
///
/// # Errors
/// When the signature algorithm has no such hash (e.g. Ed25519, RSA-PSS),
/// as libpq fails then too.
pub(super) fn tls_server_end_point(cert: &[u8]) -> Result<Vec<u8>, Error> {
    let oid = signature_algorithm_oid(cert).ok_or_else(|| {
        Error::Tls("could not read the server certificate's signature algorithm".into())
    })?;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let hash = match oid {
        // md5WithRSA, sha1WithRSA, ecdsa-with-SHA1: upgraded to SHA-256.
        o if o == [RSA, &[0x04]].concat() || o == [RSA, &[0x05]].concat() => Hash::Sha256,
        o if o == [ECDSA, &[0x01]].concat() => Hash::Sha256,
        o if o == [RSA, &[0x0b]].concat() || o == [ECDSA, &[0x03, 0x02]].concat() => Hash::Sha256,
        o if o == [RSA, &[0x0c]].concat() || o == [ECDSA, &[0x03, 0x03]].concat() => Hash::Sha384,
        o if o == [RSA, &[0x0d]].concat() || o == [ECDSA, &[0x03, 0x04]].concat() => Hash::Sha512,
        o if o == [RSA, &[0x0e]].concat() || o == [ECDSA, &[0x03, 0x01]].concat() => Hash::Sha224,
        _ => {
            return Err(Error::Tls(
                "the server certificate's signature algorithm has no hash for channel binding (tls-server-end-point); use channel_binding=disable or a certificate signed with RSA or ECDSA and SHA-2".into(),
            ));
        }
    };
    Ok(match hash {
        Hash::Sha224 => sha2::Sha224::digest(cert).to_vec(),
        Hash::Sha256 => sha2::Sha256::digest(cert).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(cert).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(cert).to_vec(),
    })
}

enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The OID of `Certificate.signatureAlgorithm` (X.509: a SEQUENCE of
/// tbsCertificate, signatureAlgorithm, signatureValue).
fn signature_algorithm_oid(cert: &[u8]) -> Option<&[u8]> {
    let (tag, body, _) = der_element(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (_tbs_tag, _tbs, rest) = der_element(body)?;
    let (tag, algorithm, _) = der_element(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_element(algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// One DER element: (tag, contents, what follows).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

fn load_roots(path: &Path) -> Result<RootCertStore, Error> {
    let pem = std::fs::read(path).map_err(|e| {
        Error::Tls(format!(
            "cannot read root certificate file {}: {e}",
            path.display()
        ))
    })?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert =
            cert.map_err(|e| Error::Tls(format!("bad certificate in {}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("unusable certificate in {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls(format!("no certificate in {}", path.display())));
    }
    Ok(roots)
}

/// CRLs from `sslcrl` (a missing file is ignored, as libpq does) and every
/// file of `sslcrldir` (if the directory exists).
fn load_crls(info: &ConnInfo) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let mut crls = Vec::new();
    if let Some(path) = &info.ssl_crl
        && std::fs::metadata(path).is_ok()
    {
        let found = read_crls(path)?;
        if found.is_empty() {
            return Err(Error::Tls(format!(
                "no certificate revocation list in {}",
                path.display()
            )));
        }
        crls.extend(found);
    }
    if let Some(dir) = &info.ssl_crl_dir
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for entry in entries {
            let path = entry
                .map_err(|e| Error::Tls(format!("cannot list {}: {e}", dir.display())))?
                .path();
            if path.is_file() {
                crls.extend(read_crls(&path)?);
            }
        }
    }
    Ok(crls)
}

fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let pem = std::fs::read(path).map_err(|e| {
        Error::Tls(format!(
            "cannot read certificate revocation list {}: {e}",
            path.display()
        ))
    })?;
    rustls_pemfile::crls(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::Tls(format!(
                "bad certificate revocation list in {}: {e}",
                path.display()
            ))
        })
}

/// The client certificate chain and key, when the certificate file exists.
fn client_identity(
    info: &ConnInfo,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, Error> {
    if info.ssl_cert_mode == SslCertMode::Disable {
        return Ok(None);
    }
    let Some(cert_path) = &info.ssl_cert else {
        return Ok(None);
    };
    let pem = match std::fs::read(cert_path) {
        Ok(pem) => pem,
        // As libpq: a missing certificate file means no client certificate.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None);
        }
        Err(e) => {
            return Err(Error::Tls(format!(
                "cannot read certificate file {}: {e}",
                cert_path.display()
            )));
        }
    };
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("bad certificate in {}: {e}", cert_path.display())))?;
    if chain.is_empty() {
        return Err(Error::Tls(format!(
            "no certificate in {}",
            cert_path.display()
        )));
    }
    let key_path = info.ssl_key.as_deref().ok_or_else(|| {
        Error::Tls(format!(
            "certificate {} present, but no private key file (set sslkey)",
            cert_path.display()
        ))
    })?;
    Ok(Some((chain, load_private_key(key_path, info)?)))
}

fn load_private_key(path: &Path, info: &ConnInfo) -> Result<PrivateKeyDer<'static>, Error> {
    if path.to_string_lossy().starts_with("engine:") {
        return Err(Error::Tls(
            "sslkey with an OpenSSL engine is not supported; give a PEM key file".into(),
        ));
    }
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::Tls(format!(
            "certificate present, but not private key file {}: {e}",
            path.display()
        ))
    })?;
    if !meta.is_file() {
        return Err(Error::Tls(format!(
            "private key file {} is not a regular file",
            path.display()
        )));
    }
    if !is_private_key_mode(meta_uid(&meta), meta_mode(&meta)) {
        return Err(Error::Tls(format!(
            "private key file {} has group or world access; file must have permissions u=rw (0600) or less if owned by the current user, or permissions u=rw,g=r (0640) or less if owned by root",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        Error::Tls(format!(
            "cannot read private key file {}: {e}",
            path.display()
        ))
    })?;
    let text = String::from_utf8_lossy(&bytes);
    if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
        let hint = if info.ssl_password.is_some() {
            "sslpassword is not supported"
        } else {
            "walvault cannot decrypt it"
        };
        return Err(Error::Tls(format!(
            "private key file {} is encrypted and {hint}; decrypt it (openssl pkey -in KEY -out KEY.plain) and protect it with file permissions",
            path.display()
        )));
    }
    let key = match rustls_pemfile::private_key(&mut bytes.as_slice()) {
        Ok(Some(key)) => key,
        // Not PEM: try DER.
        Ok(None) | Err(_) => PrivateKeyDer::try_from(bytes)
            .map_err(|_| Error::Tls(format!("no private key found in {}", path.display())))?,
    };
    Ok(key)
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

/// libpq's rule: no group or other access, except that a root-owned key may
/// be group-readable (0640).
fn is_private_key_mode(uid: u32, mode: u32) -> bool {
    if uid == 0 {
        mode & 0o037 == 0
    } else {
        mode & 0o077 == 0
    }
}

fn meta_uid(meta: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::MetadataExt::uid(meta)
}

fn meta_mode(meta: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::MetadataExt::mode(meta)
}

/// A verified chain; the name is checked only for verify-full.
#[derive(Debug)]
struct ChainVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            // Only the name failed: the chain (and CRLs) passed.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name || common_name_matches(end_entity, server_name) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// libpq's fallback for verify-full: when the certificate has no
/// subjectAltName of the host's kind (DNS name, or IP address for an IP
/// host), the first Common Name of the subject is compared with the host,
/// case-insensitively, with a leading `*.` matching one label.
fn common_name_matches(cert: &[u8], server_name: &ServerName<'_>) -> bool {
    let (host, host_is_ip) = match server_name {
        ServerName::DnsName(d) => (d.as_ref().to_string(), false),
        ServerName::IpAddress(ip) => (std::net::IpAddr::from(*ip).to_string(), true),
        _ => return false,
    };
    let Some(parts) = certificate_parts(cert) else {
        return false;
    };
    // GeneralName tags: [2] dNSName, [7] iPAddress.
    let wanted_san = if host_is_ip { 0x87 } else { 0x82 };
    if parts.san_tags.contains(&wanted_san) {
        return false;
    }
    let Some(cn) = parts.common_name else {
        return false;
    };
    if cn.contains('\0') {
        return false;
    }
    name_matches(&cn, &host)
}

/// A certificate name against the host, as libpq compares them.
fn name_matches(pattern: &str, host: &str) -> bool {
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    // "*.example.com": the star stands for exactly one label.
    match pattern.strip_prefix('*') {
        Some(suffix) if suffix.starts_with('.') && host.len() > suffix.len() => {
            let (label, rest) = host.split_at(host.len() - suffix.len());
            rest.eq_ignore_ascii_case(suffix) && !label.contains('.')
        }
        _ => false,
    }
}

/// What the name check needs from a certificate.
struct CertificateParts {
    /// The first commonName of the subject.
    common_name: Option<String>,
    /// The tags of the subjectAltName entries.
    san_tags: Vec<u8>,
}

/// Reads the subject's commonName and the subjectAltName tags from a DER
/// certificate (RFC 5280 section 4.1).
fn certificate_parts(cert: &[u8]) -> Option<CertificateParts> {
    let (_, body, _) = der_element(cert)?;
    let (_, mut tbs, _) = der_element(body)?;
    let mut fields = Vec::new();
    while !tbs.is_empty() {
        let (tag, content, rest) = der_element(tbs)?;
        fields.push((tag, content));
        tbs = rest;
    }
    // version [0] is optional; then serial, signature, issuer, validity, subject.
    let skip = usize::from(fields.first()?.0 == 0xa0);
    let subject = fields.get(skip + 4)?.1;
    let mut common_name = None;
    let mut rdns = subject;
    'rdns: while !rdns.is_empty() {
        let (_, set, rest) = der_element(rdns)?;
        rdns = rest;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (_, attr, rest) = der_element(attrs)?;
            attrs = rest;
            let (_, oid, value) = der_element(attr)?;
            if oid == [0x55, 0x04, 0x03] {
                let (tag, text, _) = der_element(value)?;
                common_name = match tag {
                    // UTF8String, PrintableString, T61String, IA5String.
                    0x0c | 0x13 | 0x14 | 0x16 => Some(String::from_utf8_lossy(text).into_owned()),
                    _ => None,
                };
                break 'rdns;
            }
        }
    }
    let mut san_tags = Vec::new();
    if let Some((_, extensions)) = fields.iter().find(|(tag, _)| *tag == 0xa3) {
        let (_, mut list, _) = der_element(extensions)?;
        while !list.is_empty() {
            let (_, ext, rest) = der_element(list)?;
            list = rest;
            let (_, oid, mut after) = der_element(ext)?;
            if oid != [0x55, 0x1d, 0x11] {
                continue;
            }
            // Skip the optional critical BOOLEAN, then the OCTET STRING.
            let (mut tag, mut value, rest) = der_element(after)?;
            if tag == 0x01 {
                after = rest;
                (tag, value, _) = der_element(after)?;
            }
            if tag != 0x04 {
                return None;
            }
            let (_, mut names, _) = der_element(value)?;
            while !names.is_empty() {
                let (tag, _, rest) = der_element(names)?;
                san_tags.push(tag);
                names = rest;
            }
        }
    }
    Some(CertificateParts {
        common_name,
        san_tags,
    })
}

/// No root certificate and sslmode prefer/require: encryption without
/// certificate checks (libpq's behaviour).
#[derive(Debug)]
struct NoNameNoChain(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoNameNoChain {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_permissions_follow_libpq() {
        assert!(is_private_key_mode(1000, 0o100600));
        assert!(is_private_key_mode(1000, 0o100400));
        assert!(!is_private_key_mode(1000, 0o100640));
        assert!(!is_private_key_mode(1000, 0o100604));
        assert!(is_private_key_mode(0, 0o100640));
        assert!(!is_private_key_mode(0, 0o100660));
        assert!(!is_private_key_mode(0, 0o100644));
    }

    /// Client keys: permissions and encryption are checked as libpq does; a
    /// missing certificate file means no certificate.
    #[test]
    fn client_key_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["postgres".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (crt, pem) = (dir.path().join("c.crt"), dir.path().join("c.key"));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&pem, key.serialize_pem()).unwrap();
        let set_mode =
            |m| std::fs::set_permissions(&pem, std::fs::Permissions::from_mode(m)).unwrap();
        set_mode(0o600);
        let info = |extra: &str| {
            ConnInfo::parse(
                &format!("sslcert={} sslkey={} {extra}", crt.display(), pem.display()),
                &|_| None,
            )
            .unwrap()
        };
        assert!(client_identity(&info("")).unwrap().is_some());
        assert!(client_config(&info("")).is_ok());
        assert!(
            client_identity(&info("sslcertmode=disable"))
                .unwrap()
                .is_none()
        );
        set_mode(0o644);
        let err = client_identity(&info("")).unwrap_err().to_string();
        assert!(err.contains("group or world access"), "{err}");
        set_mode(0o600);
        std::fs::write(
            &pem,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0w\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = client_identity(&info("sslpassword=Pw-9xq"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("encrypted") && err.contains("sslpassword"),
            "{err}"
        );
        assert!(
            !err.contains("secret,") && !err.ends_with("secret"),
            "{err}"
        );
        let missing = ConnInfo::parse("sslcert=/nonexistent/c.crt", &|_| None).unwrap();
        assert!(client_identity(&missing).unwrap().is_none());
    }

    /// verify-full falls back to the Common Name only when the certificate
    /// has no subjectAltName of the host's kind, as libpq does.
    #[test]
    fn common_name_fallback() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf = |sans: Vec<String>, cn: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(sans).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            params.signed_by(&key, &ca, &ca_key).unwrap()
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let inner =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let verifier = ChainVerifier {
            inner,
            check_name: true,
        };
        let check = |cert: &rcgen::Certificate, host: &str| {
            verifier
                .verify_server_cert(
                    cert.der(),
                    &[],
                    &ServerName::try_from(host.to_string()).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .is_ok()
        };
        let cn_only = leaf(vec![], "DB.example.com");
        assert!(check(&cn_only, "db.example.com"));
        assert!(!check(&cn_only, "other.example.com"));
        let wildcard = leaf(vec![], "*.example.com");
        assert!(check(&wildcard, "db.example.com"));
        assert!(!check(&wildcard, "a.db.example.com"));
        assert!(!check(&wildcard, "example.com"));
        // A DNS subjectAltName hides the Common Name.
        let with_san = leaf(vec!["san.example.com".into()], "db.example.com");
        assert!(check(&with_san, "san.example.com"));
        assert!(!check(&with_san, "db.example.com"));
        // An IP host: a DNS SAN does not hide the Common Name.
        let ip_cn = leaf(vec!["san.example.com".into()], "127.0.0.1");
        assert!(check(&ip_cn, "127.0.0.1"));
    }

    #[test]
    fn end_point_hash_follows_the_signature() {
        // An rcgen certificate signed with ECDSA P-256/SHA-256 and one with
        // P-384/SHA-384.
        for (alg, len) in [
            (&rcgen::PKCS_ECDSA_P256_SHA256, 32),
            (&rcgen::PKCS_ECDSA_P384_SHA384, 48),
        ] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let hash = tls_server_end_point(cert.der()).unwrap();
            assert_eq!(hash.len(), len);
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(tls_server_end_point(cert.der()).is_err());
        assert!(tls_server_end_point(b"\x30\x03\x02\x01").is_err());
    }
}
