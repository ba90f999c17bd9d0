//! From a repository URL and settings to an object store.
//!
//! This is the only place that knows the stores' environment variables:
//! `AWS_*` for `s3://`, `GOOGLE_*` (and `SERVICE_ACCOUNT`) for `gs://`,
//! `AZURE_*` for `az://`, read the way object_store reads them. Settings
//! given explicitly (a repository settings file) win over the environment.
//! [`environment_options`] is also what `restore` writes into the settings
//! file that `restore_command` reads, so both see the same store.

use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;

use crate::format::SealOptions;
use crate::format::key::Keyring;

use super::{Error, Repository};

/// The environment variable prefixes each URL scheme reads.
fn prefixes(scheme: &str) -> &'static [&'static str] {
    match scheme {
        "s3" | "s3a" => &["AWS_"],
        "gs" => &["GOOGLE_", "SERVICE_ACCOUNT"],
        "az" | "azure" => &["AZURE_"],
        _ => &[],
    }
}

/// The store options the environment `vars` gives a repository at `url`,
/// with object_store's canonical key names (e.g. `AWS_ENDPOINT_URL` becomes
/// `aws_endpoint`); variables the store does not know are left out.
///
/// # Errors
/// [`Error::Url`] when the URL does not parse.
pub fn environment_options(
    url: &str,
    vars: &[(String, String)],
) -> Result<Vec<(String, String)>, Error> {
    let parsed = parse_url(url)?;
    let scheme = parsed.scheme();
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in vars {
        if !prefixes(scheme).iter().any(|p| name.starts_with(p)) {
            continue;
        }
        if let Some(key) = canonical_option(scheme, name) {
            // Several variables can name one option (AWS_ENDPOINT and
            // AWS_ENDPOINT_URL): the first one set wins, in sorted order.
            if !out.iter().any(|(k, _)| *k == key) {
                out.push((key, value.clone()));
            }
        }
    }
    if matches!(scheme, "az" | "azure") {
        azurite_endpoint(&mut out, vars);
    }
    out.sort();
    Ok(out)
}

/// Azurite's address is read by object_store's emulator mode from
/// `AZURITE_BLOB_STORAGE_URL` in the process environment, which a settings
/// file (`restore_command`) cannot carry: the emulator setting becomes the
/// explicit endpoint, account and key it stands for, so the environment and
/// a settings file written from it reach the same server.
fn azurite_endpoint(out: &mut Vec<(String, String)>, vars: &[(String, String)]) {
    /// The emulator's well-known development account and key.
    const DEV_ACCOUNT: &str = "devstoreaccount1";
    const DEV_KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
    let get = |k: &str| out.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let emulator =
        get("azure_storage_use_emulator").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let Some(base) = vars
        .iter()
        .find(|(k, _)| k == "AZURITE_BLOB_STORAGE_URL")
        .map(|(_, v)| v.trim_end_matches('/').to_string())
    else {
        return;
    };
    if !emulator || get("azure_storage_endpoint").is_some() {
        return;
    }
    let account = get("azure_storage_account_name").unwrap_or_else(|| DEV_ACCOUNT.into());
    let key = get("azure_storage_account_key").unwrap_or_else(|| DEV_KEY.into());
    out.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "azure_storage_use_emulator"
                | "azure_storage_account_name"
                | "azure_storage_account_key"
        )
    });
    out.push(("azure_storage_endpoint".into(), format!("{base}/{account}")));
    out.push(("azure_storage_account_name".into(), account));
    out.push(("azure_storage_account_key".into(), key));
}

/// The canonical name of the store option `name` (any case) for URL
/// `scheme`, if that store knows it: `AWS_ENDPOINT_URL` and `endpoint` are
/// both `aws_endpoint` for `s3://`.
fn canonical_option(scheme: &str, name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    match scheme {
        "s3" | "s3a" => lower
            .parse::<object_store::aws::AmazonS3ConfigKey>()
            .ok()
            .map(|k| k.as_ref().to_string()),
        "gs" if lower == "service_account" => Some("google_service_account".to_string()),
        "gs" => lower
            .parse::<object_store::gcp::GoogleConfigKey>()
            .ok()
            .map(|k| k.as_ref().to_string()),
        "az" | "azure" => lower
            .parse::<object_store::azure::AzureConfigKey>()
            .ok()
            .map(|k| k.as_ref().to_string()),
        _ => None,
    }
}

/// Whether some store (S3, GCS or Azure) knows the option `name`.
pub fn is_store_option(name: &str) -> bool {
    ["s3", "gs", "az"]
        .iter()
        .any(|scheme| canonical_option(scheme, name).is_some())
}

/// Store options from a lower layer (the configuration file) that the
/// environment `vars` does not set for a repository at `url`, with canonical
/// names: given as explicit options they then sit under the environment.
/// Names the store does not know are kept, for [`Repository::open_with`] to
/// refuse.
///
/// # Errors
/// [`Error::Url`] when the URL does not parse.
pub fn options_under_environment(
    url: &str,
    lower: &[(String, String)],
    vars: &[(String, String)],
) -> Result<Vec<(String, String)>, Error> {
    let environment = environment_options(url, vars)?;
    let scheme = url::Url::parse(url)
        .map(|u| u.scheme().to_string())
        .unwrap_or_default();
    Ok(lower
        .iter()
        .map(|(name, value)| {
            let key = canonical_option(&scheme, name).unwrap_or_else(|| name.clone());
            (key, value.clone())
        })
        .filter(|(key, _)| !environment.iter().any(|(have, _)| have == key))
        .collect())
}

/// Opens the repository at `url`: `file:///path`, `s3://bucket/prefix`,
/// `gs://bucket/prefix` or `az://container/prefix`. Store settings come from
/// `vars` (the environment) and then `options`, which win; plain HTTP is
/// allowed for a loopback S3 or Azure endpoint (GCS allows it for the base
/// URL a service-account file names).
///
/// # Errors
/// [`Error::Url`] for an unknown scheme, an unknown option, or a store
/// that cannot be built.
pub(super) fn open(
    url: &str,
    options: &[(String, String)],
    vars: &[(String, String)],
    keyring: Keyring,
    seal: SealOptions,
    mode: OpenMode,
) -> Result<Repository, Error> {
    let bad = |reason: String| Error::Url {
        url: url.to_string(),
        reason,
    };
    let parsed = parse_url(url)?;
    let mut settings = environment_options(url, vars)?;
    let credentials = credential_source(parsed.scheme(), &settings, options);
    if credentials.is_none() && !mode.instance_credentials {
        return Err(Error::NoCredentials {
            url: redact_url(&parsed),
            set: credential_hint(parsed.scheme()),
        });
    }
    let credentials = credentials.unwrap_or_else(|| {
        "the cloud's instance metadata service (chosen with --instance-credentials)".into()
    });
    for (k, v) in options {
        settings.retain(|(have, _)| have != k);
        settings.push((k.clone(), v.clone()));
    }
    let display = redact_url(&parsed);
    let store: Arc<dyn ObjectStore> = match parsed.scheme() {
        "file" => {
            let dir = parsed.to_file_path().map_err(|()| {
                bad("a file URL needs an absolute path, e.g. file:///var/lib/walvault".into())
            })?;
            if !dir.is_dir() {
                if !mode.create {
                    return Err(bad(format!(
                        "there is no repository here: {} is not a directory (a command that only \
                         reads never creates one; check --repo)",
                        dir.display()
                    )));
                }
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
            }
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| bad(e.to_string()))?
                .with_automatic_cleanup(true);
            return Ok(
                Repository::from_local_dir(Arc::new(fs), dir, display, keyring, seal)
                    .with_credential_source(credentials),
            );
        }
        "s3" | "s3a" => build_store::<object_store::aws::AmazonS3Builder>(url, &settings)?,
        "gs" => build_store::<object_store::gcp::GoogleCloudStorageBuilder>(url, &settings)?,
        "az" | "azure" => {
            build_store::<object_store::azure::MicrosoftAzureBuilder>(url, &settings)?
        }
        other => {
            return Err(bad(format!(
                "unsupported scheme {other:?}; use file://, s3://, gs:// or az://"
            )));
        }
    };
    Ok(
        Repository::from_store(store, parsed.path(), display, keyring, seal)
            .with_credential_source(credentials),
    )
}

/// The builders of the cloud stores, driven alike: each setting parsed as
/// the store's own configuration key, plain HTTP allowed only for a
/// loopback endpoint, object_store's retries kept short.
trait StoreBuilder: Sized {
    /// The store's configuration keys.
    type Key: std::str::FromStr;
    /// The store's name in messages.
    const KIND: &'static str;
    /// A builder for the bucket (container) and prefix of `url`.
    fn for_url(url: &str) -> Self;
    /// Sets one option.
    fn set(self, key: Self::Key, value: &str) -> Self;
    /// Whether `key` is the store's endpoint (never, for GCS).
    fn is_endpoint(key: &Self::Key) -> bool;
    /// Allows plain HTTP.
    fn allow_http(self) -> Self;
    /// Builds the store.
    fn build_store(self) -> object_store::Result<Arc<dyn ObjectStore>>;
}

impl StoreBuilder for object_store::aws::AmazonS3Builder {
    type Key = object_store::aws::AmazonS3ConfigKey;
    const KIND: &'static str = "S3";
    fn for_url(url: &str) -> Self {
        Self::new().with_url(url).with_retry(store_retry_config())
    }
    fn set(self, key: Self::Key, value: &str) -> Self {
        self.with_config(key, value)
    }
    fn is_endpoint(key: &Self::Key) -> bool {
        matches!(key, Self::Key::Endpoint)
    }
    fn allow_http(self) -> Self {
        self.with_allow_http(true)
    }
    fn build_store(self) -> object_store::Result<Arc<dyn ObjectStore>> {
        Ok(Arc::new(self.build()?))
    }
}

impl StoreBuilder for object_store::gcp::GoogleCloudStorageBuilder {
    type Key = object_store::gcp::GoogleConfigKey;
    const KIND: &'static str = "GCS";
    fn for_url(url: &str) -> Self {
        Self::new().with_url(url).with_retry(store_retry_config())
    }
    fn set(self, key: Self::Key, value: &str) -> Self {
        self.with_config(key, value)
    }
    fn is_endpoint(_: &Self::Key) -> bool {
        // The service account file names its own base URL.
        false
    }
    fn allow_http(self) -> Self {
        self
    }
    fn build_store(self) -> object_store::Result<Arc<dyn ObjectStore>> {
        Ok(Arc::new(self.build()?))
    }
}

impl StoreBuilder for object_store::azure::MicrosoftAzureBuilder {
    type Key = object_store::azure::AzureConfigKey;
    const KIND: &'static str = "Azure";
    fn for_url(url: &str) -> Self {
        Self::new().with_url(url).with_retry(store_retry_config())
    }
    fn set(self, key: Self::Key, value: &str) -> Self {
        self.with_config(key, value)
    }
    fn is_endpoint(key: &Self::Key) -> bool {
        matches!(key, Self::Key::Endpoint)
    }
    fn allow_http(self) -> Self {
        self.with_allow_http(true)
    }
    fn build_store(self) -> object_store::Result<Arc<dyn ObjectStore>> {
        Ok(Arc::new(self.build()?))
    }
}

/// The cloud store of `url` with `settings` (canonical option names).
fn build_store<B: StoreBuilder>(
    url: &str,
    settings: &[(String, String)],
) -> Result<Arc<dyn ObjectStore>, Error> {
    let bad = |reason: String| Error::Url {
        url: url.to_string(),
        reason,
    };
    let mut b = B::for_url(url);
    for (k, v) in settings {
        let key: B::Key = k
            .parse()
            .map_err(|_| bad(format!("unknown {} option {k:?}", B::KIND)))?;
        if B::is_endpoint(&key) && is_loopback_http(v) {
            b = b.allow_http();
        }
        b = b.set(key, v);
    }
    b.build_store().map_err(|e| bad(e.to_string()))
}

/// How a repository is opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenMode {
    /// Create a local directory that does not exist yet (commands that
    /// write a new repository; the others refuse a missing one).
    pub create: bool,
    /// Let a cloud store's client take credentials from the instance
    /// metadata service when none are configured (otherwise that is an
    /// error, and no request reaches the metadata address).
    pub instance_credentials: bool,
}

/// Parses a repository URL; a local path that is not an absolute `file:///`
/// URL is refused with the URL that was probably meant.
fn parse_url(url: &str) -> Result<url::Url, Error> {
    let bad = |reason: String| Error::Url {
        url: url.to_string(),
        reason,
    };
    let meant = |path: &str| {
        std::path::absolute(path).map_or_else(
            |_| "file:///ABSOLUTE/PATH".to_string(),
            |p| format!("file://{}", p.display()),
        )
    };
    match url::Url::parse(url) {
        Ok(parsed) if parsed.scheme() == "file" => {
            let rest = &url["file:".len()..];
            if rest.starts_with("///") || rest.starts_with("//localhost/") {
                Ok(parsed)
            } else {
                let path = rest.trim_start_matches('/');
                Err(bad(format!(
                    "a file URL holds an absolute path after file:// (did you mean {}?)",
                    meant(path)
                )))
            }
        }
        Ok(parsed) => Ok(parsed),
        Err(url::ParseError::RelativeUrlWithoutBase) => Err(bad(format!(
            "a repository is a URL: file:///path, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix (did you mean {}?)",
            meant(url)
        ))),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// What to set so that a store of `scheme` has credentials.
fn credential_hint(scheme: &str) -> &'static str {
    match scheme {
        "s3" | "s3a" => {
            "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or aws_access_key_id and \
             aws_secret_access_key in [repository.options]), or AWS_ROLE_ARN with \
             AWS_WEB_IDENTITY_TOKEN_FILE; or pass --instance-credentials to use the instance \
             metadata service"
        }
        "gs" => {
            "set GOOGLE_SERVICE_ACCOUNT (or GOOGLE_APPLICATION_CREDENTIALS, or \
             google_service_account in [repository.options]); or pass --instance-credentials to \
             use the instance metadata service"
        }
        _ => {
            "set AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_KEY or the client or federated \
             credentials (or the same in [repository.options]); or pass --instance-credentials to \
             use the managed identity endpoint"
        }
    }
}

/// Where a store's credentials come from, in words an operator can act on:
/// which option names them and whether the environment or a file (the
/// repository settings file, or the configuration file's
/// `[repository.options]`) gave it. `None`: none is configured, and the
/// S3, GCS and Azure clients would ask the cloud's metadata service.
fn credential_source(
    scheme: &str,
    env: &[(String, String)],
    file: &[(String, String)],
) -> Option<String> {
    let from = |names: &[&str]| {
        let hit = |list: &[(String, String)]| {
            list.iter()
                .find(|(k, _)| names.contains(&k.as_str()))
                .map(|(k, _)| k.clone())
        };
        hit(file)
            .map(|k| format!("{k} from the settings or configuration file"))
            .or_else(|| hit(env).map(|k| format!("{k} from the environment")))
    };
    match scheme {
        "s3" | "s3a" | "gs" | "az" | "azure" => {}
        _ => return Some("none needed (local directory)".into()),
    }
    match scheme {
        "s3" | "s3a" => from(&[
            "aws_access_key_id",
            "aws_web_identity_token_file",
            "aws_skip_signature",
            "aws_container_credentials_relative_uri",
        ]),
        "gs" => from(&[
            "google_service_account",
            "google_service_account_key",
            "google_application_credentials",
            "google_skip_signature",
        ]),
        "az" | "azure" => from(&[
            "azure_storage_account_key",
            "azure_storage_sas_key",
            "azure_storage_token",
            "azure_client_secret",
            "azure_federated_token_file",
            "azure_storage_use_emulator",
            "azure_skip_signature",
        ]),
        _ => None,
    }
}

/// Retries inside object_store stay short, so an outage reaches walvault's
/// own retry loop quickly, where it is logged once and waited out.
pub fn store_retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(15),
        ..Default::default()
    }
}

fn is_loopback_http(endpoint: &str) -> bool {
    let Ok(u) = url::Url::parse(endpoint) else {
        return false;
    };
    u.scheme() == "http"
        && match u.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
}

fn redact_url(u: &url::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_becomes_canonical_options() {
        let env = vars(&[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_NOT_A_SETTING", "x"),
            ("GOOGLE_SERVICE_ACCOUNT", "/sa.json"),
            ("HOME", "/root"),
        ]);
        assert_eq!(
            environment_options("s3://b/p", &env).unwrap(),
            vars(&[
                ("aws_endpoint", "http://127.0.0.1:9000"),
                ("aws_region", "us-east-1")
            ])
        );
        assert_eq!(
            environment_options("gs://b/p", &env).unwrap(),
            vars(&[("google_service_account", "/sa.json")])
        );
        assert!(environment_options("file:///x", &env).unwrap().is_empty());
        assert!(is_loopback_http("http://127.0.0.1:9000"));
        assert!(!is_loopback_http("http://10.0.0.1:9000"));
    }

    #[test]
    fn file_options_sit_under_the_environment() {
        let file = vars(&[
            ("access_key_id", "from-file"),
            ("aws_region", "eu-west-1"),
            ("aws_no_such_option", "x"),
        ]);
        let env = vars(&[("AWS_ACCESS_KEY_ID", "from-env")]);
        assert_eq!(
            options_under_environment("s3://b/p", &file, &env).unwrap(),
            vars(&[("aws_region", "eu-west-1"), ("aws_no_such_option", "x")])
        );
        assert!(is_store_option("aws_secret_access_key"));
        assert!(is_store_option("google_service_account"));
        assert!(is_store_option("azure_storage_account_name"));
        assert!(!is_store_option("aws_secret_acess_key"));
    }
}
