//! Copy errors: a store error, or a refusal of the engine's own.

use std::sync::Arc;

use airlock_oci::Digest;

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A store failed; its message names the store and the content.
    #[error(transparent)]
    Store(#[from] airlock_store::Error),
    /// The destination tag points at other content and `force` was not given.
    #[error("tag `{}` in {} points at {}, not {}", .0.tag, .0.target, .0.existing, .0.incoming)]
    TagExists(Box<TagConflict>),
    /// No index entry matched the platforms asked for.
    #[error("no manifest for platform {} in {} (it has: {})", .0.wanted, .0.source_ref, .0.available)]
    NoPlatform(Box<PlatformMiss>),
    /// A failure already reported by the task that first met it (a blob shared by two images).
    #[error(transparent)]
    Shared(Arc<CopyError>),
}

impl CopyError {
    /// A fix to show the user, when one is known.
    pub fn hint(&self) -> Option<String> {
        match self {
            CopyError::Store(error) => error.hint(),
            CopyError::TagExists(_) => Some("pass `--force` to move the tag".into()),
            CopyError::NoPlatform(_) => Some("list the platforms with `airlock inspect`".into()),
            CopyError::Shared(inner) => inner.hint(),
        }
    }
}

/// A tag that a copy would move.
#[derive(Debug)]
pub struct TagConflict {
    /// The tag.
    pub tag: String,
    /// The destination store.
    pub target: String,
    /// What it points at now.
    pub existing: Digest,
    /// What the copy would point it at.
    pub incoming: Digest,
}

/// Platforms asked for that an index does not have.
#[derive(Debug)]
pub struct PlatformMiss {
    /// The source reference.
    pub source_ref: String,
    /// The platforms asked for.
    pub wanted: String,
    /// The platforms the index has.
    pub available: String,
}
