//! Progress bars for a terminal, drawn with indicatif from the copy engine's callbacks.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use airlock_copy::{BlobAction, Progress};
use airlock_oci::{Descriptor, Digest};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// One bar of bytes (with rate and ETA) and a count of blobs, on stderr.
pub struct Bars {
    bar: ProgressBar,
    blobs_started: AtomicU64,
    blobs_done: AtomicU64,
    tags_planned: AtomicU64,
    tags_done: AtomicU64,
}

impl Bars {
    /// Bars when stderr is a terminal and the user wants them; none in pipes, `-q`, `-v` or JSON.
    pub fn for_terminal(wanted: bool) -> Arc<dyn Progress> {
        match Self::new_if(wanted) {
            Some(bars) => bars,
            None => Arc::new(airlock_copy::NoProgress),
        }
    }

    /// Bars for a sync: bytes and blobs from the copier, tags from the sync.
    pub fn for_sync(wanted: bool) -> (Arc<dyn Progress>, Arc<dyn airlock_sync::SyncProgress>) {
        match Self::new_if(wanted) {
            Some(bars) => (bars.clone(), bars),
            None => (Arc::new(airlock_copy::NoProgress), Arc::new(Quiet)),
        }
    }

    fn new(bar: ProgressBar) -> Bars {
        Bars { bar, blobs_started: AtomicU64::new(0), blobs_done: AtomicU64::new(0), tags_planned: AtomicU64::new(0), tags_done: AtomicU64::new(0) }
    }

    fn new_if(wanted: bool) -> Option<Arc<Bars>> {
        if !wanted || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        Some(Arc::new(Bars::new(bar)))
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for Bars {
    fn blob_started(&self, descriptor: &Descriptor) {
        let started = self.blobs_started.fetch_add(1, Ordering::Relaxed) + 1;
        self.bar.set_message(format!("{}/{started} blobs", self.blobs_done.load(Ordering::Relaxed)));
        self.bar.inc_length(descriptor.size());
    }
    fn bytes(&self, delta: i64) {
        if delta >= 0 {
            self.bar.inc(delta as u64);
        } else {
            self.bar.set_position(self.bar.position().saturating_sub(delta.unsigned_abs()));
        }
    }
    fn blob_done(&self, _descriptor: &Descriptor, _how: BlobAction) {
        let count = self.blobs_done.fetch_add(1, Ordering::Relaxed) + 1;
        self.bar.set_message(format!("{count}/{} blobs", self.blobs_started.load(Ordering::Relaxed).max(count)));
    }
    fn manifest_written(&self, _digest: &Digest) {}
}

impl airlock_sync::SyncProgress for Bars {
    fn planned(&self, n: usize) {
        self.tags_planned.fetch_add(n as u64, Ordering::Relaxed);
    }
    fn tag_done(&self, _result: &airlock_sync::TagResult) {
        let done = self.tags_done.fetch_add(1, Ordering::Relaxed) + 1;
        self.bar.set_prefix(format!("{done}/{} tags", self.tags_planned.load(Ordering::Relaxed)));
    }
}

/// A [`airlock_sync::SyncProgress`] that shows nothing.
pub struct Quiet;
impl airlock_sync::SyncProgress for Quiet {}

/// Progress for a command that moves a few large files (`push`, `pull`): the bar on a
/// terminal; without one (a CI log), a line per finished file and a line every
/// `AIRLOCK_PROGRESS_INTERVAL` seconds (10 by default) while bytes move, so a log shows life.
pub fn for_transfer(wanted: bool, verb: &'static str) -> Arc<dyn Progress> {
    if !wanted {
        return Arc::new(airlock_copy::NoProgress);
    }
    if let Some(bars) = Bars::new_if(true) {
        return bars;
    }
    let interval = std::env::var("AIRLOCK_PROGRESS_INTERVAL")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .map_or(std::time::Duration::from_secs(10), std::time::Duration::from_secs_f64);
    LogLines::start(verb, interval)
}

/// Plain lines on stderr for logs: what finished, and every interval how far a transfer is.
pub struct LogLines {
    verb: &'static str,
    state: Arc<Counts>,
    ticker: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Counts {
    bytes: AtomicU64,
    total: AtomicU64,
    files: AtomicU64,
    files_done: AtomicU64,
}

impl LogLines {
    fn start(verb: &'static str, interval: std::time::Duration) -> Arc<LogLines> {
        let state = Arc::new(Counts::default());
        let watched = state.clone();
        let started = std::time::Instant::now();
        let ticker = tokio::spawn(async move {
            let mut last = u64::MAX;
            loop {
                tokio::time::sleep(interval).await;
                let bytes = watched.bytes.load(Ordering::Relaxed);
                if bytes == last {
                    continue;
                }
                last = bytes;
                let total = watched.total.load(Ordering::Relaxed);
                let rate = bytes as f64 / started.elapsed().as_secs_f64().max(0.001);
                crate::output::note(&format!(
                    "{verb}: {} of {} ({}%), {}/s, {}/{} files",
                    crate::output::bytes(bytes),
                    crate::output::bytes(total),
                    (bytes * 100).checked_div(total).unwrap_or(0),
                    crate::output::bytes(rate as u64),
                    watched.files_done.load(Ordering::Relaxed),
                    watched.files.load(Ordering::Relaxed),
                ));
            }
        });
        Arc::new(LogLines { verb, state, ticker })
    }
}

impl Drop for LogLines {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

impl Progress for LogLines {
    fn blob_started(&self, descriptor: &Descriptor) {
        self.state.total.fetch_add(descriptor.size(), Ordering::Relaxed);
        self.state.files.fetch_add(1, Ordering::Relaxed);
    }
    fn bytes(&self, delta: i64) {
        if delta >= 0 {
            self.state.bytes.fetch_add(delta as u64, Ordering::Relaxed);
        }
    }
    fn blob_done(&self, descriptor: &Descriptor, _how: BlobAction) {
        let done = self.state.files_done.fetch_add(1, Ordering::Relaxed) + 1;
        let files = self.state.files.load(Ordering::Relaxed);
        crate::output::note(&format!("{}: {done}/{files} done: {} ({})", self.verb, descriptor.digest(), crate::output::bytes(descriptor.size())));
    }
}

/// A store that reports the blobs it moves to a [`Progress`]: how `push` and `pull`, which
/// stream through a store rather than the copy engine, drive the same bars.
pub struct Reporting {
    inner: Arc<dyn airlock_store::Store>,
    progress: Arc<dyn Progress>,
}

impl Reporting {
    pub fn wrap(inner: Arc<dyn airlock_store::Store>, progress: Arc<dyn Progress>) -> Arc<dyn airlock_store::Store> {
        Arc::new(Reporting { inner, progress })
    }

    /// `body`, telling the progress of each chunk and of the end.
    fn counted(&self, descriptor: &Descriptor, body: airlock_store::BlobStream) -> airlock_store::BlobStream {
        use futures::StreamExt as _;
        let progress = self.progress.clone();
        let done = self.progress.clone();
        let finished = descriptor.clone();
        let counted = body.inspect(move |chunk| {
            if let Ok(chunk) = chunk {
                progress.bytes(chunk.len() as i64);
            }
        });
        let end = futures::stream::once(async move {
            done.blob_done(&finished, BlobAction::Copied);
            None
        });
        Box::pin(counted.map(Some).chain(end).filter_map(futures::future::ready))
    }
}

impl std::fmt::Display for Reporting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait::async_trait]
impl airlock_store::Store for Reporting {
    fn mount_source(&self) -> Option<airlock_store::MountSource> {
        self.inner.mount_source()
    }
    async fn resolve(&self, reference: &str) -> airlock_store::Result<Descriptor> {
        self.inner.resolve(reference).await
    }
    async fn get_manifest(&self, reference: &str) -> airlock_store::Result<airlock_oci::Manifest> {
        self.inner.get_manifest(reference).await
    }
    async fn put_manifest(&self, manifest: &airlock_oci::Manifest, tag: Option<&str>) -> airlock_store::Result<airlock_store::PutManifestOutcome> {
        self.inner.put_manifest(manifest, tag).await
    }
    async fn blob_exists(&self, digest: &Digest) -> airlock_store::Result<bool> {
        self.inner.blob_exists(digest).await
    }
    async fn get_blob(&self, descriptor: &Descriptor, offset: u64) -> airlock_store::Result<airlock_store::BlobStream> {
        let body = self.inner.get_blob(descriptor, offset).await?;
        self.progress.blob_started(descriptor);
        // Bytes an earlier run already has count as done.
        self.progress.bytes(offset as i64);
        Ok(self.counted(descriptor, body))
    }
    async fn put_blob(&self, descriptor: &Descriptor, body: airlock_store::BlobStream) -> airlock_store::Result<()> {
        // Small blobs (an empty config) are not worth a line.
        if descriptor.size() < 1024 * 1024 {
            return self.inner.put_blob(descriptor, body).await;
        }
        self.progress.blob_started(descriptor);
        let body = self.counted(descriptor, body);
        self.inner.put_blob(descriptor, body).await
    }
    async fn mount_blob(&self, descriptor: &Descriptor, from: &airlock_store::MountSource) -> airlock_store::Result<bool> {
        self.inner.mount_blob(descriptor, from).await
    }
    async fn list_tags(&self) -> airlock_store::Result<Vec<String>> {
        self.inner.list_tags().await
    }
    fn tags_known(&self) -> bool {
        self.inner.tags_known()
    }
    async fn referrers(&self, subject: &Digest, artifact_type: Option<&str>) -> airlock_store::Result<Vec<Descriptor>> {
        self.inner.referrers(subject, artifact_type).await
    }
    async fn delete_manifest(&self, digest: &Digest) -> airlock_store::Result<()> {
        self.inner.delete_manifest(digest).await
    }
}
