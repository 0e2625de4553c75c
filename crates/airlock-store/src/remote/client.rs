//! One registry's HTTP client: authentication (challenge, basic, bearer tokens per scope with a
//! cache), a concurrency limit, and retries of transient failures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::sync::{OnceCell, Semaphore};

use super::auth::{parse_challenge, Challenge, TokenResponse};
use super::credentials::{Credential, CredentialFiles};
use super::pace::Pacer;
use super::retry::{parse_retry_after, RetryPolicy};
use crate::{Error, ErrorKind, Result};

/// The access a token is asked for, e.g. `repository:library/alpine:pull`; several are joined by
/// spaces. An empty scope is the registry's base (`/v2/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope(pub String);

impl Scope {
    /// Pull, or pull and push, on one repository.
    pub fn repository(repository: &str, push: bool) -> Self {
        let actions = if push { "pull,push" } else { "pull" };
        Scope(format!("repository:{repository}:{actions}"))
    }

    /// The scope `access` needs on one repository (`delete` is the action distribution and
    /// the Docker token spec name for removing manifests).
    pub fn for_access(repository: &str, access: super::Access) -> Self {
        match access {
            super::Access::Pull => Scope::repository(repository, false),
            super::Access::Push => Scope::repository(repository, true),
            super::Access::Delete => Scope(format!("repository:{repository}:pull,delete")),
        }
    }

    /// This scope plus another.
    pub fn and(&self, other: &Scope) -> Self {
        Scope(format!("{} {}", self.0, other.0))
    }
}

/// The most of a token answer that is read: tokens are a few KiB (GHCR's and ECR's the
/// largest seen, under 16 KiB); an answer that never ends must not grow memory.
const TOKEN_LIMIT: usize = 1024 * 1024;

struct CachedToken {
    value: String,
    expires: Instant,
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    tokens: HashMap<Scope, CachedToken>,
}

/// A client for one registry host, shared by every repository store on it.
pub struct RegistryClient {
    /// The registry as users name it, e.g. `docker.io`.
    pub(crate) registry: String,
    /// `http(s)://host[:port]`.
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    credential_files: Arc<CredentialFiles>,
    explicit: Option<Credential>,
    credentials: OnceCell<Option<Credential>>,
    auth: Mutex<AuthState>,
    limit: Arc<Semaphore>,
    pacer: Pacer,
    pub(crate) retry: RetryPolicy,
    /// Whether the registry has the OCI 1.1 referrers API: unknown until asked once. The spec
    /// forbids a registry that has it to answer 404, so one 404 settles it for the process.
    pub(crate) referrers_api: std::sync::atomic::AtomicU8,
}

/// [`RegistryClient::referrers_api`] values.
pub(crate) mod referrers_api {
    pub const UNKNOWN: u8 = 0;
    pub const MISSING: u8 = 2;
}

/// What a [`RegistryClient`] is made of.
pub(crate) struct ClientSetup {
    pub registry: String,
    pub base: String,
    pub http: reqwest::Client,
    pub credential_files: Arc<CredentialFiles>,
    pub explicit: Option<Credential>,
    pub max_requests: usize,
    pub requests_per_second: Option<f64>,
    pub retry: RetryPolicy,
}

/// A request to build afresh for every attempt.
pub(crate) type MakeRequest<'a> = &'a (dyn Fn() -> RequestBuilder + Send + Sync);

impl RegistryClient {
    pub(crate) fn new(setup: ClientSetup) -> Self {
        let ClientSetup { registry, base, http, credential_files, explicit, max_requests, requests_per_second, retry } = setup;
        RegistryClient {
            registry,
            base,
            http,
            credential_files,
            explicit,
            credentials: OnceCell::new(),
            auth: Mutex::new(AuthState::default()),
            limit: Arc::new(Semaphore::new(max_requests.max(1))),
            pacer: Pacer::new(requests_per_second),
            retry,
            referrers_api: std::sync::atomic::AtomicU8::new(referrers_api::UNKNOWN),
        }
    }

    async fn credentials(&self) -> Result<Option<Credential>> {
        if let Some(explicit) = &self.explicit {
            return Ok(Some(explicit.clone()));
        }
        self.credentials.get_or_try_init(|| self.credential_files.lookup(&self.registry)).await.cloned()
    }

    /// Sends a replayable request, authenticating on demand and retrying transient failures.
    /// Returns any response that is not a 401, 403 or retried status; the caller reads its status.
    pub(crate) async fn send(&self, scope: &Scope, location: &str, make: MakeRequest<'_>) -> Result<Response> {
        let mut attempt = 0;
        let mut reauthenticated = false;
        loop {
            attempt += 1;
            let request = make();
            let result = self.send_once(scope, request).await;
            let method = result.as_ref().map(|(_, method)| method.clone()).unwrap_or_default();
            let result = result.map(|(response, _)| response);
            let failure = match result {
                Ok(response) if response.status() == StatusCode::UNAUTHORIZED => {
                    if reauthenticated {
                        let reason = if self.credentials().await?.is_some() { "the credentials were refused" } else { "authentication required" };
                        return Err(denied(&response, location, "access", reason));
                    }
                    reauthenticated = true;
                    attempt -= 1;
                    self.learn_challenge(&response, scope, location)?;
                    continue;
                }
                Ok(response) => match self.check(response, &method, location).await {
                    Ok(response) => return Ok(response),
                    Err(error) => error,
                },
                Err(error) => error,
            };
            if !failure.is_transient() {
                return Err(failure);
            }
            if attempt >= self.retry.attempts {
                return Err(Error::from(ErrorKind::Retried { attempts: attempt, last: failure }));
            }
            let delay = self.retry.delay(attempt, failure.retry_after());
            tracing::debug!(registry = %self.registry, attempt, ?delay, error = %failure, "retrying");
            tokio::time::sleep(delay).await;
        }
    }

    /// Sends a replayable request and reads its body whole, up to `limit` bytes (64 KiB for an
    /// error answer). A body cut or stalled half way is asked for again, like a refused
    /// connection; a body over the limit is an error that says so (`what` names it), never a
    /// retry and never more memory.
    pub(crate) async fn fetch(&self, scope: &Scope, location: &str, make: MakeRequest<'_>, limit: usize, what: &str) -> Result<Fetched> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let response = self.send(scope, location, make).await?;
            let (status, headers, url) = (response.status(), response.headers().clone(), response.url().clone());
            let limit = if status.is_success() { limit } else { limit.min(ERROR_BODY_LIMIT) };
            match read_limited(response, limit).await {
                Ok(body) => return Ok(Fetched { status, headers, url, body }),
                Err(BodyError::TooLarge) if status.is_success() => {
                    return Err(Error::from(ErrorKind::Protocol {
                        location: location_or(location, &self.registry).to_owned(),
                        reason: format!("{what} is larger than {limit} bytes: refused"),
                    }));
                }
                Err(BodyError::TooLarge) => return Ok(Fetched { status, headers, url, body: Vec::new() }),
                Err(BodyError::Cut(source)) => {
                    // Only a cut answer needs the method, for its message.
                    let method = make().build().map(|r| r.method().to_string()).unwrap_or_else(|_| "GET".into());
                    let failure = Error::from(ErrorKind::Transport { method, url: url.to_string(), source });
                    if attempt >= self.retry.attempts {
                        return Err(Error::from(ErrorKind::Retried { attempts: attempt, last: failure }));
                    }
                    let delay = self.retry.delay(attempt, None);
                    tracing::debug!(registry = %self.registry, attempt, ?delay, error = %failure, "{what} cut; asking again");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Sends a request whose body cannot be replayed (a streamed upload). Authentication must
    /// already be known for `scope`: call [`RegistryClient::send`] on the same scope first.
    pub(crate) async fn send_streaming(&self, scope: &Scope, location: &str, request: RequestBuilder) -> Result<Response> {
        let (response, method) = self.send_once(scope, request).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(denied(&response, location, "push to", "the token expired or was refused during an upload"));
        }
        self.check(response, &method, location).await
    }

    /// One attempt; returns the response and the request's method (for error messages).
    async fn send_once(&self, scope: &Scope, request: RequestBuilder) -> Result<(Response, String)> {
        let request = match self.authorization(scope, "").await? {
            Some(value) => request.header(AUTHORIZATION, value),
            None => request,
        };
        let request = request.build().map_err(|source| Error::from(ErrorKind::Transport { method: "?".into(), url: self.base.clone(), source }))?;
        let method = request.method().to_string();
        let url = request.url().to_string();
        let _permit = self.limit.acquire().await.expect("the semaphore is never closed");
        self.pacer.wait().await;
        tracing::trace!(%method, %url, "request");
        match self.http.execute(request).await {
            Ok(response) => {
                tracing::trace!(%method, %url, status = response.status().as_u16(), "response");
                Ok((response, method))
            }
            Err(source) => Err(Error::from(ErrorKind::Transport { method, url, source })),
        }
    }

    /// Turns 403 and retryable statuses into errors; passes everything else through.
    async fn check(&self, response: Response, method: &str, location: &str) -> Result<Response> {
        let status = response.status().as_u16();
        if status == 403 {
            return Err(denied(&response, location, "access", "the credentials do not grant this"));
        }
        if matches!(status, 408 | 429 | 500..=599) {
            let error = http_error(method, response).await;
            if status == 429 {
                self.pacer.throttled(error.retry_after());
            }
            return Err(error);
        }
        self.pacer.succeeded();
        Ok(response)
    }

    /// The `Authorization` header for `scope`, fetching a token if the registry wants bearer
    /// tokens and none is cached.
    async fn authorization(&self, scope: &Scope, location: &str) -> Result<Option<HeaderValue>> {
        let challenge = {
            let state = self.auth.lock().expect("auth state lock");
            let Some(challenge) = state.challenge.clone() else { return Ok(None) };
            if let Some(token) = state.tokens.get(scope).filter(|t| t.expires > Instant::now()) {
                return Ok(Some(bearer(&token.value)));
            }
            challenge
        };
        match challenge {
            Challenge::Basic => match self.credentials().await? {
                Some(Credential::Basic { username, password }) => Ok(Some(basic(&username, password.expose()))),
                _ => Ok(None),
            },
            Challenge::Bearer { realm, service } => {
                if let Some(Credential::BearerToken(token)) = self.credentials().await? {
                    return Ok(Some(bearer(token.expose())));
                }
                let token = self.fetch_token(&realm, service.as_deref(), scope, location).await?;
                Ok(Some(bearer(&token)))
            }
        }
    }

    /// Records the scheme a `401` asks for; a cached token for `scope` was evidently refused.
    fn learn_challenge(&self, response: &Response, scope: &Scope, location: &str) -> Result<()> {
        let header = response.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok());
        let Some(challenge) = header.and_then(parse_challenge) else {
            return Err(denied(response, location, "access", "the registry demands authentication but sent no usable challenge"));
        };
        let mut state = self.auth.lock().expect("auth state lock");
        state.tokens.remove(scope);
        state.challenge = Some(challenge);
        Ok(())
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &Scope, location: &str) -> Result<String> {
        let credentials = self.credentials().await?;
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(service) = service {
            query.push(("service", service));
        }
        for part in scope.0.split(' ').filter(|s| !s.is_empty()) {
            query.push(("scope", part));
        }
        let make = || match &credentials {
            Some(Credential::IdentityToken(token)) => {
                let mut form = query.clone();
                form.extend([("grant_type", "refresh_token"), ("client_id", "airlock"), ("refresh_token", token.expose())]);
                self.http.post(realm).form(&form)
            }
            Some(Credential::Basic { username, password }) => {
                self.http.get(realm).query(&query).basic_auth(username, Some(password.expose()))
            }
            Some(Credential::BearerToken(_)) | None => self.http.get(realm).query(&query),
        };
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let result = make().send().await.map_err(|source| Error::from(ErrorKind::Transport { method: "GET".into(), url: realm.to_owned(), source }));
            let failure = match result {
                Ok(response) if matches!(response.status().as_u16(), 408 | 429 | 500..=599) => http_error("GET", response).await,
                Ok(response) => break response,
                Err(error) => error,
            };
            if attempt >= self.retry.attempts {
                return Err(Error::from(ErrorKind::Retried { attempts: attempt, last: failure }));
            }
            tokio::time::sleep(self.retry.delay(attempt, failure.retry_after())).await;
        };
        if matches!(response.status().as_u16(), 401 | 403) {
            let reason = if credentials.is_some() { "the token service refused the credentials" } else { "the token service requires credentials" };
            return Err(denied(&response, location_or(location, &self.registry), "authenticate to", reason));
        }
        if !response.status().is_success() {
            return Err(http_error("GET", response).await);
        }
        let body = match read_limited(response, TOKEN_LIMIT).await {
            Ok(body) => body,
            Err(BodyError::TooLarge) => {
                return Err(Error::from(ErrorKind::Protocol { location: realm.to_owned(), reason: format!("the token answer is larger than {TOKEN_LIMIT} bytes: refused") }))
            }
            Err(BodyError::Cut(source)) => return Err(Error::from(ErrorKind::Transport { method: "GET".into(), url: realm.to_owned(), source })),
        };
        let answer: TokenResponse = serde_json::from_slice(&body).map_err(|e| Error::from(ErrorKind::Protocol {
            location: realm.to_owned(),
            reason: format!("the token service answered malformed JSON: {e}"),
        }))?;
        let value = answer.token.or(answer.access_token).filter(|t| !t.is_empty()).ok_or_else(|| Error::from(ErrorKind::Protocol {
            location: realm.to_owned(),
            reason: "the token service answered without a token".into(),
        }))?;
        // Renew a little early so a token does not expire in the middle of a request.
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(60).max(10));
        let expires = Instant::now() + lifetime - Duration::from_secs(5);
        let mut state = self.auth.lock().expect("auth state lock");
        state.tokens.insert(scope.clone(), CachedToken { value: value.clone(), expires });
        Ok(value)
    }

    /// Checks that the registry accepts our credentials (`airlock login`): `/v2/` and, for token
    /// auth, a token without a repository scope.
    pub(crate) async fn check_login(&self) -> Result<()> {
        let url = format!("{}/v2/", self.base);
        let scope = Scope(String::new());
        let response = self.send(&scope, &self.registry, &|| self.http.get(&url)).await?;
        if response.status().is_success() {
            return Ok(());
        }
        if response.status() == StatusCode::UNAUTHORIZED {
            return Err(denied(&response, &self.registry, "log in to", "the credentials were refused"));
        }
        Err(http_error("GET", response).await)
    }
}

fn location_or<'a>(location: &'a str, registry: &'a str) -> &'a str {
    if location.is_empty() {
        registry
    } else {
        location
    }
}

fn bearer(token: &str) -> HeaderValue {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
    value.set_sensitive(true);
    value
}

fn basic(username: &str, password: &str) -> HeaderValue {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is a valid header value");
    value.set_sensitive(true);
    value
}

fn denied(response: &Response, location: &str, action: &str, reason: &str) -> Error {
    let registry = response.url().host_str().unwrap_or("the registry").to_owned();
    let registry = match response.url().port() {
        Some(port) => format!("{registry}:{port}"),
        None => registry,
    };
    Error::from(ErrorKind::Denied {
        action: action.to_owned(),
        location: location.to_owned(),
        status: response.status().as_u16(),
        reason: reason.to_owned(),
        hint: format!("check the credentials: `airlock login {registry}`, `--creds USER:PASSWORD`, or `--authfile FILE`"),
    })
}

/// An error for an unexpected status, with the distribution-spec error code and message when the
/// body has them. Reads at most 64 KiB of the body.
pub(crate) async fn http_error(method: &str, response: Response) -> Error {
    let status = response.status().as_u16();
    let url = response.url().to_string();
    let retry_after = response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
    let body = read_limited(response, ERROR_BODY_LIMIT).await.unwrap_or_default();
    error_from_body(method, status, url, retry_after, &body)
}

fn error_from_body(method: &str, status: u16, url: String, retry_after: Option<Duration>, body: &[u8]) -> Error {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    let (code, message) = match serde_json::from_slice::<Body>(body) {
        Ok(Body { errors }) if !errors.is_empty() => (errors[0].code.clone(), errors[0].message.clone()),
        _ => (None, None),
    };
    Error::from(ErrorKind::Http { method: method.to_owned(), url, status, code, message, retry_after })
}

/// Why a body could not be read whole.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// It is (or says it is) longer than the limit: refused, not read further.
    TooLarge,
    /// The connection failed, was cut or stalled past the read timeout.
    Cut(reqwest::Error),
}

/// Reads a body up to `limit` bytes: never more is held in memory, whatever the server sends.
pub(crate) async fn read_limited(mut response: Response, limit: usize) -> std::result::Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Cut)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A response read whole (bounded): what [`RegistryClient::fetch`] returns.
pub(crate) struct Fetched {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub url: reqwest::Url,
    pub body: Vec<u8>,
}

impl Fetched {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next page a `Link: <…>; rel="next"` header names (tag lists, the catalog), resolved
    /// against this answer's URL.
    pub fn next_page(&self) -> Option<reqwest::Url> {
        self.header(reqwest::header::LINK.as_str())
            .and_then(|link| link.split(',').find(|part| part.contains("rel=\"next\"") || part.contains("rel=next")))
            .and_then(|part| part.split_once('<').and_then(|(_, rest)| rest.split_once('>')).map(|(target, _)| target.to_owned()))
            .and_then(|target| self.url.join(&target).ok())
    }

    /// The error for an unexpected status, as [`http_error`] makes it.
    pub fn error(&self, method: &str) -> Error {
        let retry_after = self.header(RETRY_AFTER.as_str()).and_then(parse_retry_after);
        error_from_body(method, self.status.as_u16(), self.url.to_string(), retry_after, &self.body)
    }
}

/// The most of an error answer's body that is read.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

