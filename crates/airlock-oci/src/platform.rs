//! Platform selectors as typed on the command line: `os/arch[/variant]`.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::Platform;

/// A malformed `--platform` value.
#[derive(Debug, thiserror::Error)]
#[error("invalid platform `{input}`: expected `os/arch[/variant]`, e.g. `linux/amd64` or `linux/arm64/v8`")]
pub struct PlatformError {
    /// The value as typed.
    pub input: String,
}

/// A platform to select, with architecture aliases folded (`x86_64` is `amd64`, `aarch64` is
/// `arm64`), as Ironic's artifact selection and Docker both do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec {
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// Architecture in Go's naming, e.g. `amd64`.
    pub architecture: String,
    /// Variant, e.g. `v8`; `None` matches any.
    pub variant: Option<String>,
}

/// Folds the common aliases of CPU architecture names onto Go's names used in OCI indexes.
pub fn normalize_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i386" | "i686" => "386",
        other => other,
    }
}

impl PlatformSpec {
    /// Whether an index entry's platform is this one.
    pub fn matches(&self, platform: &Platform) -> bool {
        let os = platform.os().to_string();
        let arch = platform.architecture().to_string();
        if os != self.os || normalize_arch(&arch) != self.architecture {
            return false;
        }
        match (&self.variant, platform.variant()) {
            (None, _) => true,
            (Some(want), Some(have)) => want == have,
            // arm64 images usually omit their only variant, v8.
            (Some(want), None) => self.architecture == "arm64" && want == "v8",
        }
    }
}

impl PlatformSpec {
    /// Whether `other` (e.g. read from an image config) is allowed by this spec: same OS and
    /// architecture, and the same variant when this spec names one.
    pub fn matches_spec(&self, other: &PlatformSpec) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && match (&self.variant, &other.variant) {
                (None, _) => true,
                (Some(want), Some(have)) => want == have,
                (Some(want), None) => self.architecture == "arm64" && want == "v8",
            }
    }
}

impl FromStr for PlatformSpec {
    type Err = PlatformError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = input.split('/').collect();
        let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| valid(p)) {
            return Err(PlatformError { input: input.to_owned() });
        }
        Ok(PlatformSpec {
            os: parts[0].to_ascii_lowercase(),
            architecture: normalize_arch(&parts[1].to_ascii_lowercase()).to_owned(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(json: &str) -> Platform {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn aliases_and_variants() {
        let spec: PlatformSpec = "linux/x86_64".parse().unwrap();
        assert_eq!(spec.to_string(), "linux/amd64");
        assert!(spec.matches(&platform(r#"{"os":"linux","architecture":"amd64"}"#)));
        let arm: PlatformSpec = "linux/aarch64/v8".parse().unwrap();
        assert!(arm.matches(&platform(r#"{"os":"linux","architecture":"arm64"}"#)));
        let armv7: PlatformSpec = "linux/arm/v7".parse().unwrap();
        assert!(!armv7.matches(&platform(r#"{"os":"linux","architecture":"arm","variant":"v6"}"#)));
        assert!(!spec.matches(&platform(r#"{"os":"windows","architecture":"amd64"}"#)));
    }

    #[test]
    fn malformed() {
        for bad in ["linux", "linux/", "a/b/c/d", "linux/amd 64"] {
            assert!(bad.parse::<PlatformSpec>().unwrap_err().to_string().contains("os/arch"));
        }
    }
}
