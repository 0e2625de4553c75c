//! Onboarding: find each image a chart needs in the source registries, in order, and copy it by
//! digest to the target, under the path that matched (seed 001's AOSM flow, without its faults:
//! no first path part dropped blindly, images without `/` included, a missing image is an error
//! that lists every place tried).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use airlock_copy::Copier;
use airlock_oci::Reference;
use airlock_store::remote::Access;
use airlock_store::Store;
use serde::{Deserialize, Serialize};

use crate::DiscoverError;

/// The seed's JSONC input.
#[derive(Debug, Clone, Deserialize)]
pub struct OnboardConfig {
    /// `registry` or `registry/namespace`, searched in order.
    pub image_sources: Vec<String>,
    /// The charts whose images are onboarded.
    #[serde(default)]
    pub helm_packages: Vec<HelmPackage>,
    /// The target `registry[/namespace]`, unless `--target` says it.
    pub target: Option<String>,
    /// AOSM's fields that do not matter here are accepted.
    #[serde(default, flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// One chart.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelmPackage {
    /// Its name.
    pub name: String,
    /// The chart folder or `.tgz`, relative to the config file, or a chart in a registry
    /// (`oci://HOST/REPO[:VERSION|@DIGEST]`, see [`crate::oci_chart`]), or with `repo` the
    /// chart's name in that chart repository.
    pub path_to_chart: PathBuf,
    /// A chart repository (the URL `helm repo add` takes) holding the chart `path_to_chart`
    /// names.
    pub repo: Option<String>,
    /// The version of a `repo` or `oci://` chart named without one: a version or a range
    /// (`^1.2`); the newest release when absent.
    pub version: Option<String>,
    /// A values file rendered with it, relative to the config file.
    pub default_values: Option<PathBuf>,
    /// AOSM's dependency list; accepted, not needed (Helm renders subcharts).
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// Reads the JSONC config (comments and trailing commas allowed); relative paths become relative
/// to the file's folder.
pub fn load_config(path: &Path) -> Result<OnboardConfig, DiscoverError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| DiscoverError::Input(format!("cannot read `{name}`: {e}")))?;
    parse_config(&text, &name, path.parent().unwrap_or(Path::new(".")))
}

/// Reads the JSONC text of a config named `name`; relative paths become relative to `base`.
pub fn parse_config(text: &str, name: &str, base: &Path) -> Result<OnboardConfig, DiscoverError> {
    let options = jsonc_parser::ParseOptions { allow_comments: true, allow_loose_object_property_names: false, allow_trailing_commas: true };
    let value = jsonc_parser::parse_to_serde_value(text, &options)
        .map_err(|e| {
            let (line, column) = line_column(text, e.range().start);
            DiscoverError::Input(format!("{name}:{line}:{column}: not valid JSONC: {}", e.kind()))
        })?
        .ok_or_else(|| DiscoverError::Input(format!("{name}: empty")))?;
    // Each chart entry is read on its own, so an error names the entry it is in.
    if let Some(entries) = value.get("helm_packages").and_then(|p| p.as_array()) {
        for (index, entry) in entries.iter().enumerate() {
            if let Err(e) = serde_json::from_value::<HelmPackage>(entry.clone()) {
                let label = entry.get("name").and_then(|n| n.as_str()).map(|n| format!(" (`{n}`)")).unwrap_or_default();
                return Err(DiscoverError::Input(format!("{name}: helm_packages[{index}]{label}: {e}")));
            }
        }
    }
    let mut config: OnboardConfig = serde_json::from_value(value).map_err(|e| DiscoverError::Input(format!("{name}: {e}")))?;
    if config.image_sources.is_empty() {
        return Err(DiscoverError::Input(format!("{name}: `image_sources` lists no registry to search")));
    }
    for source in &config.image_sources {
        parse_place(source).map_err(|e| DiscoverError::Input(format!("{name}: image_sources: {e}")))?;
    }
    for package in &mut config.helm_packages {
        if package.repo.is_none() && crate::oci_chart(&package.path_to_chart).is_none() {
            package.path_to_chart = base.join(&package.path_to_chart);
        }
        // AOSM's generated input files write `""` for an optional path left unset: none, not
        // the config file's folder.
        package.default_values = package.default_values.as_ref().filter(|v| !v.as_os_str().is_empty()).map(|v| base.join(v));
        package.repo = package.repo.take().filter(|r| !r.trim().is_empty());
        package.version = package.version.take().filter(|v| !v.trim().is_empty());
    }
    Ok(config)
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

/// `registry[/namespace]` split, checked as a repository prefix.
fn parse_place(place: &str) -> Result<(String, Option<String>), String> {
    let place = place.trim_end_matches('/');
    let (registry, namespace) = match place.split_once('/') {
        Some((registry, namespace)) => (registry, Some(namespace.to_owned())),
        None => (place, None),
    };
    if registry.is_empty() {
        return Err(format!("`{place}` names no registry"));
    }
    if let Some(namespace) = &namespace {
        airlock_oci::validate_repository(namespace).map_err(|e| format!("`{place}`: {e}"))?;
    }
    Ok((registry.to_owned(), namespace))
}

/// An image as a chart writes it, split the way Docker splits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The registry host it names, if its first part is one (`.` or `:` in it, or `localhost`).
    pub host: Option<String>,
    /// The repository path after the host (`repository/release/contoso-a`).
    pub path: String,
    /// `:tag` or `@digest`, as written (`:latest` when neither).
    pub suffix: String,
}

/// Splits `image` as Docker does: the first path part is a host only when it holds a `.` or a
/// `:` or is `localhost`; `nginx:1.25` has no host and the path `nginx`.
pub fn split(image: &str) -> Result<Written, String> {
    let (name, suffix) = match image.split_once('@') {
        Some((name, digest)) => {
            airlock_oci::parse_digest(digest).map_err(|e| format!("`{image}`: {e}"))?;
            (name, format!("@{digest}"))
        }
        None => match image.rsplit_once(':').filter(|(_, tag)| !tag.contains('/')) {
            Some((name, tag)) => (name, format!(":{tag}")),
            None => (image, ":latest".to_owned()),
        },
    };
    let (host, path) = match name.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => (Some(first.to_owned()), rest.to_owned()),
        _ => (None, name.to_owned()),
    };
    airlock_oci::validate_repository(&path).map_err(|e| format!("`{image}`: {e}"))?;
    Ok(Written { host, path, suffix })
}

/// The paths to look for in each source, in order: the path as written, then, where its first
/// part stands for a registry (`repository/release/contoso-a`), the path without it.
pub fn candidate_paths(written: &Written) -> Vec<String> {
    let mut paths = vec![written.path.clone()];
    if written.host.is_none() {
        if let Some((_, rest)) = written.path.split_once('/') {
            paths.push(rest.to_owned());
        }
    }
    paths
}

/// `place/path` + suffix as a reference string.
pub fn join(place: &str, path: &str, suffix: &str) -> String {
    format!("{}/{path}{suffix}", place.trim_end_matches('/'))
}

/// What onboarding one image did.
#[derive(Debug, Clone, Serialize)]
pub struct Onboarded {
    /// The image as the chart writes it.
    pub image: String,
    /// `onboarded`, `would onboard`, `missing`, `failed`.
    pub status: &'static str,
    /// The source reference it was found at.
    pub source: Option<String>,
    /// Where it was (or would be) copied.
    pub target: Option<String>,
    /// The digest copied.
    pub digest: Option<String>,
    /// The path under which it was found (and put at the target).
    pub path: Option<String>,
    /// Every reference tried, in order.
    pub tried: Vec<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// Where the chart names it.
    pub locations: Vec<String>,
}

/// The lock file: every image reference the charts use, the digest onboarded and its source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockFile {
    /// The target `registry[/namespace]`.
    pub target: String,
    /// By image as written.
    pub images: BTreeMap<String, LockEntry>,
    /// Each chart fetched from a registry or a chart repository, by package name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub charts: BTreeMap<String, LockedChart>,
    /// Each chart as pushed to the target (`oci://TARGET/NAME:VERSION`), by package name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pushed_charts: BTreeMap<String, LockedChart>,
}

/// One fetched chart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockedChart {
    /// Where it was fetched: the registry reference with its version, or the archive's URL.
    pub reference: String,
    /// Its digest: the chart manifest's, or the archive's.
    pub digest: String,
}

/// One locked image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockEntry {
    /// The digest onboarded.
    pub digest: String,
    /// Where it came from.
    pub source: String,
    /// Where it is now.
    pub target: String,
}

impl LockFile {
    /// The lock of what was onboarded.
    pub fn of(target: &str, onboarded: &[Onboarded]) -> LockFile {
        let images = onboarded
            .iter()
            .filter(|o| o.status == "onboarded")
            .filter_map(|o| Some((o.image.clone(), LockEntry { digest: o.digest.clone()?, source: o.source.clone()?, target: o.target.clone()? })))
            .collect();
        LockFile { target: target.to_owned(), images, charts: BTreeMap::new(), pushed_charts: BTreeMap::new() }
    }

    /// Writes it atomically (temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write as _;
        let temp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(serde_json::to_string_pretty(self).expect("a lock serializes").as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    }
}

/// Values overrides that point a chart at the target: every string in `values` that is an image
/// as written, or the registry part the onboarding replaced, becomes its target equivalent.
/// Only changed keys are returned, nested as in `values`.
pub fn values_overrides(values: &serde_json::Value, onboarded: &[Onboarded], target: &str) -> serde_json::Value {
    let mut replacements: BTreeMap<String, String> = BTreeMap::new();
    for o in onboarded.iter().filter(|o| o.status == "onboarded" || o.status == "would_onboard") {
        let (Ok(written), Some(path), Some(to)) = (split(&o.image), o.path.as_deref(), o.target.as_deref()) else { continue };
        replacements.insert(o.image.clone(), to.to_owned());
        let written_repository = match &written.host {
            Some(host) => format!("{host}/{}", written.path),
            None => written.path.clone(),
        };
        replacements.insert(written_repository.clone(), format!("{}/{path}", target.trim_end_matches('/')));
        // What stands before the matched path (`repository`, a host) is the registry part.
        if let Some(prefix) = written_repository.strip_suffix(path).map(|p| p.trim_end_matches('/')).filter(|p| !p.is_empty()) {
            replacements.insert(prefix.to_owned(), target.trim_end_matches('/').to_owned());
        }
    }
    fn walk(value: &serde_json::Value, replacements: &BTreeMap<String, String>) -> Option<serde_json::Value> {
        match value {
            serde_json::Value::String(s) => replacements.get(s).map(|r| serde_json::Value::String(r.clone())),
            serde_json::Value::Object(map) => {
                let changed: serde_json::Map<String, serde_json::Value> = map.iter().filter_map(|(k, v)| walk(v, replacements).map(|v| (k.clone(), v))).collect();
                (!changed.is_empty()).then_some(serde_json::Value::Object(changed))
            }
            serde_json::Value::Array(items) => {
                let walked: Vec<Option<serde_json::Value>> = items.iter().map(|i| walk(i, replacements)).collect();
                walked.iter().any(Option::is_some).then(|| serde_json::Value::Array(walked.into_iter().zip(items).map(|(w, i)| w.unwrap_or_else(|| i.clone())).collect()))
            }
            _ => None,
        }
    }
    walk(values, &replacements).unwrap_or_else(|| serde_json::json!({}))
}

/// A chart's default values: its `values.yaml`, its subcharts' under their names, then the
/// package's `default_values` over them. A packaged chart (`.tgz`) is unpacked into a temporary
/// folder first.
pub fn chart_values(chart: &Path, default_values: Option<&Path>) -> Result<serde_json::Value, DiscoverError> {
    if chart.is_file() {
        let unpacked = unpack_chart(chart)?;
        return chart_values(&unpacked.1, default_values);
    }
    let read_yaml = |path: &Path| -> Result<serde_json::Value, DiscoverError> {
        let text = std::fs::read_to_string(path).map_err(|e| DiscoverError::Input(format!("cannot read `{}`: {e}", path.display())))?;
        let value: Option<serde_json::Value> = serde_saphyr::from_str(&text).map_err(|e| DiscoverError::Input(format!("{}: not valid YAML: {e}", path.display())))?;
        Ok(value.unwrap_or(serde_json::json!({})))
    };
    let mut values = serde_json::json!({});
    if chart.is_dir() {
        if chart.join("values.yaml").is_file() {
            values = read_yaml(&chart.join("values.yaml"))?;
        }
        if let Ok(entries) = std::fs::read_dir(chart.join("charts")) {
            let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            entries.sort();
            // Subcharts as folders, or packaged as `helm dependency build` leaves them.
            let mut unpacked = Vec::new();
            let mut subcharts = Vec::new();
            for entry in entries {
                if entry.join("Chart.yaml").is_file() {
                    subcharts.push(entry);
                } else if entry.is_file() && entry.extension().is_some_and(|e| e == "tgz") {
                    let (guard, folder) = unpack_chart(&entry)?;
                    unpacked.push(guard);
                    subcharts.push(folder);
                }
            }
            for sub in subcharts {
                let meta = read_yaml(&sub.join("Chart.yaml"))?;
                let name = meta["name"].as_str().map(str::to_owned).unwrap_or_else(|| sub.file_name().unwrap_or_default().to_string_lossy().into_owned());
                let sub_values = chart_values(&sub, None)?;
                let mut nested = serde_json::json!({});
                nested[name] = sub_values;
                merge(&mut nested, &values);
                values = nested;
            }
        }
    }
    if let Some(path) = default_values {
        merge(&mut values, &read_yaml(path)?);
    }
    Ok(values)
}

/// Unpacks a packaged chart (a gzipped tar holding one folder, the chart) into a temporary
/// folder; entries that would leave it are refused by `tar`. The folder lives as long as the
/// returned guard.
fn unpack_chart(archive: &Path) -> Result<(tempfile::TempDir, PathBuf), DiscoverError> {
    let name = archive.display();
    let file = std::fs::File::open(archive).map_err(|e| DiscoverError::Input(format!("cannot read `{name}`: {e}")))?;
    let dir = tempfile::tempdir().map_err(|e| DiscoverError::Input(format!("cannot unpack `{name}`: {e}")))?;
    tar::Archive::new(flate2::read::GzDecoder::new(file))
        .unpack(dir.path())
        .map_err(|e| DiscoverError::Input(format!("cannot unpack `{name}` (a chart is a gzipped tar): {e}")))?;
    let chart = std::fs::read_dir(dir.path())
        .map_err(|e| DiscoverError::Input(format!("cannot unpack `{name}`: {e}")))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.join("Chart.yaml").is_file())
        .ok_or_else(|| DiscoverError::Input(format!("`{name}` holds no chart folder (no `*/Chart.yaml`)")))?;
    Ok((dir, chart))
}

/// Deep-merges `over` into `base`, as Helm merges values files.
pub fn merge(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(base), serde_json::Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => merge(existing, value),
                    _ => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (base, over) => *base = over.clone(),
    }
}

/// The target repository reference for `path` + suffix under `target`.
pub fn target_reference(target: &str, path: &str, suffix: &str) -> Result<Reference, String> {
    let text = join(target, path, suffix);
    text.parse::<Reference>().map_err(|e| format!("the target `{text}` is not a valid reference: {e}"))
}

/// Opens the store of a repository (the caller knows the registries and credentials).
pub type Opener<'a> = dyn Fn(Reference, Access) -> Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send + 'a>> + Sync + 'a;

/// Finds each image in `sources` (in order; each source tries every candidate path) and,
/// unless `dry_run`, copies the first found by digest to `target` under the matched path.
pub async fn onboard(images: &[crate::Image], sources: &[String], target: &str, open: &Opener<'_>, copier: &Copier, dry_run: bool) -> Vec<Onboarded> {
    let mut results = Vec::new();
    for image in images {
        let mut result = Onboarded {
            image: image.image.clone(),
            status: "failed",
            source: None,
            target: None,
            digest: None,
            path: None,
            tried: Vec::new(),
            error: None,
            locations: image.locations.clone(),
        };
        let written = match split(&image.image) {
            Ok(written) => written,
            Err(e) => {
                result.error = Some(e);
                results.push(result);
                continue;
            }
        };
        let reference = written.suffix.strip_prefix(':').unwrap_or(written.suffix.trim_start_matches('@')).to_owned();
        let mut found = None;
        'search: for source in sources {
            for path in candidate_paths(&written) {
                let text = join(source, &path, &written.suffix);
                let Ok(candidate) = text.parse::<Reference>() else {
                    result.tried.push(format!("{text} (not a valid reference)"));
                    continue;
                };
                let store = open(candidate, Access::Pull).await;
                match store.resolve(&reference).await {
                    Ok(descriptor) => {
                        result.tried.push(text.clone());
                        found = Some((store, text, path, descriptor.digest().clone()));
                        break 'search;
                    }
                    Err(e) if e.is_not_found() => result.tried.push(text),
                    Err(e) => result.tried.push(format!("{text} ({e})")),
                }
            }
        }
        let Some((source_store, source_text, path, digest)) = found else {
            result.status = "missing";
            result.error = Some(format!("`{}` was found nowhere; tried {}", image.image, result.tried.join(", ")));
            results.push(result);
            continue;
        };
        let target_ref = match target_reference(target, &path, &written.suffix) {
            Ok(r) => r,
            Err(e) => {
                result.error = Some(e);
                results.push(result);
                continue;
            }
        };
        result.source = Some(source_text);
        result.target = Some(target_ref.to_string());
        result.digest = Some(digest.to_string());
        result.path = Some(path);
        if dry_run {
            result.status = "would_onboard";
            results.push(result);
            continue;
        }
        let tags: Vec<String> = target_ref.tag().filter(|_| target_ref.digest().is_none()).map(|t| vec![t.to_owned()]).unwrap_or_default();
        let target_store = open(target_ref.clone(), Access::Push).await;
        match copier.copy(source_store.as_ref(), digest.as_ref(), target_store.as_ref(), &tags).await {
            Ok(report) if report.digest == digest => result.status = "onboarded",
            Ok(report) => result.error = Some(format!("copied as {}, not {digest}", report.digest)),
            Err(e) => result.error = Some(format!("copying to {target_ref} failed: {e}")),
        }
        results.push(result);
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzipped tar of `files` (path, bytes), as `helm package` writes one.
    fn packaged(path: &Path, files: &[(&str, &[u8])]) {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast()));
        for (name, bytes) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, *bytes).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn packaged_charts_and_subcharts_give_their_values() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("db-0.1.0.tgz");
        packaged(&sub, &[("db/Chart.yaml", b"apiVersion: v2\nname: db\nversion: 0.1.0\n"), ("db/values.yaml", b"image: postgres:16\n")]);
        let sub_bytes = std::fs::read(&sub).unwrap();
        // The subchart travels packaged inside the chart, as `helm dependency build` leaves it.
        let chart = dir.path().join("app-1.0.0.tgz");
        packaged(
            &chart,
            &[("app/Chart.yaml", b"apiVersion: v2\nname: app\nversion: 1.0.0\n"), ("app/values.yaml", b"image: web:1\n"), ("app/charts/db-0.1.0.tgz", &sub_bytes)],
        );
        let values = chart_values(&chart, None).unwrap();
        assert_eq!(values, serde_json::json!({"image": "web:1", "db": {"image": "postgres:16"}}));
        // Not a chart archive: said, with the file's name.
        let bogus = dir.path().join("bogus.tgz");
        packaged(&bogus, &[("README", b"hello")]);
        let error = chart_values(&bogus, None).unwrap_err().to_string();
        assert!(error.contains("bogus.tgz") && error.contains("holds no chart folder"), "{error}");
    }

    #[test]
    fn docker_splits_hosts_only_when_they_look_like_hosts() {
        let w = split("repository/release/contoso-a:1.0.0").unwrap();
        assert_eq!((w.host.as_deref(), w.path.as_str(), w.suffix.as_str()), (None, "repository/release/contoso-a", ":1.0.0"));
        assert_eq!(candidate_paths(&w), ["repository/release/contoso-a", "release/contoso-a"]);
        let w = split("myregistry.azurecr.io/release/contoso-b:1.0.0").unwrap();
        assert_eq!((w.host.as_deref(), w.path.as_str()), (Some("myregistry.azurecr.io"), "release/contoso-b"));
        assert_eq!(candidate_paths(&w), ["release/contoso-b"]);
        let w = split("nginx:1.25").unwrap();
        assert_eq!((w.host, w.path.as_str()), (None, "nginx"));
        assert_eq!(candidate_paths(&split("library/nginx:1").unwrap()), ["library/nginx", "nginx"]);
        assert_eq!(split("localhost:5000/app").unwrap().suffix, ":latest");
        assert_eq!(split("localhost/app:1").unwrap().host.as_deref(), Some("localhost"));
        assert!(split("Bad/Name:1").is_err());
    }

    #[test]
    fn jsonc_with_comments_and_trailing_commas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cnf-input.jsonc");
        std::fs::write(&path, "{\n  // where to look\n  \"image_sources\": [\"myregistry.azurecr.io\", \"myregistry.azurecr.io/test\",],\n  \"helm_packages\": [{\"name\": \"contoso\", \"path_to_chart\": \"charts/contoso\", \"depends_on\": [],},],\n  \"nf_name\": \"contoso\",\n}\n").unwrap();
        let config = load_config(&path).unwrap();
        assert_eq!(config.image_sources.len(), 2);
        assert_eq!(config.helm_packages[0].path_to_chart, dir.path().join("charts/contoso"));
        std::fs::write(&path, "{\n  \"image_sources\": [\"a.io\"\n  \"helm_packages\": []\n}\n").unwrap();
        let error = load_config(&path).unwrap_err().to_string();
        assert!(error.contains("cnf-input.jsonc:3:18: not valid JSONC: Unexpected colon"), "{error}");
    }

    #[test]
    fn an_error_in_a_chart_entry_names_the_entry() {
        let text = r#"{"image_sources": ["a.io"], "helm_packages": [{"name": "ok", "path_to_chart": "c"}, {"name": "web", "path_to_chart": "w", "valeus": "x"}]}"#;
        let error = parse_config(text, "cnf-input.jsonc", Path::new("/")).unwrap_err().to_string();
        assert!(error.contains("cnf-input.jsonc: helm_packages[1] (`web`): unknown field `valeus`"), "{error}");
    }

    #[test]
    fn empty_optional_paths_mean_none() {
        // As `az aosm nfd generate-config` writes them.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cnf-input.jsonc");
        std::fs::write(&path, r#"{"image_sources": ["a.io"], "helm_packages": [{"name": "c", "path_to_chart": "c", "default_values": "", "depends_on": []}]}"#).unwrap();
        let config = load_config(&path).unwrap();
        assert_eq!(config.helm_packages[0].default_values, None);
    }

    #[test]
    fn overrides_replace_images_and_registry_parts() {
        let values = serde_json::json!({
            "global": {"registry": "repository"},
            "a": {"image": "repository/release/contoso-a:1.0.0"},
            "b": {"repository": "release/contoso-b", "tag": "1.0.0"},
            "replicas": 2,
        });
        let onboarded = vec![Onboarded {
            image: "repository/release/contoso-a:1.0.0".into(),
            status: "onboarded",
            source: Some("src.io/release/contoso-a:1.0.0".into()),
            target: Some("dst.io/nf/release/contoso-a:1.0.0".into()),
            digest: None,
            path: Some("release/contoso-a".into()),
            tried: vec![],
            error: None,
            locations: vec![],
        }];
        let overrides = values_overrides(&values, &onboarded, "dst.io/nf");
        assert_eq!(overrides, serde_json::json!({"global": {"registry": "dst.io/nf"}, "a": {"image": "dst.io/nf/release/contoso-a:1.0.0"}}));
    }
}
