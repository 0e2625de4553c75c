//! The embedded registry's storage: content-addressed blobs shared by every repository, and per
//! repository the links that say what it holds.
//!
//! ```text
//! ROOT/blobs/sha256/<hex>                             content, written once, never changed
//! ROOT/repositories/<name>/_blobs/sha256-<hex>        this repository holds the blob
//! ROOT/repositories/<name>/_manifests/sha256-<hex>    this repository holds the manifest (file: its media type)
//! ROOT/repositories/<name>/_tags/<tag>                the tag (file: the digest)
//! ROOT/repositories/<name>/_referrers/<subject>/<referrer>   a referrer's descriptor (JSON)
//! ROOT/uploads/<id>/{repository,data}                 an upload session (survives a restart)
//! ```
//!
//! Underscore-prefixed names cannot be repository path components, so a repository `a` and a
//! repository `a/_tags` cannot collide. Every file is written to a temporary name, fsynced and
//! renamed: a crash leaves the old state or the new one. Blobs are verified before they are
//! renamed into place; a tag is written only after its manifest, whose blobs are checked first.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use airlock_oci::{Descriptor, Digest, DigestHasher, Manifest};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

/// Storage errors, already in the distribution spec's vocabulary.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The repository has no such blob.
    #[error("blob unknown to registry")]
    BlobUnknown,
    /// The repository has no such manifest or tag.
    #[error("manifest unknown")]
    ManifestUnknown,
    /// The repository does not exist.
    #[error("repository name not known to registry")]
    NameUnknown,
    /// No such upload session.
    #[error("blob upload unknown to registry")]
    UploadUnknown,
    /// The content does not match the digest given.
    #[error("provided digest did not match uploaded content")]
    DigestInvalid,
    /// A chunk does not start where the upload is.
    #[error("upload is at byte {offset}; the chunk starts elsewhere")]
    RangeInvalid {
        /// Bytes received so far.
        offset: u64,
    },
    /// A manifest lists a blob the repository lacks.
    #[error("manifest references a blob the repository does not have: {0}")]
    ManifestBlobUnknown(Digest),
    /// The manifest is not one.
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    /// The body ended early or failed.
    #[error("reading the request body: {0}")]
    Body(String),
    /// The disk failed.
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
}

type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A registry's storage on disk.
pub struct Storage {
    root: PathBuf,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{:x}{:x}", std::process::id(), nanos, COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn key(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm(), digest.digest())
}

/// Writes `bytes` to `path` atomically.
async fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("storage paths have a parent");
    tokio::fs::create_dir_all(dir).await?;
    let temp = dir.join(format!(".tmp-{}", unique()));
    let mut file = tokio::fs::File::create(&temp).await?;
    file.write_all(bytes).await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&temp, path).await
}

async fn exists(path: &Path) -> bool {
    tokio::fs::try_exists(path).await.unwrap_or(false)
}

fn not_found_as<T>(result: std::io::Result<T>, error: StorageError) -> Result<T> {
    result.map_err(|e| if e.kind() == ErrorKind::NotFound { error } else { StorageError::Io(e) })
}

impl Storage {
    /// Storage under `root`, created as needed.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Storage { root: root.into() }
    }

    /// The folder it lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join(digest.algorithm().as_ref()).join(digest.digest())
    }

    fn repo(&self, name: &str) -> PathBuf {
        self.root.join("repositories").join(name)
    }

    fn upload_dir(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    /// Whether the repository exists (has ever held anything).
    pub async fn repository_exists(&self, name: &str) -> bool {
        exists(&self.repo(name)).await
    }

    /// The size of a blob the repository holds.
    pub async fn blob_size(&self, name: &str, digest: &Digest) -> Result<u64> {
        if !exists(&self.repo(name).join("_blobs").join(key(digest))).await {
            return Err(StorageError::BlobUnknown);
        }
        let metadata = not_found_as(tokio::fs::metadata(self.blob_path(digest)).await, StorageError::BlobUnknown)?;
        Ok(metadata.len())
    }

    /// Opens a blob the repository holds.
    pub async fn open_blob(&self, name: &str, digest: &Digest) -> Result<(tokio::fs::File, u64)> {
        let size = self.blob_size(name, digest).await?;
        let file = not_found_as(tokio::fs::File::open(self.blob_path(digest)).await, StorageError::BlobUnknown)?;
        Ok((file, size))
    }

    async fn link_blob(&self, name: &str, digest: &Digest) -> Result<()> {
        let link = self.repo(name).join("_blobs").join(key(digest));
        if !exists(&link).await {
            write_atomic(&link, b"").await?;
        }
        Ok(())
    }

    /// Makes a blob of `from` available in `name` (cross-repository mount). `false` when `from`
    /// does not hold it.
    pub async fn mount_blob(&self, name: &str, from: &str, digest: &Digest) -> Result<bool> {
        match self.blob_size(from, digest).await {
            Ok(_) => {
                self.link_blob(name, digest).await?;
                Ok(true)
            }
            Err(StorageError::BlobUnknown) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes a blob from a repository (the content stays until garbage collection).
    pub async fn delete_blob(&self, name: &str, digest: &Digest) -> Result<()> {
        not_found_as(tokio::fs::remove_file(self.repo(name).join("_blobs").join(key(digest))).await, StorageError::BlobUnknown)
    }

    /// Starts an upload session for `name`; returns its id.
    pub async fn start_upload(&self, name: &str) -> Result<String> {
        let id = unique();
        let dir = self.upload_dir(&id);
        tokio::fs::create_dir_all(&dir).await?;
        write_atomic(&dir.join("repository"), name.as_bytes()).await?;
        tokio::fs::File::create(dir.join("data")).await?;
        Ok(id)
    }

    /// Bytes received by an upload of `name`.
    pub async fn upload_offset(&self, name: &str, id: &str) -> Result<u64> {
        let dir = self.upload_dir(id);
        let owner = not_found_as(tokio::fs::read(dir.join("repository")).await, StorageError::UploadUnknown)?;
        if owner != name.as_bytes() {
            return Err(StorageError::UploadUnknown);
        }
        Ok(not_found_as(tokio::fs::metadata(dir.join("data")).await, StorageError::UploadUnknown)?.len())
    }

    /// Appends a chunk; `start` is where the client says it begins (`Content-Range`), if it
    /// said. Returns the new offset.
    pub async fn append_upload<S, E>(&self, name: &str, id: &str, start: Option<u64>, body: S) -> Result<u64>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let offset = self.upload_offset(name, id).await?;
        if start.is_some_and(|start| start != offset) {
            return Err(StorageError::RangeInvalid { offset });
        }
        let path = self.upload_dir(id).join("data");
        let mut file = tokio::fs::OpenOptions::new().append(true).open(&path).await?;
        let mut written = 0u64;
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StorageError::Body(e.to_string()))?;
            file.write_all(&chunk).await?;
            written += chunk.len() as u64;
        }
        file.flush().await?;
        Ok(offset + written)
    }

    /// Finishes an upload: verifies the whole content against `digest`, moves it into place and
    /// links it to the repository. A mismatch deletes the session.
    pub async fn finish_upload(&self, name: &str, id: &str, digest: &Digest) -> Result<u64> {
        self.upload_offset(name, id).await?;
        let dir = self.upload_dir(id);
        let data = dir.join("data");
        let size = hash_file(&data, digest).await?;
        let Some(size) = size else {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(StorageError::DigestInvalid);
        };
        let target = self.blob_path(digest);
        if exists(&target).await {
            tokio::fs::remove_dir_all(&dir).await?;
        } else {
            tokio::fs::create_dir_all(target.parent().expect("blob paths have a parent")).await?;
            tokio::fs::File::open(&data).await?.sync_all().await?;
            tokio::fs::rename(&data, &target).await?;
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        self.link_blob(name, digest).await?;
        Ok(size)
    }

    /// Abandons an upload.
    pub async fn cancel_upload(&self, name: &str, id: &str) -> Result<()> {
        self.upload_offset(name, id).await?;
        Ok(tokio::fs::remove_dir_all(self.upload_dir(id)).await?)
    }

    /// Resolves a tag or digest to the manifest's digest and media type.
    pub async fn resolve(&self, name: &str, reference: &str) -> Result<(Digest, String)> {
        let repo = self.repo(name);
        if !exists(&repo).await {
            return Err(StorageError::NameUnknown);
        }
        let digest = match airlock_oci::parse_digest(reference) {
            Ok(digest) => digest,
            Err(_) => {
                let text = not_found_as(tokio::fs::read_to_string(repo.join("_tags").join(reference)).await, StorageError::ManifestUnknown)?;
                airlock_oci::parse_digest(text.trim()).map_err(|e| StorageError::ManifestInvalid(e.to_string()))?
            }
        };
        let media_type = not_found_as(tokio::fs::read_to_string(repo.join("_manifests").join(key(&digest))).await, StorageError::ManifestUnknown)?;
        Ok((digest, media_type))
    }

    /// A manifest's bytes and media type.
    pub async fn get_manifest(&self, name: &str, reference: &str) -> Result<(Digest, String, Vec<u8>)> {
        let (digest, media_type) = self.resolve(name, reference).await?;
        let bytes = not_found_as(tokio::fs::read(self.blob_path(&digest)).await, StorageError::ManifestUnknown)?;
        Ok((digest, media_type, bytes))
    }

    /// Stores a manifest exactly as received, under its digest and `tag`. Refused when it
    /// references a blob (or, for an index, a manifest) the repository lacks.
    pub async fn put_manifest(&self, name: &str, tag: Option<&str>, manifest: &Manifest) -> Result<()> {
        match manifest.kind() {
            airlock_oci::ManifestKind::Image { config, layers, .. } => {
                for blob in std::iter::once(config).chain(layers) {
                    if self.blob_size(name, blob.digest()).await.is_err() {
                        return Err(StorageError::ManifestBlobUnknown(blob.digest().clone()));
                    }
                }
            }
            airlock_oci::ManifestKind::Index { manifests, .. } => {
                for child in manifests {
                    let known = exists(&self.repo(name).join("_manifests").join(key(child.digest()))).await
                        || self.blob_size(name, child.digest()).await.is_ok();
                    if !known {
                        return Err(StorageError::ManifestBlobUnknown(child.digest().clone()));
                    }
                }
            }
        }
        let digest = manifest.digest();
        let path = self.blob_path(digest);
        if !exists(&path).await {
            write_atomic(&path, manifest.bytes()).await?;
        }
        let repo = self.repo(name);
        write_atomic(&repo.join("_manifests").join(key(digest)), manifest.media_type().as_bytes()).await?;
        if let Some(subject) = manifest.subject() {
            let descriptor = serde_json::to_vec(&manifest.descriptor()).expect("a descriptor serialises");
            write_atomic(&repo.join("_referrers").join(key(subject.digest())).join(key(digest)), &descriptor).await?;
        }
        if let Some(tag) = tag {
            write_atomic(&repo.join("_tags").join(tag), digest.to_string().as_bytes()).await?;
        }
        Ok(())
    }

    /// Every tag of a repository, sorted.
    pub async fn tags(&self, name: &str) -> Result<Vec<String>> {
        let repo = self.repo(name);
        if !exists(&repo).await {
            return Err(StorageError::NameUnknown);
        }
        let mut tags = Vec::new();
        let mut entries = match tokio::fs::read_dir(repo.join("_tags")).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(tags),
            Err(e) => return Err(e.into()),
        };
        while let Some(entry) = entries.next_entry().await? {
            let tag = entry.file_name().to_string_lossy().into_owned();
            if !tag.starts_with(".tmp-") {
                tags.push(tag);
            }
        }
        tags.sort();
        Ok(tags)
    }

    /// The descriptors of the manifests whose subject is `subject`.
    pub async fn referrers(&self, name: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        let dir = self.repo(name).join("_referrers").join(key(subject));
        let mut found = Vec::new();
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(e.into()),
        };
        while let Some(entry) = entries.next_entry().await? {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                continue;
            }
            // A referrer whose manifest was deleted is no longer listed.
            let Ok(bytes) = tokio::fs::read(entry.path()).await else { continue };
            let Ok(descriptor) = serde_json::from_slice::<Descriptor>(&bytes) else { continue };
            if exists(&self.repo(name).join("_manifests").join(key(descriptor.digest()))).await {
                found.push(descriptor);
            }
        }
        found.sort_by_key(|a| a.digest().to_string());
        Ok(found)
    }

    /// Deletes a manifest by digest (and every tag pointing at it), or a tag.
    pub async fn delete_manifest(&self, name: &str, reference: &str) -> Result<()> {
        let repo = self.repo(name);
        if airlock_oci::parse_digest(reference).is_err() {
            return not_found_as(tokio::fs::remove_file(repo.join("_tags").join(reference)).await, StorageError::ManifestUnknown);
        }
        let (digest, _) = self.resolve(name, reference).await?;
        for tag in self.tags(name).await? {
            let path = repo.join("_tags").join(&tag);
            if tokio::fs::read_to_string(&path).await.is_ok_and(|d| d.trim() == digest.to_string()) {
                let _ = tokio::fs::remove_file(&path).await;
            }
        }
        not_found_as(tokio::fs::remove_file(repo.join("_manifests").join(key(&digest))).await, StorageError::ManifestUnknown)
    }

    /// Stores a whole blob given in one request (monolithic upload): written to a temporary
    /// file beside the blobs while hashed, renamed into place only when the digest matches. No
    /// upload session is involved, so a request dropped half way leaves at most a `.tmp-` file,
    /// which nothing reads and `gc` removes.
    pub async fn put_blob<S, E>(&self, name: &str, digest: &Digest, body: S) -> Result<u64>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let Some(mut hasher) = DigestHasher::new(digest.algorithm()) else {
            return Err(StorageError::DigestInvalid);
        };
        let target = self.blob_path(digest);
        let dir = target.parent().expect("blob paths have a parent").to_owned();
        tokio::fs::create_dir_all(&dir).await?;
        let temp = dir.join(format!(".tmp-{}", unique()));
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            let mut size = 0u64;
            let mut body = std::pin::pin!(body);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| StorageError::Body(e.to_string()))?;
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
                size += chunk.len() as u64;
            }
            if &hasher.finish() != digest {
                return Err(StorageError::DigestInvalid);
            }
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&temp, &target).await?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        let size = result?;
        self.link_blob(name, digest).await?;
        Ok(size)
    }
}

/// Hashes a file with `digest`'s algorithm; its size when it matches, `None` when not.
async fn hash_file(path: &Path, digest: &Digest) -> Result<Option<u64>> {
    let Some(mut hasher) = DigestHasher::new(digest.algorithm()) else {
        return Err(StorageError::DigestInvalid);
    };
    let path = path.to_owned();
    let (hasher, size) = tokio::task::spawn_blocking(move || -> std::io::Result<(DigestHasher, u64)> {
        use std::io::Read;
        let mut file = std::fs::File::open(&path)?;
        let mut buffer = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buffer)?;
            if n == 0 {
                return Ok((hasher, size));
            }
            hasher.update(&buffer[..n]);
            size += n as u64;
        }
    })
    .await
    .expect("hashing does not panic")
    .map_err(|e| if e.kind() == ErrorKind::NotFound { StorageError::UploadUnknown } else { StorageError::Io(e) })?;
    Ok((&hasher.finish() == digest).then_some(size))
}

/// What a garbage collection found (and, unless a dry run, removed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs reachable from some repository's manifests, kept.
    pub kept: u64,
    /// Unreachable blobs removed (or that would be).
    pub removed: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Unreachable blobs kept because they are younger than the grace period (an upload whose
    /// manifest has not arrived yet).
    pub too_young: u64,
    /// Upload sessions idle for longer than the grace period, removed (or that would be).
    pub stale_uploads: u64,
}

impl Storage {
    /// Mark and sweep: every blob that no manifest of any repository reaches, and that is older
    /// than `grace`, is removed with its repository links. Manifests themselves are reachable
    /// while a repository links them. The grace period keeps blobs of pushes in progress
    /// (uploaded, manifest not yet written); upload sessions are removed only once idle for
    /// longer than it.
    pub async fn gc(&self, dry_run: bool, grace: std::time::Duration) -> Result<GcReport> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || gc_blocking(&root, dry_run, grace)).await.expect("gc does not panic")
    }
}

fn gc_blocking(root: &Path, dry_run: bool, grace: std::time::Duration) -> Result<GcReport> {
    use std::collections::HashSet;
    let mut repositories = Vec::new();
    find_repositories(&root.join("repositories"), &mut repositories)?;
    // Mark: every linked manifest, and what it lists.
    let mut marked: HashSet<String> = HashSet::new();
    let mut pending: Vec<String> = Vec::new();
    for repository in &repositories {
        for entry in read_dir_names(&repository.join("_manifests"))? {
            if let Some((algorithm, hex)) = entry.split_once('-') {
                pending.push(format!("{algorithm}:{hex}"));
            }
        }
    }
    while let Some(digest) = pending.pop() {
        if !marked.insert(digest.clone()) {
            continue;
        }
        let Ok(parsed) = airlock_oci::parse_digest(&digest) else { continue };
        let path = root.join("blobs").join(parsed.algorithm().as_ref()).join(parsed.digest());
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let Ok(manifest) = Manifest::parse_verified(bytes, None, &parsed) else { continue };
        match manifest.kind() {
            airlock_oci::ManifestKind::Image { config, layers, .. } => {
                pending.extend(std::iter::once(config).chain(layers).map(|d| d.digest().to_string()));
            }
            airlock_oci::ManifestKind::Index { manifests, .. } => pending.extend(manifests.iter().map(|d| d.digest().to_string())),
        }
    }
    // Sweep.
    let mut report = GcReport::default();
    let now = std::time::SystemTime::now();
    let age_of = |path: &Path| {
        std::fs::metadata(path).ok().and_then(|m| m.modified().ok()).and_then(|m| now.duration_since(m).ok()).unwrap_or_default()
    };
    for id in read_dir_names(&root.join("uploads"))? {
        let dir = root.join("uploads").join(&id);
        // Idle since the last byte arrived (the data file), or since it started.
        let activity = if dir.join("data").exists() { dir.join("data") } else { dir.clone() };
        if age_of(&activity) > grace {
            report.stale_uploads += 1;
            if !dry_run {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }
    for algorithm in read_dir_names(&root.join("blobs"))? {
        let dir = root.join("blobs").join(&algorithm);
        for hex in read_dir_names(&dir)? {
            if hex.starts_with(".tmp-") {
                // A write that died before its rename.
                if age_of(&dir.join(&hex)) > grace && !dry_run {
                    let _ = std::fs::remove_file(dir.join(&hex));
                }
                continue;
            }
            if marked.contains(&format!("{algorithm}:{hex}")) {
                report.kept += 1;
                continue;
            }
            let path = dir.join(&hex);
            let metadata = std::fs::metadata(&path)?;
            let age = metadata.modified().ok().and_then(|m| now.duration_since(m).ok()).unwrap_or_default();
            if age < grace {
                report.too_young += 1;
                continue;
            }
            report.removed += 1;
            report.bytes += metadata.len();
            if !dry_run {
                for repository in &repositories {
                    let _ = std::fs::remove_file(repository.join("_blobs").join(format!("{algorithm}-{hex}")));
                }
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(report)
}

/// Folders under `dir` that are repositories (they hold a `_`-prefixed folder).
fn find_repositories(dir: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut is_repository = false;
    for name in read_dir_names(dir)? {
        if name.starts_with('_') {
            is_repository = true;
        } else if dir.join(&name).is_dir() {
            find_repositories(&dir.join(&name), found)?;
        }
    }
    if is_repository {
        found.push(dir.to_owned());
    }
    Ok(())
}

fn read_dir_names(dir: &Path) -> std::io::Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned())).collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
