//! `sync.yaml`: the repositories to mirror, with their filters, and settings per registry.
//!
//! ```yaml
//! registries:
//!   docker.io:
//!     username: mirror-bot
//!     password_env: DOCKERHUB_TOKEN   # or password_file: /run/secrets/hub
//!     requests_per_second: 5
//!     concurrency: 4
//!   127.0.0.1:5000:
//!     plain_http: true
//! sync:
//!   - source: docker.io/library/alpine
//!     target: 127.0.0.1:5000/mirror/alpine
//!     semver: ">=3.18"
//!     latest: 3
//!     platforms: [linux/amd64, linux/arm64]
//!   - source: ghcr.io/org/tool
//!     target: 127.0.0.1:5000/mirror/tool
//!     tags: ["1.4", "1.5"]
//! ```
//!
//! Secrets are never written in the file: `password_env` names an environment variable and
//! `password_file` a file that holds them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use airlock_oci::{PlatformSpec, Reference};
use serde::Deserialize;

use crate::filter::{full_match, version_requirement, TagFilter};
use crate::SyncJob;

/// Why a sync file was refused: the file, and where in it when known.
#[derive(Debug, thiserror::Error)]
#[error("{path}{}: {reason}", location.map(|(line, column)| format!(":{line}:{column}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// Line and column, 1-based.
    pub location: Option<(u64, u64)>,
    /// What is wrong, naming the key.
    pub reason: String,
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncFile {
    /// Settings per registry host, as written in references (`docker.io`, `host:port`).
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryEntry>,
    /// What to mirror.
    pub sync: Vec<SyncEntry>,
}

/// One registry's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// User name for basic or token auth.
    pub username: Option<String>,
    /// The environment variable that holds the password or token.
    pub password_env: Option<String>,
    /// The file that holds the password or token.
    pub password_file: Option<PathBuf>,
    /// Speak plain HTTP to it.
    #[serde(default)]
    pub plain_http: bool,
    /// Requests in flight at most.
    pub concurrency: Option<usize>,
    /// Requests per second at most.
    pub requests_per_second: Option<f64>,
}

/// One repository to mirror.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncEntry {
    /// The source repository (a tag in it is ignored).
    pub source: String,
    /// The target repository.
    pub target: String,
    /// Exactly these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Tags that fully match this regular expression.
    pub tag_regex: Option<String>,
    /// Minus tags that fully match one of these.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Tags whose version satisfies this requirement.
    pub semver: Option<String>,
    /// The newest N tags by version.
    pub latest: Option<usize>,
    /// Only these platforms of multi-platform images.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Copy signatures, SBOMs and attestations too (default true).
    #[serde(default = "yes")]
    pub referrers: bool,
}

fn yes() -> bool {
    true
}

/// A registry's resolved settings, secrets read.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// The registry host.
    pub registry: String,
    /// User name and secret, when configured.
    pub credentials: Option<(String, String)>,
    /// Plain HTTP.
    pub plain_http: bool,
    /// Requests in flight.
    pub concurrency: Option<usize>,
    /// Requests per second.
    pub requests_per_second: Option<f64>,
}

impl RegistryConfig {
    /// Puts these settings into the options registries are opened with.
    pub fn apply_to(&self, options: &mut airlock_store::remote::RegistryOptions) {
        use airlock_store::remote::{Credential, RegistrySettings, Secret};
        if self.plain_http {
            options.plain_http.push(self.registry.clone());
        }
        if let Some((username, secret)) = &self.credentials {
            options.explicit_credentials.insert(self.registry.clone(), Credential::Basic { username: username.clone(), password: Secret::new(secret.clone()) });
        }
        options
            .registry_settings
            .insert(self.registry.clone(), RegistrySettings { requests_per_second: self.requests_per_second, max_requests: self.concurrency });
    }
}

/// Reads and checks a sync file: every key known, every value valid, every secret readable.
pub fn load(path: &Path) -> Result<(Vec<SyncJob>, Vec<RegistryConfig>), ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError { path: name.clone(), location: None, reason: format!("cannot read: {e}") })?;
    parse(&text, &name)
}

/// [`load`] for text already read; `name` is used in errors.
pub fn parse(text: &str, name: &str) -> Result<(Vec<SyncJob>, Vec<RegistryConfig>), ConfigError> {
    let file: SyncFile = parse_yaml(text, name)?;
    let error = |reason: String| ConfigError { path: name.to_owned(), location: None, reason };
    if file.sync.is_empty() {
        return Err(error("`sync` lists nothing to mirror".into()));
    }
    let mut jobs = Vec::new();
    for (idx, entry) in file.sync.iter().enumerate() {
        let at = |key: &str, reason: String| error(format!("sync[{idx}].{key}: {reason}"));
        let source: Reference = entry.source.parse().map_err(|e: airlock_oci::ReferenceError| at("source", e.to_string()))?;
        let target: Reference = entry.target.parse().map_err(|e: airlock_oci::ReferenceError| at("target", e.to_string()))?;
        let filter = tag_filter(&entry.tags, entry.tag_regex.as_deref(), &entry.exclude, entry.semver.as_deref(), entry.latest).map_err(|(key, reason)| at(key, reason))?;
        let platforms = entry
            .platforms
            .iter()
            .map(|p| p.parse::<PlatformSpec>())
            .collect::<Result<_, _>>()
            .map_err(|e| at("platforms", e.to_string()))?;
        jobs.push(SyncJob { source, target, filter, platforms, referrers: entry.referrers });
    }
    Ok((jobs, registries(&file.registries, name)?))
}

/// Deserializes YAML, turning the parser's error into one that names the file, the line and
/// column, and the key.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, name: &str) -> Result<T, ConfigError> {
    serde_saphyr::from_str(text).map_err(|e| {
        let message = e.to_string();
        let message = message.lines().next().unwrap_or(&message);
        // The parser's message carries its location twice; say it once, in front.
        let decorations = regex::Regex::new(r"^(error: )?line \d+ column \d+: |,? at line \d+, column \d+$").expect("a valid pattern");
        let reason = decorations.replace_all(message, "").into_owned();
        let mut location = e.location().map(|l| (l.line(), l.column()));
        // An unknown key is reported at its mapping; point at the key itself.
        if let (Some((line, _)), Some(key)) = (location, reason.strip_prefix("unknown field `").and_then(|r| r.split('`').next())) {
            let found = text.lines().enumerate().skip(line.saturating_sub(1) as usize).find_map(|(idx, content)| {
                let trimmed = content.trim_start().trim_start_matches("- ");
                trimmed.starts_with(&format!("{key}:")).then(|| (idx as u64 + 1, (content.len() - trimmed.len()) as u64 + 1))
            });
            location = found.or(location);
        }
        ConfigError { path: name.to_owned(), location, reason }
    })
}

/// A tag filter from the keys a file writes; an error names the key at fault.
pub fn tag_filter(
    tags: &[String],
    tag_regex: Option<&str>,
    exclude: &[String],
    semver: Option<&str>,
    latest: Option<usize>,
) -> Result<TagFilter, (&'static str, String)> {
    let regex = tag_regex.map(full_match).transpose().map_err(|e| ("tag_regex", e.to_string()))?;
    let exclude = exclude.iter().map(|p| full_match(p)).collect::<Result<_, _>>().map_err(|e| ("exclude", e.to_string()))?;
    let semver = semver.map(version_requirement).transpose().map_err(|e| ("semver", e.to_string()))?;
    if latest == Some(0) {
        return Err(("latest", "must be at least 1".into()));
    }
    Ok(TagFilter { tags: tags.to_vec(), regex, exclude, semver, latest })
}

/// Checks the `registries` section of a file and reads the secrets it points at.
pub fn registries(entries: &BTreeMap<String, RegistryEntry>, name: &str) -> Result<Vec<RegistryConfig>, ConfigError> {
    let mut registries = Vec::new();
    for (registry, entry) in entries {
        let at = |key: &str, reason: String| ConfigError { path: name.to_owned(), location: None, reason: format!("registries.{registry}.{key}: {reason}") };
        let secret = match (&entry.password_env, &entry.password_file) {
            (Some(_), Some(_)) => return Err(at("password_env", "give `password_env` or `password_file`, not both".into())),
            (Some(variable), None) => Some(std::env::var(variable).map_err(|_| at("password_env", format!("environment variable `{variable}` is not set")))?),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| at("password_file", format!("cannot read `{}`: {e}", file.display())))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let credentials = match (&entry.username, secret) {
            (Some(username), Some(secret)) => Some((username.clone(), secret)),
            (None, None) => None,
            (Some(_), None) => return Err(at("username", "needs `password_env` or `password_file`".into())),
            (None, Some(_)) => return Err(at("username", "is missing for the password given".into())),
        };
        if entry.concurrency == Some(0) {
            return Err(at("concurrency", "must be at least 1".into()));
        }
        if entry.requests_per_second.is_some_and(|r| r.is_nan() || r <= 0.0) {
            return Err(at("requests_per_second", "must be a positive number".into()));
        }
        registries.push(RegistryConfig {
            registry: registry.clone(),
            credentials,
            plain_http: entry.plain_http,
            concurrency: entry.concurrency,
            requests_per_second: entry.requests_per_second,
        });
    }
    Ok(registries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_err(text: &str, expected: &str) {
        let err = parse(text, "sync.yaml").unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }

    #[test]
    fn a_full_file() {
        std::env::set_var("AIRLOCK_TEST_SYNC_SECRET", "hunter2");
        let (jobs, registries) = parse(
            r#"
registries:
  docker.io:
    username: bot
    password_env: AIRLOCK_TEST_SYNC_SECRET
    requests_per_second: 5
sync:
  - source: alpine
    target: 127.0.0.1:5000/mirror/alpine
    tags: [3.20, "3.19"]
  - source: ghcr.io/o/r
    target: ocidir:///tmp/x
    tag_regex: 'v1\..*'
    exclude: ['.*-rc.*']
    semver: ">=1.2, <2"
    latest: 2
    platforms: [linux/amd64]
    referrers: false
"#,
            "sync.yaml",
        )
        .unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].filter.tags, vec!["3.20", "3.19"], "3.20 stays a string, not a float");
        assert_eq!(jobs[0].source.to_string(), "docker.io/library/alpine:latest");
        assert!(!jobs[1].referrers);
        assert_eq!(registries[0].credentials, Some(("bot".into(), "hunter2".into())));
    }

    #[test]
    fn unknown_keys_name_the_file_line_and_key() {
        check_err("sync:\n  - source: a\n    target: b\n    tagz: [x]\n", "sync.yaml:4:5: unknown field `tagz`, expected one of source, target");
        check_err("sync:\n  - source: a\n    target: [b\n", "sync.yaml:3:");
        check_err("sync:\n  - source: a\n    target: b\n    latest: many\n", "sync.yaml:4:");
    }

    #[test]
    fn bad_values_name_the_entry_and_key() {
        check_err("sync:\n  - source: a\n    target: b\n    tag_regex: '('\n", "sync[0].tag_regex: invalid regular expression");
        check_err("sync:\n  - source: Bad\n    target: b\n", "sync[0].source: invalid reference `Bad`");
        check_err("sync:\n  - source: a\n    target: b\n    semver: 'banana'\n", "sync[0].semver");
        check_err("sync:\n  - source: a\n    target: b\n    platforms: [linux]\n", "sync[0].platforms");
        check_err("registries:\n  r.io:\n    username: u\nsync:\n  - source: a\n    target: b\n", "registries.r.io.username");
        check_err("registries:\n  r.io:\n    username: u\n    password_env: AIRLOCK_TEST_UNSET_VARIABLE\nsync:\n  - source: a\n    target: b\n", "`AIRLOCK_TEST_UNSET_VARIABLE` is not set");
        check_err("sync: []\n", "nothing to mirror");
        check_err("sync:\n  - source: a\n", "target");
    }
}
