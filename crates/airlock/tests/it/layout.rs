//! OCI image-layout folders: what airlock writes, skopeo and umoci read; what skopeo writes,
//! airlock reads.

use crate::harness::fixtures::{image, index, layer, push};
use crate::harness::{require, run_command, skopeo, skopeo_digest, Airlock, Auth, Registry};

#[test]
fn a_folder_written_by_airlock_is_read_by_skopeo_and_umoci() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let img = image("amd64", &[layer(90, 64_000), layer(91, 1000)]);
    let arm = image("arm64", &[layer(92, 1000)]);
    let idx = index(&[(&img, "amd64", None), (&arm, "arm64", None)]);
    push(&source.host(), "app", &img, Some("v1"), None);
    push(&source.host(), "app", &idx, Some("multi"), None);
    let folder = crate::harness::tempdir();
    let dir = folder.path().display().to_string();
    let airlock = Airlock::new();
    airlock.run(&["copy", &source.at("app:v1"), &format!("ocidir://{dir}:v1")]).success();
    airlock.run(&["copy", &source.at("app:multi"), &format!("ocidir://{dir}:multi")]).success();

    assert_eq!(skopeo_digest(&format!("oci:{dir}:v1")), img.digest);
    assert_eq!(skopeo_digest(&format!("oci:{dir}:multi")), idx.digest);
    // skopeo would gzip the uncompressed layers for a registry; --preserve-digests keeps them.
    skopeo(&["copy", "--all", "--preserve-digests", "--dest-tls-verify=false", &format!("oci:{dir}:multi"), &format!("docker://{}", target.at("app:multi"))]).success();
    assert_eq!(target.skopeo_digest("app:multi"), idx.digest);

    let umoci = require("umoci", "umoci");
    let bundle = crate::harness::tempdir();
    let unpacked = bundle.path().join("bundle");
    let mut command = std::process::Command::new(umoci);
    command.args(["unpack", "--rootless", "--image", &format!("{dir}:v1"), unpacked.to_str().unwrap()]);
    run_command(command, None).success();
    let file = std::fs::read(unpacked.join("rootfs/data-90.bin")).unwrap();
    assert_eq!(file, crate::harness::fixtures::noise(90, 64_000));

    let tags = airlock.run(&["tags", &format!("ocidir://{dir}")]).success();
    assert_eq!(tags.stdout.lines().collect::<Vec<_>>(), vec!["v1", "multi"]);
}

#[test]
fn a_folder_written_by_skopeo_is_read_by_airlock() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let img = image("amd64", &[layer(93, 20_000)]);
    push(&source.host(), "app", &img, Some("v1"), None);
    let folder = crate::harness::tempdir();
    let dir = folder.path().display().to_string();
    skopeo(&["copy", "--src-tls-verify=false", &format!("docker://{}", source.at("app:v1")), &format!("oci:{dir}:stable")]).success();
    let written_by_skopeo = skopeo_digest(&format!("oci:{dir}:stable"));

    let airlock = Airlock::new();
    let report = airlock.run(&["copy", &format!("ocidir://{dir}:stable"), &target.at("app"), "-o", "json"]).success().json();
    assert_eq!(report["digest"], written_by_skopeo);
    assert_eq!(report["tags"], serde_json::json!(["stable"]));
    assert_eq!(target.skopeo_digest("app:stable"), written_by_skopeo);
}

#[test]
fn referrers_travel_through_a_folder() {
    use crate::harness::fixtures::{push_referrers, referrer};
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let img = image("amd64", &[layer(94, 1000)]);
    push(&source.host(), "app", &img, Some("v1"), None);
    let signature = referrer(&img, "application/vnd.dev.cosign.artifact.sig.v1+json", b"sig");
    push_referrers(&source.host(), "app", &img, &[&signature], None);
    let folder = crate::harness::tempdir();
    let dir = folder.path().display().to_string();
    let airlock = Airlock::new();
    let report = airlock.run(&["copy", &source.at("app:v1"), &format!("ocidir://{dir}:v1"), "-o", "json"]).success().json();
    assert_eq!(report["referrers_copied"], 1);
    let report = airlock.run(&["copy", &format!("ocidir://{dir}:v1"), &target.at("app:v1"), "-o", "json"]).success().json();
    assert_eq!(report["referrers_copied"], 1);
    assert!(target.has_manifest("app", &signature.digest, None));
}

#[test]
fn two_processes_write_one_folder_at_once() {
    let source = Registry::start(Auth::None);
    let images: Vec<_> = (0..6).map(|n| image("amd64", &[layer(100 + n, 200_000)])).collect();
    for (n, img) in images.iter().enumerate() {
        push(&source.host(), "app", img, Some(&format!("v{n}")), None);
    }
    let folder = crate::harness::tempdir();
    let dir = folder.path().display().to_string();
    let airlock = Airlock::new();
    let children: Vec<_> = (0..images.len())
        .map(|n| {
            airlock.spawn(&["copy", "-q", &source.at(&format!("app:v{n}")), &format!("ocidir://{dir}:v{n}")])
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    for (n, img) in images.iter().enumerate() {
        assert_eq!(skopeo_digest(&format!("oci:{dir}:v{n}")), img.digest, "tag v{n} lost or wrong");
    }
}
