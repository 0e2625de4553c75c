//! `serve.yaml`: where the content lives, where to listen, who may do what.
//!
//! ```yaml
//! root: /var/lib/airlock
//! listen: 127.0.0.1:5000
//! auth:
//!   htpasswd: /etc/airlock/htpasswd   # bcrypt entries: htpasswd -B
//!   token: true                       # bearer tokens from /token (podman, skopeo, docker login)
//!   rules:
//!     - repositories: "public/*"
//!       anonymous: [pull]
//!       users: {ci: [pull, push]}
//!     - repositories: "team/*"
//!       users: {alice: [pull, push, delete], bob: [pull]}
//! delete: false                        # DELETE answers 405 UNSUPPORTED
//! notifications:
//!   - url: http://127.0.0.1:8080/events   # distribution's event format, retried
//! tls:
//!   certificate: /etc/airlock/cert.pem
//!   key: /etc/airlock/key.pem
//! storage: s3://registry-bucket/airlock   # instead of `root`: replicas share the bucket
//! s3:                                     # credentials: the AWS_* variables, never this file
//!   endpoint: https://minio.example.com:9000
//!   region: us-east-1
//! ui:
//!   gate_file: /etc/airlock/airlock.yaml  # /ui/ shows its imports and runs besides the registry
//!   session_key_env: AIRLOCK_UI_KEY       # replicas share sign-ins
//! mirrors:                                # a gated pull-through mirror (read by airlock-gate)
//!   - upstream: docker.io
//!     gates: [{name: no-red, policy: {forbid_env: {BACKGROUND_COLOR: [red]}}}]
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::auth::AuthFile;

/// The file as written; flags override `root` and `listen`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    /// The folder that holds the content.
    pub root: Option<PathBuf>,
    /// Address and port.
    pub listen: Option<String>,
    /// Access control; absent: open to anyone who can connect.
    pub auth: Option<AuthFile>,
    /// HTTPS instead of plain HTTP.
    pub tls: Option<TlsFile>,
    /// Webhooks told of manifest pushes and deletes.
    #[serde(default)]
    pub notifications: Vec<crate::events::Endpoint>,
    /// Allow deleting manifests, tags and blobs (default true).
    pub delete: Option<bool>,
    /// Where the content lives instead of `root`: `s3://BUCKET[/PREFIX]` (an S3-compatible
    /// object store, shared by several replicas).
    pub storage: Option<String>,
    /// How to reach the bucket of `storage` (endpoint, region, addressing); credentials come
    /// from the `AWS_*` variables.
    pub s3: Option<crate::s3::S3Settings>,
    /// The web page at `/ui/`.
    pub ui: Option<UiFile>,
    /// A gated pull-through mirror's upstreams, with the keys it shares with `airlock.yaml`
    /// (`registries`, `runtime`, `state`, `state_password_env`, `lease`): read and checked by
    /// the gate crate, which knows gates; here they are only allowed.
    pub mirrors: Option<serde::de::IgnoredAny>,
    #[doc(hidden)]
    pub registries: Option<serde::de::IgnoredAny>,
    #[doc(hidden)]
    pub runtime: Option<serde::de::IgnoredAny>,
    #[doc(hidden)]
    pub state: Option<serde::de::IgnoredAny>,
    #[doc(hidden)]
    pub state_password_env: Option<serde::de::IgnoredAny>,
    #[doc(hidden)]
    pub lease: Option<serde::de::IgnoredAny>,
}

/// The web page (`/ui/`): the registry's repositories always; imports and runs when a gate
/// file is named.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiFile {
    /// The airlock.yaml whose imports and runs the page shows (and runs, and rolls back).
    pub gate_file: Option<PathBuf>,
    /// The variable holding the key that signs sign-ins and form tokens (at least 32
    /// characters), so that replicas behind one load balancer accept each other's sessions and
    /// a restart keeps them; without it each process makes its own.
    pub session_key_env: Option<String>,
}

/// Certificate chain and key, PEM.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// The certificate chain.
    pub certificate: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Reads `path`; errors name the file, the line and the key.
pub fn load(path: &Path) -> Result<ServeFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    serde_saphyr::from_str(&text).map_err(|e| {
        let location = e.location().map(|l| format!(":{}:{}", l.line(), l.column())).unwrap_or_default();
        let message = e.to_string();
        format!("{}{location}: {}", path.display(), message.lines().next().unwrap_or(&message))
    })
}
