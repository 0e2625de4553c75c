//! A hostile or flaky upstream, played by the harness proxy in front of a real docker-registry:
//! names that are no tags, answers that never end, blobs that stall, small downloads that are
//! cut. airlock writes nothing outside its destinations, asks nothing outside the synced
//! repositories, keeps its memory bounded and turns a stall into an error naming the registry.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::fixtures::{image, layer, push};
use crate::harness::{tempdir, Airlock, Auth, Fault, FaultProxy, Registry};

/// Names a hostile registry lists beside its real tag `good`.
fn hostile_names() -> Vec<String> {
    vec!["../../x".into(), "a/b".into(), "%2e%2e".into(), "t".repeat(200), "with\nnewline".into(), "..".into(), "../../../other/manifests/x".into()]
}

/// Every request went to `/v2/` itself or below `/v2/REPOSITORY/`.
fn assert_only(proxy: &FaultProxy, repository: &str) {
    let prefix = format!("/v2/{repository}/");
    for request in proxy.log() {
        let path = request.path.split('?').next().unwrap_or("");
        assert!(path == "/v2/" || path.starts_with(&prefix), "{} {} left {repository}", request.method, request.path);
        assert!(!path.contains("/../") && !path.ends_with("/.."), "{} {}", request.method, request.path);
    }
}

/// The entries of `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn names_a_registry_lists_are_checked_before_they_become_paths_or_urls() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let img = image("amd64", &[layer(601, 3000)]);
    push(&source.host(), "app", &img, Some("good"), None);
    let upstream = FaultProxy::start(&source.host());
    upstream.inject(Fault::ExtraTags(hostile_names()));
    let downstream = FaultProxy::start(&target.host());
    let airlock = Airlock::new();

    // Into a registry: the bad names are skipped and reported; no request leaves either
    // repository, so no credential is sent for another one.
    let report = airlock.run(&["sync", &upstream.at("app"), &downstream.at("mirror/app"), "-o", "json"]).success().json();
    let results = report["results"].as_array().unwrap();
    let skipped: Vec<&serde_json::Value> = results.iter().filter(|r| r["action"] == "skipped").collect();
    assert_eq!(skipped.len(), hostile_names().len(), "{report}");
    assert!(skipped.iter().all(|r| r["error"].as_str().unwrap().contains("no valid tag")), "{report}");
    assert!(skipped.iter().all(|r| !r["tag"].as_str().unwrap().contains('\n')), "names are printed escaped: {report}");
    assert_eq!(report["summary"]["copied"], 1, "{report}");
    assert_eq!(target.skopeo_digest("mirror/app:good"), img.digest);
    assert_only(&upstream, "app");
    assert_only(&downstream, "mirror/app");
    let text = airlock.run(&["sync", &upstream.at("app"), &downstream.at("mirror/app")]).success();
    assert!(text.stdout.contains("invalid names skipped") && text.stdout.contains("skipped:"), "{}", text.stdout);

    // Into an OCI layout and a serve root: nothing is written beside them, and only the real
    // tag is recorded.
    let parent = tempdir();
    let layout = parent.path().join("layout");
    let root = parent.path().join("root");
    for destination in [format!("ocidir://{}", layout.display()), format!("root://{}//mirror/app", root.display())] {
        let report = airlock.run(&["sync", &upstream.at("app"), &destination, "-o", "json"]).success().json();
        assert_eq!(report["summary"]["copied"], 1, "{destination}: {report}");
        assert_eq!(report["summary"]["skipped"], hostile_names().len(), "{destination}: {report}");
    }
    assert_eq!(entries(parent.path()), ["layout", "root"]);
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = index["manifests"].as_array().unwrap().iter().filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str()).collect();
    assert_eq!(names, ["good"]);
    assert_eq!(entries(&root.join("repositories/mirror/app/_tags")), ["good"]);
    assert!(!root.join("repositories/x").exists() && !root.join("x").exists());
}

#[test]
fn answers_that_never_end_are_refused_with_memory_bounded() {
    let source = Registry::start(Auth::None);
    let img = image("amd64", &[layer(602, 2000)]);
    push(&source.host(), "app", &img, Some("v1"), None);
    let airlock = Airlock::new();
    let destination = tempdir();
    let target = format!("ocidir://{}", destination.path().join("out").display());

    let endless_list = FaultProxy::start(&source.host());
    endless_list.inject(Fault::EndlessTagList);
    let (run, peak_kib) = airlock.run_measured(&["sync", &endless_list.at("app"), &target]);
    assert_eq!(run.status, 1, "{}", run.stderr);
    assert!(run.stdout.contains("larger than") && run.stdout.contains(&endless_list.host()), "{}", run.stdout);
    assert!(peak_kib < 128 * 1024, "airlock grew to {peak_kib} KiB on an endless tag list");

    let endless_token = FaultProxy::start(&source.host());
    endless_token.inject(Fault::EndlessToken);
    let (run, peak_kib) = airlock.run_measured(&["copy", &endless_token.at("app:v1"), &target]);
    assert_eq!(run.status, 1, "{}", run.stderr);
    assert!(run.stderr.contains("token answer is larger than"), "{}", run.stderr);
    assert!(peak_kib < 128 * 1024, "airlock grew to {peak_kib} KiB on an endless token answer");
}

#[test]
fn a_stalled_blob_is_resumed_then_fails_within_the_read_timeout() {
    let source = Registry::start(Auth::None);
    let img = image("amd64", &[layer(603, 400_000)]);
    push(&source.host(), "app", &img, Some("v1"), None);
    let proxy = FaultProxy::start(&source.host());
    proxy.inject(Fault::StallBlobs { after: 100_000 });
    let destination = tempdir();
    let started = Instant::now();
    let run = Airlock::new()
        .run(&["copy", &proxy.at("app:v1"), &format!("ocidir://{}", destination.path().display()), "--read-timeout", "2", "--retries", "2"])
        .code(1);
    let took = started.elapsed();
    assert!(run.stderr.contains("timed out") && run.stderr.contains(&proxy.host()), "{}", run.stderr);
    // One stall, one resume that stalls again: about two read timeouts and a backoff.
    assert!(took < Duration::from_secs(20), "the stall took {took:?} to become an error");
    let resumed = proxy.log().into_iter().filter(|r| r.range.is_some()).count();
    assert!(resumed >= 1, "the stalled download was resumed with Range: {:?}", proxy.log());
}

#[test]
fn cut_and_reset_manifest_and_tag_list_downloads_are_asked_for_again() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let mut expected = Vec::new();
    for (n, tag) in ["1", "2", "3"].iter().enumerate() {
        let img = image("amd64", &[layer(610 + n as u64, 1500)]);
        push(&source.host(), "app", &img, Some(tag), None);
        expected.push((tag.to_string(), img.digest));
    }
    let proxy = FaultProxy::start(&source.host());
    // Three cut half way, three reset before the first byte: tag lists and manifests alike.
    proxy.inject(Fault::CutSmallBodies { times: 3, after: 40 });
    proxy.inject(Fault::CutSmallBodies { times: 3, after: 0 });
    let report = Airlock::new().run(&["sync", &proxy.at("app"), &target.at("app"), "-o", "json"]).success().json();
    assert_eq!(report["summary"]["copied"], 3, "{report}");
    for (tag, digest) in expected {
        assert_eq!(target.skopeo_digest(&format!("app:{tag}")), digest);
    }
    let cut = proxy.log().into_iter().filter(|r| r.method == "GET" && (r.path.contains("/tags/list") || r.path.contains("/manifests/"))).count();
    assert!(cut >= 7, "the cut answers were asked for again: {:?}", proxy.log());
}
