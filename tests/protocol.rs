//! The replication connection against real servers: TLS by sslmode,
//! password authentication methods, server errors, PG* environment.

use std::process::Command;

use walvault::protocol::{ConnInfo, ReplicationConnection};

use crate::pg_test;
use crate::support::pg::{PgCluster, PgOptions};

/// A CA and a server certificate for `localhost`, made with the openssl CLI.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .expect("openssl CLI");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for (name, cn) in [("ca", "walvault test CA"), ("other-ca", "another CA")] {
            run(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-subj",
                &format!("/CN={cn}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            dir.path().join("ext.cnf"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.dir.path().join(name)).unwrap()
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

async fn connect(connstr: &str) -> Result<ReplicationConnection, walvault::protocol::Error> {
    let info = ConnInfo::parse(connstr, &no_env).unwrap();
    ReplicationConnection::connect(&info).await
}

/// sslmode disable/prefer/require/verify-ca/verify-full, each as libpq
/// defines it.
async fn tls_modes(major: u32) {
    let certs = Certs::new();
    let pg = PgCluster::start(
        major,
        &PgOptions {
            extra_conf: vec![
                "ssl = on".into(),
                "ssl_cert_file = 'server.crt'".into(),
                "ssl_key_file = 'server.key'".into(),
            ],
            files: vec![
                ("server.crt".into(), certs.read("server.crt"), 0o644),
                ("server.key".into(), certs.read("server.key"), 0o600),
            ],
            ..Default::default()
        },
    );
    let base = format!("port={} user=postgres", pg.port);
    let ca = certs.path("ca.crt");

    let mut c = connect(&format!("host=127.0.0.1 {base} sslmode=disable"))
        .await
        .unwrap();
    assert!(!c.is_tls());
    assert!(c.identify_system().await.is_ok());
    for mode in ["prefer", "require"] {
        let c = connect(&format!("host=127.0.0.1 {base} sslmode={mode}"))
            .await
            .unwrap();
        assert!(c.is_tls(), "sslmode={mode} did not encrypt");
    }
    // verify-ca checks the chain, not the name (127.0.0.1 is not in the certificate).
    let mut c = connect(&format!(
        "host=127.0.0.1 {base} sslmode=verify-ca sslrootcert={ca}"
    ))
    .await
    .unwrap();
    assert!(c.is_tls());
    assert!(c.identify_system().await.is_ok());
    let err = connect(&format!(
        "host=127.0.0.1 {base} sslmode=verify-ca sslrootcert={}",
        certs.path("other-ca.crt")
    ))
    .await
    .err()
    .expect("a certificate from another CA is refused");
    assert!(err.to_string().contains("TLS"), "{err}");
    // verify-full also checks the name.
    let err = connect(&format!(
        "host=127.0.0.1 {base} sslmode=verify-full sslrootcert={ca}"
    ))
    .await
    .err()
    .expect("a name mismatch is refused");
    assert!(err.to_string().contains("TLS"), "{err}");
    let c = connect(&format!(
        "host=localhost {base} sslmode=verify-full sslrootcert={ca}"
    ))
    .await
    .unwrap();
    assert!(c.is_tls());
    // This server asks for no client certificate (no ssl_ca_file).
    let err = connect(&format!(
        "host=127.0.0.1 {base} sslmode=require sslcertmode=require"
    ))
    .await
    .err()
    .expect("sslcertmode=require needs a server that asks");
    assert!(
        err.to_string()
            .contains("did not request an SSL certificate"),
        "{err}"
    );
}
pg_test!(tls_modes);

/// sslmode=require against a server without TLS is refused with a clear message.
async fn tls_required_but_unavailable(major: u32) {
    let pg = PgCluster::start(major, &PgOptions::default());
    let err = connect(&format!(
        "host=127.0.0.1 port={} user=postgres sslmode=require",
        pg.port
    ))
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("does not support TLS"), "{err}");
    let c = connect(&format!(
        "host=127.0.0.1 port={} user=postgres sslmode=prefer",
        pg.port
    ))
    .await
    .unwrap();
    assert!(!c.is_tls());
}
pg_test!(tls_required_but_unavailable);

/// Cleartext, MD5 and SCRAM-SHA-256 (also over TLS); a wrong password shows
/// the server's message and SQLSTATE.
async fn password_methods(major: u32) {
    let certs = Certs::new();
    let pg = PgCluster::start(
        major,
        &PgOptions {
            hba_first: vec![
                "host replication pw_user 127.0.0.1/32 password".into(),
                "host replication md5_user 127.0.0.1/32 md5".into(),
                "hostssl replication scram_user 127.0.0.1/32 scram-sha-256".into(),
                "host replication scram_user 127.0.0.1/32 scram-sha-256".into(),
            ],
            extra_conf: vec![
                "ssl = on".into(),
                "ssl_cert_file = 'server.crt'".into(),
                "ssl_key_file = 'server.key'".into(),
            ],
            files: vec![
                ("server.crt".into(), certs.read("server.crt"), 0o644),
                ("server.key".into(), certs.read("server.key"), 0o600),
            ],
            ..Default::default()
        },
    );
    pg.execute(
        "CREATE ROLE pw_user LOGIN REPLICATION PASSWORD 'pw secret';
         SET password_encryption = 'md5';
         CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5 secret';
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram secret';",
    )
    .await;
    let port = pg.port;
    for (user, pw, ssl) in [
        ("pw_user", "pw secret", "disable"),
        ("md5_user", "md5 secret", "disable"),
        ("scram_user", "scram secret", "disable"),
        ("scram_user", "scram secret", "require"),
    ] {
        let mut c = connect(&format!(
            "host=127.0.0.1 port={port} user={user} password='{pw}' sslmode={ssl}"
        ))
        .await
        .unwrap_or_else(|e| panic!("{user} over sslmode={ssl}: {e}"));
        assert!(c.identify_system().await.is_ok());
    }
    let err = connect(&format!(
        "host=127.0.0.1 port={port} user=scram_user password=wrong sslmode=disable"
    ))
    .await
    .err()
    .expect("wrong password refused");
    assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    let err = connect(&format!(
        "host=127.0.0.1 port={port} user=md5_user sslmode=disable"
    ))
    .await
    .err()
    .expect("no password");
    assert!(err.to_string().contains("none was given"), "{err}");
}
pg_test!(password_methods);

/// With no --pg at all, PGHOST (a socket directory), PGPORT and PGUSER are
/// used as libpq uses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_reads_pg_environment() {
    use crate::support::process::{RepoEnv, StreamProcess};
    let pg = PgCluster::start(15, &PgOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().display());
    let env = RepoEnv {
        url: url.clone(),
        env: vec![
            ("PGHOST".into(), pg.socket_dir.display().to_string()),
            ("PGPORT".into(), pg.port.to_string()),
            ("PGUSER".into(), "postgres".into()),
            ("WALVAULT_UNENCRYPTED".into(), "true".into()),
        ],
    };
    let mut cmd = env.command();
    cmd.args(["stream", "--flush-interval", "200ms"]);
    let stream = StreamProcess::spawn(cmd);
    pg.execute("CREATE TABLE t AS SELECT 1 AS x").await;
    let end = pg.switch_wal().await;
    let repo = walvault::storage::Repository::open(
        &url,
        walvault::format::Keyring::none(),
        Default::default(),
    )
    .unwrap();
    crate::support::archive::wait_archived(
        &repo,
        1 << 20,
        1,
        end,
        std::time::Duration::from_secs(30),
    )
    .await;
    let (code, log) = stream.terminate();
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains(&format!("{}/.s.PGSQL.{}", pg.socket_dir.display(), pg.port)),
        "{log}"
    );
}

impl Certs {
    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl CLI");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A client certificate `<name>.crt`/`<name>.key` for role `cn`, issued
    /// by `ca` ("ca" or "other-ca"); the key is 0600.
    fn client(&self, name: &str, cn: &str, ca: &str) {
        let (key, csr, crt) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
        );
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ]);
        std::fs::write(
            self.dir.path().join("client-ext.cnf"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            "client-ext.cnf",
        ]);
        self.chmod(&key, 0o600);
    }

    fn chmod(&self, name: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            self.dir.path().join(name),
            std::fs::Permissions::from_mode(mode),
        )
        .unwrap();
    }

    /// A CRL `<out>` from the test CA, revoking the server certificate if asked.
    fn crl(&self, out: &str, revoke_server: bool) {
        std::fs::write(
            self.dir.path().join("ca.cnf"),
            "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 2\n",
        )
        .unwrap();
        std::fs::write(self.dir.path().join("index.txt"), "").unwrap();
        std::fs::write(self.dir.path().join("crlnumber"), "01\n").unwrap();
        let ca_args = ["-config", "ca.cnf", "-keyfile", "ca.key", "-cert", "ca.crt"];
        if revoke_server {
            let mut args = vec!["ca"];
            args.extend(ca_args);
            args.extend(["-revoke", "server.crt"]);
            self.openssl(&args);
        }
        let mut args = vec!["ca"];
        args.extend(ca_args);
        args.extend(["-gencrl", "-out", out]);
        self.openssl(&args);
    }
}

/// PgOptions for a TLS server with the test certificates; `extra_hba` first.
fn tls_server(certs: &Certs, extra_hba: Vec<String>) -> PgOptions {
    PgOptions {
        hba_first: extra_hba,
        extra_conf: vec![
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
            "ssl_ca_file = 'ca.crt'".into(),
        ],
        files: vec![
            ("server.crt".into(), certs.read("server.crt"), 0o644),
            ("server.key".into(), certs.read("server.key"), 0o600),
            ("ca.crt".into(), certs.read("ca.crt"), 0o644),
        ],
        ..Default::default()
    }
}

async fn connect_env(
    connstr: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ReplicationConnection, walvault::protocol::Error> {
    let info = ConnInfo::parse(connstr, env).unwrap();
    ReplicationConnection::connect(&info).await
}

/// `cert` authentication: the client certificate from sslcert/sslkey (or
/// ~/.postgresql/postgresql.crt) logs in; none, one from another CA, or a
/// key readable by others is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_auth() {
    let certs = Certs::new();
    certs.client("client", "postgres", "ca");
    certs.client("stranger", "postgres", "other-ca");
    let pg = PgCluster::start(
        15,
        &tls_server(
            &certs,
            vec!["hostssl replication all 127.0.0.1/32 cert".into()],
        ),
    );
    let base = format!(
        "host=127.0.0.1 port={} user=postgres sslmode=require",
        pg.port
    );

    let mut c = connect(&format!(
        "{base} sslcert={} sslkey={}",
        certs.path("client.crt"),
        certs.path("client.key")
    ))
    .await
    .expect("a client certificate from the server's CA logs in");
    assert!(c.is_tls());
    assert!(c.identify_system().await.is_ok());
    let c = connect(&format!(
        "{base} sslcertmode=require sslcert={} sslkey={}",
        certs.path("client.crt"),
        certs.path("client.key")
    ))
    .await
    .expect("sslcertmode=require: the server asked and got the certificate");
    assert!(c.is_tls());

    // The default files under ~/.postgresql are used as libpq uses them.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".postgresql")).unwrap();
    std::fs::copy(
        certs.path("client.crt"),
        home.path().join(".postgresql/postgresql.crt"),
    )
    .unwrap();
    std::fs::copy(
        certs.path("client.key"),
        home.path().join(".postgresql/postgresql.key"),
    )
    .unwrap();
    let home_dir = home.path().display().to_string();
    let env = |k: &str| (k == "HOME").then(|| home_dir.clone());
    let c = connect_env(&base, &env)
        .await
        .expect("~/.postgresql/postgresql.crt is used");
    assert!(c.is_tls());
    // sslcertmode=disable does not send it.
    let err = connect_env(&format!("{base} sslcertmode=disable"), &env)
        .await
        .err()
        .expect("no certificate sent");
    assert_eq!(err.sqlstate(), Some("28000"), "{err}");

    // No certificate at all.
    let err = connect(&base).await.err().expect("no certificate refused");
    assert_eq!(err.sqlstate(), Some("28000"), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    // A certificate from another CA: the server ends the handshake.
    let err = connect(&format!(
        "{base} sslcert={} sslkey={}",
        certs.path("stranger.crt"),
        certs.path("stranger.key")
    ))
    .await
    .err()
    .expect("certificate from another CA refused");
    assert!(err.sqlstate().is_none_or(|s| s == "28000"), "{err}");
    // A key readable by others is refused before connecting, as libpq does.
    certs.chmod("client.key", 0o644);
    let err = connect(&format!(
        "{base} sslcert={} sslkey={}",
        certs.path("client.crt"),
        certs.path("client.key")
    ))
    .await
    .err()
    .expect("world-readable key refused");
    assert!(err.to_string().contains("group or world access"), "{err}");
}

/// sslmode=require verifies the chain whenever a root certificate file
/// exists (explicit or ~/.postgresql/root.crt), as libpq does, and a
/// revoked server certificate (sslcrl) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_with_root_cert_and_crl() {
    let certs = Certs::new();
    let pg = PgCluster::start(15, &tls_server(&certs, vec![]));
    let base = format!("host=127.0.0.1 port={} user=postgres", pg.port);

    let c = connect(&format!(
        "{base} sslmode=require sslrootcert={}",
        certs.path("ca.crt")
    ))
    .await
    .unwrap();
    assert!(c.is_tls());
    let err = connect(&format!(
        "{base} sslmode=require sslrootcert={}",
        certs.path("other-ca.crt")
    ))
    .await
    .err()
    .expect("require with a root certificate checks the chain");
    assert!(err.to_string().contains("TLS"), "{err}");
    // A root certificate file that does not exist means no check for
    // require, and an error for verify-ca.
    let missing = certs.path("missing.crt");
    assert!(
        connect(&format!("{base} sslmode=require sslrootcert={missing}"))
            .await
            .is_ok()
    );
    let err = connect(&format!("{base} sslmode=verify-ca sslrootcert={missing}"))
        .await
        .err()
        .expect("verify-ca needs the file");
    assert!(err.to_string().contains("does not exist"), "{err}");

    // The default ~/.postgresql/root.crt counts too.
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".postgresql")).unwrap();
    std::fs::copy(
        certs.path("other-ca.crt"),
        home.path().join(".postgresql/root.crt"),
    )
    .unwrap();
    let home_dir = home.path().display().to_string();
    let env = |k: &str| (k == "HOME").then(|| home_dir.clone());
    let err = connect_env(&format!("{base} sslmode=require"), &env)
        .await
        .err()
        .expect("~/.postgresql/root.crt from another CA is refused");
    assert!(err.to_string().contains("TLS"), "{err}");
    // prefer checks the chain too and, as libpq, retries without TLS when
    // the handshake fails.
    let c = connect_env(&format!("{base} sslmode=prefer"), &env)
        .await
        .expect("prefer falls back to plain TCP");
    assert!(!c.is_tls());
    std::fs::copy(
        certs.path("ca.crt"),
        home.path().join(".postgresql/root.crt"),
    )
    .unwrap();
    assert!(
        connect_env(&format!("{base} sslmode=require"), &env)
            .await
            .is_ok()
    );

    // sslrootcert=system (the bundled public roots) does not trust the test CA,
    // and makes verify-full the default.
    let err = connect(&format!("{base} host=localhost sslrootcert=system"))
        .await
        .err()
        .expect("the test CA is not a public root");
    assert!(err.to_string().contains("TLS"), "{err}");

    // CRLs: one without revocations passes, one revoking the server fails,
    // through sslcrl, sslcrldir and the default ~/.postgresql/root.crl.
    certs.crl("empty.crl", false);
    let ca = certs.path("ca.crt");
    let mut c = connect(&format!(
        "{base} sslmode=verify-ca sslrootcert={ca} sslcrl={}",
        certs.path("empty.crl")
    ))
    .await
    .expect("a CRL that revokes nothing");
    assert!(c.identify_system().await.is_ok());
    certs.crl("revoked.crl", true);
    let err = connect(&format!(
        "{base} sslmode=verify-ca sslrootcert={ca} sslcrl={}",
        certs.path("revoked.crl")
    ))
    .await
    .err()
    .expect("a revoked server certificate is refused");
    assert!(err.to_string().to_lowercase().contains("revoked"), "{err}");
    let crl_dir = tempfile::tempdir().unwrap();
    std::fs::copy(certs.path("revoked.crl"), crl_dir.path().join("abcd.r0")).unwrap();
    let err = connect(&format!(
        "{base} sslmode=verify-ca sslrootcert={ca} sslcrldir={}",
        crl_dir.path().display()
    ))
    .await
    .err()
    .expect("sslcrldir applies");
    assert!(err.to_string().to_lowercase().contains("revoked"), "{err}");
    std::fs::copy(
        certs.path("revoked.crl"),
        home.path().join(".postgresql/root.crl"),
    )
    .unwrap();
    let err = connect_env(&format!("{base} sslmode=require"), &env)
        .await
        .err()
        .expect("~/.postgresql/root.crl applies with require and root.crt");
    assert!(err.to_string().to_lowercase().contains("revoked"), "{err}");
}

/// channel_binding: SCRAM-SHA-256-PLUS over TLS (the server checks the
/// binding, so success proves the certificate hash); `require` fails over
/// plain TCP and when the server authenticates without SCRAM. require_auth
/// limits the methods the server may use.
async fn channel_binding(major: u32) {
    let certs = Certs::new();
    let pg = PgCluster::start(
        major,
        &tls_server(
            &certs,
            vec![
                "host replication scram_user 127.0.0.1/32 scram-sha-256".into(),
                "host replication md5_user 127.0.0.1/32 md5".into(),
            ],
        ),
    );
    pg.execute(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram secret';
         SET password_encryption = 'md5';
         CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5 secret';",
    )
    .await;
    let port = pg.port;
    let scram = format!("host=127.0.0.1 port={port} user=scram_user password='scram secret'");
    for cb in ["require", "prefer", "disable"] {
        let mut c = connect(&format!("{scram} sslmode=require channel_binding={cb}"))
            .await
            .unwrap_or_else(|e| panic!("channel_binding={cb}: {e}"));
        assert!(c.is_tls());
        assert!(c.identify_system().await.is_ok());
    }
    let err = connect(&format!("{scram} sslmode=disable channel_binding=require"))
        .await
        .err()
        .expect("no binding without TLS");
    assert!(err.to_string().contains("channel binding"), "{err}");
    assert!(
        connect(&format!("{scram} sslmode=disable channel_binding=prefer"))
            .await
            .is_ok()
    );
    let err = connect(&format!(
        "host=127.0.0.1 port={port} user=postgres sslmode=require channel_binding=require"
    ))
    .await
    .err()
    .expect("trust does not bind the channel");
    assert!(
        err.to_string()
            .contains("server authenticated client without channel binding"),
        "{err}"
    );
    let err = connect(&format!(
        "host=127.0.0.1 port={port} user=md5_user password='md5 secret' sslmode=require channel_binding=require"
    ))
    .await
    .err()
    .expect("md5 does not bind the channel");
    assert!(
        err.to_string().contains("channel binding required"),
        "{err}"
    );
    assert!(!err.to_string().contains("md5 secret"), "{err}");

    // require_auth: the server may only use the listed methods.
    assert!(
        connect(&format!(
            "{scram} sslmode=disable require_auth=scram-sha-256"
        ))
        .await
        .is_ok()
    );
    let md5 =
        format!("host=127.0.0.1 port={port} user=md5_user password='md5 secret' sslmode=disable");
    let err = connect(&format!("{md5} require_auth=scram-sha-256"))
        .await
        .err()
        .expect("md5 is not allowed");
    assert!(
        err.to_string()
            .contains("server requested a hashed password"),
        "{err}"
    );
    assert!(
        connect(&format!("{md5} require_auth=!password"))
            .await
            .is_ok()
    );
    let trust = format!("host=127.0.0.1 port={port} user=postgres sslmode=disable");
    let err = connect(&format!("{trust} require_auth=scram-sha-256"))
        .await
        .err()
        .expect("trust completes no authentication");
    assert!(
        err.to_string().contains("did not complete authentication"),
        "{err}"
    );
    assert!(connect(&format!("{trust} require_auth=none")).await.is_ok());
    assert!(connect(&format!("{trust} require_auth=!md5")).await.is_ok());
}
pg_test!(channel_binding);

/// The password file supplies the password (matched on the host name, not
/// hostaddr, and on the database `replication`); one readable by others is
/// ignored, as libpq does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passfile_supplies_password() {
    use std::os::unix::fs::PermissionsExt;
    let pg = PgCluster::start(
        15,
        &PgOptions {
            hba_first: vec!["host replication scram_user 127.0.0.1/32 scram-sha-256".into()],
            ..Default::default()
        },
    );
    pg.execute(
        "SET password_encryption = 'scram-sha-256';
         CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'from:file';",
    )
    .await;
    let port = pg.port;
    let dir = tempfile::tempdir().unwrap();
    let passfile = dir.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "# comment\n\
             127.0.0.1:{port}:*:scram_user:by-address\n\
             db.invalid:{port}:postgres:scram_user:wrong-database\n\
             db.invalid:{port}:replication:scram_user:from\\:file\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o600)).unwrap();
    let connstr = format!(
        "host=db.invalid hostaddr=127.0.0.1 port={port} user=scram_user dbname=postgres sslmode=disable passfile={}",
        passfile.display()
    );
    let mut c = connect(&connstr).await.expect("password from the file");
    assert!(c.identify_system().await.is_ok());
    // PGPASSFILE, and ~/.pgpass by default.
    let path = passfile.display().to_string();
    let env = |k: &str| (k == "PGPASSFILE").then(|| path.clone());
    let no_file = connstr.split(" passfile=").next().unwrap().to_string();
    assert!(connect_env(&no_file, &env).await.is_ok());
    std::fs::copy(&passfile, dir.path().join(".pgpass")).unwrap();
    let home = dir.path().display().to_string();
    let env = |k: &str| (k == "HOME").then(|| home.clone());
    assert!(connect_env(&no_file, &env).await.is_ok());
    // A given password wins over the file.
    let err = connect(&format!("{connstr} password=given"))
        .await
        .err()
        .expect("the given password is used");
    assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
    // A wrong password from the file says where it came from, as libpq.
    let wrong = dir.path().join("other-pgpass");
    std::fs::write(&wrong, "*:*:*:*:Xy9-not-it\n").unwrap();
    std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = connect(&format!("{no_file} passfile={}", wrong.display()))
        .await
        .err()
        .expect("wrong password in the file");
    assert_eq!(err.sqlstate(), Some("28P01"), "{err}");
    assert!(
        err.to_string().contains("password retrieved from file"),
        "{err}"
    );
    assert!(!err.to_string().contains("Xy9-not-it"), "{err}");
    // Readable by others: ignored.
    std::fs::set_permissions(&passfile, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = connect(&connstr)
        .await
        .err()
        .expect("a world-readable password file is ignored");
    assert!(err.to_string().contains("none was given"), "{err}");
}

/// sslmode=allow: plain first, then TLS when the server refuses plain
/// connections, as libpq does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_allow_retries_with_tls() {
    let certs = Certs::new();
    let pg = PgCluster::start(
        15,
        &tls_server(
            &certs,
            vec!["hostnossl replication all 127.0.0.1/32 reject".into()],
        ),
    );
    let base = format!("host=127.0.0.1 port={} user=postgres", pg.port);
    let mut c = connect(&format!("{base} sslmode=allow"))
        .await
        .expect("allow retries with TLS");
    assert!(c.is_tls());
    assert!(c.identify_system().await.is_ok());
    let err = connect(&format!("{base} sslmode=disable"))
        .await
        .err()
        .expect("plain connections are rejected");
    assert_eq!(err.sqlstate(), Some("28000"), "{err}");
    // Without the rejection, allow stays plain.
    let plain = PgCluster::start(15, &tls_server(&certs, vec![]));
    let c = connect(&format!(
        "host=127.0.0.1 port={} user=postgres sslmode=allow",
        plain.port
    ))
    .await
    .unwrap();
    assert!(!c.is_tls());
}

/// hostaddr says where to connect while host names the server for TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostaddr_with_tls_name() {
    let certs = Certs::new();
    let pg = PgCluster::start(15, &tls_server(&certs, vec![]));
    let port = pg.port;
    let ca = certs.path("ca.crt");
    // "localhost" is checked against the certificate; 127.0.0.1 is dialled.
    let mut c = connect(&format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user=postgres sslmode=verify-full sslrootcert={ca}"
    ))
    .await
    .expect("host names the TLS server");
    assert!(c.is_tls());
    assert!(c.identify_system().await.is_ok());
    assert!(
        c.target().contains("localhost (127.0.0.1)"),
        "{}",
        c.target()
    );
    let err = connect(&format!(
        "host=db.invalid hostaddr=127.0.0.1 port={port} user=postgres sslmode=verify-full sslrootcert={ca}"
    ))
    .await
    .err()
    .expect("the certificate does not name db.invalid");
    assert!(err.to_string().contains("TLS"), "{err}");
    // No name resolution happens for the host.
    assert!(
        connect(&format!(
            "host=db.invalid hostaddr=127.0.0.1 port={port} user=postgres sslmode=disable"
        ))
        .await
        .is_ok()
    );
}

/// target_session_attrs picks the host that fits among a primary and a
/// standby, in libpq's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_session_attrs_picks_the_host() {
    let mut primary = PgCluster::start(15, &PgOptions::default());
    let standby = PgCluster::standby_of(&mut primary);
    let (p, s) = (primary.port, standby.port);
    for (hosts, attrs, want) in [
        (format!("{p},{s}"), "standby", s),
        (format!("{p},{s}"), "prefer-standby", s),
        (format!("{p},{s}"), "read-only", s),
        (format!("{s},{p}"), "primary", p),
        (format!("{s},{p}"), "read-write", p),
        (format!("{s},{p}"), "any", s),
    ] {
        let c = connect(&format!(
            "host=127.0.0.1,127.0.0.1 port={hosts} user=postgres sslmode=disable target_session_attrs={attrs}"
        ))
        .await
        .unwrap_or_else(|e| panic!("{attrs}: {e}"));
        assert!(
            c.target().ends_with(&format!(":{want}")),
            "{attrs}: {}",
            c.target()
        );
    }
    // prefer-standby takes the primary when no standby is listed.
    let c = connect(&format!(
        "host=127.0.0.1 port={p} user=postgres sslmode=disable target_session_attrs=prefer-standby"
    ))
    .await
    .unwrap();
    assert!(c.target().ends_with(&format!(":{p}")));
}

/// target_session_attrs refuses a server that does not fit; requirepeer
/// checks the server's OS user over a Unix socket; the TCP options are
/// accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_and_socket_options() {
    let pg = PgCluster::start(15, &PgOptions::default());
    let port = pg.port;
    let tcp = format!("host=127.0.0.1 port={port} user=postgres sslmode=disable");
    for attrs in ["any", "read-write", "primary", "prefer-standby"] {
        assert!(
            connect(&format!("{tcp} target_session_attrs={attrs}"))
                .await
                .is_ok(),
            "{attrs}"
        );
    }
    for attrs in ["standby", "read-only"] {
        let err = connect(&format!("{tcp} target_session_attrs={attrs}"))
            .await
            .err()
            .expect("a primary is not a standby");
        assert!(err.to_string().contains("target_session_attrs"), "{err}");
    }
    let mut c = connect(&format!(
        "{tcp} keepalives=1 keepalives_idle=30 keepalives_interval=5 keepalives_count=3 tcp_user_timeout=10000 client_encoding=UTF8"
    ))
    .await
    .unwrap();
    assert_eq!(c.parameter("client_encoding"), Some("UTF8"));
    assert!(c.identify_system().await.is_ok());
    let sock = format!("host={} port={port} user=postgres", pg.socket_dir.display());
    // The servers run as postgres when the tests run as root, else as us.
    let server_user = if nix::unistd::Uid::effective().is_root() {
        "postgres".to_string()
    } else {
        nix::unistd::User::from_uid(nix::unistd::Uid::effective())
            .unwrap()
            .unwrap()
            .name
    };
    assert!(
        connect(&format!("{sock} requirepeer={server_user}"))
            .await
            .is_ok()
    );
    // As libpq, sslmode does not apply to Unix sockets.
    let c = connect(&format!("{sock} sslmode=verify-full"))
        .await
        .expect("sslmode is ignored for Unix sockets");
    assert!(!c.is_tls());
    let err = connect(&format!("{sock} requirepeer=nobody"))
        .await
        .err()
        .expect("the server runs as postgres");
    assert!(err.to_string().contains("requirepeer"), "{err}");
}

/// verify-full against a certificate that names the server only in its
/// Common Name (no subjectAltName), as PostgreSQL's documentation makes them:
/// libpq accepts the matching host name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_common_name() {
    let certs = Certs::new();
    // Version 3 without subjectAltName (rustls refuses version 1 certificates).
    std::fs::write(
        certs.dir.path().join("cn-ext.cnf"),
        "basicConstraints=CA:FALSE\n",
    )
    .unwrap();
    certs.openssl(&[
        "x509",
        "-req",
        "-extfile",
        "cn-ext.cnf",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cn-only.crt",
        "-days",
        "2",
    ]);
    let mut opts = tls_server(&certs, vec![]);
    opts.files[0] = ("server.crt".into(), certs.read("cn-only.crt"), 0o644);
    let pg = PgCluster::start(15, &opts);
    let ca = certs.path("ca.crt");
    let base = format!(
        "port={} user=postgres sslmode=verify-full sslrootcert={ca}",
        pg.port
    );
    let mut c = connect(&format!("host=localhost {base}"))
        .await
        .expect("the Common Name names localhost");
    assert!(c.identify_system().await.is_ok());
    let err = connect(&format!("host=127.0.0.1 {base}"))
        .await
        .err()
        .expect("the Common Name does not name 127.0.0.1");
    assert!(err.to_string().contains("TLS"), "{err}");
}
