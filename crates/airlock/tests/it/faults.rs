//! Faults between airlock and a real registry, injected by a proxy: cut downloads, rate limits,
//! server errors and corrupted bytes.

use crate::harness::fixtures::{image, layer, push};
use crate::harness::{Airlock, Auth, Fault, FaultProxy, Registry};

#[test]
fn a_download_cut_mid_stream_resumes_with_range() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    // Above 8 MiB, so the upload is a streamed PATCH rather than one PUT.
    let img = image("amd64", &[layer(70, 9 * 1024 * 1024)]);
    push(&source.host(), "big", &img, Some("v1"), None);
    let proxy = FaultProxy::start(&source.host());
    proxy.inject(Fault::CutBlobOnce { after: 1024 * 1024 });
    let target_side = FaultProxy::start(&target.host());

    let report = Airlock::new().run(&["copy", &proxy.at("big:v1"), &target_side.at("big:v1"), "-o", "json"]).success().json();
    assert!(target_side.log().iter().any(|r| r.method == "PATCH" && r.status == 202), "a large blob is streamed with PATCH");
    assert_eq!(report["digest"], img.digest);
    let resumed: Vec<_> = proxy.log().into_iter().filter(|r| r.range.is_some()).collect();
    assert_eq!(resumed.len(), 1, "one ranged GET resumes the cut download: {:?}", proxy.log());
    assert_eq!(resumed[0].status, 206);
    let offset: u64 = resumed[0].range.as_deref().unwrap().trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap();
    assert!(offset > 0 && offset <= 1024 * 1024, "resumed from byte {offset}, not from the start");
    assert_eq!(target.skopeo_digest("big:v1"), img.digest);
}

#[test]
fn rate_limits_are_waited_out_as_retry_after_says() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let img = image("amd64", &[layer(71, 10_000)]);
    push(&source.host(), "app", &img, Some("v1"), None);
    let proxy = FaultProxy::start(&source.host());
    proxy.inject(Fault::Status { path: "/manifests/", status: 429, times: 2, retry_after: Some(1) });

    let report = Airlock::new().run(&["copy", &proxy.at("app:v1"), &target.at("app:v1"), "-o", "json"]).success().json();
    assert_eq!(report["digest"], img.digest);
    let manifests: Vec<_> = proxy.log().into_iter().filter(|r| r.path.contains("/manifests/")).collect();
    assert_eq!(manifests[0].status, 429);
    assert_eq!(manifests[1].status, 429);
    assert_eq!(manifests[2].status, 200);
    // Retry-After: 1 was honoured before each new attempt.
    for pair in manifests[..3].windows(2) {
        let waited = pair[1].at.duration_since(pair[0].at);
        assert!(waited >= std::time::Duration::from_millis(950), "retried after {waited:?}, before Retry-After");
    }
}

#[test]
fn server_errors_are_retried() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let img = image("amd64", &[layer(72, 10_000)]);
    push(&source.host(), "app", &img, Some("v1"), None);
    let proxy = FaultProxy::start(&target.host());
    proxy.inject(Fault::Status { path: "/blobs/uploads/", status: 500, times: 1, retry_after: None });
    proxy.inject(Fault::Status { path: "/manifests/v1", status: 503, times: 1, retry_after: None });

    let report = Airlock::new().run(&["copy", &source.at("app:v1"), &proxy.at("app:v1"), "-o", "json"]).success().json();
    assert_eq!(report["digest"], img.digest);
    assert!(proxy.log().iter().any(|r| r.status == 500) && proxy.log().iter().any(|r| r.status == 503));
    assert_eq!(target.skopeo_digest("app:v1"), img.digest);

    // Errors that persist end the copy, naming the status after the retries.
    proxy.inject(Fault::Status { path: "/manifests/v2", status: 500, times: 100, retry_after: None });
    let failed = Airlock::new().run(&["copy", &source.at("app:v1"), &proxy.at("app:v2"), "--retries", "2"]).code(1);
    assert!(failed.stderr.contains("gave up after 2 attempts") && failed.stderr.contains("500"), "{}", failed.stderr);
}

#[test]
fn flipped_bytes_fail_the_copy_and_no_tag_is_written() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let img = image("amd64", &[layer(73, 100_000)]);
    push(&source.host(), "app", &img, Some("v1"), None);
    let proxy = FaultProxy::start(&source.host());
    proxy.inject(Fault::FlipBlobBytes);

    let failed = Airlock::new().run(&["copy", &proxy.at("app:v1"), &target.at("app:v1")]).code(1);
    assert!(failed.stderr.contains("digest mismatch"), "{}", failed.stderr);
    assert!(!target.has_manifest("app", "v1", None), "a tag points at content that failed verification");
    assert!(!target.has_manifest("app", &img.digest, None));

    // Into a folder: nothing is tagged and no partial blob is left.
    let folder = crate::harness::tempdir();
    let destination = format!("ocidir://{}:v1", folder.path().display());
    Airlock::new().run(&["copy", &proxy.at("app:v1"), &destination]).code(1).stderr_has("digest mismatch");
    let index = std::fs::read_to_string(folder.path().join("index.json")).unwrap_or_default();
    assert!(!index.contains("\"v1\""), "{index}");
    for blob in &img.blobs {
        let path = folder.path().join("blobs/sha256").join(&blob.digest[7..]);
        if path.exists() {
            assert_eq!(crate::harness::sha256(&std::fs::read(&path).unwrap()), blob.digest, "corrupt blob stored");
        }
    }
}

#[test]
fn a_copy_killed_mid_way_leaves_no_tag_and_a_rerun_completes() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let img = image("amd64", &[layer(74, 2 * 1024 * 1024), layer(75, 2 * 1024 * 1024), layer(76, 1000)]);
    push(&source.host(), "app", &img, Some("v1"), None);
    let proxy = FaultProxy::start(&source.host());
    proxy.inject(Fault::Throttle { bytes_per_second: 1024 * 1024 });

    let airlock = Airlock::new();
    let mut child = airlock.spawn(&["copy", &proxy.at("app:v1"), &target.at("app:v1"), "-q"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while proxy.blob_bytes_sent() < 1024 * 1024 {
        assert!(std::time::Instant::now() < deadline, "the copy never got a megabyte through the proxy");
        assert!(child.try_wait().unwrap().is_none(), "the copy ended before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!target.has_manifest("app", "v1", None), "killed mid-way, yet the tag exists");
    assert!(!target.has_manifest("app", &img.digest, None));

    proxy.clear_faults();
    let report = airlock.run(&["copy", &proxy.at("app:v1"), &target.at("app:v1"), "-o", "json"]).success().json();
    assert_eq!(report["digest"], img.digest);
    assert_eq!(target.skopeo_digest("app:v1"), img.digest);
}

#[test]
fn redirected_blob_downloads_do_not_carry_credentials_to_the_other_host() {
    let source = Registry::start(Auth::Htpasswd(vec![("alice", "pw")]));
    let storage = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let img = image("amd64", &[layer(77, 30_000)]);
    let basic = format!("Basic {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice:pw"));
    push(&source.host(), "app", &img, Some("v1"), Some(&basic));
    // The "object storage" holds the same blobs, without auth.
    push(&storage.host(), "app", &img, Some("v1"), None);
    let blob_host = FaultProxy::start(&storage.host());
    let proxy = FaultProxy::start(&source.host());
    proxy.inject(Fault::RedirectBlobsTo(blob_host.host()));

    let report = Airlock::new().run(&["copy", &proxy.at("app:v1"), &target.at("app:v1"), "--src-creds", "alice:pw", "-o", "json"]).success().json();
    assert_eq!(report["digest"], img.digest);
    let redirected: Vec<_> = proxy.log().into_iter().filter(|r| r.status == 307).collect();
    assert_eq!(redirected.len(), 2, "config and layer were redirected");
    assert!(redirected.iter().all(|r| r.authorization), "the registry itself gets the credentials");
    let fetched: Vec<_> = blob_host.log().into_iter().filter(|r| r.path.contains("/blobs/")).collect();
    assert_eq!(fetched.len(), 2);
    assert!(fetched.iter().all(|r| !r.authorization), "Authorization followed a cross-host redirect");
}
