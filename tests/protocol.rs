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
