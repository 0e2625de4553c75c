//! OCI vocabulary for airlock: references, digests, media types, descriptors and manifests.
//!
//! This crate is pure: no I/O, no async. Everything that crosses a network or a disk is parsed
//! here once, at the edge, into checked types (`Reference`, `Digest`, `Manifest`), so the layers
//! above never re-validate strings.
//!
//! Manifests are kept as the raw bytes received. They are parsed to find their children but
//! never re-serialised, because a single changed byte changes the digest that signatures,
//! lock files and users rely on.
//!
//! ```
//! use airlock_oci::Reference;
//! let reference: Reference = "alpine".parse().unwrap();
//! assert_eq!(reference.to_string(), "docker.io/library/alpine:latest");
//! ```

#![warn(missing_docs)]

mod digest;
mod manifest;
pub mod media_type;
mod platform;
mod reference;

pub mod time;

pub use digest::{DigestError, DigestHasher, parse_digest, digest_of};
pub use manifest::{Manifest, ManifestError, ManifestKind, filter_index};
pub use oci_spec::image::{Descriptor, Digest, DigestAlgorithm, MediaType, Platform};
pub use platform::{PlatformError, PlatformSpec};
pub use reference::{validate_repository, validate_tag, LayoutRef, Reference, ReferenceError, RegistryRef, RootRef, DEFAULT_TAG, DOCKER_HUB};
