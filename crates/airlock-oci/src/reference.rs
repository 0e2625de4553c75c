//! Image references in the forms users type: `[registry/]repository[:tag][@digest]`, skopeo's
//! `docker://…`, Ironic's `oci://host/repo[:tag|@digest]`, and `ocidir://PATH[:tag|@digest]` for
//! an OCI image-layout folder, and `root://PATH//REPOSITORY[:tag|@digest]` for a repository
//! in the storage folder of `airlock serve`.

use std::fmt;
use std::str::FromStr;

use oci_spec::image::Digest;

use crate::digest::parse_digest;

/// The tag used when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// The registry a reference without a registry part refers to, as Docker does.
pub const DOCKER_HUB: &str = "docker.io";

/// A malformed reference: the message names the input and what is wrong in it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid reference `{input}`: {reason}")]
pub struct ReferenceError {
    /// The reference as typed.
    pub input: String,
    /// What is wrong in it, and where possible the form expected.
    pub reason: String,
}

/// Where content lives: a repository of a registry, or an OCI image-layout folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A repository in a registry (`docker://`, `oci://` or a bare reference).
    Registry(RegistryRef),
    /// An OCI image-layout folder (`ocidir://`).
    Layout(LayoutRef),
    /// A repository in the storage folder of `airlock serve` (`root://PATH//REPOSITORY`).
    Root(RootRef),
}

/// A reference into the storage folder of `airlock serve`, read and written without a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRef {
    /// The folder given to `airlock serve --root`.
    pub root: String,
    /// The repository in it.
    pub repository: String,
    /// The tag as written.
    pub tag: Option<String>,
    /// The digest as written.
    pub digest: Option<Digest>,
}

/// A reference into a registry, normalised as Docker does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryRef {
    /// The registry host with an optional port, e.g. `docker.io` or `localhost:5000`.
    pub registry: String,
    /// The repository path, e.g. `library/alpine`.
    pub repository: String,
    /// The tag as written; `None` when the reference gave none.
    pub tag: Option<String>,
    /// The digest as written.
    pub digest: Option<Digest>,
}

/// A reference into an OCI image-layout folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    /// The folder that holds `oci-layout`, `index.json` and `blobs/`.
    pub path: String,
    /// The tag (`org.opencontainers.image.ref.name`) as written.
    pub tag: Option<String>,
    /// The digest as written.
    pub digest: Option<Digest>,
}

impl Reference {
    /// The tag as written, if any.
    pub fn tag(&self) -> Option<&str> {
        match self {
            Reference::Registry(r) => r.tag.as_deref(),
            Reference::Layout(r) => r.tag.as_deref(),
            Reference::Root(r) => r.tag.as_deref(),
        }
    }

    /// The digest as written, if any.
    pub fn digest(&self) -> Option<&Digest> {
        match self {
            Reference::Registry(r) => r.digest.as_ref(),
            Reference::Layout(r) => r.digest.as_ref(),
            Reference::Root(r) => r.digest.as_ref(),
        }
    }

    /// What to resolve: the digest when there is one, else the tag, else `latest`.
    pub fn tag_or_digest(&self) -> String {
        match (self.digest(), self.tag()) {
            (Some(digest), _) => digest.to_string(),
            (None, Some(tag)) => tag.to_owned(),
            (None, None) => DEFAULT_TAG.to_owned(),
        }
    }

    /// The repository without tag or digest (`host/repo`, `ocidir://PATH`, `root://PATH//repo`),
    /// to compare places and to name them in messages.
    pub fn repository_key(&self) -> String {
        match self {
            Reference::Registry(r) => format!("{}/{}", r.registry, r.repository),
            Reference::Layout(r) => format!("ocidir://{}", r.path),
            Reference::Root(r) => format!("root://{}//{}", r.root, r.repository),
        }
    }

    /// The same place with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        self.pointing_at(Some(tag.to_owned()), None)
    }

    /// The same place by digest, without a tag (`host/repo@sha256:…`).
    pub fn with_digest(&self, digest: &Digest) -> Reference {
        self.pointing_at(None, Some(digest.clone()))
    }

    fn pointing_at(&self, tag: Option<String>, digest: Option<Digest>) -> Reference {
        let mut copy = self.clone();
        let (t, d) = match &mut copy {
            Reference::Registry(r) => (&mut r.tag, &mut r.digest),
            Reference::Layout(r) => (&mut r.tag, &mut r.digest),
            Reference::Root(r) => (&mut r.tag, &mut r.digest),
        };
        *t = tag;
        *d = digest;
        copy
    }
}

impl RegistryRef {
    /// The host to connect to: Docker Hub's API lives on `registry-1.docker.io`.
    pub fn endpoint_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (tag, digest) = match self {
            Reference::Registry(r) => {
                // A host Docker's rule would not see as one (`oci://myhost/app`) keeps its
                // `oci://`: printed bare, it would read back as a Docker Hub repository.
                if !looks_like_host(&r.registry) {
                    f.write_str("oci://")?;
                }
                write!(f, "{}/{}", r.registry, r.repository)?;
                (r.tag.as_deref(), r.digest.as_ref())
            }
            Reference::Layout(r) => {
                write!(f, "ocidir://{}", r.path)?;
                (r.tag.as_deref(), r.digest.as_ref())
            }
            Reference::Root(r) => {
                write!(f, "root://{}//{}", r.root, r.repository)?;
                (r.tag.as_deref(), r.digest.as_ref())
            }
        };
        match (tag, digest) {
            (None, None) => write!(f, ":{DEFAULT_TAG}"),
            (tag, digest) => {
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                if let Some(digest) = digest {
                    write!(f, "@{digest}")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |reason: String| ReferenceError { input: input.to_owned(), reason };
        if let Some(rest) = input.strip_prefix("ocidir://") {
            let (path, tag, digest) = split_tag_and_digest(rest).map_err(error)?;
            if path.is_empty() {
                return Err(error("the folder path is empty; expected `ocidir://PATH[:tag|@digest]`".into()));
            }
            return Ok(Reference::Layout(LayoutRef { path: path.to_owned(), tag, digest }));
        }
        if let Some(rest) = input.strip_prefix("root://") {
            // A serve root on S3 (`root://s3://BUCKET/PREFIX//REPO`): its own `//` is not the split.
            let split = match rest.strip_prefix("s3://") {
                Some(bucket_and_rest) => bucket_and_rest.split_once("//").map(|(bucket, name)| (&rest[..5 + bucket.len()], name)),
                None => rest.split_once("//"),
            };
            let Some((root, name)) = split else {
                return Err(error("expected `root://PATH//REPOSITORY[:tag|@digest]` (two slashes between the folder and the repository)".into()));
            };
            if root.is_empty() {
                return Err(error("the folder path is empty; expected `root://PATH//REPOSITORY[:tag]`".into()));
            }
            let (repository, tag, digest) = split_tag_and_digest(name).map_err(error)?;
            validate_repository(repository).map_err(error)?;
            return Ok(Reference::Root(RootRef { root: root.to_owned(), repository: repository.to_owned(), tag, digest }));
        }
        let (rest, explicit_host) = if let Some(rest) = input.strip_prefix("oci://") {
            (rest, true)
        } else if let Some(rest) = input.strip_prefix("docker://") {
            (rest, false)
        } else if let Some((scheme, _)) = input.split_once("://") {
            return Err(error(format!(
                "unknown transport `{scheme}://`; use `docker://`, `oci://` or `ocidir://`, or no prefix"
            )));
        } else {
            (input, false)
        };
        parse_registry_ref(rest, explicit_host).map(Reference::Registry).map_err(error)
    }
}

impl FromStr for RegistryRef {
    type Err = ReferenceError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input.parse::<Reference>()? {
            Reference::Registry(r) => Ok(r),
            Reference::Layout(_) | Reference::Root(_) => Err(ReferenceError {
                input: input.to_owned(),
                reason: "expected a registry reference, not a folder".into(),
            }),
        }
    }
}

fn parse_registry_ref(input: &str, explicit_host: bool) -> Result<RegistryRef, String> {
    if input.is_empty() {
        return Err("the reference is empty".into());
    }
    let (name, tag, digest) = split_tag_and_digest(input)?;
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest)) if explicit_host || looks_like_host(first) => (first.to_owned(), rest.to_owned()),
        _ if explicit_host => {
            return Err("an `oci://` reference needs a registry host and a repository: `oci://host/repo[:tag]`".into())
        }
        _ => (DOCKER_HUB.to_owned(), name.to_owned()),
    };
    let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
        DOCKER_HUB.to_owned()
    } else {
        registry
    };
    validate_host(&registry)?;
    let repository = if registry == DOCKER_HUB && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository
    };
    validate_repository(&repository)?;
    Ok(RegistryRef { registry, repository, tag, digest })
}

/// Docker's rule: the first path component is a registry when it has a dot or a port, or is
/// `localhost`; otherwise the reference is on Docker Hub.
fn looks_like_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

type Parts<'a> = (&'a str, Option<String>, Option<Digest>);

fn split_tag_and_digest(input: &str) -> Result<Parts<'_>, String> {
    let (rest, digest) = match input.rsplit_once('@') {
        Some((rest, digest)) => (rest, Some(parse_digest(digest).map_err(|e| e.reason)?)),
        None => (input, None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        // `repo:@sha256:…`, an empty tag before a digest, is how Ironic's documentation writes
        // a pinned image: the digest alone names it.
        Some(colon) if digest.is_some() && colon == rest.len() - last_slash - 1 => (&rest[..last_slash + colon], None),
        Some(colon) => {
            let colon = last_slash + colon;
            let tag = &rest[colon + 1..];
            validate_tag(tag)?;
            (&rest[..colon], Some(tag.to_owned()))
        }
        None => (rest, None),
    };
    Ok((name, tag, digest))
}

/// Checks a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}` (distribution-spec); the error says why not.
pub fn validate_tag(tag: &str) -> Result<(), String> {
    let mut chars = tag.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok || tag.len() > 128 || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(format!(
            "tag `{tag}` must be 1 to 128 characters of letters, digits, `_`, `.` and `-`, not starting with `.` or `-`"
        ));
    }
    Ok(())
}

fn validate_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') || host.starts_with('[') => (name, Some(port)),
        _ => (host, None),
    };
    if let Some(port) = port {
        if port.parse::<u16>().is_err() {
            return Err(format!("registry `{host}` has an invalid port `{port}`"));
        }
    }
    // Labels of letters, digits and `-` joined by single dots (`.` or `..` alone is a path).
    let label_ok = |label: &str| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-') && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let ok = !name.is_empty() && (name.starts_with('[') && name.ends_with(']') || name.split('.').all(label_ok));
    if !ok {
        return Err(format!("registry `{host}` is not a valid host name"));
    }
    Ok(())
}

/// Checks a repository name: components of lowercase alphanumerics joined by `.`, `_`, `__` or
/// runs of `-`, separated by `/` (distribution-spec); the error says why not.
pub fn validate_repository(repository: &str) -> Result<(), String> {
    if repository.is_empty() {
        return Err("the repository name is empty".into());
    }
    if repository.len() > 255 {
        return Err("the repository name is longer than 255 characters".into());
    }
    for component in repository.split('/') {
        if component.is_empty() {
            return Err(format!("repository `{repository}` has an empty path component"));
        }
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!("repository `{repository}` must be lowercase"));
        }
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err(format!(
                "repository component `{component}` must start and end with a lowercase letter or digit"
            ));
        }
        let mut idx = 0;
        while idx < bytes.len() {
            let b = bytes[idx];
            if alnum(b) {
                idx += 1;
                continue;
            }
            let start = idx;
            while idx < bytes.len() && !alnum(bytes[idx]) {
                idx += 1;
            }
            let separator = &component[start..idx];
            let valid = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
            if !valid {
                return Err(format!(
                    "repository component `{component}` has an invalid separator `{separator}` (use `.`, `_`, `__` or `-`)"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let reference: Reference = input.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reference.to_string(), expected);
    }

    fn check_err(input: &str, reason: &str) {
        let err = input.parse::<Reference>().unwrap_err().to_string();
        assert!(err.contains(&format!("`{input}`")), "{err}");
        assert!(err.contains(reason), "{err}");
    }

    const D: &str = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";

    #[test]
    fn docker_hub_normalisation() {
        check("alpine", "docker.io/library/alpine:latest");
        check("alpine:3.20", "docker.io/library/alpine:3.20");
        check("bitnami/redis:7", "docker.io/bitnami/redis:7");
        check("docker://alpine", "docker.io/library/alpine:latest");
        check("index.docker.io/library/alpine", "docker.io/library/alpine:latest");
        check("docker.io/alpine", "docker.io/library/alpine:latest");
    }

    #[test]
    fn registries_ports_and_digests() {
        check("localhost:5000/foo/bar:v1", "localhost:5000/foo/bar:v1");
        check("localhost/foo", "localhost/foo:latest");
        check(&format!("ghcr.io/o/r@{D}"), &format!("ghcr.io/o/r@{D}"));
        check(&format!("ghcr.io/o/r:v1@{D}"), &format!("ghcr.io/o/r:v1@{D}"));
        check("127.0.0.1:5000/a", "127.0.0.1:5000/a:latest");
        let sha512 = format!("sha512:{}", "a".repeat(128));
        check(&format!("quay.io/a/b@{sha512}"), &format!("quay.io/a/b@{sha512}"));
    }

    #[test]
    fn oci_urls_name_the_host_first() {
        check("oci://registry.example.com/ironic/deploy", "registry.example.com/ironic/deploy:latest");
        check("oci://host/path:tag", "oci://host/path:tag");
        check("oci://registry.local/path:tag", "registry.local/path:tag");
        check(&format!("oci://host:8080/a/b@{D}"), &format!("host:8080/a/b@{D}"));
        check_err("oci://justhost", "needs a registry host and a repository");
        // Ironic's documented form: an empty tag before the digest.
        check(&format!("oci://host:8080/ironic/deploy:@{D}"), &format!("host:8080/ironic/deploy@{D}"));
        check_err("oci://host/a/b:", "tag ``");
    }

    #[test]
    fn layout_folders() {
        check("ocidir:///tmp/x", "ocidir:///tmp/x:latest");
        check("ocidir://rel/dir:v2", "ocidir://rel/dir:v2");
        check(&format!("ocidir:///a/b@{D}"), &format!("ocidir:///a/b@{D}"));
        let Reference::Layout(layout) = "ocidir:///tmp/x:v1".parse().unwrap() else { panic!() };
        assert_eq!(layout.path, "/tmp/x");
        assert_eq!(layout.tag.as_deref(), Some("v1"));
    }

    #[test]
    fn serve_roots() {
        check("root:///var/lib/airlock//team/app:v1", "root:///var/lib/airlock//team/app:v1");
        check("root://data//app", "root://data//app:latest");
        let Reference::Root(root) = "root:///srv//a/b@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b".parse().unwrap() else { panic!() };
        assert_eq!((root.root.as_str(), root.repository.as_str()), ("/srv", "a/b"));
        check_err("root:///srv/app", "two slashes");
        check("root://s3://images/registry//team/app:v1", "root://s3://images/registry//team/app:v1");
        let Reference::Root(on_s3) = "root://s3://images//app@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b".parse().unwrap() else { panic!() };
        assert_eq!((on_s3.root.as_str(), on_s3.repository.as_str()), ("s3://images", "app"));
        check_err("root://s3://images/app", "two slashes");
        check_err("root:///srv//App", "lowercase");
    }

    #[test]
    fn malformed_references_say_what_is_wrong() {
        check_err("Alpine", "must be lowercase");
        check_err("alpine:", "tag ``");
        check_err("alpine:-x", "must be 1 to 128 characters");
        check_err("alpine@sha256:123", "has 64 hex digits");
        check_err("foo//bar", "empty path component");
        check_err("localhost:99999/x", "invalid port");
        check_err("ftp://x/y", "unknown transport");
        check_err("a..b", "invalid separator");
        check_err("", "empty");
        check_err("ocidir://", "folder path is empty");
        check_err("./mirror", "not a valid host name");
        check_err("../x/y", "not a valid host name");
    }
}
