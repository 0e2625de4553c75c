//! A repository of a serve root as an `airlock_store::Store`, so `airlock copy` reads and writes
//! `root://PATH//REPOSITORY` with or without a server running on it: the storage's writes are
//! atomic renames, safe beside a server.

use std::fmt;
use std::sync::Arc;

use airlock_oci::{Descriptor, Digest, Manifest};
use airlock_store::{verify::verify_stream, BlobStream, Error, ErrorKind, MountSource, PutManifestOutcome, Result, Store};
use async_trait::async_trait;
use futures::StreamExt;

use crate::storage::{Storage, StorageError};

/// One repository of a serve root.
pub struct RootStore {
    storage: Arc<Storage>,
    repository: String,
    location: String,
}

impl RootStore {
    /// The repository `repository` of the serve root `storage`.
    pub fn new(storage: Arc<Storage>, repository: &str) -> Self {
        let location = format!("root://{}//{repository}", storage.root().display());
        RootStore { storage, repository: repository.to_owned(), location }
    }

    fn error(&self, what: String, error: StorageError) -> Error {
        match error {
            StorageError::BlobUnknown | StorageError::ManifestUnknown | StorageError::NameUnknown => {
                Error::from(ErrorKind::NotFound { what, location: self.location.clone() })
            }
            StorageError::Io(source) => Error::from(ErrorKind::Io { action: format!("access {what} in"), path: self.location.clone(), source }),
            other => Error::from(ErrorKind::Protocol { location: self.location.clone(), reason: format!("{what}: {other}") }),
        }
    }
}

impl fmt::Display for RootStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.location)
    }
}

#[async_trait]
impl Store for RootStore {
    fn mount_source(&self) -> Option<MountSource> {
        Some(MountSource { registry: format!("root://{}", self.storage.root().display()), repository: self.repository.clone() })
    }

    async fn resolve(&self, reference: &str) -> Result<Descriptor> {
        Ok(self.get_manifest(reference).await?.descriptor())
    }

    async fn get_manifest(&self, reference: &str) -> Result<Manifest> {
        let (digest, media_type, bytes) =
            self.storage.get_manifest(&self.repository, reference).await.map_err(|e| self.error(format!("manifest `{reference}`"), e))?;
        Manifest::parse_verified(bytes, Some(&media_type), &digest)
            .map_err(|source| Error::from(ErrorKind::Manifest { reference: reference.to_owned(), location: self.location.clone(), source }))
    }

    async fn put_manifest(&self, manifest: &Manifest, tag: Option<&str>) -> Result<PutManifestOutcome> {
        self.storage
            .put_manifest(&self.repository, tag, manifest)
            .await
            .map_err(|e| self.error(format!("manifest {}", manifest.digest()), e))?;
        Ok(PutManifestOutcome::default())
    }

    async fn blob_exists(&self, digest: &Digest) -> Result<bool> {
        match self.storage.blob_size(&self.repository, digest).await {
            Ok(_) => Ok(true),
            Err(StorageError::BlobUnknown) => Ok(false),
            Err(e) => Err(self.error(format!("blob {digest}"), e)),
        }
    }

    async fn get_blob(&self, descriptor: &Descriptor, offset: u64) -> Result<BlobStream> {
        let what = format!("blob {}", descriptor.digest());
        let (stream, _) = self.storage.read_blob(&self.repository, descriptor.digest(), offset).await.map_err(|e| self.error(what, e))?;
        let location = self.location.clone();
        Ok(Box::pin(stream.map(move |chunk| {
            chunk.map_err(|source| Error::from(ErrorKind::Io { action: "read blob from".into(), path: location.clone(), source }))
        })))
    }

    async fn put_blob(&self, descriptor: &Descriptor, body: BlobStream) -> Result<()> {
        // Verified twice over: in flight here (so the error says what was wrong), and again by
        // the storage before the blob becomes visible.
        let body = verify_stream(descriptor, body, self.location.clone());
        // The storage sees a message; the caller gets the store error itself.
        let failure = Arc::new(std::sync::Mutex::new(None));
        let slot = failure.clone();
        let body = body.map(move |chunk| {
            chunk.map_err(|error| {
                let message = error.to_string();
                *slot.lock().expect("error slot") = Some(error);
                message
            })
        });
        match self.storage.put_blob(&self.repository, descriptor.digest(), body).await {
            Ok(_) => Ok(()),
            Err(e) => Err(failure.lock().expect("error slot").take().unwrap_or_else(|| self.error(format!("blob {}", descriptor.digest()), e))),
        }
    }

    async fn mount_blob(&self, descriptor: &Descriptor, from: &MountSource) -> Result<bool> {
        let mine = self.mount_source().expect("a root store can be mounted from");
        if from.registry != mine.registry || from.repository == self.repository {
            return Ok(false);
        }
        self.storage
            .mount_blob(&self.repository, &from.repository, descriptor.digest())
            .await
            .map_err(|e| self.error(format!("blob {}", descriptor.digest()), e))
    }

    async fn list_tags(&self) -> Result<Vec<String>> {
        self.storage.tags(&self.repository).await.map_err(|e| self.error("repository".into(), e))
    }

    async fn referrers(&self, subject: &Digest, artifact_type: Option<&str>) -> Result<Vec<Descriptor>> {
        let mut found = self.storage.referrers(&self.repository, subject).await.map_err(|e| self.error(format!("referrers of {subject}"), e))?;
        if let Some(wanted) = artifact_type {
            found.retain(|d| d.artifact_type().as_ref().is_some_and(|t| t.to_string() == wanted));
        }
        Ok(found)
    }

    async fn delete_manifest(&self, digest: &Digest) -> Result<()> {
        self.storage.delete_manifest(&self.repository, digest.as_ref()).await.map_err(|e| self.error(format!("manifest {digest}"), e))
    }
}
