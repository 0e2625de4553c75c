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
        Bars { bar, blobs_done: AtomicU64::new(0), tags_planned: AtomicU64::new(0), tags_done: AtomicU64::new(0) }
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
        self.bar.set_message(format!("{count} blobs"));
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
