//! Planning and running a sync.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use airlock_copy::{CopyOptions, Copier};
use airlock_oci::{media_type, Digest, PlatformSpec, Reference};
use airlock_store::Store;
use futures::StreamExt;
use tokio::sync::OnceCell;

use crate::TagFilter;

/// One repository to mirror.
#[derive(Debug, Clone)]
pub struct SyncJob {
    /// The source repository.
    pub source: Reference,
    /// The target repository.
    pub target: Reference,
    /// Which tags.
    pub filter: TagFilter,
    /// Only these platforms of indexes (empty: all).
    pub platforms: Vec<PlatformSpec>,
    /// Copy referrers too.
    pub referrers: bool,
}

/// Run-wide settings.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Plan only: report what would be copied, write nothing.
    pub dry_run: bool,
    /// Tags synced at once (blob transfers are bounded by the copier's own budget).
    pub parallel_tags: usize,
}

/// What happened to one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Copied (or its tag moved to upstream's new digest).
    Copied,
    /// The target already had this digest under this tag.
    UpToDate,
    /// A dry run found it would be copied.
    WouldCopy,
    /// It failed; [`TagResult::error`] says why.
    Failed,
    /// The source listed a name that is no valid tag (`../x`, `a/b`, a newline): never used
    /// as a path or URL, reported with the reason in [`TagResult::error`].
    Skipped,
}

impl Action {
    /// The words used in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Copied => "copied",
            Action::UpToDate => "up to date",
            Action::WouldCopy => "would copy",
            Action::Failed => "failed",
            Action::Skipped => "skipped",
        }
    }

    /// The identifier used in JSON.
    pub fn as_id(self) -> &'static str {
        match self {
            Action::Copied => "copied",
            Action::UpToDate => "up_to_date",
            Action::WouldCopy => "would_copy",
            Action::Failed => "failed",
            Action::Skipped => "skipped",
        }
    }
}

/// The outcome for one tag (or, with `tag` empty, for a job that failed before its tags).
#[derive(Debug, Clone)]
pub struct TagResult {
    /// The source repository.
    pub source: String,
    /// The target repository.
    pub target: String,
    /// The tag.
    pub tag: String,
    /// The digest the target tag points at (or would) after the sync.
    pub digest: Option<Digest>,
    /// The source's digest (differs from `digest` when platforms were selected).
    pub source_digest: Option<Digest>,
    /// What happened.
    pub action: Action,
    /// Bytes moved for this tag.
    pub bytes: u64,
    /// Why it failed, the error chain joined.
    pub error: Option<String>,
}

/// Observes a sync as tags finish.
pub trait SyncProgress: Send + Sync {
    /// The number of tags planned grew by `n`.
    fn planned(&self, _n: usize) {}
    /// A tag is done.
    fn tag_done(&self, _result: &TagResult) {}
}

/// Opens the store for a reference; the caller decides how (credentials, TLS, folders).
pub type OpenStore<'a> = &'a (dyn Fn(&Reference, bool) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + 'a>> + Send + Sync);

/// The tags a job selected from its source, and the names it listed that are no tags.
type Selected = (Vec<String>, Vec<String>);

/// A job's two stores, the tags it selected from the source, and what its target holds.
type Listing = (usize, Arc<dyn Store>, Arc<dyn Store>, Result<Selected, airlock_store::Error>, TargetKnowledge);

/// One tag to sync, with its job's stores.
struct Planned {
    job: usize,
    source: Arc<dyn Store>,
    target: Arc<dyn Store>,
    known: Arc<TargetKnowledge>,
    tag: String,
}

/// A tag to sync (or a listing that failed), with its job and its place in the job's order.
type PlanItem = (usize, usize, Result<Planned, Box<TagResult>>);

/// A listing's tags, each numbered in its job's order; a failed listing is one failed result.
fn plan((job, source, target, tags, known): Listing, progress: &dyn SyncProgress) -> Vec<PlanItem> {
    let items: Vec<Result<Planned, Box<TagResult>>> = match tags {
        Ok((tags, refused)) => {
            progress.planned(tags.len() + refused.len());
            let known = Arc::new(known);
            let skipped = refused.into_iter().map(|name| {
                let reason = airlock_oci::validate_tag(&name).err().unwrap_or_default();
                Err(Box::new(TagResult {
                    source: source.to_string(),
                    target: target.to_string(),
                    tag: name.escape_debug().to_string(),
                    digest: None,
                    source_digest: None,
                    action: Action::Skipped,
                    bytes: 0,
                    error: Some(format!("{source} listed a name that is no valid tag, so it is not synced: {}", reason.escape_debug())),
                }))
            });
            tags.into_iter()
                .map(|tag| Ok(Planned { job, source: source.clone(), target: target.clone(), known: known.clone(), tag }))
                .chain(skipped)
                .collect()
        }
        Err(error) => vec![Err(Box::new(TagResult {
            source: source.to_string(),
            target: target.to_string(),
            tag: String::new(),
            digest: None,
            source_digest: None,
            action: Action::Failed,
            bytes: 0,
            error: Some(chain(&error)),
        }))],
    };
    items.into_iter().enumerate().map(|(order, item)| (job, order, item)).collect()
}

/// Runs `jobs`, copying through `copier`. Returns one result per tag, in job and tag order.
pub async fn run(jobs: &[SyncJob], open: OpenStore<'_>, copier: &Copier, options: &SyncOptions, progress: &dyn SyncProgress) -> Vec<TagResult> {
    // Listings and tags overlap: a job's tags start as soon as its listing is in, so both
    // registries stay busy (a warm sync is mostly waiting for answers). The listings are driven
    // on their own, beside the tags, never from inside the tags' buffer: a listing that holds one
    // of a registry's request permits must make progress even while every tag slot is taken
    // (else tags waiting for that permit and the listing waiting for a slot block each other).
    let (listed, listed_rx) = futures::channel::mpsc::unbounded::<PlanItem>();
    // Boxed so that the stream's type names no closure over borrowed jobs: the whole sync stays
    // a `Send` future a caller can spawn (rustc cannot prove that through such closures).
    let listings: Vec<Pin<Box<dyn Future<Output = Listing> + Send + '_>>> = jobs
        .iter()
        .enumerate()
        .map(|(job_idx, job)| -> Pin<Box<dyn Future<Output = Listing> + Send + '_>> {
            Box::pin(async move {
                // Opening a loopback registry may probe it for TLS: both sides at once.
                let (source, target) = futures::join!(open(&job.source, false), open(&job.target, true));
                let source_tags = async {
                    if job.filter.needs_listing() {
                        source.list_tags().await.map(|available| {
                            // A listed name is untrusted: one that is no valid tag never reaches a
                            // filter, a path or a URL. Referrers-schema tags (`sha256-<hex>`) are
                            // listings of signatures and SBOMs, not images: they travel with their
                            // subject.
                            let (valid, refused): (Vec<String>, Vec<String>) =
                                available.into_iter().partition(|t| airlock_oci::validate_tag(t).is_ok());
                            let available: Vec<String> = valid.into_iter().filter(|t| !is_referrers_tag(t)).collect();
                            (job.filter.select(&available), refused)
                        })
                    } else {
                        Ok((job.filter.select(&[]), Vec::new()))
                    }
                };
                let (tags, known) = futures::join!(source_tags, TargetKnowledge::gather(target.as_ref()));
                (job_idx, source, target, tags, known)
            })
        })
        .collect();
    let listings = futures::stream::iter(listings)
        .buffer_unordered(options.parallel_tags.max(1));
    let listings = async move {
        let mut listings = std::pin::pin!(listings);
        while let Some(listing) = listings.next().await {
            for item in plan(listing, progress) {
                // The receiver lives until every listing is in: sending cannot fail.
                let _ = listed.unbounded_send(item);
            }
        }
    };
    let outcomes = listed_rx
        .map(|(job_idx, order, item)| async move {
            let result = match item {
                Ok(item) => {
                    let sides = Sides { source: item.source.as_ref(), target: item.target.as_ref(), known: &item.known };
                    sync_tag(&jobs[item.job], &sides, &item.tag, copier, options).await
                }
                Err(failed) => *failed,
            };
            progress.tag_done(&result);
            (job_idx, order, result)
        })
        .buffer_unordered(options.parallel_tags.max(1))
        .collect::<Vec<(usize, usize, TagResult)>>();
    let ((), mut results) = futures::join!(listings, outcomes);
    results.sort_by_key(|(job, order, _)| (*job, *order));
    results.into_iter().map(|(_, _, result)| result).collect()
}

/// The two stores of a job, and what is known of the target.
struct Sides<'a> {
    source: &'a dyn Store,
    target: &'a dyn Store,
    known: &'a TargetKnowledge,
}

/// What a job knows of its target repository before looking at any tag.
struct TargetKnowledge {
    /// The target's tags, listed up front when the target has never been seen (no tag cache
    /// entries): a tag absent from them needs no `HEAD` on either side. `None` when not listed
    /// (a warm run asks tag by tag, each `HEAD` conditional) or the listing failed.
    tags: Option<std::collections::HashSet<String>>,
    /// Whether the target repository had no tags, asked once per job and only when needed.
    is_new: OnceCell<bool>,
}

impl TargetKnowledge {
    async fn gather(target: &dyn Store) -> TargetKnowledge {
        let is_new = OnceCell::new();
        if target.tags_known() {
            return TargetKnowledge { tags: None, is_new };
        }
        let tags = match target.list_tags().await {
            Ok(tags) => Some(tags.into_iter().collect::<std::collections::HashSet<_>>()),
            Err(error) if error.is_not_found() => Some(Default::default()),
            Err(_) => None,
        };
        if let Some(tags) = &tags {
            let _ = is_new.set(tags.is_empty());
        }
        TargetKnowledge { tags, is_new }
    }

    /// The target surely lacks `tag` (it was not in the up-front listing).
    fn lacks(&self, tag: &str) -> bool {
        self.tags.as_ref().is_some_and(|tags| !tags.contains(tag))
    }
}

async fn sync_tag(job: &SyncJob, sides: &Sides<'_>, tag: &str, copier: &Copier, options: &SyncOptions) -> TagResult {
    let (source, target) = (sides.source, sides.target);
    let mut result = TagResult {
        source: source.to_string(),
        target: target.to_string(),
        tag: tag.to_owned(),
        digest: None,
        source_digest: None,
        action: Action::Failed,
        bytes: 0,
        error: None,
    };
    match plan_and_copy(job, sides, tag, copier, options, &mut result).await {
        Ok(action) => result.action = action,
        Err(error) => {
            tracing::info!(source = %result.source, tag, error = %error, "tag failed");
            result.error = Some(chain(error.as_ref()));
        }
    }
    result
}

/// One `HEAD` on each side decides, sent together. A tag the target surely lacks is fetched
/// from the source at once instead (the copy needs its bytes anyway). A platform subset of an
/// index also needs the source's bytes to know the digest it makes.
async fn plan_and_copy(
    job: &SyncJob,
    sides: &Sides<'_>,
    tag: &str,
    copier: &Copier,
    options: &SyncOptions,
    result: &mut TagResult,
) -> Result<Action, Box<dyn std::error::Error + Send + Sync>> {
    let (source, target) = (sides.source, sides.target);
    let lacks = sides.known.lacks(tag);
    let (current, upstream, mut fetched) = if lacks && !options.dry_run {
        // By tag, the bytes are checked against the digest the registry claims for them.
        let manifest = source.get_manifest(tag).await?;
        (None, manifest.descriptor(), Some(manifest))
    } else if lacks {
        // A dry run needs no bytes, and a `GET` counts against Docker Hub's pull limit where a
        // `HEAD` does not.
        (None, source.resolve(tag).await?, None)
    } else {
        // Both sides at once: the two registries answer in parallel.
        let (current, upstream) = futures::join!(target.resolve(tag), source.resolve(tag));
        let current = match current {
            Ok(descriptor) => Some(descriptor.digest().clone()),
            Err(error) if error.is_not_found() => None,
            Err(error) => return Err(error.into()),
        };
        (current, upstream?, None)
    };
    let upstream_digest = upstream.digest().clone();
    result.source_digest = Some(upstream_digest.clone());
    if fetched.is_none() && !job.platforms.is_empty() && media_type::is_index(upstream.media_type().as_ref()) {
        fetched = Some(source.get_manifest(upstream_digest.as_ref()).await?);
    }
    let wanted = match &fetched {
        Some(manifest) if !job.platforms.is_empty() => {
            airlock_copy::select_platforms(manifest.clone(), &job.platforms, &format!("{source}:{tag}"))?.digest().clone()
        }
        _ => upstream_digest.clone(),
    };
    result.digest = Some(wanted.clone());
    if current.as_ref() == Some(&wanted) {
        return Ok(Action::UpToDate);
    }
    if options.dry_run {
        return Ok(Action::WouldCopy);
    }
    let mut copy_options = CopyOptions::new();
    copy_options.platforms = job.platforms.clone();
    copy_options.referrers = job.referrers;
    // A mirror follows upstream: a moved tag moves here too.
    copy_options.force = true;
    // The target's tag points elsewhere or nowhere: no need to ask about the manifest again.
    copy_options.probe_target = false;
    if current.is_none() {
        // A repository without tags holds nothing worth asking about, blob by blob.
        let target_is_new = sides
            .known
            .is_new
            .get_or_init(|| async {
                match target.list_tags().await {
                    Ok(tags) => tags.is_empty(),
                    Err(error) => error.is_not_found(),
                }
            })
            .await;
        copy_options.target_is_new = *target_is_new;
    }
    let manifest = match fetched {
        Some(manifest) => manifest,
        None => source.get_manifest(upstream_digest.as_ref()).await?,
    };
    let report = copier.copy_manifest(&copy_options, source, manifest, tag, target, &[tag.to_owned()]).await?;
    result.bytes = report.bytes_copied;
    result.digest = Some(report.digest);
    Ok(Action::Copied)
}

fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let message = inner.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        cause = inner.source();
    }
    text
}

/// `sha256-<64 hex>` or `sha512-<128 hex>`: the distribution-spec referrers tag schema.
fn is_referrers_tag(tag: &str) -> bool {
    let hex = |text: &str, len: usize| text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit());
    match tag.split_once('-') {
        Some(("sha256", rest)) => hex(rest, 64),
        Some(("sha512", rest)) => hex(rest, 128),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn referrers_tags_are_recognised() {
        assert!(super::is_referrers_tag(&format!("sha256-{}", "a".repeat(64))));
        assert!(!super::is_referrers_tag("sha256-abc"));
        assert!(!super::is_referrers_tag("1.0-sha256"));
    }
}
