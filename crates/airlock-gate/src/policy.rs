//! The `policy` gate: rules checked against each platform's image configuration.

use airlock_oci::PlatformSpec;

use crate::config::{parse_duration, parse_size, Policy};

/// What the gate reads of one platform of the candidate.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    /// `os/arch[/variant]`.
    pub platform: String,
    /// The image configuration (`config.Env`, `config.User`, `config.Labels`, `created`).
    pub config: serde_json::Value,
    /// Config plus layers, in bytes.
    pub size: u64,
}

/// Every rule `image` breaks, each said in a sentence; empty when it passes.
pub fn check(policy: &Policy, image: &ImageFacts) -> Vec<String> {
    let mut violations = Vec::new();
    let section = &image.config["config"];
    let env: Vec<(String, String)> = section["Env"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .filter_map(|v| v.as_str())
                .map(|v| match v.split_once('=') {
                    Some((name, value)) => (name.to_owned(), value.to_owned()),
                    None => (v.to_owned(), String::new()),
                })
                .collect()
        })
        .unwrap_or_default();
    let value_of = |name: &str| env.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    for (name, forbidden) in &policy.forbid_env {
        match value_of(name) {
            Some(value) if forbidden.is_empty() => violations.push(format!("environment variable {name} is set (to `{value}`), which the policy forbids")),
            Some(value) if forbidden.iter().any(|f| f.eq_ignore_ascii_case(value)) => {
                violations.push(format!("environment variable {name}={value} is forbidden"))
            }
            _ => {}
        }
    }
    for (name, required) in &policy.require_env {
        match (value_of(name), required) {
            (None, _) => violations.push(format!("environment variable {name} must be set")),
            (Some(value), Some(required)) if value != required => violations.push(format!("environment variable {name} is `{value}`, the policy requires `{required}`")),
            _ => {}
        }
    }
    if policy.non_root {
        let user = section["User"].as_str().unwrap_or("");
        let name = user.split(':').next().unwrap_or("");
        if name.is_empty() || name == "root" || name == "0" {
            violations.push(format!("the image runs as root (User is `{user}`); the policy requires a non-root user"));
        }
    }
    for label in &policy.required_labels {
        if section["Labels"].get(label).is_none() {
            violations.push(format!("label `{label}` is missing"));
        }
    }
    if !policy.platforms.is_empty() {
        let allowed: Vec<PlatformSpec> = policy.platforms.iter().filter_map(|p| p.parse().ok()).collect();
        let ours: Option<PlatformSpec> = image.platform.parse().ok();
        if !ours.is_some_and(|p| allowed.iter().any(|a| a.matches_spec(&p))) {
            violations.push(format!("platform {} is not allowed (allowed: {})", image.platform, policy.platforms.join(", ")));
        }
    }
    if let Some(limit) = policy.max_size.as_deref().and_then(|s| parse_size(s).ok()) {
        if image.size > limit {
            violations.push(format!("size {} bytes exceeds the limit of {} ({limit} bytes)", image.size, policy.max_size.as_deref().unwrap_or("")));
        }
    }
    if let Some(age) = policy.max_age.as_deref().and_then(|s| parse_duration(s).ok()) {
        match image.config["created"].as_str().and_then(airlock_oci::time::parse_rfc3339) {
            Some(created) => {
                let now = airlock_oci::time::now() as i64;
                if now - created > age.as_secs() as i64 {
                    let days = (now - created) / 86_400;
                    violations.push(format!("created {days} days ago, older than the limit of {}", policy.max_age.as_deref().unwrap_or("")));
                }
            }
            None => violations.push("the image has no valid `created` date, so its age cannot be checked".into()),
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(config: serde_json::Value) -> ImageFacts {
        ImageFacts { platform: "linux/amd64".into(), config, size: 1000 }
    }

    #[test]
    fn environment_rules_compare_values_without_case() {
        let policy = Policy { forbid_env: [("BACKGROUND_COLOR".to_owned(), vec!["red".to_owned()])].into(), ..Policy::default() };
        let red = image(serde_json::json!({"config": {"Env": ["PATH=/bin", "BACKGROUND_COLOR=Red"]}}));
        assert_eq!(check(&policy, &red), ["environment variable BACKGROUND_COLOR=Red is forbidden"]);
        let green = image(serde_json::json!({"config": {"Env": ["BACKGROUND_COLOR=Green"]}}));
        assert!(check(&policy, &green).is_empty());
        let required = Policy { require_env: [("NODE_VERSION".to_owned(), Some("15-alpine".to_owned()))].into(), ..Policy::default() };
        assert_eq!(check(&required, &green), ["environment variable NODE_VERSION must be set"]);
    }

    #[test]
    fn user_labels_platforms_size_and_age() {
        let policy = Policy {
            non_root: true,
            required_labels: vec!["org.opencontainers.image.source".into()],
            platforms: vec!["linux/arm64".into()],
            max_size: Some("500B".into()),
            max_age: Some("30d".into()),
            ..Policy::default()
        };
        let found = check(&policy, &image(serde_json::json!({"created": "2020-01-01T00:00:00Z", "config": {"User": "0:0"}})));
        assert_eq!(found.len(), 5, "{found:?}");
        let ok = check(
            &Policy { non_root: true, ..Policy::default() },
            &image(serde_json::json!({"config": {"User": "node"}})),
        );
        assert!(ok.is_empty());
    }
}
