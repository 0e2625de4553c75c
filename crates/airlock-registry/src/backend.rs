//! Where the storage's bytes live. [`Storage`](crate::Storage) is written against this trait,
//! not against a filesystem, so an S3-compatible object store (the `object_store` crate) can back
//! it: every operation is an object operation on a `/`-separated key.
//!
//! The contract an implementation keeps:
//! - `put` and `put_stream` are atomic: readers see the old object or the new one, never a part;
//!   `put_stream` commits only when its body ends without an error (a verification failure is an
//!   error at the end of the body), so a failed or dropped write leaves nothing under `key`.
//! - `append` extends an upload session's data; `commit` moves it under its final key (on an
//!   object store: complete the multipart upload, or copy and delete).
//! - `list` names what is directly under a prefix, never a temporary.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Bytes flowing in or out; an `InvalidData` error on a body means "verification failed".
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// An object store for the registry.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A small object's bytes; `NotFound` when absent.
    async fn get(&self, key: &str) -> io::Result<Vec<u8>>;
    /// Writes a small object atomically.
    async fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()>;
    /// Writes a streamed object atomically, only if the body ends without an error.
    async fn put_stream(&self, key: &str, body: ByteStream) -> io::Result<u64>;
    /// An object's size; `NotFound` when absent.
    async fn size(&self, key: &str) -> io::Result<u64>;
    /// Time since the object last changed.
    async fn age(&self, key: &str) -> io::Result<Duration>;
    /// Removes an object; `NotFound` when absent.
    async fn delete(&self, key: &str) -> io::Result<()>;
    /// Removes every object under a prefix.
    async fn delete_prefix(&self, prefix: &str) -> io::Result<()>;
    /// The names directly under a prefix (objects and deeper prefixes), sorted.
    async fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// Streams an object from `offset` to its end.
    async fn read(&self, key: &str, offset: u64) -> io::Result<ByteStream>;
    /// Creates an empty upload object to append to, recording `owner` with it (the repository
    /// the session belongs to): one write on an object store.
    async fn create(&self, key: &str, owner: &[u8]) -> io::Result<()>;
    /// What `create` recorded with an upload object, and the bytes appended so far: one read
    /// on an object store. `NotFound` when there is no such upload.
    async fn upload_status(&self, key: &str) -> io::Result<(Vec<u8>, u64)>;
    /// Removes an upload object made by `create` with everything it holds (what it recorded; on
    /// an object store its tail, its assembled data and its multipart upload). No error when it
    /// is already gone.
    async fn discard(&self, key: &str) -> io::Result<()>;
    /// Appends a body to an object made by `create`; returns its new size. Bytes that arrived
    /// before an error are kept (the client resumes from the size).
    async fn append(&self, key: &str, body: ByteStream) -> io::Result<u64>;
    /// Writes a small object only if none is there: `false` when one is (atomic: of two
    /// writers, one wins). The gc lease is taken with it.
    async fn create_new(&self, key: &str, bytes: &[u8]) -> io::Result<bool>;
    /// Replaces a small object only if it still holds `expected`: `false` when it changed
    /// (atomic). An expired lease is taken over with it.
    async fn replace_if_unchanged(&self, key: &str, expected: &[u8], bytes: &[u8]) -> io::Result<bool>;
    /// A URL a client may GET the object from directly for a while, when the backend offers one
    /// and was asked to (an object store's presigned URL); `None` serves bytes through airlock.
    async fn direct_url(&self, _key: &str) -> io::Result<Option<String>> {
        Ok(None)
    }
    /// Ends appends to an upload session's data and makes it readable as a whole (on an object
    /// store: the last part uploaded, the multipart upload completed). A folder has nothing to do.
    async fn seal(&self, _key: &str) -> io::Result<()> {
        Ok(())
    }
    /// Moves `from` to `to`; when `to` exists already (same content, by address) `from` is
    /// dropped.
    async fn commit(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes the temporaries of writes that died before committing, older than `age` (on an
    /// object store: abort stale multipart uploads). Returns how many.
    async fn purge_temporaries(&self, age: Duration) -> io::Result<u64>;
}

/// A storage that could not be opened (a bad `s3://` location): every operation fails with
/// why, so the error reaches the user where the storage is first used.
pub(crate) struct Unavailable(pub String);

impl Unavailable {
    fn fail<T>(&self) -> io::Result<T> {
        Err(io::Error::other(self.0.clone()))
    }
}

#[async_trait]
impl Backend for Unavailable {
    async fn get(&self, _: &str) -> io::Result<Vec<u8>> {
        self.fail()
    }
    async fn put(&self, _: &str, _: &[u8]) -> io::Result<()> {
        self.fail()
    }
    async fn put_stream(&self, _: &str, _: ByteStream) -> io::Result<u64> {
        self.fail()
    }
    async fn size(&self, _: &str) -> io::Result<u64> {
        self.fail()
    }
    async fn age(&self, _: &str) -> io::Result<Duration> {
        self.fail()
    }
    async fn delete(&self, _: &str) -> io::Result<()> {
        self.fail()
    }
    async fn delete_prefix(&self, _: &str) -> io::Result<()> {
        self.fail()
    }
    async fn list(&self, _: &str) -> io::Result<Vec<String>> {
        self.fail()
    }
    async fn read(&self, _: &str, _: u64) -> io::Result<ByteStream> {
        self.fail()
    }
    async fn create(&self, _: &str, _: &[u8]) -> io::Result<()> {
        self.fail()
    }
    async fn upload_status(&self, _: &str) -> io::Result<(Vec<u8>, u64)> {
        self.fail()
    }
    async fn discard(&self, _: &str) -> io::Result<()> {
        self.fail()
    }
    async fn append(&self, _: &str, _: ByteStream) -> io::Result<u64> {
        self.fail()
    }
    async fn create_new(&self, _: &str, _: &[u8]) -> io::Result<bool> {
        self.fail()
    }
    async fn replace_if_unchanged(&self, _: &str, _: &[u8], _: &[u8]) -> io::Result<bool> {
        self.fail()
    }
    async fn commit(&self, _: &str, _: &str) -> io::Result<()> {
        self.fail()
    }
    async fn purge_temporaries(&self, _: Duration) -> io::Result<u64> {
        self.fail()
    }
}

/// Where a folder keeps what `create` recorded with an upload object.
fn owner_key(key: &str) -> String {
    format!("{key}.owner")
}

/// A folder on a local filesystem: temp file, fsync, rename.
pub struct FsBackend {
    root: PathBuf,
}

/// Refuses a key that is not a relative path of plain components.
pub(crate) fn check_key(key: &str) -> io::Result<()> {
    let bad = key.is_empty()
        || key.contains('\0')
        || key.split('/').any(|component| component.is_empty() || component == "." || component == ".." || component.len() > 255);
    if bad {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("refused storage key `{}`", key.escape_debug())));
    }
    Ok(())
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name no other writer uses.
pub(crate) fn unique() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{:x}{:x}", std::process::id(), nanos, COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl FsBackend {
    /// A backend over `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FsBackend { root: root.into() }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of `key`. Keys come from [`crate::storage`], which builds them from checked
    /// names; this refuses again what could leave the folder (`..`, `.`, empty or over-long
    /// components, an absolute key, NUL), so no caller's mistake becomes a write elsewhere.
    fn path(&self, key: &str) -> io::Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    async fn temp_beside(&self, path: &Path) -> io::Result<PathBuf> {
        let dir = path.parent().expect("keys have a parent");
        tokio::fs::create_dir_all(dir).await?;
        Ok(dir.join(format!(".tmp-{}", unique())))
    }
}

#[async_trait]
impl Backend for FsBackend {
    async fn get(&self, key: &str) -> io::Result<Vec<u8>> {
        tokio::fs::read(self.path(key)?).await
    }

    async fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(key)?;
        let temp = self.temp_beside(&path).await?;
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            file.write_all(bytes).await?;
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&temp, &path).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    async fn put_stream(&self, key: &str, mut body: ByteStream) -> io::Result<u64> {
        let path = self.path(key)?;
        let temp = self.temp_beside(&path).await?;
        let result = async {
            let mut file = tokio::fs::File::create(&temp).await?;
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                file.write_all(&chunk).await?;
                size += chunk.len() as u64;
            }
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&temp, &path).await?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        result
    }

    async fn size(&self, key: &str) -> io::Result<u64> {
        Ok(tokio::fs::metadata(self.path(key)?).await?.len())
    }

    async fn age(&self, key: &str) -> io::Result<Duration> {
        let modified = tokio::fs::metadata(self.path(key)?).await?.modified()?;
        Ok(std::time::SystemTime::now().duration_since(modified).unwrap_or_default())
    }

    async fn delete(&self, key: &str) -> io::Result<()> {
        tokio::fs::remove_file(self.path(key)?).await
    }

    async fn delete_prefix(&self, prefix: &str) -> io::Result<()> {
        match tokio::fs::remove_dir_all(self.path(prefix)?).await {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    async fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        let mut entries = match tokio::fs::read_dir(self.path(prefix)?).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(e),
        };
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(".tmp-") {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    async fn read(&self, key: &str, offset: u64) -> io::Result<ByteStream> {
        let mut file = tokio::fs::File::open(self.path(key)?).await?;
        if offset > 0 {
            file.seek(io::SeekFrom::Start(offset)).await?;
        }
        Ok(Box::pin(futures::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buffer = vec![0u8; 256 * 1024];
            match file.read(&mut buffer).await {
                Ok(0) => None,
                Ok(n) => {
                    buffer.truncate(n);
                    Some((Ok(Bytes::from(buffer)), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        })))
    }

    async fn create(&self, key: &str, owner: &[u8]) -> io::Result<()> {
        let path = self.path(key)?;
        tokio::fs::create_dir_all(path.parent().expect("keys have a parent")).await?;
        self.put(&owner_key(key), owner).await?;
        tokio::fs::File::create(path).await.map(|_| ())
    }

    async fn upload_status(&self, key: &str) -> io::Result<(Vec<u8>, u64)> {
        let owner = self.get(&owner_key(key)).await?;
        Ok((owner, self.size(key).await?))
    }

    async fn discard(&self, key: &str) -> io::Result<()> {
        for file in [self.path(key)?, self.path(&owner_key(key))?] {
            match tokio::fs::remove_file(&file).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        // The session's folder goes too once nothing else is in it.
        let _ = tokio::fs::remove_dir(self.path(key)?.parent().expect("keys have a parent")).await;
        Ok(())
    }

    async fn append(&self, key: &str, mut body: ByteStream) -> io::Result<u64> {
        let path = self.path(key)?;
        let mut file = tokio::fs::OpenOptions::new().append(true).open(&path).await?;
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => file.write_all(&chunk).await?,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        file.flush().await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(tokio::fs::metadata(&path).await?.len()),
        }
    }

    async fn create_new(&self, key: &str, bytes: &[u8]) -> io::Result<bool> {
        let path = self.path(key)?;
        let temp = self.temp_beside(&path).await?;
        tokio::fs::write(&temp, bytes).await?;
        // A hard link fails when the name exists: create-if-absent in one step.
        let linked = tokio::fs::hard_link(&temp, &path).await;
        let _ = tokio::fs::remove_file(&temp).await;
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn replace_if_unchanged(&self, key: &str, expected: &[u8], bytes: &[u8]) -> io::Result<bool> {
        let path = self.path(key)?;
        let lock_path = path.with_extension("lock");
        let bytes = bytes.to_vec();
        let expected = expected.to_vec();
        // Compare and swap under an exclusive lock beside the object (processes on one host).
        tokio::task::spawn_blocking(move || {
            let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
            lock.lock()?;
            if std::fs::read(&path)? != expected {
                return Ok(false);
            }
            let temp = path.with_extension("swap");
            std::fs::write(&temp, &bytes)?;
            std::fs::rename(&temp, &path)?;
            Ok(true)
        })
        .await
        .expect("the swap does not panic")
    }

    async fn purge_temporaries(&self, age: Duration) -> io::Result<u64> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || purge(&root, age)).await.expect("purging does not panic")
    }

    async fn commit(&self, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (self.path(from)?, self.path(to)?);
        if tokio::fs::try_exists(&to).await.unwrap_or(false) {
            return tokio::fs::remove_file(from).await;
        }
        tokio::fs::create_dir_all(to.parent().expect("keys have a parent")).await?;
        tokio::fs::File::open(&from).await?.sync_all().await?;
        tokio::fs::rename(from, to).await
    }
}

fn purge(dir: &Path, age: Duration) -> io::Result<u64> {
    let mut removed = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            removed += purge(&path, age)?;
        } else if entry.file_name().to_string_lossy().starts_with(".tmp-") {
            let old = entry.metadata()?.modified().ok().and_then(|m| std::time::SystemTime::now().duration_since(m).ok()).is_some_and(|a| a > age);
            if old && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: Vec<io::Result<Bytes>>) -> ByteStream {
        Box::pin(futures::stream::iter(chunks))
    }

    #[tokio::test]
    async fn keys_that_could_leave_the_folder_are_refused() {
        let parent = tempfile::tempdir().unwrap();
        let backend = FsBackend::new(parent.path().join("root"));
        for key in ["../escape", "a/../../escape", "/etc/escape", "a//b", "a/./b", "", "a\0b", &"n".repeat(256)] {
            let refused = backend.put(key, b"x").await.unwrap_err();
            assert_eq!(refused.kind(), io::ErrorKind::InvalidInput, "{key:?}");
            assert_eq!(backend.get(key).await.unwrap_err().kind(), io::ErrorKind::InvalidInput);
        }
        assert!(!parent.path().join("escape").exists());
        backend.put("a/b", b"x").await.unwrap();
        assert_eq!(backend.get("a/b").await.unwrap(), b"x");
    }

    #[tokio::test]
    async fn a_failed_stream_commits_nothing_and_leaves_a_purgeable_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FsBackend::new(dir.path());
        let failed = backend.put_stream("blobs/x", body(vec![Ok(Bytes::from_static(b"part")), Err(io::Error::new(io::ErrorKind::InvalidData, "bad"))])).await;
        assert_eq!(failed.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(backend.size("blobs/x").await.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(backend.list("blobs").await.unwrap().is_empty(), "no temporary is listed");
        assert_eq!(backend.put_stream("blobs/x", body(vec![Ok(Bytes::from_static(b"whole"))])).await.unwrap(), 5);
        assert_eq!(backend.get("blobs/x").await.unwrap(), b"whole");
        std::fs::write(dir.path().join("blobs/.tmp-dead"), b"left by a crash").unwrap();
        assert_eq!(backend.purge_temporaries(Duration::ZERO).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn appends_keep_what_arrived_before_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FsBackend::new(dir.path());
        backend.create("uploads/1/data", b"team/app").await.unwrap();
        let cut = backend.append("uploads/1/data", body(vec![Ok(Bytes::from_static(b"abc")), Err(io::Error::other("cut"))])).await;
        assert!(cut.is_err());
        assert_eq!(backend.size("uploads/1/data").await.unwrap(), 3);
        assert_eq!(backend.append("uploads/1/data", body(vec![Ok(Bytes::from_static(b"def"))])).await.unwrap(), 6);
        assert_eq!(backend.upload_status("uploads/1/data").await.unwrap(), (b"team/app".to_vec(), 6));
        backend.commit("uploads/1/data", "blobs/y").await.unwrap();
        assert_eq!(backend.get("blobs/y").await.unwrap(), b"abcdef");
        backend.discard("uploads/1/data").await.unwrap();
        assert!(!dir.path().join("uploads/1").exists(), "the session's folder is gone");
        backend.discard("uploads/1/data").await.unwrap();
    }
}
