//! A fault-injecting HTTP proxy in front of a registry: it forwards every request, records it,
//! and on demand cuts a blob download mid-stream, answers a status (429 with `Retry-After`, 500)
//! or flips a byte of blob bodies.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;

/// The tokio runtime the in-process servers run on.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime"))
}

#[derive(Clone, Debug)]
pub enum Fault {
    /// The first blob GET without `Range` of a blob longer than `after` bytes sends at most
    /// `after` bytes, then the connection breaks.
    CutBlobOnce { after: usize },
    /// The next `times` requests whose path contains `path` get `status` (with `Retry-After`).
    Status { path: &'static str, status: u16, times: usize, retry_after: Option<u64> },
    /// Every blob GET body has its first byte flipped.
    FlipBlobBytes,
    /// Blob downloads are slowed to about this many bytes per second.
    Throttle { bytes_per_second: usize },
    /// Blob GETs are answered `307` to the same path on another host (as registries backed by
    /// object storage do); that host sees whether `Authorization` came along.
    RedirectBlobsTo(String),
    /// The OCI 1.1 referrers API, answered from the upstream's `sha256-<hex>` tag (distribution
    /// 2.8 has no referrers API), with `artifactType` filtering and `OCI-Filters-Applied`.
    ServeReferrers,
    /// Tag lists are served in pages of at most this many tags with `Link` headers, as
    /// distribution 3, Docker Hub and GHCR do (Debian's distribution 2.8 does not paginate).
    LimitPageSize(usize),
    /// A hostile upstream: tag lists carry these names besides the real tags.
    ExtraTags(Vec<String>),
    /// A hostile upstream: a tag list answer whose body never ends.
    EndlessTagList,
    /// A hostile upstream: every `/v2/` request without credentials gets a bearer challenge
    /// whose token service (on this proxy) answers a body that never ends.
    EndlessToken,
    /// Every blob GET sends at most `after` bytes, then nothing more, never closing.
    StallBlobs { after: usize },
    /// The next `times` manifest and tag-list GETs send `after` bytes of their body (0: none),
    /// then the connection breaks.
    CutSmallBodies { times: usize, after: usize },
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub authorization: bool,
    pub method: String,
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
    /// When the request arrived.
    pub at: Instant,
}

struct ProxyState {
    upstream: String,
    me: String,
    client: reqwest::Client,
    faults: Mutex<Vec<Fault>>,
    log: Mutex<Vec<Logged>>,
    /// The `User-Agent` of every request, in order (who asked).
    agents: Mutex<Vec<String>>,
    blob_bytes_sent: std::sync::atomic::AtomicU64,
}

pub struct FaultProxy {
    pub port: u16,
    state: Arc<ProxyState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    /// Stops taking connections (ones already open finish their requests).
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = runtime().block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(ProxyState {
            upstream: upstream.to_owned(),
            me: format!("127.0.0.1:{port}"),
            client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client"),
            faults: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            agents: Mutex::new(Vec::new()),
            blob_bytes_sent: std::sync::atomic::AtomicU64::new(0),
        });
        let router = axum::Router::new().fallback(forward).with_state(state.clone());
        let server = runtime().spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FaultProxy { port, state, server }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn at(&self, repository_and_tag: &str) -> String {
        format!("{}/{repository_and_tag}", self.host())
    }

    pub fn inject(&self, fault: Fault) {
        self.state.faults.lock().unwrap().push(fault);
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    /// Bytes of blob bodies passed to clients so far.
    /// The `User-Agent` of every request so far.
    pub fn user_agents(&self) -> Vec<String> {
        self.state.agents.lock().unwrap().clone()
    }

    pub fn blob_bytes_sent(&self) -> u64 {
        self.state.blob_bytes_sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn clear_faults(&self) {
        self.state.faults.lock().unwrap().clear();
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }
}

fn record(state: &ProxyState, method: &str, path: &str, range: Option<String>, status: u16) {
    record_auth(state, method, path, range, status, false);
}

fn record_auth(state: &ProxyState, method: &str, path: &str, range: Option<String>, status: u16, authorization: bool) {
    record_at(state, method, path, range, status, authorization, Instant::now());
}

fn record_at(state: &ProxyState, method: &str, path: &str, range: Option<String>, status: u16, authorization: bool, at: Instant) {
    state.log.lock().unwrap().push(Logged { authorization, method: method.into(), path: path.into(), range, status, at });
}

async fn forward(State(state): State<Arc<ProxyState>>, request: Request) -> Response {
    let state_arc = state.clone();
    let state = &*state_arc;
    forward_inner(state, state_arc.clone(), request).await
}

async fn forward_inner(state: &ProxyState, shared: Arc<ProxyState>, request: Request) -> Response {
    let arrived = Instant::now();
    let agent = request.headers().get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    state.agents.lock().unwrap().push(agent);
    let method = request.method().clone();
    let path = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into());
    let range = request.headers().get("range").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let is_blob_get = method == "GET" && path.contains("/blobs/sha") && !path.contains("/uploads/");
    let authorization = request.headers().contains_key("authorization");
    let (redirect, referrers_api, throttle) = {
        let faults = state.faults.lock().unwrap();
        let redirect = faults.iter().find_map(|f| match f {
            Fault::RedirectBlobsTo(host) => Some(host.clone()),
            _ => None,
        });
        let throttle = faults.iter().find_map(|f| match f {
            Fault::Throttle { bytes_per_second } => Some(*bytes_per_second),
            _ => None,
        });
        (redirect, faults.iter().any(|f| matches!(f, Fault::ServeReferrers)), throttle)
    };
    if let (Some(host), true) = (&redirect, is_blob_get) {
        record_auth(state, "GET", &path, range, 307, authorization);
        return Response::builder().status(307).header("location", format!("http://{host}{path}")).body(Body::empty()).unwrap();
    }
    if let Some(response) = hostile(state, &method, &path, authorization, arrived) {
        return response;
    }
    if referrers_api && method == "GET" && path.contains("/referrers/") {
        record_auth(state, "GET", &path, range, 200, authorization);
        return serve_referrers(state, &path, request.headers().get("authorization").cloned()).await;
    }

    // A status fault answers without asking upstream.
    let status_fault = {
        let mut faults = state.faults.lock().unwrap();
        let hit = faults.iter_mut().find_map(|fault| match fault {
            Fault::Status { path: wanted, status, times, retry_after } if *times > 0 && path.contains(*wanted) => {
                *times -= 1;
                Some((*status, *retry_after))
            }
            _ => None,
        });
        hit
    };
    if let Some((status, retry_after)) = status_fault {
        record_at(state, method.as_str(), &path, range, status, authorization, arrived);
        let body = format!(r#"{{"errors":[{{"code":"TOOMANYREQUESTS","message":"injected {status}"}}]}}"#);
        let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert("retry-after", HeaderValue::from_str(&seconds.to_string()).unwrap());
        }
        return response;
    }

    let limit = state.faults.lock().unwrap().iter().find_map(|f| match f {
        Fault::LimitPageSize(n) => Some(*n),
        _ => None,
    });
    if let (Some(limit), true) = (limit, path.contains("/tags/list")) {
        return paginate_tags(state, &path, limit, range).await;
    }
    let mut upstream = state.client.request(method.clone(), format!("http://{}{path}", state.upstream));
    for (name, value) in request.headers() {
        if name != "host" && name != "connection" {
            upstream = upstream.header(name, value);
        }
    }
    let body = request.into_body().into_data_stream();
    let upstream = upstream.body(reqwest::Body::wrap_stream(body));
    let answer = match upstream.send().await {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let status = answer.status();
    record_at(state, method.as_str(), &path, range.clone(), status.as_u16(), authorization, arrived);
    let mut stall: Option<usize> = None;
    let extra_tags = state.faults.lock().unwrap().iter().find_map(|f| match f {
        Fault::ExtraTags(names) => Some(names.clone()),
        _ => None,
    });
    if let (Some(names), true, true) = (extra_tags, path.contains("/tags/list"), status.is_success()) {
        let mut listed: serde_json::Value = answer.json().await.unwrap_or_default();
        let tags = listed["tags"].as_array_mut().expect("a tag list");
        tags.extend(names.into_iter().map(serde_json::Value::from));
        return axum::Json(listed).into_response();
    }
    let mut response = Response::builder().status(status.as_u16());
    for (name, value) in answer.headers() {
        if name == "location" {
            let rewritten = value.to_str().unwrap_or("").replace(&state.upstream, &state.me);
            response = response.header(name, rewritten);
        } else if name != "connection" && name != "transfer-encoding" {
            response = response.header(name, value);
        }
    }
    let is_small_get = method == "GET" && (path.contains("/manifests/") || path.contains("/tags/list"));
    let (cut, flip) = {
        let mut faults = state.faults.lock().unwrap();
        let mut cut = None;
        let mut flip = false;
        if is_small_get && status.is_success() {
            if let Some(Fault::CutSmallBodies { times, after }) = faults.iter_mut().find(|f| matches!(f, Fault::CutSmallBodies { times, .. } if *times > 0)) {
                *times -= 1;
                cut = Some(*after);
            }
        }
        if is_blob_get && status.is_success() {
            if let Some(Fault::StallBlobs { after }) = faults.iter().find(|f| matches!(f, Fault::StallBlobs { .. })) {
                stall = Some(*after);
            }
        }
        if is_blob_get && status.is_success() {
            let length = answer.content_length().unwrap_or(0) as usize;
            if range.is_none() {
                if let Some(idx) = faults.iter().position(|f| matches!(f, Fault::CutBlobOnce { after } if length > *after)) {
                    if let Fault::CutBlobOnce { after } = faults.remove(idx) {
                        cut = Some(after);
                    }
                }
            }
            flip = faults.iter().any(|f| matches!(f, Fault::FlipBlobBytes));
        }
        (cut, flip)
    };
    let mut sent = 0usize;
    let mut flipped = !flip;
    let counter = shared.clone();
    let stream = answer.bytes_stream().then(move |chunk| {
        let counter = counter.clone();
        async move {
            if let (Ok(chunk), Some(rate), true) = (&chunk, throttle, is_blob_get) {
                tokio::time::sleep(std::time::Duration::from_secs_f64(chunk.len() as f64 / rate as f64)).await;
            }
            if let (Ok(chunk), true) = (&chunk, is_blob_get) {
                counter.blob_bytes_sent.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            chunk
        }
    });
    // A stalled blob: once `after` bytes went out, the rest never comes (the connection stays
    // open, silent).
    let stream = futures::stream::unfold((Box::pin(stream), stall, false), |(mut inner, budget, stalled)| async move {
        if stalled {
            futures::future::pending::<()>().await;
        }
        let chunk = inner.next().await?;
        Some(match (chunk, budget) {
            (Ok(bytes), Some(left)) if bytes.len() >= left => (Ok(bytes.slice(..left)), (inner, Some(0), true)),
            (Ok(bytes), Some(left)) => {
                let left = left - bytes.len();
                (Ok(bytes), (inner, Some(left), false))
            }
            (other, budget) => (other, (inner, budget, false)),
        })
    });
    let stream = stream.map(move |chunk| -> Result<Bytes, std::io::Error> {
        let mut chunk = chunk.map_err(std::io::Error::other)?;
        if !flipped && !chunk.is_empty() {
            let mut bytes = chunk.to_vec();
            bytes[0] ^= 0xff;
            chunk = Bytes::from(bytes);
            flipped = true;
        }
        if let Some(after) = cut {
            if sent + chunk.len() > after {
                return Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected cut"));
            }
        }
        sent += chunk.len();
        Ok(chunk)
    });
    response.body(Body::from_stream(stream)).unwrap_or_else(|e| (StatusCode::BAD_GATEWAY, e.to_string()).into_response())
}

/// The hostile faults that answer without asking upstream: endless tag lists and tokens.
fn hostile(state: &ProxyState, method: &axum::http::Method, path: &str, authorization: bool, arrived: Instant) -> Option<Response> {
    let faults = state.faults.lock().unwrap().clone();
    let endless = || {
        // Valid JSON that never closes: `{"tags":["aaaa…","aaaa…",…` forever.
        let chunk = Bytes::from(format!("\"{}\",", "a".repeat(126)).repeat(512));
        Body::from_stream(futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"{\"name\":\"x\",\"tags\":[")) }).chain(
            futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone())),
        ))
    };
    if faults.iter().any(|f| matches!(f, Fault::EndlessToken)) {
        if path.starts_with("/token") {
            record_at(state, method.as_str(), path, None, 200, authorization, arrived);
            let token_head = futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"{\"token\":\"")) });
            let body = token_head.chain(futures::stream::repeat_with(|| Ok::<_, std::io::Error>(Bytes::from(vec![b'a'; 64 * 1024]))));
            return Some(Response::builder().status(200).header("content-type", "application/json").body(Body::from_stream(body)).unwrap());
        }
        if path.starts_with("/v2/") && !authorization {
            record_at(state, method.as_str(), path, None, 401, authorization, arrived);
            let challenge = format!("Bearer realm=\"http://{}/token\",service=\"hostile\"", state.me);
            return Some(Response::builder().status(401).header("www-authenticate", challenge).body(Body::empty()).unwrap());
        }
    }
    if faults.iter().any(|f| matches!(f, Fault::EndlessTagList)) && method == "GET" && path.contains("/tags/list") {
        record_at(state, method.as_str(), path, None, 200, authorization, arrived);
        return Some(Response::builder().status(200).header("content-type", "application/json").body(endless()).unwrap());
    }
    None
}

/// Serves `/v2/NAME/tags/list?n=&last=` in pages from the upstream's full list.
async fn paginate_tags(state: &ProxyState, path: &str, limit: usize, range: Option<String>) -> Response {
    let (base, query) = path.split_once('?').unwrap_or((path, ""));
    let param = |key: &str| query.split('&').find_map(|pair| pair.strip_prefix(&format!("{key}="))).map(str::to_owned);
    let n = param("n").and_then(|n| n.parse::<usize>().ok()).unwrap_or(limit).min(limit);
    let last = param("last");
    let full = match state.client.get(format!("http://{}{base}", state.upstream)).send().await {
        Ok(answer) if answer.status().is_success() => answer.json::<serde_json::Value>().await.unwrap_or_default(),
        Ok(answer) => {
            record(state, "GET", path, range, answer.status().as_u16());
            return (StatusCode::from_u16(answer.status().as_u16()).unwrap(), answer.text().await.unwrap_or_default()).into_response();
        }
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let mut tags: Vec<String> = full["tags"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect();
    tags.sort();
    let rest: Vec<String> = tags.into_iter().filter(|t| last.as_ref().is_none_or(|l| t > l)).collect();
    let page: Vec<String> = rest.iter().take(n).cloned().collect();
    record(state, "GET", path, range, 200);
    let mut response = axum::Json(serde_json::json!({"name": full["name"], "tags": page})).into_response();
    if rest.len() > page.len() {
        let link = format!("<{base}?n={n}&last={}>; rel=\"next\"", page.last().expect("a non-empty page"));
        response.headers_mut().insert("link", HeaderValue::from_str(&link).unwrap());
    }
    response
}

/// Answers `GET /v2/NAME/referrers/DIGEST[?artifactType=T]` from the upstream's fallback tag.
async fn serve_referrers(state: &ProxyState, path: &str, authorization: Option<HeaderValue>) -> Response {
    let (base, query) = path.split_once('?').unwrap_or((path, ""));
    let (name, digest) = base.trim_start_matches("/v2/").split_once("/referrers/").expect("a referrers path");
    let artifact_type = query.split('&').find_map(|p| p.strip_prefix("artifactType=")).map(|t| t.replace("%2B", "+").replace("%2F", "/"));
    let mut request = state
        .client
        .get(format!("http://{}/v2/{name}/manifests/{}", state.upstream, digest.replace(':', "-")))
        .header("accept", "application/vnd.oci.image.index.v1+json");
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let mut manifests: Vec<serde_json::Value> = match request.send().await {
        Ok(answer) if answer.status().is_success() => {
            let index: serde_json::Value = answer.json().await.unwrap_or_default();
            index["manifests"].as_array().cloned().unwrap_or_default()
        }
        _ => Vec::new(),
    };
    if let Some(wanted) = &artifact_type {
        manifests.retain(|m| m["artifactType"].as_str() == Some(wanted.as_str()));
    }
    let body = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    let mut response = (StatusCode::OK, [("content-type", "application/vnd.oci.image.index.v1+json")], body.to_string()).into_response();
    if artifact_type.is_some() {
        response.headers_mut().insert("oci-filters-applied", HeaderValue::from_static("artifactType"));
    }
    response
}

/// A webhook receiver: records every event body; the first `fail_first` deliveries get a 500.
pub struct EventSink {
    pub port: u16,
    received: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl EventSink {
    pub fn start(fail_first: usize) -> EventSink {
        let listener = runtime().block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(std::sync::atomic::AtomicUsize::new(fail_first));
        let sink = received.clone();
        let router = axum::Router::new().fallback(move |request: Request| {
            let sink = sink.clone();
            let failures = failures.clone();
            async move {
                let content_type = request.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap_or_default();
                let left = failures.load(std::sync::atomic::Ordering::SeqCst);
                if left > 0 {
                    failures.store(left - 1, std::sync::atomic::Ordering::SeqCst);
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let mut event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                event["content_type"] = content_type.into();
                sink.lock().unwrap().push(event);
                StatusCode::OK
            }
        });
        runtime().spawn(async move { axum::serve(listener, router).await });
        EventSink { port, received }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/events", self.port)
    }

    /// Waits until `n` deliveries arrived (or 20 s passed) and returns them.
    pub fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let received = self.received.lock().unwrap().clone();
            if received.len() >= n || Instant::now() > deadline {
                return received;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}
