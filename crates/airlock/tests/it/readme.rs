//! README's examples, run as written against local registries (the hosts substituted), so the
//! README cannot drift from the binary.

use crate::harness::fixtures::{image, index, layer, push};
use crate::harness::{Airlock, Auth, Registry};

/// The fenced block of `language` that follows the first line containing `after`.
fn block<'a>(readme: &'a str, after: &str, language: &str) -> Vec<&'a str> {
    let start = readme.find(after).unwrap_or_else(|| panic!("README no longer says `{after}`"));
    let fence = format!("```{language}\n");
    let body = &readme[start..];
    let open = body.find(&fence).unwrap_or_else(|| panic!("no ```{language} block after `{after}`")) + fence.len();
    let close = body[open..].find("```").unwrap();
    body[open..open + close].lines().collect()
}

#[test]
fn the_readme_examples_work_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    // One registry plays the public ones (docker.io, ghcr.io, localhost:5000), one the
    // organisation's (registry.example.com).
    let public = Registry::start(Auth::None);
    let private = Registry::start(Auth::None);
    for (n, tag) in ["3.18", "3.19", "3.20", "3.21"].iter().enumerate() {
        let amd = image("amd64", &[layer(900 + n as u64, 500)]);
        let arm = image("arm64", &[layer(950 + n as u64, 500)]);
        let list = index(&[(&amd, "amd64", None), (&arm, "arm64", Some("v8"))]);
        push(&public.host(), "library/alpine", &list, Some(tag), None);
    }
    let app = index(&[(&image("amd64", &[layer(990, 300)]), "amd64", None), (&image("arm64", &[layer(991, 300)]), "arm64", Some("v8")), (&image("s390x", &[layer(992, 300)]), "s390x", None)]);
    push(&public.host(), "org/app", &app, Some("v2"), None);
    let deploy = image("amd64", &[layer(993, 300)]);
    push(&public.host(), "ironic/deploy", &deploy, Some("latest"), None);
    let substitute = |line: &str| {
        line.replace("docker.io", &public.host())
            .replace("ghcr.io", &public.host())
            .replace("localhost:5000", &public.host())
            .replace("registry.example.com", &private.host())
    };
    let airlock = Airlock::new();
    let work = crate::harness::tempdir();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_airlock")).parent().unwrap().display().to_string();
    let path = format!("{bin}:{}", std::env::var("PATH").unwrap_or_default());
    let commands = block(&readme, "References are", "sh");
    assert!(commands.len() >= 4, "{commands:?}");
    for line in commands {
        let command = substitute(line);
        let mut shell = std::process::Command::new("bash");
        shell.arg("-c").arg(format!("set -eo pipefail; {command}")).current_dir(work.path());
        shell.env("PATH", &path).env("HOME", airlock.home.path()).env("DOCKER_CONFIG", airlock.home.path().join(".docker"));
        let run = crate::harness::run_command(shell, None);
        assert_eq!(run.status, 0, "README: `{line}`\nran: {command}\n{}{}", run.stdout, run.stderr);
    }
    // What they did: the semver filter, the extra tag, the platforms, the digest printed.
    let tags = airlock.run(&["tags", &private.at("mirror/alpine"), "-o", "json"]).success().json();
    let mut tags: Vec<String> = tags["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect();
    tags.sort();
    assert_eq!(tags, ["3.19", "3.20", "3.21"]);
    assert!(airlock.run(&["digest", &private.at("base/alpine:3.20-import1")]).success().stdout.starts_with("sha256:"));
    assert!(work.path().join("mirror/index.json").is_file());

    // The sync.yaml example, as written (its password variable set, as a user would).
    let yaml = block(&readme, "A `sync.yaml`", "yaml").join("\n");
    let file = work.path().join("sync.yaml");
    std::fs::write(&file, substitute(&yaml)).unwrap();
    let report = airlock.run_env(&["sync", "-f", file.to_str().unwrap(), "-o", "json"], &[("DOCKERHUB_TOKEN", "unused-here")]).success().json();
    assert_eq!(report["summary"]["failed"], 0, "{report}");
    assert!(report["summary"]["copied"].as_u64().unwrap() + report["summary"]["up_to_date"].as_u64().unwrap() == 3, "semver >=3.18, latest 3: {report}");

    // The gated mirror's serve.yaml, as written (its root, listener and state moved here): it
    // starts, serves docker.io's (here: the public registry's) alpine through the gate, and
    // leaves out what `allow` does not name.
    let yaml = block(&readme, "A gated pull-through mirror", "yaml").join("\n");
    // Both public names play one registry here; the second mirror keeps a name of its own.
    let yaml = substitute(&yaml.replace("upstream: ghcr.io", "upstream: ghcr.example.com"))
        .replace("/var/lib/airlock/runs", &work.path().join("runs").display().to_string())
        .replace("/var/lib/airlock", &work.path().join("root").display().to_string())
        .replace("0.0.0.0:5000", "127.0.0.1:0");
    let file = work.path().join("serve.yaml");
    std::fs::write(&file, yaml).unwrap();
    let token = [("DOCKERHUB_TOKEN".to_owned(), "unused-here".to_owned())];
    let served = crate::harness::Served::start_with_env(&work.path().join("root"), &["-f", file.to_str().unwrap()], &token);
    let manifest = crate::harness::http_get(&served.url("/v2/library/alpine/manifests/3.20"));
    assert_eq!(manifest.0, 200, "{}", manifest.1);
    let outside = crate::harness::http_get(&served.url("/v2/org/app/manifests/v2"));
    assert!(outside.0 == 404 && outside.1.contains("leave it out"), "{outside:?}");
}
