//! Registry to registry copies, checked from the other side with skopeo and plain HTTP.

use crate::harness::fixtures::{image, index, layer, push, push_referrers, referrer};
use crate::harness::{skopeo_digest, Airlock, Auth, Registry};

#[test]
fn single_image_keeps_its_digest_and_skopeo_reads_it() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let img = image("amd64", &[layer(1, 300_000), layer(2, 50_000)]);
    push(&source.host(), "app", &img, Some("v1"), None);

    let airlock = Airlock::new();
    let run = airlock.run(&["copy", &source.at("app:v1"), &target.at("mirror/app"), "-o", "json"]).success();
    let report = run.json();
    assert_eq!(report["digest"], img.digest);
    assert_eq!(report["source_digest"], img.digest);
    assert_eq!(report["tags"], serde_json::json!(["v1"]));
    assert_eq!(report["blobs_copied"], 3);
    assert_eq!(report["bytes_copied"], img.blobs.iter().map(|b| b.bytes.len() as u64).sum::<u64>());

    // The other side: skopeo reads the same bytes, and can pull every blob.
    assert_eq!(target.skopeo_digest("mirror/app:v1"), img.digest);
    let out = crate::harness::tempdir();
    crate::harness::skopeo(&["copy", "--src-tls-verify=false", &format!("docker://{}", target.at("mirror/app:v1")), &format!("oci:{}:v1", out.path().display())]).success();

    // airlock's own view agrees.
    let digest = airlock.run(&["digest", &target.at("mirror/app:v1")]).success();
    assert_eq!(digest.stdout.trim(), img.digest);

    // A second copy moves nothing.
    let again = airlock.run(&["copy", &source.at("app:v1"), &target.at("mirror/app"), "-o", "json"]).success().json();
    assert_eq!(again["blobs_copied"], 0);
    assert_eq!(again["manifests_present"], 1);
}

fn multi_arch(source: &Registry) -> (crate::harness::Fixture, crate::harness::Fixture, crate::harness::Fixture) {
    let base = layer(10, 200_000);
    let amd = image("amd64", &[base.clone(), layer(11, 40_000)]);
    let arm = image("arm64", &[base, layer(12, 40_000)]);
    let idx = index(&[(&amd, "amd64", None), (&arm, "arm64", Some("v8"))]);
    push(&source.host(), "multi", &idx, Some("1.0"), None);
    (idx, amd, arm)
}

#[test]
fn multi_arch_index_arrives_whole() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let (idx, amd, arm) = multi_arch(&source);
    let airlock = Airlock::new();
    let report = airlock.run(&["copy", &source.at("multi:1.0"), &target.at("multi:1.0"), "-o", "json"]).success().json();
    assert_eq!(report["digest"], idx.digest);
    // The shared base layer moves once.
    assert_eq!(report["blobs_copied"], 5);
    assert_eq!(report["manifests_written"], 3);
    assert_eq!(target.skopeo_digest("multi:1.0"), idx.digest);
    for child in [&amd, &arm] {
        assert_eq!(skopeo_digest(&format!("docker://{}@{}", target.at("multi"), child.digest)), child.digest);
    }
}

#[test]
fn platform_subset_is_a_new_index_with_only_those_platforms() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let (idx, amd, arm) = multi_arch(&source);
    let airlock = Airlock::new();
    let report = airlock
        .run(&["copy", &source.at("multi:1.0"), &target.at("multi:arm"), "--platform", "linux/aarch64", "-o", "json"])
        .success()
        .json();
    assert_ne!(report["digest"], idx.digest);
    assert_eq!(report["source_digest"], idx.digest);
    let raw = crate::harness::skopeo(&["inspect", "--raw", "--tls-verify=false", &format!("docker://{}", target.at("multi:arm"))]).success();
    assert_eq!(crate::harness::sha256(&raw.stdout_bytes), report["digest"].as_str().unwrap());
    let document: serde_json::Value = serde_json::from_slice(&raw.stdout_bytes).unwrap();
    let manifests = document["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifests[0]["digest"], arm.digest);
    assert_eq!(document["annotations"]["org.example"], "kept");
    // The amd64 image was not copied.
    assert!(!target.has_manifest("multi", &amd.digest, None));

    let none = airlock.run(&["copy", &source.at("multi:1.0"), &target.at("multi:s390x"), "--platform", "linux/s390x"]).code(1);
    assert!(none.stderr.contains("no manifest for platform linux/s390x") && none.stderr.contains("linux/arm64/v8"), "{}", none.stderr);
}

#[test]
fn referrers_come_along_recursively_unless_refused() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let img = image("amd64", &[layer(20, 10_000)]);
    push(&source.host(), "signed", &img, Some("v1"), None);
    let signature = referrer(&img, "application/vnd.dev.cosign.artifact.sig.v1+json", b"signature-bytes");
    let sbom = referrer(&img, "application/spdx+json", br#"{"spdxVersion":"SPDX-2.3"}"#);
    let sbom_signature = referrer(&sbom, "application/vnd.dev.cosign.artifact.sig.v1+json", b"sbom-signature");
    push_referrers(&source.host(), "signed", &img, &[&signature, &sbom], None);
    push_referrers(&source.host(), "signed", &sbom, &[&sbom_signature], None);

    let airlock = Airlock::new();
    let report = airlock.run(&["copy", &source.at("signed:v1"), &target.at("signed:v1"), "-o", "json"]).success().json();
    assert_eq!(report["referrers_copied"], 3);
    for fixture in [&signature, &sbom, &sbom_signature] {
        assert_eq!(skopeo_digest(&format!("docker://{}@{}", target.at("signed"), fixture.digest)), fixture.digest);
    }
    // The target lists them the way clients find them without the referrers API.
    let tag = img.digest.replace(':', "-");
    let listing = crate::harness::skopeo(&["inspect", "--raw", "--tls-verify=false", &format!("docker://{}", target.at(&format!("signed:{tag}")))]).success();
    let listing: serde_json::Value = serde_json::from_slice(&listing.stdout_bytes).unwrap();
    let listed: Vec<&str> = listing["manifests"].as_array().unwrap().iter().map(|m| m["digest"].as_str().unwrap()).collect();
    assert!(listed.contains(&signature.digest.as_str()) && listed.contains(&sbom.digest.as_str()), "{listed:?}");

    let bare = Registry::start(Auth::None);
    let report = airlock.run(&["copy", &source.at("signed:v1"), &bare.at("signed:v1"), "--no-referrers", "-o", "json"]).success().json();
    assert_eq!(report["referrers_copied"], 0);
    assert!(!bare.has_manifest("signed", &signature.digest, None));
}

#[test]
fn extra_tags_and_tags_that_would_move() {
    let registry = Registry::start(Auth::None);
    let one = image("amd64", &[layer(30, 1000)]);
    let two = image("amd64", &[layer(31, 1000)]);
    push(&registry.host(), "src", &one, Some("one"), None);
    push(&registry.host(), "src", &two, Some("two"), None);
    let airlock = Airlock::new();
    airlock.run(&["copy", &registry.at("src:one"), &registry.at("dst:stable"), "-t", "stable-1", "-t", "rollback"]).success();
    for tag in ["stable", "stable-1", "rollback"] {
        assert_eq!(registry.skopeo_digest(&format!("dst:{tag}")), one.digest);
    }
    let refused = airlock.run(&["copy", &registry.at("src:two"), &registry.at("dst:stable")]).code(1);
    assert!(refused.stderr.contains("tag `stable`") && refused.stderr.contains(&one.digest), "{}", refused.stderr);
    assert!(refused.stderr.contains("--force"), "{}", refused.stderr);
    assert_eq!(registry.skopeo_digest("dst:stable"), one.digest);
    airlock.run(&["copy", &registry.at("src:two"), &registry.at("dst:stable"), "--force"]).success();
    assert_eq!(registry.skopeo_digest("dst:stable"), two.digest);
}

#[test]
fn same_registry_copies_mount_instead_of_moving_bytes() {
    let registry = Registry::start(Auth::None);
    let img = image("amd64", &[layer(40, 500_000)]);
    push(&registry.host(), "team/base", &img, Some("v1"), None);
    let airlock = Airlock::new();
    let report = airlock.run(&["copy", &registry.at("team/base:v1"), &registry.at("other/base:v1"), "-o", "json"]).success().json();
    assert_eq!(report["blobs_mounted"], 2);
    assert_eq!(report["bytes_copied"], 0);
    assert_eq!(registry.skopeo_digest("other/base:v1"), img.digest);
}

#[test]
fn tags_lists_every_page() {
    let registry = Registry::start(Auth::None);
    let img = image("amd64", &[layer(50, 100)]);
    let mut expected = Vec::new();
    for n in 0..30 {
        let tag = format!("t{n:02}");
        push(&registry.host(), "many", &img, Some(&tag), None);
        expected.push(tag);
    }
    let proxy = crate::harness::FaultProxy::start(&registry.host());
    proxy.inject(crate::harness::Fault::LimitPageSize(7));
    let listed = Airlock::new().run(&["tags", &proxy.at("many"), "-o", "json"]).success().json();
    let pages = proxy.log().iter().filter(|r| r.path.contains("/tags/list")).count();
    assert_eq!(pages, 5, "30 tags in pages of 7 take 5 requests");
    let mut tags: Vec<String> = listed["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
    tags.sort();
    assert_eq!(tags, expected);
}

#[test]
fn the_oci_referrers_api_is_used_where_the_registry_has_it() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let img = image("amd64", &[layer(21, 1000)]);
    push(&source.host(), "signed", &img, Some("v1"), None);
    let signature = referrer(&img, "application/vnd.dev.cosign.artifact.sig.v1+json", b"sig");
    push_referrers(&source.host(), "signed", &img, &[&signature], None);
    let api = crate::harness::FaultProxy::start(&source.host());
    api.inject(crate::harness::Fault::ServeReferrers);

    let report = Airlock::new().run(&["copy", &api.at("signed:v1"), &target.at("signed:v1"), "-o", "json"]).success().json();
    assert_eq!(report["referrers_copied"], 1);
    let log = api.log();
    assert!(log.iter().any(|r| r.path.contains("/referrers/") && r.status == 200));
    assert!(!log.iter().any(|r| r.path.contains("/manifests/sha256-")), "the tag schema was used although the API answered");
    assert!(target.has_manifest("signed", &signature.digest, None));
}

/// Peak resident memory of a running process in KiB (`VmHWM`), `None` once it has exited.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn memory_stays_bounded_whatever_the_layer_size() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let size = 96 * 1024 * 1024;
    let img = image("amd64", &[layer(41, size)]);
    push(&source.host(), "huge", &img, Some("v1"), None);
    let airlock = Airlock::new();
    for destination in [target.at("huge:v1"), format!("ocidir://{}:v1", airlock.path("folder").display())] {
        let mut child = airlock.spawn(&["copy", "-q", &source.at("huge:v1"), &destination]);
        let mut peak = 0;
        while child.try_wait().unwrap().is_none() {
            peak = peak_rss_kib(child.id()).unwrap_or(0).max(peak);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(child.wait().unwrap().success());
        assert!(peak > 0, "never measured the copy");
        assert!(peak < 48 * 1024, "a {} MiB layer took {} MiB of memory to copy to {destination}", size >> 20, peak >> 10);
    }
    assert_eq!(target.skopeo_digest("huge:v1"), img.digest);
}

#[test]
fn docker_manifest_lists_copy_whole_and_by_platform() {
    use crate::harness::fixtures::{docker_image, docker_list, DOCKER_LIST};
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let amd = docker_image("amd64", &[layer(42, 5000)]);
    let arm = docker_image("arm64", &[layer(43, 5000)]);
    let list = docker_list(&[(&amd, "amd64"), (&arm, "arm64")]);
    push(&source.host(), "docker", &list, Some("v1"), None);
    let airlock = Airlock::new();
    let whole = airlock.run(&["copy", &format!("docker://{}", source.at("docker:v1")), &target.at("docker:v1"), "-o", "json"]).success().json();
    assert_eq!(whole["digest"], list.digest);
    assert_eq!(whole["media_type"], DOCKER_LIST);
    assert_eq!(target.skopeo_digest("docker:v1"), list.digest);
    let subset = airlock.run(&["copy", &source.at("docker:v1"), &target.at("docker:amd64"), "--platform", "linux/x86_64", "-o", "json"]).success().json();
    assert_eq!(subset["media_type"], DOCKER_LIST);
    let raw = crate::harness::skopeo(&["inspect", "--raw", "--tls-verify=false", &format!("docker://{}", target.at("docker:amd64"))]).success();
    let document: serde_json::Value = serde_json::from_slice(&raw.stdout_bytes).unwrap();
    assert_eq!(document["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(document["manifests"][0]["digest"], amd.digest);
}

#[test]
fn by_digest_with_oci_urls_and_no_destination_tag() {
    let registry = Registry::start(Auth::None);
    let img = image("amd64", &[layer(44, 1000)]);
    push(&registry.host(), "app", &img, Some("v1"), None);
    let airlock = Airlock::new();
    let source = format!("oci://{}@{}", registry.at("app"), img.digest);
    let report = airlock.run(&["copy", &source, &format!("oci://{}", registry.at("pinned")), "-o", "json"]).success().json();
    assert_eq!(report["digest"], img.digest);
    assert_eq!(report["tags"], serde_json::json!([]));
    assert!(registry.has_manifest("pinned", &img.digest, None));
    assert!(!registry.has_manifest("pinned", "latest", None), "a copy by digest invented a tag");
}

#[test]
fn delete_takes_the_manifest_and_every_tag_on_it() {
    let registry = Registry::start(Auth::None);
    let img = image("amd64", &[layer(45, 1000)]);
    let other = image("amd64", &[layer(46, 1000)]);
    push(&registry.host(), "app", &img, Some("v1"), None);
    push(&registry.host(), "app", &img, Some("stable"), None);
    push(&registry.host(), "app", &other, Some("v2"), None);
    let airlock = Airlock::new();
    // The tag cache learns where v1 and stable point, and must forget it with the manifest.
    assert_eq!(airlock.run(&["digest", &registry.at("app:stable")]).success().stdout.trim(), img.digest);

    let run = airlock.run(&["delete", &registry.at("app:v1")]).success();
    assert_eq!(run.stdout.trim(), img.digest);
    assert!(!registry.has_manifest("app", &img.digest, None));
    assert!(!registry.has_manifest("app", "v1", None) && !registry.has_manifest("app", "stable", None), "a tag outlived its manifest");
    assert_eq!(registry.skopeo_digest("app:v2"), other.digest, "another image's tag went too");
    airlock.run(&["digest", &registry.at("app:stable")]).code(1).stderr_has("not found");

    // Gone already: the error names the reference and the registry.
    let again = airlock.run(&["delete", &format!("{}@{}", registry.at("app"), img.digest)]).code(1);
    assert!(again.stderr.contains(&registry.host()) && again.stderr.contains("not found"), "{}", again.stderr);
}

#[test]
fn a_registry_that_refuses_deletes_gets_a_hint() {
    let root = crate::harness::tempdir();
    let config = root.path().join("serve.yaml");
    std::fs::write(&config, "delete: false\n").unwrap();
    let served = crate::harness::Served::start_with(&root.path().join("data"), &["--config", config.to_str().unwrap()]);
    let img = image("amd64", &[layer(47, 1000)]);
    push(&served.address, "app", &img, Some("v1"), None);
    let airlock = Airlock::new();
    let refused = airlock.run(&["delete", &served.at("app:v1")]).code(1);
    assert!(refused.stderr.contains("405") && refused.stderr.contains("REGISTRY_STORAGE_DELETE_ENABLED"), "{}", refused.stderr);
    assert_eq!(airlock.run(&["digest", &served.at("app:v1")]).success().stdout.trim(), img.digest);
}
