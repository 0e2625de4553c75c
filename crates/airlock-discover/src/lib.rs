//! Discovery: the images a deployment needs, from Helm charts (rendered by the user's `helm
//! template`), Kubernetes manifests, Dockerfiles and compose files; and [`onboard`]ing them
//! from the organisation's source registries into a target registry.
//!
//! YAML is parsed, never grepped: an image is what a container, a pod template or a compose
//! service names ([`kube`]), or what a Dockerfile builds `FROM` ([`dockerfile`]).

#![warn(missing_docs)]

pub mod dockerfile;
pub mod kube;
pub mod onboard;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

/// One place an image is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The image as written.
    pub image: String,
    /// Where: the file (or Helm template) and the object, container or line.
    pub location: String,
}

/// An image a deployment needs, with every place it is named.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Image {
    /// As first written.
    pub image: String,
    /// Normalised as Docker does (`nginx:1` is `docker.io/library/nginx:1`), when it parses.
    pub reference: Option<String>,
    /// Where it is named.
    pub locations: Vec<String>,
}

/// The registry reference of a chart given as `oci://HOST/REPO[:VERSION|@DIGEST]` (as Helm
/// writes charts in registries), `None` for a local chart.
pub fn oci_chart(chart: &Path) -> Option<&str> {
    chart.to_str().filter(|c| c.starts_with("oci://"))
}

/// What a path holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A chart folder (with `Chart.yaml`) or a packaged chart (`.tgz`).
    HelmChart,
    /// Kubernetes manifests.
    Manifests,
    /// A Dockerfile or Containerfile.
    Dockerfile,
    /// A compose file.
    Compose,
}

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// The `helm` program is not there.
    #[error("cannot run `{program}` to render the chart `{chart}`: {reason}")]
    HelmMissing {
        /// The program tried.
        program: String,
        /// The chart.
        chart: String,
        /// The OS error.
        reason: String,
    },
    /// `helm template` failed.
    #[error("`{program} template` failed for `{chart}`: {stderr}")]
    HelmFailed {
        /// The program.
        program: String,
        /// The chart.
        chart: String,
        /// What helm said.
        stderr: String,
    },
    /// A file could not be read or understood.
    #[error("{0}")]
    Input(String),
}

impl DiscoverError {
    /// How to fix it, when known.
    pub fn hint(&self) -> Option<String> {
        match self {
            DiscoverError::HelmMissing { .. } => Some("install Helm (https://helm.sh/docs/intro/install/) or name its binary with `--helm PATH`".into()),
            _ => None,
        }
    }
}

/// How to read the inputs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The Helm binary (`helm` on `PATH` by default).
    pub helm: String,
    /// Values files for charts, in order (`-f`).
    pub values: Vec<PathBuf>,
    /// `--set` overrides for charts.
    pub set: Vec<String>,
    /// `--build-arg` values for Dockerfiles.
    pub build_args: Vec<(String, String)>,
}

/// What `path` holds, or why it cannot be told.
pub fn detect(path: &Path) -> Result<Kind, DiscoverError> {
    if path.is_dir() {
        return if path.join("Chart.yaml").is_file() {
            Ok(Kind::HelmChart)
        } else {
            Err(DiscoverError::Input(format!("`{}` is a folder without `Chart.yaml`", path.display())))
        };
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_ascii_lowercase();
    if name.ends_with(".tgz") || name.ends_with(".tar.gz") {
        return Ok(Kind::HelmChart);
    }
    if name == "dockerfile" || name == "containerfile" || name.starts_with("dockerfile.") || name.ends_with(".dockerfile") || name.ends_with(".containerfile") {
        return Ok(Kind::Dockerfile);
    }
    if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") {
        if name.contains("compose") {
            return Ok(Kind::Compose);
        }
        let text = read(path)?;
        // A compose file has `services:` at the top and no `kind:`.
        let first: Option<serde_json::Value> = text.split("\n---").next().and_then(|doc| serde_saphyr::from_str(doc).ok());
        let is_compose = first.as_ref().and_then(|v| v.as_object()).is_some_and(|m| m.get("services").is_some_and(|s| s.is_object()) && !m.contains_key("kind"));
        return Ok(if is_compose { Kind::Compose } else { Kind::Manifests });
    }
    Err(DiscoverError::Input(format!(
        "cannot tell what `{}` is: expected a chart folder or `.tgz`, Kubernetes YAML, a Dockerfile or a compose file",
        path.display()
    )))
}

fn read(path: &Path) -> Result<String, DiscoverError> {
    std::fs::read_to_string(path).map_err(|e| DiscoverError::Input(format!("cannot read `{}`: {e}", path.display())))
}

/// The files under a folder that discovery reads, in a stable order; charts inside stay whole.
fn expand(path: &Path, out: &mut Vec<(PathBuf, Kind)>) -> Result<(), DiscoverError> {
    if !path.is_dir() || path.join("Chart.yaml").is_file() {
        out.push((path.to_path_buf(), detect(path)?));
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| DiscoverError::Input(format!("cannot read `{}`: {e}", path.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).unwrap_or("").starts_with('.'))
        .collect();
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            expand(&entry, out)?;
        } else if let Ok(kind) = detect(&entry) {
            out.push((entry, kind));
        }
    }
    Ok(())
}

/// Renders a chart with `helm template` (subcharts included), values files and `--set`s; errors
/// name the chart as `name` (a fetched chart's reference rather than its temporary file).
pub fn render_chart(chart: &Path, name: &str, options: &Options) -> Result<String, DiscoverError> {
    let program = if options.helm.is_empty() { "helm".to_owned() } else { options.helm.clone() };
    let mut command = Command::new(&program);
    command.arg("template").arg("airlock-discover").arg(chart);
    for values in &options.values {
        command.arg("-f").arg(values);
    }
    for set in &options.set {
        command.arg("--set").arg(set);
    }
    let output = command.output().map_err(|e| DiscoverError::HelmMissing { program: program.clone(), chart: name.to_owned(), reason: e.to_string() })?;
    if !output.status.success() {
        return Err(DiscoverError::HelmFailed { program, chart: name.to_owned(), stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned() });
    }
    String::from_utf8(output.stdout).map_err(|_| DiscoverError::Input(format!("`{program} template {name}` printed something that is not UTF-8")))
}

/// Every place an image is named in the chart at `path` (a folder or `.tgz`), the chart named
/// `name` in messages.
pub fn find_in_chart(path: &Path, name: &str, options: &Options) -> Result<Vec<Found>, DiscoverError> {
    kube::images(&render_chart(path, name, options)?, name).map_err(DiscoverError::Input)
}

/// Every place an image is named in `path`, of kind `kind`.
pub fn find(path: &Path, kind: Kind, options: &Options) -> Result<Vec<Found>, DiscoverError> {
    let name = path.display().to_string();
    match kind {
        Kind::HelmChart => find_in_chart(path, &name, options),
        Kind::Manifests => kube::images(&read(path)?, &name).map_err(DiscoverError::Input),
        Kind::Dockerfile => Ok(dockerfile::images(&read(path)?, &name, &options.build_args)),
        Kind::Compose => compose(path, options),
    }
}

/// `KEY=VALUE` lines of a compose `.env` file (comments and blank lines skipped, quotes removed).
fn read_dotenv(path: &Path) -> HashMap<String, String> {
    let Ok(text) = std::fs::read_to_string(path) else { return HashMap::new() };
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').trim_matches('\'').to_owned()))
        .collect()
}

/// Compose's variable interpolation: `$VAR`, `${VAR}`, `${VAR:-default}` (unset or empty),
/// `${VAR-default}` (unset), `${VAR:?message}`/`${VAR?message}` (an error), `$$` for `$`.
/// An unset variable without a default is empty, as compose makes it (with a warning there).
pub fn interpolate(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').ok_or_else(|| format!("`${{` without a closing `}}` in `{text}`"))?;
            let (expression, tail) = (&braced[..end], &braced[end + 1..]);
            let name_end = expression.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(expression.len());
            let (name, operator) = expression.split_at(name_end);
            if name.is_empty() {
                return Err(format!("`${{{expression}}}` names no variable"));
            }
            let value = lookup(name);
            let chosen = if let Some(default) = operator.strip_prefix(":-") {
                value.filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
            } else if let Some(default) = operator.strip_prefix('-') {
                value.unwrap_or_else(|| default.to_owned())
            } else if let Some(message) = operator.strip_prefix(":?") {
                value.filter(|v| !v.is_empty()).ok_or_else(|| format!("`{name}` is required: {message}"))?
            } else if let Some(message) = operator.strip_prefix('?') {
                value.ok_or_else(|| format!("`{name}` is required: {message}"))?
            } else if operator.is_empty() {
                value.unwrap_or_default()
            } else {
                return Err(format!("`${{{expression}}}` is not a substitution compose knows"));
            };
            out.push_str(&chosen);
            rest = tail;
        } else {
            let name_end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
            if name_end == 0 {
                out.push('$');
            } else {
                out.push_str(&lookup(&after[..name_end]).unwrap_or_default());
            }
            rest = &after[name_end..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A compose file's images: each service's `image`, or for a service that is built, the images
/// its Dockerfile starts `FROM`.
fn compose(path: &Path, options: &Options) -> Result<Vec<Found>, DiscoverError> {
    let name = path.display().to_string();
    let file: serde_json::Value = serde_saphyr::from_str(&read(path)?).map_err(|e| DiscoverError::Input(format!("{name}: not a valid compose file: {e}")))?;
    let mut found = Vec::new();
    let Some(services) = file.get("services").and_then(|s| s.as_object()) else {
        return Err(DiscoverError::Input(format!("{name}: no `services` mapping")));
    };
    let base = path.parent().unwrap_or(Path::new("."));
    // Values are interpolated as compose does: the environment first, then `.env` beside the file.
    let dotenv = read_dotenv(&base.join(".env"));
    let lookup = |name: &str| std::env::var(name).ok().or_else(|| dotenv.get(name).cloned());
    let expand = |text: &str, what: &str| interpolate(text, &lookup).map_err(|e| DiscoverError::Input(format!("{name}: {what}: {e}")));
    for (service, spec) in services {
        let image = match spec.get("image").and_then(|i| i.as_str()) {
            Some(image) => Some(expand(image, &format!("service `{service}` image"))?),
            None => None,
        };
        match (image.as_deref(), spec.get("build")) {
            (_, Some(build)) => {
                let (context, dockerfile, args): (String, String, Vec<(String, String)>) = match build {
                    serde_json::Value::String(context) => (context.clone(), "Dockerfile".to_owned(), Vec::new()),
                    other => (
                        other.get("context").and_then(|c| c.as_str()).unwrap_or(".").to_owned(),
                        other.get("dockerfile").and_then(|d| d.as_str()).unwrap_or("Dockerfile").to_owned(),
                        other
                            .get("args")
                            .and_then(|a| a.as_object())
                            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))).collect())
                            .unwrap_or_default(),
                    ),
                };
                let context = expand(&context, &format!("service `{service}` build context"))?;
                let dockerfile = expand(&dockerfile, &format!("service `{service}` dockerfile"))?;
                let args = args.into_iter().map(|(k, v)| Ok((k, expand(&v, &format!("service `{service}` build arg"))?))).collect::<Result<Vec<_>, DiscoverError>>()?;
                let dockerfile = base.join(&context).join(&dockerfile);
                if let Ok(text) = std::fs::read_to_string(&dockerfile) {
                    let mut build_args = args;
                    build_args.extend(options.build_args.iter().cloned());
                    for mut f in dockerfile::images(&text, &dockerfile.display().to_string(), &build_args) {
                        f.location = format!("{name}: service `{service}` builds {}", f.location);
                        found.push(f);
                    }
                }
            }
            (Some(image), None) => found.push(Found { image: image.to_owned(), location: format!("{name}: service `{service}`") }),
            (None, None) => {}
        }
    }
    Ok(found)
}

/// The images `paths` need, deduplicated (by normalised reference), in first-seen order.
pub fn discover(paths: &[PathBuf], options: &Options) -> Result<Vec<Image>, DiscoverError> {
    let mut found = Vec::new();
    for path in paths {
        found.extend(found_in(path, options)?);
    }
    Ok(dedupe(found))
}

/// Every place an image is named in `path`: a file of a kind [`detect`] tells, a chart, or a
/// folder of them.
pub fn found_in(path: &Path, options: &Options) -> Result<Vec<Found>, DiscoverError> {
    if !path.exists() {
        return Err(DiscoverError::Input(format!("`{}` does not exist", path.display())));
    }
    let mut inputs = Vec::new();
    expand(path, &mut inputs)?;
    let mut found = Vec::new();
    for (path, kind) in inputs {
        found.extend(find(&path, kind, options)?);
    }
    Ok(found)
}

/// Merges the places of one image.
pub fn dedupe(found: Vec<Found>) -> Vec<Image> {
    let mut order: Vec<String> = Vec::new();
    let mut images: BTreeMap<String, Image> = BTreeMap::new();
    for f in found {
        let reference = f.image.parse::<airlock_oci::Reference>().ok().map(|r| r.to_string());
        let key = reference.clone().unwrap_or_else(|| f.image.clone());
        let entry = images.entry(key.clone()).or_insert_with(|| {
            order.push(key.clone());
            Image { image: f.image.clone(), reference, locations: Vec::new() }
        });
        if !entry.locations.contains(&f.location) {
            entry.locations.push(f.location);
        }
    }
    order.into_iter().filter_map(|k| images.remove(&k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_told_by_name_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        assert_eq!(detect(&write("Dockerfile", "FROM a")).unwrap(), Kind::Dockerfile);
        assert_eq!(detect(&write("app.yaml", "services:\n  web: {image: nginx}\n")).unwrap(), Kind::Compose);
        assert_eq!(detect(&write("pod.yaml", "kind: Pod\n")).unwrap(), Kind::Manifests);
        assert!(detect(&write("notes.txt", "x")).unwrap_err().to_string().contains("cannot tell what"));
    }

    #[test]
    fn compose_services_and_their_builds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("api")).unwrap();
        std::fs::write(dir.path().join("api/Dockerfile"), "ARG BASE=python:3.12\nFROM ${BASE}\n").unwrap();
        let file = dir.path().join("compose.yaml");
        std::fs::write(&file, "services:\n  db:\n    image: postgres:16\n  api:\n    build:\n      context: api\n      args: {BASE: 'python:3.13-slim'}\n").unwrap();
        let images = discover(&[file], &Options::default()).unwrap();
        let names: Vec<&str> = images.iter().map(|i| i.image.as_str()).collect();
        assert_eq!(names, ["postgres:16", "python:3.13-slim"], "in file order");
    }

    #[test]
    fn compose_interpolation_as_compose_does_it() {
        let vars = |name: &str| match name {
            "TAG" => Some("1.25".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let cases = [
            ("nginx:${TAG}", "nginx:1.25"),
            ("nginx:$TAG", "nginx:1.25"),
            ("nginx:${MISSING:-1.24}", "nginx:1.24"),
            ("nginx:${EMPTY:-1.24}", "nginx:1.24"),
            ("nginx:${EMPTY-1.24}", "nginx:"),
            ("nginx:${MISSING-1.23}", "nginx:1.23"),
            ("registry.example/${MISSING:-team}/app:${TAG:-x}", "registry.example/team/app:1.25"),
            ("cost: $$5", "cost: $5"),
        ];
        for (text, expected) in cases {
            assert_eq!(interpolate(text, &vars).unwrap(), expected, "{text}");
        }
        assert!(interpolate("${MISSING:?set it}", &vars).unwrap_err().contains("set it"));
        assert!(interpolate("${TAG", &vars).is_err());
    }

    #[test]
    fn compose_files_are_interpolated_with_the_environment_and_dotenv() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".env"), "# defaults\nREDIS_TAG=7.2\n").unwrap();
        let file = dir.path().join("compose.yaml");
        std::fs::write(&file, "services:\n  cache:\n    image: redis:${REDIS_TAG}\n  web:\n    image: ${AIRLOCK_TEST_UNSET_REGISTRY:-docker.io}/library/nginx:${AIRLOCK_TEST_UNSET_TAG-1.25}\n").unwrap();
        let images = discover(&[file], &Options::default()).unwrap();
        let names: Vec<&str> = images.iter().map(|i| i.image.as_str()).collect();
        assert_eq!(names, ["redis:7.2", "docker.io/library/nginx:1.25"]);
    }

    #[test]
    fn the_same_image_written_two_ways_is_one() {
        let images = dedupe(vec![Found { image: "nginx:1.25".into(), location: "a".into() }, Found { image: "docker.io/library/nginx:1.25".into(), location: "b".into() }]);
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].reference.as_deref(), Some("docker.io/library/nginx:1.25"));
        assert_eq!(images[0].locations, ["a", "b"]);
    }
}
