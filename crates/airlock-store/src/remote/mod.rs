//! A repository of a registry as a [`Store`], over the distribution-spec 1.1 HTTP API.
//!
//! [`Registries`] holds one [`client::RegistryClient`] per registry host, so tokens, the
//! concurrency limit and the connection pool are shared by every repository of a registry.

mod auth;
mod client;

/// The `WWW-Authenticate` parser, public for the fuzz targets (`crates/airlock-fuzz`).
pub use auth::{parse_challenge, Challenge};
pub mod credentials;
mod pace;
pub mod retry;
pub mod secret;
mod tag_cache;
pub mod tls;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use airlock_oci::{media_type, Descriptor, Digest, Manifest, RegistryRef};
use async_trait::async_trait;
use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, IF_NONE_MATCH, LOCATION, RANGE};
use reqwest::{Response, StatusCode};

use self::client::{http_error, ClientSetup, RegistryClient, Scope};
pub use self::credentials::{Credential, CredentialFiles};
pub use self::retry::RetryPolicy;
pub use self::secret::{redact_url, Secret};
pub use self::tag_cache::TagCache;
use crate::verify::verify_stream;
use crate::{referrers_tag, BlobStream, Error, ErrorKind, MountSource, PutManifestOutcome, Result, Store};

/// Manifests larger than this are refused, as distribution does.
const MANIFEST_LIMIT: usize = 4 * 1024 * 1024;
/// Blobs up to this size are uploaded with one `PUT`; larger ones are streamed with `PATCH`.
const MONOLITHIC_LIMIT: u64 = 8 * 1024 * 1024;
/// The most one page of a tag list may hold (1000 tags of 128 characters are 131 KiB).
const TAG_PAGE_LIMIT: usize = 8 * 1024 * 1024;
/// The most tags a repository may list (Docker Hub's largest repositories hold tens of
/// thousands); a registry listing more is refused rather than let grow memory.
const TAG_LIST_LIMIT: usize = 1_000_000;
/// The most pages a tag list may span.
const TAG_LIST_PAGES: usize = 10_000;

/// A tag or digest about to become a URL path segment: anything else (`..`, `a/b`, `%2e`, a
/// newline: names a hostile registry could list) is refused, so no name can change which
/// resource a request (carrying this registry's credentials) reaches.
fn checked_reference<'a>(reference: &'a str, location: &str) -> Result<&'a str> {
    if airlock_oci::parse_digest(reference).is_ok() || airlock_oci::validate_tag(reference).is_ok() {
        return Ok(reference);
    }
    Err(Error::from(ErrorKind::InvalidName { what: "tag".into(), name: reference.escape_debug().to_string(), location: location.to_owned() }))
}

/// How to reach registries.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Hosts spoken to over plain HTTP besides loopback ones (Docker's "insecure registries").
    pub plain_http: Vec<String>,
    /// Extra PEM CA certificates trusted besides the system roots.
    pub ca_certs: Vec<PathBuf>,
    /// Requests in flight per registry.
    pub max_requests_per_registry: usize,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Credential files (`--authfile` or discovered).
    pub credential_files: CredentialFiles,
    /// Credentials given on the command line, per registry; they win over the files.
    pub explicit_credentials: HashMap<String, Credential>,
    /// Settings for particular registries (by host as in references, e.g. `docker.io`).
    pub registry_settings: HashMap<String, RegistrySettings>,
    /// What tags pointed at when last seen, for conditional `HEAD`s (none: every look is full).
    pub tag_cache: Option<Arc<TagCache>>,
    /// Registries (`host[:port]`) whose TLS certificate is not verified (`--tls-verify=false`).
    pub tls_unverified: Vec<String>,
    /// How long an answer may send nothing before the read fails: a stalled blob download is
    /// then resumed with `Range`, a stalled manifest or tag list asked for again.
    pub read_timeout: std::time::Duration,
}

/// [`RegistryOptions::read_timeout`] unless told otherwise.
pub const DEFAULT_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// What one registry gets beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// Requests per second at most (a token bucket); `None`: as fast as answers come.
    pub requests_per_second: Option<f64>,
    /// Requests in flight at most, instead of `max_requests_per_registry`.
    pub max_requests: Option<usize>,
}

impl RegistryOptions {
    /// Defaults: plain HTTP only for loopback, system roots, 16 requests per registry.
    pub fn new(credential_files: CredentialFiles) -> Self {
        RegistryOptions {
            plain_http: Vec::new(),
            ca_certs: Vec::new(),
            max_requests_per_registry: 16,
            retry: RetryPolicy::default(),
            credential_files,
            explicit_credentials: HashMap::new(),
            registry_settings: HashMap::new(),
            tag_cache: None,
            read_timeout: DEFAULT_READ_TIMEOUT,
            tls_unverified: Vec::new(),
        }
    }
}

/// Which operations a store will be used for; decides the token scope asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading only.
    Pull,
    /// Reading and writing.
    Push,
    /// Reading and deleting manifests.
    Delete,
}

/// The registries of one command: a client per host, created on first use.
pub struct Registries {
    options: RegistryOptions,
    http: reqwest::Client,
    credential_files: Arc<CredentialFiles>,
    clients: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<RegistryClient>>>>>,
}

impl Registries {
    /// Builds the shared HTTP client (rustls with the system roots plus `ca_certs`, read on the
    /// first TLS handshake).
    pub fn new(options: RegistryOptions) -> Result<Self> {
        let mut extra = Vec::new();
        for path in &options.ca_certs {
            let io = |source| Error::from(ErrorKind::Io { action: "read CA certificate".into(), path: path.display().to_string(), source });
            let pem = std::fs::read(path).map_err(io)?;
            extra.extend(tls::parse_pem_bundle(&pem).map_err(|reason| Error::from(ErrorKind::Malformed {
                what: "CA certificate".into(),
                path: path.display().to_string(),
                reason,
            }))?);
        }
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls::client_config_with(extra, options.tls_unverified.iter().map(|r| host_without_port(r)).collect()))
            .user_agent(concat!("airlock/", env!("CARGO_PKG_VERSION")))
            // reqwest drops `Authorization` when a redirect leaves the host (blob storage).
            .redirect(reqwest::redirect::Policy::limited(10))
            .connect_timeout(std::time::Duration::from_secs(30))
            .read_timeout(options.read_timeout)
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .build()
            .map_err(|source| Error::from(ErrorKind::Transport { method: "build".into(), url: String::new(), source }))?;
        let credential_files = Arc::new(options.credential_files.clone());
        Ok(Registries { options, http, credential_files, clients: Mutex::new(HashMap::new()) })
    }

    /// GETs a plain HTTP(S) resource beside the registries (a Helm chart repository's index
    /// and archives) with the same TLS roots and retry policy: connection errors, 408, 429
    /// (`Retry-After` honoured) and 5xx are tried again. The credentials stored for the URL's
    /// host (`airlock login HOST`, `--creds`) are sent, as Basic or Bearer, over HTTPS or to a
    /// loopback host only. A 2xx response is returned for its body to be streamed; any other
    /// status is an error naming the URL (without credentials).
    pub async fn get_url(&self, url: &str) -> Result<reqwest::Response> {
        let parsed = reqwest::Url::parse(url).ok();
        let shown = match parsed.clone() {
            Some(mut parsed) => {
                let _ = parsed.set_username("");
                let _ = parsed.set_password(None);
                parsed.to_string()
            }
            None => redact_url(url),
        };
        let host = parsed.as_ref().and_then(|u| u.host_str().map(|h| u.port().map(|p| format!("{h}:{p}")).unwrap_or_else(|| h.to_owned())));
        let credential = match host {
            Some(host) if parsed.as_ref().is_some_and(|u| u.scheme() == "https") || is_loopback(&host) => match self.options.explicit_credentials.get(&host) {
                Some(credential) => Some(credential.clone()),
                None => self.credential_files.lookup(&host).await?,
            },
            _ => None,
        };
        let mut attempt = 1;
        loop {
            let request = match &credential {
                Some(Credential::Basic { username, password }) => self.http.get(url).basic_auth(username, Some(password.expose())),
                Some(Credential::BearerToken(token)) => self.http.get(url).bearer_auth(token.expose()),
                // A refresh token is for a registry's token service, which a plain URL has not.
                Some(Credential::IdentityToken(_)) | None => self.http.get(url),
            };
            let error = match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let retry_after = response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(retry::parse_retry_after);
                    Error::from(ErrorKind::Http { method: "GET".into(), url: shown.clone(), status: response.status().as_u16(), code: None, message: None, retry_after })
                }
                Err(source) => Error::from(ErrorKind::Transport { method: "GET".into(), url: shown.clone(), source: source.without_url() }),
            };
            if !error.is_transient() {
                return Err(error);
            }
            if attempt >= self.options.retry.attempts {
                return Err(Error::from(ErrorKind::Retried { attempts: attempt, last: error }));
            }
            tracing::debug!(url = %shown, attempt, error = %error, "retrying");
            tokio::time::sleep(self.options.retry.delay(attempt, error.retry_after())).await;
            attempt += 1;
        }
    }

    async fn client(&self, registry: &RegistryRef) -> Arc<RegistryClient> {
        let cell = self.clients.lock().expect("clients lock").entry(registry.registry.clone()).or_default().clone();
        cell.get_or_init(|| async {
            let host = registry.endpoint_host();
            let scheme = self.scheme(&registry.registry, host).await;
            let settings = self.options.registry_settings.get(&registry.registry).cloned().unwrap_or_default();
            Arc::new(RegistryClient::new(ClientSetup {
                registry: registry.registry.clone(),
                base: format!("{scheme}://{host}"),
                http: self.http.clone(),
                credential_files: self.credential_files.clone(),
                explicit: self.options.explicit_credentials.get(&registry.registry).cloned(),
                max_requests: settings.max_requests.unwrap_or(self.options.max_requests_per_registry),
                requests_per_second: settings.requests_per_second,
                retry: self.options.retry,
            }))
        })
        .await
        .clone()
    }

    /// HTTPS, except for hosts the user named with `--plain-http`, and for loopback hosts that do
    /// not speak TLS: as Docker does for `localhost`, HTTPS is tried first and plain HTTP used
    /// when the server answers the TLS handshake with something else.
    async fn scheme(&self, registry: &str, host: &str) -> &'static str {
        if self.options.plain_http.iter().any(|h| h == registry) {
            return "http";
        }
        if !is_loopback(registry) {
            return "https";
        }
        let probe = self.http.get(format!("https://{host}/v2/")).timeout(std::time::Duration::from_secs(5)).send().await;
        match probe {
            Ok(_) => "https",
            // A TLS server whose certificate we do not trust: keep HTTPS so the error says so.
            Err(error) if crate::error::chain_mentions(&error, "certificate") => "https",
            Err(_) => "http",
        }
    }

    /// A store for one repository.
    pub async fn store(&self, reference: &RegistryRef, access: Access) -> RemoteStore {
        let client = self.client(reference).await;
        RemoteStore {
            location: format!("{}/{}", reference.registry, reference.repository),
            scope: Scope::for_access(&reference.repository, access),
            repository: reference.repository.clone(),
            client,
            pending_uploads: Mutex::new(HashMap::new()),
            listed_tags: std::sync::OnceLock::new(),
            tag_cache: self.options.tag_cache.clone(),
        }
    }

    /// The repositories a registry lists at `/v2/_catalog` (token scope `registry:catalog:*`),
    /// following `Link` pages, bounded as tag lists are. Registries list what the caller may
    /// see; Docker Hub and some others do not offer the API at all (an error).
    pub async fn catalog(&self, registry: &str) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Page {
            repositories: Option<Vec<String>>,
        }
        let reference = RegistryRef { registry: registry.to_owned(), repository: "x".into(), tag: None, digest: None };
        let client = self.client(&reference).await;
        let scope = Scope("registry:catalog:*".into());
        let mut url = format!("{}/v2/_catalog?n=1000", client.base);
        let mut names = Vec::new();
        for _ in 0..TAG_LIST_PAGES {
            let http = &client.http;
            let response = client.fetch(&scope, registry, &|| http.get(&url), TAG_PAGE_LIMIT, "a page of the catalog").await?;
            if !response.status.is_success() {
                return Err(response.error("GET"));
            }
            let page: Page = serde_json::from_slice(&response.body)
                .map_err(|e| Error::from(ErrorKind::Protocol { location: registry.to_owned(), reason: format!("malformed catalog: {e}") }))?;
            // Names are untrusted like tags: only valid repository names are passed on.
            names.extend(page.repositories.unwrap_or_default().into_iter().filter(|name| airlock_oci::validate_repository(name).is_ok()));
            if names.len() > TAG_LIST_LIMIT {
                return Err(Error::from(ErrorKind::Protocol { location: registry.to_owned(), reason: format!("the catalog goes on past {TAG_LIST_LIMIT} repositories: refused") }));
            }
            let next = response.next_page();
            match next {
                Some(next) if next.as_str() != url => url = next.to_string(),
                _ => return Ok(names),
            }
        }
        Err(Error::from(ErrorKind::Protocol { location: registry.to_owned(), reason: format!("the catalog goes on past {TAG_LIST_PAGES} pages: refused") }))
    }

    /// Checks credentials against a registry (`airlock login`).
    pub async fn check_login(&self, registry: &str) -> Result<()> {
        let reference = RegistryRef { registry: registry.to_owned(), repository: "x".into(), tag: None, digest: None };
        self.client(&reference).await.check_login().await
    }
}

/// One repository of a registry.
pub struct RemoteStore {
    client: Arc<RegistryClient>,
    repository: String,
    scope: Scope,
    /// `registry/repository`: names the store in errors, and is its key in the tag cache.
    location: String,
    /// Upload sessions opened by a mount attempt that fell back to an upload.
    pending_uploads: Mutex<HashMap<Digest, String>>,
    /// The tags listed by this store, once listed: a referrers-schema tag absent from them need
    /// not be asked for (a sync lists first, then looks up referrers of every manifest).
    listed_tags: std::sync::OnceLock<std::collections::HashSet<String>>,
    tag_cache: Option<Arc<TagCache>>,
}

impl fmt::Display for RemoteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.location)
    }
}

impl RemoteStore {
    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.client.base, self.repository)
    }

    /// Resolves a `Location` header (absolute or relative) against the registry.
    fn upload_url(&self, response: &Response) -> Result<String> {
        let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| Error::from(ErrorKind::Protocol {
            location: self.location.clone(),
            reason: format!("upload answer {} without a Location header", response.status()),
        }))?;
        response.url().join(location).map(|url| url.to_string()).map_err(|e| Error::from(ErrorKind::Protocol {
            location: self.location.clone(),
            reason: format!("invalid upload Location `{location}`: {e}"),
        }))
    }

    async fn send(&self, make: client::MakeRequest<'_>) -> Result<Response> {
        self.client.send(&self.scope, &self.location, make).await
    }

    fn not_found(&self, what: String) -> Error {
        Error::from(ErrorKind::NotFound { what, location: self.location.clone() })
    }

    async fn unexpected(&self, method: &str, response: Response) -> Error {
        http_error(method, response).await
    }

    async fn start_upload(&self, query: &str, scope: &Scope) -> Result<Response> {
        let url = format!("{}?{query}", self.url("blobs/uploads/"));
        let http = &self.client.http;
        self.client.send(scope, &self.location, &|| http.post(&url).header(CONTENT_LENGTH, 0)).await
    }

    /// Adds `manifest` to the `sha256-<hex>` index of its subject, for registries without the
    /// referrers API (distribution-spec 1.1 "referrers tag schema").
    async fn update_referrers_tag(&self, manifest: &Manifest, subject: &Digest) -> Result<String> {
        let tag = referrers_tag(subject);
        let mut document = match self.get_manifest(&tag).await {
            Ok(existing) => serde_json::from_slice::<serde_json::Value>(existing.bytes()).map_err(|e| Error::from(ErrorKind::Protocol {
                location: self.location.clone(),
                reason: format!("referrers index `{tag}` is not JSON: {e}"),
            }))?,
            Err(e) if e.is_not_found() => serde_json::json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": []}),
            Err(e) => return Err(e),
        };
        let entries = document.get_mut("manifests").and_then(|m| m.as_array_mut()).ok_or_else(|| Error::from(ErrorKind::Protocol {
            location: self.location.clone(),
            reason: format!("referrers index `{tag}` has no `manifests` list"),
        }))?;
        let digest = manifest.digest().to_string();
        if entries.iter().any(|entry| entry.get("digest").and_then(|d| d.as_str()) == Some(&digest)) {
            return Ok(tag);
        }
        entries.push(serde_json::to_value(manifest.descriptor()).expect("a descriptor serialises"));
        let bytes = serde_json::to_vec(&document).expect("an index serialises");
        let index = Manifest::parse(bytes, Some(media_type::OCI_INDEX)).map_err(|source| Error::from(ErrorKind::Manifest {
            reference: tag.clone(),
            location: self.location.clone(),
            source,
        }))?;
        self.put_manifest_bytes(&index, &tag).await?;
        Ok(tag)
    }

    async fn put_manifest_bytes(&self, manifest: &Manifest, reference: &str) -> Result<Response> {
        let url = self.url(&format!("manifests/{}", checked_reference(reference, &self.location)?));
        let http = &self.client.http;
        let body = bytes::Bytes::copy_from_slice(manifest.bytes());
        let media_type = manifest.media_type().to_owned();
        let response = self
            .send(&|| http.put(&url).header(CONTENT_TYPE, media_type.as_str()).body(body.clone()))
            .await?;
        if response.status() != StatusCode::CREATED && !response.status().is_success() {
            let status = response.status();
            let error = self.unexpected("PUT", response).await;
            if status == StatusCode::NOT_FOUND {
                return Err(Error::from(ErrorKind::Protocol { location: self.location.clone(), reason: format!("manifest {} refused: {error}", manifest.digest()) }));
            }
            return Err(error);
        }
        if let Some(answered) = response.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()) {
            if answered != manifest.digest().to_string() && manifest.digest().algorithm().as_ref() == "sha256" {
                return Err(Error::from(ErrorKind::Protocol {
                    location: self.location.clone(),
                    reason: format!("the registry stored manifest {} as {answered}: it changed the bytes", manifest.digest()),
                }));
            }
        }
        Ok(response)
    }

    fn resuming_stream(&self, descriptor: &Descriptor, offset: u64, first: Response) -> BlobStream {
        struct State {
            body: Option<futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>>,
            offset: u64,
            resumes: u32,
            client: Arc<RegistryClient>,
            scope: Scope,
            location: String,
            url: String,
            size: u64,
        }
        let state = State {
            body: Some(first.bytes_stream().boxed()),
            offset,
            resumes: 0,
            client: self.client.clone(),
            scope: self.scope.clone(),
            location: self.location.clone(),
            url: self.url(&format!("blobs/{}", descriptor.digest())),
            size: descriptor.size(),
        };
        Box::pin(futures::stream::unfold(state, |mut state| async move {
            loop {
                let body = state.body.as_mut()?;
                match body.next().await {
                    Some(Ok(chunk)) => {
                        state.offset += chunk.len() as u64;
                        return Some((Ok(chunk), state));
                    }
                    None => return None,
                    Some(Err(source)) => {
                        let error = Error::from(ErrorKind::Transport { method: "GET".into(), url: state.url.clone(), source });
                        state.resumes += 1;
                        if state.offset >= state.size || state.resumes >= state.client.retry.attempts {
                            state.body = None;
                            return Some((Err(error), state));
                        }
                        tracing::debug!(url = %state.url, offset = state.offset, %error, "blob download cut; resuming with Range");
                        tokio::time::sleep(state.client.retry.delay(state.resumes, None)).await;
                        let range = format!("bytes={}-", state.offset);
                        let http = state.client.http.clone();
                        let url = state.url.clone();
                        let response = state.client.send(&state.scope, &state.location, &|| http.get(&url).header(RANGE, range.as_str())).await;
                        match response {
                            Ok(response) if response.status() == StatusCode::PARTIAL_CONTENT => {
                                state.body = Some(response.bytes_stream().boxed());
                            }
                            Ok(response) => {
                                let error = Error::from(ErrorKind::Protocol {
                                    location: state.location.clone(),
                                    reason: format!("could not resume a blob download at byte {}: answered {}", state.offset, response.status()),
                                });
                                state.body = None;
                                return Some((Err(error), state));
                            }
                            Err(error) => {
                                state.body = None;
                                return Some((Err(error), state));
                            }
                        }
                    }
                }
            }
        }))
    }
}

/// The host of `host[:port]` (an IPv6 address keeps no brackets).
fn host_without_port(registry: &str) -> String {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) && !host.ends_with(':') => host,
        _ => registry,
    };
    host.trim_start_matches('[').trim_end_matches(']').to_owned()
}

/// `localhost`, `*.localhost` and loopback addresses, with or without a port.
pub fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.ends_with(".localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

fn accept() -> String {
    media_type::MANIFEST_TYPES.join(", ")
}

#[async_trait]
impl Store for RemoteStore {
    fn mount_source(&self) -> Option<MountSource> {
        Some(MountSource { registry: self.client.registry.clone(), repository: self.repository.clone() })
    }

    async fn resolve(&self, reference: &str) -> Result<Descriptor> {
        // By tag, ask "still this digest?" when a guess is cached: the registry can then answer
        // `304` without reading the manifest.
        let guess = self.cached(reference);
        let response = match self.request_manifest(reqwest::Method::HEAD, reference, guess.as_ref().map(|g| g.digest())).await {
            Err(error) if error.is_not_found() => {
                self.remember(reference, None);
                return Err(error);
            }
            response => response?,
        };
        if response.status() == StatusCode::NOT_MODIFIED {
            if let Some(guess) = guess {
                return Ok(guess);
            }
        }
        let digest = header(&response, "docker-content-digest").and_then(|d| airlock_oci::parse_digest(d).ok());
        let media_type = header(&response, "content-type").map(|c| c.split(';').next().unwrap_or(c).trim().to_owned());
        // Not `content_length()`: for a HEAD that is the (empty) body's length.
        let size = header(&response, "content-length").and_then(|len| len.parse::<u64>().ok()).filter(|len| *len > 0);
        let descriptor = match (digest, media_type, size) {
            (Some(digest), Some(media_type), Some(size)) if media_type::is_manifest(&media_type) => {
                Descriptor::new(media_type.as_str().into(), size, digest)
            }
            // Some registries answer HEAD without a digest: fetch and hash instead.
            _ => self.get_manifest(reference).await?.descriptor(),
        };
        self.remember(reference, Some(&descriptor));
        Ok(descriptor)
    }

    async fn get_manifest(&self, reference: &str) -> Result<Manifest> {
        let response = self.fetch_manifest(reference).await?;
        let content_type = response.header("content-type").map(str::to_owned);
        let answered_digest = response.header("docker-content-digest").and_then(|d| airlock_oci::parse_digest(d).ok());
        let bad = |source| Error::from(ErrorKind::Manifest { reference: reference.to_owned(), location: self.location.clone(), source });
        // By digest the digest asked for is the truth; by tag the registry's claim is checked.
        let expected = airlock_oci::parse_digest(reference).ok().or(answered_digest);
        let manifest = match expected {
            Some(expected) => Manifest::parse_verified(response.body, content_type.as_deref(), &expected).map_err(bad)?,
            None => Manifest::parse(response.body, content_type.as_deref()).map_err(bad)?,
        };
        self.remember(reference, Some(&manifest.descriptor()));
        Ok(manifest)
    }

    async fn put_manifest(&self, manifest: &Manifest, tag: Option<&str>) -> Result<PutManifestOutcome> {
        let digest = manifest.digest().to_string();
        let response = self.put_manifest_bytes(manifest, tag.unwrap_or(&digest)).await?;
        if let Some(tag) = tag {
            self.remember(tag, Some(&manifest.descriptor()));
        }
        let mut outcome = PutManifestOutcome::default();
        if let Some(subject) = manifest.subject() {
            if header(&response, "oci-subject").is_none() {
                outcome.referrers_tag_updated = Some(self.update_referrers_tag(manifest, subject.digest()).await?);
            }
        }
        Ok(outcome)
    }

    async fn blob_exists(&self, digest: &Digest) -> Result<bool> {
        let url = self.url(&format!("blobs/{digest}"));
        let http = &self.client.http;
        let response = self.send(&|| http.head(&url)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(false),
            status if status.is_success() => Ok(true),
            _ => Err(self.unexpected("HEAD", response).await),
        }
    }

    async fn get_blob(&self, descriptor: &Descriptor, offset: u64) -> Result<BlobStream> {
        let url = self.url(&format!("blobs/{}", descriptor.digest()));
        let http = &self.client.http;
        let range = format!("bytes={offset}-");
        let response = self
            .send(&|| {
                let request = http.get(&url);
                if offset > 0 {
                    request.header(RANGE, range.as_str())
                } else {
                    request
                }
            })
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => Err(self.not_found(format!("blob {}", descriptor.digest()))),
            StatusCode::OK if offset == 0 => Ok(self.resuming_stream(descriptor, offset, response)),
            StatusCode::PARTIAL_CONTENT => Ok(self.resuming_stream(descriptor, offset, response)),
            _ => Err(self.unexpected("GET", response).await),
        }
    }

    async fn put_blob(&self, descriptor: &Descriptor, body: BlobStream) -> Result<()> {
        let pending = self.pending_uploads.lock().expect("pending uploads lock").remove(descriptor.digest());
        let upload = match pending {
            Some(url) => url,
            None => {
                let response = self.start_upload("", &self.scope).await?;
                if response.status() != StatusCode::ACCEPTED {
                    return Err(self.unexpected("POST", response).await);
                }
                self.upload_url(&response)?
            }
        };
        let body = reqwest::Body::wrap_stream(verify_stream(descriptor, body, self.location.clone()));
        let size = descriptor.size();
        let separator = if upload.contains('?') { '&' } else { '?' };
        let http = &self.client.http;
        let final_url = if size <= MONOLITHIC_LIMIT {
            let url = format!("{upload}{separator}digest={}", descriptor.digest());
            let request = http
                .put(&url)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, size)
                .body(body);
            let response = self.client.send_streaming(&self.scope, &self.location, request).await?;
            return self.check_upload_done(descriptor, response).await;
        } else {
            let end = size.saturating_sub(1);
            let request = http
                .patch(&upload)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, size)
                .header("content-range", format!("0-{end}"))
                .body(body);
            let response = self.client.send_streaming(&self.scope, &self.location, request).await?;
            if response.status() != StatusCode::ACCEPTED {
                return Err(self.unexpected("PATCH", response).await);
            }
            let next = self.upload_url(&response)?;
            let separator = if next.contains('?') { '&' } else { '?' };
            format!("{next}{separator}digest={}", descriptor.digest())
        };
        let response = self.send(&|| http.put(&final_url).header(CONTENT_LENGTH, 0)).await?;
        self.check_upload_done(descriptor, response).await
    }

    async fn mount_blob(&self, descriptor: &Descriptor, from: &MountSource) -> Result<bool> {
        if from.registry != self.client.registry || from.repository == self.repository || airlock_oci::validate_repository(&from.repository).is_err() {
            return Ok(false);
        }
        let query = format!("mount={}&from={}", descriptor.digest(), from.repository);
        let scope = self.scope.and(&Scope::repository(&from.repository, false));
        let response = self.start_upload(&query, &scope).await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                // Not mounted (not there, or not allowed): keep the session for the upload.
                let url = self.upload_url(&response)?;
                self.pending_uploads.lock().expect("pending uploads lock").insert(descriptor.digest().clone(), url);
                Ok(false)
            }
            _ => Err(self.unexpected("POST", response).await),
        }
    }

    async fn list_tags(&self) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        let mut url = self.url("tags/list?n=1000");
        let mut tags = Vec::new();
        let http = &self.client.http;
        for _ in 0..TAG_LIST_PAGES {
            let response = self.client.fetch(&self.scope, &self.location, &|| http.get(&url), TAG_PAGE_LIMIT, "a page of the tag list").await?;
            match response.status {
                StatusCode::NOT_FOUND => return Err(self.not_found("repository".into())),
                status if status.is_success() => {}
                _ => return Err(response.error("GET")),
            }
            let next = response.next_page();
            let page: Page = serde_json::from_slice(&response.body).map_err(|e| Error::from(ErrorKind::Protocol {
                location: self.location.clone(),
                reason: format!("malformed tag list: {e}"),
            }))?;
            tags.extend(page.tags.unwrap_or_default());
            if tags.len() > TAG_LIST_LIMIT {
                return Err(Error::from(ErrorKind::Protocol { location: self.location.clone(), reason: format!("the tag list goes on past {TAG_LIST_LIMIT} tags: refused") }));
            }
            match next {
                // A link back to the same page would never end.
                Some(next) if next.as_str() != url => url = next.to_string(),
                _ => {
                    let _ = self.listed_tags.set(tags.iter().cloned().collect());
                    return Ok(tags);
                }
            }
        }
        Err(Error::from(ErrorKind::Protocol { location: self.location.clone(), reason: format!("the tag list goes on past {TAG_LIST_PAGES} pages: refused") }))
    }

    fn tags_known(&self) -> bool {
        self.tag_cache.as_ref().is_none_or(|cache| cache.knows(&self.location))
    }

    async fn referrers(&self, subject: &Digest, artifact_type: Option<&str>) -> Result<Vec<Descriptor>> {
        let mut url = self.url(&format!("referrers/{subject}"));
        if let Some(artifact_type) = artifact_type {
            url = format!("{url}?artifactType={}", artifact_type.replace('+', "%2B").replace('/', "%2F"));
        }
        let http = &self.client.http;
        let api = &self.client.referrers_api;
        let known_missing = api.load(std::sync::atomic::Ordering::Relaxed) == client::referrers_api::MISSING;
        let response = if known_missing {
            None
        } else {
            Some(self.client.fetch(&self.scope, &self.location, &|| http.get(&url).header(ACCEPT, media_type::OCI_INDEX), MANIFEST_LIMIT, "the referrers index").await?)
        };
        let (manifests, filtered) = match response {
            Some(response) if response.status.is_success() => {
                let filtered = response.header("oci-filters-applied").is_some_and(|f| f.contains("artifactType"));
                let index = Manifest::parse(response.body, Some(media_type::OCI_INDEX)).map_err(|source| {
                    Error::from(ErrorKind::Manifest { reference: format!("referrers of {subject}"), location: self.location.clone(), source })
                })?;
                let airlock_oci::ManifestKind::Index { manifests, .. } = index.kind().clone() else { unreachable!("parsed as an index") };
                (manifests, filtered)
            }
            Some(response) if !matches!(response.status, StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED) => {
                return Err(response.error("GET"));
            }
            // No referrers API: the tag schema.
            answer => {
                if answer.is_some() {
                    api.store(client::referrers_api::MISSING, std::sync::atomic::Ordering::Relaxed);
                }
                let tag = referrers_tag(subject);
                if self.listed_tags.get().is_some_and(|listed| !listed.contains(&tag)) {
                    return Ok(Vec::new());
                }
                match self.get_manifest(&tag).await {
                    Ok(index) => match index.kind() {
                        airlock_oci::ManifestKind::Index { manifests, .. } => (manifests.clone(), false),
                        _ => (Vec::new(), false),
                    },
                    Err(e) if e.is_not_found() => (Vec::new(), false),
                    Err(e) => return Err(e),
                }
            }
        };
        Ok(manifests
            .into_iter()
            .filter(|d| filtered || artifact_type.is_none_or(|t| d.artifact_type().as_ref().is_some_and(|a| a.to_string() == t)))
            .collect())
    }

    async fn delete_manifest(&self, digest: &Digest) -> Result<()> {
        let url = self.url(&format!("manifests/{digest}"));
        let http = &self.client.http;
        let response = self.send(&|| http.delete(&url)).await?;
        match response.status() {
            StatusCode::NOT_FOUND => Err(self.not_found(format!("manifest {digest}"))),
            status if status.is_success() => {
                if let Some(cache) = &self.tag_cache {
                    cache.forget_digest(&self.location, digest);
                }
                Ok(())
            }
            _ => Err(self.unexpected("DELETE", response).await),
        }
    }
}

impl RemoteStore {
    /// `HEAD` or `GET` of a manifest with the full `Accept` list; a success (or, asked with
    /// `if_none_match`, a `304`) or an error.
    async fn request_manifest(&self, method: reqwest::Method, reference: &str, if_none_match: Option<&Digest>) -> Result<Response> {
        let url = self.url(&format!("manifests/{}", checked_reference(reference, &self.location)?));
        let http = &self.client.http;
        let accept = accept();
        let etag = if_none_match.map(|digest| format!("\"{digest}\""));
        let response = self
            .send(&|| {
                let request = http.request(method.clone(), &url).header(ACCEPT, accept.as_str());
                match &etag {
                    Some(etag) => request.header(IF_NONE_MATCH, etag.as_str()),
                    None => request,
                }
            })
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => Err(self.not_found(format!("manifest `{reference}`"))),
            StatusCode::NOT_MODIFIED if etag.is_some() => Ok(response),
            status if status.is_success() => Ok(response),
            _ => Err(self.unexpected(method.as_str(), response).await),
        }
    }

    /// `GET` of a manifest, read whole (at most [`MANIFEST_LIMIT`] bytes; a cut download is
    /// asked for again); a success or an error.
    async fn fetch_manifest(&self, reference: &str) -> Result<client::Fetched> {
        let url = self.url(&format!("manifests/{}", checked_reference(reference, &self.location)?));
        let http = &self.client.http;
        let accept = accept();
        let what = format!("manifest `{reference}`");
        let response = self.client.fetch(&self.scope, &self.location, &|| http.get(&url).header(ACCEPT, accept.as_str()), MANIFEST_LIMIT, &what).await?;
        match response.status {
            StatusCode::NOT_FOUND => Err(self.not_found(what)),
            status if status.is_success() => Ok(response),
            _ => Err(response.error("GET")),
        }
    }

    /// The tag cache, when `reference` is a tag (a digest needs no guess).
    fn cache_for(&self, reference: &str) -> Option<&TagCache> {
        self.tag_cache.as_deref().filter(|_| airlock_oci::parse_digest(reference).is_err())
    }

    /// What the tag cache guesses `reference` points at, when it is a tag.
    fn cached(&self, reference: &str) -> Option<Descriptor> {
        self.cache_for(reference)?.get(&self.location, reference)
    }

    /// Records what the registry just said tag `reference` points at (`None`: nothing).
    fn remember(&self, reference: &str, descriptor: Option<&Descriptor>) {
        let Some(cache) = self.cache_for(reference) else { return };
        match descriptor {
            Some(descriptor) => cache.put(&self.location, reference, descriptor.clone()),
            None => cache.forget(&self.location, reference),
        }
    }

    async fn check_upload_done(&self, descriptor: &Descriptor, response: Response) -> Result<()> {
        if response.status() != StatusCode::CREATED && response.status() != StatusCode::NO_CONTENT && !response.status().is_success() {
            return Err(self.unexpected("PUT", response).await);
        }
        if let Some(answered) = header(&response, "docker-content-digest") {
            if answered != descriptor.digest().to_string() {
                return Err(Error::from(ErrorKind::Protocol {
                    location: self.location.clone(),
                    reason: format!("uploaded {} but the registry stored {answered}", descriptor.digest()),
                }));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_tags_and_digests_become_url_segments() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for good in ["v1", "1.0-alpine", "_x", digest.as_str()] {
            assert_eq!(super::checked_reference(good, "r/x").unwrap(), good);
        }
        for bad in ["..", ".", "../../x", "a/b", "%2e%2e", "with\nnewline", "x?y", "x#y", "", &"t".repeat(129)] {
            let refused = super::checked_reference(bad, "r/x").unwrap_err().to_string();
            assert!(refused.contains("not a valid tag name") && refused.contains("r/x") && !refused.contains('\n'), "{refused}");
        }
    }
}
