//! The distribution spec's MUSTs, status codes and headers, checked against the router itself
//! (no socket: each request is a `tower::Service` call), on every storage backend: a folder, and
//! an S3 bucket of moto's server (PyPI `moto[server]`, one per test binary, a bucket per test).

use std::sync::Arc;

use airlock_registry::{router, Registry as Served, Storage};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use sha2::Digest as _;
use tower::ServiceExt;

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no `{name}` header; status {}", self.status))
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn error_code(&self) -> String {
        self.json()["errors"][0]["code"].as_str().expect("an error code").to_owned()
    }
}

struct Registry {
    app: axum::Router,
    /// The registry behind the router, for checks that go around HTTP (gc).
    served: Arc<Served>,
    _dir: tempfile::TempDir,
}

/// Which storage backend a test runs on.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Folder,
    S3,
}

/// Runs each named test (an `async fn(Kind)`) once per backend: `on_folder::NAME`, `on_s3::NAME`.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod on_folder {
            $( #[tokio::test] async fn $name() { super::$name(super::Kind::Folder).await } )*
        }
        mod on_s3 {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::Kind::S3).await } )*
        }
    };
}

on_every_backend!(
    base_endpoint_answers_200,
    pull_by_tag_and_digest_returns_the_bytes_pushed,
    blobs_with_ranges_and_unknown_blobs,
    single_request_upload_and_digest_mismatch,
    chunked_uploads_in_order_with_status_and_cancel,
    mounts_across_repositories_and_fallback_to_an_upload,
    manifests_that_reference_missing_blobs_are_refused,
    tag_listing_paginates_with_link,
    referrers_are_listed_filtered_and_announced,
    deletes_of_tags_manifests_and_blobs,
    health_and_metrics,
    garbage_collection_keeps_what_manifests_reach,
    the_remaining_error_paths_answer_the_spec_codes,
    deletes_can_be_disabled_and_oversized_manifests_are_refused,
    referrers_pushed_before_their_subject_and_referrer_indexes_are_listed_with_annotations,
    a_streamed_patch_without_content_range_then_an_empty_put,
    manifest_pushes_say_where_to_pull_and_heads_carry_the_digest,
    deleted_referrers_leave_the_list_and_untyped_indexes_carry_no_artifact_type,
    disabled_blob_deletes_and_unknown_repositories,
    a_manifest_named_by_its_etag_is_not_modified,
    bad_references_and_upload_ids_are_client_errors_never_500,
    gc_reads_an_ambiguous_manifest_as_its_push_was_accepted,
);

/// moto's S3 server for this test binary. It is started under a shell that kills it when this
/// process's end of its stdin closes, so no server outlives the tests.
struct Moto {
    endpoint: String,
    _stdin: std::sync::Mutex<std::process::ChildStdin>,
}

fn moto() -> &'static Moto {
    static MOTO: std::sync::OnceLock<Moto> = std::sync::OnceLock::new();
    MOTO.get_or_init(|| {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).map(|d| d.join("moto_server")).find(|p| p.is_file());
        let server = found.unwrap_or_else(|| panic!("`moto_server` is not installed; the S3 spec tests need it: `pip install 'moto[server]'` (README's test command installs it)"));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // Never waited for: the shell ends after this process does, when its stdin closes.
        #[allow(clippy::zombie_processes)]
        let mut child = std::process::Command::new("sh")
            .args(["-c", "\"$0\" -H 127.0.0.1 -p \"$1\" >/dev/null 2>&1 & server=$!; cat >/dev/null; kill $server; wait $server", server.to_str().unwrap(), &port.to_string()])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("start moto_server");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto_server did not start on port {port}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        // Credentials only so that requests are signed (moto checks none); set before any S3 store
        // reads the environment, and the same for every test.
        for (name, value) in [("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_REGION", "us-east-1")] {
            std::env::set_var(name, value);
        }
        Moto { endpoint: format!("http://127.0.0.1:{port}"), _stdin: std::sync::Mutex::new(child.stdin.take().unwrap()) }
    })
}

/// A fresh bucket on moto, as storage.
async fn s3_storage() -> Storage {
    Storage::with_backend(Arc::new(s3_backend().await), "s3")
}

/// A fresh bucket on moto.
async fn s3_backend() -> airlock_registry::s3::S3Backend {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let moto = moto();
    let bucket = format!("spec-{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let created = reqwest::Client::new().put(format!("{}/{bucket}", moto.endpoint)).send().await.expect("moto answers");
    assert!(created.status().is_success(), "creating bucket {bucket}: {}", created.status());
    let settings = airlock_registry::s3::S3Settings { endpoint: Some(moto.endpoint.clone()), allow_http: true, ..Default::default() };
    airlock_registry::s3::S3Backend::open(&format!("s3://{bucket}/registry"), &settings).unwrap()
}

/// A blob above S3's single-copy limit (5 GiB; lowered here to 1 MiB) commits through a
/// streamed multipart copy, in chunks and monolithic, and reads back with its digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_blobs_above_the_single_copy_limit_commit_streamed() {
    let backend = s3_backend().await.with_single_copy_limit(1024 * 1024);
    let registry = Registry::over(Storage::with_backend(Arc::new(backend), "s3"), true, tempfile::tempdir().unwrap());
    let blob: Vec<u8> = (0..(11 * 1024 * 1024 + 77)).map(|i: usize| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let digest = sha256(&blob);
    let start = registry.call("POST", "/v2/big/blobs/uploads/", &[], vec![]).await;
    let mut location = start.header("location").to_owned();
    let mut offset = 0;
    for chunk in blob.chunks(9 * 1024 * 1024) {
        let range = format!("{offset}-{}", offset + chunk.len() - 1);
        let patched = registry.call("PATCH", &location, &[("content-range", range.as_str())], chunk.to_vec()).await;
        assert_eq!(patched.status, StatusCode::ACCEPTED);
        location = patched.header("location").to_owned();
        offset += chunk.len();
    }
    let done = registry.call("PUT", &format!("{location}?digest={digest}"), &[], vec![]).await;
    assert_eq!(done.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&done.body));
    let fetched = registry.call("GET", &format!("/v2/big/blobs/{digest}"), &[], vec![]).await;
    assert_eq!(sha256(&fetched.body), digest);
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

impl Registry {
    fn new() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        Registry::over(Storage::new(dir.path()), true, dir)
    }

    /// A registry on `kind` of storage.
    async fn open(kind: Kind, allow_delete: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let storage = match kind {
            Kind::Folder => Storage::new(dir.path()),
            Kind::S3 => s3_storage().await,
        };
        Registry::over(storage, allow_delete, dir)
    }

    fn over(storage: Storage, allow_delete: bool, dir: tempfile::TempDir) -> Registry {
        let served = Arc::new(Served { storage, auth: None, notifier: None, allow_delete, mirror: None, private_credential: None });
        Registry { app: router(served.clone()), served, _dir: dir }
    }

    async fn call(&self, method: &str, uri: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self.app.clone().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec();
        Answer { status, headers, body }
    }

    /// POST then PUT, the two-step monolithic upload.
    async fn push_blob(&self, name: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let start = self.call("POST", &format!("/v2/{name}/blobs/uploads/"), &[], vec![]).await;
        assert_eq!(start.status, StatusCode::ACCEPTED);
        let location = start.header("location").to_owned();
        let done = self.call("PUT", &format!("{location}?digest={digest}"), &[], bytes.to_vec()).await;
        assert_eq!(done.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&done.body));
        digest
    }

    async fn push_image(&self, name: &str, tag: &str, layer: &[u8]) -> (String, Vec<u8>) {
        let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}";
        let config_digest = self.push_blob(name, config).await;
        let layer_digest = self.push_blob(name, layer).await;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
        }))
        .unwrap();
        let put = self.call("PUT", &format!("/v2/{name}/manifests/{tag}"), &[("content-type", "application/vnd.oci.image.manifest.v1+json")], manifest.clone()).await;
        assert_eq!(put.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&put.body));
        (put.header("docker-content-digest").to_owned(), manifest)
    }
}

async fn base_endpoint_answers_200(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let answer = registry.call("GET", "/v2/", &[], vec![]).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("docker-distribution-api-version"), "registry/2.0");
}

async fn pull_by_tag_and_digest_returns_the_bytes_pushed(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let (digest, manifest) = registry.push_image("a/b", "v1", b"layer").await;
    assert_eq!(digest, sha256(&manifest));
    for reference in ["v1", digest.as_str()] {
        let get = registry.call("GET", &format!("/v2/a/b/manifests/{reference}"), &[], vec![]).await;
        assert_eq!(get.status, StatusCode::OK);
        assert_eq!(get.body, manifest, "bytes are stored exactly as received");
        assert_eq!(get.header("docker-content-digest"), digest);
        assert_eq!(get.header("content-type"), "application/vnd.oci.image.manifest.v1+json");
        let head = registry.call("HEAD", &format!("/v2/a/b/manifests/{reference}"), &[], vec![]).await;
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.body.is_empty());
        assert_eq!(head.header("content-length"), manifest.len().to_string());
    }
    let missing = registry.call("GET", "/v2/a/b/manifests/nope", &[], vec![]).await;
    assert_eq!((missing.status, missing.error_code().as_str()), (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"));
    let unknown_repo = registry.call("GET", "/v2/c/d/manifests/v1", &[], vec![]).await;
    assert_eq!((unknown_repo.status, unknown_repo.error_code().as_str()), (StatusCode::NOT_FOUND, "NAME_UNKNOWN"));
}

async fn blobs_with_ranges_and_unknown_blobs(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let digest = registry.push_blob("r", b"0123456789").await;
    let whole = registry.call("GET", &format!("/v2/r/blobs/{digest}"), &[], vec![]).await;
    assert_eq!((whole.status, whole.body.as_slice()), (StatusCode::OK, &b"0123456789"[..]));
    assert_eq!(whole.header("docker-content-digest"), digest);
    let part = registry.call("GET", &format!("/v2/r/blobs/{digest}"), &[("range", "bytes=3-5")], vec![]).await;
    assert_eq!((part.status, part.body.as_slice()), (StatusCode::PARTIAL_CONTENT, &b"345"[..]));
    assert_eq!(part.header("content-range"), "bytes 3-5/10");
    let tail = registry.call("GET", &format!("/v2/r/blobs/{digest}"), &[("range", "bytes=7-")], vec![]).await;
    assert_eq!(tail.body, b"789");
    let bad = registry.call("GET", &format!("/v2/r/blobs/{digest}"), &[("range", "bytes=20-")], vec![]).await;
    assert_eq!(bad.status, StatusCode::RANGE_NOT_SATISFIABLE);
    let head = registry.call("HEAD", &format!("/v2/r/blobs/{digest}"), &[], vec![]).await;
    assert_eq!((head.status, head.header("content-length")), (StatusCode::OK, "10"));
    let other_repo = registry.call("HEAD", &format!("/v2/s/blobs/{digest}"), &[], vec![]).await;
    assert_eq!(other_repo.status, StatusCode::NOT_FOUND, "a blob belongs to the repositories it was pushed or mounted to");
    let unknown = registry.call("GET", &format!("/v2/r/blobs/{}", sha256(b"x")), &[], vec![]).await;
    assert_eq!((unknown.status, unknown.error_code().as_str()), (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"));
    let invalid = registry.call("GET", "/v2/r/blobs/sha256:nothex", &[], vec![]).await;
    assert_eq!((invalid.status, invalid.error_code().as_str()), (StatusCode::BAD_REQUEST, "DIGEST_INVALID"));
}

async fn single_request_upload_and_digest_mismatch(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let digest = sha256(b"monolithic");
    let put = registry.call("POST", &format!("/v2/r/blobs/uploads/?digest={digest}"), &[], b"monolithic".to_vec()).await;
    assert_eq!(put.status, StatusCode::CREATED);
    assert_eq!(put.header("location"), format!("/v2/r/blobs/{digest}"));
    let wrong = registry.call("POST", &format!("/v2/r/blobs/uploads/?digest={}", sha256(b"other")), &[], b"monolithic".to_vec()).await;
    assert_eq!((wrong.status, wrong.error_code().as_str()), (StatusCode::BAD_REQUEST, "DIGEST_INVALID"));
    let absent = registry.call("HEAD", &format!("/v2/r/blobs/{}", sha256(b"other")), &[], vec![]).await;
    assert_eq!(absent.status, StatusCode::NOT_FOUND, "refused content is not stored");
}

async fn chunked_uploads_in_order_with_status_and_cancel(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let start = registry.call("POST", "/v2/r/blobs/uploads/", &[], vec![]).await;
    let location = start.header("location").to_owned();
    assert_eq!(start.header("range"), "0-0");
    let first = registry.call("PATCH", &location, &[("content-range", "0-4"), ("content-type", "application/octet-stream")], b"hello".to_vec()).await;
    assert_eq!((first.status, first.header("range")), (StatusCode::ACCEPTED, "0-4"));
    let out_of_order = registry.call("PATCH", &location, &[("content-range", "9-12")], b"oops".to_vec()).await;
    assert_eq!(out_of_order.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(out_of_order.header("range"), "0-4", "a 416 says where to resume");
    assert_eq!(out_of_order.header("location"), location);
    let second = registry.call("PATCH", &location, &[("content-range", "5-10")], b" world".to_vec()).await;
    assert_eq!(second.header("range"), "0-10");
    let status = registry.call("GET", &location, &[], vec![]).await;
    assert_eq!((status.status, status.header("range")), (StatusCode::NO_CONTENT, "0-10"));
    let digest = sha256(b"hello world!");
    let done = registry.call("PUT", &format!("{location}?digest={digest}"), &[], b"!".to_vec()).await;
    assert_eq!(done.status, StatusCode::CREATED);
    let blob = registry.call("GET", &format!("/v2/r/blobs/{digest}"), &[], vec![]).await;
    assert_eq!(blob.body, b"hello world!");

    let abandoned = registry.call("POST", "/v2/r/blobs/uploads/", &[], vec![]).await;
    let location = abandoned.header("location").to_owned();
    assert_eq!(registry.call("DELETE", &location, &[], vec![]).await.status, StatusCode::NO_CONTENT);
    let gone = registry.call("GET", &location, &[], vec![]).await;
    assert_eq!((gone.status, gone.error_code().as_str()), (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"));
}

async fn mounts_across_repositories_and_fallback_to_an_upload(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let digest = registry.push_blob("from", b"shared").await;
    let mounted = registry.call("POST", &format!("/v2/to/blobs/uploads/?mount={digest}&from=from"), &[], vec![]).await;
    assert_eq!(mounted.status, StatusCode::CREATED);
    assert_eq!(mounted.header("docker-content-digest"), digest);
    assert_eq!(registry.call("HEAD", &format!("/v2/to/blobs/{digest}"), &[], vec![]).await.status, StatusCode::OK);
    let absent = registry.call("POST", &format!("/v2/to/blobs/uploads/?mount={}&from=from", sha256(b"nope")), &[], vec![]).await;
    assert_eq!(absent.status, StatusCode::ACCEPTED, "an unknown blob falls back to an upload session");
    assert!(absent.header("location").contains("/v2/to/blobs/uploads/"));
}

async fn manifests_that_reference_missing_blobs_are_refused(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(b"{}"), "size": 2},
        "layers": [],
    }))
    .unwrap();
    let put = registry.call("PUT", "/v2/r/manifests/v1", &[("content-type", "application/vnd.oci.image.manifest.v1+json")], manifest.clone()).await;
    assert_eq!((put.status, put.error_code().as_str()), (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"));
    let wrong_digest = registry.call("PUT", &format!("/v2/r/manifests/{}", sha256(b"x")), &[], manifest).await;
    assert_eq!(wrong_digest.error_code(), "DIGEST_INVALID");
    let garbage = registry.call("PUT", "/v2/r/manifests/v1", &[], b"{not json".to_vec()).await;
    assert_eq!((garbage.status, garbage.error_code().as_str()), (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"));
    let bad_name = registry.call("GET", "/v2/Upper/manifests/v1", &[], vec![]).await;
    assert_eq!((bad_name.status, bad_name.error_code().as_str()), (StatusCode::BAD_REQUEST, "NAME_INVALID"));
}

async fn tag_listing_paginates_with_link(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    for tag in ["b", "a", "d", "c", "e"] {
        registry.push_image("r", tag, b"layer").await;
    }
    let all = registry.call("GET", "/v2/r/tags/list", &[], vec![]).await;
    assert_eq!(all.json()["tags"], serde_json::json!(["a", "b", "c", "d", "e"]));
    assert!(all.headers.get("link").is_none());
    let page = registry.call("GET", "/v2/r/tags/list?n=2", &[], vec![]).await;
    assert_eq!(page.json()["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(page.header("link"), "</v2/r/tags/list?n=2&last=b>; rel=\"next\"");
    let next = registry.call("GET", "/v2/r/tags/list?n=2&last=b", &[], vec![]).await;
    assert_eq!(next.json()["tags"], serde_json::json!(["c", "d"]));
    let none = registry.call("GET", "/v2/r/tags/list?n=0", &[], vec![]).await;
    assert_eq!(none.json()["tags"], serde_json::json!([]));
    let unknown = registry.call("GET", "/v2/nothing/tags/list", &[], vec![]).await;
    assert_eq!(unknown.error_code(), "NAME_UNKNOWN");
}

async fn referrers_are_listed_filtered_and_announced(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let (subject, manifest) = registry.push_image("r", "v1", b"layer").await;
    let empty = registry.push_blob("r", b"{}").await;
    let mut referrer_digests = Vec::new();
    for (artifact_type, payload) in [("application/vnd.example.sig", b"sig".as_slice()), ("application/spdx+json", b"{}".as_slice())] {
        let layer = registry.push_blob("r", payload).await;
        let referrer = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": layer, "size": payload.len()}],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": manifest.len()},
        }))
        .unwrap();
        let digest = sha256(&referrer);
        let put = registry.call("PUT", &format!("/v2/r/manifests/{digest}"), &[("content-type", "application/vnd.oci.image.manifest.v1+json")], referrer).await;
        assert_eq!(put.status, StatusCode::CREATED);
        assert_eq!(put.header("oci-subject"), subject);
        referrer_digests.push(digest);
    }
    let all = registry.call("GET", &format!("/v2/r/referrers/{subject}"), &[], vec![]).await;
    assert_eq!(all.header("content-type"), "application/vnd.oci.image.index.v1+json");
    assert_eq!(all.json()["manifests"].as_array().unwrap().len(), 2);
    assert!(all.headers.get("oci-filters-applied").is_none());
    let signatures = registry.call("GET", &format!("/v2/r/referrers/{subject}?artifactType=application/vnd.example.sig"), &[], vec![]).await;
    assert_eq!(signatures.header("oci-filters-applied"), "artifactType");
    let listed = signatures.json()["manifests"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["digest"], referrer_digests[0]);
    assert_eq!(listed[0]["artifactType"], "application/vnd.example.sig");
    let none = registry.call("GET", &format!("/v2/r/referrers/{}", sha256(b"unknown")), &[], vec![]).await;
    assert_eq!((none.status, none.json()["manifests"].as_array().unwrap().len()), (StatusCode::OK, 0), "never 404");
}

async fn deletes_of_tags_manifests_and_blobs(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let (digest, _) = registry.push_image("r", "v1", b"layer").await;
    registry.push_image("r", "v2", b"layer").await;
    assert_eq!(registry.call("DELETE", "/v2/r/manifests/v2", &[], vec![]).await.status, StatusCode::ACCEPTED);
    assert_eq!(registry.call("GET", "/v2/r/manifests/v2", &[], vec![]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(registry.call("GET", "/v2/r/manifests/v1", &[], vec![]).await.status, StatusCode::OK, "deleting a tag keeps the manifest");
    assert_eq!(registry.call("DELETE", &format!("/v2/r/manifests/{digest}"), &[], vec![]).await.status, StatusCode::ACCEPTED);
    assert_eq!(registry.call("GET", "/v2/r/manifests/v1", &[], vec![]).await.status, StatusCode::NOT_FOUND, "its tags go with it");
    let blob = registry.push_blob("r", b"gone soon").await;
    assert_eq!(registry.call("DELETE", &format!("/v2/r/blobs/{blob}"), &[], vec![]).await.status, StatusCode::ACCEPTED);
    assert_eq!(registry.call("HEAD", &format!("/v2/r/blobs/{blob}"), &[], vec![]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(registry.call("DELETE", &format!("/v2/r/blobs/{blob}"), &[], vec![]).await.error_code(), "BLOB_UNKNOWN");
}

async fn health_and_metrics(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    registry.push_image("r", "v1", b"layer").await;
    registry.call("GET", "/v2/r/manifests/v1", &[], vec![]).await;
    assert_eq!(registry.call("GET", "/healthz", &[], vec![]).await.status, StatusCode::OK);
    let metrics = registry.call("GET", "/metrics", &[], vec![]).await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(text.contains(r#"airlock_http_requests_total{route="manifests",method="GET",status="200"} 1"#), "{text}");
    assert!(text.contains(r#"airlock_http_requests_total{route="manifests",method="PUT",status="201"} 1"#), "{text}");
    assert!(text.contains("airlock_http_request_duration_seconds_count{route=\"uploads\"}"), "{text}");
    // The storage backend's own operations, with their outcomes and latencies.
    assert!(text.contains(r#"airlock_storage_operations_total{operation="put_stream",outcome="ok"}"#), "{text}");
    assert!(text.contains(r#"airlock_storage_operation_duration_seconds_count{operation="get"}"#), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text: {text}");
}

async fn garbage_collection_keeps_what_manifests_reach(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let storage = registry.served.clone();
    let (digest, _) = registry.push_image("r", "v1", b"kept layer").await;
    let orphan = registry.push_blob("r", b"an orphan").await;
    let session = registry.call("POST", "/v2/r/blobs/uploads/", &[], vec![]).await;
    let young = storage.storage.gc(false, std::time::Duration::from_secs(3600)).await.unwrap();
    assert_eq!((young.removed, young.too_young, young.stale_uploads), (0, 1, 0), "a fresh blob may belong to a push in progress");
    let location = session.header("location").to_owned();
    assert_eq!(registry.call("GET", &location, &[], vec![]).await.status, StatusCode::NO_CONTENT, "an active session survives");
    let dry = storage.storage.gc(true, std::time::Duration::ZERO).await.unwrap();
    assert_eq!((dry.kept, dry.removed, dry.bytes, dry.stale_uploads), (3, 1, 9, 1));
    assert_eq!(registry.call("HEAD", &format!("/v2/r/blobs/{orphan}"), &[], vec![]).await.status, StatusCode::OK, "a dry run removes nothing");
    let done = storage.storage.gc(false, std::time::Duration::ZERO).await.unwrap();
    assert_eq!((done.removed, done.stale_uploads), (1, 1));
    assert_eq!(registry.call("GET", &location, &[], vec![]).await.status, StatusCode::NOT_FOUND, "an idle session is purged");
    assert_eq!(registry.call("HEAD", &format!("/v2/r/blobs/{orphan}"), &[], vec![]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(registry.call("GET", &format!("/v2/r/manifests/{digest}"), &[], vec![]).await.status, StatusCode::OK);
    // Delete the manifest: its blobs go at the next collection.
    registry.call("DELETE", &format!("/v2/r/manifests/{digest}"), &[], vec![]).await;
    let after = storage.storage.gc(false, std::time::Duration::ZERO).await.unwrap();
    assert_eq!((after.kept, after.removed), (0, 3));
}

async fn the_remaining_error_paths_answer_the_spec_codes(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let (digest, manifest) = registry.push_image("r", "v1", b"layer").await;
    // Uploads: the session id comes back; a PUT needs a digest; unknown sessions are 404.
    let start = registry.call("POST", "/v2/r/blobs/uploads/", &[], vec![]).await;
    assert!(!start.header("docker-upload-uuid").is_empty());
    assert_eq!(start.header("blob-upload-session-id"), start.header("docker-upload-uuid"));
    let location = start.header("location").to_owned();
    let no_digest = registry.call("PUT", &location, &[], b"x".to_vec()).await;
    assert_eq!((no_digest.status, no_digest.error_code().as_str()), (StatusCode::BAD_REQUEST, "DIGEST_INVALID"));
    let unknown = registry.call("PATCH", "/v2/r/blobs/uploads/nosuchsession", &[], b"x".to_vec()).await;
    assert_eq!((unknown.status, unknown.error_code().as_str()), (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"));
    let other_repo = registry.call("GET", &location.replace("/v2/r/", "/v2/s/"), &[], vec![]).await;
    assert_eq!(other_repo.status, StatusCode::NOT_FOUND, "a session belongs to its repository");
    // Manifests: an invalid tag, an unknown delete, an index over a missing child.
    let bad_tag = registry.call("PUT", "/v2/r/manifests/-bad", &[], manifest.clone()).await;
    assert_eq!((bad_tag.status, bad_tag.error_code().as_str()), (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"));
    let delete_unknown = registry.call("DELETE", &format!("/v2/r/manifests/{}", sha256(b"nothing")), &[], vec![]).await;
    assert_eq!((delete_unknown.status, delete_unknown.error_code().as_str()), (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": manifest.len()},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(b"absent"), "size": 10},
        ],
    }))
    .unwrap();
    let orphan_index = registry.call("PUT", "/v2/r/manifests/multi", &[("content-type", "application/vnd.oci.image.index.v1+json")], index).await;
    assert_eq!((orphan_index.status, orphan_index.error_code().as_str()), (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"));
    // Tag listing: a non-number n.
    let bad_n = registry.call("GET", "/v2/r/tags/list?n=many", &[], vec![]).await;
    assert_eq!(bad_n.status, StatusCode::BAD_REQUEST);
    // Unsupported methods and routes.
    assert_eq!(registry.call("POST", "/v2/r/manifests/v1", &[], vec![]).await.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(registry.call("GET", "/v2/r/nonsense", &[], vec![]).await.status, StatusCode::NOT_FOUND);
    // Every error body has the spec's shape.
    let body = registry.call("GET", "/v2/r/manifests/nope", &[], vec![]).await.json();
    let error = &body["errors"][0];
    assert!(error["code"].is_string() && error["message"].is_string() && error.get("detail").is_some(), "{body}");
}

async fn deletes_can_be_disabled_and_oversized_manifests_are_refused(kind: Kind) {
    let registry = Registry::open(kind, false).await;
    let (digest, _) = registry.push_image("r", "v1", b"layer").await;
    for target in [format!("/v2/r/manifests/{digest}"), "/v2/r/manifests/v1".to_owned()] {
        let refused = registry.call("DELETE", &target, &[], vec![]).await;
        assert_eq!((refused.status, refused.error_code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"));
    }
    assert_eq!(registry.call("GET", "/v2/r/manifests/v1", &[], vec![]).await.status, StatusCode::OK);
    let huge = vec![b' '; 4 * 1024 * 1024 + 1];
    let too_big = registry.call("PUT", "/v2/r/manifests/big", &[("content-type", "application/vnd.oci.image.manifest.v1+json")], huge).await;
    assert_eq!((too_big.status, too_big.error_code().as_str()), (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"));
}

async fn referrers_pushed_before_their_subject_and_referrer_indexes_are_listed_with_annotations(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let empty = registry.push_blob("r", b"{}").await;
    let payload = registry.push_blob("r", b"attestation").await;
    let subject_digest = sha256(b"an image pushed later");
    let subject = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject_digest, "size": 21});
    // A referrer typed by its config, and one by artifactType, both before the subject exists.
    let by_config = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.example.config-typed", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": payload, "size": 11}],
        "subject": subject, "annotations": {"org.example.note": "config-typed"},
    }))
    .unwrap();
    let by_field = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "artifactType": "application/vnd.example.field-typed",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": payload, "size": 11}],
        "subject": subject, "annotations": {"org.example.note": "field-typed"},
    }))
    .unwrap();
    for manifest in [&by_config, &by_field] {
        let put = registry.call("PUT", &format!("/v2/r/manifests/{}", sha256(manifest)), &[("content-type", "application/vnd.oci.image.manifest.v1+json")], manifest.clone()).await;
        assert_eq!(put.status, StatusCode::CREATED);
        assert_eq!(put.header("oci-subject"), subject_digest);
    }
    // An index that refers to the same subject, listing the first referrer.
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "artifactType": "application/vnd.example.index-typed",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(&by_config), "size": by_config.len()}],
        "subject": subject, "annotations": {"org.example.note": "index"},
    }))
    .unwrap();
    let put = registry.call("PUT", &format!("/v2/r/manifests/{}", sha256(&index)), &[("content-type", "application/vnd.oci.image.index.v1+json")], index.clone()).await;
    assert_eq!((put.status, put.header("oci-subject")), (StatusCode::CREATED, subject_digest.as_str()));

    let listed = registry.call("GET", &format!("/v2/r/referrers/{subject_digest}"), &[], vec![]).await.json();
    let manifests = listed["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 3);
    let by_digest = |digest: &str| manifests.iter().find(|m| m["digest"] == digest).unwrap_or_else(|| panic!("{digest} not listed"));
    assert_eq!(by_digest(&sha256(&by_config))["artifactType"], "application/vnd.example.config-typed");
    assert_eq!(by_digest(&sha256(&by_field))["artifactType"], "application/vnd.example.field-typed");
    assert_eq!(by_digest(&sha256(&index))["artifactType"], "application/vnd.example.index-typed");
    for manifest in manifests {
        assert_eq!(manifest["annotations"].as_object().unwrap().len(), 1, "the manifest's annotations are carried into its descriptor");
    }
}

async fn a_streamed_patch_without_content_range_then_an_empty_put(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let start = registry.call("POST", "/v2/r/blobs/uploads/", &[], vec![]).await;
    let location = start.header("location").to_owned();
    let patch = registry.call("PATCH", &location, &[("content-type", "application/octet-stream")], b"streamed in one go".to_vec()).await;
    assert_eq!((patch.status, patch.header("range")), (StatusCode::ACCEPTED, "0-17"));
    let next = patch.header("location").to_owned();
    let digest = sha256(b"streamed in one go");
    let done = registry.call("PUT", &format!("{next}?digest={digest}"), &[("content-length", "0")], vec![]).await;
    assert_eq!(done.status, StatusCode::CREATED);
    assert_eq!(done.header("location"), format!("/v2/r/blobs/{digest}"));
    let head = registry.call("HEAD", &format!("/v2/r/blobs/{digest}"), &[], vec![]).await;
    assert_eq!((head.status, head.header("content-length")), (StatusCode::OK, "18"));
    let missing_tag = registry.call("HEAD", "/v2/r/manifests/nonexistent", &[], vec![]).await;
    assert_eq!(missing_tag.status, StatusCode::NOT_FOUND);
}

async fn manifest_pushes_say_where_to_pull_and_heads_carry_the_digest(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let config = registry.push_blob("r", b"{}").await;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config, "size": 2},
        "layers": [],
    }))
    .unwrap();
    let digest = sha256(&manifest);
    let put = registry.call("PUT", "/v2/r/manifests/docker", &[("content-type", "application/vnd.docker.distribution.manifest.v2+json")], manifest.clone()).await;
    assert_eq!(put.status, StatusCode::CREATED);
    assert_eq!(put.header("location"), format!("/v2/r/manifests/{digest}"), "a manifest push says where to pull it");
    assert_eq!(put.header("docker-content-digest"), digest);
    let head = registry.call("HEAD", "/v2/r/manifests/docker", &[], vec![]).await;
    assert_eq!(head.header("docker-content-digest"), digest);
    assert_eq!(head.header("content-type"), "application/vnd.docker.distribution.manifest.v2+json", "the type it was pushed with");
    let blob_head = registry.call("HEAD", &format!("/v2/r/blobs/{config}"), &[], vec![]).await;
    assert_eq!(blob_head.header("docker-content-digest"), config);
    assert!(blob_head.body.is_empty());
    let elsewhere = registry.call("GET", &format!("/v2/s/manifests/{digest}"), &[], vec![]).await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND, "a manifest belongs to its repository");

    // Tags: up to 128 characters of [a-zA-Z0-9_][a-zA-Z0-9._-]*.
    let longest = format!("A{}", "b._-".repeat(127).chars().take(127).collect::<String>());
    assert_eq!(longest.len(), 128);
    let put = registry.call("PUT", &format!("/v2/r/manifests/{longest}"), &[("content-type", "application/vnd.docker.distribution.manifest.v2+json")], manifest.clone()).await;
    assert_eq!(put.status, StatusCode::CREATED);
    let too_long = format!("{longest}x");
    let put = registry.call("PUT", &format!("/v2/r/manifests/{too_long}"), &[], manifest).await;
    assert_eq!(put.status, StatusCode::BAD_REQUEST);
    let listed = registry.call("GET", &format!("/v2/r/tags/list?last={longest}"), &[], vec![]).await.json();
    assert_eq!(listed["tags"], serde_json::json!(["docker"]), "`last` alone starts after that tag");
    let all = registry.call("GET", "/v2/r/tags/list?n=10", &[], vec![]).await;
    assert!(all.headers.get("link").is_none(), "no Link when nothing follows");
    assert_eq!(all.json()["name"], "r");
}

async fn deleted_referrers_leave_the_list_and_untyped_indexes_carry_no_artifact_type(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let (subject, manifest) = registry.push_image("r", "v1", b"layer").await;
    let subject_descriptor = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": manifest.len()});
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [], "subject": subject_descriptor,
    }))
    .unwrap();
    let index_digest = sha256(&index);
    let put = registry.call("PUT", &format!("/v2/r/manifests/{index_digest}"), &[("content-type", "application/vnd.oci.image.index.v1+json")], index).await;
    assert_eq!(put.status, StatusCode::CREATED);
    let listed = registry.call("GET", &format!("/v2/r/referrers/{subject}"), &[], vec![]).await.json();
    assert_eq!(listed["manifests"][0]["digest"], index_digest);
    assert!(listed["manifests"][0].get("artifactType").is_none(), "an index without artifactType lists none: {listed}");
    assert_eq!(listed["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(listed["schemaVersion"], 2);

    assert_eq!(registry.call("DELETE", &format!("/v2/r/manifests/{index_digest}"), &[], vec![]).await.status, StatusCode::ACCEPTED);
    let listed = registry.call("GET", &format!("/v2/r/referrers/{subject}"), &[], vec![]).await.json();
    assert_eq!(listed["manifests"], serde_json::json!([]), "a deleted referrer leaves the list");
    let invalid = registry.call("GET", "/v2/r/referrers/sha256:short", &[], vec![]).await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    let by_tag = registry.call("GET", "/v2/r/referrers/v1", &[], vec![]).await;
    assert_eq!(by_tag.status, StatusCode::BAD_REQUEST, "referrers are asked for by digest");
}

async fn disabled_blob_deletes_and_unknown_repositories(kind: Kind) {
    let registry = Registry::open(kind, false).await;
    let blob = registry.push_blob("r", b"kept").await;
    let refused = registry.call("DELETE", &format!("/v2/r/blobs/{blob}"), &[], vec![]).await;
    assert_eq!((refused.status, refused.error_code().as_str()), (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"));
    assert_eq!(registry.call("HEAD", &format!("/v2/r/blobs/{blob}"), &[], vec![]).await.status, StatusCode::OK);

    let registry = Registry::new();
    let gone = registry.call("DELETE", &format!("/v2/nothing/manifests/{}", sha256(b"x")), &[], vec![]).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let gone = registry.call("DELETE", &format!("/v2/nothing/blobs/{}", sha256(b"x")), &[], vec![]).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let tag_gone = registry.call("DELETE", "/v2/nothing/manifests/v1", &[], vec![]).await;
    assert_eq!(tag_gone.status, StatusCode::NOT_FOUND);
    // A chunk that does not start where the last one ended, on the first PATCH.
    let start = registry.call("POST", "/v2/r/blobs/uploads/", &[], vec![]).await;
    let location = start.header("location").to_owned();
    let skipped = registry.call("PATCH", &location, &[("content-range", "3-5")], b"abc".to_vec()).await;
    assert_eq!(skipped.status, StatusCode::RANGE_NOT_SATISFIABLE);
    // A final PUT whose digest does not match what was sent stores nothing and says so.
    let wrong = registry.call("PUT", &format!("{location}?digest={}", sha256(b"other")), &[], b"abc".to_vec()).await;
    assert_eq!((wrong.status, wrong.error_code().as_str()), (StatusCode::BAD_REQUEST, "DIGEST_INVALID"));
    assert_eq!(registry.call("HEAD", &format!("/v2/r/blobs/{}", sha256(b"abc")), &[], vec![]).await.status, StatusCode::NOT_FOUND);
}

/// A registry where alice may push `public/*` and anyone may pull it; other repositories need a
/// user. `token` switches from basic auth on every request to the built-in token issuer.
fn guarded(token: bool) -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("alice:{}\n", bcrypt::hash("secret", 4).unwrap())).unwrap();
    let file: airlock_registry::auth::AuthFile = serde_saphyr::from_str(&format!(
        "htpasswd: {}\ntoken: {token}\nrules:\n  - repositories: 'public/*'\n    anonymous: [pull]\n    users: {{alice: [pull, push]}}\n",
        htpasswd.display()
    ))
    .unwrap();
    let auth = airlock_registry::auth::Auth::load(&file, dir.path()).unwrap();
    let served = Arc::new(Served { storage: Storage::new(dir.path().join("data")), auth: Some(auth), notifier: None, allow_delete: true, mirror: None, private_credential: None });
    Registry { app: router(served.clone()), served, _dir: dir }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

#[tokio::test]
async fn unauthorized_and_denied_answers_carry_the_challenge_and_the_spec_codes() {
    let registry = guarded(false);
    let base = registry.call("GET", "/v2/", &[], vec![]).await;
    assert_eq!((base.status, base.error_code().as_str()), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"));
    assert_eq!(base.header("www-authenticate"), "Basic realm=\"airlock\"");
    assert_eq!(base.header("docker-distribution-api-version"), "registry/2.0");
    let wrong = registry.call("GET", "/v2/", &[("authorization", &basic("alice", "nope"))], vec![]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(registry.call("GET", "/v2/", &[("authorization", &basic("alice", "secret"))], vec![]).await.status, StatusCode::OK);
    let anonymous_pull = registry.call("GET", "/v2/public/x/tags/list", &[], vec![]).await;
    assert_eq!(anonymous_pull.error_code(), "NAME_UNKNOWN", "anonymous pulls of public/* get past auth");
    let anonymous_push = registry.call("POST", "/v2/public/x/blobs/uploads/", &[], vec![]).await;
    assert_eq!(anonymous_push.status, StatusCode::UNAUTHORIZED);
    let alice = basic("alice", "secret");
    let push = registry.call("POST", "/v2/public/x/blobs/uploads/", &[("authorization", &alice)], vec![]).await;
    assert_eq!(push.status, StatusCode::ACCEPTED);
    let delete = registry.call("DELETE", &format!("/v2/public/x/blobs/{}", sha256(b"x")), &[("authorization", &alice)], vec![]).await;
    assert_eq!((delete.status, delete.error_code().as_str()), (StatusCode::FORBIDDEN, "DENIED"));

    let registry = guarded(true);
    let challenge = registry.call("POST", "/v2/public/x/blobs/uploads/", &[("host", "registry.test")], vec![]).await;
    assert_eq!(challenge.status, StatusCode::UNAUTHORIZED);
    let value = challenge.header("www-authenticate");
    assert!(value.starts_with("Bearer realm=\"") && value.contains("/token\""), "{value}");
    assert!(value.contains("scope=\"repository:public/x:pull,push\""), "{value}");
    let token = registry.call("GET", "/token?service=airlock&scope=repository:public/x:pull,push", &[("authorization", &alice)], vec![]).await.json();
    let token = token["token"].as_str().unwrap().to_owned();
    let push = registry.call("POST", "/v2/public/x/blobs/uploads/", &[("authorization", &format!("Bearer {token}"))], vec![]).await;
    assert_eq!(push.status, StatusCode::ACCEPTED);
    let elsewhere = registry.call("POST", "/v2/public/y/blobs/uploads/", &[("authorization", &format!("Bearer {token}"))], vec![]).await;
    assert!(matches!(elsewhere.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN), "a token is for the repository it names: {}", elsewhere.status);
    let refused = registry.call("GET", "/token?scope=repository:public/x:pull", &[("authorization", &basic("alice", "nope"))], vec![]).await;
    assert_eq!((refused.status, refused.error_code().as_str()), (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"));
}

async fn a_manifest_named_by_its_etag_is_not_modified(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    let (digest, _) = registry.push_image("r", "v1", b"etag layer").await;
    let full = registry.call("HEAD", "/v2/r/manifests/v1", &[], vec![]).await;
    assert_eq!((full.status, full.header("etag")), (StatusCode::OK, format!("\"{digest}\"").as_str()));
    for method in ["HEAD", "GET"] {
        let same = registry.call(method, "/v2/r/manifests/v1", &[("if-none-match", &format!("\"{digest}\""))], vec![]).await;
        assert_eq!((same.status, same.header("docker-content-digest")), (StatusCode::NOT_MODIFIED, digest.as_str()), "{method}");
        assert!(same.body.is_empty());
    }
    let bare = registry.call("HEAD", &format!("/v2/r/manifests/{digest}"), &[("if-none-match", &digest)], vec![]).await;
    assert_eq!(bare.status, StatusCode::NOT_MODIFIED, "distribution also accepts the digest unquoted");
    let other = registry.call("GET", "/v2/r/manifests/v1", &[("if-none-match", &format!("\"{}\"", sha256(b"other")))], vec![]).await;
    assert_eq!((other.status, other.header("docker-content-digest")), (StatusCode::OK, digest.as_str()), "a moved tag answers in full");
    assert!(!other.body.is_empty());
    let missing = registry.call("HEAD", "/v2/r/manifests/v2", &[("if-none-match", &format!("\"{digest}\""))], vec![]).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

async fn bad_references_and_upload_ids_are_client_errors_never_500(kind: Kind) {
    let registry = Registry::open(kind, true).await;
    registry.push_image("r", "v1", b"layer").await;
    let long_tag = "t".repeat(200);
    let long_id = "u".repeat(300);
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_vec();
    for reference in ["..", ".", "%2e%2e", ".hidden", "-dash", long_tag.as_str(), "a%0Ab", "sha256:xyz"] {
        for method in ["GET", "HEAD", "DELETE", "PUT"] {
            let body = if method == "PUT" { manifest.clone() } else { vec![] };
            let answer = registry.call(method, &format!("/v2/r/manifests/{reference}"), &[("content-type", "application/vnd.oci.image.index.v1+json")], body).await;
            assert!(answer.status.is_client_error(), "{method} manifests/{reference}: {}", answer.status);
        }
    }
    for id in ["..", ".", long_id.as_str(), "a%2Fb", "x.y"] {
        for method in ["GET", "PATCH", "PUT", "DELETE"] {
            let answer = registry.call(method, &format!("/v2/r/blobs/uploads/{id}?digest={}", sha256(b"")), &[], vec![]).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method} uploads/{id}");
            assert_eq!(answer.error_code(), "BLOB_UPLOAD_UNKNOWN");
        }
    }
    for path in ["/v2/r/blobs/sha256:..", "/v2/r/referrers/..", "/v2/r/blobs/..", "/v2/../r/tags/list", "/v2/r/../x/tags/list"] {
        let answer = registry.call("GET", path, &[], vec![]).await;
        assert!(answer.status.is_client_error(), "{path}: {}", answer.status);
    }
    // The good tag is untouched.
    assert_eq!(registry.call("GET", "/v2/r/manifests/v1", &[("accept", "application/vnd.oci.image.manifest.v1+json")], vec![]).await.status, StatusCode::OK);
    assert_eq!(registry.call("GET", "/v2/r/tags/list", &[], vec![]).await.json()["tags"], serde_json::json!(["v1"]));
}

async fn gc_reads_an_ambiguous_manifest_as_its_push_was_accepted(kind: Kind) {
    // No `mediaType`, and both `config` and `manifests`: pushed as an image manifest, it must
    // keep its config and layer through a collection (read as an index, they would be swept).
    let registry = Registry::open(kind, true).await;
    let storage = registry.served.clone();
    let (config_bytes, layer_bytes): (&[u8], &[u8]) = (b"{\"architecture\":\"amd64\",\"os\":\"linux\"}", b"an ambiguous layer");
    let config = registry.push_blob("r", config_bytes).await;
    let layer = registry.push_blob("r", layer_bytes).await;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_bytes.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_bytes.len()}],
        "manifests": [],
    }))
    .unwrap();
    let put = registry.call("PUT", "/v2/r/manifests/v1", &[("content-type", "application/vnd.oci.image.manifest.v1+json")], manifest).await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&put.body));
    let report = storage.storage.gc(false, std::time::Duration::ZERO).await.unwrap();
    assert_eq!(report.removed, 0, "{report:?}");
    for blob in [&config, &layer] {
        assert_eq!(registry.call("GET", &format!("/v2/r/blobs/{blob}"), &[], vec![]).await.status, StatusCode::OK, "{blob}");
    }
}

#[tokio::test]
async fn one_gc_at_a_time_through_a_lease_that_expires() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::new(dir.path());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    // Another replica's live lease: this gc does not run.
    std::fs::write(dir.path().join("gc.lease"), format!(r#"{{"holder":"replica-b","expires":{}}}"#, now + 600)).unwrap();
    let busy = storage.gc(false, std::time::Duration::ZERO).await.unwrap_err().to_string();
    assert!(busy.contains("another gc (replica-b) holds the lease"), "{busy}");
    // Its holder died: the lease expired and is taken over; released at the end.
    std::fs::write(dir.path().join("gc.lease"), format!(r#"{{"holder":"replica-b","expires":{}}}"#, now - 1)).unwrap();
    storage.gc(false, std::time::Duration::ZERO).await.unwrap();
    assert!(!dir.path().join("gc.lease").exists(), "the lease is released");
    storage.gc(true, std::time::Duration::ZERO).await.unwrap();
}
