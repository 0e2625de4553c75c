//! The store abstraction: one trait for every place OCI content can live, and its
//! implementations side by side.
//!
//! - [`remote`]: a repository of a registry, over the distribution-spec 1.1 HTTP API.
//! - [`layout`]: an OCI image-layout folder (image-spec 1.1).
//!
//! The copy engine holds `Arc<dyn Store>` and never learns which one it has. A store is one
//! repository: mounting across repositories is offered through [`MountSource`], which a store
//! can honour only for its own registry.
//!
//! Every store checks what it writes: a blob put is hashed in flight and refused on a size or
//! digest mismatch ([`verify::verify_stream`]), and a manifest's bytes are written exactly as given.

#![warn(missing_docs)]

mod error;
pub mod layout;
pub mod remote;
pub mod verify;

use std::pin::Pin;

use airlock_oci::{Descriptor, Digest, Manifest};
use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

pub use error::{Error, ErrorKind, Result};

/// A blob body: chunks arrive as they are read, and memory stays bounded by the chunk size.
pub type BlobStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// An open file as a blob body, read in 256 KiB chunks (never whole in memory); `path` names it
/// in errors.
pub fn file_body(file: tokio::fs::File, path: String) -> BlobStream {
    use tokio::io::AsyncReadExt as _;
    const CHUNK: usize = 256 * 1024;
    Box::pin(futures::stream::unfold(Some(file), move |file| {
        let path = path.clone();
        async move {
            let mut file = file?;
            let mut buffer = vec![0u8; CHUNK];
            match file.read(&mut buffer).await {
                Ok(0) => None,
                Ok(n) => {
                    buffer.truncate(n);
                    Some((Ok(Bytes::from(buffer)), Some(file)))
                }
                Err(source) => Some((Err(Error::from(ErrorKind::Io { action: "read".into(), path, source })), None)),
            }
        }
    }))
}

/// Where a blob could be mounted from: a repository of a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSource {
    /// The registry host a mount is possible within.
    pub registry: String,
    /// The repository the blob is known to be in.
    pub repository: String,
}

/// What a manifest put did beyond storing the bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutManifestOutcome {
    /// The referrers tag (`sha256-<hex>`) updated because the store has no referrers API.
    pub referrers_tag_updated: Option<String>,
}

/// One repository's worth of OCI content, wherever it lives.
///
/// `reference` arguments are a tag or a digest string. Every method names the store in its
/// errors, so callers need not add where the failure happened.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Display {
    /// A place this store's blobs can be mounted from by another store of the same registry.
    fn mount_source(&self) -> Option<MountSource> {
        None
    }

    /// Resolves a tag or digest to the descriptor of its manifest, cheaply where the store can
    /// (a `HEAD` on a registry).
    async fn resolve(&self, reference: &str) -> Result<Descriptor>;

    /// Fetches a manifest's exact bytes. By digest, the bytes are verified against it.
    async fn get_manifest(&self, reference: &str) -> Result<Manifest>;

    /// Stores a manifest's exact bytes under its digest, and under `tag` when given.
    ///
    /// The caller must have written everything the manifest references first. A manifest with
    /// a subject is registered as a referrer of it (through the tag schema where the store has
    /// no referrers API).
    async fn put_manifest(&self, manifest: &Manifest, tag: Option<&str>) -> Result<PutManifestOutcome>;

    /// Whether the store holds a blob.
    async fn blob_exists(&self, digest: &Digest) -> Result<bool>;

    /// Streams a blob from byte `offset` on.
    async fn get_blob(&self, descriptor: &Descriptor, offset: u64) -> Result<BlobStream>;

    /// Writes a blob, hashing it in flight; a size or digest mismatch fails the put and leaves
    /// nothing behind.
    async fn put_blob(&self, descriptor: &Descriptor, body: BlobStream) -> Result<()>;

    /// Makes a blob of another repository available here without moving its bytes. Returns
    /// `false` when the store cannot (the caller then streams it).
    async fn mount_blob(&self, _descriptor: &Descriptor, _from: &MountSource) -> Result<bool> {
        Ok(false)
    }

    /// Every tag, in the store's order.
    async fn list_tags(&self) -> Result<Vec<String>>;

    /// Whether asking for tags one by one is expected to be cheap here: `false` when the store
    /// has never seen this repository's tags (a remote repository unknown to the tag cache), so
    /// a caller about to look at many tags learns more from one listing first.
    fn tags_known(&self) -> bool {
        true
    }

    /// The manifests whose subject is `subject`, optionally only those of one artifact type.
    async fn referrers(&self, subject: &Digest, artifact_type: Option<&str>) -> Result<Vec<Descriptor>>;

    /// Deletes a manifest by digest (and so every tag pointing at it).
    async fn delete_manifest(&self, digest: &Digest) -> Result<()>;
}

/// The tag under which the referrers of `subject` are listed where the OCI 1.1 referrers API is
/// missing (`sha256-<hex>`; distribution-spec 1.1, "referrers tag schema").
pub fn referrers_tag(subject: &Digest) -> String {
    format!("{}-{}", subject.algorithm(), subject.digest())
}
