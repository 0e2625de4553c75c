//! Manifests and indexes kept as the bytes received, parsed only to find their children.

use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::digest::digest_of;
use crate::media_type::{self, DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED};
use crate::platform::PlatformSpec;

/// Why bytes were refused as a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Docker schema 1 is deprecated and unsigned content cannot be converted without changing
    /// its digest.
    #[error("Docker schema 1 manifests are not supported; re-push the image with a current client (schema 2 or OCI)")]
    Schema1,
    /// Not JSON, or JSON of the wrong shape.
    #[error("malformed manifest ({media_type}): {reason}")]
    Malformed {
        /// The media type it claimed or was guessed as.
        media_type: String,
        /// What the parser said.
        reason: String,
    },
    /// The media type is not a manifest type airlock reads.
    #[error("unsupported manifest media type `{0}`")]
    UnsupportedMediaType(String),
    /// The bytes do not hash to the digest they were fetched by.
    #[error("manifest digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// The digest of the bytes received.
        actual: Digest,
    },
}

/// A manifest or index: its exact bytes, their digest and media type, and its parsed children.
#[derive(Debug, Clone)]
pub struct Manifest {
    bytes: Vec<u8>,
    media_type: String,
    digest: Digest,
    kind: ManifestKind,
}

/// What a manifest points at.
// One per manifest held, never in a hot collection: boxing the config would only add a pointer hop.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ManifestKind {
    /// An image manifest (or an artifact manifest using the image manifest format).
    Image {
        /// The config blob.
        config: Descriptor,
        /// The layer blobs, in order.
        layers: Vec<Descriptor>,
        /// The manifest this one refers to (signatures, SBOMs, attestations).
        subject: Option<Descriptor>,
        /// The artifact type, or the config media type when none is set and the config is not an
        /// image config.
        artifact_type: Option<String>,
    },
    /// An index of manifests.
    Index {
        /// The manifests listed.
        manifests: Vec<Descriptor>,
        /// The manifest this index refers to.
        subject: Option<Descriptor>,
        /// The artifact type, if any.
        artifact_type: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
    config: Option<serde::de::IgnoredAny>,
}

impl Manifest {
    /// Parses `bytes`, hashing them with the algorithm of `expected` and refusing them when the
    /// digest differs. `content_type` is the media type the server or folder claimed.
    pub fn parse_verified(bytes: Vec<u8>, content_type: Option<&str>, expected: &Digest) -> Result<Self, ManifestError> {
        let actual = digest_of(&bytes, Some(expected));
        if &actual != expected {
            return Err(ManifestError::DigestMismatch { expected: expected.clone(), actual });
        }
        Self::parse_with_digest(bytes, content_type, actual)
    }

    /// Parses `bytes` whose digest is not known in advance (fetched by tag); it is computed here.
    pub fn parse(bytes: Vec<u8>, content_type: Option<&str>) -> Result<Self, ManifestError> {
        let digest = digest_of(&bytes, None);
        Self::parse_with_digest(bytes, content_type, digest)
    }

    fn parse_with_digest(bytes: Vec<u8>, content_type: Option<&str>, digest: Digest) -> Result<Self, ManifestError> {
        let content_type = content_type.map(|c| c.split(';').next().unwrap_or(c).trim());
        if matches!(content_type, Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED)) {
            return Err(ManifestError::Schema1);
        }
        let malformed = |media_type: &str, reason: String| ManifestError::Malformed { media_type: media_type.to_owned(), reason };
        let probe: Probe = serde_json::from_slice(&bytes).map_err(|e| malformed(content_type.unwrap_or("unknown type"), e.to_string()))?;
        if probe.schema_version == Some(1) {
            return Err(ManifestError::Schema1);
        }
        let media_type = match (probe.media_type, content_type) {
            (Some(declared), _) => declared,
            (None, Some(claimed)) if media_type::is_manifest(claimed) => claimed.to_owned(),
            (None, _) if probe.manifests.is_some() => media_type::OCI_INDEX.to_owned(),
            (None, _) if probe.config.is_some() => media_type::OCI_MANIFEST.to_owned(),
            (None, claimed) => return Err(malformed(claimed.unwrap_or("unknown type"), "neither `manifests` nor `config` is present".into())),
        };
        if matches!(media_type.as_str(), DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED) {
            return Err(ManifestError::Schema1);
        }
        let kind = if media_type::is_index(&media_type) {
            let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| malformed(&media_type, e.to_string()))?;
            ManifestKind::Index {
                manifests: index.manifests().clone(),
                subject: index.subject().clone(),
                artifact_type: index.artifact_type().as_ref().map(|t| t.to_string()),
            }
        } else if media_type::is_manifest(&media_type) {
            let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| malformed(&media_type, e.to_string()))?;
            // Image-spec: without `artifactType`, an artifact is typed by its config's media type;
            // an ordinary image config makes it an image, not an artifact.
            let config_type = manifest.config().media_type().to_string();
            let is_image_config = matches!(
                config_type.as_str(),
                "application/vnd.oci.image.config.v1+json" | "application/vnd.docker.container.image.v1+json"
            );
            let artifact_type = manifest.artifact_type().as_ref().map(|t| t.to_string());
            ManifestKind::Image {
                artifact_type: artifact_type.or_else(|| (!is_image_config).then_some(config_type)),
                config: manifest.config().clone(),
                layers: manifest.layers().clone(),
                subject: manifest.subject().clone(),
            }
        } else {
            return Err(ManifestError::UnsupportedMediaType(media_type));
        };
        Ok(Manifest { bytes, media_type, digest, kind })
    }

    /// The exact bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The media type, from the document itself when it declares one.
    pub fn media_type(&self) -> &str {
        &self.media_type
    }

    /// The digest of [`Manifest::bytes`].
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// What it points at.
    pub fn kind(&self) -> &ManifestKind {
        &self.kind
    }

    /// Whether this is an index.
    pub fn is_index(&self) -> bool {
        matches!(self.kind, ManifestKind::Index { .. })
    }

    /// The descriptor of this manifest, as a parent or a referrers list would hold it.
    pub fn descriptor(&self) -> Descriptor {
        let mut descriptor = Descriptor::new(self.media_type.as_str().into(), self.bytes.len() as u64, self.digest.clone());
        let (artifact_type, annotations) = self.artifact_info();
        if let Some(artifact_type) = artifact_type {
            descriptor.set_artifact_type(Some(artifact_type.as_str().into()));
        }
        descriptor.set_annotations(annotations);
        descriptor
    }

    /// The subject this manifest refers to, if any.
    pub fn subject(&self) -> Option<&Descriptor> {
        match &self.kind {
            ManifestKind::Image { subject, .. } | ManifestKind::Index { subject, .. } => subject.as_ref(),
        }
    }

    fn artifact_info(&self) -> (Option<String>, Option<std::collections::HashMap<String, String>>) {
        #[derive(Deserialize)]
        struct Annotations {
            annotations: Option<std::collections::HashMap<String, String>>,
        }
        let annotations = serde_json::from_slice::<Annotations>(&self.bytes).ok().and_then(|a| a.annotations);
        let artifact_type = match &self.kind {
            ManifestKind::Image { artifact_type, .. } | ManifestKind::Index { artifact_type, .. } => artifact_type.clone(),
        };
        (artifact_type, annotations)
    }
}

/// Builds a new index holding only the entries whose platform matches one of `platforms`.
///
/// Every other field of the original index is kept; the result is a new document, so its digest
/// differs from the source's. Returns `None` when no entry matches.
pub fn filter_index(index: &Manifest, platforms: &[PlatformSpec]) -> Result<Option<Vec<u8>>, ManifestError> {
    let malformed = |reason: String| ManifestError::Malformed { media_type: index.media_type.clone(), reason };
    let mut document: serde_json::Value = serde_json::from_slice(&index.bytes).map_err(|e| malformed(e.to_string()))?;
    let entries = document
        .get_mut("manifests")
        .and_then(|m| m.as_array_mut())
        .ok_or_else(|| malformed("an index needs a `manifests` list".into()))?;
    entries.retain(|entry| {
        let platform = entry.get("platform").and_then(|p| serde_json::from_value(p.clone()).ok());
        platform.is_some_and(|platform| platforms.iter().any(|spec| spec.matches(&platform)))
    });
    if entries.is_empty() {
        return Ok(None);
    }
    serde_json::to_vec(&document).map(Some).map_err(|e| malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYER: &str = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";

    fn image(media_type: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{media_type}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{LAYER}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{LAYER}","size":7}}]}}"#
        )
    }

    #[test]
    fn bytes_are_kept_exactly() {
        let text = format!("{}\n\n", image(media_type::OCI_MANIFEST)).replace(",", " ,");
        let manifest = Manifest::parse(text.clone().into_bytes(), None).unwrap();
        assert_eq!(manifest.bytes(), text.as_bytes());
        assert_eq!(manifest.digest(), &digest_of(text.as_bytes(), None));
        let ManifestKind::Image { layers, .. } = manifest.kind() else { panic!() };
        assert_eq!(layers[0].size(), 7);
    }

    #[test]
    fn docker_and_structural_types() {
        let docker = Manifest::parse(image(media_type::DOCKER_MANIFEST).into_bytes(), Some("text/plain")).unwrap();
        assert_eq!(docker.media_type(), media_type::DOCKER_MANIFEST);
        let bare = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(Manifest::parse(bare.into(), None).unwrap().media_type(), media_type::OCI_INDEX);
    }

    #[test]
    fn schema1_is_refused_clearly() {
        let err = Manifest::parse(br#"{"schemaVersion":1,"name":"x"}"#.to_vec(), None).unwrap_err();
        assert!(err.to_string().contains("schema 1"));
        let err = Manifest::parse(b"{}".to_vec(), Some(DOCKER_SCHEMA1_SIGNED)).unwrap_err();
        assert!(matches!(err, ManifestError::Schema1));
    }

    #[test]
    fn digest_mismatch_is_refused() {
        let bytes = image(media_type::OCI_MANIFEST).into_bytes();
        let wrong: Digest = LAYER.parse().unwrap();
        assert!(matches!(Manifest::parse_verified(bytes, None, &wrong), Err(ManifestError::DigestMismatch { .. })));
    }

    #[test]
    fn malformed_json_says_so() {
        let err = Manifest::parse(b"{not json".to_vec(), Some(media_type::OCI_MANIFEST)).unwrap_err();
        assert!(err.to_string().starts_with("malformed manifest (application/vnd.oci.image.manifest.v1+json)"), "{err}");
    }

    #[test]
    fn index_filtering_keeps_other_fields() {
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","annotations":{{"a":"b"}},"manifests":[
            {{"mediaType":"{m}","digest":"{LAYER}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"mediaType":"{m}","digest":"{LAYER}","size":2,"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#,
            media_type::OCI_INDEX,
            m = media_type::OCI_MANIFEST
        );
        let manifest = Manifest::parse(index.into_bytes(), None).unwrap();
        let filtered = filter_index(&manifest, &["linux/arm64".parse().unwrap()]).unwrap().unwrap();
        let filtered = Manifest::parse(filtered, None).unwrap();
        let ManifestKind::Index { manifests, .. } = filtered.kind() else { panic!() };
        assert_eq!(manifests.len(), 1);
        assert_eq!(manifests[0].size(), 2);
        assert!(String::from_utf8_lossy(filtered.bytes()).contains(r#""annotations":{"a":"b"}"#));
        assert!(filter_index(&manifest, &["linux/s390x".parse().unwrap()]).unwrap().is_none());
    }
}
