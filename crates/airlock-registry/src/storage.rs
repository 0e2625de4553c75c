//! The embedded registry's storage: content-addressed blobs shared by every repository, and per
//! repository the links that say what it holds. It is written against [`Backend`], so the same
//! logic runs over a folder ([`FsBackend`]) or, later, an object store.
//!
//! ```text
//! blobs/sha256/<hex>                             content, written once, never changed
//! repositories/<name>/_blobs/sha256-<hex>        this repository holds the blob
//! repositories/<name>/_manifests/sha256-<hex>    this repository holds the manifest (its media type)
//! repositories/<name>/_tags/<tag>                the tag (the digest)
//! repositories/<name>/_referrers/<subject>/<referrer>   a referrer's descriptor (JSON)
//! uploads/<id>/{repository,data}                 an upload session (survives a restart)
//! ```
//!
//! Underscore-prefixed names cannot be repository path components, so a repository `a` and a
//! repository `a/_tags` cannot collide. Every object is written atomically by the backend.
//! Blobs are verified before they become visible; a tag is written only after its manifest,
//! whose blobs are checked first.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_oci::{Descriptor, Digest, DigestHasher, Manifest};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::backend::{unique, Backend, ByteStream, FsBackend};

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
    /// Someone else is doing what was asked (another gc holds the lease).
    #[error("{0}")]
    Busy(String),
    /// A repository name that does not match the spec's grammar.
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    /// The body ended early or failed.
    #[error("reading the request body: {0}")]
    Body(String),
    /// The disk failed.
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
}

type Result<T, E = StorageError> = std::result::Result<T, E>;

/// A registry's storage. Clones share the backend (a mirror's private listener serves the
/// same content as the public one).
#[derive(Clone)]
pub struct Storage {
    backend: Arc<dyn Backend>,
    root: PathBuf,
}

/// The lease that lets one gc run at a time.
const GC_LEASE: &str = "gc.lease";

fn key(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm(), digest.digest())
}

fn blob_key(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm(), digest.digest())
}

/// A repository's key, refused unless the name matches the spec's grammar: the routes check
/// names already, and this check keeps `..` or an absolute path out of every other caller.
fn repo_key(name: &str) -> Result<String> {
    airlock_oci::validate_repository(name).map_err(StorageError::NameInvalid)?;
    Ok(format!("repositories/{name}"))
}

/// A tag's key; a string that is no valid tag cannot name one (`Err(ManifestUnknown)`).
fn tag_key(repo: &str, tag: &str) -> Result<String> {
    airlock_oci::validate_tag(tag).map_err(|_| StorageError::ManifestUnknown)?;
    Ok(format!("{repo}/_tags/{tag}"))
}

/// A new upload session id: 128 random bits in hex. Any replica accepts it (the session lives
/// in the storage), and no client can guess another's to write into it.
fn session_id() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut random| random.read_exact(&mut bytes))?;
    Ok(hex_string(&bytes))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `id` can be an upload id ([`unique`]'s hex, kept short).
pub fn valid_upload_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn upload_key(id: &str) -> Result<String> {
    if !valid_upload_id(id) {
        return Err(StorageError::UploadUnknown);
    }
    Ok(format!("uploads/{id}"))
}

fn not_found_as<T>(result: std::io::Result<T>, error: StorageError) -> Result<T> {
    result.map_err(|e| if e.kind() == ErrorKind::NotFound { error } else { StorageError::Io(e) })
}

/// A request body as the backend wants it; a body error becomes an `Other` I/O error.
fn into_byte_stream<S, E>(body: S) -> ByteStream
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
{
    Box::pin(body.map(|chunk| chunk.map_err(|e| std::io::Error::other(e.to_string()))))
}

/// Fails with `InvalidData` at the end of the body when it does not hash to `digest`.
fn verified(body: ByteStream, digest: &Digest) -> Result<ByteStream> {
    let hasher = DigestHasher::new(digest.algorithm()).ok_or(StorageError::DigestInvalid)?;
    let expected = digest.clone();
    Ok(Box::pin(futures::stream::unfold((body, Some(hasher)), move |(mut body, hasher)| {
        let expected = expected.clone();
        async move {
            let mut hasher = hasher?;
            match body.next().await {
                Some(Ok(chunk)) => {
                    hasher.update(&chunk);
                    Some((Ok(chunk), (body, Some(hasher))))
                }
                Some(Err(e)) => Some((Err(e), (body, None))),
                None if hasher.finish() == expected => None,
                None => Some((Err(std::io::Error::new(ErrorKind::InvalidData, "digest mismatch")), (body, None))),
            }
        }
    })))
}

fn body_error(error: std::io::Error) -> StorageError {
    match error.kind() {
        ErrorKind::InvalidData => StorageError::DigestInvalid,
        ErrorKind::Other => StorageError::Body(error.to_string()),
        _ => StorageError::Io(error),
    }
}

impl Storage {
    /// Storage in the folder `root`, created as needed.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Storage { backend: Arc::new(crate::metrics::Instrumented(Arc::new(FsBackend::new(root.clone())))), root }
    }

    /// The storage `location` names: `s3://BUCKET[/PREFIX]` (an object store, reached as
    /// `settings` and the `AWS_*` variables say) or a folder.
    pub fn open(location: &str, settings: &crate::s3::S3Settings) -> std::result::Result<Storage, String> {
        if location.starts_with("s3://") {
            let backend = crate::s3::S3Backend::open(location, settings)?;
            let name = backend.name().to_owned();
            return Ok(Storage::with_backend(Arc::new(backend), name));
        }
        Ok(Storage::new(location))
    }

    /// [`Storage::open`] for callers that cannot fail when opening (a store is opened, used
    /// later): a location that cannot be opened gives a storage whose every operation fails
    /// with the reason, naming the location.
    pub fn open_or_failing(location: &str) -> Storage {
        match Storage::open(location, &Default::default()) {
            Ok(storage) => storage,
            Err(reason) => Storage::with_backend(Arc::new(crate::backend::Unavailable(reason)), location),
        }
    }

    /// Storage over another backend; `name` says where, in messages.
    pub fn with_backend(backend: Arc<dyn Backend>, name: impl Into<PathBuf>) -> Self {
        Storage { backend: Arc::new(crate::metrics::Instrumented(backend)), root: name.into() }
    }

    /// Whether the storage answers: a listing of the top of the repositories.
    pub async fn check(&self) -> Result<()> {
        self.backend.list("repositories").await?;
        Ok(())
    }

    /// Where it lives (the folder, for the filesystem backend).
    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn exists(&self, key: &str) -> bool {
        self.backend.size(key).await.is_ok()
    }

    /// Whether the repository exists (has ever held anything).
    pub async fn repository_exists(&self, name: &str) -> bool {
        let Ok(repo) = repo_key(name) else { return false };
        self.backend.list(&repo).await.is_ok_and(|names| !names.is_empty())
    }

    /// The size of a blob the repository holds.
    pub async fn blob_size(&self, name: &str, digest: &Digest) -> Result<u64> {
        if !self.exists(&format!("{}/_blobs/{}", repo_key(name)?, key(digest))).await {
            return Err(StorageError::BlobUnknown);
        }
        not_found_as(self.backend.size(&blob_key(digest)).await, StorageError::BlobUnknown)
    }

    /// Where a client may fetch a blob directly (a presigned URL of the object store), when the
    /// backend is set to redirect. The caller has checked that the repository holds it.
    pub async fn direct_blob_url(&self, digest: &Digest) -> Result<Option<String>> {
        Ok(self.backend.direct_url(&blob_key(digest)).await?)
    }

    /// Streams a blob the repository holds from `offset`; also returns its whole size.
    pub async fn read_blob(&self, name: &str, digest: &Digest, offset: u64) -> Result<(ByteStream, u64)> {
        let size = self.blob_size(name, digest).await?;
        let stream = not_found_as(self.backend.read(&blob_key(digest), offset).await, StorageError::BlobUnknown)?;
        Ok((stream, size))
    }

    /// Links a blob into a repository. Written every time, never asked about first: one write
    /// instead of a question and a write on an object store, and the link's time says when the
    /// blob was last pushed or mounted, which gc reads to keep a push in progress.
    async fn link_blob(&self, name: &str, digest: &Digest) -> Result<()> {
        self.backend.put(&format!("{}/_blobs/{}", repo_key(name)?, key(digest)), b"").await?;
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
        not_found_as(self.backend.delete(&format!("{}/_blobs/{}", repo_key(name)?, key(digest))).await, StorageError::BlobUnknown)
    }

    /// Starts an upload session for `name`; returns its id.
    pub async fn start_upload(&self, name: &str) -> Result<String> {
        repo_key(name)?;
        let id = session_id()?;
        let session = upload_key(&id)?;
        self.backend.create(&format!("{session}/data"), name.as_bytes()).await?;
        Ok(id)
    }

    /// Bytes received by an upload of `name`.
    pub async fn upload_offset(&self, name: &str, id: &str) -> Result<u64> {
        let session = upload_key(id)?;
        let (owner, size) = not_found_as(self.backend.upload_status(&format!("{session}/data")).await, StorageError::UploadUnknown)?;
        if owner != name.as_bytes() {
            return Err(StorageError::UploadUnknown);
        }
        Ok(size)
    }

    /// Appends a chunk; `start` is where the client says it begins (`Content-Range`), if it
    /// said. Returns the new offset.
    pub async fn append_upload<S, E>(&self, name: &str, id: &str, start: Option<u64>, body: S) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let offset = self.upload_offset(name, id).await?;
        if start.is_some_and(|start| start != offset) {
            return Err(StorageError::RangeInvalid { offset });
        }
        self.backend.append(&format!("{}/data", upload_key(id)?), into_byte_stream(body)).await.map_err(body_error)
    }

    /// Finishes an upload: verifies the whole content against `digest`, moves it into place and
    /// links it to the repository. A mismatch deletes the session.
    pub async fn finish_upload(&self, name: &str, id: &str, digest: &Digest) -> Result<u64> {
        let size = self.upload_offset(name, id).await?;
        let session = upload_key(id)?;
        let data = format!("{session}/data");
        let mut hasher = DigestHasher::new(digest.algorithm()).ok_or(StorageError::DigestInvalid)?;
        self.backend.seal(&data).await?;
        let mut stream = not_found_as(self.backend.read(&data, 0).await, StorageError::UploadUnknown)?;
        while let Some(chunk) = stream.next().await {
            hasher.update(&chunk?);
        }
        if &hasher.finish() != digest {
            let _ = self.backend.discard(&data).await;
            return Err(StorageError::DigestInvalid);
        }
        self.backend.commit(&data, &blob_key(digest)).await?;
        let _ = self.backend.discard(&data).await;
        self.link_blob(name, digest).await?;
        Ok(size)
    }

    /// Drops an upload session the caller already checked (its bytes went elsewhere).
    pub async fn discard_upload(&self, id: &str) -> Result<()> {
        Ok(self.backend.discard(&format!("{}/data", upload_key(id)?)).await?)
    }

    /// Abandons an upload.
    pub async fn cancel_upload(&self, name: &str, id: &str) -> Result<()> {
        self.upload_offset(name, id).await?;
        self.discard_upload(id).await
    }

    /// Stores a whole blob given in one request (monolithic upload), verified before it becomes
    /// visible. No upload session is involved, so a request dropped half way leaves nothing a
    /// reader sees (at most a temporary that `gc` removes).
    pub async fn put_blob<S, E>(&self, name: &str, digest: &Digest, body: S) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let body = verified(into_byte_stream(body), digest)?;
        let size = self.backend.put_stream(&blob_key(digest), body).await.map_err(body_error)?;
        self.link_blob(name, digest).await?;
        Ok(size)
    }

    /// Resolves a tag or digest to the manifest's digest and media type.
    pub async fn resolve(&self, name: &str, reference: &str) -> Result<(Digest, String)> {
        let repo = repo_key(name)?;
        let digest = match airlock_oci::parse_digest(reference) {
            Ok(digest) => digest,
            Err(_) => {
                let text = match self.backend.get(&tag_key(&repo, reference)?).await {
                    Ok(text) => text,
                    Err(e) if e.kind() == ErrorKind::NotFound => {
                        return Err(if self.repository_exists(name).await { StorageError::ManifestUnknown } else { StorageError::NameUnknown });
                    }
                    Err(e) => return Err(e.into()),
                };
                airlock_oci::parse_digest(String::from_utf8_lossy(&text).trim()).map_err(|e| StorageError::ManifestInvalid(e.to_string()))?
            }
        };
        match self.backend.get(&format!("{repo}/_manifests/{}", key(&digest))).await {
            Ok(media_type) => Ok((digest, String::from_utf8_lossy(&media_type).into_owned())),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err(if self.repository_exists(name).await { StorageError::ManifestUnknown } else { StorageError::NameUnknown })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A manifest's bytes and media type.
    pub async fn get_manifest(&self, name: &str, reference: &str) -> Result<(Digest, String, Vec<u8>)> {
        let (digest, media_type) = self.resolve(name, reference).await?;
        let bytes = self.manifest_bytes(&digest).await?;
        Ok((digest, media_type, bytes))
    }

    /// The bytes of a manifest [`Storage::resolve`] found.
    pub async fn manifest_bytes(&self, digest: &Digest) -> Result<Vec<u8>> {
        not_found_as(self.backend.get(&blob_key(digest)).await, StorageError::ManifestUnknown)
    }

    /// Stores a manifest exactly as received, under its digest and `tag`. Refused when it
    /// references a blob (or, for an index, a manifest) the repository lacks.
    pub async fn put_manifest(&self, name: &str, tag: Option<&str>, manifest: &Manifest) -> Result<()> {
        let repo = repo_key(name)?;
        let tag = match tag {
            Some(tag) => Some(tag_key(&repo, tag).map_err(|_| StorageError::ManifestInvalid(format!("invalid tag `{tag}`")))?),
            None => None,
        };
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
                    let known = self.exists(&format!("{repo}/_manifests/{}", key(child.digest()))).await || self.blob_size(name, child.digest()).await.is_ok();
                    if !known {
                        return Err(StorageError::ManifestBlobUnknown(child.digest().clone()));
                    }
                }
            }
        }
        let digest = manifest.digest();
        if !self.exists(&blob_key(digest)).await {
            self.backend.put(&blob_key(digest), manifest.bytes()).await?;
        }
        self.backend.put(&format!("{repo}/_manifests/{}", key(digest)), manifest.media_type().as_bytes()).await?;
        if let Some(subject) = manifest.subject() {
            let descriptor = serde_json::to_vec(&manifest.descriptor()).expect("a descriptor serialises");
            self.backend.put(&format!("{repo}/_referrers/{}/{}", key(subject.digest()), key(digest)), &descriptor).await?;
        }
        if let Some(tag) = tag {
            self.backend.put(&tag, digest.to_string().as_bytes()).await?;
        }
        Ok(())
    }

    /// Every tag of a repository, sorted.
    pub async fn tags(&self, name: &str) -> Result<Vec<String>> {
        if !self.repository_exists(name).await {
            return Err(StorageError::NameUnknown);
        }
        // Only names that can be tags: a stray file in the folder is not one.
        let mut tags = self.backend.list(&format!("{}/_tags", repo_key(name)?)).await?;
        tags.retain(|tag| airlock_oci::validate_tag(tag).is_ok());
        Ok(tags)
    }

    /// The descriptors of the manifests whose subject is `subject`.
    pub async fn referrers(&self, name: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        let repo = repo_key(name)?;
        let prefix = format!("{repo}/_referrers/{}", key(subject));
        let mut found = Vec::new();
        for entry in self.backend.list(&prefix).await? {
            // A referrer whose manifest was deleted is no longer listed.
            let Ok(bytes) = self.backend.get(&format!("{prefix}/{entry}")).await else { continue };
            let Ok(descriptor) = serde_json::from_slice::<Descriptor>(&bytes) else { continue };
            if self.exists(&format!("{repo}/_manifests/{}", key(descriptor.digest()))).await {
                found.push(descriptor);
            }
        }
        found.sort_by_key(|d| d.digest().to_string());
        Ok(found)
    }

    /// Deletes a manifest by digest (and every tag pointing at it), or a tag.
    pub async fn delete_manifest(&self, name: &str, reference: &str) -> Result<()> {
        let repo = repo_key(name)?;
        if airlock_oci::parse_digest(reference).is_err() {
            return not_found_as(self.backend.delete(&tag_key(&repo, reference)?).await, StorageError::ManifestUnknown);
        }
        let (digest, _) = self.resolve(name, reference).await?;
        for tag in self.tags(name).await? {
            let tag_key = tag_key(&repo, &tag)?;
            if self.backend.get(&tag_key).await.is_ok_and(|d| String::from_utf8_lossy(&d).trim() == digest.to_string()) {
                let _ = self.backend.delete(&tag_key).await;
            }
        }
        not_found_as(self.backend.delete(&format!("{repo}/_manifests/{}", key(&digest))).await, StorageError::ManifestUnknown)
    }
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
    /// Temporaries nothing will finish, removed: half-written files of a folder, multipart
    /// uploads of an object store that no live session records (a killed replica's).
    pub abandoned_temporaries: u64,
}

impl Storage {
    /// Mark and sweep: every blob that no manifest of any repository reaches, and that is older
    /// than `grace`, is removed with its repository links. Manifests themselves are reachable
    /// while a repository links them. The grace period keeps blobs of pushes in progress
    /// (uploaded, manifest not yet written); upload sessions are removed only once idle for
    /// longer than it.
    pub async fn gc(&self, dry_run: bool, grace: Duration) -> Result<GcReport> {
        // One collection at a time across every process and replica sharing the storage.
        let lease = self.take_gc_lease(grace).await?;
        let result = self.gc_holding_the_lease(dry_run, grace).await;
        self.release_gc_lease(&lease).await;
        result
    }

    async fn gc_holding_the_lease(&self, dry_run: bool, grace: Duration) -> Result<GcReport> {
        use std::collections::HashSet;
        let mut repositories = Vec::new();
        self.find_repositories("repositories".to_owned(), &mut repositories).await?;
        // Mark: every linked manifest, read as the push accepted it (the media type recorded in
        // its link), and what it lists. A manifest that cannot be read that way stops the whole
        // collection: guessing its kind could sweep content a tag still reaches.
        let mut marked: HashSet<String> = HashSet::new();
        let mut read: HashSet<(String, Option<String>)> = HashSet::new();
        let pending = self.linked_manifests(&repositories, &marked).await?;
        self.mark(pending, &mut marked, &mut read).await?;
        // Manifests pushed while the mark ran (a push is not stopped for a collection, as
        // distribution's read-only mode would): marked too, with what they list.
        let late = self.linked_manifests(&repositories, &marked).await?;
        self.mark(late, &mut marked, &mut read).await?;
        // Sweep: idle upload sessions, then unreachable blobs.
        let mut report = GcReport::default();
        for id in self.backend.list("uploads").await? {
            let Ok(session) = upload_key(&id) else { continue };
            let data = format!("{session}/data");
            let activity = match self.backend.age(&data).await {
                Ok(age) => age,
                Err(_) => self.backend.age(&format!("{session}/repository")).await.unwrap_or(Duration::MAX),
            };
            if activity > grace {
                report.stale_uploads += 1;
                if !dry_run {
                    self.backend.delete_prefix(&session).await?;
                }
            }
        }
        if !dry_run {
            report.abandoned_temporaries = self.backend.purge_temporaries(grace).await?;
        }
        for algorithm in self.backend.list("blobs").await? {
            for hex in self.backend.list(&format!("blobs/{algorithm}")).await? {
                if marked.contains(&format!("{algorithm}:{hex}")) {
                    report.kept += 1;
                    continue;
                }
                let blob = format!("blobs/{algorithm}/{hex}");
                if self.backend.age(&blob).await? < grace {
                    report.too_young += 1;
                    continue;
                }
                // A blob mounted or pushed again lately is linked afresh even when its own
                // object is old (an object store does not refresh it): it may belong to a push
                // whose manifest has not arrived.
                let mut linked_lately = false;
                for repository in &repositories {
                    if self.backend.age(&format!("{repository}/_blobs/{algorithm}-{hex}")).await.is_ok_and(|age| age < grace) {
                        linked_lately = true;
                        break;
                    }
                }
                if linked_lately {
                    report.too_young += 1;
                    continue;
                }
                report.removed += 1;
                report.bytes += self.backend.size(&blob).await?;
                if !dry_run {
                    for repository in &repositories {
                        let _ = self.backend.delete(&format!("{repository}/_blobs/{algorithm}-{hex}")).await;
                    }
                    self.backend.delete(&blob).await?;
                }
            }
        }
        Ok(report)
    }

    /// Every repository's name, sorted.
    pub async fn repositories(&self) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        self.find_repositories("repositories".to_owned(), &mut keys).await?;
        let mut names: Vec<String> = keys
            .into_iter()
            .filter_map(|key| key.strip_prefix("repositories/").map(str::to_owned))
            .filter(|name| airlock_oci::validate_repository(name).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The manifests linked in `repositories` that are not `marked` yet, with the media type
    /// each push recorded.
    async fn linked_manifests(&self, repositories: &[String], marked: &std::collections::HashSet<String>) -> Result<Vec<(Digest, Option<String>)>> {
        let mut pending = Vec::new();
        for repository in repositories {
            for entry in self.backend.list(&format!("{repository}/_manifests")).await? {
                let Some(digest) = entry.split_once('-').and_then(|(algorithm, hex)| airlock_oci::parse_digest(&format!("{algorithm}:{hex}")).ok()) else {
                    continue;
                };
                if marked.contains(&digest.to_string()) {
                    continue;
                }
                let media_type = match self.backend.get(&format!("{repository}/_manifests/{entry}")).await {
                    Ok(media_type) => media_type,
                    // Deleted since the listing: nothing to keep for it.
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                };
                let media_type = String::from_utf8_lossy(&media_type).trim().to_owned();
                pending.push((digest, (!media_type.is_empty()).then_some(media_type)));
            }
        }
        Ok(pending)
    }

    /// Marks `pending` manifests and everything they reach.
    async fn mark(
        &self,
        mut pending: Vec<(Digest, Option<String>)>,
        marked: &mut std::collections::HashSet<String>,
        read: &mut std::collections::HashSet<(String, Option<String>)>,
    ) -> Result<()> {
        while let Some((digest, media_type)) = pending.pop() {
            marked.insert(digest.to_string());
            if !read.insert((digest.to_string(), media_type.clone())) {
                continue;
            }
            let bytes = match self.backend.get(&blob_key(&digest)).await {
                Ok(bytes) => bytes,
                // Nothing left to protect beneath a manifest whose bytes are gone.
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    tracing::warn!(%digest, "gc: a linked manifest's bytes are missing");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let manifest = Manifest::parse_verified(bytes, media_type.as_deref(), &digest).map_err(|e| {
                StorageError::ManifestInvalid(format!("gc stopped before sweeping anything: cannot tell what manifest {digest} references: {e}"))
            })?;
            match manifest.kind() {
                airlock_oci::ManifestKind::Image { config, layers, .. } => {
                    marked.extend(std::iter::once(config).chain(layers).map(|d| d.digest().to_string()));
                }
                airlock_oci::ManifestKind::Index { manifests, .. } => {
                    for child in manifests {
                        let child_type = child.media_type().to_string();
                        if airlock_oci::media_type::is_manifest(&child_type) {
                            pending.push((child.digest().clone(), Some(child_type)));
                        } else {
                            // An index may list a plain blob; it is kept, not read.
                            marked.insert(child.digest().to_string());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Takes the gc lease (`gc.lease`: holder and expiry), or says who holds it. A lease whose
    /// holder died expires and is taken over; of two takers, one wins.
    async fn take_gc_lease(&self, grace: Duration) -> Result<Vec<u8>> {
        #[derive(Serialize, Deserialize)]
        struct Lease {
            holder: String,
            expires: u64,
        }
        let now = airlock_oci::time::now();
        let ttl = grace.max(Duration::from_secs(3600)).as_secs();
        let holder = format!("{}@{}", unique(), std::env::var("HOSTNAME").unwrap_or_default());
        let ours = serde_json::to_vec(&Lease { holder, expires: now + ttl }).expect("a lease serialises");
        if self.backend.create_new(GC_LEASE, &ours).await? {
            return Ok(ours);
        }
        let current = self.backend.get(GC_LEASE).await?;
        let held: Option<Lease> = serde_json::from_slice(&current).ok();
        match held {
            Some(lease) if lease.expires > now => {
                Err(StorageError::Busy(format!("another gc ({}) holds the lease until {}", lease.holder, airlock_oci::time::rfc3339(lease.expires))))
            }
            _ => {
                if self.backend.replace_if_unchanged(GC_LEASE, &current, &ours).await? {
                    Ok(ours)
                } else {
                    Err(StorageError::Busy("another gc took the expired lease first".into()))
                }
            }
        }
    }

    async fn release_gc_lease(&self, ours: &[u8]) {
        if self.backend.get(GC_LEASE).await.is_ok_and(|current| current == ours) {
            let _ = self.backend.delete(GC_LEASE).await;
        }
    }

    /// Keys of the repositories under `prefix` (those holding a `_`-prefixed entry).
    fn find_repositories<'a>(&'a self, prefix: String, found: &'a mut Vec<String>) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut is_repository = false;
            for name in self.backend.list(&prefix).await? {
                if name.starts_with('_') {
                    is_repository = true;
                } else {
                    self.find_repositories(format!("{prefix}/{name}"), found).await?;
                }
            }
            if is_repository {
                found.push(prefix);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn upload_ids_are_random_and_valid() {
        let (a, b) = (super::session_id().unwrap(), super::session_id().unwrap());
        assert_ne!(a, b);
        assert!(a.len() == 32 && a.chars().all(|c| c.is_ascii_hexdigit()) && super::valid_upload_id(&a), "{a}");
    }
}
