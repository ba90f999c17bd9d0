//! The files TLS reads when connecting: the root certificates, the CRLs,
//! and the client certificate chain and private key, with libpq's checks
//! (a missing client certificate means none; the key must not be readable by
//! group or others, nor encrypted).
//!
//! Reads and checks files only: which files is decided in `conninfo`, and
//! what is done with them in `mod.rs`.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::protocol::Error;
use crate::protocol::conninfo::{ConnInfo, RootCert, SslCertMode, SslMode};

/// The trusted roots for `info`: the bundled Mozilla roots for
/// `sslrootcert=system`, else the root certificate file if it exists. Without
/// one, `None` (the chain is not checked), unless `sslmode` verifies.
pub(super) fn root_store(info: &ConnInfo) -> Result<Option<RootCertStore>, Error> {
    Ok(match &info.ssl_root_cert {
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
    })
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
pub(super) fn load_crls(
    info: &ConnInfo,
) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
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
pub(super) fn client_identity(
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

#[cfg(test)]
mod tests {
    use super::super::client_config;
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
}
