//! Prometheus metrics and access logs, recorded by one middleware around every route.
//!
//! Hand-written exposition: four metric families do not justify a metrics framework.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Latency bucket bounds in seconds.
const BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters and histograms, by route kind.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, String, u16), u64>>,
    bytes_sent: Mutex<BTreeMap<&'static str, u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
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
        *self.requests.lock().expect("metrics lock").entry((route, method.to_owned(), status)).or_default() += 1;
        *self.bytes_sent.lock().expect("metrics lock").entry(route).or_default() += bytes;
        let mut latency = self.latency.lock().expect("metrics lock");
        let histogram = latency.entry(route).or_default();
        for (idx, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                histogram.counts[idx] += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// The Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP airlock_http_requests_total Requests answered, by route, method and status.\n# TYPE airlock_http_requests_total counter\n");
        for ((route, method, status), count) in self.requests.lock().expect("metrics lock").iter() {
            out.push_str(&format!("airlock_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {count}\n"));
        }
        out.push_str("# HELP airlock_http_response_bytes_total Response body bytes declared, by route.\n# TYPE airlock_http_response_bytes_total counter\n");
        for (route, bytes) in self.bytes_sent.lock().expect("metrics lock").iter() {
            out.push_str(&format!("airlock_http_response_bytes_total{{route=\"{route}\"}} {bytes}\n"));
        }
        out.push_str("# HELP airlock_http_request_duration_seconds Time to the response head, by route.\n# TYPE airlock_http_request_duration_seconds histogram\n");
        for (route, histogram) in self.latency.lock().expect("metrics lock").iter() {
            for (idx, bound) in BUCKETS.iter().enumerate() {
                out.push_str(&format!("airlock_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {}\n", histogram.counts[idx]));
            }
            out.push_str(&format!("airlock_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}\n", histogram.count));
            out.push_str(&format!("airlock_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\n", histogram.sum));
            out.push_str(&format!("airlock_http_request_duration_seconds_count{{route=\"{route}\"}} {}\n", histogram.count));
        }
        out
    }
}

/// Records each request and writes one access-log event (method, path, status, duration, bytes;
/// never a header, so credentials cannot reach the log).
pub async fn observe(State(metrics): State<std::sync::Arc<Metrics>>, request: Request, next: Next) -> Response {
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
        assert!(text.contains("airlock_http_request_duration_seconds_bucket{route=\"manifests\",le=\"0.0025\"} 1"), "{text}");
        assert!(text.contains("airlock_http_request_duration_seconds_bucket{route=\"manifests\",le=\"0.001\"} 0"), "{text}");
        assert!(text.contains("airlock_http_response_bytes_total{route=\"manifests\"} 300"), "{text}");
        assert!(text.contains("route=\"uploads\""));
    }
}
