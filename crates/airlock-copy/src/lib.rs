//! The copy engine: copies a manifest or index and everything beneath it (and, unless told
//! not to, the referrers of each manifest: signatures, SBOMs, attestations) from any
//! [`Store`] to any [`Store`], byte for byte.
//!
//! The engine never learns what a store is. It asks the cheapest question first:
//! the target has it → skip; the target can mount it from the source's repository → mount;
//! otherwise stream it, with the size and digest checked in flight by the target's `put_blob`.
//!
//! Order is the safety property: blobs before the manifest that lists them, children before
//! their index, the manifest by digest, then its referrers, and the tags last. A copy that fails
//! or is killed at any point leaves no tag pointing at missing content; a rerun skips what
//! already arrived.
//!
//! One [`Copier`] is one run: a blob shared by many images is moved once per target, and one
//! concurrency budget bounds every transfer of the run.

#![warn(missing_docs)]

mod engine;
mod error;

pub use engine::{select_platforms, BlobAction, CopyOptions, CopyReport, Copier, NoProgress, Progress};
pub use error::{CopyError, PlatformMiss, TagConflict};

#[cfg(test)]
mod tests;
