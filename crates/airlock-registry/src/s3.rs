//! [`Backend`] on an S3-compatible object store (S3, Ceph RGW, R2, MinIO), through the
//! `object_store` crate, so that several `airlock serve` replicas can share one bucket.
//!
//! Objects are the storage's keys under an optional prefix. What S3 lacks is met like this:
//! - **Atomic streamed writes** (`put_stream`): a buffered multipart upload that is completed
//!   only when the body ended cleanly and aborted otherwise, so no half object is ever visible.
//! - **Appends** (upload sessions): S3 has no append and refuses parts under 5 MiB except the
//!   last. A session `uploads/ID/data` is kept in the bucket, not in a replica's memory:
//!   `data.state` (JSON: the multipart upload id, the parts so far, their bytes) and `data.tail`
//!   (the bytes that do not yet make a whole part). Each append completes as many parts of
//!   [`PART_SIZE`] as it can (all parts equal, as R2 requires) and rewrites the tail. So any
//!   replica can take the next chunk of a session another replica started.
//! - **Sealing** (`seal`, at the end of an upload): the tail becomes the last part, the multipart
//!   upload is completed into `data.assembled`, which the storage then reads to verify the digest
//!   before `commit` copies it under its content address (a single `CopyObject` up to 5 GiB,
//!   streamed through a new multipart upload above).
//! - **Deletes of missing objects** succeed on S3: `delete` asks first, to keep the `NotFound`
//!   contract.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::backend::{Backend, ByteStream};

mod open_uploads;
use open_uploads::UploadLister;

/// The size of every multipart part but the last: equal parts, at least S3's 5 MiB minimum.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// The largest object S3 copies in one request.
const SINGLE_COPY_LIMIT: u64 = 5 * 1024 * 1024 * 1024;

/// Where the bucket is and how to reach it (`storage: s3://BUCKET/PREFIX` in serve.yaml, with
/// `s3:` settings; the usual `AWS_*` variables fill in what is not given).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    /// `http(s)://host:port` of an S3-compatible service (default: AWS, or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// The region (default: `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// `bucket.host` addressing instead of `host/bucket` (default false: path style, which
    /// MinIO, Ceph and moto want).
    #[serde(default)]
    pub virtual_hosted: bool,
    /// Allow plain HTTP to the endpoint (loopback test services, private networks).
    #[serde(default)]
    pub allow_http: bool,
    /// Answer blob GETs with a redirect to a presigned URL of the bucket (valid 15 minutes), as
    /// distribution does: the replicas serve metadata, the object store the bytes.
    #[serde(default)]
    pub redirect: bool,
}

/// An S3 bucket (and key prefix) as a registry backend.
pub struct S3Backend {
    store: Arc<object_store::aws::AmazonS3>,
    prefix: String,
    name: String,
    redirect: bool,
    /// The raw `ListMultipartUploads` call gc needs.
    uploads: UploadLister,
    /// Above this size a commit streams the object through a new multipart upload instead of
    /// one `CopyObject` (S3's limit; lowered by tests to prove the path without 5 GiB).
    single_copy_limit: u64,
}

/// How long a presigned blob URL is good for.
const REDIRECT_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// An upload session's progress, kept in the bucket beside its data.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Session {
    /// The multipart upload of `data.assembled`, once a whole part arrived.
    multipart: Option<String>,
    /// The parts completed so far, in order (their ETags).
    parts: Vec<String>,
    /// Bytes in those parts.
    parted: u64,
    /// Whether the session was sealed (no more appends; `data.assembled` is complete).
    sealed: bool,
    /// Bytes in `data.tail`, so the session's size is one read.
    #[serde(default)]
    tail: u64,
    /// The repository the session belongs to, so that checking it and the size is one read.
    #[serde(default)]
    owner: String,
    /// Whether `data.tail` was ever written (by an append), so a discard deletes only objects
    /// that exist.
    #[serde(default)]
    appended: bool,
}

/// How long ago `epoch_seconds` was (zero for a time in the future).
fn elapsed_since(epoch_seconds: i64) -> Duration {
    Duration::from_secs((airlock_oci::time::now() as i64).saturating_sub(epoch_seconds).max(0) as u64)
}

fn other(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(error.to_string())
}

/// `NotFound` stays `NotFound`; everything else is an I/O error naming the cause, down the
/// whole chain (object_store's own message stops at "HTTP error").
fn map(error: object_store::Error) -> io::Error {
    if let object_store::Error::NotFound { .. } = error {
        return io::Error::new(io::ErrorKind::NotFound, error.to_string());
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        let said = inner.to_string();
        if !text.contains(&said) {
            text.push_str(&format!(": {said}"));
        }
        cause = inner.source();
    }
    io::Error::other(text)
}

impl S3Backend {
    /// The bucket of `url` (`s3://BUCKET[/PREFIX]`), with `settings` over the environment's
    /// `AWS_*` variables. Credentials come from the environment only, never from a file airlock
    /// writes or a log line.
    pub fn open(url: &str, settings: &S3Settings) -> Result<S3Backend, String> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| format!("`{url}` is not an s3://BUCKET[/PREFIX] URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("`{url}` names no bucket"));
        }
        let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let region = settings
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| "us-east-1".to_owned());
        builder = builder.with_region(region.clone());
        // Set here only when said, so that `AWS_ALLOW_HTTP` and `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`
        // still count.
        if settings.virtual_hosted {
            builder = builder.with_virtual_hosted_style_request(true);
        }
        if settings.allow_http {
            builder = builder.with_allow_http(true);
        }
        // object_store retries for up to three minutes by default: a replica whose bucket is
        // gone would hold every request that long. A few quick tries, then an error (a 5xx the
        // client retries, and `/healthz` failing).
        builder = builder.with_retry(object_store::RetryConfig { max_retries: 3, retry_timeout: Duration::from_secs(15), ..Default::default() });
        use object_store::aws::AmazonS3ConfigKey;
        let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
        let virtual_hosted = builder.get_config_value(&AmazonS3ConfigKey::VirtualHostedStyleRequest).is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let uploads = UploadLister::new(open_uploads::bucket_url(endpoint.as_deref(), virtual_hosted, bucket, &region), region)?;
        let store = builder.build().map_err(|e| format!("cannot use `{url}`: {e}"))?;
        let prefix = prefix.trim_matches('/').to_owned();
        let name = format!("s3://{bucket}/{}", rest.split_once('/').map_or("", |(_, p)| p));
        Ok(S3Backend { store: Arc::new(store), prefix, name, redirect: settings.redirect, uploads, single_copy_limit: SINGLE_COPY_LIMIT })
    }

    /// The same backend committing objects above `bytes` as it commits those above S3's 5 GiB
    /// copy limit (streamed through a multipart upload), so that path is tested with small
    /// blobs.
    pub fn with_single_copy_limit(mut self, bytes: u64) -> S3Backend {
        self.single_copy_limit = bytes;
        self
    }

    /// Where the backend is, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn path(&self, key: &str) -> io::Result<Path> {
        crate::backend::check_key(key)?;
        let full = if self.prefix.is_empty() { key.to_owned() } else { format!("{}/{key}", self.prefix) };
        Path::parse(&full).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))
    }

    async fn session(&self, key: &str) -> io::Result<Session> {
        let bytes = self.store.get(&self.path(&format!("{key}.state"))?).await.map_err(map)?.bytes().await.map_err(map)?;
        serde_json::from_slice(&bytes).map_err(other)
    }

    async fn save_session(&self, key: &str, session: &Session) -> io::Result<()> {
        let bytes = serde_json::to_vec(session).map_err(other)?;
        self.store.put(&self.path(&format!("{key}.state"))?, PutPayload::from(bytes)).await.map_err(map)?;
        Ok(())
    }

    async fn tail(&self, key: &str) -> io::Result<Vec<u8>> {
        match self.store.get(&self.path(&format!("{key}.tail"))?).await {
            Ok(found) => Ok(found.bytes().await.map_err(map)?.to_vec()),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(map(e)),
        }
    }

    /// Uploads one whole part of the session's multipart upload (creating it first).
    async fn put_part(&self, key: &str, session: &mut Session, part: Bytes) -> io::Result<()> {
        let assembled = self.path(&format!("{key}.assembled"))?;
        let id = match &session.multipart {
            Some(id) => id.clone(),
            None => {
                let id = self.store.create_multipart(&assembled).await.map_err(map)?;
                session.multipart = Some(id.clone());
                id
            }
        };
        let len = part.len() as u64;
        let PartId { content_id } = self.store.put_part(&assembled, &id, session.parts.len(), PutPayload::from(part)).await.map_err(map)?;
        session.parts.push(content_id);
        session.parted += len;
        Ok(())
    }

    /// Whether an open multipart upload of `key` (without the prefix) is one nothing will
    /// complete. A session's upload (`uploads/ID/data.assembled`) lives as long as its session,
    /// whose state every append rewrites: abandoned once the state is gone or older than `age`,
    /// whatever S3 says of the upload itself. Any other key is a streamed write: abandoned when
    /// S3's `Initiated` is older than `age` (an unreadable date keeps it).
    async fn abandoned(&self, key: &str, initiated: Option<i64>, age: Duration) -> io::Result<bool> {
        if let Some(session) = key.strip_suffix(".assembled").filter(|k| k.starts_with("uploads/")) {
            return match self.store.head(&self.path(&format!("{session}.state"))?).await {
                Ok(meta) => Ok(elapsed_since(meta.last_modified.timestamp()) >= age),
                Err(object_store::Error::NotFound { .. }) => Ok(true),
                Err(e) => Err(map(e)),
            };
        }
        Ok(initiated.is_some_and(|started| elapsed_since(started) >= age))
    }

    /// The session a key names (`uploads/ID/data`) when it is one in progress.
    async fn is_session(&self, key: &str) -> bool {
        key.starts_with("uploads/") && self.store.head(&match self.path(&format!("{key}.state")) {
            Ok(path) => path,
            Err(_) => return false,
        }).await.is_ok()
    }
}

#[async_trait]
impl Backend for S3Backend {
    async fn get(&self, key: &str) -> io::Result<Vec<u8>> {
        Ok(self.store.get(&self.path(key)?).await.map_err(map)?.bytes().await.map_err(map)?.to_vec())
    }

    async fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        self.store.put(&self.path(key)?, PutPayload::from(bytes.to_vec())).await.map_err(map)?;
        Ok(())
    }

    async fn put_stream(&self, key: &str, mut body: ByteStream) -> io::Result<u64> {
        let mut writer = object_store::buffered::BufWriter::with_capacity(self.store.clone(), self.path(key)?, PART_SIZE);
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    size += chunk.len() as u64;
                    if let Err(e) = writer.put(chunk).await {
                        let _ = writer.abort().await;
                        return Err(map(e));
                    }
                }
                Err(e) => {
                    // Nothing becomes visible: the multipart upload (if one started) is aborted.
                    let _ = writer.abort().await;
                    return Err(e);
                }
            }
        }
        tokio::io::AsyncWriteExt::shutdown(&mut writer).await?;
        Ok(size)
    }

    async fn size(&self, key: &str) -> io::Result<u64> {
        // An upload session's size is in its state: one read, not a HEAD that misses first.
        if key.starts_with("uploads/") && key.ends_with("/data") {
            let session = self.session(key).await?;
            return Ok(session.parted + session.tail);
        }
        match self.store.head(&self.path(key)?).await {
            Ok(meta) => Ok(meta.size),
            Err(object_store::Error::NotFound { .. }) if self.is_session(key).await => {
                let session = self.session(key).await?;
                Ok(session.parted + self.tail(key).await?.len() as u64)
            }
            Err(e) => Err(map(e)),
        }
    }

    async fn age(&self, key: &str) -> io::Result<Duration> {
        let meta = match self.store.head(&self.path(key)?).await {
            Ok(meta) => meta,
            // A session's age is its state's: rewritten by every append.
            Err(object_store::Error::NotFound { .. }) => self.store.head(&self.path(&format!("{key}.state"))?).await.map_err(map)?,
            Err(e) => return Err(map(e)),
        };
        let now = std::time::SystemTime::now();
        let modified = std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(meta.last_modified.timestamp_millis().max(0) as u64);
        Ok(now.duration_since(modified).unwrap_or_default())
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        let path = self.path(key)?;
        // S3 answers a delete of a missing key with success: ask first.
        self.store.head(&path).await.map_err(map)?;
        self.store.delete(&path).await.map_err(map)
    }

    async fn delete_prefix(&self, prefix: &str) -> io::Result<()> {
        let base = self.path(prefix)?;
        let objects: Vec<Path> = self.store.list(Some(&base)).map_ok(|meta| meta.location).try_collect().await.map_err(map)?;
        // A session's unfinished multipart upload is aborted: S3 keeps (and bills) it otherwise.
        for object in &objects {
            let name = object.as_ref();
            if let Some(key) = name.strip_suffix(".state") {
                let key = key.strip_prefix(&format!("{}/", self.prefix)).unwrap_or(key);
                if let Ok(session) = self.session(key).await {
                    if let (Some(id), false) = (&session.multipart, session.sealed) {
                        let _ = self.store.abort_multipart(&self.path(&format!("{key}.assembled"))?, id).await;
                    }
                }
            }
        }
        for object in objects {
            match self.store.delete(&object).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(map(e)),
            }
        }
        Ok(())
    }

    async fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let base = self.path(prefix)?;
        let listed = self.store.list_with_delimiter(Some(&base)).await.map_err(map)?;
        let mut names: Vec<String> = listed
            .common_prefixes
            .iter()
            .chain(listed.objects.iter().map(|meta| &meta.location))
            .filter_map(|path| path.filename().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn read(&self, key: &str, offset: u64) -> io::Result<ByteStream> {
        // A sealed session is read from what its parts assembled into.
        let path = if self.is_session(key).await { self.path(&format!("{key}.assembled"))? } else { self.path(key)? };
        let options = GetOptions { range: (offset > 0).then_some(GetRange::Offset(offset)), ..GetOptions::default() };
        let found = self.store.get_opts(&path, options).await.map_err(map)?;
        Ok(Box::pin(found.into_stream().map(|chunk| chunk.map_err(map))))
    }

    async fn create_new(&self, key: &str, bytes: &[u8]) -> io::Result<bool> {
        let options = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
        match self.store.put_opts(&self.path(key)?, PutPayload::from(bytes.to_vec()), options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(map(e)),
        }
    }

    async fn replace_if_unchanged(&self, key: &str, expected: &[u8], bytes: &[u8]) -> io::Result<bool> {
        let path = self.path(key)?;
        let found = self.store.get(&path).await.map_err(map)?;
        let version = object_store::UpdateVersion { e_tag: found.meta.e_tag.clone(), version: found.meta.version.clone() };
        if found.bytes().await.map_err(map)?.as_ref() != expected {
            return Ok(false);
        }
        // If-Match on the ETag read: of two replicas taking over, one wins.
        let options = object_store::PutOptions { mode: object_store::PutMode::Update(version), ..Default::default() };
        match self.store.put_opts(&path, PutPayload::from(bytes.to_vec()), options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(map(e)),
        }
    }

    async fn direct_url(&self, key: &str) -> io::Result<Option<String>> {
        if !self.redirect {
            return Ok(None);
        }
        use object_store::signer::Signer as _;
        let url = self.store.signed_url(reqwest::Method::GET, &self.path(key)?, REDIRECT_LIFETIME).await.map_err(map)?;
        Ok(Some(url.to_string()))
    }

    async fn create(&self, key: &str, owner: &[u8]) -> io::Result<()> {
        let owner = String::from_utf8(owner.to_vec()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "an upload's owner is a repository name"))?;
        self.save_session(key, &Session { owner, ..Session::default() }).await
    }

    async fn upload_status(&self, key: &str) -> io::Result<(Vec<u8>, u64)> {
        let session = self.session(key).await?;
        Ok((session.owner.into_bytes(), session.parted + session.tail))
    }

    async fn discard(&self, key: &str) -> io::Result<()> {
        let session = match self.session(key).await {
            Ok(session) => session,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if let (Some(id), false) = (&session.multipart, session.sealed) {
            match self.store.abort_multipart(&self.path(&format!("{key}.assembled"))?, id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(map(e)),
            }
        }
        // Only what the state says exists is deleted: a delete is a request even when the key
        // is missing (S3 answers it with success).
        let mut doomed = Vec::new();
        if session.appended || session.tail > 0 {
            doomed.push(format!("{key}.tail"));
        }
        if session.sealed {
            doomed.push(format!("{key}.assembled"));
        }
        doomed.push(format!("{key}.state"));
        for key in doomed {
            match self.store.delete(&self.path(&key)?).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(map(e)),
            }
        }
        Ok(())
    }

    async fn append(&self, key: &str, mut body: ByteStream) -> io::Result<u64> {
        let mut session = self.session(key).await?;
        if session.sealed {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the upload session is sealed"));
        }
        let mut buffer = self.tail(key).await?;
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    buffer.extend_from_slice(&chunk);
                    while buffer.len() >= PART_SIZE {
                        let rest = buffer.split_off(PART_SIZE);
                        let part = Bytes::from(std::mem::replace(&mut buffer, rest));
                        self.put_part(key, &mut session, part).await?;
                        // Recorded at once: a replica that dies now loses no completed part.
                        self.save_session(key, &session).await?;
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        // What arrived is kept (the client resumes from the size), even when the body broke.
        let size = session.parted + buffer.len() as u64;
        session.tail = buffer.len() as u64;
        session.appended = true;
        self.store.put(&self.path(&format!("{key}.tail"))?, PutPayload::from(buffer)).await.map_err(map)?;
        self.save_session(key, &session).await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(size),
        }
    }

    async fn seal(&self, key: &str) -> io::Result<()> {
        let mut session = self.session(key).await?;
        if session.sealed {
            return Ok(());
        }
        let tail = self.tail(key).await?;
        let assembled = self.path(&format!("{key}.assembled"))?;
        match session.multipart.clone() {
            Some(id) => {
                if !tail.is_empty() {
                    // The last part may be short.
                    self.put_part(key, &mut session, Bytes::from(tail)).await?;
                    session.tail = 0;
                }
                let parts = session.parts.iter().map(|content_id| PartId { content_id: content_id.clone() }).collect();
                self.store.complete_multipart(&assembled, &id, parts).await.map_err(map)?;
            }
            None => {
                self.store.put(&assembled, PutPayload::from(tail)).await.map_err(map)?;
            }
        }
        session.sealed = true;
        self.save_session(key, &session).await
    }

    async fn commit(&self, from: &str, to: &str) -> io::Result<()> {
        let session = self.is_session(from).await;
        let source = if session { self.path(&format!("{from}.assembled"))? } else { self.path(from)? };
        let target = self.path(to)?;
        if self.store.head(&target).await.is_err() {
            let size = self.store.head(&source).await.map_err(map)?.size;
            if size <= self.single_copy_limit {
                self.store.copy(&source, &target).await.map_err(map)?;
            } else {
                // Above one copy's limit: streamed through a new multipart upload.
                let body = self.store.get(&source).await.map_err(map)?.into_stream().map(|c| c.map_err(map));
                self.put_stream(to, Box::pin(body)).await?;
            }
        }
        // A session's objects go with `discard`; anything else moved is deleted here.
        if session {
            Ok(())
        } else {
            self.store.delete(&source).await.map_err(map)
        }
    }

    /// Aborts the multipart uploads nothing will complete. Sessions the storage's gc found
    /// stale were already deleted with their recorded upload (`delete_prefix`); what is left
    /// are uploads no session records (a replica killed between starting one and saving the
    /// session) and streamed writes of a killed replica (`put_stream` aborts its own on any
    /// error it lives to see).
    async fn purge_temporaries(&self, age: Duration) -> io::Result<u64> {
        let prefix = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let mut aborted = 0;
        for upload in self.uploads.list(&self.store, &prefix).await? {
            let Some(key) = upload.key.strip_prefix(&prefix) else { continue };
            if !self.abandoned(key, upload.initiated, age).await? {
                continue;
            }
            let path = Path::parse(&upload.key).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            match self.store.abort_multipart(&path, &upload.id).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    tracing::info!(key = %upload.key, "aborted an abandoned multipart upload");
                    aborted += 1;
                }
                Err(e) => tracing::warn!(key = %upload.key, "cannot abort a multipart upload: {}", map(e)),
            }
        }
        Ok(aborted)
    }
}
