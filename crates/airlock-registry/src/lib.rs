//! `airlock serve`: an OCI distribution-spec 1.1 registry over [`storage::Storage`].
//!
//! One catch-all route parses `/v2/<name>/<resource>` itself, because repository names contain
//! slashes; each resource has its handler in [`routes`]. Manifests are stored as the bytes
//! received; blobs are verified before they become visible; a manifest listing a blob the
//! repository lacks is refused with `MANIFEST_BLOB_UNKNOWN`.

#![warn(missing_docs)]

pub mod auth;
pub mod backend;
pub mod config;
mod error;
pub mod events;
pub mod metrics;
pub mod mirror;
mod routes;
pub mod s3;
pub mod storage;
mod store;
pub mod tls;

use std::sync::Arc;

pub use error::RegistryError;
pub use storage::Storage;
pub use store::RootStore;

/// What the routes share.
pub struct Registry {
    /// The content.
    pub storage: Storage,
    /// Who may do what; `None` lets anyone do anything (the loopback default).
    pub auth: Option<auth::Auth>,
    /// Where pushes and deletes are announced.
    pub notifier: Option<events::Notifier>,
    /// Whether manifests, tags and blobs may be deleted (`UNSUPPORTED` otherwise).
    pub allow_delete: bool,
    /// A gated pull-through mirror answering every request (`mirrors:`): pulls only.
    pub mirror: Option<Arc<dyn mirror::Mirror>>,
    /// When set, only requests carrying exactly this `Authorization` are answered (others get
    /// a Basic challenge): the loopback listener a mirror stages and promotes through.
    pub private_credential: Option<String>,
}

/// The registry's HTTP service.
pub fn router(registry: Arc<Registry>) -> axum::Router {
    routes::router(registry)
}

/// Serves on `listener` until `shutdown` resolves, finishing requests in flight; over TLS when
/// `tls` is given.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router(listener, routes::router(registry), tls, shutdown).await
}

/// [`serve`] for a router the caller built around [`router`] (with the web page beside it).
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        Some(config) => tls::serve_tls(listener, router, config, shutdown).await,
        // The client's address feeds the failed-login back-off.
        None => axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).with_graceful_shutdown(shutdown).await,
    }
}
