//! `airlock serve` as a gated pull-through mirror (`mirrors:` in serve.yaml): clients keep their
//! upstream references; only what the gates promoted is served.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::gate::{eventually, Upstream};
use crate::harness::proxy::{Fault, FaultProxy};
use crate::harness::registry::{Auth, Registry};
use crate::harness::{run_command, Airlock, Podman, Served};

/// The policy gate of the gated-import seed: a red background is refused.
const GATES: &str = "    gates:\n      - name: no-red\n        policy: {forbid_env: {BACKGROUND_COLOR: [red]}}\n";

/// serve.yaml with one mirror per upstream (the first is the default) and the run database in `dir`.
fn serve_yaml(dir: &Path, upstreams: &[&str], extra: &str) -> std::path::PathBuf {
    let mut yaml = format!("state: {}\nmirrors:\n", dir.join("state").display());
    for upstream in upstreams {
        yaml.push_str(&format!("  - upstream: {upstream}\n{GATES}{extra}"));
    }
    let path = dir.join("serve.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

fn mirror(dir: &Path, config: &Path) -> Served {
    Served::start_with(&dir.join("root"), &["-f", config.to_str().unwrap()])
}

/// A manifest GET on the mirror: the status, the digest and the error message.
fn pull(mirror: &Served, path: &str) -> (u16, String, String) {
    let url = mirror.url(path);
    crate::harness::proxy::runtime().block_on(async move {
        let response = reqwest::Client::new()
            .get(&url)
            .header("accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json")
            .send()
            .await
            .expect("the mirror answers");
        let status = response.status().as_u16();
        let digest = response.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&body).ok().and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned)).unwrap_or(body);
        (status, digest, message)
    })
}

fn runs(airlock: &Airlock, config: &Path) -> Vec<serde_json::Value> {
    airlock.run(&["runs", "list", "-f", config.to_str().unwrap(), "-o", "json"]).success().json()["runs"].as_array().unwrap().clone()
}

/// podman with a registries.conf whose mirror for `upstream` is `mirror`.
fn podman_pull(podman: &Podman, dir: &Path, upstream: &str, mirror: &str, image: &str) -> crate::harness::Run {
    let conf = dir.join("registries.conf");
    std::fs::write(
        &conf,
        format!("[[registry]]\nprefix = \"{upstream}\"\nlocation = \"{upstream}\"\ninsecure = true\n\n[[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"),
    )
    .unwrap();
    let mut command = Command::new("podman");
    command.args(podman.global_flags()).args(["pull", image]).env("CONTAINERS_REGISTRIES_CONF", &conf);
    run_command(command, None)
}

#[test]
fn podman_pulls_through_the_gates_keeps_the_last_good_and_survives_upstream_going_away() {
    let dir = crate::harness::tempdir();
    let upstream = Registry::start(Auth::None);
    let proxy = FaultProxy::start(&upstream.host());
    let airlock = Airlock::new();
    let images = Upstream::new(dir.path());
    let good = images.publish_to(&airlock, &upstream.at("library/app:1"), "Orange");
    let proxy_host = proxy.host();
    let config = serve_yaml(dir.path(), &[&proxy.host()], "    wait: 30s\n    interval: 1s\n");
    let served = mirror(dir.path(), &config);
    let podman = Podman::new();

    // The first pull waits for the gates, then gets upstream's digest; upstream saw only the
    // mirror (podman falls back to upstream when a mirror fails: it did not need to).
    let image = format!("{}/library/app:1", proxy.host());
    podman_pull(&podman, dir.path(), &proxy.host(), &served.address, &image).success();
    let inspect = podman.run(&["image", "inspect", "--format", "{{.Digest}}", &image]).success();
    assert_eq!(inspect.stdout.trim(), good);
    let agents = proxy.user_agents();
    assert!(!agents.is_empty() && agents.iter().all(|a| a.starts_with("airlock/")), "upstream saw only the mirror: {agents:?}");
    let seen = runs(&airlock, &config);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!((seen[0]["trigger"].as_str(), seen[0]["status"].as_str(), seen[0]["upstream_digest"].as_str()), (Some("pull"), Some("succeeded"), Some(good.as_str())));

    // Upstream moves app:1 to a build the gate refuses: pulls keep getting the good digest,
    // and the refusal is in the runs.
    let red = images.publish_to(&airlock, &upstream.at("library/app:1"), "RED");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(pull(&served, "/v2/library/app/manifests/1").1, good, "the last good digest is served while upstream is checked");
    assert!(
        eventually(30, || runs(&airlock, &config).iter().any(|r| r["upstream_digest"] == red.as_str() && r["status"] == "failed")),
        "the red build was refused: {:?}",
        runs(&airlock, &config)
    );
    std::thread::sleep(Duration::from_millis(1200));
    let (status, digest, _) = pull(&served, "/v2/library/app/manifests/1");
    assert_eq!((status, digest.as_str()), (200, good.as_str()), "a refused build is never served");
    podman.run(&["rmi", "-f", &image]).success();
    podman_pull(&podman, dir.path(), &proxy.host(), &served.address, &image).success();
    assert_eq!(podman.run(&["image", "inspect", "--format", "{{.Digest}}", &image]).success().stdout.trim(), good);

    // A new tag whose build the gate refuses: the pull fails with the gate and the run named.
    images.publish_to(&airlock, &upstream.at("library/app:red"), "RED");
    let (status, _, message) = pull(&served, "/v2/library/app/manifests/red");
    assert_eq!(status, 404, "{message}");
    assert!(message.contains("refused by airlock's gates (run ") && message.contains("no-red"), "{message}");

    // Upstream gone: known tags are still served; unknown ones fail saying so.
    drop(upstream);
    drop(proxy);
    std::thread::sleep(Duration::from_millis(1200));
    let (status, digest, _) = pull(&served, "/v2/library/app/manifests/1");
    assert_eq!((status, digest.as_str()), (200, good.as_str()), "served while upstream is down");
    let (status, _, message) = pull(&served, "/v2/library/app/manifests/2");
    assert_eq!(status, 404);
    assert!(message.contains(&format!("upstream {proxy_host} is unreachable")), "{message}");
    // Pulled again within the interval, the same answer stands: no second look, no second run.
    let errors = || runs(&airlock, &config).iter().filter(|r| r["tag"] == "2").count();
    let before = errors();
    assert_eq!(pull(&served, "/v2/library/app/manifests/2").2, message);
    assert_eq!(errors(), before, "one look per interval");
    assert!(eventually(10, || runs(&airlock, &config).iter().any(|r| r["status"] == "error" && r["tag"] == "1")), "the failed look upstream is a run");
    let metrics = crate::harness::http_get(&served.url("/metrics")).1;
    assert!(metrics.contains("airlock_mirror_upstream_errors_total"), "{metrics}");
    assert!(!metrics.contains("airlock_mirror_upstream_errors_total 0\n"), "{metrics}");
    assert!(!metrics.contains("airlock_mirror_refusals_total 0\n"), "{metrics}");
}

#[test]
fn twenty_clients_pulling_one_new_tag_start_one_import() {
    let dir = crate::harness::tempdir();
    let upstream = Registry::start(Auth::None);
    let airlock = Airlock::new();
    let images = Upstream::new(dir.path());
    let digest = images.publish_to(&airlock, &upstream.at("library/app:1"), "Green");
    let config = serve_yaml(dir.path(), &[&upstream.host()], "    wait: 30s\n");
    let served = mirror(dir.path(), &config);
    let pulls: Vec<_> = (0..20)
        .map(|_| {
            let address = served.address.clone();
            std::thread::spawn(move || {
                let url = format!("http://{address}/v2/library/app/manifests/1");
                crate::harness::proxy::runtime().block_on(async move {
                    let response = reqwest::Client::new().get(&url).header("accept", "application/vnd.oci.image.manifest.v1+json").send().await.unwrap();
                    (response.status().as_u16(), response.headers().get("docker-content-digest").map(|v| v.to_str().unwrap().to_owned()))
                })
            })
        })
        .collect();
    for pull in pulls {
        assert_eq!(pull.join().unwrap(), (200, Some(digest.clone())));
    }
    let seen = runs(&airlock, &config);
    assert_eq!(seen.len(), 1, "one import for twenty pulls: {seen:?}");
    // gc keeps what the gates promoted (the stable and the unique tag hold it).
    let root = dir.path().join("root");
    airlock.run(&["gc", "--root", root.to_str().unwrap(), "--grace", "0s"]).success();
    let (status, after, message) = pull(&served, "/v2/library/app/manifests/1");
    assert_eq!((status, after.as_str()), (200, digest.as_str()), "{message}");
    let out = crate::harness::tempdir();
    airlock.run(&["copy", &served.at("library/app:1"), &format!("ocidir://{}:1", out.path().display())]).success();
}

#[test]
fn containerd_ns_picks_the_upstream_and_a_rate_limited_upstream_is_asked_once_per_interval() {
    let dir = crate::harness::tempdir();
    let (first, second) = (Registry::start(Auth::None), Registry::start(Auth::None));
    let limited = FaultProxy::start(&second.host());
    let airlock = Airlock::new();
    let images = Upstream::new(dir.path());
    let one = images.publish_to(&airlock, &first.at("library/app:1"), "Orange");
    let two = images.publish_to(&airlock, &second.at("library/app:1"), "Green");
    let config = serve_yaml(dir.path(), &[&first.host(), &limited.host()], "    wait: 30s\n    interval: 1s\n");
    let served = mirror(dir.path(), &config);
    // containerd names the upstream with ?ns=; a path may name it by the mirror's prefix too.
    assert_eq!(pull(&served, &format!("/v2/library/app/manifests/1?ns={}", first.host())).1, one);
    assert_eq!(pull(&served, &format!("/v2/library/app/manifests/1?ns={}", limited.host())).1, two);
    let prefix = limited.host().replace(':', "-");
    assert_eq!(pull(&served, &format!("/v2/{prefix}/library/app/manifests/1")).1, two);
    assert_eq!(pull(&served, "/v2/library/app/manifests/1").1, one, "no ns: the first mirror");
    let (status, _, message) = pull(&served, "/v2/library/app/manifests/1?ns=ghcr.io");
    assert_eq!(status, 404);
    assert!(message.contains("serves no upstream `ghcr.io`"), "{message}");
    // A pull by digest of content upstream has, never pulled by tag: through the gates too.
    let blue = images.publish_to(&airlock, &first.at("library/app:3"), "Blue");
    let (status, digest, message) = pull(&served, &format!("/v2/library/app/manifests/{blue}"));
    assert_eq!((status, digest.as_str()), (200, blue.as_str()), "{message}");
    let red = images.publish_to(&airlock, &first.at("library/app:4"), "red");
    let (status, _, message) = pull(&served, &format!("/v2/library/app/manifests/{red}"));
    assert_eq!(status, 404);
    assert!(message.contains(&format!("library/app@{red} was refused by airlock's gates (run ")), "{message}");
    let by_digest: Vec<_> = runs(&airlock, &config).into_iter().filter(|r| r["tag"] == blue.as_str() || r["tag"] == red.as_str()).collect();
    assert_eq!(by_digest.len(), 2, "{by_digest:?}");
    // Names a client makes up cost no run and no memory beyond a bound: a tag upstream lacks
    // is a 404 saying so, and a path that is no repository name never reaches the mirror.
    let before = runs(&airlock, &config).len();
    for n in 0..5 {
        let (status, _, message) = pull(&served, &format!("/v2/library/app/manifests/made-up-{n}"));
        assert!(status == 404 && message.contains("not found"), "{message}");
    }
    assert_eq!(runs(&airlock, &config).len(), before, "no run for tags upstream lacks");
    for hostile in ["/v2/library/../etc/manifests/1", "/v2/library/app/manifests/..", "/v2/Library/App/manifests/1"] {
        let (status, _, message) = pull(&served, hostile);
        assert!((400..500).contains(&status), "{hostile}: {status} {message}");
    }
    assert_eq!(runs(&airlock, &config).len(), before);
    // Blobs and tags come through the same mapping.
    let tags = crate::harness::http_get(&served.url(&format!("/v2/library/app/tags/list?ns={}", limited.host()))).1;
    assert!(tags.contains("\"1\""), "{tags}");
    // Pushes are refused: the mirror only serves what the gates promoted.
    let push = crate::harness::proxy::runtime().block_on(reqwest::Client::new().post(served.url("/v2/library/app/blobs/uploads/")).send()).unwrap();
    assert_eq!(push.status().as_u16(), 405);

    // The second upstream starts answering 429: cached pulls keep working, and upstream is
    // asked at most once per tag per interval however often clients pull.
    limited.clear_log();
    limited.inject(Fault::Status { path: "/manifests/", status: 429, times: 10_000, retry_after: Some(30) });
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let (status, digest, message) = pull(&served, &format!("/v2/library/app/manifests/1?ns={}", limited.host()));
        assert_eq!((status, digest.as_str()), (200, two.as_str()), "{message}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let asked = limited.log().iter().filter(|l| l.path.contains("/manifests/")).count();
    assert!((1..=5).contains(&asked), "at most one look per second over 4 s, whatever the pulls: {asked}");
    // The refused looks are runs and counted.
    let refused = runs(&airlock, &config).into_iter().filter(|r| r["status"] == "error" && r["reason"].as_str().unwrap_or_default().contains("429")).count();
    assert!(refused >= 1, "{:?}", runs(&airlock, &config));
    let metrics = crate::harness::http_get(&served.url("/metrics")).1;
    assert!(!metrics.contains("airlock_mirror_upstream_errors_total 0\n"), "{metrics}");
}

#[test]
fn a_mirrors_rules_apply_to_the_names_clients_use() {
    let dir = crate::harness::tempdir();
    let upstream = Registry::start(Auth::None);
    let airlock = Airlock::new();
    let images = Upstream::new(dir.path());
    let digest = images.publish_to(&airlock, &upstream.at("library/app:1"), "Orange");
    images.publish_to(&airlock, &upstream.at("private/app:1"), "Orange");
    let htpasswd = dir.path().join("htpasswd");
    crate::harness::write_htpasswd(&htpasswd, &[("ci", "ci-Secret-1")]);
    let config = serve_yaml(dir.path(), &[&upstream.host()], "    wait: 30s\n");
    let text = std::fs::read_to_string(&config).unwrap();
    let rules = format!(
        "auth:\n  htpasswd: {}\n  rules:\n    - repositories: 'library/*'\n      anonymous: [pull]\n    - repositories: 'private/*'\n      users: {{ci: [pull]}}\n",
        htpasswd.display()
    );
    std::fs::write(&config, format!("{rules}{text}")).unwrap();
    let served = mirror(dir.path(), &config);
    // Anonymous pulls of what the rules open to anyone go through the gates and are served.
    let (status, served_digest, message) = pull(&served, "/v2/library/app/manifests/1");
    assert_eq!((status, served_digest.as_str()), (200, digest.as_str()), "{message}");
    // Elsewhere a client must authenticate first: nothing is imported for it.
    let (status, _, _) = pull(&served, "/v2/private/app/manifests/1");
    assert_eq!(status, 401);
    let seen = runs(&airlock, &config);
    assert_eq!(seen.len(), 1, "only the allowed pull started an import: {seen:?}");
    let authorised = crate::harness::proxy::runtime().block_on(async {
        let response = reqwest::Client::new()
            .get(served.url("/v2/private/app/manifests/1"))
            .basic_auth("ci", Some("ci-Secret-1"))
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        response.status().as_u16()
    });
    assert_eq!(authorised, 200);
    // The web page shows each mirror run to those the rules let pull its repository.
    let (status, page) = crate::harness::http_get(&served.url("/ui/runs"));
    assert_eq!(status, 200, "{page}");
    // (minijinja writes `/` as `&#x2f;` in text.)
    assert!(page.contains("library&#x2f;app:1") && !page.contains("private") && page.contains("1 runs"), "{page}");
}
