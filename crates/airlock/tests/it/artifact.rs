//! OCI artifacts (seed 002): pushed by airlock and read by the oras client and the reverse, an
//! index of disk images chosen from as Ironic chooses, compressed files, resumed and verified
//! downloads, and every error the seed names.

use std::path::Path;

use crate::harness::proxy::{Fault, FaultProxy};
use crate::harness::{oras, Airlock, Auth, Registry, Served};

fn file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Pushes with airlock, pulls with oras, then the reverse, against `host`.
fn oras_round_trips(host: &str) {
    let dir = crate::harness::tempdir();
    let airlock = Airlock::new();
    let kernel = file(dir.path(), "tinyipa.vmlinuz", &crate::harness::fixtures::noise(800, 300_000));
    let pushed = airlock.run(&["push", &format!("oci://{host}/ironic/deploy:ipa_kernel"), kernel.to_str().unwrap(), "-o", "json"]).success().json();
    let digest = pushed["digest"].as_str().unwrap().to_owned();
    let out = dir.path().join("oras-out");
    let pulled = oras(&["pull", &format!("{host}/ironic/deploy:ipa_kernel"), out.to_str().unwrap()]).success();
    assert!(pulled.stdout.contains("tinyipa.vmlinuz"), "{}", pulled.stdout);
    assert_eq!(std::fs::read(out.join("tinyipa.vmlinuz")).unwrap(), std::fs::read(&kernel).unwrap(), "oras reads what airlock wrote");
    // The manifest is ORAS's shape: artifactType, an empty config, one titled layer.
    let manifest = airlock.run(&["inspect", "--raw", &format!("{host}/ironic/deploy@{digest}")]).success();
    assert_eq!(crate::harness::sha256(&manifest.stdout_bytes), digest);
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.stdout_bytes).unwrap();
    assert_eq!(manifest["artifactType"], "application/vnd.unknown.artifact.v1");
    assert_eq!(manifest["config"]["mediaType"], "application/vnd.oci.empty.v1+json");
    assert_eq!(manifest["layers"][0]["annotations"]["org.opencontainers.image.title"], "tinyipa.vmlinuz");

    // The reverse: oras pushes a disk image with a disktype annotation, airlock pulls it.
    let disk = file(dir.path(), "cirros.qcow2", &crate::harness::fixtures::noise(801, 200_000));
    let oras_push = oras(&["push", &format!("{host}/ironic/disks:cirros"), disk.to_str().unwrap(), "disktype=qcow2"]).success();
    let oras_digest = serde_json::from_str::<serde_json::Value>(oras_push.stdout.trim()).unwrap()["digest"].as_str().unwrap().to_owned();
    let into = dir.path().join("airlock-out");
    let pull = airlock.run(&["pull", &format!("oci://{host}/ironic/disks:cirros"), "--dir", into.to_str().unwrap(), "-o", "json"]).success().json();
    assert_eq!(pull["manifest"], oras_digest, "the same manifest digest on both sides");
    assert_eq!(pull["disktype"], "qcow2");
    assert_eq!(std::fs::read(into.join("cirros.qcow2")).unwrap(), std::fs::read(&disk).unwrap());
    // And by digest.
    let by_digest = dir.path().join("by-digest");
    airlock.run(&["pull", &format!("oci://{host}/ironic/disks@{oras_digest}"), "--dir", by_digest.to_str().unwrap()]).success();
    assert!(by_digest.join("cirros.qcow2").is_file());
    // As Ironic's documentation writes a pinned image: an empty tag before the digest.
    let ironic_form = format!("oci://{host}/ironic/disks:@{oras_digest}");
    let offered = airlock.run(&["artifacts", &ironic_form, "-o", "json"]).success().json();
    assert!(offered.to_string().contains(oras_digest.as_str()), "{offered}");
    let pinned = dir.path().join("pinned");
    let pull = airlock.run(&["pull", &ironic_form, "--dir", pinned.to_str().unwrap(), "-o", "json"]).success().json();
    assert_eq!(pull["manifest"], oras_digest);
    assert_eq!(std::fs::read(pinned.join("cirros.qcow2")).unwrap(), std::fs::read(&disk).unwrap());
}

#[test]
fn artifacts_round_trip_with_oras_on_docker_registry_and_airlock_serve() {
    let registry = Registry::start(Auth::None);
    oras_round_trips(&registry.host());
    let root = crate::harness::tempdir();
    let served = Served::start(root.path());
    oras_round_trips(&served.address);
}

#[test]
fn an_index_of_disk_images_yields_the_seed_choice_for_each_mode_and_alias() {
    let registry = Registry::start(Auth::None);
    index_choice(&registry.host());
    let root = crate::harness::tempdir();
    let served = Served::start(root.path());
    index_choice(&served.address);
}

fn index_choice(host: &str) {
    let dir = crate::harness::tempdir();
    let airlock = Airlock::new();
    let repo = format!("oci://{host}/images/cirros");
    // Four disk images, as `oras push -a disktype=… --artifact-platform …` writes them.
    let mut digests = std::collections::BTreeMap::new();
    for (seed, name, disktype, platform) in [
        (810, "cirros-x86_64.qcow2", "qcow2", "linux/x86_64"),
        (811, "cirros-x86_64.raw", "raw", "linux/amd64"),
        (812, "cirros-aarch64.qcow2", "qemu", "linux/aarch64"),
        (813, "cirros-aarch64.raw", "applehv", "linux/arm64"),
    ] {
        let path = file(dir.path(), name, &crate::harness::fixtures::noise(seed, 50_000));
        let tag = name.replace('.', "-");
        let pushed = airlock
            .run(&["push", &format!("{repo}:{tag}"), path.to_str().unwrap(), "-a", &format!("disktype={disktype}"), "--platform", platform, "-o", "json"])
            .success()
            .json();
        digests.insert(name, pushed["digest"].as_str().unwrap().to_owned());
    }
    // One index over them; platforms and disktypes come from the artifacts themselves.
    let tags: Vec<String> = digests.keys().map(|n| n.replace('.', "-")).collect();
    let mut args = vec!["push".to_owned(), "--index".to_owned(), format!("{repo}:0.6.3")];
    args.extend(tags.iter().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    airlock.run(&args).success();

    let choice = |extra: &[&str]| {
        let mut args = vec!["artifacts", &repo, "-o", "json"];
        let reference = format!("{repo}:0.6.3");
        args[1] = &reference;
        args.extend_from_slice(extra);
        let report = airlock.run(&args).success().json();
        report["offers"].as_array().unwrap().iter().find(|o| o["digest"] == report["chosen"]).unwrap()["title"].as_str().unwrap().to_owned()
    };
    assert_eq!(choice(&["--mode", "local", "--arch", "x86_64"]), "cirros-x86_64.qcow2");
    assert_eq!(choice(&["--mode", "local", "--arch", "amd64"]), "cirros-x86_64.qcow2", "amd64 is x86_64");
    assert_eq!(choice(&["--mode", "http", "--arch", "x86_64"]), "cirros-x86_64.raw");
    assert_eq!(choice(&["--mode", "local", "--arch", "arm64"]), "cirros-aarch64.qcow2", "qemu is QCOW2, arm64 is aarch64");
    assert_eq!(choice(&["--mode", "http", "--arch", "aarch64"]), "cirros-aarch64.raw", "applehv is raw");
    assert_eq!(choice(&["--mode", "local", "--arch", "x86_64", "--disktype", "raw"]), "cirros-x86_64.raw");
    // The table says what is on offer and why the choice.
    let table = airlock.run(&["artifacts", &format!("{repo}:0.6.3"), "--mode", "local", "--arch", "x86_64"]).success().stdout;
    assert!(table.starts_with("DIGEST"), "{table}");
    assert!(table.contains("linux/aarch64") && table.contains("qemu") && table.contains("cirros-aarch64.qcow2"), "{table}");
    assert!(table.contains("chosen: disktype qcow2 ranks 1 for local deployment, architecture x86_64 matches x86_64"), "{table}");

    // pull takes the same decision and writes the file under its title, verified.
    let out = dir.path().join("out");
    let pulled = airlock.run(&["pull", &format!("{repo}:0.6.3"), "--mode", "http", "--arch", "arm64", "--dir", out.to_str().unwrap(), "-o", "json"]).success().json();
    assert_eq!(pulled["manifest"], digests["cirros-aarch64.raw"]);
    assert_eq!(std::fs::read(out.join("cirros-aarch64.raw")).unwrap(), crate::harness::fixtures::noise(813, 50_000));

    // Per-entry platform and annotations given on the command line win over the artifact's own.
    let explicit = format!("{repo}:explicit");
    airlock.run(&["push", "--index", &explicit, "cirros-x86_64-raw;platform=linux/riscv64;disktype=raw;org.example/build=42"]).success();
    let offered = airlock.run(&["artifacts", &explicit, "--arch", "riscv64", "-o", "json"]).success().json();
    assert_eq!(offered["offers"][0]["platform"], "linux/riscv64");
    let raw = airlock.run(&["inspect", "--raw", &explicit]).success().stdout;
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(index["manifests"][0]["annotations"]["org.example/build"], "42");
    assert_eq!(index["manifests"][0]["digest"], digests["cirros-x86_64.raw"].as_str());

    // Errors: nothing for the architecture (saying what there is), an unknown tag (saying which
    // exist), no `latest`.
    let none = airlock.run(&["pull", &format!("{repo}:0.6.3"), "--arch", "s390x", "--dir", out.to_str().unwrap()]).code(1);
    assert!(none.stderr.contains("no artifact in") && none.stderr.contains("architecture s390x"), "{}", none.stderr);
    assert!(none.stderr.contains("linux/aarch64 qemu (architecture aarch64 is not s390x)"), "{}", none.stderr);
    let no_disktype = airlock.run(&["pull", &format!("{repo}:0.6.3"), "--arch", "amd64", "--disktype", "vmdk", "--dir", out.to_str().unwrap()]).code(1);
    assert!(no_disktype.stderr.contains("disktype vmdk") && no_disktype.stderr.contains("(disktype qcow2 is not vmdk)"), "{}", no_disktype.stderr);
    let unknown = airlock.run(&["pull", &format!("{repo}:0.7.0"), "--dir", out.to_str().unwrap()]).code(1);
    assert!(unknown.stderr.contains("has no tag `0.7.0`; its tags: ") && unknown.stderr.contains("0.6.3"), "{}", unknown.stderr);
    airlock.run(&["pull", &repo, "--dir", out.to_str().unwrap()]).code(1).stderr_has("has no tag `latest`");
}

#[test]
fn compressed_files_cut_connections_interrupted_runs_and_corrupt_bytes() {
    let registry = Registry::start(Auth::None);
    let host = registry.host();
    let dir = crate::harness::tempdir();
    let airlock = Airlock::new();
    let original = crate::harness::fixtures::noise(820, 3 * 1024 * 1024);
    // zstd and gzip round trips, told by magic bytes.
    let zst = file(dir.path(), "disk.raw.zst", &zstd::encode_all(&original[..], 3).unwrap());
    let gz = {
        use std::io::Write as _;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&original).unwrap();
        file(dir.path(), "kernel.gz", &encoder.finish().unwrap())
    };
    for (tag, path, name) in [("zst", &zst, "disk.raw"), ("gz", &gz, "kernel")] {
        airlock.run(&["push", &format!("oci://{host}/blobs/disk:{tag}"), &format!("{}:application/zstd", path.display()), "-a", "disktype=raw"]).success();
        let out = dir.path().join(format!("out-{tag}"));
        let pulled = airlock.run(&["pull", &format!("oci://{host}/blobs/disk:{tag}"), "--dir", out.to_str().unwrap(), "--decompress", "-o", "json"]).success().json();
        assert_eq!(pulled["decompressed"], if tag == "zst" { "zstd" } else { "gzip" });
        assert_eq!(std::fs::read(out.join(name)).unwrap(), original, "{tag}");
    }

    let big = file(dir.path(), "big.img", &original);
    airlock.run(&["push", &format!("oci://{host}/blobs/big:v1"), big.to_str().unwrap(), "-a", "disktype=raw"]).success();
    // A connection cut in the middle of the download: resumed with Range, verified.
    let proxy = FaultProxy::start(&host);
    proxy.inject(Fault::CutBlobOnce { after: 1024 * 1024 });
    let out = dir.path().join("out-cut");
    airlock.run(&["pull", &format!("oci://{}/blobs/big:v1", proxy.host()), "--dir", out.to_str().unwrap()]).success();
    assert_eq!(std::fs::read(out.join("big.img")).unwrap(), original);
    assert!(proxy.log().iter().any(|l| l.range.is_some()), "the rest came with a Range request");

    // A run killed half way leaves a partial file that the next run continues.
    let slow = FaultProxy::start(&host);
    slow.inject(Fault::Throttle { bytes_per_second: 1024 * 1024 });
    let out = dir.path().join("out-resume");
    let mut child = airlock.spawn(&["pull", &format!("oci://{}/blobs/big:v1", slow.host()), "--dir", out.to_str().unwrap()]);
    let partial = out.join(".big.img.airlock-partial");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 512 * 1024 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < original.len() as u64, "a partial file of {kept} bytes");
    assert!(!out.join("big.img").exists(), "no file under its name before it verified");
    let resumed = airlock.run(&["pull", &format!("oci://{host}/blobs/big:v1"), "--dir", out.to_str().unwrap(), "-o", "json"]).success().json();
    assert_eq!(resumed["resumed"], true);
    assert_eq!(resumed["fetched"].as_u64().unwrap() + kept, original.len() as u64, "only the rest was fetched");
    assert_eq!(std::fs::read(out.join("big.img")).unwrap(), original);

    // Corrupt bytes: refused, nothing left behind.
    let corrupt = FaultProxy::start(&host);
    corrupt.inject(Fault::FlipBlobBytes);
    let out = dir.path().join("out-corrupt");
    let refused = airlock.run(&["pull", &format!("oci://{}/blobs/big:v1", corrupt.host()), "--dir", out.to_str().unwrap(), "--retries", "1"]).code(1);
    assert!(refused.stderr.contains("does not match") || refused.stderr.contains("digest"), "{}", refused.stderr);
    let left: Vec<_> = std::fs::read_dir(&out).map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "nothing left behind: {left:?}");

    // A multi-layer artifact where one file is required.
    let second = file(dir.path(), "initrd", b"second file");
    let multi = airlock.run(&["push", &format!("oci://{host}/blobs/multi:v1"), big.to_str().unwrap(), second.to_str().unwrap(), "-o", "json"]).success().json();
    let digest = multi["digest"].as_str().unwrap();
    airlock.run(&["pull", &format!("oci://{host}/blobs/multi@{digest}"), "--dir", out.to_str().unwrap()]).code(1).stderr_has("not a single-file artifact");
}

#[test]
fn bearer_tokens_and_pull_secrets_authenticate_pulls() {
    let registry = crate::auth::token_registry();
    let issuer = registry.token.clone().unwrap();
    let host = registry.host();
    let dir = crate::harness::tempdir();
    let airlock = Airlock::new();
    let kernel = file(dir.path(), "vmlinuz", b"a kernel");
    airlock.run(&["push", &format!("oci://{host}/alice/deploy:kernel"), kernel.to_str().unwrap(), "--creds", "alice:s3cr3t-Pa55word"]).success();
    let out = dir.path().join("out");
    airlock.run(&["pull", &format!("oci://{host}/alice/deploy:kernel"), "--dir", out.to_str().unwrap()]).code(1);
    // A pre-shared registry token, as Ironic's image_pull_secret.
    let token = issuer.sign("ironic", &[("alice/deploy".to_owned(), vec!["pull".to_owned()])]);
    let pulled = airlock.run(&["pull", &format!("oci://{host}/alice/deploy:kernel"), "--dir", out.to_str().unwrap(), "--bearer-token", &token, "-vv"]).success();
    assert!(!pulled.stderr.contains(&token), "the token never reaches the logs");
    assert_eq!(std::fs::read(out.join("vmlinuz")).unwrap(), b"a kernel");
    // A pull secret in config.json format.
    use base64::Engine as _;
    let secret = dir.path().join("pull-secret.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cr3t-Pa55word");
    std::fs::write(&secret, format!(r#"{{"auths": {{"{host}": {{"auth": "{auth}"}}}}}}"#)).unwrap();
    let out2 = dir.path().join("out2");
    airlock.run(&["pull", &format!("oci://{host}/alice/deploy:kernel"), "--dir", out2.to_str().unwrap(), "--pull-secret", secret.to_str().unwrap()]).success();
    assert!(out2.join("vmlinuz").is_file());
    let help = airlock.run(&["pull", "--help"]).success().stdout;
    assert!(!help.contains(&token));
}

#[test]
fn push_and_pull_show_progress_on_a_terminal_and_lines_in_a_log() {
    let registry = Registry::start(Auth::None);
    let airlock = Airlock::new();
    let dir = crate::harness::tempdir();
    let disk = dir.path().join("disk.raw");
    // 200 MiB, written in pieces of noise so no layer of the path compresses it away.
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&disk).unwrap();
        let piece = crate::harness::fixtures::noise(7, 1024 * 1024);
        for _ in 0..200 {
            file.write_all(&piece).unwrap();
        }
    }
    let reference = format!("oci://{}/disks/big:1", registry.host());
    // Under a pseudo-terminal (util-linux `script`): the bar is drawn, with a rate.
    let script = crate::harness::require("script", "bsdutils");
    let shell_command = format!(
        "env HOME={home} DOCKER_CONFIG={home}/.docker {airlock} push {reference} {disk}",
        home = airlock.home.path().display(),
        airlock = env!("CARGO_BIN_EXE_airlock"),
        disk = disk.display()
    );
    let mut command = std::process::Command::new(&script);
    command.args(["-qfec", &shell_command, "/dev/null"]).env("TERM", "xterm");
    let terminal = crate::harness::run_command(command, None).success();
    // Several frames of the one bar: bytes of the total, a rate, the count of files.
    let frames = terminal.stdout.matches("MiB/200.00 MiB").count();
    assert!(frames >= 2 && terminal.stdout.contains("MiB/s") && terminal.stdout.contains("0/1 blobs"), "no bar on a terminal: {:?}", terminal.stdout);
    // In a log (no terminal): a line per finished file and periodic lines while bytes move.
    let out = dir.path().join("out");
    let logged = airlock.run_env(&["pull", &reference, "--dir", out.to_str().unwrap()], &[("AIRLOCK_PROGRESS_INTERVAL", "0.02")]).success();
    assert!(logged.stderr.contains("pull: 1/1 done: sha256:") && logged.stderr.contains("200.0 MiB"), "{}", logged.stderr);
    assert!(logged.stderr.lines().any(|l| l.starts_with("pull: ") && l.contains(" of 200.0 MiB (")), "no periodic line: {}", logged.stderr);
    assert_eq!(std::fs::metadata(out.join("disk.raw")).unwrap().len(), 200 * 1024 * 1024);
    // Quiet and JSON stay quiet on stderr.
    let quiet = airlock.run(&["pull", &reference, "--dir", dir.path().join("q").to_str().unwrap(), "-o", "json"]).success();
    assert!(!quiet.stderr.contains("pull: "), "{}", quiet.stderr);
}
