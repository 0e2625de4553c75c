//! `airlock serve` on an S3-compatible object store (moto's server): real clients push and
//! pull through it, uploads in chunks of any size work, two replicas share one bucket, and gc
//! leaves no multipart upload behind.

use crate::harness::moto::Moto;
use crate::harness::{skopeo, Airlock, Served};

/// `airlock serve --storage s3://BUCKET/PREFIX` over `moto`.
fn replica(moto: &Moto, bucket: &str) -> (tempfile::TempDir, Served) {
    let dir = crate::harness::tempdir();
    let served = Served::start_with_env(&dir.path().join("local"), &["--storage", &format!("s3://{bucket}/registry")], &moto.env());
    (dir, served)
}

/// POST, then PATCH chunks of `chunk` bytes, then PUT, each to the replica `via(step)` says.
fn chunked_push(replicas: &[&Served], via: impl Fn(usize) -> usize, repository: &str, blob: &[u8], chunk: usize) -> String {
    let digest = crate::harness::sha256(blob);
    crate::harness::proxy::runtime().block_on(async {
        let client = reqwest::Client::new();
        let url = |step: usize, path: &str| format!("http://{}{path}", replicas[via(step)].address);
        let started = client.post(url(0, &format!("/v2/{repository}/blobs/uploads/"))).send().await.unwrap();
        assert_eq!(started.status(), 202);
        let mut location = started.headers()["location"].to_str().unwrap().to_owned();
        let mut offset = 0usize;
        for (n, piece) in blob.chunks(chunk).enumerate() {
            let answer = client
                .patch(url(n + 1, &location))
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{offset}-{}", offset + piece.len() - 1))
                .body(piece.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 202, "chunk {n} at {offset}");
            location = answer.headers()["location"].to_str().unwrap().to_owned();
            offset += piece.len();
        }
        let done = client.put(url(blob.len().div_ceil(chunk) + 1, &format!("{location}?digest={digest}"))).send().await.unwrap();
        assert_eq!(done.status(), 201, "{:?}", done.text().await);
    });
    digest
}

#[test]
fn skopeo_and_airlock_push_and_pull_through_serve_on_s3() {
    let moto = Moto::start();
    moto.bucket("images");
    let (_dir, served) = replica(&moto, "images");
    let example = format!("ocidir://{}/../../examples/hello:1.0", env!("CARGO_MANIFEST_DIR"));
    let airlock = Airlock::new();
    let pushed = airlock.run(&["copy", &example, &served.at("team/hello:1.0"), "-o", "json"]).success().json();
    let digest = pushed["digest"].as_str().unwrap().to_owned();
    assert_eq!(crate::harness::skopeo_digest(&format!("docker://{}", served.at("team/hello:1.0"))), digest);
    // skopeo pushes a copy of its own, which airlock reads back by digest.
    skopeo(&["copy", "--preserve-digests", "--src-tls-verify=false", "--dest-tls-verify=false", &format!("docker://{}", served.at("team/hello:1.0")), &format!("docker://{}", served.at("other/hello:2"))]).success();
    assert_eq!(airlock.run(&["digest", &served.at("other/hello:2")]).success().stdout.trim(), digest);
    let tags = airlock.run(&["tags", &served.at("team/hello"), "-o", "json"]).success().json();
    assert_eq!(tags["tags"], serde_json::json!(["1.0"]));
    // The bucket as a serve root, without a server: `root://s3://BUCKET/PREFIX//REPO`.
    let owned = moto.env();
    let env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let direct = airlock.run_env(&["copy", &example, "root://s3://images/registry//direct/hello:2", "-o", "json"], &env).success().json();
    assert_eq!(direct["digest"].as_str(), Some(digest.as_str()));
    assert_eq!(airlock.run(&["digest", &served.at("direct/hello:2")]).success().stdout.trim(), digest, "what went into the bucket is served");
    let out = crate::harness::tempdir();
    airlock.run_env(&["copy", "root://s3://images/registry//team/hello:1.0", &format!("ocidir://{}:1.0", out.path().display())], &env).success();
    assert_eq!(crate::harness::skopeo_digest(&format!("oci:{}:1.0", out.path().display())), digest);
    let missing = airlock.run_env(&["copy", "root://s3://no-such-bucket/registry//team/hello:1.0", &format!("ocidir://{}:x", out.path().display())], &env);
    assert_ne!(missing.status, 0);
    assert!(missing.stderr.contains("no-such-bucket") || missing.stderr.contains("NoSuchBucket"), "{}", missing.stderr);
}

#[test]
fn chunked_uploads_of_any_size_split_across_two_replicas() {
    let moto = Moto::start();
    moto.bucket("shared");
    let (_a_dir, a) = replica(&moto, "shared");
    let (_b_dir, b) = replica(&moto, "shared");
    let blob = crate::harness::fixtures::noise(11, 20 * 1024 * 1024 + 12345);
    // POST on A, the chunks alternating between B and A, PUT on whichever comes next.
    for chunk in [7 * 1024 * 1024, 3 * 1024 * 1024 + 1] {
        let digest = chunked_push(&[&a, &b], |step| step % 2, "split/blob", &blob, chunk);
        let fetched = crate::harness::http_get_bytes(&b.url(&format!("/v2/split/blob/blobs/{digest}")));
        assert_eq!(crate::harness::sha256(&fetched), digest, "chunks of {chunk}");
    }
    let small = crate::harness::fixtures::noise(12, 10 * 1024 + 7);
    let digest = chunked_push(&[&a, &b], |step| step % 2, "split/small", &small, 1024);
    assert_eq!(crate::harness::sha256(&crate::harness::http_get_bytes(&a.url(&format!("/v2/split/small/blobs/{digest}")))), digest);
    // A push through A is pulled through B with the same digest.
    let example = format!("ocidir://{}/../../examples/hello:1.0", env!("CARGO_MANIFEST_DIR"));
    let airlock = Airlock::new();
    let pushed = airlock.run(&["copy", &example, &a.at("x/hello:1"), "-o", "json"]).success().json();
    assert_eq!(airlock.run(&["digest", &b.at("x/hello:1")]).success().stdout.trim(), pushed["digest"].as_str().unwrap());
    assert_eq!(moto.open_multipart_uploads("shared"), 0, "every multipart upload was completed");
    assert_eq!(moto.keys("shared", "registry/uploads/"), Vec::<String>::new(), "finished sessions leave no object behind");
}

#[test]
fn gc_on_s3_keeps_what_tags_reach_and_leaves_no_multipart_upload() {
    let moto = Moto::start();
    moto.bucket("gc-bucket");
    let (_dir, served) = replica(&moto, "gc-bucket");
    let example = format!("ocidir://{}/../../examples/hello:1.0", env!("CARGO_MANIFEST_DIR"));
    let airlock = Airlock::new();
    let pushed = airlock.run(&["copy", &example, &served.at("keep/hello:1"), "-o", "json"]).success().json();
    // An orphan, and an upload abandoned after a whole part went to a multipart upload.
    let orphan = crate::harness::fixtures::noise(13, 1000);
    chunked_push(&[&served], |_| 0, "keep/orphan", &orphan, 1000);
    crate::harness::proxy::runtime().block_on(async {
        let client = reqwest::Client::new();
        let started = client.post(served.url("/v2/keep/abandoned/blobs/uploads/")).send().await.unwrap();
        let location = started.headers()["location"].to_str().unwrap().to_owned();
        let part = crate::harness::fixtures::noise(14, 9 * 1024 * 1024);
        let answer = client.patch(format!("http://{}{location}", served.address)).body(part).send().await.unwrap();
        assert_eq!(answer.status(), 202);
    });
    assert_eq!(moto.open_multipart_uploads("gc-bucket"), 1, "the abandoned session holds a multipart upload");
    let owned = moto.env();
    let env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let report = airlock.run_env(&["gc", "--storage", "s3://gc-bucket/registry", "--grace", "0s", "-o", "json"], &env).success().json();
    assert_eq!(report["stale_uploads"], 1, "{report}");
    assert!(report["removed"].as_u64().unwrap() >= 1, "{report}");
    assert_eq!(moto.open_multipart_uploads("gc-bucket"), 0, "gc aborted the abandoned multipart upload");
    assert_eq!(airlock.run(&["digest", &served.at("keep/hello:1")]).success().stdout.trim(), pushed["digest"].as_str().unwrap());
    let out = crate::harness::tempdir();
    airlock.run(&["copy", &served.at("keep/hello:1"), &format!("ocidir://{}:1", out.path().display())]).success();
}

#[test]
fn replicas_accept_each_others_tokens_and_healthz_follows_the_bucket() {
    let moto = Moto::start();
    moto.bucket("tokens");
    let dir = crate::harness::tempdir();
    let out = std::process::Command::new(crate::harness::require("htpasswd", "apache2-utils")).args(["-Bbn", "alice", "alice-Secret-1"]).output().unwrap();
    std::fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
    let config = dir.path().join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "storage: s3://tokens/registry\nauth:\n  htpasswd: {}\n  token: true\n  token_key_env: AIRLOCK_TEST_TOKEN_KEY\n",
            dir.path().join("htpasswd").display()
        ),
    )
    .unwrap();
    let mut env = moto.env();
    env.push(("AIRLOCK_TEST_TOKEN_KEY".into(), "k".repeat(48)));
    let a = Served::start_with_env(&dir.path().join("a"), &["-f", config.to_str().unwrap()], &env);
    let b = Served::start_with_env(&dir.path().join("b"), &["-f", config.to_str().unwrap()], &env);
    // A token A issued opens B: both sign with the configured key.
    let (status, body) = crate::harness::proxy::runtime().block_on(async {
        let client = reqwest::Client::new();
        let token: serde_json::Value = client
            .get(a.url("/token?service=airlock&scope=repository:x/y:pull,push"))
            .basic_auth("alice", Some("alice-Secret-1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let answer = client.get(b.url("/v2/x/y/tags/list")).bearer_auth(token["token"].as_str().unwrap()).send().await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    });
    assert_eq!(status, 404, "authorized, and the repository is empty: {body}");
    assert!(body.contains("NAME_UNKNOWN"), "{body}");
    assert_eq!(crate::harness::http_get(&b.url("/healthz")).0, 200);
    // The bucket gone: the replica says it is unhealthy.
    drop(moto);
    let (status, body) = crate::harness::http_get(&b.url("/healthz"));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("storage unavailable"), "{body}");
}

#[test]
fn blob_gets_can_be_redirected_to_the_bucket() {
    let moto = Moto::start();
    moto.bucket("redirects");
    let dir = crate::harness::tempdir();
    let config = dir.path().join("serve.yaml");
    std::fs::write(&config, format!("storage: s3://redirects/r\ns3:\n  endpoint: {}\n  allow_http: true\n  redirect: true\n", moto.endpoint)).unwrap();
    let served = Served::start_with_env(&dir.path().join("local"), &["-f", config.to_str().unwrap()], &moto.env());
    let example = format!("ocidir://{}/../../examples/hello:1.0", env!("CARGO_MANIFEST_DIR"));
    let airlock = Airlock::new();
    let pushed = airlock.run(&["copy", &example, &served.at("app:1"), "-o", "json"]).success().json();
    let manifest: serde_json::Value = serde_json::from_slice(&airlock.run(&["inspect", "--raw", &served.at("app:1")]).success().stdout_bytes).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    // The blob GET is a redirect to the bucket; a HEAD is still answered by airlock.
    let (status, location) = crate::harness::proxy::runtime().block_on(async {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let answer = client.get(served.url(&format!("/v2/app/blobs/{layer}"))).send().await.unwrap();
        (answer.status().as_u16(), answer.headers().get("location").map(|l| l.to_str().unwrap().to_owned()))
    });
    assert_eq!(status, 307);
    assert!(location.unwrap().starts_with(&moto.endpoint), "the bytes come from the bucket");
    assert_eq!(crate::harness::http_get(&served.url(&format!("/v2/app/blobs/{layer}"))).0, 200, "followed, the redirect serves the blob");
    // Clients follow it: airlock and skopeo pull with the same digests.
    let out = dir.path().join("out");
    let pulled = airlock.run(&["copy", &served.at("app:1"), &format!("ocidir://{}:1", out.display()), "-o", "json"]).success().json();
    assert_eq!(pulled["digest"], pushed["digest"]);
    let skopeo_out = dir.path().join("skopeo-out");
    skopeo(&["copy", "--src-tls-verify=false", &format!("docker://{}", served.at("app:1")), &format!("oci:{}:1", skopeo_out.display())]).success();
}

#[test]
fn gc_on_s3_runs_once_at_a_time_and_online_beside_pushes_through_two_replicas() {
    let moto = Moto::start();
    moto.bucket("online");
    let (_a_dir, a) = replica(&moto, "online");
    let (_b_dir, b) = replica(&moto, "online");
    let airlock = Airlock::new();
    let owned = moto.env();
    let env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let put_lease = |expires: u64| moto.put_object("online", "registry/gc.lease", &format!(r#"{{"holder":"replica-b","expires":{expires}}}"#));
    // A live lease of another replica: this gc does not run (the conditional put lost).
    put_lease(now + 600);
    let busy = airlock.run_env(&["gc", "--storage", "s3://online/registry"], &env).code(1);
    assert!(busy.stderr.contains("another gc (replica-b) holds the lease"), "{}", busy.stderr);
    // An expired one is taken over (a put conditional on its ETag).
    put_lease(now - 1);
    // Pushes go on through both replicas while collections run beside them.
    let pusher = {
        let (a, b) = (a.address.clone(), b.address.clone());
        std::thread::spawn(move || {
            let airlock = Airlock::new();
            let mut pushed = Vec::new();
            for n in 0..6u64 {
                let img = crate::harness::fixtures::image("amd64", &[crate::harness::fixtures::layer(1200 + n, 40_000)]);
                let host = if n % 2 == 0 { &a } else { &b };
                crate::harness::fixtures::push(host, "online/app", &img, Some(&format!("v{n}")), None);
                pushed.push((format!("v{n}"), img.digest));
            }
            drop(airlock);
            pushed
        })
    };
    for _ in 0..3 {
        airlock.run_env(&["gc", "--storage", "s3://online/registry", "--grace", "1m", "-o", "json"], &env).success();
    }
    let pushed = pusher.join().unwrap();
    airlock.run_env(&["gc", "--storage", "s3://online/registry", "--grace", "1m"], &env).success();
    for (tag, digest) in pushed {
        for replica in [&a, &b] {
            assert_eq!(airlock.run(&["digest", &replica.at(&format!("online/app:{tag}"))]).success().stdout.trim(), digest);
            let out = crate::harness::tempdir();
            airlock.run(&["copy", &replica.at(&format!("online/app:{tag}")), &format!("ocidir://{}:x", out.path().display())]).success();
        }
    }
    assert_eq!(moto.open_multipart_uploads("online"), 0);
}

/// A request body that sends `first` and then stalls until the request is dropped, so that a
/// replica can be killed in the middle of it.
fn stalled_body(first: Vec<u8>) -> reqwest::Body {
    use futures::StreamExt as _;
    let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(first)) }).chain(futures::stream::pending());
    reqwest::Body::wrap_stream(stream)
}

#[test]
fn a_replica_killed_mid_upload_loses_nothing_the_client_resumes_on_another_and_gc_aborts_what_it_left() {
    let moto = Moto::start();
    moto.bucket("killed");
    let (_a_dir, a) = replica(&moto, "killed");
    let (_b_dir, b) = replica(&moto, "killed");
    let blob = crate::harness::fixtures::noise(21, 19 * 1024 * 1024 + 321);
    let digest = crate::harness::sha256(&blob);
    let (a_address, b_address) = (a.address.clone(), b.address.clone());
    let runtime = crate::harness::proxy::runtime();
    // A chunked upload: 9 MiB through A, then a chunk that stalls after 5 MiB while A dies.
    let location = runtime.block_on(async {
        let client = reqwest::Client::new();
        let started = client.post(format!("http://{a_address}/v2/resumed/blob/blobs/uploads/")).send().await.unwrap();
        let location = started.headers()["location"].to_str().unwrap().to_owned();
        let first = client.patch(format!("http://{a_address}{location}")).body(blob[..9 * 1024 * 1024].to_vec()).send().await.unwrap();
        assert_eq!(first.status(), 202);
        first.headers()["location"].to_str().unwrap().to_owned()
    });
    let stalled = {
        let (url, piece) = (format!("http://{a_address}{location}"), blob[9 * 1024 * 1024..14 * 1024 * 1024].to_vec());
        runtime.spawn(async move { reqwest::Client::new().patch(url).body(stalled_body(piece)).send().await })
    };
    // And a monolithic push streamed into a multipart upload of its own, also stalled.
    let other = crate::harness::fixtures::noise(22, 30 * 1024 * 1024);
    let streamed = {
        let (address, piece, other_digest) = (a_address.clone(), other[..20 * 1024 * 1024].to_vec(), crate::harness::sha256(&other));
        runtime.spawn(async move {
            let client = reqwest::Client::new();
            let started = client.post(format!("http://{address}/v2/resumed/other/blobs/uploads/")).send().await.unwrap();
            let location = started.headers()["location"].to_str().unwrap().to_owned();
            client.put(format!("http://{address}{location}?digest={other_digest}")).body(stalled_body(piece)).send().await
        })
    };
    let open = || moto.open_multipart_uploads("killed");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while open() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(open(), 2, "the session's upload and the streamed write's are open");
    std::thread::sleep(std::time::Duration::from_millis(500));
    a.kill();
    stalled.abort();
    streamed.abort();
    // The client asks B where the session stands and resumes there (distribution's protocol).
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let status = client.get(format!("http://{b_address}{location}")).send().await.unwrap();
        assert_eq!(status.status(), 204);
        let range = status.headers()["range"].to_str().unwrap().to_owned();
        let next: usize = range.trim_start_matches("0-").parse::<usize>().unwrap() + 1;
        assert!(next >= 9 * 1024 * 1024, "what A acknowledged is kept: {range}");
        let location = status.headers()["location"].to_str().unwrap().to_owned();
        let rest = client
            .patch(format!("http://{b_address}{location}"))
            .header("content-range", format!("{next}-{}", blob.len() - 1))
            .body(blob[next..].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(rest.status(), 202, "{:?}", rest.text().await);
        let location = rest.headers()["location"].to_str().unwrap().to_owned();
        let separator = if location.contains('?') { '&' } else { '?' };
        let done = client.put(format!("http://{b_address}{location}{separator}digest={digest}")).send().await.unwrap();
        assert_eq!(done.status(), 201, "{:?}", done.text().await);
    });
    assert_eq!(crate::harness::sha256(&crate::harness::http_get_bytes(&b.url(&format!("/v2/resumed/blob/blobs/{digest}")))), digest);
    // The killed streamed write left its multipart upload; gc aborts it (moto dates every
    // upload 2010, so the grace period does not hold it back here).
    assert_eq!(open(), 1, "the resumed session completed its upload; the killed streamed write's is left");
    let owned = moto.env();
    let env: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let airlock = Airlock::new();
    let report = airlock.run_env(&["gc", "--storage", "s3://killed/registry", "--grace", "1m", "-o", "json"], &env).success().json();
    assert_eq!(report["abandoned_temporaries"], 1, "{report}");
    assert_eq!(open(), 0, "no multipart upload is left behind");
    assert_eq!(crate::harness::sha256(&crate::harness::http_get_bytes(&b.url(&format!("/v2/resumed/blob/blobs/{digest}")))), digest, "the blob survived gc");
}

#[test]
fn podman_and_oras_push_and_pull_through_serve_on_s3() {
    let moto = Moto::start();
    moto.bucket("clients");
    let (_dir, served) = replica(&moto, "clients");
    let work = crate::harness::tempdir();
    let airlock = Airlock::new();
    airlock.run(&["copy", &crate::harness::busybox_layout(work.path()), &served.at("tools/busybox:1.0")]).success();
    crate::serve::podman_round_trip(&served, &airlock);
    // An ORAS artifact, pushed and pulled by the ORAS SDK, byte for byte.
    let disk = work.path().join("disk.qcow2");
    std::fs::write(&disk, crate::harness::fixtures::noise(431, 9 * 1024 * 1024 + 5)).unwrap();
    let pushed = crate::harness::oras(&["push", &served.at("ironic/disk:v1"), disk.to_str().unwrap(), "org.example.disktype=qcow2"]).success().json();
    assert_eq!(airlock.run(&["digest", &served.at("ironic/disk:v1")]).success().stdout.trim(), pushed["digest"].as_str().unwrap());
    let out = crate::harness::tempdir();
    let pulled = crate::harness::oras(&["pull", &served.at("ironic/disk:v1"), out.path().to_str().unwrap()]).success().json();
    assert_eq!(std::fs::read(pulled["files"][0].as_str().unwrap()).unwrap(), std::fs::read(&disk).unwrap());
    assert_eq!(moto.open_multipart_uploads("clients"), 0);
}
