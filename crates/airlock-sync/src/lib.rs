//! Mirroring many repositories: choose tags with filters, compare digests, copy what changed.
//!
//! A sync is a list of [`SyncJob`]s (from the command line or a `sync.yaml`, see [`config`]).
//! For each job the source's tags are listed (unless the job names them), filtered, and each tag
//! planned by digest: a `HEAD` on each side, and a copy only when they differ. So a warm sync of
//! an unchanged mirror costs one `HEAD` per tag on each side, and mutable tags (`latest`) follow
//! upstream when it moves.
//!
//! Every tag is copied by [`airlock_copy::Copier`], which writes the tag last: a sync killed at
//! any moment leaves no tag pointing at missing content, and a rerun completes it. A failed tag
//! does not stop the others; each result says what happened to its tag.

#![warn(missing_docs)]

pub mod config;
pub mod filter;
mod run;

pub use filter::TagFilter;
pub use run::{run, Action, SyncJob, SyncOptions, SyncProgress, TagResult};
