//! The walk: resolve, fetch, copy children depth first under one budget, write parents, tag last.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use airlock_oci::{filter_index, Descriptor, Digest, Manifest, ManifestKind, PlatformSpec};
use airlock_store::{BlobStream, MountSource, Store};
use futures::future::{try_join_all, BoxFuture};
use futures::{FutureExt, StreamExt};
use tokio::sync::{OnceCell, Semaphore};

use crate::error::{PlatformMiss, TagConflict};
use crate::CopyError;

type Result<T, E = CopyError> = std::result::Result<T, E>;

/// What a copy should do beyond the default (everything, referrers included).
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Copy only these platforms of an index (a new index, so a new digest). Empty: all.
    pub platforms: Vec<PlatformSpec>,
    /// Copy the referrers (signatures, SBOMs, attestations) of every manifest copied.
    pub referrers: bool,
    /// Blob transfers in flight at once, over the whole run.
    pub concurrency: NonZeroUsize,
    /// Move a destination tag that points at other content.
    pub force: bool,
    /// Attempts at one blob transfer when a store reports a transient failure.
    pub blob_attempts: u32,
    /// Ask the target whether it has the top manifest before walking it. A sync that has just
    /// seen the target's tag point elsewhere turns this off to save the question.
    pub probe_target: bool,
    /// The target repository is known to be empty (a sync found no tags in it): nothing is
    /// asked about before writing, every blob and manifest is written. Writes are idempotent,
    /// so a wrong guess costs bytes, never correctness.
    pub target_is_new: bool,
}

impl CopyOptions {
    /// Everything, referrers included, 8 transfers at once, tags never moved silently.
    pub fn new() -> Self {
        CopyOptions { platforms: Vec::new(), referrers: true, concurrency: NonZeroUsize::new(8).expect("8 > 0"), force: false, blob_attempts: 3, probe_target: true, target_is_new: false }
    }
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// Observes a run, e.g. to draw progress bars. Called from many tasks at once.
pub trait Progress: Send + Sync {
    /// A blob transfer starts.
    fn blob_started(&self, _descriptor: &Descriptor) {}
    /// Bytes arrived for a blob in transfer; negative when a failed attempt's bytes are taken back.
    fn bytes(&self, _delta: i64) {}
    /// A blob is in place at the target (copied, mounted or already there).
    fn blob_done(&self, _descriptor: &Descriptor, _how: BlobAction) {}
    /// A manifest was written to the target.
    fn manifest_written(&self, _digest: &Digest) {}
}

/// A [`Progress`] that shows nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// How a blob reached the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobAction {
    /// Streamed from the source.
    Copied,
    /// Mounted from another repository of the same registry.
    Mounted,
    /// The target had it.
    Skipped,
}

/// What one copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// The digest of the manifest written (a new one when platforms were filtered).
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its size in bytes.
    pub size: u64,
    /// The digest of the source manifest.
    pub source_digest: Digest,
    /// Tags written at the target.
    pub tags: Vec<String>,
    /// Manifests written (referrers included).
    pub manifests_written: u64,
    /// Manifests the target already had.
    pub manifests_present: u64,
    /// Blobs streamed.
    pub blobs_copied: u64,
    /// Blobs mounted.
    pub blobs_mounted: u64,
    /// Blobs already present.
    pub blobs_skipped: u64,
    /// Bytes streamed.
    pub bytes_copied: u64,
    /// Referrer manifests copied.
    pub referrers_copied: u64,
}

#[derive(Default)]
struct Counters {
    manifests_written: AtomicU64,
    manifests_present: AtomicU64,
    blobs_copied: AtomicU64,
    blobs_mounted: AtomicU64,
    blobs_skipped: AtomicU64,
    bytes_copied: AtomicU64,
    referrers_copied: AtomicU64,
}

type BlobCell = Arc<OnceCell<std::result::Result<(), Arc<CopyError>>>>;

/// One run of copies sharing a concurrency budget and a record of the blobs already moved.
pub struct Copier {
    options: CopyOptions,
    budget: Arc<Semaphore>,
    progress: Arc<dyn Progress>,
    /// (target, digest) → the transfer, so concurrent copies of one blob wait for the first.
    blobs: Mutex<HashMap<(String, Digest), BlobCell>>,
    /// digest → the repositories this run put it in, so another repository of the same registry
    /// mounts it instead of moving its bytes again. Its lock also keeps two targets from
    /// transferring one blob at once.
    placed: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<Vec<MountSource>>>>>,
}

struct Run<'a> {
    copier: &'a Copier,
    options: &'a CopyOptions,
    source: &'a dyn Store,
    target: &'a dyn Store,
    counters: Counters,
}

impl Copier {
    /// A run with these options, reporting to `progress`.
    pub fn new(options: CopyOptions, progress: Arc<dyn Progress>) -> Self {
        let budget = Arc::new(Semaphore::new(options.concurrency.get()));
        Copier { options, budget, progress, blobs: Mutex::new(HashMap::new()), placed: Mutex::new(HashMap::new()) }
    }

    /// Copies `reference` (a tag or digest) of `source` to `target`, then points each of `tags`
    /// at it. With no tags the content is written by digest only.
    ///
    /// # Cancel safety
    /// Dropping the future leaves the target consistent: whatever was written is complete and
    /// verified, and no tag was moved before everything it reaches was written.
    pub async fn copy(&self, source: &dyn Store, reference: &str, target: &dyn Store, tags: &[String]) -> Result<CopyReport> {
        self.copy_with(&self.options, source, reference, target, tags).await
    }

    /// [`Copier::copy`] with other per-copy options (platforms, referrers, force) in the same
    /// run, sharing its budget and its record of blobs moved.
    pub async fn copy_with(&self, options: &CopyOptions, source: &dyn Store, reference: &str, target: &dyn Store, tags: &[String]) -> Result<CopyReport> {
        let original = source.get_manifest(reference).await?;
        self.copy_manifest(options, source, original, reference, target, tags).await
    }

    /// [`Copier::copy_with`] for a manifest the caller already fetched from `source` (by
    /// `reference`, used in messages).
    pub async fn copy_manifest(
        &self,
        options: &CopyOptions,
        source: &dyn Store,
        original: Manifest,
        reference: &str,
        target: &dyn Store,
        tags: &[String],
    ) -> Result<CopyReport> {
        let run = Run { copier: self, options, source, target, counters: Counters::default() };
        let source_digest = original.digest().clone();
        check_image_platform(source, &original, &options.platforms, &format!("{source}:{reference}")).await?;
        let manifest = select_platforms(original, &options.platforms, &format!("{source}:{reference}"))?;
        let filtered = manifest.digest() != &source_digest;

        // Refuse early, before moving any byte, when a tag would be moved.
        if !options.force {
            for tag in tags {
                match target.resolve(tag).await {
                    Ok(existing) if existing.digest() != manifest.digest() => {
                        return Err(CopyError::TagExists(Box::new(TagConflict {
                            tag: tag.clone(),
                            target: target.to_string(),
                            existing: existing.digest().clone(),
                            incoming: manifest.digest().clone(),
                        })))
                    }
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }

        // With tags, the first tag write is the manifest's write: no separate PUT by digest.
        let present = run.copy_tree(&manifest, !filtered, !tags.is_empty(), options.probe_target).await?;
        if !present && !tags.is_empty() {
            run.counters.manifests_written.fetch_add(1, Ordering::Relaxed);
            self.progress.manifest_written(manifest.digest());
        }
        for tag in tags {
            target.put_manifest(&manifest, Some(tag)).await?;
            tracing::info!(target = %target, %tag, digest = %manifest.digest(), "tagged");
        }
        let counters = &run.counters;
        Ok(CopyReport {
            digest: manifest.digest().clone(),
            media_type: manifest.media_type().to_owned(),
            size: manifest.bytes().len() as u64,
            source_digest,
            tags: tags.to_vec(),
            manifests_written: counters.manifests_written.load(Ordering::Relaxed),
            manifests_present: counters.manifests_present.load(Ordering::Relaxed),
            blobs_copied: counters.blobs_copied.load(Ordering::Relaxed),
            blobs_mounted: counters.blobs_mounted.load(Ordering::Relaxed),
            blobs_skipped: counters.blobs_skipped.load(Ordering::Relaxed),
            bytes_copied: counters.bytes_copied.load(Ordering::Relaxed),
            referrers_copied: counters.referrers_copied.load(Ordering::Relaxed),
        })
    }

}

/// A single-platform image asked for with `--platform` must be one of them: copying the other
/// platform silently would hand a user the wrong architecture. Its config says which it is;
/// an artifact (no image config) has no platform and passes.
async fn check_image_platform(source: &dyn Store, manifest: &Manifest, platforms: &[PlatformSpec], source_ref: &str) -> Result<()> {
    let ManifestKind::Image { config, artifact_type: None, .. } = manifest.kind() else { return Ok(()) };
    if platforms.is_empty() {
        return Ok(());
    }
    let bytes = airlock_store::verify::read_small(source, config, 8 * 1024 * 1024).await?;
    let Ok(platform) = serde_json::from_slice::<airlock_oci::Platform>(&bytes) else { return Ok(()) };
    if platforms.iter().any(|spec| spec.matches(&platform)) {
        return Ok(());
    }
    let mut available = format!("{}/{}", platform.os(), platform.architecture());
    if let Some(variant) = platform.variant() {
        available = format!("{available}/{variant}");
    }
    Err(CopyError::NoPlatform(Box::new(PlatformMiss {
        source_ref: source_ref.to_owned(),
        wanted: platforms.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        available: format!("{available} (a single-platform image)"),
    })))
}

/// The manifest a copy with `platforms` writes: `manifest` itself, or for an index a new index
/// of only the matching entries (so a new digest). `source_ref` names the source in errors.
pub fn select_platforms(manifest: Manifest, platforms: &[PlatformSpec], source_ref: &str) -> Result<Manifest> {
    if platforms.is_empty() || !manifest.is_index() {
        return Ok(manifest);
    }
    let wrap = |error| {
        let (location, reference) = source_ref.rsplit_once(':').unwrap_or((source_ref, ""));
        CopyError::Store(airlock_store::Error::from(airlock_store::ErrorKind::Manifest {
            reference: reference.to_owned(),
            location: location.to_owned(),
            source: error,
        }))
    };
    match filter_index(&manifest, platforms).map_err(wrap)? {
        Some(bytes) => Manifest::parse(bytes, Some(manifest.media_type())).map_err(wrap),
        None => {
            let ManifestKind::Index { manifests, .. } = manifest.kind() else { unreachable!("checked is_index") };
            let available: Vec<String> = manifests
                .iter()
                .filter_map(|d| d.platform().as_ref())
                .map(|p| {
                    let mut text = format!("{}/{}", p.os(), p.architecture());
                    if let Some(variant) = p.variant() {
                        text = format!("{text}/{variant}");
                    }
                    text
                })
                .collect();
            let wanted: Vec<String> = platforms.iter().map(ToString::to_string).collect();
            Err(CopyError::NoPlatform(Box::new(PlatformMiss {
                source_ref: source_ref.to_owned(),
                wanted: wanted.join(", "),
                available: available.join(", "),
            })))
        }
    }
}

impl Run<'_> {
    /// Copies everything `manifest` reaches, then the manifest by digest (unless `tags_follow`:
    /// the caller writes it under its tags), then (when asked) its referrers. `with_referrers`
    /// is false for a filtered index, whose digest is new and so has no referrers at the source.
    /// Returns whether the target had the manifest already; `probe` false skips asking (the
    /// caller just learnt the target lacks it) and walks the tree, which is idempotent.
    fn copy_tree<'b>(&'b self, manifest: &'b Manifest, with_referrers: bool, tags_follow: bool, probe: bool) -> BoxFuture<'b, Result<bool>> {
        async move {
            let present = probe
                && !self.options.target_is_new
                && match self.target.resolve(manifest.digest().as_ref()).await {
                    Ok(_) => true,
                    Err(e) if e.is_not_found() => false,
                    Err(e) => return Err(e.into()),
                };
            if present {
                // A registry accepts a manifest only once everything it lists is there, and so
                // does this engine when it writes a folder: the subtree is in place.
                self.counters.manifests_present.fetch_add(1, Ordering::Relaxed);
            } else {
                match manifest.kind() {
                    ManifestKind::Index { manifests, .. } => {
                        try_join_all(manifests.iter().map(|child| self.copy_child(child))).await?;
                    }
                    ManifestKind::Image { config, layers, .. } => {
                        let blobs = std::iter::once(config).chain(layers.iter());
                        try_join_all(blobs.map(|blob| self.copy_blob(blob))).await?;
                    }
                }
                if !tags_follow {
                    self.target.put_manifest(manifest, None).await?;
                    self.counters.manifests_written.fetch_add(1, Ordering::Relaxed);
                    self.copier.progress.manifest_written(manifest.digest());
                }
            }
            if with_referrers && self.options.referrers {
                self.copy_referrers(manifest.digest()).await?;
            }
            Ok(present)
        }
        .boxed()
    }

    /// An index entry: a manifest to walk, or (rarely) a plain blob.
    async fn copy_child(&self, child: &Descriptor) -> Result<()> {
        let media_type = child.media_type().to_string();
        if !airlock_oci::media_type::is_manifest(&media_type) {
            return self.copy_blob(child).await;
        }
        let manifest = self.source.get_manifest(child.digest().as_ref()).await?;
        self.copy_tree(&manifest, true, false, true).await.map(|_| ())
    }

    async fn copy_referrers(&self, subject: &Digest) -> Result<()> {
        let referrers = self.source.referrers(subject, None).await?;
        for referrer in referrers {
            let manifest = self.source.get_manifest(referrer.digest().as_ref()).await?;
            self.copy_tree(&manifest, true, false, true).await?;
            self.counters.referrers_copied.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Puts one blob in place at the target, once per run and target whatever the number of
    /// images sharing it.
    async fn copy_blob(&self, descriptor: &Descriptor) -> Result<()> {
        let key = (self.target.to_string(), descriptor.digest().clone());
        let cell = self.copier.blobs.lock().expect("blob map lock").entry(key).or_default().clone();
        let mut first = false;
        let outcome = cell
            .get_or_init(|| {
                first = true;
                async { self.transfer_blob(descriptor).await.map_err(Arc::new) }
            })
            .await;
        match outcome {
            Ok(()) => {
                if !first {
                    self.counters.blobs_skipped.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(error) => Err(CopyError::Shared(error.clone())),
        }
    }

    async fn transfer_blob(&self, descriptor: &Descriptor) -> Result<()> {
        let placed = self.copier.placed.lock().expect("placement map lock").entry(descriptor.digest().clone()).or_default().clone();
        let mut placed = placed.lock().await;
        let action = self.place_blob(descriptor, &placed).await?;
        if let Some(here) = self.target.mount_source() {
            placed.push(here);
        }
        drop(placed);
        self.copier.progress.blob_done(descriptor, action);
        let counter = match action {
            BlobAction::Copied => &self.counters.blobs_copied,
            BlobAction::Mounted => &self.counters.blobs_mounted,
            BlobAction::Skipped => &self.counters.blobs_skipped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The cheapest way first: there already, mounted from the source's repository or from one
    /// this run put it in, else streamed.
    async fn place_blob(&self, descriptor: &Descriptor, placed: &[MountSource]) -> Result<BlobAction> {
        let target = self.target.mount_source();
        let candidates = self.source.mount_source().into_iter().chain(placed.iter().cloned());
        let mount_from = candidates
            .into_iter()
            .find(|from| target.as_ref().is_some_and(|t| t.registry == from.registry && t.repository != from.repository));
        // A mount answers "already there" too, so it goes first and saves the existence check;
        // a refused mount opens an upload session that the stream then uses.
        if let Some(from) = mount_from {
            if self.target.mount_blob(descriptor, &from).await? {
                return Ok(BlobAction::Mounted);
            }
        } else if !self.options.target_is_new && self.target.blob_exists(descriptor.digest()).await? {
            return Ok(BlobAction::Skipped);
        }
        self.stream_blob(descriptor).await?;
        Ok(BlobAction::Copied)
    }

    async fn stream_blob(&self, descriptor: &Descriptor) -> Result<()> {
        let progress = &self.copier.progress;
        let _permit = self.copier.budget.acquire().await.expect("the budget is never closed");
        progress.blob_started(descriptor);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let moved = Arc::new(AtomicU64::new(0));
            let result = async {
                let body = self.source.get_blob(descriptor, 0).await?;
                let body = counted(body, progress.clone(), moved.clone());
                self.target.put_blob(descriptor, body).await
            }
            .await;
            match result {
                Ok(()) => {
                    self.counters.bytes_copied.fetch_add(descriptor.size(), Ordering::Relaxed);
                    return Ok(());
                }
                Err(error) if error.is_transient() && attempt < self.options.blob_attempts => {
                    tracing::debug!(digest = %descriptor.digest(), attempt, %error, "retrying blob transfer");
                    // Take back what the failed attempt counted so the bar stays true.
                    progress.bytes(-(moved.load(Ordering::Relaxed) as i64));
                    tokio::time::sleep(std::time::Duration::from_millis(250 * u64::from(attempt))).await;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// Reports each chunk to the progress observer as it passes.
fn counted(body: BlobStream, progress: Arc<dyn Progress>, moved: Arc<AtomicU64>) -> BlobStream {
    Box::pin(body.inspect(move |chunk| {
        if let Ok(chunk) = chunk {
            moved.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            progress.bytes(chunk.len() as i64);
        }
    }))
}
