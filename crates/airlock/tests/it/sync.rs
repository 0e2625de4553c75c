//! `airlock sync` against real registries: filters, platforms, referrers, dry runs, warm runs,
//! kills, rate limits and malformed files.

use crate::harness::fixtures::{image, index, layer, push, push_referrers, referrer, Fixture};
use crate::harness::{Airlock, Auth, Fault, FaultProxy, Registry};

const TAGS: [&str; 8] = ["1.0", "1.1", "1.2.5", "v1.3", "2.0", "2.1-rc1", "latest", "edge"];

/// A source repository `app` whose tags each point at an image of their own.
fn source_with_tags(registry: &Registry) -> Vec<(String, Fixture)> {
    TAGS.iter()
        .enumerate()
        .map(|(n, tag)| {
            let img = image("amd64", &[layer(1, 4000), layer(200 + n as u64, 1000)]);
            push(&registry.host(), "app", &img, Some(tag), None);
            (tag.to_string(), img)
        })
        .collect()
}

fn tags_at(registry: &Registry, repository: &str) -> Vec<String> {
    let run = Airlock::new().run(&["tags", &registry.at(repository), "-o", "json"]);
    if run.status != 0 {
        return Vec::new();
    }
    let mut tags: Vec<String> = run.json()["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
    tags.sort();
    tags
}

fn sorted(tags: &[&str]) -> Vec<String> {
    let mut tags: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
    tags.sort();
    tags
}

#[test]
fn each_filter_selects_exactly_the_right_tags() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let fixtures = source_with_tags(&source);
    let airlock = Airlock::new();
    let cases: [(&str, &[&str], &[&str]); 6] = [
        ("regex", &["--tag-regex", r"1\..*"], &["1.0", "1.1", "1.2.5"]),
        ("exclude", &["--exclude", r".*-rc.*", "--exclude", "edge|latest"], &["1.0", "1.1", "1.2.5", "v1.3", "2.0"]),
        ("semver", &["--semver", ">=1.1, <2"], &["1.1", "1.2.5", "v1.3"]),
        ("latest", &["--latest", "2", "--exclude", ".*-.*"], &["2.0", "v1.3"]),
        ("list", &["--tags", "edge,1.0"], &["1.0", "edge"]),
        ("all", &[], &TAGS),
    ];
    for (name, flags, expected) in cases {
        let mut args = vec!["sync".to_owned(), source.at("app"), target.at(name), "-o".into(), "json".into()];
        args.extend(flags.iter().map(|f| f.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let report = airlock.run(&args).success().json();
        assert_eq!(tags_at(&target, name), sorted(expected), "filter {name}");
        assert_eq!(report["summary"]["copied"], expected.len(), "filter {name}");
    }
    for (tag, img) in &fixtures {
        assert_eq!(target.skopeo_digest(&format!("all:{tag}")), img.digest);
    }
}

#[test]
fn warm_sync_costs_one_head_per_tag_on_each_side_and_moves_nothing() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    source_with_tags(&source);
    let source_side = FaultProxy::start(&source.host());
    let target_side = FaultProxy::start(&target.host());
    let airlock = Airlock::new();
    let cold = airlock.run(&["sync", &source_side.at("app"), &target_side.at("mirror"), "-o", "json"]).success().json();
    assert_eq!(cold["summary"]["copied"], TAGS.len());
    // A first sync lists the never-seen target once and then asks no tag of it: each manifest
    // is fetched from the source by tag, once, and no HEAD goes to either side.
    let manifest_heads = |log: &[crate::harness::proxy::Logged]| log.iter().filter(|r| r.method == "HEAD" && r.path.contains("/manifests/")).count();
    assert_eq!(manifest_heads(&source_side.log()) + manifest_heads(&target_side.log()), 0);
    let by_tag = source_side.log().into_iter().filter(|r| r.method == "GET" && TAGS.iter().any(|t| r.path.ends_with(&format!("/manifests/{t}")))).count();
    assert_eq!(by_tag, TAGS.len());
    assert_eq!(target_side.log().iter().filter(|r| r.path.contains("/tags/list")).count(), 1);
    source_side.clear_log();
    target_side.clear_log();

    let warm = airlock.run(&["sync", &source_side.at("app"), &target_side.at("mirror"), "-o", "json"]).success().json();
    assert_eq!(warm["summary"]["up_to_date"], TAGS.len());
    assert_eq!(warm["summary"]["bytes"], 0);
    let describe = |log: &[crate::harness::proxy::Logged]| log.iter().map(|r| format!("{} {}", r.method, r.path)).collect::<Vec<_>>();
    let source_log = source_side.log();
    let target_log = target_side.log();
    let heads = |log: &[crate::harness::proxy::Logged]| log.iter().filter(|r| r.method == "HEAD" && r.path.contains("/manifests/")).count();
    assert_eq!(heads(&source_log), TAGS.len(), "{:?}", describe(&source_log));
    assert_eq!(heads(&target_log), TAGS.len(), "{:?}", describe(&target_log));
    // Besides the HEADs: the source's tag list, and nothing else.
    let other = |log: &[crate::harness::proxy::Logged]| {
        let expected = |r: &&crate::harness::proxy::Logged| r.path.contains("/tags/list") || (r.method == "HEAD" && r.path.contains("/manifests/"));
        log.iter().filter(|r| !expected(r)).count()
    };
    assert_eq!(other(&source_log), 0, "{:?}", describe(&source_log));
    assert_eq!(other(&target_log), 0, "{:?}", describe(&target_log));
    // Each HEAD asked "still this digest?" and both registries could say so without reading
    // the manifest.
    let not_modified = |log: &[crate::harness::proxy::Logged]| log.iter().filter(|r| r.method == "HEAD" && r.status == 304).count();
    assert_eq!(not_modified(&source_log), TAGS.len(), "{:?}", describe(&source_log));
    assert_eq!(not_modified(&target_log), TAGS.len(), "{:?}", describe(&target_log));
}

#[test]
fn the_tag_cache_is_only_a_guess_the_registries_confirm() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let tags = source_with_tags(&source);
    let airlock = Airlock::new();
    airlock.run(&["sync", &source.at("app"), &target.at("mirror")]).success();
    // Someone moves a mirror tag behind airlock's back: the cache still names the old digest,
    // the registry answers with the new one, and the sync puts upstream's back.
    let stray = image("amd64", &[layer(360, 900)]);
    push(&target.host(), "mirror", &stray, Some("1.0"), None);
    let report = airlock.run(&["sync", &source.at("app"), &target.at("mirror"), "-o", "json"]).success().json();
    assert_eq!(report["summary"]["copied"], 1, "{report}");
    assert_eq!(target.skopeo_digest("mirror:1.0"), tags[0].1.digest);
    // A corrupt cache costs only the conditional requests, and the run writes it afresh.
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(airlock.path(".cache/airlock/tags")).unwrap().map(|entry| entry.unwrap().path()).collect();
    assert_eq!(files.len(), 2, "one file per repository: {files:?}");
    for file in &files {
        std::fs::write(file, b"{garbage").unwrap();
    }
    let report = airlock.run(&["sync", &source.at("app"), &target.at("mirror"), "-o", "json"]).success().json();
    assert_eq!(report["summary"]["up_to_date"], TAGS.len(), "{report}");
    let mirror = files
        .iter()
        .map(|file| serde_json::from_slice::<serde_json::Value>(&std::fs::read(file).unwrap()).unwrap())
        .find(|cache| cache["repository"] == format!("{}/mirror", target.host()))
        .expect("the mirror's cache file");
    assert_eq!(mirror["tags"]["1.0"]["digest"], tags[0].1.digest, "{mirror}");
}

#[test]
fn mutable_tags_follow_upstream_and_dry_runs_write_nothing() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let old = image("amd64", &[layer(300, 2000)]);
    let new = image("amd64", &[layer(301, 2000)]);
    push(&source.host(), "app", &old, Some("latest"), None);
    let airlock = Airlock::new();
    airlock.run(&["sync", &source.at("app"), &target.at("app")]).success();
    push(&source.host(), "app", &new, Some("latest"), None);

    let target_side = FaultProxy::start(&target.host());
    let plan = airlock.run(&["sync", &source.at("app"), &target_side.at("app"), "--dry-run", "-o", "json"]).success().json();
    assert_eq!(plan["results"][0]["action"], "would_copy");
    assert_eq!(plan["results"][0]["digest"], new.digest);
    let writes: Vec<_> = target_side.log().into_iter().filter(|r| !matches!(r.method.as_str(), "GET" | "HEAD")).collect();
    assert!(writes.is_empty(), "a dry run wrote: {writes:?}");
    assert_eq!(target.skopeo_digest("app:latest"), old.digest);

    let text = airlock.run(&["sync", &source.at("app"), &target.at("app")]).success();
    assert!(text.stdout.contains("latest") && text.stdout.contains("copied"), "{}", text.stdout);
    assert_eq!(target.skopeo_digest("app:latest"), new.digest);
}

#[test]
fn platform_subsets_and_referrers_stay_in_sync() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let amd = image("amd64", &[layer(310, 3000)]);
    let arm = image("arm64", &[layer(311, 3000)]);
    let idx = index(&[(&amd, "amd64", None), (&arm, "arm64", None)]);
    push(&source.host(), "multi", &idx, Some("1.0"), None);
    let signature = referrer(&arm, "application/vnd.dev.cosign.artifact.sig.v1+json", b"arm-signature");
    push_referrers(&source.host(), "multi", &arm, &[&signature], None);

    let airlock = Airlock::new();
    let first = airlock.run(&["sync", &source.at("multi"), &target.at("multi"), "--platform", "linux/arm64", "-o", "json"]).success().json();
    assert_eq!(first["results"][0]["action"], "copied");
    assert_eq!(first["results"][0]["source_digest"], idx.digest);
    assert!(target.has_manifest("multi", &arm.digest, None));
    assert!(!target.has_manifest("multi", &amd.digest, None));
    assert!(target.has_manifest("multi", &signature.digest, None), "the arm64 image's signature came along");
    let again = airlock.run(&["sync", &source.at("multi"), &target.at("multi"), "--platform", "linux/arm64", "-o", "json"]).success().json();
    assert_eq!(again["results"][0]["action"], "up_to_date", "the filtered digest is what is compared");
}

#[test]
fn a_failed_tag_does_not_stop_the_others() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let fixtures = source_with_tags(&source);
    let proxy = FaultProxy::start(&source.host());
    proxy.inject(Fault::Status { path: "/manifests/2.0", status: 500, times: 1000, retry_after: None });
    let run = Airlock::new().run(&["sync", &proxy.at("app"), &target.at("app"), "--retries", "2"]).code(1);
    assert!(run.stdout.contains(&format!("failed: {}:2.0: ", proxy.at("app"))) && run.stdout.contains("500"), "{}", run.stdout);
    assert!(run.stdout.contains("7 copied, 0 up to date, 0 would copy, 1 failed"), "{}", run.stdout);
    for (tag, img) in fixtures.iter().filter(|(tag, _)| tag != "2.0") {
        assert_eq!(target.skopeo_digest(&format!("app:{tag}")), img.digest);
    }
    assert!(!target.has_manifest("app", "2.0", None));
}

#[test]
fn a_sync_killed_mid_way_is_completed_by_a_rerun() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let images: Vec<Fixture> = (0..6).map(|n| image("amd64", &[layer(320 + n, 600_000)])).collect();
    for (n, img) in images.iter().enumerate() {
        push(&source.host(), "app", img, Some(&format!("t{n}")), None);
    }
    let proxy = FaultProxy::start(&source.host());
    proxy.inject(Fault::Throttle { bytes_per_second: 1024 * 1024 });
    let airlock = Airlock::new();
    let mut child = airlock.spawn(&["sync", "-q", "--jobs", "2", &proxy.at("app"), &target.at("app")]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while proxy.blob_bytes_sent() < 1_500_000 {
        assert!(std::time::Instant::now() < deadline, "the sync never got going");
        assert!(child.try_wait().unwrap().is_none(), "the sync ended before it could be killed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Whatever arrived is whole: every tag present points at its source digest.
    for (n, img) in images.iter().enumerate() {
        if target.has_manifest("app", &format!("t{n}"), None) {
            assert_eq!(target.skopeo_digest(&format!("app:t{n}")), img.digest);
        }
    }
    assert!(!(0..images.len()).all(|n| target.has_manifest("app", &format!("t{n}"), None)), "the kill came too late to test anything");

    proxy.clear_faults();
    let report = airlock.run(&["sync", &proxy.at("app"), &target.at("app"), "-o", "json"]).success().json();
    assert_eq!(report["summary"]["failed"], 0);
    for (n, img) in images.iter().enumerate() {
        assert_eq!(target.skopeo_digest(&format!("app:t{n}")), img.digest);
    }
}

#[test]
fn rate_limited_syncs_slow_down_and_finish() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let fixtures = source_with_tags(&source);
    let proxy = FaultProxy::start(&source.host());
    proxy.inject(Fault::Status { path: "/manifests/", status: 429, times: 4, retry_after: Some(1) });
    let report = Airlock::new().run(&["sync", &proxy.at("app"), &target.at("app"), "-o", "json"]).success().json();
    assert_eq!(report["summary"]["copied"], TAGS.len());
    let log = proxy.log();
    let limited: Vec<_> = log.iter().filter(|r| r.status == 429).collect();
    assert_eq!(limited.len(), 4);
    // After the first 429 (and the requests already on their way with it), no request reached
    // the registry before Retry-After passed.
    let first = limited[0].at;
    let window = (first + std::time::Duration::from_millis(50))..(first + std::time::Duration::from_millis(950));
    let too_early = log.iter().filter(|r| window.contains(&r.at)).count();
    assert_eq!(too_early, 0, "requests went through during the Retry-After pause");
    for (tag, img) in &fixtures {
        assert_eq!(target.skopeo_digest(&format!("app:{tag}")), img.digest);
    }
}

#[test]
fn a_sync_file_mirrors_many_repositories_with_registry_settings() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::Htpasswd(vec![("mirror", "mirror-secret-9")]));
    source_with_tags(&source);
    let other = image("amd64", &[layer(330, 1000)]);
    push(&source.host(), "tools/cli", &other, Some("3.1"), None);
    let airlock = Airlock::new();
    let file = airlock.path("sync.yaml");
    std::fs::write(
        &file,
        format!(
            "registries:\n  {target}:\n    username: mirror\n    password_env: AIRLOCK_TEST_MIRROR_SECRET\n    requests_per_second: 50\n    concurrency: 4\nsync:\n  - source: {src}/app\n    target: {target}/mirror/app\n    semver: \">=2\"\n  - source: {src}/tools/cli\n    target: {target}/mirror/cli\n    tags: [3.1]\n",
            src = source.host(),
            target = target.host()
        ),
    )
    .unwrap();
    let run = airlock.run_env(&["sync", "-f", file.to_str().unwrap(), "-o", "json"], &[("AIRLOCK_TEST_MIRROR_SECRET", "mirror-secret-9")]).success();
    assert!(!run.stdout.contains("mirror-secret-9") && !run.stderr.contains("mirror-secret-9"));
    let report = run.json();
    let synced: Vec<String> = report["results"].as_array().unwrap().iter().map(|r| format!("{}:{}", r["target"].as_str().unwrap(), r["tag"].as_str().unwrap())).collect();
    assert_eq!(synced, vec![format!("{}:2.0", target.at("mirror/app")), format!("{}:3.1", target.at("mirror/cli"))]);
    assert!(target.has_manifest("mirror/cli", "3.1", Some(("mirror", "mirror-secret-9"))));
}

#[test]
fn a_malformed_sync_file_names_the_file_line_and_key() {
    let airlock = Airlock::new();
    let file = airlock.path("sync.yaml");
    std::fs::write(&file, "sync:\n  - source: a/b\n    target: c/d\n    tag-regex: 'x'\n").unwrap();
    let run = airlock.run(&["sync", "-f", file.to_str().unwrap()]).code(2);
    assert!(run.stderr.contains(&format!("{}:4:5: unknown field `tag-regex`", file.display())), "{}", run.stderr);
    assert!(run.stderr.contains("tag_regex"), "the accepted keys are listed: {}", run.stderr);
    std::fs::write(&file, "sync:\n  - source: a/b\n    target: c/d\n    semver: '>>2'\n").unwrap();
    airlock.run(&["sync", "-f", file.to_str().unwrap()]).code(2).stderr_has("sync[0].semver: invalid version requirement `>>2`");
    airlock.run(&["sync", "-f", "/nonexistent/sync.yaml"]).code(2).stderr_has("/nonexistent/sync.yaml: cannot read");
}

#[test]
fn shared_base_layers_move_once_across_repositories() {
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let base = layer(340, 400_000);
    let repos = ["one", "two", "three"];
    for (n, repo) in repos.iter().enumerate() {
        push(&source.host(), repo, &image("amd64", &[base.clone(), layer(341 + n as u64, 1000)]), Some("1.0"), None);
    }
    let target_side = FaultProxy::start(&target.host());
    let airlock = Airlock::new();
    let file = airlock.path("sync.yaml");
    let entries: String = repos.iter().map(|r| format!("  - source: {}/{r}\n    target: {}/mirror/{r}\n", source.host(), target_side.host())).collect();
    std::fs::write(&file, format!("sync:\n{entries}")).unwrap();
    let report = airlock.run(&["sync", "-f", file.to_str().unwrap(), "-o", "json"]).success().json();
    assert_eq!(report["summary"]["copied"], 3);
    let base_uploads = target_side.log().into_iter().filter(|r| r.method == "PUT" && r.path.contains(&base.digest)).count();
    assert_eq!(base_uploads, 1, "the shared base layer was uploaded more than once");
    let mounts = target_side.log().into_iter().filter(|r| r.method == "POST" && r.path.contains(&format!("mount={}", base.digest)) && r.status == 201).count();
    assert_eq!(mounts, 2, "the other two repositories mount it");
    let moved: u64 = report["results"].as_array().unwrap().iter().map(|r| r["bytes"].as_u64().unwrap()).sum();
    assert!(moved < 2 * base.bytes.len() as u64, "moved {moved} bytes");
}

#[test]
fn many_repositories_through_one_request_slot_never_stall() {
    // Tag lists of later repositories are in flight while every tag slot is taken: they must
    // still finish, or tags waiting for the registry's only request slot wait forever.
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let repos: Vec<String> = (0..8).map(|n| format!("repo{n}")).collect();
    let mut expected = Vec::new();
    for (n, repo) in repos.iter().enumerate() {
        for tag in ["1", "2", "3"] {
            let img = image("amd64", &[layer(400 + n as u64, 500), layer(500 + n as u64 * 10 + tag.parse::<u64>().unwrap(), 300)]);
            push(&source.host(), repo, &img, Some(tag), None);
            expected.push((repo.clone(), tag, img.digest.clone()));
        }
    }
    let airlock = Airlock::new();
    let file = airlock.path("sync.yaml");
    let entries: String = repos.iter().map(|r| format!("  - source: {}/{r}\n    target: {}/mirror/{r}\n", source.host(), target.host())).collect();
    std::fs::write(&file, format!("sync:\n{entries}")).unwrap();
    let args = ["sync", "-f", file.to_str().unwrap(), "--max-requests", "1", "--jobs", "1", "-o", "json"];
    let report = airlock.run_within(&args, std::time::Duration::from_secs(60)).success().json();
    assert_eq!(report["summary"]["copied"], 24, "{report}");
    for (repo, tag, digest) in expected {
        assert_eq!(target.skopeo_digest(&format!("mirror/{repo}:{tag}")), digest, "mirror/{repo}:{tag}");
    }
    // Warm, through the same single slot.
    let report = airlock.run_within(&args, std::time::Duration::from_secs(60)).success().json();
    assert_eq!(report["summary"]["up_to_date"], 24, "{report}");
}

#[test]
fn a_dry_run_into_a_new_mirror_pulls_no_manifest() {
    // Docker Hub counts a manifest GET as a pull and a HEAD as none: a plan needs no bytes.
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    source_with_tags(&source);
    let source_side = FaultProxy::start(&source.host());
    let airlock = Airlock::new();
    let plan = airlock.run(&["sync", &source_side.at("app"), &target.at("mirror"), "--dry-run", "-o", "json"]).success().json();
    assert_eq!(plan["summary"]["would_copy"], TAGS.len(), "{plan}");
    let gets: Vec<String> = source_side.log().into_iter().filter(|r| r.method == "GET" && r.path.contains("/manifests/")).map(|r| r.path).collect();
    assert!(gets.is_empty(), "a dry run fetched manifests: {gets:?}");
    assert!(tags_at(&target, "mirror").is_empty());
}
