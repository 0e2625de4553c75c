//! Bad input and missing content: clear errors, the right exit codes, nothing lost.

use crate::harness::fixtures::{image, layer, push};
use crate::harness::{Airlock, Auth, Registry};

#[test]
fn malformed_references_are_usage_errors_naming_the_problem() {
    let airlock = Airlock::new();
    let run = airlock.run(&["copy", "Alpine:3", "localhost:5000/x"]).code(2);
    assert!(run.stderr.contains("invalid reference `Alpine:3`") && run.stderr.contains("lowercase"), "{}", run.stderr);
    airlock.run(&["inspect", "alpine@sha256:1234"]).code(2).stderr_has("64 hex digits");
    airlock.run(&["copy", "a", "b", "--platform", "linux"]).code(2).stderr_has("os/arch");
    airlock.run(&["copy", "a", "b@sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b"]).code(2).stderr_has("names a digest");
    airlock.run(&["copy", "only-one-argument"]).code(2);
    // A path where a reference belongs: the hint says how to name a folder.
    for path in ["./mirror", "/tmp/mirror"] {
        let run = airlock.run(&["copy", "ocidir://examples/hello:1.0", path]).code(2);
        assert!(run.stderr.contains(&format!("hint: for an OCI image-layout folder write `ocidir://{path}`")), "{}", run.stderr);
    }
    // A source folder that is not there is named as such.
    let run = airlock.run(&["copy", "ocidir:///nonexistent/layout:1.0", "ocidir:///tmp/out"]).code(1);
    assert!(run.stderr.contains("the folder `/nonexistent/layout` of `ocidir:///nonexistent/layout:1.0` does not exist"), "{}", run.stderr);
    airlock.run(&["frobnicate"]).code(2);
}

#[test]
fn missing_tags_and_repositories_are_named() {
    let registry = Registry::start(Auth::None);
    let img = image("amd64", &[layer(80, 100)]);
    push(&registry.host(), "app", &img, Some("v1"), None);
    let airlock = Airlock::new();
    let run = airlock.run(&["copy", &registry.at("app:nope"), &registry.at("other:nope")]).code(1);
    assert!(run.stderr.contains(&format!("manifest `nope` not found in {}", registry.at("app"))), "{}", run.stderr);
    assert!(run.stderr.contains("hint: the tags that exist: v1"), "{}", run.stderr);
    airlock.run(&["digest", &registry.at("ghost:v1")]).code(1).stderr_has("not found");
    airlock.run(&["tags", &registry.at("ghost")]).code(1).stderr_has("not found");
    // No tag given: `latest` was assumed, and the user is told so.
    let run = airlock.run(&["inspect", &format!("{}/app", registry.host())]).code(1);
    assert!(run.stderr.contains("no tag was given, so `latest` was assumed; the tags that exist: v1"), "{}", run.stderr);
    let run = airlock.run(&["digest", &registry.at("ghost:v1"), "-o", "json"]).code(1);
    assert!(run.json()["error"]["hint"].as_str().unwrap().contains("does not exist"), "{}", run.stdout);
}

#[test]
fn unreachable_registry_is_a_clear_failure() {
    let port = crate::harness::registry::free_port();
    let started = std::time::Instant::now();
    let run = Airlock::new().run(&["digest", &format!("127.0.0.1:{port}/app:v1"), "--retries", "5"]).code(1);
    // Nobody listens: said in words on the first line, at once (no five attempts with backoff).
    let first = run.stderr.lines().next().unwrap_or("");
    assert!(first.contains(&format!("nothing listens on 127.0.0.1:{port}")), "{}", run.stderr);
    assert!(!run.stderr.contains("gave up"), "a refused connection is not retried: {}", run.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(run.stderr.contains("hint: is the registry running?"), "{}", run.stderr);
    // With -o json the failure is a JSON document on stdout.
    let run = Airlock::new().run(&["digest", &format!("127.0.0.1:{port}/app:v1"), "-o", "json"]).code(1);
    let error = &run.json()["error"];
    assert!(error["message"].as_str().unwrap().contains("nothing listens"), "{error}");
    assert_eq!(error["exit_code"], 1);
    assert!(error["hint"].as_str().unwrap().contains("registry running"), "{error}");
    let usage = Airlock::new().run(&["copy", "Alpine:3", "localhost:5000/x", "-o", "json"]).code(2);
    assert!(usage.json()["error"]["message"].as_str().unwrap().contains("Alpine:3"), "{}", usage.stdout);
}

#[test]
fn inspect_shows_raw_bytes_config_and_json() {
    let registry = Registry::start(Auth::None);
    let img = image("arm64", &[layer(81, 100)]);
    push(&registry.host(), "app", &img, Some("v1"), None);
    let airlock = Airlock::new();
    let raw = airlock.run(&["inspect", "--raw", &registry.at("app:v1")]).success();
    assert_eq!(raw.stdout_bytes, img.manifest);
    let config = airlock.run(&["inspect", "--config", &registry.at("app:v1")]).success();
    assert_eq!(config.stdout_bytes, img.blobs[0].bytes);
    let json = airlock.run(&["inspect", &registry.at("app:v1"), "-o", "json"]).success().json();
    assert_eq!(json["digest"], img.digest);
    assert_eq!(json["layers"][0]["digest"], img.blobs[1].digest);
    let text = airlock.run(&["inspect", &registry.at("app:v1")]).success();
    assert!(text.stdout.contains(&img.digest) && text.stdout.contains("Layers (1"), "{}", text.stdout);
}

#[test]
fn tls_registries_need_their_ca_and_work_with_it() {
    let plain = Registry::start(Auth::None);
    let tls = Registry::start_tls();
    let img = image("amd64", &[layer(82, 5000)]);
    push(&plain.host(), "app", &img, Some("v1"), None);
    let cert_dir = tls.ca_cert().parent().unwrap().display().to_string();
    crate::harness::skopeo(&["copy", "--preserve-digests", "--src-tls-verify=false", "--dest-cert-dir", &cert_dir, &format!("docker://{}", plain.at("app:v1")), &format!("docker://{}", tls.at("app:v1"))]).success();

    let airlock = Airlock::new();
    let untrusted = airlock.run(&["digest", &tls.at("app:v1"), "--retries", "1"]).code(1);
    assert!(untrusted.stderr.contains("https://") && untrusted.stderr.contains("--ca-cert"), "{}", untrusted.stderr);
    let ca = tls.ca_cert().display().to_string();
    let trusted = airlock.run(&["digest", &tls.at("app:v1"), "--ca-cert", &ca]).success();
    assert_eq!(trusted.stdout.trim(), img.digest);
    let copied = airlock.run(&["copy", &tls.at("app:v1"), &plain.at("back:v1"), "--ca-cert", &ca, "-o", "json"]).success().json();
    assert_eq!(copied["digest"], img.digest);
}

#[test]
fn forbidden_is_a_clear_failure_with_a_hint() {
    let registry = Registry::start(Auth::None);
    let img = image("amd64", &[layer(83, 100)]);
    push(&registry.host(), "app", &img, Some("v1"), None);
    let proxy = crate::harness::FaultProxy::start(&registry.host());
    proxy.inject(crate::harness::Fault::Status { path: "/manifests/", status: 403, times: 100, retry_after: None });
    let run = Airlock::new().run(&["digest", &proxy.at("app:v1")]).code(1);
    assert!(run.stderr.contains("403") && run.stderr.contains(&proxy.at("app")) && run.stderr.contains("hint: check the credentials"), "{}", run.stderr);
    assert_eq!(proxy.log().len(), 1, "a 403 is not retried");
}

#[test]
fn a_platform_that_matches_nothing_is_an_error_even_on_a_single_platform_image() {
    let registry = Registry::start(Auth::None);
    let img = image("arm64", &[layer(83, 100)]);
    push(&registry.host(), "app", &img, Some("v1"), None);
    let airlock = Airlock::new();
    let run = airlock.run(&["copy", &registry.at("app:v1"), &registry.at("copy:v1"), "--platform", "linux/amd64"]).code(1);
    assert!(run.stderr.contains("no manifest for platform linux/amd64") && run.stderr.contains("linux/arm64"), "{}", run.stderr);
    airlock.run(&["digest", &registry.at("copy:v1")]).code(1);
    // The platform it has is copied as it is.
    let report = airlock.run(&["copy", &registry.at("app:v1"), &registry.at("copy:v1"), "--platform", "linux/arm64", "-o", "json"]).success().json();
    assert_eq!(report["digest"], img.digest);
}

#[test]
fn completions_a_manual_page_and_the_version_with_its_commit() {
    let airlock = Airlock::new();
    let bash = airlock.run(&["completions", "bash"]).success().stdout;
    assert!(bash.contains("_airlock()") && bash.contains("catalog") && bash.contains("--read-timeout"), "{bash}");
    // The script is valid bash.
    let dir = crate::harness::tempdir();
    std::fs::write(dir.path().join("airlock.bash"), &bash).unwrap();
    let check = std::process::Command::new("bash").arg("-n").arg(dir.path().join("airlock.bash")).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    for shell in ["zsh", "fish"] {
        assert!(airlock.run(&["completions", shell]).success().stdout.contains("airlock"), "{shell}");
    }
    airlock.run(&["completions", "tcsh"]).code(2);
    let man = airlock.run(&["man"]).success().stdout;
    assert!(man.contains(".TH airlock 1") && man.contains("catalog"), "{man}");
    let version = airlock.run(&["--version"]).success().stdout;
    let commit = version.trim().trim_end_matches(')').rsplit('(').next().unwrap().to_owned();
    assert!(version.starts_with("airlock 0.") && (commit == "unknown" || commit.chars().all(|c| c.is_ascii_hexdigit())), "{version}");
}

#[test]
fn every_command_fails_in_json_with_the_exit_code_rule() {
    let airlock = Airlock::new();
    let dir = crate::harness::tempdir();
    let missing = dir.path().join("missing.yaml");
    let missing = missing.to_str().unwrap();
    let port = crate::harness::registry::free_port();
    let nowhere = format!("127.0.0.1:{port}/app:v1");
    let nowhere_oci = format!("oci://{nowhere}");
    // (arguments, exit code): 1 the operation failed, 2 the input is wrong.
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (vec!["copy", &nowhere, "ocidir:///tmp/x"], 1),
        (vec!["sync", "-f", missing], 2),
        (vec!["inspect", &nowhere], 1),
        (vec!["tags", &nowhere], 1),
        (vec!["catalog", "127.0.0.1:1"], 1),
        (vec!["digest", "Bad:Ref"], 2),
        (vec!["delete", &nowhere], 1),
        (vec!["import", "-f", missing], 2),
        (vec!["runs", "list", "-f", missing], 2),
        (vec!["rollback", "node", "-f", missing], 2),
        (vec!["watch", "-f", missing], 2),
        (vec!["discover", "/nonexistent/chart"], 2),
        (vec!["onboard", missing, "--target", "127.0.0.1:1/x"], 2),
        (vec!["push", &nowhere_oci, "/nonexistent/file"], 2),
        (vec!["pull", &nowhere_oci, "--dir", "/tmp"], 1),
        (vec!["artifacts", &nowhere_oci], 1),
        (vec!["gc", "--root", "/nonexistent/root"], 2),
    ];
    for (args, code) in cases {
        let mut args = args.clone();
        args.extend(["-o", "json"]);
        let run = airlock.run(&args).code(code);
        let error = &run.json()["error"];
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()) && error["exit_code"] == code, "{args:?}: {}", run.stdout);
        assert!(!run.stdout.contains('\u{1b}'), "no terminal colour codes in JSON: {args:?}");
    }
}

#[test]
fn help_lists_the_commands_own_flags_first_and_only_flags_that_do_something() {
    let airlock = Airlock::new();
    for command in [&["runs", "list"][..], &["logout"], &["gc"], &["serve"], &["demo"]] {
        let mut args = command.to_vec();
        args.push("--help");
        let help = airlock.run(&args).success().stdout;
        assert!(!help.contains("--jobs") && !help.contains("--max-requests"), "{command:?} offers flags it ignores:\n{help}");
        assert!(help.contains("Global options:"), "{help}");
    }
    let copy = airlock.run(&["copy", "--help"]).success().stdout;
    let (own, rest) = (copy.find("--dest-creds").unwrap(), copy.find("Registry options:").unwrap());
    assert!(own < rest && rest < copy.find("Global options:").unwrap(), "{copy}");
    // One name for a command's file: -f/--file everywhere, `serve -c/--config` kept as an alias.
    let serve = airlock.run(&["serve", "--help"]).success().stdout;
    assert!(serve.contains("-f, --file <FILE>") && serve.contains("--config"), "{serve}");
}

#[test]
fn inspect_takes_a_platform_of_an_index() {
    let registry = Registry::start(Auth::None);
    let amd = image("amd64", &[layer(84, 100)]);
    let arm = image("arm64", &[layer(85, 100)]);
    let list = crate::harness::fixtures::index(&[(&amd, "amd64", None), (&arm, "arm64", Some("v8"))]);
    push(&registry.host(), "multi", &list, Some("v1"), None);
    let airlock = Airlock::new();
    let json = airlock.run(&["inspect", &registry.at("multi:v1"), "--platform", "linux/arm64", "-o", "json"]).success().json();
    assert_eq!(json["digest"], arm.digest);
    let config = airlock.run(&["inspect", &registry.at("multi:v1"), "--platform", "linux/amd64", "--config"]).success();
    assert_eq!(config.stdout_bytes, amd.blobs[0].bytes);
    let none = airlock.run(&["inspect", &registry.at("multi:v1"), "--platform", "linux/s390x"]).code(1);
    assert!(none.stderr.contains("no manifest for linux/s390x") && none.stderr.contains("linux/arm64"), "{}", none.stderr);
}
