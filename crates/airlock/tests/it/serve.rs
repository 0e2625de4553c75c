//! `airlock serve` against real clients: skopeo in and out, airlock copy both ways with
//! docker-registry, referrers through the API, restarts.

use crate::harness::fixtures::{image, index, layer, push, push_referrers, referrer};
use crate::harness::{skopeo, skopeo_digest, Airlock, Auth, Registry, Served};

use crate::harness::http_get as get;

#[test]
fn skopeo_copies_in_and_out_with_the_same_digests() {
    let upstream = Registry::start(Auth::None);
    let img = image("amd64", &[layer(400, 300_000), layer(401, 1000)]);
    push(&upstream.host(), "app", &img, Some("v1"), None);
    let root = crate::harness::tempdir();
    let served = Served::start(root.path());

    skopeo(&["copy", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false", &format!("docker://{}", upstream.at("app:v1")), &format!("docker://{}", served.at("team/app:v1"))]).success();
    assert_eq!(skopeo_digest(&format!("docker://{}", served.at("team/app:v1"))), img.digest);
    let out = crate::harness::tempdir();
    skopeo(&["copy", "--preserve-digests", "--src-tls-verify=false", &format!("docker://{}", served.at("team/app:v1")), &format!("oci:{}:v1", out.path().display())]).success();
    assert_eq!(skopeo_digest(&format!("oci:{}:v1", out.path().display())), img.digest);
    let tags = skopeo(&["list-tags", "--tls-verify=false", &format!("docker://{}", served.at("team/app"))]).success().json();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));
}

#[test]
fn airlock_copies_between_docker_registry_and_serve_with_referrers_through_the_api() {
    let upstream = Registry::start(Auth::None);
    let amd = image("amd64", &[layer(402, 5000)]);
    let arm = image("arm64", &[layer(403, 5000)]);
    let idx = index(&[(&amd, "amd64", None), (&arm, "arm64", None)]);
    push(&upstream.host(), "multi", &idx, Some("1.0"), None);
    let signature = referrer(&idx, "application/vnd.dev.cosign.artifact.sig.v1+json", b"index-signature");
    push_referrers(&upstream.host(), "multi", &idx, &[&signature], None);
    let root = crate::harness::tempdir();
    let served = Served::start(root.path());
    let airlock = Airlock::new();

    let report = airlock.run(&["copy", &upstream.at("multi:1.0"), &served.at("multi:1.0"), "-o", "json"]).success().json();
    assert_eq!(report["digest"], idx.digest);
    assert_eq!(report["referrers_copied"], 1);
    // Served through the OCI 1.1 referrers API, so no fallback tag was needed.
    let (status, body) = get(&served.url(&format!("/v2/multi/referrers/{}", idx.digest)));
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["manifests"][0]["digest"], signature.digest);
    let tags = airlock.run(&["tags", &served.at("multi")]).success();
    assert_eq!(tags.stdout.trim(), "1.0", "no sha256-<hex> tag in a registry with the referrers API");

    // And back out to a registry without the API.
    let back = Registry::start(Auth::None);
    let report = airlock.run(&["copy", &served.at("multi:1.0"), &back.at("multi:1.0"), "-o", "json"]).success().json();
    assert_eq!(report["referrers_copied"], 1);
    assert_eq!(back.skopeo_digest("multi:1.0"), idx.digest);
    assert_eq!(back.skopeo_digest(&format!("multi@{}", signature.digest)), signature.digest);
}

#[test]
fn content_and_upload_sessions_survive_a_kill() {
    let root = crate::harness::tempdir();
    let served = Served::start(root.path());
    let airlock = Airlock::new();
    let example = format!("ocidir://{}/../../examples/hello:1.0", env!("CARGO_MANIFEST_DIR"));
    airlock.run(&["copy", &example, &served.at("hello:1.0")]).success();
    let digest = airlock.run(&["digest", &served.at("hello:1.0")]).success().stdout.trim().to_owned();

    // Half an upload, then SIGKILL.
    let data = crate::harness::fixtures::noise(404, 100_000);
    let location = crate::harness::proxy::runtime().block_on({
        let url = served.url("/v2/hello/blobs/uploads/");
        let first = data[..60_000].to_vec();
        async move {
            let client = reqwest::Client::new();
            let start = client.post(&url).send().await.unwrap();
            let location = start.headers()["location"].to_str().unwrap().to_owned();
            let base = url.split("/v2/").next().unwrap().to_owned();
            let patch = client.patch(format!("{base}{location}")).header("content-range", "0-59999").body(first).send().await.unwrap();
            assert_eq!(patch.status(), 202);
            format!("{base}{location}")
        }
    });
    served.kill();

    let served = Served::start(root.path());
    assert_eq!(airlock.run(&["digest", &served.at("hello:1.0")]).success().stdout.trim(), digest);
    let location = location.replace(location.split("/v2/").next().unwrap(), &format!("http://{}", served.address));
    let blob_digest = crate::harness::sha256(&data);
    crate::harness::proxy::runtime().block_on({
        let rest = data[60_000..].to_vec();
        let blob_url = served.url(&format!("/v2/hello/blobs/{blob_digest}"));
        async move {
            let client = reqwest::Client::new();
            let status = client.get(&location).send().await.unwrap();
            assert_eq!(status.status(), 204);
            assert_eq!(status.headers()["range"], "0-59999", "the session kept its bytes across the restart");
            let done = client.put(format!("{location}?digest={blob_digest}")).header("content-range", "60000-99999").body(rest).send().await.unwrap();
            assert_eq!(done.status(), 201);
            let blob = client.get(&blob_url).send().await.unwrap().bytes().await.unwrap();
            assert_eq!(crate::harness::sha256(&blob), blob_digest);
        }
    });
}

/// A registry with users alice and bob (bcrypt, via `htpasswd -B`) and rules, in token or basic mode.
fn guarded(root: &std::path::Path, token: bool, extra: &[&str]) -> Served {
    let htpasswd = root.join("htpasswd");
    crate::harness::write_htpasswd(&htpasswd, &[("alice", "alice-Secret-1"), ("bob", "bob-Secret-2")]);
    let config = root.join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  htpasswd: {}\n  token: {token}\n  rules:\n    - repositories: 'public/*'\n      anonymous: [pull]\n      users: {{alice: [pull, push]}}\n    - repositories: 'bob/*'\n      users: {{bob: [pull, push, delete]}}\n    - repositories: 'alice/*'\n      users: {{alice: [pull, push, delete]}}\n",
            htpasswd.display()
        ),
    )
    .unwrap();
    Served::start_with(&root.join("data"), &[&["--config", config.to_str().unwrap()], extra].concat())
}

#[test]
fn token_auth_with_rules_for_skopeo_and_airlock() {
    let upstream = Registry::start(Auth::None);
    let img = image("amd64", &[layer(410, 20_000)]);
    push(&upstream.host(), "app", &img, Some("v1"), None);
    let root = crate::harness::tempdir();
    let served = guarded(root.path(), true, &[]);
    let airlock = Airlock::new();
    let authfile = airlock.authfile();
    let authfile = authfile.to_str().unwrap();

    // skopeo logs in through the token service and pushes where alice may.
    skopeo(&["login", "--tls-verify=false", "--authfile", authfile, "-u", "alice", "-p", "alice-Secret-1", &served.address]).success();
    skopeo(&["copy", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false", "--authfile", authfile, &format!("docker://{}", upstream.at("app:v1")), &format!("docker://{}", served.at("public/app:v1"))]).success();
    // Anyone may pull public/*, nobody anonymous elsewhere.
    assert_eq!(airlock.run(&["digest", &served.at("public/app:v1")]).success().stdout.trim(), img.digest);
    airlock.run(&["copy", &upstream.at("app:v1"), &served.at("alice/app:v1")]).code(1).stderr_has("401");

    // airlock login, then a copy with the stored credentials.
    let stored = airlock.path("airlock-auth.json");
    let stored = stored.to_str().unwrap();
    airlock.run(&["login", &served.address, "-u", "alice", "-p", "wrong", "--authfile", stored]).code(1);
    airlock.run(&["login", &served.address, "-u", "alice", "-p", "alice-Secret-1", "--authfile", stored]).success();
    let report = airlock.run(&["copy", &served.at("public/app:v1"), &served.at("alice/app:v1"), "--authfile", stored, "-o", "json"]).success().json();
    assert_eq!(report["blobs_mounted"], 2, "alice may read public/app, so the blobs are mounted");

    // Deleting takes the `delete` action: alice has it in alice/*, not in public/*.
    let refused = airlock.run(&["delete", &served.at("public/app:v1"), "--authfile", stored]).code(1);
    assert!(refused.stderr.contains("public/app"), "{}", refused.stderr);
    assert_eq!(airlock.run(&["digest", &served.at("public/app:v1")]).success().stdout.trim(), img.digest);
    let deleted = airlock.run(&["delete", &served.at("alice/app:v1"), "--authfile", stored, "-o", "json"]).success().json();
    assert_eq!((deleted["digest"].as_str(), deleted["deleted"].as_bool()), (Some(img.digest.as_str()), Some(true)));
    airlock.run(&["digest", &served.at("alice/app:v1"), "--authfile", stored]).code(1).stderr_has("not found");

    // bob's token opens bob/* only.
    let bob = "bob:bob-Secret-2";
    airlock.run(&["copy", &served.at("public/app:v1"), &served.at("bob/app:v1"), "--src-creds", bob, "--dest-creds", bob]).success();
    airlock.run(&["digest", &served.at("alice/app:v1"), "--creds", bob]).code(1);
    airlock.run(&["copy", &served.at("bob/app:v1"), &served.at("alice/x:v1"), "--src-creds", bob, "--dest-creds", bob]).code(1);
    // podman logs in through the same token service.
    let podman = crate::harness::Podman::new();
    let podman_auth = airlock.path("podman-auth.json");
    podman.run(&["login", "--tls-verify=false", "--authfile", podman_auth.to_str().unwrap(), "-u", "alice", "-p", "wrong", &served.address]).code(125);
    podman.run(&["login", "--tls-verify=false", "--authfile", podman_auth.to_str().unwrap(), "-u", "alice", "-p", "alice-Secret-1", &served.address]).success();
    // Secrets stay out of the server's answers and airlock's output.
    let run = airlock.run(&["digest", &served.at("bob/app:v1"), "--creds", bob, "-vvv"]).success();
    assert!(!run.stderr.contains("bob-Secret-2"));
}

#[test]
fn basic_auth_refuses_the_wrong_and_missing_credentials() {
    let root = crate::harness::tempdir();
    let served = guarded(root.path(), false, &[]);
    let airlock = Airlock::new();
    let example = format!("ocidir://{}/../../examples/hello:1.0", env!("CARGO_MANIFEST_DIR"));
    airlock.run(&["copy", &example, &served.at("bob/hello:1.0")]).code(1).stderr_has("401");
    airlock.run(&["copy", &example, &served.at("bob/hello:1.0"), "--dest-creds", "bob:nope"]).code(1).stderr_has("refused");
    airlock.run(&["copy", &example, &served.at("bob/hello:1.0"), "--dest-creds", "alice:alice-Secret-1"]).code(1).stderr_has("403");
    airlock.run(&["copy", &example, &served.at("bob/hello:1.0"), "--dest-creds", "bob:bob-Secret-2"]).success();
    let (status, _) = get(&served.url("/v2/bob/hello/manifests/1.0"));
    assert_eq!(status, 401);
}

#[test]
fn gc_removes_only_what_no_manifest_reaches() {
    let root = crate::harness::tempdir();
    let served = Served::start(root.path());
    let airlock = Airlock::new();
    let example = format!("ocidir://{}/../../examples/hello:1.0", env!("CARGO_MANIFEST_DIR"));
    airlock.run(&["copy", &example, &served.at("keep:1.0")]).success();
    airlock.run(&["copy", &example, &served.at("drop:1.0")]).success();
    let upstream = Registry::start(Auth::None);
    let other = image("amd64", &[layer(420, 50_000)]);
    push(&upstream.host(), "other", &other, Some("v1"), None);
    airlock.run(&["copy", &upstream.at("other:v1"), &served.at("other:v1")]).success();
    crate::harness::proxy::runtime().block_on({
        let url = served.url(&format!("/v2/other/manifests/{}", other.digest));
        async move { assert_eq!(reqwest::Client::new().delete(&url).send().await.unwrap().status(), 202) }
    });
    let root_arg = root.path().to_str().unwrap();
    let dry = airlock.run(&["gc", "--root", root_arg, "--dry-run", "--grace", "0s", "-o", "json"]).success().json();
    assert_eq!(dry["removed"], 3, "the deleted image's manifest, config and layer");
    let done = airlock.run(&["gc", "--root", root_arg, "--grace", "0s"]).success();
    assert!(done.stdout.starts_with("removed 3 blobs"), "{}", done.stdout);
    // The hello image, in two repositories, is whole.
    let out = crate::harness::tempdir();
    airlock.run(&["copy", &served.at("keep:1.0"), &format!("ocidir://{}:1.0", out.path().display())]).success();
    assert_eq!(airlock.run(&["digest", &served.at("drop:1.0")]).success().stdout.trim(), airlock.run(&["digest", &served.at("keep:1.0")]).success().stdout.trim());
    airlock.run(&["gc", "--root", "/nonexistent"]).code(2).stderr_has("not a serve root");
}

#[test]
fn oras_artifacts_go_through_serve_and_docker_registry_unchanged() {
    let root = crate::harness::tempdir();
    let served = Served::start(root.path());
    let work = crate::harness::tempdir();
    let disk = work.path().join("disk.qcow2");
    std::fs::write(&disk, crate::harness::fixtures::noise(430, 70_000)).unwrap();
    let pushed = crate::harness::oras(&["push", &served.at("ironic/disk:v1"), disk.to_str().unwrap(), "org.example.disktype=qcow2"]).success().json();
    let digest = pushed["digest"].as_str().unwrap().to_owned();
    let airlock = Airlock::new();
    assert_eq!(airlock.run(&["digest", &served.at("ironic/disk:v1")]).success().stdout.trim(), digest);
    let from_serve = crate::harness::tempdir();
    let pulled = crate::harness::oras(&["pull", &served.at("ironic/disk:v1"), from_serve.path().to_str().unwrap()]).success().json();
    assert_eq!(std::fs::read(pulled["files"][0].as_str().unwrap()).unwrap(), std::fs::read(&disk).unwrap());

    // airlock carries it to docker-registry, oras pulls it from there, byte for byte.
    let upstream = Registry::start(Auth::None);
    airlock.run(&["copy", &served.at("ironic/disk:v1"), &upstream.at("ironic/disk:v1")]).success();
    assert_eq!(upstream.skopeo_digest("ironic/disk:v1"), digest);
    let out = crate::harness::tempdir();
    let pulled = crate::harness::oras(&["pull", &upstream.at("ironic/disk:v1"), out.path().to_str().unwrap()]).success().json();
    let file = pulled["files"][0].as_str().unwrap();
    assert_eq!(std::fs::read(file).unwrap(), std::fs::read(&disk).unwrap());
    let inspect = airlock.run(&["inspect", &upstream.at("ironic/disk:v1"), "-o", "json"]).success().json();
    assert_eq!(inspect["layers"][0]["size"], 70_000);
}

#[test]
fn https_with_a_certificate_from_files() {
    let dir = crate::harness::tempdir();
    let (cert, key) = crate::harness::registry::tls_files(dir.path());
    // Token auth over TLS: the challenge must name an https realm.
    let served = guarded(dir.path(), true, &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let airlock = Airlock::new();
    let bob = "bob:bob-Secret-2";
    let example = format!("ocidir://{}/../../examples/hello:1.0", env!("CARGO_MANIFEST_DIR"));
    let ca = dir.path().join("certs/ca.crt");
    let ca = ca.to_str().unwrap();
    airlock.run(&["copy", &example, &served.at("bob/hello:1.0"), "--retries", "1", "--dest-creds", bob]).code(1).stderr_has("--ca-cert");
    airlock.run(&["copy", &example, &served.at("bob/hello:1.0"), "--ca-cert", ca, "--dest-creds", bob]).success();
    let digest = airlock.run(&["digest", &served.at("bob/hello:1.0"), "--ca-cert", ca, "--creds", bob]).success().stdout.trim().to_owned();
    let cert_dir = dir.path().join("certs");
    let raw = skopeo(&["inspect", "--raw", "--cert-dir", cert_dir.to_str().unwrap(), "--creds", bob, &format!("docker://{}", served.at("bob/hello:1.0"))]).success();
    assert_eq!(crate::harness::sha256(&raw.stdout_bytes), digest);
}

#[test]
fn pushes_and_deletes_are_announced_to_webhooks_with_retries() {
    let sink = crate::harness::proxy::EventSink::start(1);
    let dir = crate::harness::tempdir();
    let config = dir.path().join("serve.yaml");
    std::fs::write(&config, format!("notifications:\n  - url: {}\n", sink.url())).unwrap();
    let served = Served::start_with(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let airlock = Airlock::new();
    let example = format!("ocidir://{}/../../examples/hello:1.0", env!("CARGO_MANIFEST_DIR"));
    airlock.run(&["copy", &example, &served.at("team/hello:1.0")]).success();
    let digest = airlock.run(&["digest", &served.at("team/hello:1.0")]).success().stdout.trim().to_owned();
    let events = sink.wait_for(1);
    assert_eq!(events.len(), 1, "the push was announced, after a refused first delivery");
    let event = &events[0]["events"][0];
    assert_eq!(events[0]["content_type"], "application/vnd.docker.distribution.events.v1+json");
    assert_eq!(event["action"], "push");
    assert_eq!(event["target"]["repository"], "team/hello");
    assert_eq!(event["target"]["tag"], "1.0");
    assert_eq!(event["target"]["digest"], digest);
    assert_eq!(event["target"]["mediaType"], "application/vnd.oci.image.manifest.v1+json");

    crate::harness::proxy::runtime().block_on({
        let url = served.url(&format!("/v2/team/hello/manifests/{digest}"));
        async move { assert_eq!(reqwest::Client::new().delete(&url).send().await.unwrap().status(), 202) }
    });
    let events = sink.wait_for(2);
    let deleted = &events[1]["events"][0];
    assert_eq!((deleted["action"].as_str(), deleted["target"]["digest"].as_str()), (Some("delete"), Some(digest.as_str())));
}

#[test]
fn podman_pushes_pulls_and_runs_images_served_by_airlock() {
    let work = crate::harness::tempdir();
    let layout = crate::harness::busybox_layout(work.path());
    let root = crate::harness::tempdir();
    let served = Served::start(root.path());
    let airlock = Airlock::new();
    airlock.run(&["copy", &layout, &served.at("tools/busybox:1.0")]).success();
    let digest = airlock.run(&["digest", &served.at("tools/busybox:1.0")]).success().stdout.trim().to_owned();

    podman_round_trip(&served, &airlock);
    assert!(!digest.is_empty());
}

/// podman pulls and runs `tools/busybox:1.0` from `served`, pushes it back as
/// `mirror/busybox:1.0` (whose manifest reads back with the digest of its bytes) and runs that.
pub(crate) fn podman_round_trip(served: &Served, airlock: &Airlock) {
    let podman = crate::harness::Podman::new();
    podman.run(&["pull", "--tls-verify=false", &served.at("tools/busybox:1.0")]).success();
    let run = podman.run_container(&served.at("tools/busybox:1.0"), &[]).success();
    assert_eq!(run.stdout.trim(), "hello from a container served by airlock");
    podman.run(&["push", "--tls-verify=false", &served.at("tools/busybox:1.0"), &format!("docker://{}", served.at("mirror/busybox:1.0"))]).success();
    let pushed = airlock.run(&["inspect", &served.at("mirror/busybox:1.0"), "-o", "json"]).success().json();
    let raw = airlock.run(&["inspect", "--raw", &served.at("mirror/busybox:1.0")]).success();
    assert_eq!(pushed["digest"].as_str().unwrap(), crate::harness::sha256(&raw.stdout_bytes));
    let run = podman.run_container(&served.at("mirror/busybox:1.0"), &[]).success();
    assert_eq!(run.stdout.trim(), "hello from a container served by airlock");
}

#[test]
fn sigterm_lets_a_download_in_flight_finish() {
    let upstream = Registry::start(Auth::None);
    let img = image("amd64", &[layer(440, 24 * 1024 * 1024)]);
    push(&upstream.host(), "big", &img, Some("v1"), None);
    let root = crate::harness::tempdir();
    let served = Served::start(root.path());
    let airlock = Airlock::new();
    airlock.run(&["copy", &upstream.at("big:v1"), &served.at("big:v1")]).success();
    let layer_digest = img.blobs[1].digest.clone();
    let url = served.url(&format!("/v2/big/blobs/{layer_digest}"));
    // Start a download, read its first bytes, then ask the server to stop.
    let (sender, receiver) = std::sync::mpsc::channel();
    let download = std::thread::spawn(move || {
        crate::harness::proxy::runtime().block_on(async move {
            let mut response = reqwest::get(&url).await.unwrap();
            let mut body = Vec::new();
            body.extend_from_slice(&response.chunk().await.unwrap().unwrap());
            sender.send(()).unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            while let Some(chunk) = response.chunk().await.unwrap() {
                body.extend_from_slice(&chunk);
            }
            crate::harness::sha256(&body)
        })
    });
    receiver.recv().unwrap();
    let status = served.terminate();
    assert!(status.success(), "airlock serve exited with {status} on SIGTERM");
    assert_eq!(download.join().unwrap(), layer_digest, "the download in flight was cut by the shutdown");
}

#[test]
fn a_kill_in_the_middle_of_a_chunk_leaves_a_resumable_session_and_no_blob() {
    let root = crate::harness::tempdir();
    let served = Served::start(root.path());
    let data = crate::harness::fixtures::noise(450, 4 * 1024 * 1024);
    let digest = crate::harness::sha256(&data);
    let base = format!("http://{}", served.address);
    let location = crate::harness::proxy::runtime().block_on({
        let base = base.clone();
        async move {
            let start = reqwest::Client::new().post(format!("{base}/v2/app/blobs/uploads/")).send().await.unwrap();
            start.headers()["location"].to_str().unwrap().to_owned()
        }
    });
    // A PATCH whose body trickles: the server is killed while it is still arriving.
    let (sent_some, sent) = std::sync::mpsc::channel();
    let patch = std::thread::spawn({
        let url = format!("{base}{location}");
        let first = data[..1024 * 1024].to_vec();
        move || {
            crate::harness::proxy::runtime().block_on(async move {
                let chunks = futures::stream::unfold((first, 0usize, Some(sent_some)), |(bytes, at, signal)| async move {
                    if at >= bytes.len() {
                        return None;
                    }
                    if at >= 256 * 1024 {
                        if let Some(signal) = &signal {
                            let _ = signal.send(());
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    let chunk = bytes::Bytes::copy_from_slice(&bytes[at..(at + 64 * 1024).min(bytes.len())]);
                    Some((Ok::<_, std::io::Error>(chunk), (bytes, at + 64 * 1024, signal)))
                });
                let _ = reqwest::Client::new().patch(&url).body(reqwest::Body::wrap_stream(chunks)).send().await;
            })
        }
    });
    sent.recv().unwrap();
    // Kill once the server has written part of the chunk (its upload status says so).
    let status_url = format!("{base}{location}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let seen = loop {
        let range = crate::harness::proxy::runtime().block_on({
            let url = status_url.clone();
            async move { reqwest::get(&url).await.unwrap().headers()["range"].to_str().unwrap().to_owned() }
        });
        let received: usize = range.trim_start_matches("0-").parse::<usize>().unwrap() + 1;
        if range != "0-0" {
            break received;
        }
        assert!(std::time::Instant::now() < deadline, "the server never received any of the chunk");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    served.kill();
    patch.join().unwrap();

    let served = Served::start(root.path());
    let url = format!("http://{}{location}", served.address);
    let blob_url = served.url(&format!("/v2/app/blobs/{digest}"));
    crate::harness::proxy::runtime().block_on(async move {
        let client = reqwest::Client::new();
        assert_eq!(client.head(&blob_url).send().await.unwrap().status(), 404, "a partial upload is never a blob");
        let status = client.get(&url).send().await.unwrap();
        assert_eq!(status.status(), 204);
        let range = status.headers()["range"].to_str().unwrap().to_owned();
        let received: usize = range.trim_start_matches("0-").parse::<usize>().unwrap() + 1;
        assert!(received >= seen && received < 1024 * 1024, "the session kept what arrived ({seen} seen before the kill): {range}");
        // Resume from where the server says it is.
        let rest = data[received..].to_vec();
        let done = client
            .put(format!("{url}?digest={digest}"))
            .header("content-range", format!("{received}-{}", data.len() - 1))
            .body(rest)
            .send()
            .await
            .unwrap();
        assert_eq!(done.status(), 201);
        let blob = client.get(&blob_url).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(crate::harness::sha256(&blob), digest);
    });
}

#[test]
fn root_references_read_and_write_a_serve_folder_without_a_server() {
    let upstream = Registry::start(Auth::None);
    let amd = image("amd64", &[layer(460, 30_000)]);
    let arm = image("arm64", &[layer(461, 30_000)]);
    let idx = index(&[(&amd, "amd64", None), (&arm, "arm64", None)]);
    push(&upstream.host(), "multi", &idx, Some("1.0"), None);
    let signature = referrer(&idx, "application/vnd.dev.cosign.artifact.sig.v1+json", b"sig");
    push_referrers(&upstream.host(), "multi", &idx, &[&signature], None);
    let root = crate::harness::tempdir();
    let target = format!("root://{}//mirror/multi:1.0", root.path().display());
    let airlock = Airlock::new();
    let report = airlock.run(&["copy", &upstream.at("multi:1.0"), &target, "-o", "json"]).success().json();
    assert_eq!((report["digest"].as_str(), report["referrers_copied"].as_u64()), (Some(idx.digest.as_str()), Some(1)));
    // Within one root, another repository mounts instead of copying.
    let again = airlock.run(&["copy", &target, &format!("root://{}//other/multi:1.0", root.path().display()), "-o", "json"]).success().json();
    assert_eq!(again["blobs_copied"], 0);

    // A server on that folder serves what was written, to skopeo.
    let served = Served::start(root.path());
    assert_eq!(skopeo_digest(&format!("docker://{}", served.at("mirror/multi:1.0"))), idx.digest);
    assert_eq!(skopeo_digest(&format!("docker://{}", served.at("other/multi:1.0"))), idx.digest);
    drop(served);

    // Corrupt bytes never land in the folder.
    let proxy = crate::harness::FaultProxy::start(&upstream.host());
    proxy.inject(crate::harness::Fault::FlipBlobBytes);
    let other = image("amd64", &[layer(462, 10_000)]);
    push(&upstream.host(), "flip", &other, Some("v1"), None);
    let flipped = format!("root://{}//flip:v1", root.path().display());
    airlock.run(&["copy", &proxy.at("flip:v1"), &flipped]).code(1).stderr_has("digest mismatch");
    airlock.run(&["digest", &flipped]).code(1).stderr_has("not found");
    assert!(std::fs::read_dir(root.path().join("uploads")).map(|d| d.count()).unwrap_or(0) == 0, "no upload session left behind");
}

/// Sends `request` on a new connection and reads the answer to its end (the server closes the
/// connection) or until 3 s of silence.
fn raw_exchange(address: &str, request: &[u8]) -> (String, bool) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(3))).unwrap();
    // The server may answer before reading the body, and close: a failed write is no failure.
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    let closed = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break true,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

#[test]
fn a_refused_upload_closes_the_connection_it_did_not_read() {
    let root = crate::harness::tempdir();
    let served = guarded(root.path(), false, &[]);
    let body = vec![b'x'; 100_000];
    let mut request = format!(
        "PUT /v2/bob/app/blobs/uploads/abc?digest=sha256:{} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        "0".repeat(64),
        served.address,
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    // A second request on the same connection: a client that reused it would send this.
    request.extend_from_slice(format!("GET /v2/ HTTP/1.1\r\nHost: {}\r\n\r\n", served.address).as_bytes());
    let (answer, closed) = raw_exchange(&served.address, &request);
    let head = answer.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 401"), "{answer}");
    assert!(head.contains("connection: close"), "{answer}");
    assert!(closed, "the connection stays open after an unread body: {answer}");
    assert_eq!(head.matches("http/1.1 ").count(), 1, "the unread body was taken for a request: {answer}");
}

#[test]
fn failed_logins_back_off_and_the_token_key_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let root = crate::harness::tempdir();
    let served = guarded(root.path(), true, &[]);
    let mode = std::fs::metadata(root.path().join("data/.token-key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token_request = |password: &str| {
        use base64::Engine as _;
        let credentials = base64::engine::general_purpose::STANDARD.encode(format!("bob:{password}"));
        let request = format!("GET /token?service=airlock&scope=repository:bob/app:pull HTTP/1.1\r\nHost: {}\r\nAuthorization: Basic {credentials}\r\nConnection: close\r\n\r\n", served.address);
        raw_exchange(&served.address, request.as_bytes()).0
    };
    for n in 0..5 {
        let answer = token_request(&format!("guess-{n}"));
        assert!(answer.starts_with("HTTP/1.1 401"), "attempt {n}: {answer}");
    }
    let throttled = token_request("guess-6");
    assert!(throttled.starts_with("HTTP/1.1 429") && throttled.to_ascii_lowercase().contains("retry-after:"), "{throttled}");
    // While it waits, even the right password is not checked: a guesser learns nothing.
    assert!(token_request("bob-Secret-2").starts_with("HTTP/1.1 429"));
    // The server says why in its log, never the password (stderr is inherited: checked by eye).

    // A readable key is refused at start.
    drop(served);
    std::fs::set_permissions(root.path().join("data/.token-key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = root.path().join("serve.yaml");
    let run = Airlock::new().run(&["serve", "--root", root.path().join("data").to_str().unwrap(), "--listen", "127.0.0.1:0", "--config", config.to_str().unwrap()]).code(2);
    assert!(run.stderr.contains("may be read by others") && run.stderr.contains("chmod 600"), "{}", run.stderr);
}

#[test]
fn a_mount_through_token_auth_asks_for_pull_on_the_source_and_then_mounts() {
    let root = crate::harness::tempdir();
    let served = guarded(root.path(), true, &[]);
    let example = format!("ocidir://{}/../../examples/hello:1.0", env!("CARGO_MANIFEST_DIR"));
    Airlock::new().run(&["copy", &example, &served.at("alice/a:1.0"), "--dest-creds", "alice:alice-Secret-1"]).success();
    let base = format!("http://{}", served.address);
    crate::harness::proxy::runtime().block_on(async {
        let client = reqwest::Client::new();
        let token = |user: &'static str, password: &'static str, scopes: Vec<&'static str>| {
            let client = client.clone();
            let base = base.clone();
            async move {
                let mut query = vec![("service", "airlock")];
                query.extend(scopes.into_iter().map(|s| ("scope", s)));
                let answer: serde_json::Value = client.get(format!("{base}/token")).query(&query).basic_auth(user, Some(password)).send().await.unwrap().json().await.unwrap();
                answer["token"].as_str().unwrap().to_owned()
            }
        };
        let reader = token("alice", "alice-Secret-1", vec!["repository:alice/a:pull"]).await;
        let manifest: serde_json::Value = client
            .get(format!("{base}/v2/alice/a/manifests/1.0"))
            .bearer_auth(&reader)
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
        let mount = format!("{base}/v2/alice/b/blobs/uploads/?mount={layer}&from=alice/a");

        // A token for the target alone: the answer asks for one with pull on the source too.
        let narrow = token("alice", "alice-Secret-1", vec!["repository:alice/b:pull,push"]).await;
        let answer = client.post(&mount).bearer_auth(&narrow).send().await.unwrap();
        assert_eq!(answer.status(), 401);
        let challenge = answer.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.contains(r#"scope="repository:alice/b:pull,push repository:alice/a:pull""#), "{challenge}");
        let wide = token("alice", "alice-Secret-1", vec!["repository:alice/b:pull,push", "repository:alice/a:pull"]).await;
        let answer = client.post(&mount).bearer_auth(&wide).send().await.unwrap();
        assert_eq!(answer.status(), 201, "{:?}", answer.headers());

        // bob may not read alice/a: no endless challenge, an upload session instead.
        let bob = token("bob", "bob-Secret-2", vec!["repository:bob/b:pull,push"]).await;
        let answer = client.post(format!("{base}/v2/bob/b/blobs/uploads/?mount={layer}&from=alice/a")).bearer_auth(&bob).send().await.unwrap();
        assert_eq!(answer.status(), 202);
    });
}

#[test]
fn a_self_signed_certificate_that_is_its_own_ca_is_trusted_when_named() {
    // The usual `openssl req -x509` certificate: CA:TRUE, used by the server itself.
    let dir = crate::harness::tempdir();
    let openssl = crate::harness::require("openssl", "openssl");
    let out = std::process::Command::new(openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "key.pem", "-out", "cert.pem"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let served = Served::start_with(&dir.path().join("data"), &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let airlock = Airlock::new();
    let example = format!("ocidir://{}/../../examples/hello:1.0", env!("CARGO_MANIFEST_DIR"));
    airlock.run(&["copy", &example, &served.at("app:1.0"), "--retries", "1"]).code(1).stderr_has("--ca-cert");
    let report = airlock.run(&["copy", &example, &served.at("app:1.0"), "--ca-cert", cert.to_str().unwrap(), "-o", "json"]).success().json();
    let digest = airlock.run(&["digest", &served.at("app:1.0"), "--ca-cert", cert.to_str().unwrap()]).success().stdout.trim().to_owned();
    assert_eq!(report["digest"], digest);
}

#[test]
fn the_catalog_lists_what_the_caller_may_pull_in_pages() {
    let root = crate::harness::tempdir();
    let served = guarded(root.path(), true, &[]);
    let example = format!("ocidir://{}/../../examples/hello:1.0", env!("CARGO_MANIFEST_DIR"));
    let airlock = Airlock::new();
    for (repository, creds) in [("public/a", "alice:alice-Secret-1"), ("public/b", "alice:alice-Secret-1"), ("alice/c", "alice:alice-Secret-1"), ("bob/d", "bob:bob-Secret-2")] {
        airlock.run(&["copy", &example, &served.at(&format!("{repository}:1.0")), "--dest-creds", creds]).success();
    }
    let list = |creds: Option<&str>| {
        let mut args = vec!["catalog", served.address.as_str(), "-o", "json"];
        if let Some(creds) = creds {
            args.extend(["--creds", creds]);
        }
        let json = airlock.run(&args).success().json();
        json["repositories"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(list(None), ["public/a", "public/b"], "anonymous callers see what anyone may pull");
    assert_eq!(list(Some("alice:alice-Secret-1")), ["alice/c", "public/a", "public/b"]);
    assert_eq!(list(Some("bob:bob-Secret-2")), ["bob/d", "public/a", "public/b"]);
    // Paged with n and last, a Link to the next page (an anonymous token, as clients get one).
    let (answer, _) = raw_exchange(&served.address, format!("GET /token?service=airlock&scope=registry:catalog:* HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", served.address).as_bytes());
    let token: serde_json::Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let page = |path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n", served.address, token["token"].as_str().unwrap());
        let (answer, _) = raw_exchange(&served.address, request.as_bytes());
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        (head.to_ascii_lowercase(), serde_json::from_str::<serde_json::Value>(body).unwrap())
    };
    let (head, first) = page("/v2/_catalog?n=1");
    assert_eq!(first["repositories"], serde_json::json!(["public/a"]));
    assert!(head.contains("link: </v2/_catalog?n=1&last=public/a>; rel=\"next\""), "{head}");
    let (head, second) = page("/v2/_catalog?n=1&last=public/a");
    assert_eq!(second["repositories"], serde_json::json!(["public/b"]));
    assert!(!head.contains("link:"), "{head}");
    // And against docker-registry, which has the API too.
    let registry = Registry::start(Auth::None);
    airlock.run(&["copy", &example, &registry.at("x/y:1.0")]).success();
    let json = airlock.run(&["catalog", &registry.host(), "-o", "json"]).success().json();
    assert_eq!(json["repositories"], serde_json::json!(["x/y"]));
}

#[test]
fn serving_beyond_loopback_without_auth_is_warned_about() {
    use std::io::BufRead;
    let root = crate::harness::tempdir();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["serve", "--root", root.path().to_str().unwrap(), "--listen", "0.0.0.0:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap()).read_line(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("warning: serving 0.0.0.0:") && line.contains("without authentication") && line.contains("--htpasswd"), "{line}");
    // `localhost` is a name `--listen` takes, and loopback draws no warning.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["serve", "--root", root.path().join("other").to_str().unwrap(), "--listen", "localhost:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert!(line.starts_with("listening on http://127.0.0.1:") || line.starts_with("listening on http://[::1]:"), "{line}");
    assert!(!String::from_utf8_lossy(&output.stderr).contains("warning"), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn tls_verify_false_per_side_for_people_who_must() {
    let dir = crate::harness::tempdir();
    let (cert, key) = crate::harness::registry::tls_files(dir.path());
    let served = Served::start_with(&dir.path().join("data"), &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let airlock = Airlock::new();
    let example = format!("ocidir://{}/../../examples/hello:1.0", env!("CARGO_MANIFEST_DIR"));
    // Unknown CA: refused, unless the side says not to verify.
    airlock.run(&["copy", &example, &served.at("app:1.0"), "--retries", "1"]).code(1).stderr_has("--ca-cert");
    airlock.run(&["copy", &example, &served.at("app:1.0"), "--src-tls-verify=false"]).code(1);
    let pushed = airlock.run(&["copy", &example, &served.at("app:1.0"), "--dest-tls-verify=false", "-o", "json"]).success().json();
    let out = dir.path().join("out");
    let pulled = airlock.run(&["copy", &served.at("app:1.0"), &format!("ocidir://{}:1.0", out.display()), "--src-tls-verify=false", "-o", "json"]).success().json();
    assert_eq!(pushed["digest"], pulled["digest"]);
    let digest = airlock.run(&["digest", &served.at("app:1.0"), "--tls-verify=false"]).success().stdout;
    assert_eq!(digest.trim(), pushed["digest"].as_str().unwrap());
    airlock.run(&["digest", &served.at("app:1.0")]).code(1);
    // The registry's CA where podman and skopeo look for it: certs.d/HOST:PORT/*.crt.
    let certs_d = airlock.path(".config/containers/certs.d").join(&served.address);
    std::fs::create_dir_all(&certs_d).unwrap();
    std::fs::copy(dir.path().join("certs/ca.crt"), certs_d.join("ca.crt")).unwrap();
    assert_eq!(airlock.run(&["digest", &served.at("app:1.0")]).success().stdout, digest);
}
