//! The fuzz targets. Each input generator mixes the characters and pieces the parser gives
//! meaning to (`:`, `@`, `/`, `%`, `.`, quotes, digits) with arbitrary text, so the cases reach
//! past the first check. `PROPTEST_CASES` sets how many cases each target runs.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use airlock_oci::{Manifest, Reference};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use tower::ServiceExt;

fn config() -> ProptestConfig {
    // Cases from PROPTEST_CASES (256 unless set); a failure is printed, not written to the tree.
    ProptestConfig { failure_persistence: None, ..ProptestConfig::default() }
}

/// Text built from pieces a parser reacts to, and from any characters at all.
fn tricky_text(pieces: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(prop_oneof![3 => proptest::sample::select(pieces).prop_map(str::to_owned), 1 => any::<String>()], 0..max)
        .prop_map(|parts| parts.concat())
}

const REFERENCE_PIECES: &[&str] = &[
    "docker.io/", "localhost:5000/", "oci://", "ocidir://", "root://", "//", "/", ":", "@", "sha256:", "sha512:",
    "6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b", "library", "a", "B", "0", ".", "..", "_", "__", "-", "%2e", "[::1]", "latest",
];

proptest! {
    #![proptest_config(config())]

    /// A reference parses or is refused; a parsed one prints as a reference that parses to the
    /// same thing (nothing a user typed is silently changed on the way).
    #[test]
    fn references(input in tricky_text(REFERENCE_PIECES, 12)) {
        if let Ok(reference) = input.parse::<Reference>() {
            let printed = reference.to_string();
            let again: Reference = printed.parse().unwrap_or_else(|e| panic!("`{input}` printed as `{printed}`, which does not parse: {e}"));
            prop_assert_eq!(again.to_string(), printed);
            if let Some(tag) = reference.tag() {
                prop_assert!(airlock_oci::validate_tag(tag).is_ok());
            }
        }
    }
}

/// JSON documents shaped like manifests and indexes, with any of their fields replaced.
fn manifest_json() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        proptest::sample::select(&[
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
            "sha256:zz",
            "",
        ][..])
        .prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                proptest::sample::select(&["schemaVersion", "mediaType", "config", "layers", "manifests", "digest", "size", "platform", "subject", "artifactType", "annotations", "architecture", "os"][..]),
                inner,
                0..6
            )
            .prop_map(|map| serde_json::Value::Object(map.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    });
    prop_oneof![
        value.prop_map(|v| serde_json::to_vec(&v).expect("JSON serialises")),
        proptest::collection::vec(any::<u8>(), 0..256),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any bytes parse as a manifest or are refused; parsed ones keep their exact bytes and
    /// digest, and filtering an index by platform never panics.
    #[test]
    fn manifests_and_indexes(bytes in manifest_json(), content_type in proptest::option::of(proptest::sample::select(&[
        "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json", "application/json", "text/plain; charset=utf-8",
    ][..]))) {
        if let Ok(manifest) = Manifest::parse(bytes.clone(), content_type) {
            prop_assert_eq!(manifest.bytes(), &bytes[..]);
            prop_assert_eq!(manifest.digest(), &airlock_oci::digest_of(&bytes, None));
            let platforms: Vec<airlock_oci::PlatformSpec> = vec!["linux/amd64".parse().unwrap()];
            let _ = airlock_oci::filter_index(&manifest, &platforms);
        }
    }
}

/// A registry with one repository holding a blob, shared by the router targets.
struct Fixture {
    app: axum::Router,
    blob: String,
    blob_len: u64,
    _dir: tempfile::TempDir,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime"))
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let storage = airlock_registry::Storage::new(dir.path());
        let bytes = b"a blob of forty-two bytes, more or less..".to_vec();
        let digest = airlock_oci::digest_of(&bytes, None);
        let blob_len = bytes.len() as u64;
        runtime().block_on(storage.put_blob("r", &digest, futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]))).unwrap();
        let registry = airlock_registry::Registry { storage, auth: None, notifier: None, allow_delete: true, mirror: None, private_credential: None };
        Fixture { app: airlock_registry::router(Arc::new(registry)), blob: digest.to_string(), blob_len, _dir: dir }
    })
}

/// One request through the router (the fixture made first: it blocks on the runtime itself).
fn answer(method: &str, uri: &str, headers: &[(&str, String)]) -> Option<(StatusCode, Vec<u8>)> {
    let app = fixture().app.clone();
    runtime().block_on(call(app, method, uri, headers))
}

async fn call(app: axum::Router, method: &str, uri: &str, headers: &[(&str, String)]) -> Option<(StatusCode, Vec<u8>)> {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, value.as_str());
    }
    // A URI or header the HTTP layer itself refuses never reaches the registry.
    let request = request.body(Body::empty()).ok()?;
    let response = app.oneshot(request).await.expect("the router is infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap_or_default().to_vec();
    Some((status, body))
}

const PATH_PIECES: &[&str] = &[
    "/v2/", "r", "/", "manifests", "blobs", "uploads", "tags", "list", "referrers", "sha256:", "latest", "..", ".", "%2e", "%2F", "_", "__", "-", "?", "&", "=", "n=", "last=",
    "digest=", "mount=", "from=", "artifactType=", "6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b",
];

proptest! {
    #![proptest_config(config())]

    /// Any path and query: an answer below 500, never a panic.
    #[test]
    fn registry_paths_and_queries(method in proptest::sample::select(&["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"][..]), path in tricky_text(PATH_PIECES, 14)) {
        let uri = format!("/v2/{}", path.trim_start_matches('/'));
        if let Some((status, body)) = answer(method, &uri, &[]) {
            prop_assert!(!status.is_server_error(), "{method} {uri}: {status} {}", String::from_utf8_lossy(&body));
        }
    }

    /// Any `Range` on a blob, any `Content-Range` on an upload: a 4xx or a body that is exactly
    /// the bytes asked for.
    #[test]
    fn range_and_content_range(range in tricky_text(&["bytes=", "bytes ", "-", "0", "1", "41", "42", "99999999999999999999", ",", " ", "="], 6)) {
        let fixture = fixture();
        let uri = format!("/v2/r/blobs/{}", fixture.blob);
        if let Some((status, body)) = answer("GET", &uri, &[("range", range.clone())]) {
            prop_assert!(!status.is_server_error(), "Range `{range}`: {status}");
            if status == StatusCode::PARTIAL_CONTENT {
                prop_assert!(!body.is_empty() && body.len() as u64 <= fixture.blob_len, "Range `{range}`: {} bytes", body.len());
            }
        }
        let upload = answer("POST", "/v2/r/blobs/uploads/", &[]);
        if let Some((StatusCode::ACCEPTED, _)) = upload {
            // The session's location is not needed: an unknown session must be a 404 too.
            for path in ["/v2/r/blobs/uploads/nope", "/v2/r/blobs/uploads/.."] {
                if let Some((status, _)) = answer("PATCH", path, &[("content-range", range.clone())]) {
                    prop_assert!(!status.is_server_error(), "Content-Range `{range}`: {status}");
                }
            }
        }
    }
}

const HEADER_PIECES: &[&str] = &["Basic ", "Bearer ", "basic", "realm=", "service=", "scope=", "\"", "\\\"", ",", " ", "=", "https://a/token", "YWxpY2U6c2VjcmV0", "eyJhbGciOiJIUzI1NiJ9", ".", ":"];

proptest! {
    #![proptest_config(config())]

    /// `WWW-Authenticate` challenges (from registries) and `Authorization` headers (from
    /// clients): parsed or refused, never a panic, never a 5xx.
    #[test]
    fn challenge_and_authorization_headers(header in tricky_text(HEADER_PIECES, 12)) {
        if let Some(airlock_store::remote::Challenge::Bearer { realm, .. }) = airlock_store::remote::parse_challenge(&header) {
            prop_assert!(header.to_ascii_lowercase().contains("realm"), "a realm out of nothing: {realm}");
        }
        if let Some((status, _)) = answer("GET", "/v2/r/tags/list", &[("authorization", header.clone())]) {
            prop_assert!(!status.is_server_error(), "Authorization `{header}`: {status}");
        }
    }
}

const YAML_PIECES: &[&str] = &[
    "registries:\n", "sync:\n", "imports:\n", "  - ", "source: ", "target: ", "staging: ", "name: ", "tags: [", "]", "semver: ", "latest: ", "platforms: [linux/amd64]", "gates:\n",
    "policy: {}", "command: [x]", "timeout: ", "5m", "-1", "password_env: X", "plain_http: true", "concurrency: 0", "unique_tag: '{{tag}}'", "{{", "}}", "localhost:5000/a", "\n", "  ", ":", "'",
    "\"", "&a", "*a", "!!binary", "---\n",
];

const JSONC_PIECES: &[&str] = &[
    "{", "}", "[", "]", "\"image_sources\"", "\"helm_packages\"", "\"name\"", "\"path_to_chart\"", "\"default_values\"", "\"\"", ":", ",", "// c\n", "/* c */", "\"a.io\"", "\"oci://h/c:1\"", "null",
    "1", "\"é\"",
];

proptest! {
    #![proptest_config(config())]

    /// `sync.yaml` and `airlock.yaml`: a config or an error naming the file, never a panic.
    #[test]
    fn sync_and_airlock_yaml(text in tricky_text(YAML_PIECES, 24)) {
        if let Err(error) = airlock_sync::config::parse(&text, "sync.yaml") {
            prop_assert!(error.to_string().contains("sync.yaml"), "{error}");
        }
        let _ = airlock_gate::config::parse(&text, Path::new("/nonexistent/airlock.yaml"));
    }

    /// `cnf-input.jsonc`: a config or an error naming the file, never a panic.
    #[test]
    fn cnf_input_jsonc(text in tricky_text(JSONC_PIECES, 24)) {
        if let Err(error) = airlock_discover::onboard::parse_config(&text, "cnf-input.jsonc", Path::new("/nonexistent")) {
            prop_assert!(error.to_string().contains("cnf-input.jsonc"), "{error}");
        }
    }
}
