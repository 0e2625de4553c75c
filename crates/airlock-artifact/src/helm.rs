//! Helm charts kept in OCI registries, as `helm push` stores them (Helm 3.8+): one image
//! manifest whose config is the chart's metadata (`application/vnd.cncf.helm.config.v1+json`)
//! and whose chart archive is the layer `application/vnd.cncf.helm.chart.content.v1.tar+gzip`
//! (a provenance file may ride beside it). airlock fetches a chart itself, with its own
//! credentials, TLS settings, retries and digest checks, so that the user's `helm` only renders
//! a local archive.

use std::path::{Path, PathBuf};

use airlock_oci::{Digest, ManifestKind, Reference};
use airlock_store::Store;
use serde::Serialize;

use crate::ArtifactError;

/// The config media type of a chart.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.cncf.helm.config.v1+json";
/// The media type of the chart archive.
pub const CHART_MEDIA_TYPE: &str = "application/vnd.cncf.helm.chart.content.v1.tar+gzip";
/// The chart layer's media type before Helm 3.8 (still read by Helm).
const LEGACY_CHART_MEDIA_TYPE: &str = "application/tar+gzip";
/// A chart's metadata is a few hundred bytes; anything past this is not one.
const CONFIG_LIMIT: u64 = 1 << 20;

/// A chart fetched from a registry.
#[derive(Debug, Clone, Serialize)]
pub struct PulledChart {
    /// The reference as given, with the tag that was chosen when none was given.
    pub reference: String,
    /// The chart manifest's digest.
    pub digest: Digest,
    /// The chart's name (from its metadata).
    pub name: String,
    /// The chart's version (from its metadata).
    pub version: String,
    /// The archive on disk, `NAME-VERSION.tgz`.
    #[serde(skip)]
    pub file: PathBuf,
}

#[derive(serde::Deserialize)]
struct ChartMetadata {
    name: String,
    version: String,
}

/// Fetches the chart `reference` names into `dir`, verified. Without tag or digest, the highest
/// released semantic version among the repository's tags is taken, as `helm pull` does without
/// `--version`.
pub async fn pull_chart(store: &dyn Store, reference: &Reference, dir: &Path) -> Result<PulledChart, ArtifactError> {
    let (reference, target) = match (reference.digest(), reference.tag()) {
        (Some(digest), _) => (reference.clone(), digest.to_string()),
        (None, Some(tag)) => (reference.clone(), tag.to_owned()),
        (None, None) => {
            let tags = store.list_tags().await?;
            let newest = newest_version(&tags).ok_or_else(|| {
                ArtifactError::Invalid(format!(
                    "`{}`: no tag is a semantic version (tags: {}); name the chart version, as in `{}:1.2.3`",
                    reference.repository_key(),
                    if tags.is_empty() { "none".to_owned() } else { tags.join(", ") },
                    reference.repository_key()
                ))
            })?;
            (reference.with_tag(&newest), newest)
        }
    };
    let text = reference.to_string();
    let manifest = store.get_manifest(&target).await?;
    let not_a_chart = |what: String| ArtifactError::Invalid(format!("`{text}` is not a Helm chart: {what}; charts are pushed with `helm push CHART.tgz oci://…`"));
    let ManifestKind::Image { config, layers, .. } = manifest.kind() else {
        return Err(not_a_chart("it is an index".to_owned()));
    };
    if config.media_type().as_ref() != CONFIG_MEDIA_TYPE {
        return Err(not_a_chart(format!("its config is `{}`, not `{CONFIG_MEDIA_TYPE}`", config.media_type().as_ref())));
    }
    let chart_layers: Vec<_> = layers.iter().filter(|l| [CHART_MEDIA_TYPE, LEGACY_CHART_MEDIA_TYPE].contains(&l.media_type().as_ref())).collect();
    let [layer] = chart_layers.as_slice() else {
        return Err(not_a_chart(format!("it has {} layers of type `{CHART_MEDIA_TYPE}`, not one", chart_layers.len())));
    };
    let metadata = airlock_store::verify::read_small(store, config, CONFIG_LIMIT).await?;
    let metadata: ChartMetadata = serde_json::from_slice(&metadata).map_err(|e| not_a_chart(format!("its metadata ({}) does not parse: {e}", config.digest())))?;
    let pulled = crate::pull::download(store, layer, dir, false).await?;
    // `helm template` tells a packaged chart by its name; the metadata names the file as
    // `helm pull` does, with nothing that could leave `dir`.
    let safe = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || "._+-".contains(c) { c } else { '_' }).collect::<String>();
    let file = dir.join(format!("{}-{}.tgz", safe(&metadata.name), safe(&metadata.version)));
    std::fs::rename(&pulled.file, &file).map_err(ArtifactError::io("cannot rename to", &file))?;
    Ok(PulledChart { reference: text, digest: manifest.digest().clone(), name: metadata.name, version: metadata.version, file })
}

/// The highest semantic version among `tags`, pre-releases left out as Helm's `*` leaves them
/// (Helm writes a version's `+` as `_` in its tag).
fn newest_version(tags: &[String]) -> Option<String> {
    tags.iter()
        .filter_map(|tag| semver::Version::parse(&tag.replace('_', "+")).ok().map(|v| (v, tag)))
        .filter(|(version, _)| version.pre.is_empty())
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, tag)| tag.clone())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_newest_version_is_semantic_not_lexical() {
        let tags = |list: &[&str]| list.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert_eq!(super::newest_version(&tags(&["0.9.0", "0.10.0", "latest", "0.11.0-rc.1"])).as_deref(), Some("0.10.0"));
        assert_eq!(super::newest_version(&tags(&["1.0.0", "1.0.1_build.5"])).as_deref(), Some("1.0.1_build.5"), "`_` stands for `+`");
        assert_eq!(super::newest_version(&tags(&["latest", "stable"])), None);
    }
}
