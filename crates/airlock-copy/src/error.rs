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
    #[error("tag `{tag}` in {target} points at {existing}, not {incoming}")]
    TagExists {
        /// The tag.
        tag: String,
        /// The destination store.
        target: String,
        /// What it points at now.
        existing: Digest,
        /// What the copy would point it at.
        incoming: Digest,
    },
    /// No index entry matched the platforms asked for.
    #[error("no manifest for platform {wanted} in {source_ref} (it has: {available})")]
    NoPlatform {
        /// The source reference.
        source_ref: String,
        /// The platforms asked for.
        wanted: String,
        /// The platforms the index has.
        available: String,
    },
    /// A failure already reported by the task that first met it (a blob shared by two images).
    #[error(transparent)]
    Shared(Arc<CopyError>),
}

impl CopyError {
    /// A fix to show the user, when one is known.
    pub fn hint(&self) -> Option<String> {
        match self {
            CopyError::Store(error) => error.hint(),
            CopyError::TagExists { .. } => Some("pass `--force` to move the tag".into()),
            CopyError::NoPlatform { .. } => Some("list the platforms with `airlock inspect`".into()),
            CopyError::Shared(inner) => inner.hint(),
        }
    }
}
