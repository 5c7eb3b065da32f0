//! tls: TLS and mutual TLS on the gRPC port (rustls), with certificates re-read when their
//! files change. Patient images must not cross the hospital network in clear text.
//!
//! The accept loop owns the TCP listener: each connection is handshaken on its own task
//! (bounded by HANDSHAKE_TIMEOUT, so a silent peer cannot hold a slot) with the server
//! configuration current at that moment, and handed to tonic as an already-encrypted
//! stream. A reload swaps the configuration for new connections only: open connections
//! keep the session they negotiated. A reload that fails (a half-written key, a key that
//! does not match its certificate) is logged and counted, and the previous certificate
//! stays in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, server::WebPkiClientVerifier, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::metrics;

/// Longest a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server's identity (and, for mTLS, the CA its clients must chain to) is read from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client CA bundle: set = mutual TLS, clients without a certificate it signed are refused.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// A server configuration from the files as they are now (HTTP/2 only: gRPC).
    pub fn load(&self) -> Result<ServerConfig, String> {
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .map_err(|e| format!("--tls-cert {}: {e}", self.cert.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--tls-cert {}: {e}", self.cert.display()))?;
        if certs.is_empty() {
            return Err(format!("--tls-cert {}: no PEM certificate in the file", self.cert.display()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| format!("--tls-key {}: {e}", self.key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))? {
                    roots
                        .add(c.map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?)
                        .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| format!("--tls-client-ca {}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| format!("--tls-cert/--tls-key do not form an identity: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn modified(&self) -> Vec<Option<SystemTime>> {
        let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        std::iter::once(m(&self.cert)).chain(std::iter::once(m(&self.key))).chain(self.client_ca.as_deref().map(m)).collect()
    }
}

/// The configuration new connections get; swapped by the reloader.
#[derive(Clone)]
pub struct CurrentConfig {
    config: Arc<RwLock<Arc<ServerConfig>>>,
    /// Wakes the reloader before its next poll (SIGHUP, POST /reload).
    reread: Arc<tokio::sync::Notify>,
}

impl CurrentConfig {
    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Re-reads the files now, whether or not their modification times changed.
    pub fn reload_now(&self) {
        self.reread.notify_one();
    }
}

/// Loads the files (a clear error at start-up) and starts the reloader, which polls the
/// files' modification times every `every`.
pub fn start(files: TlsFiles, every: Duration) -> anyhow::Result<CurrentConfig> {
    let config = files.load().map_err(anyhow::Error::msg)?;
    let current = CurrentConfig { config: Arc::new(RwLock::new(Arc::new(config))), reread: Arc::new(tokio::sync::Notify::new()) };
    let handle = current.clone();
    tokio::spawn(async move {
        let mut seen = files.modified();
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            let asked = tokio::select! {
                _ = tick.tick() => false,
                _ = handle.reread.notified() => true,
            };
            let now = files.modified();
            if now == seen && !asked {
                continue;
            }
            seen = now;
            match files.load() {
                Ok(c) => {
                    *handle.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(c);
                    metrics::record_tls_reload("ok");
                    tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded; new connections use it");
                }
                Err(e) => {
                    metrics::record_tls_reload("failed");
                    tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate");
                }
            }
        }
    });
    Ok(current)
}

/// Accepts TCP connections and yields them once their TLS handshake is done. Handshakes run
/// concurrently, so one slow client does not hold up the others.
pub fn incoming(listener: TcpListener, config: CurrentConfig) -> tokio_stream_lite::Receiver<TlsStream<TcpStream>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // The listener closes with the server: once tonic drops the stream, stop accepting.
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // TCP_NODELAY: without it small answers wait for the peer's delayed ACK (~40 ms).
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (config.acceptor(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        metrics::record_tls_handshake_failure("refused");
                        tracing::info!(%peer, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        metrics::record_tls_handshake_failure("timeout");
                        tracing::info!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream_lite::Receiver(rx)
}

/// A minimal `Stream` over an mpsc receiver (what tonic's serve_with_incoming takes),
/// without pulling in tokio-stream for one adapter.
pub mod tokio_stream_lite {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub struct Receiver<T>(pub tokio::sync::mpsc::Receiver<Result<T, std::io::Error>>);

    impl<T> futures::Stream for Receiver<T> {
        type Item = Result<T, std::io::Error>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
}
