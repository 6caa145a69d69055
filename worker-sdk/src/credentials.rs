//! How a client, a TaskTracker, the sidecar, the CLI and the operator prove who they are to a
//! tracker, and check that the tracker is the real one: TLS (the tracker's CA, and a client
//! certificate for mutual TLS) and a bearer token.
//!
//! ```no_run
//! # fn demo() -> Result<(), lts_worker_sdk::ClientError> {
//! use lts_worker_sdk::{Credentials, JobClient};
//! let creds = Credentials::default()
//!     .tls_ca_file("/etc/lts/ca.pem")?
//!     .token_file("/var/run/secrets/lts/token");
//! let client = JobClient::new(&["lts-tracker:7070".into()])?.with_credentials(creds);
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::ClientError;

/// A token file is read again at most this often (a rotated Secret is picked up).
pub const TOKEN_FILE_REFRESH: Duration = Duration::from_secs(1);
/// A client holding a connection checks its certificate files this often, and reconnects
/// when they changed.
pub const TLS_FILE_RECHECK: Duration = Duration::from_secs(10);

/// A channel to a tracker that sends the caller's token with every call.
pub type AuthChannel = InterceptedService<Channel, TokenInterceptor>;

#[derive(Debug)]
enum TokenSource {
    Fixed(String),
    File {
        path: PathBuf,
        cached: Mutex<Option<(String, Instant)>>,
    },
}

impl TokenSource {
    fn current(&self) -> Result<String, String> {
        match self {
            TokenSource::Fixed(t) => Ok(t.clone()),
            TokenSource::File { path, cached } => {
                let mut c = cached.lock().unwrap_or_else(|e| e.into_inner());
                if let Some((t, at)) = c.as_ref()
                    && at.elapsed() < TOKEN_FILE_REFRESH
                {
                    return Ok(t.clone());
                }
                match std::fs::read_to_string(path) {
                    Ok(t) if !t.trim().is_empty() => {
                        let t = t.trim().to_string();
                        *c = Some((t.clone(), Instant::now()));
                        Ok(t)
                    }
                    Ok(_) => Err(format!("the token file {} is empty", path.display())),
                    // A rotation in progress: the last token read is still the best guess.
                    Err(e) => match c.as_ref() {
                        Some((t, _)) => Ok(t.clone()),
                        None => Err(format!("reading the token file {}: {e}", path.display())),
                    },
                }
            }
        }
    }
}

/// Adds `authorization: Bearer <token>` to every call, when a token is configured.
#[derive(Debug, Clone, Default)]
pub struct TokenInterceptor(Option<Arc<TokenSource>>);

impl Interceptor for TokenInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(source) = &self.0 else {
            return Ok(request);
        };
        let token = source.current().map_err(tonic::Status::unauthenticated)?;
        let value: MetadataValue<_> = format!("Bearer {token}").parse().map_err(|_| {
            tonic::Status::unauthenticated("the token has characters a header cannot carry")
        })?;
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

/// PEM given in memory, or a file read again for every new connection (so a certificate
/// rotated on disk, e.g. a renewed Kubernetes Secret, is presented without a restart).
#[derive(Debug, Clone)]
enum Pem {
    Inline(Arc<Vec<u8>>),
    File {
        path: PathBuf,
        what: &'static str,
        /// The last content read: used while a rotation has the file briefly missing.
        last: Arc<Mutex<Vec<u8>>>,
    },
}

impl Pem {
    fn file(path: &Path, what: &'static str) -> Result<Pem, ClientError> {
        let content = read(path, what)?;
        Ok(Pem::File {
            path: path.to_path_buf(),
            what,
            last: Arc::new(Mutex::new(content)),
        })
    }

    fn load(&self) -> Vec<u8> {
        match self {
            Pem::Inline(b) => b.to_vec(),
            Pem::File { path, what, last } => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                match read(path, what) {
                    Ok(b) if !b.is_empty() => *last = b,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "keeping the last content read"),
                }
                last.clone()
            }
        }
    }
}

/// What a connection to a tracker presents and checks. The default is plaintext without a
/// token (a tracker started with `--insecure --no-auth`, such as `lts dev`).
///
/// Material given as files is read again for every new connection; [`Credentials::fingerprint`]
/// tells a long-lived client when to reconnect with what changed.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    ca: Option<Pem>,
    identity: Option<(Pem, Pem)>,
    tls: bool,
    domain: Option<String>,
    token: TokenInterceptor,
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Config(format!("reading the {what} {}: {e}", path.display())))
}

impl Credentials {
    /// Connect with TLS, checking the tracker's certificate against this CA bundle (PEM).
    pub fn tls_ca_file(mut self, path: impl AsRef<Path>) -> Result<Self, ClientError> {
        self.ca = Some(Pem::file(path.as_ref(), "CA bundle (--tls-ca)")?);
        self.tls = true;
        Ok(self)
    }

    /// Connect with TLS, checking the tracker's certificate against this CA (PEM).
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(Pem::Inline(Arc::new(pem.into())));
        self.tls = true;
        self
    }

    /// Present this client certificate and key (PEM files) for mutual TLS.
    pub fn tls_identity_files(
        mut self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, ClientError> {
        self.identity = Some((
            Pem::file(cert.as_ref(), "client certificate (--tls-cert)")?,
            Pem::file(key.as_ref(), "client key (--tls-key)")?,
        ));
        self.tls = true;
        Ok(self)
    }

    /// Present this client certificate and key (PEM) for mutual TLS.
    pub fn tls_identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((
            Pem::Inline(Arc::new(cert.into())),
            Pem::Inline(Arc::new(key.into())),
        ));
        self.tls = true;
        self
    }

    /// The name the tracker's certificate must carry, when it is not the host of the address
    /// (e.g. connecting by IP address).
    pub fn tls_domain(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    /// Send this bearer token with every call.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = TokenInterceptor(Some(Arc::new(TokenSource::Fixed(
            token.into().trim().to_string(),
        ))));
        self
    }

    /// Send the token in this file with every call; the file is read again when it changes
    /// (at most every [`TOKEN_FILE_REFRESH`]), so a rotated Secret needs no restart.
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token = TokenInterceptor(Some(Arc::new(TokenSource::File {
            path: path.into(),
            cached: Mutex::new(None),
        })));
        self
    }

    /// From the usual places: `--tls-ca`/`LTS_TLS_CA`, `--tls-cert`/`LTS_TLS_CERT` with
    /// `--tls-key`/`LTS_TLS_KEY`, `--token-file`/`LTS_TOKEN_FILE`, and `LTS_TOKEN`.
    pub fn from_options(o: &CredentialOptions) -> Result<Credentials, ClientError> {
        let mut c = Credentials::default();
        if let Some(ca) = &o.tls_ca {
            c = c.tls_ca_file(ca)?;
        }
        match (&o.tls_cert, &o.tls_key) {
            (Some(cert), Some(key)) => c = c.tls_identity_files(cert, key)?,
            (None, None) => {}
            _ => {
                return Err(ClientError::Config(
                    "--tls-cert and --tls-key go together (LTS_TLS_CERT, LTS_TLS_KEY)".into(),
                ));
            }
        }
        if let Some(d) = &o.tls_domain {
            c = c.tls_domain(d);
        }
        if let Some(f) = &o.token_file {
            c = c.token_file(f);
        } else if let Some(t) = o.token.as_deref().filter(|t| !t.trim().is_empty()) {
            c = c.token(t);
        }
        Ok(c)
    }

    /// From the environment, as the LTS operator sets it in a TaskTracker pod: `LTS_TLS_CA`,
    /// `LTS_TLS_CERT`, `LTS_TLS_KEY`, `LTS_TLS_DOMAIN`, `LTS_TOKEN_FILE`, `LTS_TOKEN` (the same
    /// variables the LTS programs' flags read). Nothing set: plaintext without a token.
    pub fn from_env() -> Result<Credentials, ClientError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        Credentials::from_options(&CredentialOptions {
            tls_ca: var("LTS_TLS_CA").map(PathBuf::from),
            tls_cert: var("LTS_TLS_CERT").map(PathBuf::from),
            tls_key: var("LTS_TLS_KEY").map(PathBuf::from),
            tls_domain: var("LTS_TLS_DOMAIN"),
            token_file: var("LTS_TOKEN_FILE").map(PathBuf::from),
            token: var("LTS_TOKEN"),
        })
    }

    /// Whether connections use TLS.
    pub fn uses_tls(&self) -> bool {
        self.tls
    }

    /// Whether a client certificate is presented.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// A digest of the TLS material as it is now (files read again); `None` when nothing
    /// comes from a file. A client holding a connection compares it now and then and
    /// reconnects when it changed.
    pub fn fingerprint(&self) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let files = [self.ca.as_ref()]
            .into_iter()
            .chain(self.identity.iter().flat_map(|(c, k)| [Some(c), Some(k)]))
            .flatten()
            .filter(|p| matches!(p, Pem::File { .. }))
            .collect::<Vec<_>>();
        if files.is_empty() {
            return None;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for p in files {
            p.load().hash(&mut h);
        }
        Some(h.finish())
    }

    /// The interceptor that adds the token.
    pub fn interceptor(&self) -> TokenInterceptor {
        self.token.clone()
    }

    /// `host:port` → `http://host:port` (`https://` with TLS); URLs pass unchanged.
    pub fn url(&self, addr: &str) -> String {
        let addr = addr.trim();
        if addr.contains("://") {
            addr.to_string()
        } else if self.tls {
            format!("https://{addr}")
        } else {
            format!("http://{addr}")
        }
    }

    /// Applies TLS to an endpoint.
    pub fn apply(&self, endpoint: Endpoint) -> Result<Endpoint, ClientError> {
        let https = endpoint.uri().scheme_str() == Some("https");
        if !self.tls && !https {
            return Ok(endpoint);
        }
        let mut tls = ClientTlsConfig::new();
        match &self.ca {
            Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(ca.load())),
            // An https:// address without --tls-ca: the system's roots (a public certificate).
            None => tls = tls.with_webpki_roots(),
        }
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert.load(), key.load()));
        }
        if let Some(d) = &self.domain {
            tls = tls.domain_name(d.clone());
        }
        endpoint
            .tls_config(tls)
            .map_err(|e| ClientError::Config(format!("TLS settings: {e}")))
    }
}

/// The credential flags every LTS program takes (`#[command(flatten)]`), each with its
/// `LTS_…` environment variable.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CredentialOptions {
    /// CA bundle (PEM) that signs the tracker's certificate: connect with TLS and check it.
    #[arg(long, env = "LTS_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    #[arg(long, env = "LTS_TLS_CERT", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Key of `--tls-cert` (PEM).
    #[arg(long, env = "LTS_TLS_KEY", global = true)]
    pub tls_key: Option<PathBuf>,
    /// The name the tracker's certificate must carry when it is not the address's host.
    #[arg(long, env = "LTS_TLS_DOMAIN", global = true)]
    pub tls_domain: Option<String>,
    /// File holding the bearer token (read again when it changes).
    #[arg(long, env = "LTS_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The bearer token itself (prefer `--token-file`: a flag shows in `ps`).
    #[arg(
        long = "token",
        env = "LTS_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
}

/// A readable hint for an error that says credentials are missing or wrong.
pub fn hint(status: &tonic::Status) -> Option<&'static str> {
    match status.code() {
        tonic::Code::Unauthenticated => Some(
            "pass a token (--token-file, LTS_TOKEN) or a client certificate (--tls-cert/--tls-key, LTS_TLS_CERT/LTS_TLS_KEY)",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_read_again_and_their_change_shows_in_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = (
            dir.path().join("tls.crt"),
            dir.path().join("tls.key"),
            dir.path().join("ca.crt"),
        );
        std::fs::write(&cert, "cert 1").unwrap();
        std::fs::write(&key, "key 1").unwrap();
        std::fs::write(&ca, "ca 1").unwrap();
        let creds = Credentials::default()
            .tls_ca_file(&ca)
            .unwrap()
            .tls_identity_files(&cert, &key)
            .unwrap();
        let first = creds.fingerprint().expect("file-backed");
        assert_eq!(creds.fingerprint(), Some(first), "stable while unchanged");
        std::fs::write(&cert, "cert 2").unwrap();
        let second = creds.fingerprint().unwrap();
        assert_ne!(first, second);
        // A file missing in the middle of a rotation: the last content read stands.
        std::fs::remove_file(&key).unwrap();
        assert_eq!(creds.fingerprint(), Some(second));
        assert!(
            Credentials::default()
                .tls_ca_pem("inline")
                .fingerprint()
                .is_none()
        );
        assert!(
            Credentials::default()
                .tls_ca_file(dir.path().join("none"))
                .is_err()
        );
    }
}
