//! The distribution-spec routes. Repository names contain slashes, so the path is parsed here
//! rather than by the router: `/v2/<name>/manifests/<reference>`, `/v2/<name>/blobs/<digest>`,
//! `/v2/<name>/blobs/uploads/[<id>]`, `/v2/<name>/tags/list`, `/v2/<name>/referrers/<digest>`.

use std::collections::HashMap;
use std::sync::Arc;

use airlock_oci::{media_type, Digest, Manifest};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::auth::{Action, BasicCheck, Caller};
use crate::error::RegistryError;
use crate::storage::Storage;
use crate::Registry;

type Result<T, E = RegistryError> = std::result::Result<T, E>;

const MANIFEST_LIMIT: usize = 4 * 1024 * 1024;

pub fn router(registry: Arc<Registry>) -> Router {
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let exposition = metrics.clone();
    let health = registry.clone();
    Router::new()
        .route("/v2/", get(base).head(base))
        .route("/v2", get(base).head(base))
        .route("/token", get(token))
        .route("/v2/_catalog", get(catalog))
        .fallback(dispatch)
        .with_state(registry)
        .layer(axum::middleware::map_response(api_version))
        .layer(axum::middleware::from_fn(close_after_unread_body))
        .layer(axum::middleware::from_fn_with_state(metrics, crate::metrics::observe))
        // Healthy only while the storage answers (a bucket unreachable from this replica fails
        // it, so a load balancer stops sending it requests).
        .route(
            "/healthz",
            get(move || {
                let registry = health.clone();
                async move {
                    match registry.storage.check().await {
                        Ok(()) => (StatusCode::OK, "ok".to_owned()),
                        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("storage unavailable: {e}")),
                    }
                }
            }),
        )
        .route("/metrics", get(move || async move { ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], exposition.render()) }))
}

/// Every `/v2` answer, errors and challenges included, names the API it speaks, as distribution
/// does: some clients decide from a `401` whether a registry is a v2 registry.
async fn api_version(mut response: Response) -> Response {
    response.headers_mut().insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    response
}

/// An error answer to a request whose body was not read (a refusal before the handler, or a
/// handler that stopped early) closes the connection: an HTTP/1.1 client that reuses it would
/// otherwise send its next request after the unread body, and Go clients (containerd, docker,
/// oras-go, helm) then fail their retried `PUT` with EOF.
async fn close_after_unread_body(request: Request, next: axum::middleware::Next) -> Response {
    let has_body = request.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok()).is_some_and(|n| n > 0)
        || request.headers().contains_key("transfer-encoding");
    let mut response = next.run(request).await;
    if has_body && (response.status().is_client_error() || response.status().is_server_error()) {
        response.headers_mut().insert("connection", HeaderValue::from_static("close"));
    }
    response
}

/// The client's address: from the listener (plain or TLS), absent in tests without a socket.
fn client_of(request: &Request) -> Option<std::net::IpAddr> {
    request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|info| info.0.ip())
}

/// On a private listener, the `401` (a Basic challenge) for anything but its one credential,
/// compared in time that does not depend on where it differs.
fn private_refusal(registry: &Registry, headers: &HeaderMap) -> Option<Response> {
    let expected = registry.private_credential.as_deref()?;
    let given = authorization(headers).unwrap_or("").as_bytes();
    let same = given.len() == expected.len() && given.iter().zip(expected.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same {
        return None;
    }
    let mut response = RegistryError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required").into_response();
    response.headers_mut().insert("www-authenticate", HeaderValue::from_static("Basic realm=\"airlock mirror\""));
    Some(response)
}

/// A `429` for a client that failed to log in too often.
fn throttled(wait: std::time::Duration) -> Response {
    let mut response = RegistryError::new(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", "too many failed logins: try again later").into_response();
    response.headers_mut().insert("retry-after", HeaderValue::from_str(&wait.as_secs().max(1).to_string()).expect("digits"));
    response
}

async fn base(State(registry): State<Arc<Registry>>, request: Request) -> Response {
    if let Some(refused) = private_refusal(&registry, request.headers()) {
        return refused;
    }
    if let Some(auth) = &registry.auth {
        let caller = auth.identify(authorization(request.headers()), client_of(&request));
        if let Caller::Throttled(wait) = caller {
            return throttled(wait);
        }
        if matches!(caller, Caller::Anonymous | Caller::Refused) {
            return challenge(&registry, request.headers(), &[], caller == Caller::Refused);
        }
    }
    ([("content-type", "application/json")], "{}").into_response()
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization").and_then(|v| v.to_str().ok())
}

/// A `401` that tells the client how to authenticate for `scopes` (all in one token: a mount
/// needs push on the target and pull on the source).
fn challenge(registry: &Registry, headers: &HeaderMap, scopes: &[(&str, Action)], refused: bool) -> Response {
    let uses_tokens = registry.auth.as_ref().is_some_and(|a| a.uses_tokens());
    let value = if uses_tokens {
        let host = headers.get("host").and_then(|v| v.to_str().ok()).unwrap_or("127.0.0.1");
        // TLS connections are marked by `tls::serve_tls`; a reverse proxy says so itself.
        let scheme = match headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) {
            Some("https") => "https",
            _ => "http",
        };
        let mut value = format!("Bearer realm=\"{scheme}://{host}/token\",service=\"{}\"", crate::auth::SERVICE);
        if !scopes.is_empty() {
            let scopes: Vec<String> = scopes
                .iter()
                .map(|(name, action)| {
                    let action = match action {
                        Action::Pull => "pull",
                        Action::Push => "pull,push",
                        Action::Delete => "delete",
                    };
                    format!("repository:{name}:{action}")
                })
                .collect();
            value.push_str(&format!(",scope=\"{}\"", scopes.join(" ")));
        }
        value
    } else {
        "Basic realm=\"airlock\"".to_owned()
    };
    let message = if refused { "authentication failed" } else { "authentication required" };
    let mut response = RegistryError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message).into_response();
    response.headers_mut().insert("www-authenticate", HeaderValue::from_str(&value).expect("a valid header"));
    response
}

/// The built-in token issuer (Docker token spec): basic credentials optional, scopes granted as
/// the rules allow.
async fn token(State(registry): State<Arc<Registry>>, headers: HeaderMap, request: Request) -> Response {
    let Some(auth) = registry.auth.as_ref().filter(|a| a.uses_tokens()) else {
        return RegistryError::not_found().into_response();
    };
    let user = match authorization(&headers).and_then(|v| v.strip_prefix("Basic ")) {
        Some(encoded) => match auth.check_basic(encoded, client_of(&request)) {
            BasicCheck::User(user) => Some(user),
            BasicCheck::Wrong => return RegistryError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "wrong user name or password").into_response(),
            BasicCheck::Throttled(wait) => return throttled(wait),
        },
        None => None,
    };
    let scopes: Vec<String> = request
        .uri()
        .query()
        .and_then(|_| axum::extract::Query::<Vec<(String, String)>>::try_from_uri(request.uri()).ok())
        .map(|q| q.0.into_iter().filter(|(k, _)| k == "scope").map(|(_, v)| v).collect())
        .unwrap_or_default();
    let token = auth.issue_token(user.as_deref(), &scopes).expect("tokens are on");
    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": crate::auth::TOKEN_LIFETIME.as_secs()});
    ([("content-type", "application/json")], body.to_string()).into_response()
}

/// `/v2/_catalog?n=&last=`: the repositories the caller may pull, sorted, paged with `Link` as
/// tag lists are. A token caller is judged by the rules for the token's subject (a token names
/// repositories, and a catalog request names none).
async fn catalog(State(registry): State<Arc<Registry>>, request: Request) -> Response {
    let caller = match &registry.auth {
        Some(auth) => match auth.identify(authorization(request.headers()), client_of(&request)) {
            Caller::Throttled(wait) => return throttled(wait),
            Caller::Refused => return challenge(&registry, request.headers(), &[], true),
            // As distribution: a catalog needs a token (or credentials) for `registry:catalog:*`;
            // an anonymous token then shows what anyone may pull.
            Caller::Anonymous => {
                let mut response = challenge(&registry, request.headers(), &[], false);
                if auth.uses_tokens() {
                    if let Some(value) = response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()) {
                        let value = format!("{value},scope=\"registry:catalog:*\"");
                        response.headers_mut().insert("www-authenticate", HeaderValue::from_str(&value).expect("a valid header"));
                    }
                }
                return response;
            }
            Caller::Token(subject, _) if subject.is_empty() => Some(Caller::Anonymous),
            Caller::Token(subject, _) => Some(Caller::User(subject)),
            caller => Some(caller),
        },
        None => None,
    };
    let query: HashMap<String, String> = axum::extract::Query::<HashMap<String, String>>::try_from_uri(request.uri()).map(|q| q.0).unwrap_or_default();
    let n = match query.get("n").map(|n| n.parse::<usize>()) {
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return RegistryError::new(StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID", "invalid n").into_response(),
        None => None,
    };
    let names = match registry.storage.repositories().await {
        Ok(names) => names,
        Err(e) => return RegistryError::from(e).into_response(),
    };
    let visible: Vec<String> = names
        .into_iter()
        .filter(|name| match (&registry.auth, &caller) {
            (Some(auth), Some(caller)) => auth.allows(caller, name, Action::Pull),
            _ => true,
        })
        .filter(|name| query.get("last").is_none_or(|last| name > last))
        .collect();
    let page: Vec<String> = visible.iter().take(n.unwrap_or(usize::MAX)).cloned().collect();
    let mut response = (StatusCode::OK, [("content-type", "application/json")], serde_json::json!({"repositories": page}).to_string()).into_response();
    if let (Some(n), Some(last)) = (n, page.last()) {
        if visible.len() > page.len() {
            let link = format!("</v2/_catalog?n={n}&last={last}>; rel=\"next\"");
            response.headers_mut().insert("link", HeaderValue::from_str(&link).expect("a valid header"));
        }
    }
    response
}

enum Resource {
    Manifest(String),
    Blob(String),
    Uploads,
    Upload(String),
    Tags,
    Referrers(String),
}

/// Splits `/v2/<name>/<resource>`; the name is checked against the spec's grammar.
fn parse(path: &str) -> Option<(String, Resource)> {
    let rest = path.strip_prefix("/v2/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    let (name_len, resource) = if n >= 4 && segments[n - 3] == "blobs" && segments[n - 2] == "uploads" {
        let id = segments[n - 1];
        (n - 3, if id.is_empty() { Resource::Uploads } else { Resource::Upload(id.to_owned()) })
    } else if n >= 3 && segments[n - 2] == "blobs" && segments[n - 1] == "uploads" {
        (n - 2, Resource::Uploads)
    } else if n >= 3 && segments[n - 2] == "manifests" {
        (n - 2, Resource::Manifest(segments[n - 1].to_owned()))
    } else if n >= 3 && segments[n - 2] == "blobs" {
        (n - 2, Resource::Blob(segments[n - 1].to_owned()))
    } else if n >= 3 && segments[n - 2] == "tags" && segments[n - 1] == "list" {
        (n - 2, Resource::Tags)
    } else if n >= 3 && segments[n - 2] == "referrers" {
        (n - 2, Resource::Referrers(segments[n - 1].to_owned()))
    } else {
        return None;
    };
    Some((segments[..name_len].join("/"), resource))
}

fn valid_name(name: &str) -> bool {
    airlock_oci::validate_repository(name).is_ok()
}

/// The answer to a manifest reference that is neither a digest nor a tag, or an upload id that
/// cannot be one of ours.
fn invalid_reference(resource: &Resource, method: &Method) -> Option<RegistryError> {
    match resource {
        Resource::Manifest(reference) if airlock_oci::parse_digest(reference).is_err() => {
            if reference.contains(':') {
                return Some(RegistryError::digest_invalid(format!("invalid digest `{}`", reference.escape_debug())));
            }
            let reason = airlock_oci::validate_tag(reference).err()?;
            Some(if method == Method::PUT {
                RegistryError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", reason)
            } else {
                RegistryError::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", format!("no such manifest: {reason}"))
            })
        }
        Resource::Blob(digest) | Resource::Referrers(digest) => digest_param(digest).err(),
        Resource::Upload(id) if !crate::storage::valid_upload_id(id) => {
            Some(RegistryError::new(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry"))
        }
        _ => None,
    }
}

async fn dispatch(State(registry): State<Arc<Registry>>, request: Request) -> Response {
    let storage = &registry.storage;
    let path = request.uri().path().to_owned();
    let Some((name, resource)) = parse(&path) else {
        return RegistryError::not_found().into_response();
    };
    if !valid_name(&name) {
        return RegistryError::name_invalid(format!("invalid repository name `{name}`")).into_response();
    }
    let method = request.method().clone();
    // References and upload ids are checked before anything reaches storage: bad input is the
    // client's error (4xx), never a failed file operation (500).
    if let Some(refused) = invalid_reference(&resource, &method) {
        return refused.into_response();
    }
    if let Some(refused) = private_refusal(&registry, request.headers()) {
        return refused;
    }
    let mirror = registry.mirror.as_ref();
    if mirror.is_some() && !matches!(method, Method::GET | Method::HEAD) {
        return RegistryError::unsupported("this registry is a gated mirror: it serves pulls only").into_response();
    }
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .map(|q| axum::extract::Query::<HashMap<String, String>>::try_from_uri(request.uri()).map(|q| q.0).unwrap_or_else(|_| {
            tracing::debug!(query = q, "unparsable query");
            HashMap::new()
        }))
        .unwrap_or_default();
    if method == Method::DELETE && !registry.allow_delete && matches!(resource, Resource::Manifest(_) | Resource::Blob(_)) {
        return RegistryError::unsupported("deletes are disabled on this registry").into_response();
    }
    if let Some(auth) = &registry.auth {
        let action = match method {
            Method::GET | Method::HEAD => Action::Pull,
            Method::DELETE if matches!(resource, Resource::Manifest(_) | Resource::Blob(_)) => Action::Delete,
            _ => Action::Push,
        };
        let caller = auth.identify(authorization(request.headers()), client_of(&request));
        if let Caller::Throttled(wait) = caller {
            return throttled(wait);
        }
        // A mount reads `from`: a token for it must carry pull there too, as distribution asks.
        let mount_from = match (&resource, query.get("from"), query.contains_key("mount")) {
            (Resource::Uploads, Some(from), true) if valid_name(from) => Some(from.as_str()),
            _ => None,
        };
        let mut scopes = vec![(name.as_str(), action)];
        scopes.extend(mount_from.map(|from| (from, Action::Pull)));
        if !auth.allows(&caller, &name, action) {
            let authenticated = matches!(caller, Caller::User(_) | Caller::Token(..));
            if authenticated && !auth.uses_tokens() {
                return RegistryError::new(StatusCode::FORBIDDEN, "DENIED", format!("no {action:?} access to `{name}`").to_lowercase()).into_response();
            }
            return challenge(&registry, request.headers(), &scopes, caller == Caller::Refused);
        }
        if let Some(from) = mount_from {
            if !auth.allows(&caller, from, Action::Pull) {
                // A token without pull on `from`, whose holder the rules let pull there: ask for
                // a token that has it, so the client mounts rather than uploads again.
                if let Caller::Token(subject, _) = &caller {
                    let holder = if subject.is_empty() { Caller::Anonymous } else { Caller::User(subject.clone()) };
                    if auth.allows(&holder, from, Action::Pull) {
                        return challenge(&registry, request.headers(), &scopes, false);
                    }
                }
                // A mount reads the other repository: without pull there, it is an upload.
                let id = match storage.start_upload(&name).await {
                    Ok(id) => id,
                    Err(e) => return RegistryError::from(e).into_response(),
                };
                return with_headers(StatusCode::ACCEPTED, upload_headers(&name, &id, 0));
            }
        }
    }
    // A mirror maps the client's repository (checked by the rules as the client named it) to
    // where it keeps what the gates promoted, and may import a manifest before it is read.
    let name = match mirror {
        Some(mirror) => {
            let repository = match mirror.route(&name, query.get("ns").map(String::as_str)) {
                Ok(repository) => repository,
                Err(message) => return RegistryError::new(StatusCode::NOT_FOUND, "NAME_UNKNOWN", message).into_response(),
            };
            if let Resource::Manifest(reference) = &resource {
                if let Err(message) = mirror.admits(&repository, reference) {
                    return RegistryError::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", message).into_response();
                }
                // What the gates promoted is served straight from storage (one lookup); only a
                // miss waits for the mirror.
                match get_manifest(storage, &repository, reference, request.headers(), method == Method::GET).await {
                    Ok(response) => {
                        crate::metrics::mirror_metrics().hits.inc();
                        mirror.served(&repository, reference);
                        return response;
                    }
                    Err(error) if error.is_unknown() => {}
                    Err(error) => return error.into_response(),
                }
                if let crate::mirror::Answer::Unknown(message) = mirror.missing(storage, &repository, reference).await {
                    return RegistryError::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", message).into_response();
                }
            }
            repository
        }
        None => name,
    };
    let result = match (resource, method) {
        (Resource::Manifest(reference), Method::GET) => get_manifest(storage, &name, &reference, request.headers(), true).await,
        (Resource::Manifest(reference), Method::HEAD) => get_manifest(storage, &name, &reference, request.headers(), false).await,
        (Resource::Manifest(reference), Method::PUT) => {
            let actor = actor_of(&registry, request.headers());
            let result = put_manifest(storage, &name, &reference, request).await;
            if let (Ok(response), Some(notifier)) = (&result, &registry.notifier) {
                let digest = response.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_owned);
                let stored = match &digest {
                    Some(digest) => storage.get_manifest(&name, digest).await.ok(),
                    None => None,
                };
                notifier.publish(crate::events::Event {
                    action: "push",
                    repository: name.clone(),
                    digest,
                    media_type: stored.as_ref().map(|(_, media_type, _)| media_type.clone()),
                    size: stored.as_ref().map(|(_, _, bytes)| bytes.len() as u64),
                    tag: airlock_oci::parse_digest(&reference).is_err().then(|| reference.clone()),
                    actor,
                });
            }
            result
        }
        (Resource::Manifest(reference), Method::DELETE) => {
            let actor = actor_of(&registry, request.headers());
            let result = delete_manifest(storage, &name, &reference).await;
            if let (Ok(_), Some(notifier)) = (&result, &registry.notifier) {
                let is_digest = airlock_oci::parse_digest(&reference).is_ok();
                notifier.publish(crate::events::Event {
                    action: "delete",
                    repository: name.clone(),
                    digest: is_digest.then(|| reference.clone()),
                    media_type: None,
                    size: None,
                    tag: (!is_digest).then(|| reference.clone()),
                    actor,
                });
            }
            result
        }
        (Resource::Blob(digest), Method::GET) => get_blob(storage, &name, &digest, request.headers(), true).await,
        (Resource::Blob(digest), Method::HEAD) => get_blob(storage, &name, &digest, request.headers(), false).await,
        (Resource::Blob(digest), Method::DELETE) => delete_blob(storage, &name, &digest).await,
        (Resource::Uploads, Method::POST) => start_upload(storage, &name, &query, request).await,
        (Resource::Upload(id), Method::PATCH) => patch_upload(storage, &name, &id, request).await,
        (Resource::Upload(id), Method::PUT) => finish_upload(storage, &name, &id, &query, request).await,
        (Resource::Upload(id), Method::GET) => upload_status(storage, &name, &id).await,
        (Resource::Upload(id), Method::DELETE) => cancel_upload(storage, &name, &id).await,
        (Resource::Tags, Method::GET) => list_tags(storage, &name, &query).await,
        (Resource::Referrers(digest), Method::GET) => referrers(storage, &name, &digest, &query).await,
        (_, method) => Err(RegistryError::unsupported(format!("{method} is not supported here"))),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// The authenticated user behind a request, for events.
fn actor_of(registry: &Registry, headers: &HeaderMap) -> Option<String> {
    match registry.auth.as_ref()?.identify(authorization(headers), None) {
        Caller::User(user) | Caller::Token(user, _) => Some(user),
        _ => None,
    }
}

fn digest_param(text: &str) -> Result<Digest> {
    airlock_oci::parse_digest(text).map_err(|e| RegistryError::digest_invalid(e.to_string()))
}

fn header(name: &'static str, value: impl AsRef<str>) -> (&'static str, HeaderValue) {
    (name, HeaderValue::from_str(value.as_ref()).unwrap_or_else(|_| HeaderValue::from_static("")))
}

/// A manifest by tag or digest. The digest is its ETag: a client that names it in
/// `If-None-Match` gets `304` without the manifest being read (as distribution answers).
async fn get_manifest(storage: &Storage, name: &str, reference: &str, headers: &HeaderMap, body: bool) -> Result<Response> {
    let (digest, media_type) = storage.resolve(name, reference).await?;
    let etag = format!("\"{digest}\"");
    if etag_matches(headers, &digest) {
        let response = Response::builder()
            .status(StatusCode::NOT_MODIFIED)
            .header("etag", etag)
            .header("docker-content-digest", digest.to_string());
        return Ok(response.body(Body::empty()).expect("valid headers"));
    }
    let bytes = storage.manifest_bytes(&digest).await?;
    let response = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", media_type)
        .header("docker-content-digest", digest.to_string())
        .header("etag", etag)
        .header("content-length", bytes.len());
    let body = if body { Body::from(bytes) } else { Body::empty() };
    Ok(response.body(body).expect("valid headers"))
}

/// Whether `If-None-Match` names `digest` (quoted or bare, as distribution accepts) or is `*`.
fn etag_matches(headers: &HeaderMap, digest: &Digest) -> bool {
    let digest = digest.to_string();
    headers
        .get_all("if-none-match")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/").trim_matches('"'))
        .any(|tag| tag == digest || tag == "*")
}

async fn put_manifest(storage: &Storage, name: &str, reference: &str, request: Request) -> Result<Response> {
    let content_type = request.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let bytes = axum::body::to_bytes(request.into_body(), MANIFEST_LIMIT)
        .await
        .map_err(|e| RegistryError::new(StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID", format!("manifest too large or unreadable: {e}")))?;
    let manifest = Manifest::parse(bytes.to_vec(), content_type.as_deref())
        .map_err(|e| RegistryError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", e.to_string()))?;
    let tag = match airlock_oci::parse_digest(reference) {
        Ok(expected) => {
            if &expected != manifest.digest() {
                let actual = airlock_oci::digest_of(manifest.bytes(), Some(&expected));
                if actual != expected {
                    return Err(RegistryError::digest_invalid(format!("the manifest's digest is {actual}, not {expected}")));
                }
            }
            None
        }
        Err(_) if reference.contains(':') => return Err(RegistryError::digest_invalid(format!("invalid digest `{reference}`"))),
        Err(_) => {
            if let Err(reason) = airlock_oci::validate_tag(reference) {
                return Err(RegistryError::new(StatusCode::BAD_REQUEST, "MANIFEST_INVALID", reason));
            }
            Some(reference)
        }
    };
    storage.put_manifest(name, tag, &manifest).await?;
    let digest = manifest.digest().to_string();
    let mut headers = vec![header("location", format!("/v2/{name}/manifests/{digest}")), header("docker-content-digest", &digest)];
    if let Some(subject) = manifest.subject() {
        headers.push(header("oci-subject", subject.digest()));
    }
    Ok(with_headers(StatusCode::CREATED, headers))
}

fn with_headers(status: StatusCode, headers: Vec<(&'static str, HeaderValue)>) -> Response {
    let mut response = status.into_response();
    for (name, value) in headers {
        response.headers_mut().insert(name, value);
    }
    response
}

async fn delete_manifest(storage: &Storage, name: &str, reference: &str) -> Result<Response> {
    storage.delete_manifest(name, reference).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// `bytes=START-[END]` within `size`.
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>> {
    let Some(value) = headers.get("range").and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let invalid = || RegistryError::new(StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UNKNOWN", format!("unsatisfiable range `{value}`"));
    let spec = value.strip_prefix("bytes=").ok_or_else(invalid)?;
    let (start, end) = spec.split_once('-').ok_or_else(invalid)?;
    let start: u64 = start.trim().parse().map_err(|_| invalid())?;
    let end: u64 = if end.trim().is_empty() { size.saturating_sub(1) } else { end.trim().parse().map_err(|_| invalid())? };
    if start >= size || end < start {
        return Err(invalid());
    }
    Ok(Some((start, end.min(size - 1))))
}

async fn get_blob(storage: &Storage, name: &str, digest: &str, headers: &HeaderMap, body: bool) -> Result<Response> {
    let digest = digest_param(digest)?;
    let size = storage.blob_size(name, &digest).await?;
    // An object store set to redirect serves the bytes itself (the client follows with its
    // `Range`); airlock answers only who may read.
    if body {
        if let Some(url) = storage.direct_blob_url(&digest).await? {
            return Ok(with_headers(StatusCode::TEMPORARY_REDIRECT, vec![header("location", url), header("docker-content-digest", &digest), header("content-length", "0")]));
        }
    }
    let range = parse_range(headers, size)?;
    let (status, start, length) = match range {
        Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "application/octet-stream")
        .header("docker-content-digest", digest.to_string())
        .header("accept-ranges", "bytes")
        .header("content-length", length);
    if let Some((start, end)) = range {
        response = response.header("content-range", format!("bytes {start}-{end}/{size}"));
    }
    if !body {
        return Ok(response.body(Body::empty()).expect("valid headers"));
    }
    let (stream, _) = storage.read_blob(name, &digest, start).await?;
    Ok(response.body(Body::from_stream(take_bytes(stream, length))).expect("valid headers"))
}

/// The first `limit` bytes of a stream (a `Range` that ends before the blob does).
fn take_bytes(stream: crate::backend::ByteStream, limit: u64) -> crate::backend::ByteStream {
    use futures::StreamExt;
    Box::pin(futures::stream::unfold((stream, limit), |(mut stream, left)| async move {
        if left == 0 {
            return None;
        }
        match stream.next().await {
            Some(Ok(mut chunk)) => {
                if chunk.len() as u64 > left {
                    chunk.truncate(left as usize);
                }
                let left = left - chunk.len() as u64;
                Some((Ok(chunk), (stream, left)))
            }
            Some(Err(e)) => Some((Err(e), (stream, 0))),
            None => Some((Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "blob shorter than recorded")), (stream, 0))),
        }
    }))
}

async fn delete_blob(storage: &Storage, name: &str, digest: &str) -> Result<Response> {
    let digest = digest_param(digest)?;
    storage.delete_blob(name, &digest).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

fn upload_headers(name: &str, id: &str, offset: u64) -> Vec<(&'static str, HeaderValue)> {
    vec![
        header("location", format!("/v2/{name}/blobs/uploads/{id}")),
        header("range", format!("0-{}", offset.saturating_sub(1))),
        header("docker-upload-uuid", id),
        header("blob-upload-session-id", id),
        header("content-length", "0"),
    ]
}

fn blob_created(name: &str, digest: &Digest) -> Response {
    with_headers(
        StatusCode::CREATED,
        vec![header("location", format!("/v2/{name}/blobs/{digest}")), header("docker-content-digest", digest), header("content-length", "0")],
    )
}

async fn start_upload(storage: &Storage, name: &str, query: &HashMap<String, String>, request: Request) -> Result<Response> {
    if let (Some(mount), Some(from)) = (query.get("mount"), query.get("from")) {
        let digest = digest_param(mount)?;
        if valid_name(from) && storage.mount_blob(name, from, &digest).await? {
            return Ok(blob_created(name, &digest));
        }
    }
    if let Some(digest) = query.get("digest") {
        let digest = digest_param(digest)?;
        storage.put_blob(name, &digest, request.into_body().into_data_stream()).await?;
        return Ok(blob_created(name, &digest));
    }
    let id = storage.start_upload(name).await?;
    Ok(with_headers(StatusCode::ACCEPTED, upload_headers(name, &id, 0)))
}

/// `Content-Range: START-END` (also with a `bytes ` prefix); the start of the chunk.
fn chunk_start(headers: &HeaderMap) -> Result<Option<u64>> {
    let Some(value) = headers.get("content-range").and_then(|v| v.to_str().ok()) else { return Ok(None) };
    let spec = value.trim().trim_start_matches("bytes").trim().trim_start_matches('=');
    let start = spec.split('-').next().and_then(|s| s.trim().parse::<u64>().ok());
    start
        .map(Some)
        .ok_or_else(|| RegistryError::new(StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID", format!("invalid Content-Range `{value}`")))
}

async fn patch_upload(storage: &Storage, name: &str, id: &str, request: Request) -> Result<Response> {
    let start = chunk_start(request.headers())?;
    match storage.append_upload(name, id, start, request.into_body().into_data_stream()).await {
        Ok(offset) => Ok(with_headers(StatusCode::ACCEPTED, upload_headers(name, id, offset))),
        Err(error) => Ok(out_of_order(name, id, error)),
    }
}

/// A chunk that does not start where the upload is: `416` with the session's `Location` and
/// `Range`, so the client can resume from the last valid byte.
fn out_of_order(name: &str, id: &str, error: crate::storage::StorageError) -> Response {
    if let crate::storage::StorageError::RangeInvalid { offset } = error {
        let mut response = RegistryError::from(error).into_response();
        for (header, value) in upload_headers(name, id, offset) {
            if header != "content-length" {
                response.headers_mut().insert(header, value);
            }
        }
        return response;
    }
    RegistryError::from(error).into_response()
}

async fn finish_upload(storage: &Storage, name: &str, id: &str, query: &HashMap<String, String>, request: Request) -> Result<Response> {
    let digest = query.get("digest").ok_or_else(|| RegistryError::digest_invalid("the digest query parameter is missing"))?;
    let digest = digest_param(digest)?;
    let start = chunk_start(request.headers())?;
    // POST then one PUT with the whole body (what skopeo, docker and containerd send for small
    // blobs): nothing was appended, so the body goes straight to its content address, verified
    // in flight, instead of through the session's data (on an object store that saves the
    // session's writes, the read-back and the copy).
    if start.is_none_or(|start| start == 0) && storage.upload_offset(name, id).await? == 0 {
        storage.put_blob(name, &digest, request.into_body().into_data_stream()).await?;
        storage.discard_upload(id).await?;
        return Ok(blob_created(name, &digest));
    }
    if let Err(error) = storage.append_upload(name, id, start, request.into_body().into_data_stream()).await {
        return Ok(out_of_order(name, id, error));
    }
    storage.finish_upload(name, id, &digest).await?;
    Ok(blob_created(name, &digest))
}

async fn upload_status(storage: &Storage, name: &str, id: &str) -> Result<Response> {
    let offset = storage.upload_offset(name, id).await?;
    Ok(with_headers(StatusCode::NO_CONTENT, upload_headers(name, id, offset)))
}

async fn cancel_upload(storage: &Storage, name: &str, id: &str) -> Result<Response> {
    storage.cancel_upload(name, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_tags(storage: &Storage, name: &str, query: &HashMap<String, String>) -> Result<Response> {
    let tags = storage.tags(name).await?;
    let last = query.get("last");
    let rest: Vec<String> = tags.into_iter().filter(|t| last.is_none_or(|l| t > l)).collect();
    let n = match query.get("n") {
        Some(n) => n.parse::<usize>().map_err(|_| RegistryError::new(StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID", format!("invalid n `{n}`")))?,
        None => rest.len(),
    };
    let page: Vec<String> = rest.iter().take(n).cloned().collect();
    let body = serde_json::json!({"name": name, "tags": page});
    let mut response = (StatusCode::OK, [("content-type", "application/json")], body.to_string()).into_response();
    if rest.len() > page.len() && !page.is_empty() {
        let link = format!("</v2/{name}/tags/list?n={n}&last={}>; rel=\"next\"", page.last().expect("non-empty"));
        response.headers_mut().insert("link", HeaderValue::from_str(&link).expect("a valid header"));
    }
    Ok(response)
}

async fn referrers(storage: &Storage, name: &str, digest: &str, query: &HashMap<String, String>) -> Result<Response> {
    let subject = digest_param(digest)?;
    let mut manifests = storage.referrers(name, &subject).await?;
    let artifact_type = query.get("artifactType");
    if let Some(wanted) = artifact_type {
        manifests.retain(|d| d.artifact_type().as_ref().is_some_and(|t| t.to_string() == *wanted));
    }
    let body = serde_json::json!({"schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": manifests});
    let mut response = (StatusCode::OK, [("content-type", media_type::OCI_INDEX)], body.to_string()).into_response();
    if artifact_type.is_some() {
        response.headers_mut().insert("oci-filters-applied", HeaderValue::from_static("artifactType"));
    }
    Ok(response)
}
