//! Prometheus metrics and access logs, recorded by one middleware around every route, and
//! the storage backend's own requests (counts, latencies, errors), through `prometheus-client`.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency bucket bounds in seconds.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

/// The HTTP metrics of one router.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    bytes_sent: Family<RouteLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let bytes_sent = Family::<RouteLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register("airlock_http_requests", "Requests answered, by route, method and status", requests.clone());
        registry.register("airlock_http_response_bytes", "Response body bytes declared, by route", bytes_sent.clone());
        registry.register("airlock_http_request_duration_seconds", "Time to the response head, by route", latency.clone());
        backend_metrics().register(&mut registry);
        mirror_metrics().register(&mut registry);
        Metrics { registry, requests, bytes_sent, latency }
    }
}

/// The storage backend's requests: what an object store is asked, how long it takes, how often
/// it fails. One set per process (a process serves one storage).
pub struct BackendMetrics {
    calls: Family<BackendLabels, Counter>,
    latency: Family<OperationLabels, Histogram, fn() -> Histogram>,
}

impl BackendMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register("airlock_storage_operations", "Storage backend operations, by operation and outcome (ok, not_found, error)", self.calls.clone());
        registry.register("airlock_storage_operation_duration_seconds", "Storage backend operation latency, by operation", self.latency.clone());
    }

    /// Records one backend operation.
    pub fn record(&self, operation: &'static str, outcome: &'static str, seconds: f64) {
        self.calls.get_or_create(&BackendLabels { operation, outcome }).inc();
        self.latency.get_or_create(&OperationLabels { operation }).observe(seconds);
    }
}

/// The process's backend metrics.
pub fn backend_metrics() -> &'static BackendMetrics {
    static METRICS: OnceLock<BackendMetrics> = OnceLock::new();
    METRICS.get_or_init(|| BackendMetrics {
        calls: Family::default(),
        latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
    })
}

/// A gated pull-through mirror's counters (zero when serve is no mirror).
#[derive(Default)]
pub struct MirrorMetrics {
    /// Manifest requests answered from what the gates promoted.
    pub hits: Counter,
    /// Manifest requests for something not promoted yet (an import starts or is waited for).
    pub misses: Counter,
    /// Gated imports started by pulls (and by the freshness check of a pulled tag).
    pub imports: Counter,
    /// Pulls answered that a gate refused the content.
    pub refusals: Counter,
    /// Upstream failures met (unreachable, 429, 5xx).
    pub upstream_errors: Counter,
}

impl MirrorMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register("airlock_mirror_hits", "Manifest pulls served from promoted content", self.hits.clone());
        registry.register("airlock_mirror_misses", "Manifest pulls of content not promoted yet", self.misses.clone());
        registry.register("airlock_mirror_imports", "Gated imports started by the mirror", self.imports.clone());
        registry.register("airlock_mirror_refusals", "Pulls of content a gate refused", self.refusals.clone());
        registry.register("airlock_mirror_upstream_errors", "Upstream failures met by the mirror", self.upstream_errors.clone());
    }
}

/// The process's mirror counters.
pub fn mirror_metrics() -> &'static MirrorMetrics {
    static METRICS: OnceLock<MirrorMetrics> = OnceLock::new();
    METRICS.get_or_init(MirrorMetrics::default)
}

/// The route kind of a path: a label with few values, whatever the repository names.
fn route_of(path: &str) -> &'static str {
    if path == "/v2/" || path == "/v2" {
        "base"
    } else if path.starts_with("/token") {
        "token"
    } else if path.contains("/blobs/uploads") {
        "uploads"
    } else if path.contains("/manifests/") {
        "manifests"
    } else if path.contains("/blobs/") {
        "blobs"
    } else if path.ends_with("/tags/list") {
        "tags"
    } else if path.contains("/referrers/") {
        "referrers"
    } else {
        "other"
    }
}

impl Metrics {
    fn record(&self, route: &'static str, method: &str, status: u16, seconds: f64, bytes: u64) {
        self.requests.get_or_create(&RequestLabels { route, method: method.to_owned(), status }).inc();
        self.bytes_sent.get_or_create(&RouteLabels { route }).inc_by(bytes);
        self.latency.get_or_create(&RouteLabels { route }).observe(seconds);
    }

    /// The Prometheus text format (OpenMetrics).
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String does not fail");
        out
    }
}

/// Records each request and writes one access-log event (method, path, status, duration, bytes;
/// never a header, so credentials cannot reach the log).
pub async fn observe(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    let bytes = response.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    metrics.record(route_of(&path), &method, status, seconds, bytes);
    tracing::info!(target: "airlock::access", %method, %path, status, millis = seconds * 1000.0, bytes, "request");
    response
}

/// A backend whose every operation is counted and timed in [`backend_metrics`].
pub struct Instrumented(pub Arc<dyn crate::backend::Backend>);

/// Times `future` and records it as `operation`.
async fn timed<T>(operation: &'static str, future: impl std::future::Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    let started = Instant::now();
    let result = future.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "not_found",
        Err(_) => "error",
    };
    backend_metrics().record(operation, outcome, started.elapsed().as_secs_f64());
    result
}

#[async_trait::async_trait]
impl crate::backend::Backend for Instrumented {
    async fn get(&self, key: &str) -> std::io::Result<Vec<u8>> {
        timed("get", self.0.get(key)).await
    }
    async fn put(&self, key: &str, bytes: &[u8]) -> std::io::Result<()> {
        timed("put", self.0.put(key, bytes)).await
    }
    async fn put_stream(&self, key: &str, body: crate::backend::ByteStream) -> std::io::Result<u64> {
        timed("put_stream", self.0.put_stream(key, body)).await
    }
    async fn size(&self, key: &str) -> std::io::Result<u64> {
        timed("size", self.0.size(key)).await
    }
    async fn age(&self, key: &str) -> std::io::Result<std::time::Duration> {
        timed("age", self.0.age(key)).await
    }
    async fn delete(&self, key: &str) -> std::io::Result<()> {
        timed("delete", self.0.delete(key)).await
    }
    async fn delete_prefix(&self, prefix: &str) -> std::io::Result<()> {
        timed("delete_prefix", self.0.delete_prefix(prefix)).await
    }
    async fn list(&self, prefix: &str) -> std::io::Result<Vec<String>> {
        timed("list", self.0.list(prefix)).await
    }
    async fn read(&self, key: &str, offset: u64) -> std::io::Result<crate::backend::ByteStream> {
        timed("read", self.0.read(key, offset)).await
    }
    async fn create(&self, key: &str, owner: &[u8]) -> std::io::Result<()> {
        timed("create", self.0.create(key, owner)).await
    }
    async fn upload_status(&self, key: &str) -> std::io::Result<(Vec<u8>, u64)> {
        timed("upload_status", self.0.upload_status(key)).await
    }
    async fn discard(&self, key: &str) -> std::io::Result<()> {
        timed("discard", self.0.discard(key)).await
    }
    async fn append(&self, key: &str, body: crate::backend::ByteStream) -> std::io::Result<u64> {
        timed("append", self.0.append(key, body)).await
    }
    async fn seal(&self, key: &str) -> std::io::Result<()> {
        timed("seal", self.0.seal(key)).await
    }
    async fn commit(&self, from: &str, to: &str) -> std::io::Result<()> {
        timed("commit", self.0.commit(from, to)).await
    }
    async fn purge_temporaries(&self, age: std::time::Duration) -> std::io::Result<u64> {
        timed("purge_temporaries", self.0.purge_temporaries(age)).await
    }
    async fn create_new(&self, key: &str, bytes: &[u8]) -> std::io::Result<bool> {
        timed("create_new", self.0.create_new(key, bytes)).await
    }
    async fn replace_if_unchanged(&self, key: &str, expected: &[u8], bytes: &[u8]) -> std::io::Result<bool> {
        timed("replace_if_unchanged", self.0.replace_if_unchanged(key, expected, bytes)).await
    }
    // Not timed: a folder answers `None` without any I/O, on every blob GET.
    async fn direct_url(&self, key: &str) -> std::io::Result<Option<String>> {
        self.0.direct_url(key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_labelled_by_kind_and_rendered() {
        let metrics = Metrics::default();
        metrics.record(route_of("/v2/a/b/manifests/v1"), "GET", 200, 0.002, 300);
        metrics.record(route_of("/v2/a/blobs/uploads/x"), "PATCH", 202, 0.02, 0);
        let text = metrics.render();
        assert!(text.contains("airlock_http_requests_total{route=\"manifests\",method=\"GET\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("airlock_http_request_duration_seconds_bucket{le=\"0.0025\",route=\"manifests\"} 1"), "{text}");
        assert!(text.contains("airlock_http_request_duration_seconds_bucket{le=\"0.001\",route=\"manifests\"} 0"), "{text}");
        assert!(text.contains("airlock_http_response_bytes_total{route=\"manifests\"} 300"), "{text}");
        assert!(text.contains("route=\"uploads\""));
        backend_metrics().record("get", "not_found", 0.001);
        let text = metrics.render();
        assert!(text.contains("airlock_storage_operations_total{operation=\"get\",outcome=\"not_found\"}"), "{text}");
    }
}
