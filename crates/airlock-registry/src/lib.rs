//! `airlock serve`: an OCI distribution-spec 1.1 registry over [`storage::Storage`].
//!
//! One catch-all route parses `/v2/<name>/<resource>` itself, because repository names contain
//! slashes; each resource has its handler in [`routes`]. Manifests are stored as the bytes
//! received; blobs are verified before they become visible; a manifest listing a blob the
//! repository lacks is refused with `MANIFEST_BLOB_UNKNOWN`.

#![warn(missing_docs)]

mod error;
mod routes;
pub mod storage;

use std::sync::Arc;

pub use error::RegistryError;
pub use storage::Storage;

/// The registry's HTTP service over `storage`.
pub fn router(storage: Arc<Storage>) -> axum::Router {
    routes::router(storage)
}

/// Serves `router` on `listener` until `shutdown` resolves, finishing requests in flight.
pub async fn serve(listener: tokio::net::TcpListener, storage: Arc<Storage>, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router(storage)).with_graceful_shutdown(shutdown).await
}
