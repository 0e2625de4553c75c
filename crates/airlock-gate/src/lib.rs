//! Gated imports: an upstream image is staged, tested and only then promoted to the repository
//! teams build from, under a stable tag and a unique (rollback) tag; every run is recorded.
//!
//! [`config`] reads `airlock.yaml`; [`pipeline`] runs an import (stage → [`gates`] → promote →
//! report → dependents) and rollbacks; [`runs`] is the SQLite run history; [`watch`] triggers
//! imports on upstream changes, timers and registry notifications.

#![warn(missing_docs)]

pub mod config;
pub mod gate_repo;
pub mod gates;
pub mod mirror;
pub mod pipeline;
pub mod policy;
pub mod runs;
pub mod signature;
pub mod watch;

pub use config::{Config, Import};
pub use pipeline::{open_store, Outcome, Pipeline};
pub use airlock_oci::time;
pub use runs::{Runs, Trigger};
