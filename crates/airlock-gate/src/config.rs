//! `airlock.yaml`: the imports, their gates and dependents, and registry settings.
//!
//! ```yaml
//! registries:                      # as in sync.yaml
//!   registry.example.com:
//!     username: importer
//!     password_env: IMPORTER_TOKEN
//! runtime:                         # the container runtime of `test` gates
//!   command: podman
//!   args: [--runtime, runc, --cgroup-manager, cgroupfs]
//!   run_args: [--ulimit, "nofile=20000:20000"]
//! imports:
//!   - name: node
//!     source: docker.io/library/node
//!     tags: [15-alpine]
//!     platforms: [linux/amd64]
//!     staging: registry.example.com/staging/node
//!     target: registry.example.com/base-artifacts/node
//!     unique_tag: "{{tag}}-{{run_id}}"
//!     gates:
//!       - name: policy
//!         policy: {forbid_env: {BACKGROUND_COLOR: [red]}, non_root: false}
//!       - name: validate
//!         when: [policy]
//!         test: {dockerfile: test/Dockerfile}
//!     dependents:
//!       - webhook: https://ci.example.com/hooks/rebuild-hello-world
//! ```
//!
//! Relative paths are relative to the file's folder. Errors name the file, the line and column
//! where the parser knows them, and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_oci::{PlatformSpec, Reference};
use airlock_sync::config::{parse_yaml, registries, tag_filter, ConfigError, RegistryConfig, RegistryEntry};
use airlock_sync::TagFilter;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::runs::StateLocation;

/// The default unique tag: the upstream tag and the run id, as `node:15-alpine-<run id>`.
pub const DEFAULT_UNIQUE_TAG: &str = "{{tag}}-{{run_id}}";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    registries: BTreeMap<String, RegistryEntry>,
    /// Where the run database lives: a folder (default `.airlock/` beside the file) or
    /// `postgres://…`.
    state: Option<String>,
    /// The variable holding the PostgreSQL password (default `PGPASSWORD`).
    state_password_env: Option<String>,
    /// How long an import's lease lasts without renewal (default 60s).
    lease: Option<Spanned<String>>,
    #[serde(default)]
    runtime: RuntimeFile,
    #[serde(default)]
    watch: WatchFile,
    imports: Vec<ImportFile>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuntimeFile {
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    build_args: Vec<String>,
    #[serde(default)]
    run_args: Vec<String>,
}

impl RuntimeFile {
    /// The runtime as written; podman when no command is named.
    fn runtime(&self) -> Runtime {
        Runtime { command: self.command.clone().unwrap_or_else(|| "podman".into()), args: self.args.clone(), build_args: self.build_args.clone(), run_args: self.run_args.clone() }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WatchFile {
    interval: Option<Spanned<String>>,
    listen: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportFile {
    name: Spanned<String>,
    source: Spanned<String>,
    #[serde(default)]
    tags: Vec<String>,
    tag_regex: Option<String>,
    #[serde(default)]
    exclude: Vec<String>,
    semver: Option<String>,
    latest: Option<usize>,
    #[serde(default)]
    platforms: Vec<Spanned<String>>,
    staging: Spanned<String>,
    target: Spanned<String>,
    unique_tag: Option<Spanned<String>>,
    #[serde(default)]
    gates: Vec<GateFile>,
    #[serde(default)]
    dependents: Vec<DependentFile>,
    interval: Option<Spanned<String>>,
    timer: Option<Spanned<String>>,
    /// The git repository holding this import's gate files: a folder (a checkout) or a URL.
    gate_repo: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GateFile {
    name: Spanned<String>,
    #[serde(default)]
    when: Vec<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    /// Variables of airlock's environment the gate's programs may see (they see no other).
    #[serde(default)]
    env: Vec<Spanned<String>>,
    policy: Option<Policy>,
    test: Option<TestFile>,
    command: Option<Vec<String>>,
    signature: Option<SignatureFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    dockerfile: PathBuf,
    context: Option<PathBuf>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    build_args: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DependentFile {
    name: Option<String>,
    command: Option<Vec<String>>,
    webhook: Option<String>,
}

/// What the `policy` gate checks in the candidate's image configuration(s).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Environment variables and the values they must not have (compared without case); an
    /// empty list forbids the variable altogether.
    #[serde(default)]
    pub forbid_env: BTreeMap<String, Vec<String>>,
    /// Environment variables that must be set, to this value when one is given.
    #[serde(default)]
    pub require_env: BTreeMap<String, Option<String>>,
    /// The image must not run as root (its `User` set, and not `root` or `0`).
    #[serde(default)]
    pub non_root: bool,
    /// Labels that must be present.
    #[serde(default)]
    pub required_labels: Vec<String>,
    /// The only platforms allowed (`os/arch[/variant]`).
    #[serde(default)]
    pub platforms: Vec<String>,
    /// The largest total size of config and layers, per platform (`200MB`, `1GiB`, bytes).
    pub max_size: Option<String>,
    /// The oldest creation date allowed, as an age (`30d`, `12h`).
    pub max_age: Option<String>,
}

/// A checked `airlock.yaml`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file, for messages.
    pub path: PathBuf,
    /// Registry settings with their secrets read.
    pub registries: Vec<RegistryConfig>,
    /// Where the run database is.
    pub state: StateLocation,
    /// How long an import's lease lasts when its holder stops renewing it (killed, cut off):
    /// then another process may take the import over.
    pub lease: Duration,
    /// How `test` gates build and run containers.
    pub runtime: Runtime,
    /// How often `airlock watch` asks upstream by default.
    pub interval: Duration,
    /// Where `airlock watch` accepts registry notifications, when set.
    pub listen: Option<String>,
    /// The imports, in file order.
    pub imports: Vec<Import>,
}

/// The container runtime of `test` gates: podman by default, its flags configurable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    /// The program (`podman`, `docker`).
    pub command: String,
    /// Flags before every subcommand (`--runtime runc --cgroup-manager cgroupfs`).
    pub args: Vec<String>,
    /// Flags of `build`.
    pub build_args: Vec<String>,
    /// Flags of `run` (`--ulimit nofile=20000:20000`).
    pub run_args: Vec<String>,
}

/// One import: an upstream repository brought in through gates.
#[derive(Debug, Clone)]
pub struct Import {
    /// Its name, used by commands and in the run table.
    pub name: String,
    /// The upstream repository.
    pub source: Reference,
    /// Which upstream tags.
    pub filter: TagFilter,
    /// Only these platforms of an index (a new index digest); empty: all.
    pub platforms: Vec<PlatformSpec>,
    /// The quarantine repository candidates are copied to.
    pub staging: Reference,
    /// The repository teams build from.
    pub target: Reference,
    /// The template of the unique tag (minijinja: `tag`, `run_id`, `digest`, `date`).
    pub unique_tag: String,
    /// The gates, in order.
    pub gates: Vec<Gate>,
    /// Who is told after a promotion.
    pub dependents: Vec<Dependent>,
    /// How often `watch` asks upstream for this import.
    pub interval: Option<Duration>,
    /// A run on this period even when upstream did not change (tests and scanners change).
    pub timer: Option<Duration>,
    /// The git repository of the gates' own files: a new commit there runs the gates again
    /// (trigger `Commit`), as seed 004's source-commit trigger does.
    pub gate_repo: Option<GateRepo>,
}

/// Where the gates' files are versioned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateRepo {
    /// A local checkout: its `HEAD`.
    Folder(PathBuf),
    /// A remote repository: `git ls-remote URL HEAD`.
    Url(String),
}

/// One gate.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Its name, used by `when` and in reports.
    pub name: String,
    /// Gates that must have passed for this one to run; empty: all earlier gates.
    pub when: Vec<String>,
    /// How long it may take.
    pub timeout: Duration,
    /// Variables of airlock's environment passed to the gate's programs, besides what a shell
    /// and a container runtime need (`gates::clean_environment`).
    pub env: Vec<String>,
    /// What it does.
    pub kind: GateKind,
}

/// What a gate does.
#[derive(Debug, Clone)]
pub enum GateKind {
    /// Checks the image configuration.
    Policy(Policy),
    /// Builds an image `FROM` the candidate and runs it; passes on exit 0.
    Test {
        /// The Dockerfile; `ARG AIRLOCK_CANDIDATE` / `FROM ${AIRLOCK_CANDIDATE}` names the candidate.
        dockerfile: PathBuf,
        /// The build context (default: the Dockerfile's folder).
        context: PathBuf,
        /// The command to run in the test image (default: its own).
        command: Vec<String>,
        /// More `--build-arg`s (templated).
        build_args: BTreeMap<String, String>,
    },
    /// Any program, with the candidate in its arguments and environment; passes on exit 0.
    Command(Vec<String>),
    /// A cosign signature by this public key must be on the upstream image.
    Signature {
        /// The PEM public key.
        key: PathBuf,
    },
}

impl GateKind {
    /// The kind's name, as written in the file.
    pub fn as_str(&self) -> &'static str {
        match self {
            GateKind::Policy(_) => "policy",
            GateKind::Test { .. } => "test",
            GateKind::Command(_) => "command",
            GateKind::Signature { .. } => "signature",
        }
    }
}

/// Who is told about a promotion.
#[derive(Debug, Clone)]
pub struct Dependent {
    /// A name for the run log.
    pub name: String,
    /// What to do.
    pub action: DependentAction,
}

/// How a dependent is told.
#[derive(Debug, Clone)]
pub enum DependentAction {
    /// Run a program (arguments templated; details in `AIRLOCK_*` variables).
    Command(Vec<String>),
    /// POST a JSON document.
    Webhook(String),
}

impl Config {
    /// The import called `name`.
    pub fn import(&self, name: &str) -> Option<&Import> {
        self.imports.iter().find(|i| i.name == name)
    }
}

/// Reads and checks `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError { path: name.clone(), location: None, reason: format!("cannot read: {e}") })?;
    parse(&text, path)
}

/// Where the run database of the file at `path` lives, reading nothing else: the run history
/// needs no credentials, gate files or registries, so reading it never fails on them (an unset
/// `password_env` variable, a test Dockerfile not checked out here).
pub fn load_state(path: &Path) -> Result<StateLocation, ConfigError> {
    #[derive(Deserialize)]
    struct StateOnly {
        state: Option<String>,
        state_password_env: Option<String>,
    }
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError { path: name.clone(), location: None, reason: format!("cannot read: {e}") })?;
    let file: StateOnly = parse_yaml(&text, &name)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(state_location(file.state, file.state_password_env, &base))
}

/// `state:` as written: a PostgreSQL URL, or a folder relative to the file's.
fn state_location(state: Option<String>, password_env: Option<String>, base: &Path) -> StateLocation {
    match state {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => StateLocation::Postgres { url, password_env },
        Some(folder) => StateLocation::Folder(base.join(folder)),
        None => StateLocation::Folder(base.join(".airlock")),
    }
}

/// Where a checked setting sits, for [`ConfigError`]s: the location, the key, the reason.
type At<'a> = dyn Fn(Option<&serde_saphyr::Location>, String, String) -> ConfigError + 'a;

/// Checks and converts the `gates:` of an import or a mirror; `key` names a key of the entry.
fn convert_gates(entries: &[GateFile], base: &Path, key: &dyn Fn(&str) -> String, at: &At<'_>) -> Result<Vec<Gate>, ConfigError> {
    let base = base.to_path_buf();
    let mut gates: Vec<Gate> = Vec::new();
    for (g, gate) in entries.iter().enumerate() {
        let gkey = |k: &str| key(&format!("gates[{g}].{k}"));
        let gate_name = gate.name.value.clone();
        if gates.iter().any(|other| other.name == gate_name) {
            return Err(at(Some(&gate.name.referenced), gkey("name"), format!("`{gate_name}` is used by an earlier gate")));
        }
        for needed in &gate.when {
            if !gates.iter().any(|other| other.name == needed.value) {
                return Err(at(Some(&needed.referenced), gkey("when"), format!("`{}` is not an earlier gate of this import", needed.value)));
            }
        }
        let timeout = match &gate.timeout {
            Some(t) => parse_duration(&t.value).map_err(|reason| at(Some(&t.referenced), gkey("timeout"), reason))?,
            None => Duration::from_secs(30 * 60),
        };
        let mut kinds = Vec::new();
        if let Some(policy) = &gate.policy {
            if let Some(size) = &policy.max_size {
                parse_size(size).map_err(|reason| at(None, gkey("policy.max_size"), reason))?;
            }
            if let Some(age) = &policy.max_age {
                parse_duration(age).map_err(|reason| at(None, gkey("policy.max_age"), reason))?;
            }
            for platform in &policy.platforms {
                platform.parse::<PlatformSpec>().map_err(|e| at(None, gkey("policy.platforms"), e.to_string()))?;
            }
            kinds.push(GateKind::Policy(policy.clone()));
        }
        if let Some(test) = &gate.test {
            let dockerfile = base.join(&test.dockerfile);
            if !dockerfile.is_file() {
                return Err(at(Some(&gate.name.referenced), gkey("test.dockerfile"), format!("`{}` is not a file", dockerfile.display())));
            }
            let context = match &test.context {
                Some(context) => base.join(context),
                None => dockerfile.parent().map(Path::to_path_buf).unwrap_or_else(|| base.clone()),
            };
            kinds.push(GateKind::Test { dockerfile, context, command: test.command.clone(), build_args: test.build_args.clone() });
        }
        if let Some(command) = &gate.command {
            if command.is_empty() {
                return Err(at(Some(&gate.name.referenced), gkey("command"), "names no program".into()));
            }
            for arg in command {
                check_template(arg).map_err(|reason| at(Some(&gate.name.referenced), gkey("command"), reason))?;
            }
            kinds.push(GateKind::Command(command.clone()));
        }
        if let Some(signature) = &gate.signature {
            let key_path = base.join(&signature.key);
            if !key_path.is_file() {
                return Err(at(Some(&gate.name.referenced), gkey("signature.key"), format!("`{}` is not a file", key_path.display())));
            }
            kinds.push(GateKind::Signature { key: key_path });
        }
        if kinds.len() != 1 {
            return Err(at(Some(&gate.name.referenced), gkey("name"), format!("gate `{gate_name}` needs exactly one of `policy`, `test`, `command`, `signature`")));
        }
        let when = gate.when.iter().map(|w| w.value.clone()).collect();
        for name in &gate.env {
            let valid = !name.value.is_empty() && !name.value.contains(['=', '\0']);
            if !valid {
                return Err(at(Some(&name.referenced), gkey("env"), format!("`{}` is not a variable name", name.value)));
            }
        }
        let env = gate.env.iter().map(|e| e.value.clone()).collect();
        gates.push(Gate { name: gate_name, when, timeout, env, kind: kinds.remove(0) });
    }
    Ok(gates)
}

/// [`load`] for text already read; `path` names the file and anchors relative paths.
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let file: File = parse_yaml(text, &name)?;
    let at = |location: Option<&serde_saphyr::Location>, key: String, reason: String| ConfigError {
        path: name.clone(),
        location: location.filter(|l| l.line() > 0).map(|l| (l.line(), l.column())),
        reason: format!("{key}: {reason}"),
    };
    if file.imports.is_empty() {
        return Err(at(None, "imports".into(), "lists nothing to import".into()));
    }
    let mut imports: Vec<Import> = Vec::new();
    for (idx, entry) in file.imports.iter().enumerate() {
        let key = |k: &str| format!("imports[{idx}].{k}");
        let spanned_ref = |value: &Spanned<String>, k: &str| -> Result<Reference, ConfigError> {
            value.value.parse::<Reference>().map_err(|e| at(Some(&value.referenced), key(k), e.to_string()))
        };
        let name_value = &entry.name.value;
        if name_value.is_empty() || !name_value.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(at(Some(&entry.name.referenced), key("name"), format!("`{name_value}` must be letters, digits, `.`, `_` or `-`")));
        }
        if imports.iter().any(|i| &i.name == name_value) {
            return Err(at(Some(&entry.name.referenced), key("name"), format!("`{name_value}` is used by an earlier import")));
        }
        let source = spanned_ref(&entry.source, "source")?;
        let staging = spanned_ref(&entry.staging, "staging")?;
        let target = spanned_ref(&entry.target, "target")?;
        if staging.repository_key() == target.repository_key() {
            return Err(at(Some(&entry.staging.referenced), key("staging"), "must differ from `target`: staging is the quarantine".into()));
        }
        let filter = tag_filter(&entry.tags, entry.tag_regex.as_deref(), &entry.exclude, entry.semver.as_deref(), entry.latest).map_err(|(k, reason)| at(None, key(k), reason))?;
        if entry.tags.is_empty() && entry.tag_regex.is_none() && entry.semver.is_none() && entry.latest.is_none() {
            return Err(at(Some(&entry.source.referenced), key("tags"), "name the tags to import: `tags`, `tag_regex`, `semver` or `latest`".into()));
        }
        let platforms = entry
            .platforms
            .iter()
            .map(|p| p.value.parse::<PlatformSpec>().map_err(|e| at(Some(&p.referenced), key("platforms"), e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let unique_tag = match &entry.unique_tag {
            Some(template) => {
                check_template(&template.value).map_err(|reason| at(Some(&template.referenced), key("unique_tag"), reason))?;
                template.value.clone()
            }
            None => DEFAULT_UNIQUE_TAG.to_owned(),
        };
        let gates = convert_gates(&entry.gates, &base, &key, &at)?;
        let mut dependents = Vec::new();
        for (d, dependent) in entry.dependents.iter().enumerate() {
            let action = match (&dependent.command, &dependent.webhook) {
                (Some(command), None) if !command.is_empty() => DependentAction::Command(command.clone()),
                (None, Some(url)) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(at(None, key(&format!("dependents[{d}].webhook")), format!("`{url}` is not an http(s) URL")));
                    }
                    DependentAction::Webhook(url.clone())
                }
                _ => return Err(at(None, key(&format!("dependents[{d}]")), "needs exactly one of `command` (a non-empty list) or `webhook`".into())),
            };
            let name = dependent.name.clone().unwrap_or_else(|| match &action {
                DependentAction::Command(command) => command.join(" "),
                DependentAction::Webhook(url) => format!("webhook {}", airlock_store::remote::redact_url(url)),
            });
            dependents.push(Dependent { name, action });
        }
        let duration = |value: &Option<Spanned<String>>, k: &str| -> Result<Option<Duration>, ConfigError> {
            value.as_ref().map(|v| parse_duration(&v.value).map_err(|reason| at(Some(&v.referenced), key(k), reason))).transpose()
        };
        imports.push(Import {
            name: name_value.clone(),
            source,
            filter,
            platforms,
            staging,
            target,
            unique_tag,
            gates,
            dependents,
            interval: duration(&entry.interval, "interval")?,
            timer: duration(&entry.timer, "timer")?,
            gate_repo: match &entry.gate_repo {
                None => None,
                Some(repo) if repo.value.starts_with('-') || repo.value.chars().any(char::is_control) => {
                    return Err(at(Some(&repo.referenced), key("gate_repo"), format!("`{}` is not a folder or a URL", repo.value.escape_debug())));
                }
                Some(repo) if repo.value.contains("://") || repo.value.starts_with("git@") => Some(GateRepo::Url(repo.value.clone())),
                Some(repo) => {
                    let folder = base.join(&repo.value);
                    if !folder.is_dir() {
                        return Err(at(Some(&repo.referenced), key("gate_repo"), format!("`{}` is not a folder (a git checkout) or a URL", folder.display())));
                    }
                    Some(GateRepo::Folder(folder))
                }
            },
        });
    }
    let interval = match &file.watch.interval {
        Some(v) => parse_duration(&v.value).map_err(|reason| at(Some(&v.referenced), "watch.interval".into(), reason))?,
        None => Duration::from_secs(5 * 60),
    };
    let lease = match &file.lease {
        Some(v) => parse_duration(&v.value).map_err(|reason| at(Some(&v.referenced), "lease".into(), reason))?,
        None => Duration::from_secs(60),
    };
    if lease < Duration::from_secs(3) {
        return Err(at(file.lease.as_ref().map(|v| &v.referenced), "lease".into(), "a lease shorter than 3s would run out between renewals: make it longer".into()));
    }
    let runtime = file.runtime.runtime();
    Ok(Config {
        path: path.to_path_buf(),
        registries: registries(&file.registries, &name)?,
        state: state_location(file.state, file.state_password_env, &base),
        lease,
        runtime,
        interval,
        listen: file.watch.listen,
        imports,
    })
}

/// Checks a tag or argument template compiles and names only the variables airlock gives.
fn check_template(template: &str) -> Result<(), String> {
    let env = minijinja::Environment::new();
    let compiled = env.template_from_str(template).map_err(|e| format!("invalid template `{template}`: {e}"))?;
    for variable in compiled.undeclared_variables(false) {
        if !TEMPLATE_VARIABLES.contains(&variable.as_str()) {
            return Err(format!("unknown variable `{variable}` in `{template}`; known: {}", TEMPLATE_VARIABLES.join(", ")));
        }
    }
    Ok(())
}

/// The variables of tag and argument templates.
pub const TEMPLATE_VARIABLES: &[&str] = &["tag", "run_id", "digest", "date", "reference", "repository", "import"];

/// `30s`, `5m`, `2h`, `7d`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration such as `30s`, `5m`, `2h` or `7d`"))?;
    let seconds = match unit.trim() {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("`{text}` is not a duration such as `30s`, `5m`, `2h` or `7d`")),
    };
    Ok(Duration::from_secs(seconds))
}

/// `512`, `200KB`, `200MB`, `1GB` (powers of 1000) or `KiB`, `MiB`, `GiB` (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("`{text}` is not a size such as `200MB` or `1GiB`"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("`{text}` is not a size such as `200MB` or `1GiB`")),
    };
    Ok(n * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse(text, Path::new("airlock.yaml")).unwrap_err().to_string()
    }

    const MINIMAL: &str = "imports:\n  - name: node\n    source: 127.0.0.1:5000/upstream/node\n    tags: [15-alpine]\n    staging: 127.0.0.1:5000/staging/node\n    target: 127.0.0.1:5000/base-artifacts/node\n";

    #[test]
    fn a_gate_repo_is_never_an_option_for_git() {
        for hostile in ["--upload-pack=touch /tmp/x", "-c core.sshCommand=x"] {
            let error = err(&format!("{MINIMAL}    gate_repo: '{hostile}'\n"));
            assert!(error.contains("gate_repo") && error.contains("is not a folder or a URL"), "{error}");
        }
        let config = parse(&format!("{MINIMAL}    gate_repo: https://git.example.com/gates.git\n"), Path::new("airlock.yaml")).unwrap();
        assert_eq!(config.imports[0].gate_repo, Some(GateRepo::Url("https://git.example.com/gates.git".into())));
    }

    #[test]
    fn a_minimal_file_gets_the_defaults() {
        let config = parse(MINIMAL, Path::new("/etc/airlock/airlock.yaml")).unwrap();
        let import = &config.imports[0];
        assert_eq!(import.unique_tag, DEFAULT_UNIQUE_TAG);
        assert_eq!(config.state, StateLocation::Folder("/etc/airlock/.airlock".into()));
        assert_eq!(config.runtime.command, "podman");
        assert_eq!(config.interval, Duration::from_secs(300));
        assert_eq!(import.target.to_string(), "127.0.0.1:5000/base-artifacts/node:latest");
    }

    #[test]
    fn gates_and_dependents() {
        let text = format!(
            "{MINIMAL}    gates:\n      - name: policy\n        policy: {{forbid_env: {{BACKGROUND_COLOR: [red]}}, max_size: 200MB, max_age: 30d}}\n      - name: scan\n        when: [policy]\n        timeout: 2m\n        command: [scanner, '{{{{reference}}}}']\n    dependents:\n      - command: [make, rebuild]\n      - webhook: http://127.0.0.1:9/hook\n"
        );
        let config = parse(&text, Path::new("airlock.yaml")).unwrap();
        let import = &config.imports[0];
        assert_eq!(import.gates.len(), 2);
        assert_eq!(import.gates[1].when, vec!["policy"]);
        assert_eq!(import.gates[1].timeout, Duration::from_secs(120));
        assert!(matches!(&import.gates[0].kind, GateKind::Policy(p) if p.forbid_env["BACKGROUND_COLOR"] == ["red"]));
        assert_eq!(import.dependents.len(), 2);
    }

    #[test]
    fn mirrors_are_read_beside_serves_own_keys() {
        let path = Path::new("/etc/airlock/serve.yaml");
        let yaml = "root: /srv\nstate: postgres://airlock@db/airlock\nmirrors:\n  - upstream: docker.io\n    allow: ['library/*']\n    gates:\n      - name: p\n        policy: {forbid_env: {X: [y]}}\n  - upstream: 127.0.0.1:5000\n    wait: 2s\n";
        let config = parse_mirrors(yaml, path).unwrap().expect("mirrors");
        assert_eq!(config.mirrors.iter().map(|m| m.prefix.as_str()).collect::<Vec<_>>(), ["docker.io", "127.0.0.1-5000"]);
        assert_eq!((config.mirrors[0].gates.len(), config.mirrors[1].wait, config.mirrors[1].interval), (1, Duration::from_secs(2), Duration::from_secs(300)));
        assert!(matches!(config.state, StateLocation::Postgres { .. }));
        assert!(parse_mirrors("root: /srv\n", path).unwrap().is_none());
        let error = |yaml: &str| parse_mirrors(yaml, path).unwrap_err().to_string();
        assert!(error("mirrors:\n  - upstream: https://x.io\n").contains("mirrors[0].upstream: `https://x.io` is not a registry host"));
        assert!(error("mirrors:\n  - upstream: a.io\n  - upstream: a.io\n").contains("served by an earlier mirror"));
        assert!(error("mirrors:\n  - upstream: a.io\n    wait: soon\n").contains("mirrors[0].wait: `soon` is not a duration"));
        assert!(error("mirrors:\n  - upstream: a.io\n    gates:\n      - name: g\n").contains("mirrors[0].gates[0].name: gate `g` needs exactly one of"));
    }

    #[test]
    fn globs_match_whole_names() {
        for (pattern, text, expected) in [("library/*", "library/node", true), ("library/*", "other/node", false), ("*", "a/b/c", true), ("a?c", "abc", true), ("a?c", "abbc", false), ("*-rc*", "1.0-rc1", true), ("", "", true), ("", "x", false)] {
            assert_eq!(glob_matches(pattern, text), expected, "{pattern} {text}");
        }
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let e = err(&MINIMAL.replace("    tags:", "    tagz:"));
        assert!(e.starts_with("airlock.yaml:4:5: unknown field `tagz`"), "{e}");
        let e = err(&MINIMAL.replace("127.0.0.1:5000/staging/node", "Bad Ref"));
        assert!(e.starts_with("airlock.yaml:5:14: imports[0].staging: invalid reference"), "{e}");
        let e = err(&format!("{MINIMAL}    gates:\n      - name: a\n        when: [b]\n        command: [x]\n"));
        assert!(e.starts_with("airlock.yaml:9:16: imports[0].gates[0].when: `b` is not an earlier gate"), "{e}");
        let e = err(&format!("{MINIMAL}    gates:\n      - name: a\n"));
        assert!(e.contains("imports[0].gates[0].name: gate `a` needs exactly one of"), "{e}");
        let e = err(&format!("{MINIMAL}    unique_tag: '{{{{tag}}}}-{{{{nope}}}}'\n"));
        assert!(e.contains(":7:17: imports[0].unique_tag: unknown variable `nope`"), "{e}");
        let e = err(&MINIMAL.replace("staging/node", "base-artifacts/node"));
        assert!(e.contains("imports[0].staging: must differ from `target`"), "{e}");
        let e = err(&format!("{MINIMAL}    interval: soon\n"));
        assert!(e.contains(":7:15: imports[0].interval: `soon` is not a duration"), "{e}");
        assert!(err("imports: []\n").contains("imports: lists nothing to import"));
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("2 weeks").is_err());
        assert_eq!(parse_size("200MB").unwrap(), 200_000_000);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("big").is_err());
    }
}

/// The gated pull-through mirror of `airlock serve` (`mirrors:` in serve.yaml), with what it
/// shares with `airlock.yaml`: registries, the container runtime, the run database and leases.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// The file, for messages.
    pub path: PathBuf,
    /// The upstreams, in file order; the first serves requests that name none.
    pub mirrors: Vec<Mirror>,
    /// Registry settings (upstream credentials) with their secrets read.
    pub registries: Vec<RegistryConfig>,
    /// How `test` gates build and run containers.
    pub runtime: Runtime,
    /// Where runs and leases are recorded (shared with `airlock watch` when it names the same).
    pub state: StateLocation,
    /// How long an import's lease lasts without renewal.
    pub lease: Duration,
}

/// One upstream a mirror serves.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// The upstream registry as clients name it (`docker.io`, `ghcr.io`, `127.0.0.1:5000`):
    /// containerd's `?ns=`, and where imports come from.
    pub upstream: String,
    /// Where its promoted content lives in the registry (`docker.io/library/node`), and the
    /// first path component that names this upstream in a request (`/v2/docker.io/...`).
    pub prefix: String,
    /// Repositories served (globs: `*` any characters, `?` one); empty: every one.
    pub allow: Vec<String>,
    /// Repositories never served, whatever `allow` says.
    pub deny: Vec<String>,
    /// Tags served (globs); empty: every one.
    pub allow_tags: Vec<String>,
    /// Tags never served.
    pub deny_tags: Vec<String>,
    /// Only these platforms of an index; empty: all.
    pub platforms: Vec<PlatformSpec>,
    /// The gates, in order, as an import's.
    pub gates: Vec<Gate>,
    /// How long a pull of something new waits for its gated import before a `404` that says
    /// it is being checked.
    pub wait: Duration,
    /// How often a served tag is checked upstream (one `HEAD`, shared by every client).
    pub interval: Duration,
}

#[derive(Debug, Deserialize)]
struct ServeMirrorsFile {
    #[serde(default)]
    mirrors: Vec<MirrorFile>,
    #[serde(default)]
    registries: BTreeMap<String, RegistryEntry>,
    #[serde(default)]
    runtime: RuntimeFile,
    state: Option<String>,
    state_password_env: Option<String>,
    lease: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorFile {
    upstream: Spanned<String>,
    prefix: Option<Spanned<String>>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    allow_tags: Vec<String>,
    #[serde(default)]
    deny_tags: Vec<String>,
    #[serde(default)]
    platforms: Vec<Spanned<String>>,
    #[serde(default)]
    gates: Vec<GateFile>,
    wait: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
}

/// The `mirrors:` of serve.yaml `text` (`path` names it and anchors relative paths); `None`
/// when it has none. The keys serve itself reads are checked by serve's own parser.
pub fn parse_mirrors(text: &str, path: &Path) -> Result<Option<MirrorConfig>, ConfigError> {
    let name = path.display().to_string();
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let file: ServeMirrorsFile = parse_yaml(text, &name)?;
    if file.mirrors.is_empty() {
        return Ok(None);
    }
    let at = |location: Option<&serde_saphyr::Location>, key: String, reason: String| ConfigError {
        path: name.clone(),
        location: location.filter(|l| l.line() > 0).map(|l| (l.line(), l.column())),
        reason: format!("{key}: {reason}"),
    };
    let mut mirrors: Vec<Mirror> = Vec::new();
    for (idx, entry) in file.mirrors.iter().enumerate() {
        let key = |k: &str| format!("mirrors[{idx}].{k}");
        let upstream = entry.upstream.value.trim().trim_end_matches('/').to_owned();
        // The upstream must read as a registry host: `HOST/repo` parses with it as the host.
        let probe = format!("{upstream}/probe").parse::<Reference>();
        let is_host = matches!(&probe, Ok(Reference::Registry(r)) if r.registry == upstream || (upstream == "docker.io" && r.registry == "docker.io"));
        if upstream.is_empty() || upstream.contains("://") || !is_host {
            return Err(at(Some(&entry.upstream.referenced), key("upstream"), format!("`{upstream}` is not a registry host (`docker.io`, `ghcr.io`, `registry.example.com:5000`)")));
        }
        let prefix = match &entry.prefix {
            Some(prefix) => prefix.value.trim_matches('/').to_owned(),
            // `127.0.0.1:5000` → `127.0.0.1-5000`: a port's colon is no repository character.
            None => upstream.replace(':', "-").to_ascii_lowercase(),
        };
        if airlock_oci::validate_repository(&prefix).is_err() {
            return Err(at(entry.prefix.as_ref().map(|p| &p.referenced), key("prefix"), format!("`{prefix}` is not a repository path")));
        }
        if mirrors.iter().any(|m| m.prefix == prefix || m.upstream == upstream) {
            return Err(at(Some(&entry.upstream.referenced), key("upstream"), format!("`{upstream}` (prefix `{prefix}`) is served by an earlier mirror")));
        }
        let platforms = entry
            .platforms
            .iter()
            .map(|p| p.value.parse::<PlatformSpec>().map_err(|e| at(Some(&p.referenced), key("platforms"), e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let duration = |value: &Option<Spanned<String>>, k: &str, default: Duration| -> Result<Duration, ConfigError> {
            value.as_ref().map_or(Ok(default), |v| parse_duration(&v.value).map_err(|reason| at(Some(&v.referenced), key(k), reason)))
        };
        mirrors.push(Mirror {
            upstream,
            prefix,
            allow: entry.allow.clone(),
            deny: entry.deny.clone(),
            allow_tags: entry.allow_tags.clone(),
            deny_tags: entry.deny_tags.clone(),
            platforms,
            gates: convert_gates(&entry.gates, &base, &key, &at)?,
            wait: duration(&entry.wait, "wait", Duration::from_secs(5))?,
            interval: duration(&entry.interval, "interval", Duration::from_secs(5 * 60))?,
        });
    }
    let lease = match &file.lease {
        Some(v) => parse_duration(&v.value).map_err(|reason| at(Some(&v.referenced), "lease".into(), reason))?,
        None => Duration::from_secs(60),
    };
    Ok(Some(MirrorConfig {
        path: path.to_path_buf(),
        mirrors,
        registries: registries(&file.registries, &name)?,
        runtime: file.runtime.runtime(),
        state: state_location(file.state, file.state_password_env, &base),
        lease,
    }))
}

/// Whether `text` matches the glob `pattern` (`*` any characters, `/` too; `?` one).
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // The classic two-pointer match with one backtrack point: linear, no recursion.
    let (mut p, mut t, mut star, mut mark) = (0, 0, None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}
