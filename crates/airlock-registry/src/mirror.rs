//! The hook that makes `airlock serve` a gated pull-through mirror (`mirrors:` in serve.yaml).
//!
//! The registry knows nothing of gates: it asks a [`Mirror`] where a client's repository lives
//! in storage and whether a manifest may be read yet. The implementation (in `airlock-gate`,
//! wired by the CLI) imports what is asked for through the gates, and only what they promoted
//! ever reaches the storage repositories the mirror maps clients to. Its own staging and
//! promotion go to a second, private listener on loopback over the same storage, which answers
//! only the credential the mirror holds ([`crate::Registry::private_credential`]).

use async_trait::async_trait;

use crate::Storage;

/// Whether a manifest may be read from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Read it from storage as usual (what is there was promoted by the gates).
    Serve,
    /// Not servable (yet): `404 MANIFEST_UNKNOWN` with this message, which says why (being
    /// checked by the gates in run N, refused by a gate, upstream unreachable) and what to do.
    Unknown(String),
}

/// A gated pull-through mirror, as the registry sees it.
#[async_trait]
pub trait Mirror: Send + Sync {
    /// The storage repository holding what the mirror serves for the client's repository
    /// `name` (containerd names the upstream with `?ns=`); `Err(message)` when no mirror serves
    /// it (`404 NAME_UNKNOWN`).
    fn route(&self, name: &str, ns: Option<&str>) -> Result<String, String>;
    /// Whether the mirror serves `reference` (a tag or a digest) of the mirrored `repository`
    /// (as [`Mirror::route`] named it) at all; `Err(message)` is a `404 MANIFEST_UNKNOWN`.
    fn admits(&self, repository: &str, reference: &str) -> Result<(), String>;
    /// Told that a manifest was found in storage and served: the mirror may look upstream for a
    /// newer one, in the background (the request does not wait).
    fn served(&self, repository: &str, reference: &str);
    /// Asked when storage lacks the manifest: the mirror may import it through the gates
    /// first, for a while. Called only on a miss, so a hit costs one storage lookup.
    async fn missing(&self, storage: &Storage, repository: &str, reference: &str) -> Answer;
}
