//! TLS for the tracker's gRPC port: certificates read from files and reloaded when they change
//! on disk (a renewed Kubernetes Secret, cert-manager, a rotated file), client certificates
//! required, optional or not asked for, and the accept loop that hands tonic finished TLS
//! connections.
//!
//! The handshake runs off the accept loop, bounded in time ([`HANDSHAKE_TIMEOUT`]) and in
//! number ([`MAX_HANDSHAKES`]): a client that opens a connection and says nothing holds one slot
//! for a few seconds, not the listener.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use futures::Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most TLS handshakes in progress at once; further connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 1_024;
/// How often the certificate files are read again to notice a rotation.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// Whether the tracker asks TaskTrackers and clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    /// Every connection presents a certificate signed by `--tls-ca`.
    Required,
    /// A certificate, when presented, must be signed by `--tls-ca`; clients without one
    /// authenticate with a token.
    Optional,
    /// Clients are not asked for a certificate (tokens only).
    None,
}

/// Where the tracker's certificate, key and client CA are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA bundle (PEM) client certificates are checked against.
    pub ca: Option<PathBuf>,
    /// Whether client certificates are asked for.
    pub client_auth: ClientAuth,
}

/// The tracker's TLS configuration, replaced whole when its files change.
pub struct ServerTls {
    files: TlsFiles,
    current: RwLock<(u64, Arc<rustls::ServerConfig>)>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

/// A fingerprint of the files' contents, to notice a change.
fn fingerprint(parts: &[&[u8]]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// Certificates from PEM, with the file named in the error.
pub fn certificates(pem: &[u8], path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate file", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no certificate in the file (expected -----BEGIN CERTIFICATE-----)",
        path.display()
    );
    Ok(certs)
}

impl ServerTls {
    /// Reads the files and builds the configuration; an error names the file and the reason.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<ServerTls>> {
        if files.client_auth != ClientAuth::None && files.ca.is_none() {
            anyhow::bail!(
                "--tls-client-auth {:?} needs --tls-ca (the CA that signs client certificates)",
                files.client_auth
            );
        }
        let (print, config) = Self::build(&files)?;
        Ok(Arc::new(ServerTls {
            files,
            current: RwLock::new((print, config)),
        }))
    }

    fn build(files: &TlsFiles) -> anyhow::Result<(u64, Arc<rustls::ServerConfig>)> {
        let cert_pem = read(&files.cert, "certificate (--tls-cert)")?;
        let key_pem = read(&files.key, "private key (--tls-key)")?;
        let ca_pem = match &files.ca {
            Some(ca) => read(ca, "CA bundle (--tls-ca)")?,
            None => Vec::new(),
        };
        let print = fingerprint(&[&cert_pem, &key_pem, &ca_pem]);
        let chain = certificates(&cert_pem, &files.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).with_context(|| {
            format!(
                "{}: no private key in the file (PKCS#8, PKCS#1 or SEC1 PEM)",
                files.key.display()
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match (&files.ca, files.client_auth) {
            (Some(ca), auth) if auth != ClientAuth::None => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certificates(&ca_pem, ca)? {
                    roots.add(c).with_context(|| {
                        format!("{}: a CA certificate is invalid", ca.display())
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .context("building the client certificate verifier")?,
                )
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).with_context(|| {
            format!(
                "{} and {} do not make a usable certificate and key",
                files.cert.display(),
                files.key.display()
            )
        })?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok((print, Arc::new(config)))
    }

    /// The configuration new connections get now.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Reads the files again; when they changed and make a valid configuration, new
    /// connections get it. Returns whether the configuration changed. A broken file (half
    /// written, a key that does not match) keeps the previous configuration.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let (print, config) = Self::build(&self.files)?;
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        if cur.0 == print {
            return Ok(false);
        }
        *cur = (print, config);
        Ok(true)
    }

    /// Reloads every [`RELOAD_EVERY`] until `shutdown`.
    pub fn spawn_reloader(self: &Arc<Self>, shutdown: CancellationToken) {
        let tls = self.clone();
        crate::reload::spawn("TLS certificate", RELOAD_EVERY, shutdown, move || {
            tls.reload()
        });
    }
}

/// Sets what every accepted connection gets: no Nagle delay, TCP keepalive.
pub fn tune(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(30));
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

/// Accepts connections on `listener` and yields them once their TLS handshake finished.
/// Failed and slow handshakes are dropped (counted in `lts_tls_handshake_failures_total`).
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    shutdown: CancellationToken,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let slot = tokio::select! {
                s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => return },
                _ = shutdown.cancelled() => return,
            };
            let (stream, peer) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            tune(&stream);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
            let tx = tx.clone();
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Ok(Err(e)) => {
                        metrics::counter!("lts_tls_handshake_failures_total").increment(1);
                        tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics::counter!("lts_tls_handshake_failures_total").increment(1);
                        tracing::debug!(peer = %peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The names a client certificate carries, for matching principals.
pub use lts_core::pki::certificate_names;
