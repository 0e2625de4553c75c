//! An OCI image-layout folder (image-spec 1.1): `oci-layout`, `index.json` and `blobs/<alg>/<hex>`.
//!
//! Tags are `org.opencontainers.image.ref.name` annotations on `index.json` entries, as skopeo,
//! umoci and oras write them. Writes are atomic: blobs go to a temporary file in the same folder,
//! are hashed on the way, fsynced and renamed into place; `index.json` is rewritten the same way
//! under an exclusive lock (`.airlock.lock`), so two processes may write one folder at once.
//! Manifests with a subject are listed, untagged, in `index.json`, which is where
//! [`LayoutStore::referrers`](crate::Store::referrers) finds them.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use airlock_oci::{media_type, Descriptor, Digest, Manifest};
use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::verify::verify_stream;
use crate::{BlobStream, Error, ErrorKind, PutManifestOutcome, Result, Store};

/// The annotation that carries a tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// An OCI image-layout folder as a [`Store`].
pub struct LayoutStore {
    root: PathBuf,
    created: tokio::sync::OnceCell<()>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexFile {
    schema_version: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

impl LayoutStore {
    /// A store over `root`; nothing is created until something is written.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LayoutStore { root: root.into(), created: tokio::sync::OnceCell::new() }
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join(digest.algorithm().as_ref()).join(digest.digest())
    }

    fn io(&self, action: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
        let action = action.to_owned();
        let path = path.display().to_string();
        move |source| Error::from(ErrorKind::Io { action, path, source })
    }

    async fn find(&self, reference: &str) -> Result<Descriptor> {
        if let Ok(digest) = airlock_oci::parse_digest(reference) {
            let index = self.read_index_async().await?;
            if let Some(entry) = index.manifests.into_iter().find(|d| d.digest() == &digest) {
                return Ok(entry);
            }
            // A child manifest (an index entry) is only in blobs/.
            let path = self.blob_path(&digest);
            let bytes = tokio::fs::read(&path).await.map_err(|e| self.not_found_or(e, &format!("manifest {digest}"), &path))?;
            let manifest = Manifest::parse_verified(bytes, None, &digest).map_err(|source| self.bad_manifest(reference, source))?;
            return Ok(manifest.descriptor());
        }
        let index = self.read_index_async().await?;
        index
            .manifests
            .into_iter()
            .rev()
            .find(|d| d.annotations().as_ref().and_then(|a| a.get(REF_NAME)).is_some_and(|name| name == reference))
            .ok_or_else(|| Error::from(ErrorKind::NotFound { what: format!("tag `{reference}`"), location: self.to_string() }))
    }

    async fn read_index_async(&self) -> Result<IndexFile> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || read_index(&root)).await.expect("index reader does not panic")
    }

    fn not_found_or(&self, error: std::io::Error, what: &str, path: &Path) -> Error {
        if error.kind() == std::io::ErrorKind::NotFound {
            Error::from(ErrorKind::NotFound { what: what.to_owned(), location: self.to_string() })
        } else {
            self.io("read", path)(error)
        }
    }

    fn bad_manifest(&self, reference: &str, source: airlock_oci::ManifestError) -> Error {
        Error::from(ErrorKind::Manifest { reference: reference.to_owned(), location: self.to_string(), source })
    }

    /// Writes `bytes` as a blob; used for manifests, which are small and already in memory.
    async fn write_small_blob(&self, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let path = self.blob_path(digest);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(());
        }
        let (mut file, temp) = self.create_temp(digest).await?;
        let result = async {
            file.write_all(bytes).await.map_err(self.io("write", &temp))?;
            self.commit(file, &temp, &path).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    async fn create_temp(&self, digest: &Digest) -> Result<(tokio::fs::File, PathBuf)> {
        self.ensure_layout().await?;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = self.root.join("blobs").join(digest.algorithm().as_ref());
        tokio::fs::create_dir_all(&dir).await.map_err(self.io("create folder", &dir))?;
        let unique = format!(
            ".tmp-{}-{}-{}",
            &digest.digest()[..16],
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let temp = dir.join(unique);
        let file = tokio::fs::File::create(&temp).await.map_err(self.io("create", &temp))?;
        Ok((file, temp))
    }

    async fn commit(&self, mut file: tokio::fs::File, temp: &Path, path: &Path) -> Result<()> {
        file.flush().await.map_err(self.io("write", temp))?;
        file.sync_all().await.map_err(self.io("sync", temp))?;
        drop(file);
        tokio::fs::rename(temp, path).await.map_err(self.io("rename into", path))?;
        Ok(())
    }

    /// Creates `oci-layout`, `index.json` and `blobs/` when missing.
    async fn ensure_layout(&self) -> Result<()> {
        self.created.get_or_try_init(|| self.create_layout()).await.map(|_| ())
    }

    async fn create_layout(&self) -> Result<()> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let io = |action: &str, path: &Path| {
                let action = action.to_owned();
                let path = path.display().to_string();
                move |source| Error::from(ErrorKind::Io { action, path, source })
            };
            std::fs::create_dir_all(root.join("blobs")).map_err(io("create folder", &root))?;
            let marker = root.join("oci-layout");
            if !marker.exists() {
                write_atomic(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io("write", &marker))?;
            }
            let index = root.join("index.json");
            if !index.exists() {
                let _lock = lock(&root)?;
                if !index.exists() {
                    let empty = format!(r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[]}}"#, media_type::OCI_INDEX);
                    write_atomic(&index, empty.as_bytes()).map_err(io("write", &index))?;
                }
            }
            Ok(())
        })
        .await
        .expect("layout creation does not panic")
    }

    /// Changes `index.json` under the folder's lock.
    async fn update_index(&self, change: impl FnOnce(&mut Vec<Descriptor>) + Send + 'static) -> Result<()> {
        self.ensure_layout().await?;
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let _lock = lock(&root)?;
            let mut index = read_index(&root)?;
            change(&mut index.manifests);
            let path = root.join("index.json");
            let bytes = serde_json::to_vec(&index).expect("an index serialises");
            write_atomic(&path, &bytes).map_err(|source| Error::from(ErrorKind::Io { action: "write".into(), path: path.display().to_string(), source }))
        })
        .await
        .expect("index update does not panic")
    }
}

fn read_index(root: &Path) -> Result<IndexFile> {
    let path = root.join("index.json");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(IndexFile { schema_version: 2, media_type: Some(media_type::OCI_INDEX.into()), manifests: vec![], rest: Default::default() })
        }
        Err(source) => return Err(Error::from(ErrorKind::Io { action: "read".into(), path: path.display().to_string(), source })),
    };
    serde_json::from_slice(&bytes).map_err(|e| Error::from(ErrorKind::Malformed {
        what: "image layout index".into(),
        path: path.display().to_string(),
        reason: e.to_string(),
    }))
}

fn lock(root: &Path) -> Result<std::fs::File> {
    let path = root.join(".airlock.lock");
    let io = |source| Error::from(ErrorKind::Io { action: "lock".into(), path: path.display().to_string(), source });
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
    file.lock().map_err(io)?;
    Ok(file)
}

/// Temp file in the same folder, fsync, rename, fsync the folder: readers see the old or the new
/// file, never a part of one.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let temp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temp, path)?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

impl fmt::Display for LayoutStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ocidir://{}", self.root.display())
    }
}

fn ref_name(descriptor: &Descriptor) -> Option<&String> {
    descriptor.annotations().as_ref().and_then(|a| a.get(REF_NAME))
}

#[async_trait]
impl Store for LayoutStore {
    async fn resolve(&self, reference: &str) -> Result<Descriptor> {
        self.find(reference).await
    }

    async fn get_manifest(&self, reference: &str) -> Result<Manifest> {
        let descriptor = self.find(reference).await?;
        let path = self.blob_path(descriptor.digest());
        let bytes = tokio::fs::read(&path)
            .await
            .map_err(|e| self.not_found_or(e, &format!("manifest blob {} (tagged `{reference}`)", descriptor.digest()), &path))?;
        let media_type = descriptor.media_type().to_string();
        Manifest::parse_verified(bytes, Some(&media_type), descriptor.digest()).map_err(|source| self.bad_manifest(reference, source))
    }

    async fn put_manifest(&self, manifest: &Manifest, tag: Option<&str>) -> Result<PutManifestOutcome> {
        // Only distribution-spec tags go into `index.json`: a name some registry listed is no
        // reason to write a ref name other tools would read as a path or a reference.
        if let Some(tag) = tag.filter(|t| airlock_oci::validate_tag(t).is_err()) {
            return Err(Error::from(ErrorKind::InvalidName { what: "tag".into(), name: tag.escape_debug().to_string(), location: self.to_string() }));
        }
        self.write_small_blob(manifest.digest(), manifest.bytes()).await?;
        let is_referrer = manifest.subject().is_some();
        if tag.is_none() && !is_referrer {
            return Ok(PutManifestOutcome::default());
        }
        let mut entry = manifest.descriptor();
        let tag = tag.map(str::to_owned);
        if let Some(tag) = &tag {
            let mut annotations = entry.annotations().clone().unwrap_or_default();
            annotations.insert(REF_NAME.to_owned(), tag.clone());
            entry.set_annotations(Some(annotations));
        } else {
            entry.set_annotations(None);
        }
        self.update_index(move |manifests| {
            match &tag {
                Some(tag) => manifests.retain(|d| ref_name(d) != Some(tag)),
                None => manifests.retain(|d| ref_name(d).is_some() || d.digest() != entry.digest()),
            }
            manifests.push(entry);
        })
        .await?;
        Ok(PutManifestOutcome::default())
    }

    async fn blob_exists(&self, digest: &Digest) -> Result<bool> {
        let path = self.blob_path(digest);
        tokio::fs::try_exists(&path).await.map_err(self.io("stat", &path))
    }

    async fn get_blob(&self, descriptor: &Descriptor, offset: u64) -> Result<BlobStream> {
        let path = self.blob_path(descriptor.digest());
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| self.not_found_or(e, &format!("blob {}", descriptor.digest()), &path))?;
        if offset > 0 {
            use tokio::io::AsyncSeekExt;
            file.seek(std::io::SeekFrom::Start(offset)).await.map_err(self.io("seek", &path))?;
        }
        Ok(crate::file_body(file, path.display().to_string()))
    }

    async fn put_blob(&self, descriptor: &Descriptor, body: BlobStream) -> Result<()> {
        let path = self.blob_path(descriptor.digest());
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(());
        }
        let mut body = verify_stream(descriptor, body, self.to_string());
        let (mut file, temp) = self.create_temp(descriptor.digest()).await?;
        let result = async {
            while let Some(chunk) = body.next().await {
                file.write_all(&chunk?).await.map_err(self.io("write", &temp))?;
            }
            self.commit(file, &temp, &path).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    async fn list_tags(&self) -> Result<Vec<String>> {
        let index = self.read_index_async().await?;
        let mut tags: Vec<String> = index.manifests.iter().filter_map(ref_name).cloned().collect();
        tags.dedup();
        Ok(tags)
    }

    async fn referrers(&self, subject: &Digest, artifact_type: Option<&str>) -> Result<Vec<Descriptor>> {
        let index = self.read_index_async().await?;
        let mut found = Vec::new();
        for entry in index.manifests {
            if entry.digest() == subject {
                continue;
            }
            let path = self.blob_path(entry.digest());
            let Ok(bytes) = tokio::fs::read(&path).await else { continue };
            let Ok(manifest) = Manifest::parse_verified(bytes, Some(entry.media_type().as_ref()), entry.digest()) else { continue };
            if manifest.subject().is_some_and(|s| s.digest() == subject) {
                let descriptor = manifest.descriptor();
                let wanted = artifact_type.is_none_or(|t| descriptor.artifact_type().as_ref().is_some_and(|a| a.to_string() == t));
                if wanted && !found.iter().any(|d: &Descriptor| d.digest() == descriptor.digest()) {
                    found.push(descriptor);
                }
            }
        }
        Ok(found)
    }

    async fn delete_manifest(&self, digest: &Digest) -> Result<()> {
        self.find(digest.as_ref()).await?;
        let digest = digest.clone();
        self.update_index(move |manifests| manifests.retain(|d| d.digest() != &digest)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_oci::digest_of;

    fn stream(bytes: &'static [u8]) -> BlobStream {
        Box::pin(futures::stream::iter(vec![Ok(bytes::Bytes::from_static(bytes))]))
    }

    #[tokio::test]
    async fn corrupt_blob_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayoutStore::new(dir.path());
        let descriptor = Descriptor::new("x".into(), 5, digest_of(b"hello", None));
        let err = store.put_blob(&descriptor, stream(b"hellO")).await.unwrap_err();
        assert!(matches!(err.kind(), crate::ErrorKind::DigestMismatch { .. }), "{err}");
        assert!(!store.blob_exists(descriptor.digest()).await.unwrap());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap().collect();
        assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
        store.put_blob(&descriptor, stream(b"hello")).await.unwrap();
        assert!(store.blob_exists(descriptor.digest()).await.unwrap());
    }

    #[tokio::test]
    async fn tags_move_and_manifest_bytes_stay_exact() {
        let dir = tempfile::tempdir().unwrap();
        let store = LayoutStore::new(dir.path());
        let config = b"{}";
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[]}}   "#,
            media_type::OCI_MANIFEST,
            digest_of(config, None)
        );
        let manifest = Manifest::parse(body.clone().into_bytes(), None).unwrap();
        store.put_manifest(&manifest, Some("v1")).await.unwrap();
        store.put_manifest(&manifest, Some("v1")).await.unwrap();
        store.put_manifest(&manifest, Some("v2")).await.unwrap();
        assert_eq!(store.list_tags().await.unwrap(), vec!["v1", "v2"]);
        let back = store.get_manifest("v1").await.unwrap();
        assert_eq!(back.bytes(), body.as_bytes());
        assert_eq!(store.resolve(manifest.digest().as_ref()).await.unwrap().digest(), manifest.digest());
        let missing = store.get_manifest("nope").await.unwrap_err().to_string();
        assert!(missing.contains("tag `nope` not found in ocidir://"), "{missing}");
        for bad in ["../../x", "a/b", "with\nnewline", ".hidden", &"t".repeat(200)] {
            let refused = store.put_manifest(&manifest, Some(bad)).await.unwrap_err();
            assert!(matches!(refused.kind(), crate::ErrorKind::InvalidName { .. }), "{refused}");
        }
        assert_eq!(store.list_tags().await.unwrap(), vec!["v1", "v2"]);
    }
}
