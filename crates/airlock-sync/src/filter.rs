//! Which tags of a repository to mirror.
//!
//! An explicit list wins (and needs no tag listing); otherwise every tag of the source is a
//! candidate, kept when it fully matches `--tag-regex`, matches no `--exclude`, satisfies
//! `--semver`, and is among the `--latest N` by semantic version.

use regex::Regex;
use semver::{Version, VersionReq};

/// A tag filter, checked once when built.
#[derive(Debug, Clone, Default)]
pub struct TagFilter {
    /// Exactly these tags (no listing).
    pub tags: Vec<String>,
    /// Keep tags that fully match this.
    pub regex: Option<Regex>,
    /// Drop tags that fully match any of these.
    pub exclude: Vec<Regex>,
    /// Keep tags whose version satisfies this.
    pub semver: Option<VersionReq>,
    /// Keep only the newest N by version (tags that are not versions are dropped).
    pub latest: Option<usize>,
}

/// Why a filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// A regular expression did not compile.
    #[error("invalid regular expression `{pattern}`: {reason}")]
    Regex {
        /// The pattern.
        pattern: String,
        /// The compiler's explanation.
        reason: String,
    },
    /// A version requirement did not parse.
    #[error("invalid version requirement `{requirement}`: {reason}; expected e.g. `>=1.2, <2`")]
    Semver {
        /// The requirement.
        requirement: String,
        /// The parser's explanation.
        reason: String,
    },
}

/// Compiles a pattern that must match a whole tag.
pub fn full_match(pattern: &str) -> Result<Regex, FilterError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| FilterError::Regex { pattern: pattern.to_owned(), reason: e.to_string() })
}

/// Parses `>=1.2, <2` and the like.
pub fn version_requirement(requirement: &str) -> Result<VersionReq, FilterError> {
    VersionReq::parse(requirement).map_err(|e| FilterError::Semver { requirement: requirement.to_owned(), reason: e.to_string() })
}

/// Reads a tag as a version the way image tags are written: an optional `v`, one to three
/// numbers (`3`, `3.20`, `3.20.1`), and an optional `-suffix` taken as a pre-release.
pub fn tag_version(tag: &str) -> Option<Version> {
    let text = tag.strip_prefix('v').unwrap_or(tag);
    let (core, suffix) = match text.split_once('-') {
        Some((core, suffix)) => (core, Some(suffix)),
        None => (text, None),
    };
    let numbers: Vec<&str> = core.split('.').collect();
    if numbers.is_empty() || numbers.len() > 3 || numbers.iter().any(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let mut full = numbers.join(".");
    for _ in numbers.len()..3 {
        full.push_str(".0");
    }
    if let Some(suffix) = suffix {
        full.push('-');
        full.push_str(suffix);
    }
    Version::parse(&full).ok()
}

impl TagFilter {
    /// Whether the filter needs the source's tag list.
    pub fn needs_listing(&self) -> bool {
        self.tags.is_empty()
    }

    /// The tags to mirror, from the source's `available` tags, in a stable order (by version
    /// when versions decide, else as listed).
    pub fn select(&self, available: &[String]) -> Vec<String> {
        if !self.tags.is_empty() {
            return self.tags.clone();
        }
        let mut selected: Vec<String> = available
            .iter()
            .filter(|tag| self.regex.as_ref().is_none_or(|r| r.is_match(tag)))
            .filter(|tag| !self.exclude.iter().any(|r| r.is_match(tag)))
            .filter(|tag| match &self.semver {
                Some(requirement) => tag_version(tag).is_some_and(|v| requirement.matches(&v)),
                None => true,
            })
            .cloned()
            .collect();
        if let Some(n) = self.latest {
            let mut versioned: Vec<(Version, String)> = selected.into_iter().filter_map(|t| tag_version(&t).map(|v| (v, t))).collect();
            // Newest first; `3.20` and `3.20.0` are the same version: keep the longer spelling
            // after the shorter so the order is stable.
            versioned.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            versioned.truncate(n);
            selected = versioned.into_iter().map(|(_, t)| t).collect();
        }
        selected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &str) -> Vec<String> {
        list.split_whitespace().map(str::to_owned).collect()
    }

    fn check(filter: TagFilter, available: &str, expected: &str) {
        assert_eq!(filter.select(&tags(available)), tags(expected));
    }

    const AVAILABLE: &str = "latest 1.0 1.1.0 1.2 1.2.5 v1.3.0 2.0.0 2.0.0-rc1 2.1-alpine edge 10.0";

    #[test]
    fn regex_is_a_full_match_and_exclude_drops() {
        let filter = TagFilter { regex: Some(full_match(r"1\..*").unwrap()), exclude: vec![full_match(r".*\.5").unwrap()], ..Default::default() };
        check(filter, AVAILABLE, "1.0 1.1.0 1.2");
        let filter = TagFilter { regex: Some(full_match("1").unwrap()), ..Default::default() };
        check(filter, AVAILABLE, "");
    }

    #[test]
    fn semver_ranges_and_latest() {
        let filter = TagFilter { semver: Some(version_requirement(">=1.2, <2").unwrap()), ..Default::default() };
        check(filter, AVAILABLE, "1.2 1.2.5 v1.3.0");
        let filter = TagFilter { latest: Some(3), ..Default::default() };
        // 2.1-alpine is a pre-release of 2.1.0, newer than 2.0.0.
        check(filter, AVAILABLE, "10.0 2.1-alpine 2.0.0");
        let filter = TagFilter { latest: Some(2), exclude: vec![full_match(".*-.*").unwrap()], ..Default::default() };
        check(filter, AVAILABLE, "10.0 2.0.0");
    }

    #[test]
    fn explicit_tags_need_no_listing() {
        let filter = TagFilter { tags: tags("a b"), regex: Some(full_match("x").unwrap()), ..Default::default() };
        assert!(!filter.needs_listing());
        check(filter, "", "a b");
    }

    #[test]
    fn tag_versions() {
        assert_eq!(tag_version("v1.2"), Some(Version::new(1, 2, 0)));
        assert_eq!(tag_version("3"), Some(Version::new(3, 0, 0)));
        assert_eq!(tag_version("2.1-alpine").unwrap().pre.as_str(), "alpine");
        assert_eq!(tag_version("latest"), None);
        assert_eq!(tag_version("1.2.3.4"), None);
        assert!(version_requirement(">=banana").unwrap_err().to_string().contains("expected e.g."));
        assert!(full_match("(").unwrap_err().to_string().contains("invalid regular expression `(`"));
    }
}
