//! Checking the server: the certificate verifiers (the chain against the
//! roots and CRLs, the name for verify-full with libpq's Common Name
//! fallback, or no check without a root certificate), and the
//! `tls-server-end-point` hash for channel binding, with the little DER
//! reading both need.
//!
//! Does not choose the roots or read files (`files`), nor decide which
//! verifier a connection uses (`mod.rs`).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::Digest;

use crate::protocol::Error;

/// The `tls-server-end-point` channel binding data (RFC 5929): the hash of
/// the server's DER certificate with its signature's hash function, SHA-256
/// for MD5 and SHA-1, as libpq and the server compute it.
///
/// # Errors
/// When the signature algorithm has no such hash (e.g. Ed25519, RSA-PSS),
/// as libpq fails then too.
pub(in crate::protocol) fn tls_server_end_point(cert: &[u8]) -> Result<Vec<u8>, Error> {
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

/// A verified chain; the name is checked only for verify-full.
#[derive(Debug)]
pub(super) struct ChainVerifier {
    pub(super) inner: Arc<rustls::client::WebPkiServerVerifier>,
    pub(super) check_name: bool,
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
pub(super) struct NoNameNoChain(pub(super) Arc<rustls::crypto::CryptoProvider>);

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
    use rustls::RootCertStore;

    use super::*;

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
