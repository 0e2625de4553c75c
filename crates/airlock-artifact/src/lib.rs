//! OCI artifacts (seed 002): files pushed as ORAS pushes them, indexes of artifacts per platform
//! and disk type, the choice of the one to pull, and the pull itself: streamed to disk, size and
//! digest verified, resumable, decompressed on request; and Helm charts kept in registries ([`helm`]).

#![warn(missing_docs)]

pub mod helm;
pub mod pull;
pub mod push;
pub mod select;

use airlock_oci::{Descriptor, Manifest, ManifestKind};
use airlock_store::Store;

pub use select::{Mode, Offer, Wanted};

/// ORAS's artifact type when none is given.
pub const DEFAULT_ARTIFACT_TYPE: &str = "application/vnd.unknown.artifact.v1";
/// ORAS's layer media type for a file when none is given.
pub const DEFAULT_FILE_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// The annotation that names a layer's file.
pub const TITLE: &str = "org.opencontainers.image.title";
/// The annotation Ironic reads for the disk format.
pub const DISKTYPE: &str = "disktype";

/// Why an artifact operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] airlock_store::Error),
    /// A tag the URL names does not exist.
    #[error("image not found: `{repository}` has no tag `{tag}`{}", if .available.is_empty() { " (it has no tags)".to_owned() } else { format!("; its tags: {}", .available.join(", ")) })]
    TagNotFound {
        /// The repository.
        repository: String,
        /// The tag asked for.
        tag: String,
        /// The tags it has.
        available: Vec<String>,
    },
    /// Nothing on offer fits.
    #[error("no artifact in `{reference}` fits {wanted}; on offer: {offer}")]
    NoMatch {
        /// The reference.
        reference: String,
        /// What was asked for.
        wanted: String,
        /// What there is, and why each was refused.
        offer: String,
    },
    /// The artifact is not a single file.
    #[error("`{reference}` is not a single-file artifact: {reason}")]
    NotSingleFile {
        /// The reference.
        reference: String,
        /// Why.
        reason: String,
    },
    /// A downloaded file did not verify; the partial file was removed.
    #[error("`{file}` does not match {expected}: {reason}; the partial file was removed")]
    Verification {
        /// The file.
        file: String,
        /// The digest expected.
        expected: String,
        /// What was wrong.
        reason: String,
    },
    /// A local file could not be read or written.
    #[error("{action} `{path}`: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A chart repository could not be read.
    #[error("chart repository {repo}")]
    ChartRepository {
        /// The repository's URL.
        repo: String,
        /// What failed.
        #[source]
        source: airlock_store::Error,
    },
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
}

impl ArtifactError {
    /// A fix to show the user, when one is known.
    pub fn hint(&self) -> Option<String> {
        use airlock_store::ErrorKind;
        match self {
            ArtifactError::Store(store) => store.hint(),
            ArtifactError::ChartRepository { repo, source } => {
                let last = match source.kind() {
                    ErrorKind::Retried { last, .. } => last,
                    _ => source,
                };
                match last.kind() {
                    ErrorKind::Http { status: 404, .. } => Some(format!("`{repo}` should be the URL `helm repo add` takes, serving `index.yaml`")),
                    ErrorKind::Http { status: 401 | 403, .. } => {
                        Some(
                            "airlock sends the credentials stored for the repository's host (`auths` of `--authfile`, `REGISTRY_AUTH_FILE`, podman's auth.json or Docker's config.json, \
                             as `airlock login` writes them), over HTTPS or to a loopback host only"
                                .into(),
                        )
                    }
                    ErrorKind::Transport { .. } => last.hint().filter(|hint| hint.contains("--ca-cert")).or_else(|| Some(format!("is `{repo}` reachable from here?"))),
                    _ => last.hint(),
                }
            }
            _ => None,
        }
    }
}

impl ArtifactError {
    fn io(action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ArtifactError {
        let path = path.display().to_string();
        move |source| ArtifactError::Io { action, path, source }
    }
}

/// What an offer is, read from a manifest: its platform from the index entry or, as ORAS's
/// `--artifact-platform` writes it, from its config; its disktype from the index entry's or the
/// manifest's annotations; its files from its layers.
pub async fn describe(store: &dyn Store, entry: Option<&Descriptor>, manifest: &Manifest) -> Result<Offer, ArtifactError> {
    let (config, layers) = match manifest.kind() {
        ManifestKind::Image { config, layers, .. } => (Some(config.clone()), layers.clone()),
        ManifestKind::Index { manifests, .. } => (None, manifests.clone()),
    };
    let parsed: serde_json::Value = serde_json::from_slice(manifest.bytes()).unwrap_or_default();
    let entry_platform = entry.and_then(|e| e.platform().clone()).map(|p| {
        let arch = p.architecture().to_string();
        let mut text = format!("{}/{arch}", p.os());
        if let Some(variant) = p.variant() {
            text.push_str(&format!("/{variant}"));
        }
        (text, arch)
    });
    let platform = match entry_platform {
        Some(platform) => Some(platform),
        None => match &config {
            Some(config) if config.media_type().to_string() == "application/vnd.oci.image.config.v1+json" => {
                let bytes = airlock_store::verify::read_small(store, config, 64 * 1024).await?;
                let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                match (value["os"].as_str(), value["architecture"].as_str()) {
                    (Some(os), Some(arch)) => Some((format!("{os}/{arch}"), arch.to_owned())),
                    _ => None,
                }
            }
            _ => None,
        },
    };
    let disktype = entry
        .and_then(|e| e.annotations().as_ref())
        .and_then(|a| a.get(DISKTYPE).cloned())
        .or_else(|| parsed["annotations"][DISKTYPE].as_str().map(str::to_owned));
    let single = (layers.len() == 1).then(|| &layers[0]);
    Ok(Offer {
        digest: manifest.digest().to_string(),
        platform: platform.as_ref().map(|(p, _)| p.clone()),
        architecture: platform.map(|(_, a)| a),
        disktype,
        layers: layers.len(),
        size: single.map(|l| l.size()),
        title: single.and_then(|l| l.annotations().as_ref()).and_then(|a| a.get(TITLE).cloned()),
    })
}
