//! Where registry credentials come from, in the order Docker, podman and skopeo look:
//! an explicit `--authfile`, `REGISTRY_AUTH_FILE`, podman's `${XDG_RUNTIME_DIR}/containers/auth.json`,
//! then Docker's `${DOCKER_CONFIG:-~/.docker}/config.json`. In each file `credHelpers[host]`, then
//! `auths[host]` (`auth`, `username`/`password`, `identitytoken`), then `credsStore` decide.
//! Helpers are the `docker-credential-<name>` programs of the Docker credential-helper protocol.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use super::secret::Secret;
use crate::{Error, ErrorKind, Result};

/// Credentials for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// Username and password (or a personal access token used as one).
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token endpoint.
    IdentityToken(Secret),
    /// A registry token used as is (`Authorization: Bearer`), as a pre-shared pull secret is
    /// (Ironic's `image_pull_secret`); the token service is not asked.
    BearerToken(Secret),
}

/// The files to read and write, resolved once from the environment.
#[derive(Debug, Clone)]
pub struct CredentialFiles {
    /// Read in order; the first that has an answer for a registry wins.
    pub read: Vec<PathBuf>,
    /// Where `airlock login` writes.
    pub write: PathBuf,
}

impl CredentialFiles {
    /// The files for an explicit `--authfile`, or from the environment as podman and Docker do.
    pub fn discover(explicit: Option<&Path>) -> Self {
        if let Some(path) = explicit {
            return CredentialFiles { read: vec![path.to_owned()], write: path.to_owned() };
        }
        let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let docker = env("DOCKER_CONFIG")
            .or_else(|| env("HOME").map(|home| home.join(".docker")))
            .unwrap_or_else(|| PathBuf::from(".docker"))
            .join("config.json");
        let mut read = Vec::new();
        let auth_file = env("REGISTRY_AUTH_FILE");
        read.extend(auth_file.clone());
        if let Some(runtime) = env("XDG_RUNTIME_DIR") {
            read.push(runtime.join("containers/auth.json"));
        }
        read.push(docker.clone());
        CredentialFiles { read, write: auth_file.unwrap_or(docker) }
    }

    /// The credentials for `registry`, or `None` to go anonymous.
    pub async fn lookup(&self, registry: &str) -> Result<Option<Credential>> {
        for path in &self.read {
            let Some(config) = read_config(path, registry).await? else { continue };
            if let Some(found) = lookup_in(&config, path, registry).await? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Records credentials for `registry` in the write file (created 0600 if missing), keeping
    /// every other entry and key. Returns the file written.
    pub async fn save(&self, registry: &str, credential: &Credential) -> Result<PathBuf> {
        let mut config = read_config(&self.write, registry).await?.unwrap_or_default();
        let auths = config.entry("auths").or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(auths) = auths else {
            return Err(malformed(registry, &self.write, "`auths` is not an object"));
        };
        for key in keys_for(registry) {
            auths.remove(&key);
        }
        let entry = match credential {
            Credential::Basic { username, password } => {
                let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()));
                serde_json::json!({ "auth": auth })
            }
            Credential::IdentityToken(token) => serde_json::json!({ "identitytoken": token.expose() }),
            Credential::BearerToken(token) => serde_json::json!({ "registrytoken": token.expose() }),
        };
        auths.insert(config_key(registry), entry);
        write_config(&self.write, registry, &config).await?;
        Ok(self.write.clone())
    }

    /// Removes `registry`'s entry from every file that has one; returns the files changed.
    pub async fn remove(&self, registry: &str) -> Result<Vec<PathBuf>> {
        let mut changed = Vec::new();
        let mut files = self.read.clone();
        if !files.contains(&self.write) {
            files.push(self.write.clone());
        }
        for path in files {
            let Some(mut config) = read_config(&path, registry).await? else { continue };
            let Some(Value::Object(auths)) = config.get_mut("auths") else { continue };
            let before = auths.len();
            for key in keys_for(registry) {
                auths.remove(&key);
            }
            if auths.len() != before {
                write_config(&path, registry, &config).await?;
                changed.push(path);
            }
        }
        Ok(changed)
    }
}

/// The key Docker writes for a registry (Docker Hub's is historical).
fn config_key(registry: &str) -> String {
    if registry == airlock_oci::DOCKER_HUB {
        "https://index.docker.io/v1/".into()
    } else {
        registry.into()
    }
}

/// Every spelling of a registry's key found in the wild.
fn keys_for(registry: &str) -> Vec<String> {
    let mut keys = vec![registry.to_owned(), format!("https://{registry}"), format!("http://{registry}"), format!("https://{registry}/v1/"), format!("https://{registry}/v2/")];
    if registry == airlock_oci::DOCKER_HUB {
        keys.extend(["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"].map(String::from));
    }
    keys
}

fn malformed(registry: &str, path: &Path, reason: &str) -> Error {
    Error::from(ErrorKind::Credentials { registry: registry.into(), reason: format!("`{}`: {reason}", path.display()) })
}

async fn read_config(path: &Path, registry: &str) -> Result<Option<Map<String, Value>>> {
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(malformed(registry, path, &e.to_string())),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Some(Map::new()));
    }
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(malformed(registry, path, "not a JSON object")),
        Err(e) => Err(malformed(registry, path, &format!("invalid JSON: {e}"))),
    }
}

async fn write_config(path: &Path, registry: &str, config: &Map<String, Value>) -> Result<()> {
    let fail = |e: std::io::Error| malformed(registry, path, &e.to_string());
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent).await.map_err(fail)?;
    }
    let temp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&temp).await.map_err(fail)?;
    let bytes = serde_json::to_vec_pretty(config).expect("a JSON map serialises");
    file.write_all(&bytes).await.map_err(fail)?;
    file.sync_all().await.map_err(fail)?;
    drop(file);
    tokio::fs::rename(&temp, path).await.map_err(fail)
}

async fn lookup_in(config: &Map<String, Value>, path: &Path, registry: &str) -> Result<Option<Credential>> {
    let keys = keys_for(registry);
    if let Some(Value::Object(helpers)) = config.get("credHelpers") {
        if let Some(helper) = keys.iter().find_map(|k| helpers.get(k)).and_then(Value::as_str) {
            return run_helper(helper, registry).await;
        }
    }
    if let Some(Value::Object(auths)) = config.get("auths") {
        if let Some(Value::Object(entry)) = keys.iter().find_map(|k| auths.get(k)) {
            let text = |key: &str| entry.get(key).and_then(Value::as_str).filter(|s| !s.is_empty());
            if let Some(token) = text("identitytoken") {
                return Ok(Some(Credential::IdentityToken(Secret::new(token))));
            }
            // Docker's `registrytoken`: a bearer token sent as it is.
            if let Some(token) = text("registrytoken") {
                return Ok(Some(Credential::BearerToken(Secret::new(token))));
            }
            if let Some(auth) = text("auth") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| malformed(registry, path, "`auth` is not base64 of `user:password`"))?;
                let (username, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| malformed(registry, path, "`auth` is not base64 of `user:password`"))?;
                return Ok(Some(Credential::Basic { username: username.into(), password: Secret::new(password) }));
            }
            if let (Some(username), Some(password)) = (text("username"), text("password")) {
                return Ok(Some(Credential::Basic { username: username.into(), password: Secret::new(password) }));
            }
        }
    }
    if let Some(store) = config.get("credsStore").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        return run_helper(store, registry).await;
    }
    Ok(None)
}

/// Runs `docker-credential-<helper> get` with the registry on stdin.
async fn run_helper(helper: &str, registry: &str) -> Result<Option<Credential>> {
    let program = format!("docker-credential-{helper}");
    let fail = |reason: String| Error::from(ErrorKind::Credentials { registry: registry.into(), reason });
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run `{program}`: {e}; install it or remove `{helper}` from the config")))?;
    let server = if registry == airlock_oci::DOCKER_HUB { "https://index.docker.io/v1/" } else { registry };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(server.as_bytes()).await.map_err(|e| fail(format!("`{program}`: {e}")))?;
    }
    let output = child.wait_with_output().await.map_err(|e| fail(format!("`{program}`: {e}")))?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stdout);
        // The protocol's way of saying "nothing stored for this server".
        if said.contains("credentials not found") {
            return Ok(None);
        }
        return Err(fail(format!("`{program} get` failed with {}", output.status)));
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        username: String,
        secret: String,
    }
    let answer: Answer = serde_json::from_slice(&output.stdout).map_err(|e| fail(format!("`{program}` answered malformed JSON: {e}")))?;
    if answer.username == "<token>" {
        return Ok(Some(Credential::IdentityToken(Secret::new(answer.secret))));
    }
    Ok(Some(Credential::Basic { username: answer.username, password: Secret::new(answer.secret) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn save_lookup_remove_round_trip_keeps_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"auths":{"other.io":{"auth":"eDp5"}},"psFormat":"x"}"#).unwrap();
        let files = CredentialFiles::discover(Some(&path));
        let credential = Credential::Basic { username: "me".into(), password: Secret::new("p:w") };
        files.save("localhost:5000", &credential).await.unwrap();
        assert_eq!(files.lookup("localhost:5000").await.unwrap(), Some(credential));
        assert_eq!(
            files.lookup("other.io").await.unwrap(),
            Some(Credential::Basic { username: "x".into(), password: Secret::new("y") })
        );
        assert_eq!(files.remove("localhost:5000").await.unwrap(), vec![path.clone()]);
        assert_eq!(files.lookup("localhost:5000").await.unwrap(), None);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("psFormat"));
    }

    #[tokio::test]
    async fn docker_hub_and_identity_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.json");
        std::fs::write(&path, r#"{"auths":{"https://index.docker.io/v1/":{"identitytoken":"refresh"}}}"#).unwrap();
        let files = CredentialFiles::discover(Some(&path));
        assert_eq!(files.lookup("docker.io").await.unwrap(), Some(Credential::IdentityToken(Secret::new("refresh"))));
    }

    #[tokio::test]
    async fn malformed_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{oops").unwrap();
        let err = CredentialFiles::discover(Some(&path)).lookup("r.io").await.unwrap_err().to_string();
        assert!(err.contains("config.json") && err.contains("invalid JSON"), "{err}");
    }

    #[tokio::test]
    async fn missing_helper_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, r#"{"credHelpers":{"r.io":"airlock-test-nonexistent"}}"#).unwrap();
        let err = CredentialFiles::discover(Some(&path)).lookup("r.io").await.unwrap_err().to_string();
        assert!(err.contains("docker-credential-airlock-test-nonexistent"), "{err}");
    }
}
