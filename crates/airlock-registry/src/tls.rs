//! HTTPS for `airlock serve`: a rustls acceptor in front of the same router, one task per
//! connection, graceful shutdown by stopping the accept loop and letting connections finish.

use std::path::Path;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls;

/// A server configuration from PEM files: the certificate chain and its private key.
pub fn server_config(certificate: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .map_err(|e| format!("cannot read certificate `{}`: {e}", certificate.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("malformed certificate `{}`: {e}", certificate.display()))?;
    if chain.is_empty() {
        return Err(format!("`{}` holds no certificate", certificate.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("cannot read private key `{}`: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    config: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(
            router.clone().layer(axum::middleware::map_request(mark_tls)).layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        connections.spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(error) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
            };
            if let Err(error) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    // In-flight connections finish; new ones are no longer accepted.
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Marks a request as arrived over TLS (overwriting what the client said), so that the token
/// challenge names an `https` realm.
async fn mark_tls(mut request: axum::extract::Request) -> axum::extract::Request {
    request.headers_mut().insert("x-forwarded-proto", axum::http::HeaderValue::from_static("https"));
    request
}
