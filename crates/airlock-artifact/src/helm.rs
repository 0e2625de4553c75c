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

/// Fetches the chart `reference` names into `dir`, verified. Without tag or digest, the tags
/// are versions (Helm writes a version's `+` as `_`) and the highest one `wanted` admits is
/// taken, as `helm pull --version` does.
pub async fn pull_chart(store: &dyn Store, reference: &Reference, wanted: &VersionWanted, dir: &Path) -> Result<PulledChart, ArtifactError> {
    let (reference, target) = match (reference.digest(), reference.tag()) {
        (Some(digest), _) => (reference.clone(), digest.to_string()),
        (None, Some(tag)) => (reference.clone(), tag.to_owned()),
        (None, None) => {
            let tags = store.list_tags().await?;
            let as_versions: Vec<String> = tags.iter().map(|tag| tag.replace('_', "+")).collect();
            let newest = wanted.newest(as_versions.iter().map(String::as_str).zip(&tags)).cloned().ok_or_else(|| {
                ArtifactError::Invalid(format!(
                    "`{}` has no tag that is {wanted} (tags: {}); name the chart version, as in `{}:1.2.3`",
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
    let file = dir.join(archive_name(&metadata.name, &metadata.version));
    std::fs::rename(&pulled.file, &file).map_err(ArtifactError::io("cannot rename to", &file))?;
    Ok(PulledChart { reference: text, digest: manifest.digest().clone(), name: metadata.name, version: metadata.version, file })
}

/// `helm template` tells a packaged chart by its name: `NAME-VERSION.tgz` as `helm pull` names
/// it, with nothing that could leave the folder it is written to.
fn archive_name(name: &str, version: &str) -> String {
    let safe = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || "._+-".contains(c) { c } else { '_' }).collect::<String>();
    format!("{}-{}.tgz", safe(name), safe(version))
}

/// A chart repository's `index.yaml`, as much of it as choosing and verifying a chart needs.
#[derive(serde::Deserialize)]
struct RepoIndex {
    #[serde(default)]
    entries: std::collections::BTreeMap<String, Vec<RepoEntry>>,
}

#[derive(serde::Deserialize)]
struct RepoEntry {
    version: String,
    #[serde(default)]
    urls: Vec<String>,
    /// The archive's SHA-256, in hex.
    digest: Option<String>,
}

/// An index is metadata, read whole to be parsed; the largest public ones are tens of MiB.
const INDEX_LIMIT: usize = 256 << 20;

/// Fetches chart `name` from the chart repository at `repo` (an HTTP(S) URL serving
/// `index.yaml`, as `helm repo add` takes) into `dir`: the highest version `wanted` admits,
/// streamed and checked against the SHA-256 the index gives. A chart the index gives no digest
/// for is refused: airlock takes nothing it cannot verify.
pub async fn pull_repo_chart(
    registries: &airlock_store::remote::Registries,
    repo: &str,
    name: &str,
    wanted: &VersionWanted,
    dir: &Path,
) -> Result<PulledChart, ArtifactError> {
    use futures::StreamExt as _;
    let base = reqwest::Url::parse(&format!("{}/", repo.trim_end_matches('/')))
        .map_err(|e| ArtifactError::Invalid(format!("`--repo {repo}`: not a URL: {e}")))?;
    let index_url = base.join("index.yaml").expect("a relative path joins");
    let unreadable = |source| ArtifactError::ChartRepository { repo: repo.to_owned(), source };
    let mut body = registries.get_url(index_url.as_str()).await.map_err(unreadable)?.bytes_stream();
    let mut text = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ArtifactError::Invalid(format!("{index_url}: the answer was cut: {}", e.without_url())))?;
        if text.len() + chunk.len() > INDEX_LIMIT {
            return Err(ArtifactError::Invalid(format!("{index_url}: larger than {} MiB; not a chart index", INDEX_LIMIT >> 20)));
        }
        text.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(text).map_err(|_| ArtifactError::Invalid(format!("{index_url}: not UTF-8 text; not a chart index")))?;
    let index: RepoIndex = serde_saphyr::from_str(&text).map_err(|e| ArtifactError::Invalid(format!("{index_url}: not a chart index: {e}")))?;
    let Some(versions) = index.entries.get(name) else {
        let mut names: Vec<&str> = index.entries.keys().map(String::as_str).collect();
        names.truncate(20);
        return Err(ArtifactError::Invalid(format!("no chart `{name}` in {repo}; it has: {}", if names.is_empty() { "none".to_owned() } else { names.join(", ") })));
    };
    let entry = wanted.newest(versions.iter().map(|entry| (entry.version.as_str(), entry))).ok_or_else(|| {
        let offered: Vec<&str> = versions.iter().map(|e| e.version.as_str()).take(20).collect();
        ArtifactError::Invalid(format!("chart `{name}` in {repo} has no {wanted}; versions: {}", offered.join(", ")))
    })?;
    let url = entry.urls.first().ok_or_else(|| ArtifactError::Invalid(format!("{index_url}: `{name}` {} lists no URL", entry.version)))?;
    let url = base.join(url).map_err(|e| ArtifactError::Invalid(format!("{index_url}: `{name}` {}: bad URL `{url}`: {e}", entry.version)))?;
    let expected = entry
        .digest
        .as_deref()
        .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
        .ok_or_else(|| ArtifactError::Invalid(format!("{index_url}: `{name}` {} has no SHA-256 `digest`; airlock does not take a chart it cannot verify", entry.version)))?;

    let mut file = crate::pull::PartialFile::open(dir, &archive_name(name, &entry.version), &expected, None)?;
    let body = registries.get_url(url.as_str()).await.map_err(unreadable)?.bytes_stream();
    file.append(body.map(|chunk| chunk.map_err(|e| ArtifactError::Invalid(format!("{url}: the answer was cut: {}", e.without_url())))))
        .await?;
    // A temporary file's name says less than where the bytes came from.
    let file = file.finish().map_err(|error| match error {
        ArtifactError::Verification { expected, reason, .. } => ArtifactError::Verification { file: url.to_string(), expected, reason },
        other => other,
    })?;
    Ok(PulledChart { reference: url.to_string(), digest: expected, name: name.to_owned(), version: entry.version.clone(), file })
}

/// Which chart versions a Helm-style `--version` admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionWanted {
    /// No version given: the highest release (pre-releases left out, as Helm's `*` leaves them).
    Newest,
    /// A plain version: that one (Helm reads `1.2.3` as exactly 1.2.3).
    Exact(semver::Version),
    /// A range (`^1.2`, `~1.2.3`, `>=1.0, <2`): the highest version in it.
    Range(semver::VersionReq),
}

impl VersionWanted {
    /// Reads `--version` as Helm does: a plain version is exact, anything else a range.
    pub fn parse(text: Option<&str>) -> Result<VersionWanted, ArtifactError> {
        let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(VersionWanted::Newest);
        };
        if let Ok(exact) = semver::Version::parse(text.trim_start_matches('v')) {
            return Ok(VersionWanted::Exact(exact));
        }
        semver::VersionReq::parse(text)
            .map(VersionWanted::Range)
            .map_err(|e| ArtifactError::Invalid(format!("`--version {text}`: neither a version nor a range (`1.2.3`, `^1.2`, `>=1.0, <2`): {e}")))
    }

    fn admits(&self, version: &semver::Version) -> bool {
        match self {
            VersionWanted::Newest => version.pre.is_empty(),
            VersionWanted::Exact(exact) => version.cmp_precedence(exact).is_eq(),
            VersionWanted::Range(range) => range.matches(version),
        }
    }

    /// The candidate with the highest admitted version.
    fn newest<'a, T>(&self, candidates: impl IntoIterator<Item = (&'a str, T)>) -> Option<T> {
        candidates
            .into_iter()
            .filter_map(|(text, item)| semver::Version::parse(text.trim_start_matches('v')).ok().map(|v| (v, item)))
            .filter(|(version, _)| self.admits(version))
            .max_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, item)| item)
    }
}

impl std::fmt::Display for VersionWanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionWanted::Newest => f.write_str("a release"),
            VersionWanted::Exact(version) => write!(f, "version {version}"),
            VersionWanted::Range(range) => write!(f, "a version in `{range}`"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::VersionWanted;

    #[test]
    fn a_chart_folder_is_packaged_as_helm_lays_it_out_and_a_hostile_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let chart = dir.path().join("chart");
        std::fs::create_dir_all(chart.join("templates")).unwrap();
        std::fs::create_dir_all(chart.join(".git")).unwrap();
        std::fs::write(chart.join(".git/config"), "not packaged").unwrap();
        std::fs::write(chart.join("templates/pod.yaml"), "kind: Pod\n").unwrap();
        std::fs::write(chart.join("Chart.yaml"), "apiVersion: v2\nname: web\nversion: 1.2.3\n").unwrap();
        let archive = super::package_chart(&chart, dir.path()).unwrap();
        assert_eq!(archive.file_name().unwrap(), "web-1.2.3.tgz");
        assert_eq!(super::archive_metadata(&archive).unwrap()["version"], "1.2.3");
        let mut names: Vec<String> = tar::Archive::new(flate2::read::GzDecoder::new(std::fs::File::open(&archive).unwrap()))
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["web/Chart.yaml", "web/templates/pod.yaml"]);
        for hostile in ["../../escape", "a/b", "Web", ""] {
            std::fs::write(chart.join("Chart.yaml"), format!("apiVersion: v2\nname: '{hostile}'\nversion: 1.0.0\n")).unwrap();
            let refused = super::package_chart(&chart, dir.path()).unwrap_err().to_string();
            assert!(refused.contains("is not a lowercase name"), "{hostile}: {refused}");
        }
    }

    fn newest(wanted: Option<&str>, versions: &[&'static str]) -> Option<&'static str> {
        VersionWanted::parse(wanted).unwrap().newest(versions.iter().map(|v| (*v, *v)))
    }

    #[test]
    fn versions_are_chosen_as_helm_chooses_them() {
        // Semantic, not lexical; pre-releases only when asked for; non-versions ignored.
        assert_eq!(newest(None, &["0.9.0", "0.10.0", "latest", "0.11.0-rc.1"]), Some("0.10.0"));
        assert_eq!(newest(None, &["latest", "stable"]), None);
        // A plain version is exact, not `^`.
        assert_eq!(newest(Some("1.2.0"), &["1.2.0", "1.3.0"]), Some("1.2.0"));
        assert_eq!(newest(Some("0.11.0-rc.1"), &["0.10.0", "0.11.0-rc.1"]), Some("0.11.0-rc.1"));
        // Ranges.
        assert_eq!(newest(Some("^1.2"), &["1.1.9", "1.2.3", "1.9.0", "2.0.0"]), Some("1.9.0"));
        assert_eq!(newest(Some(">=1.0, <1.5"), &["1.4.9", "1.5.0"]), Some("1.4.9"));
        assert!(VersionWanted::parse(Some("one")).unwrap_err().to_string().contains("neither a version nor a range"));
    }
}

/// A chart pushed to a registry.
#[derive(Debug, Clone)]
pub struct PushedChart {
    /// Where: `HOST/REPO:VERSION` (the version's `+` written `_`, as Helm tags it).
    pub reference: String,
    /// The chart manifest's digest.
    pub digest: Digest,
    /// The chart's name and version, from its `Chart.yaml`.
    pub name: String,
    /// See `name`.
    pub version: String,
}

/// The most of a `Chart.yaml` that is read from an archive.
const CHART_YAML_LIMIT: u64 = 1 << 20;

/// The `Chart.yaml` of a packaged chart (`NAME/Chart.yaml` at the archive's top), as JSON:
/// what `helm push` stores as the config.
pub fn archive_metadata(archive: &Path) -> Result<serde_json::Value, ArtifactError> {
    use std::io::Read as _;
    let file = std::fs::File::open(archive).map_err(ArtifactError::io("cannot read", archive))?;
    let mut entries = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let invalid = |reason: String| ArtifactError::Invalid(format!("`{}` is not a packaged chart: {reason}", archive.display()));
    for entry in entries.entries().map_err(|e| invalid(e.to_string()))? {
        let entry = entry.map_err(|e| invalid(e.to_string()))?;
        let path = entry.path().map_err(|e| invalid(e.to_string()))?.into_owned();
        let parts: Vec<_> = path.components().collect();
        if parts.len() == 2 && path.file_name().is_some_and(|n| n == "Chart.yaml") {
            let mut text = String::new();
            entry.take(CHART_YAML_LIMIT).read_to_string(&mut text).map_err(|e| invalid(e.to_string()))?;
            let metadata: serde_json::Value = serde_saphyr::from_str(&text).map_err(|e| invalid(format!("its Chart.yaml does not parse: {e}")))?;
            return Ok(metadata);
        }
    }
    Err(invalid("no `NAME/Chart.yaml` in it".into()))
}

/// Packages the chart folder `chart` into `NAME-VERSION.tgz` in `out`, as `helm package` lays
/// it out (every file under `NAME/`; `.git` and other hidden folders left out).
pub fn package_chart(chart: &Path, out: &Path) -> Result<PathBuf, ArtifactError> {
    let chart_yaml = chart.join("Chart.yaml");
    let text = std::fs::read_to_string(&chart_yaml).map_err(ArtifactError::io("cannot read", &chart_yaml))?;
    let metadata: ChartMetadata = serde_saphyr::from_str(&text).map_err(|e| ArtifactError::Invalid(format!("`{}` does not parse: {e}", chart_yaml.display())))?;
    // The name becomes every entry's folder in the archive and the chart's repository at the
    // target: one path component of a repository name, nothing else.
    if metadata.name.contains('/') || airlock_oci::validate_repository(&metadata.name).is_err() {
        return Err(ArtifactError::Invalid(format!("`{}`: chart name `{}` is not a lowercase name (letters, digits, `-`, `_`, `.`)", chart_yaml.display(), metadata.name.escape_debug())));
    }
    let archive = out.join(archive_name(&metadata.name, &metadata.version));
    let file = std::fs::File::create(&archive).map_err(ArtifactError::io("cannot write", &archive))?;
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::default()));
    builder.mode(tar::HeaderMode::Deterministic);
    let mut pending = vec![chart.to_path_buf()];
    let mut files = Vec::new();
    while let Some(folder) = pending.pop() {
        let entries = std::fs::read_dir(&folder).map_err(ArtifactError::io("cannot read", &folder))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            match entry.file_type() {
                Ok(kind) if kind.is_dir() && !hidden => pending.push(path),
                Ok(kind) if kind.is_file() => files.push(path),
                _ => {}
            }
        }
    }
    files.sort();
    for path in files {
        let relative = path.strip_prefix(chart).expect("walked below the chart");
        builder.append_path_with_name(&path, Path::new(&metadata.name).join(relative)).map_err(ArtifactError::io("cannot package", &path))?;
    }
    let encoder = builder.into_inner().map_err(ArtifactError::io("cannot write", &archive))?;
    encoder.finish().map_err(ArtifactError::io("cannot write", &archive))?;
    Ok(archive)
}

/// Pushes a packaged chart as `helm push` does: its `Chart.yaml` as the config
/// ([`CONFIG_MEDIA_TYPE`]), the archive as the one layer ([`CHART_MEDIA_TYPE`]), tagged with the
/// version (`+` written `_`).
pub async fn push_chart(store: &dyn Store, archive: &Path) -> Result<PushedChart, ArtifactError> {
    let metadata = archive_metadata(archive)?;
    let parsed: ChartMetadata = serde_json::from_value(metadata.clone())
        .map_err(|e| ArtifactError::Invalid(format!("the Chart.yaml in `{}` lacks a name or version: {e}", archive.display())))?;
    let tag = parsed.version.replace('+', "_");
    airlock_oci::validate_tag(&tag).map_err(|e| ArtifactError::Invalid(format!("chart version `{}` cannot be a tag: {e}", parsed.version)))?;
    let config = serde_json::to_vec(&metadata).expect("JSON values serialise");
    let config_descriptor = airlock_oci::Descriptor::new(CONFIG_MEDIA_TYPE.into(), config.len() as u64, airlock_oci::digest_of(&config, None));
    if !store.blob_exists(config_descriptor.digest()).await? {
        let body = bytes::Bytes::from(config);
        store.put_blob(&config_descriptor, Box::pin(futures::stream::once(async move { Ok(body) }))).await?;
    }
    let (layer_digest, layer_size) = crate::push::hash_file(archive).await?;
    let layer = airlock_oci::Descriptor::new(CHART_MEDIA_TYPE.into(), layer_size, layer_digest);
    if !store.blob_exists(layer.digest()).await? {
        let opened = tokio::fs::File::open(archive).await.map_err(ArtifactError::io("cannot read", archive))?;
        store.put_blob(&layer, airlock_store::file_body(opened, archive.display().to_string())).await?;
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": airlock_oci::media_type::OCI_MANIFEST,
        "config": config_descriptor, "layers": [layer],
    });
    let manifest = airlock_oci::Manifest::parse(serde_json::to_vec(&manifest).expect("JSON values serialise"), Some(airlock_oci::media_type::OCI_MANIFEST))
        .expect("a chart manifest is an image manifest");
    store.put_manifest(&manifest, Some(&tag)).await?;
    Ok(PushedChart { reference: format!("{store}:{tag}"), digest: manifest.digest().clone(), name: parsed.name, version: parsed.version })
}
