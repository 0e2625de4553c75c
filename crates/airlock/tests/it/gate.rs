//! Gated imports (seed 004): `airlock serve` holds the simulated public repository, the
//! base-artifacts repository and the team's; a test gate builds `FROM` the candidate with real
//! podman and runs the seed's `test.sh`; dependents are a command and a webhook.

use std::path::Path;
use std::process::Command;

use crate::harness::proxy::{EventSink, Fault, FaultProxy};
use crate::harness::{require, run_command, skopeo_digest, Airlock, Podman, Served};

/// A folder with a busybox OCI layout, to make upstream "node" images from.
pub(crate) struct Upstream {
    layout: std::path::PathBuf,
}

impl Upstream {
    pub(crate) fn new(dir: &Path) -> Upstream {
        let reference = crate::harness::busybox_layout(dir);
        let layout = reference.trim_start_matches("ocidir://").trim_end_matches(":1.0").into();
        Upstream { layout }
    }

    /// Publishes `upstream/node:15-alpine` with `BACKGROUND_COLOR=color` to `served`; returns
    /// its digest.
    pub(crate) fn publish(&self, airlock: &Airlock, served: &Served, color: &str) -> String {
        self.publish_to(airlock, &served.at("upstream/node:15-alpine"), color)
    }

    /// Publishes the image with `BACKGROUND_COLOR=color` as `target` (a full reference); returns
    /// its digest.
    pub(crate) fn publish_to(&self, airlock: &Airlock, target: &str, color: &str) -> String {
        let umoci = require("umoci", "umoci");
        let mut command = Command::new(umoci);
        command.args(["config", "--image", &format!("{}:1.0", self.layout.display()), "--tag", color]);
        command.args(["--config.env", "NODE_VERSION=15-alpine", "--config.env", &format!("BACKGROUND_COLOR={color}")]);
        run_command(command, None).success();
        let source = format!("ocidir://{}:{color}", self.layout.display());
        airlock.run(&["copy", &source, target, "--force"]).success();
        airlock.run(&["digest", target]).success().stdout.trim().to_owned()
    }
}

/// The seed's test image: `FROM` the candidate, with `test.sh` that fails on a red background.
fn test_context(dir: &Path) -> std::path::PathBuf {
    let context = dir.join("import-baseimage-node");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::write(context.join("Dockerfile"), "ARG AIRLOCK_CANDIDATE\nFROM ${AIRLOCK_CANDIDATE}\nCOPY test.sh /test.sh\nCMD [\"/busybox\", \"sh\", \"/test.sh\"]\n").unwrap();
    std::fs::write(
        context.join("test.sh"),
        "echo \"Validating Image\"\necho \"NODE_VERSION: $NODE_VERSION\"\necho \"BACKGROUND_COLOR: $BACKGROUND_COLOR\"\nEXIT_CODE=0\nif [ \"$(echo $BACKGROUND_COLOR | /busybox tr '[:lower:]' '[:upper:]')\" = 'RED' ]; then\n  echo \"ERROR: Invalid Color: $BACKGROUND_COLOR\"\n  EXIT_CODE=1\nelse\n  echo \"Validation Complete - No Known Errors\"\nfi\nexit $EXIT_CODE\n",
    )
    .unwrap();
    context
}

/// A fresh folder with `airlock serve` on it, an airlock, and the upstream images to publish.
fn scene() -> (tempfile::TempDir, Served, Airlock, Upstream) {
    let dir = crate::harness::tempdir();
    let served = Served::start(&dir.path().join("registry"));
    let upstream = Upstream::new(dir.path());
    (dir, served, Airlock::new(), upstream)
}

/// podman, started by a test gate, reads the same Docker config as airlock.
fn podman_for_gates(airlock: &Airlock) -> Podman {
    std::fs::create_dir_all(airlock.path(".docker")).unwrap();
    std::fs::write(airlock.path(".docker/config.json"), "{\"auths\": {}}").unwrap();
    Podman::new()
}

fn yaml_list(items: &[String]) -> String {
    format!("[{}]", items.iter().map(|i| format!("'{i}'")).collect::<Vec<_>>().join(", "))
}

#[test]
fn seed_004_a_good_update_is_promoted_a_bad_one_rejected_and_rollback_restores() {
    let (dir, served, airlock, upstream) = scene();
    let podman = podman_for_gates(&airlock);
    let context = test_context(dir.path());
    let sink = EventSink::start(0);
    let rebuilds = dir.path().join("rebuilds.log");
    // The team's image, rebuilt FROM the promoted base by the dependent and pushed to its repository.
    let team = dir.path().join("hello-world");
    std::fs::create_dir_all(&team).unwrap();
    std::fs::write(team.join("Dockerfile"), "ARG BASE\nFROM ${BASE}\nCOPY hello.txt /hello.txt\n").unwrap();
    std::fs::write(team.join("hello.txt"), "hello from dev-team-a\n").unwrap();
    let team_image = served.at("dev-team-a/hello-world:latest");
    let podman_flags = podman.global_flags().join(" ");
    let rebuild = dir.path().join("rebuild.sh");
    std::fs::write(
        &rebuild,
        format!(
            "set -e\necho \"$AIRLOCK_NEW_DIGEST $AIRLOCK_OLD_DIGEST $AIRLOCK_RUN_ID\" >> {log}\npodman {podman_flags} build --tls-verify=false --build-arg BASE=\"$AIRLOCK_TARGET@$AIRLOCK_NEW_DIGEST\" -t {team_image} {team}\npodman {podman_flags} push --tls-verify=false {team_image}\n",
            log = rebuilds.display(),
            team = team.display(),
        ),
    )
    .unwrap();
    let team_env = || {
        let config = airlock.run(&["inspect", "--config", &team_image]).success().stdout;
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        config["config"]["Env"].as_array().unwrap().iter().filter_map(|v| v.as_str()).find(|v| v.starts_with("BACKGROUND_COLOR=")).unwrap_or("").to_owned()
    };
    let config = dir.path().join("airlock.yaml");
    let yaml = format!(
        r#"runtime:
  command: podman
  args: {args}
  run_args: {run_args}
imports:
  - name: node
    source: {source}
    tags: [15-alpine]
    staging: {staging}
    target: {target}
    gates:
      - name: build-and-validate-base-image
        test:
          dockerfile: {context}/Dockerfile
      - name: scan
        command: [sh, -c, 'test "$AIRLOCK_DIGEST" = "{{{{digest}}}}" && echo scanned {{{{reference}}}}']
    dependents:
      - name: dev-team-a/hello-world
        command: [sh, {rebuild}]
      - webhook: {webhook}
"#,
        args = yaml_list(&podman.global_flags()),
        run_args = yaml_list(&Podman::run_flags()),
        source = served.at("upstream/node"),
        staging = served.at("staging/node"),
        target = served.at("base-artifacts/node"),
        context = context.display(),
        rebuild = rebuild.display(),
        webhook = sink.url(),
    );
    std::fs::write(&config, yaml).unwrap();
    let file = config.to_str().unwrap();
    let stable = served.at("base-artifacts/node:15-alpine");

    // An upstream change the gates accept: staged, tested, promoted under both tags.
    let orange = upstream.publish(&airlock, &served, "Orange");
    let first = airlock.run(&["import", "-f", file, "-o", "json"]).success().json();
    let result = &first["results"][0];
    assert_eq!(result["action"], "promoted", "{first}");
    let run1 = result["run_id"].as_str().unwrap().to_owned();
    assert_eq!(skopeo_digest(&format!("docker://{stable}")), orange, "the stable tag carries the upstream digest");
    assert_eq!(skopeo_digest(&format!("docker://{}", served.at(&format!("base-artifacts/node:15-alpine-{run1}")))), orange, "and so does the unique tag");
    assert_eq!(skopeo_digest(&format!("docker://{}", served.at(&format!("staging/node:15-alpine-{run1}")))), orange);
    // The gate report hangs off the promoted digest.
    let (status, body) = crate::harness::http_get(&served.url(&format!("/v2/base-artifacts/node/referrers/{orange}?artifactType=application/vnd.airlock.gate-report.v1%2Bjson")));
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(listed["manifests"].as_array().unwrap().len(), 1, "{listed}");
    // Dependents heard once, with the new digest.
    assert_eq!(crate::harness::read(&rebuilds).lines().count(), 1);
    assert!(crate::harness::read(&rebuilds).starts_with(&orange));
    assert_eq!(team_env(), "BACKGROUND_COLOR=Orange", "the team's image was rebuilt on the promoted base");
    let team_digest = airlock.run(&["digest", &team_image]).success().stdout;
    let events = sink.wait_for(1);
    assert_eq!(events[0]["new_digest"], orange);
    assert_eq!(events[0]["import"], "node");

    let log = airlock.run(&["runs", "logs", &run1, "-f", file]).success().stdout;
    assert!(log.contains("dependent `dev-team-a/hello-world` notified"), "{log}");
    assert!(log.contains("/******: 200") && !log.contains("/events"), "a webhook's path stays out of the run log: {log}");

    // Nothing changed upstream: nothing runs.
    let again = airlock.run(&["import", "-f", file, "-o", "json"]).success().json();
    assert_eq!(again["results"][0]["action"], "up_to_date");

    // A red background: the test gate fails, the target keeps the validated digest.
    let red = upstream.publish(&airlock, &served, "RED");
    let rejected = airlock.run(&["import", "-f", file, "-o", "json"]).code(1).json();
    let result = &rejected["results"][0];
    assert_eq!(result["action"], "failed");
    assert!(result["reason"].as_str().unwrap().contains("build-and-validate-base-image"), "{result}");
    let run2 = result["run_id"].as_str().unwrap().to_owned();
    assert_eq!(skopeo_digest(&format!("docker://{stable}")), orange, "base-artifacts still serves the good digest");
    let logs = airlock.run(&["runs", "logs", &run2, "-f", file]).success().stdout;
    assert!(logs.contains("ERROR: Invalid Color: RED"), "{logs}");
    assert!(logs.contains("--- gate `scan` (command): skipped"), "{logs}");
    assert_eq!(crate::harness::read(&rebuilds).lines().count(), 1, "a failure triggers no dependent");
    assert_eq!(airlock.run(&["digest", &team_image]).success().stdout, team_digest, "the team's image was not rebuilt");
    // The rejected digest is not retried on every run.
    let retried = airlock.run(&["import", "-f", file, "-o", "json"]).code(1).json();
    assert_eq!(retried["results"][0]["action"], "rejected_before");

    // A green background: promoted; the dependent hears old and new.
    let green = upstream.publish(&airlock, &served, "Green");
    let third = airlock.run(&["import", "-f", file, "-o", "json"]).success().json();
    assert_eq!(third["results"][0]["action"], "promoted");
    let run3 = third["results"][0]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(skopeo_digest(&format!("docker://{stable}")), green);
    let heard = crate::harness::read(&rebuilds);
    assert_eq!(heard.lines().nth(1).unwrap(), format!("{green} {orange} {run3}"));
    assert_eq!(team_env(), "BACKGROUND_COLOR=Green");
    assert_eq!(sink.wait_for(2).len(), 2);
    assert_ne!(red, green);

    // The run table, as seed 004 prints it, and as JSON.
    let table = airlock.run(&["runs", "list", "-f", file]).success().stdout;
    assert!(table.starts_with("RUN ID  TASK  PLATFORM     STATUS     TRIGGER  STARTED"), "{table}");
    let runs = airlock.run(&["runs", "list", "-f", file, "-o", "json"]).success().json();
    let statuses: Vec<&str> = runs["runs"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["succeeded", "failed", "succeeded"]);
    assert_eq!(runs["runs"][0]["platform"], "linux/amd64");
    assert_eq!(runs["runs"][1]["upstream_digest"], red);

    // Rollback: to the promotion before the current one, then to a run by id.
    let back = airlock.run(&["rollback", "node", "-f", file, "-o", "json"]).success().json();
    assert_eq!(back["results"][0]["promoted_digest"], orange);
    assert_eq!(skopeo_digest(&format!("docker://{stable}")), orange);
    let runs = airlock.run(&["runs", "list", "-f", file, "-o", "json"]).success().json();
    assert_eq!(runs["runs"][0]["trigger"], "rollback");
    // Upstream did not change: the watcher's next look does not undo the rollback.
    assert_eq!(airlock.run(&["import", "-f", file, "-o", "json"]).success().json()["results"][0]["action"], "up_to_date");
    airlock.run(&["rollback", "node", "-f", file, "--to", &run3]).success();
    assert_eq!(skopeo_digest(&format!("docker://{stable}")), green);
    airlock.run(&["rollback", "node", "-f", file, "--to", &red]).code(1).stderr_has("never promoted");
}

pub(crate) fn policy_config(dir: &Path, served: &Served, extra: &str) -> std::path::PathBuf {
    let config = dir.join("airlock.yaml");
    std::fs::write(
        &config,
        format!(
            "imports:\n  - name: node\n    source: {}\n    tags: [15-alpine]\n    staging: {}\n    target: {}\n    gates:\n      - name: policy\n        policy: {{forbid_env: {{BACKGROUND_COLOR: [red]}}}}\n{extra}",
            served.at("upstream/node"),
            served.at("staging/node"),
            served.at("base-artifacts/node")
        ),
    )
    .unwrap();
    config
}

/// Waits up to `seconds` for `check`.
pub(crate) fn eventually(seconds: u64, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    false
}

pub(crate) struct Killed(pub(crate) std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn watch_polls_upstream_and_two_watchers_never_double_promote() {
    let dir = crate::harness::tempdir();
    let served = Served::start(&dir.path().join("registry"));
    let airlock = Airlock::new();
    let upstream = Upstream::new(dir.path());
    let config = policy_config(dir.path(), &served, "    interval: 1s\n");
    let file = config.to_str().unwrap();
    let first = upstream.publish(&airlock, &served, "Orange");
    let _one = Killed(airlock.spawn(&["watch", "-f", file]));
    let _two = Killed(airlock.spawn(&["watch", "-f", file]));
    let stable = served.at("base-artifacts/node:15-alpine");
    let promoted = |digest: &str| airlock.run(&["digest", &stable]).stdout.trim() == digest;
    assert!(eventually(20, || promoted(&first)), "the watchers promoted the first digest");
    let second = upstream.publish(&airlock, &served, "Green");
    assert!(eventually(20, || promoted(&second)), "an upstream change is noticed within the interval");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let runs = airlock.run(&["runs", "list", "-f", file, "-o", "json"]).success().json();
    let runs = runs["runs"].as_array().unwrap();
    for digest in [&first, &second] {
        let promotions = runs.iter().filter(|r| r["upstream_digest"] == **digest && r["status"] == "succeeded").count();
        assert_eq!(promotions, 1, "two watchers, one promotion of {digest}: {runs:?}");
    }
    assert!(runs.iter().all(|r| r["trigger"] == "image_update"));
}

#[test]
fn a_run_broken_by_a_registry_error_is_tried_again_but_a_rejection_is_not() {
    let dir = crate::harness::tempdir();
    let served = Served::start(&dir.path().join("registry"));
    let proxy = FaultProxy::start(&served.address);
    let airlock = Airlock::new();
    let upstream = Upstream::new(dir.path());
    // Staging goes through a proxy that fails every upload for now.
    let config = dir.path().join("airlock.yaml");
    std::fs::write(
        &config,
        format!(
            "imports:\n  - name: node\n    source: {}\n    tags: [15-alpine]\n    staging: {}\n    target: {}\n    gates:\n      - name: policy\n        policy: {{forbid_env: {{BACKGROUND_COLOR: [red]}}}}\n",
            served.at("upstream/node"),
            proxy.at("staging/node"),
            served.at("base-artifacts/node")
        ),
    )
    .unwrap();
    let file = config.to_str().unwrap();
    let good = upstream.publish(&airlock, &served, "Orange");
    proxy.inject(Fault::Status { path: "/blobs/uploads/", status: 503, times: 1000, retry_after: None });
    let broken = airlock.run(&["import", "-f", file, "--retries", "1", "-o", "json"]).code(1).json();
    // The reason (what `runs` and `watch` show) says the cause, not only that airlock gave up.
    let reason = broken["results"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("staging failed") && reason.contains("503") && reason.contains("gave up after 1 attempt"), "{broken}");
    // The registry is back: the next plain run tries the same digest again and promotes it.
    proxy.clear_faults();
    let retried = airlock.run(&["import", "-f", file, "-o", "json"]).success().json();
    assert_eq!(retried["results"][0]["action"], "promoted", "{retried}");
    assert_eq!(airlock.run(&["digest", &served.at("base-artifacts/node:15-alpine")]).success().stdout.trim(), good);
    // A gate's refusal, in contrast, stands until upstream changes.
    upstream.publish(&airlock, &served, "RED");
    airlock.run(&["import", "-f", file]).code(1);
    let again = airlock.run(&["import", "-f", file, "-o", "json"]).code(1).json();
    assert_eq!(again["results"][0]["action"], "rejected_before");
}

#[test]
fn a_unique_tag_is_never_moved_to_other_content() {
    let dir = crate::harness::tempdir();
    let served = Served::start(&dir.path().join("registry"));
    let airlock = Airlock::new();
    let upstream = Upstream::new(dir.path());
    // A template that is not unique at all: the second promotion would reuse the tag.
    let config = policy_config(dir.path(), &served, "    unique_tag: '{{tag}}-fixed'\n");
    let file = config.to_str().unwrap();
    let first = upstream.publish(&airlock, &served, "Orange");
    airlock.run(&["import", "-f", file]).success();
    upstream.publish(&airlock, &served, "Green");
    let refused = airlock.run(&["import", "-f", file, "-o", "json"]).code(1).json();
    assert!(refused["results"][0]["reason"].as_str().unwrap().contains("15-alpine-fixed already names"), "{refused}");
    assert_eq!(airlock.run(&["digest", &served.at("base-artifacts/node:15-alpine-fixed")]).success().stdout.trim(), first);
    assert_eq!(airlock.run(&["digest", &served.at("base-artifacts/node:15-alpine")]).success().stdout.trim(), first, "the stable tag stays too");
}

#[test]
fn a_push_notification_from_airlock_serve_triggers_the_import() {
    let dir = crate::harness::tempdir();
    let port = crate::harness::registry::free_port();
    let serve_yaml = dir.path().join("serve.yaml");
    std::fs::write(&serve_yaml, format!("notifications:\n  - url: http://127.0.0.1:{port}/events\n")).unwrap();
    let served = Served::start_with(&dir.path().join("registry"), &["--config", serve_yaml.to_str().unwrap()]);
    let airlock = Airlock::new();
    let upstream = Upstream::new(dir.path());
    // Polling once an hour: only the notification can explain a prompt run.
    let config = policy_config(dir.path(), &served, "    interval: 1h\n");
    let file = config.to_str().unwrap();
    let first = upstream.publish(&airlock, &served, "Orange");
    let _watcher = Killed(airlock.spawn(&["watch", "-f", file, "--listen", &format!("127.0.0.1:{port}")]));
    let stable = served.at("base-artifacts/node:15-alpine");
    assert!(eventually(20, || airlock.run(&["digest", &stable]).stdout.trim() == first), "the first look promotes");
    let second = upstream.publish(&airlock, &served, "Green");
    assert!(eventually(20, || airlock.run(&["digest", &stable]).stdout.trim() == second), "the push notification triggered a run");
    // The watch's listener serves the web page too, read-only: a watch has no users.
    let (status, page) = crate::harness::http_get(&format!("http://127.0.0.1:{port}/ui/runs"));
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Image Update") && page.contains("node"), "{page}");
    let (_, imports) = crate::harness::http_get(&format!("http://127.0.0.1:{port}/ui/"));
    assert!(imports.contains(&second) && !imports.contains("Run now"), "{imports}");
    assert!(imports.contains(" UTC (every 1h)"), "the watch's next look: {imports}");
}

#[test]
fn distribution_notifications_trigger_imports_and_timers_rerun_the_gates() {
    let dir = crate::harness::tempdir();
    let port = crate::harness::registry::free_port();
    let upstream = crate::harness::Registry::start_notifying(&format!("http://127.0.0.1:{port}/events"));
    let served = Served::start(&dir.path().join("registry"));
    let airlock = Airlock::new();
    let config = dir.path().join("airlock.yaml");
    let write = |timer: &str| {
        std::fs::write(
            &config,
            format!(
                "imports:\n  - name: app\n    source: {}\n    tags: [v1]\n    staging: {}\n    target: {}\n    interval: 1h\n{timer}    gates:\n      - name: policy\n        policy: {{max_size: 1GB}}\n",
                upstream.at("team/app"),
                served.at("staging/app"),
                served.at("base-artifacts/app")
            ),
        )
        .unwrap()
    };
    write("");
    let file = config.to_str().unwrap();
    let first = crate::harness::fixtures::image("amd64", &[crate::harness::fixtures::layer(620, 1000)]);
    crate::harness::fixtures::push(&upstream.host(), "team/app", &first, Some("v1"), None);
    let stable = served.at("base-artifacts/app:v1");
    {
        let _watcher = Killed(airlock.spawn(&["watch", "-f", file, "--listen", &format!("127.0.0.1:{port}")]));
        assert!(eventually(20, || airlock.run(&["digest", &stable]).stdout.trim() == first.digest), "the first look promotes");
        // docker-registry announces the push of a new v1; polling is an hour away.
        let second = crate::harness::fixtures::image("amd64", &[crate::harness::fixtures::layer(621, 1000)]);
        crate::harness::fixtures::push(&upstream.host(), "team/app", &second, Some("v1"), None);
        assert!(eventually(20, || airlock.run(&["digest", &stable]).stdout.trim() == second.digest), "distribution's notification triggered a run");
    }
    // A timer runs the gates again although upstream did not move.
    write("    timer: 1s\n");
    let _watcher = Killed(airlock.spawn(&["watch", "-f", file]));
    let timer_runs = || {
        let runs = airlock.run(&["runs", "list", "-f", file, "-o", "json"]).success().json();
        runs["runs"].as_array().unwrap().iter().filter(|r| r["trigger"] == "timer" && r["status"] == "succeeded").count()
    };
    assert!(eventually(20, || timer_runs() >= 2), "timer runs happen on their period");
}

#[test]
fn a_kill_during_promotion_leaves_the_stable_tag_on_complete_content() {
    let dir = crate::harness::tempdir();
    let served = Served::start(&dir.path().join("registry"));
    let target = crate::harness::Registry::start(crate::harness::Auth::None);
    let airlock = Airlock::new();
    // A big upstream image, so the promotion into another registry takes a while.
    let image = crate::harness::fixtures::image("amd64", &[crate::harness::fixtures::layer(600, 24 * 1024 * 1024), crate::harness::fixtures::layer(601, 4096)]);
    crate::harness::fixtures::push(&served.address, "upstream/node", &image, Some("15-alpine"), None);
    let config = dir.path().join("airlock.yaml");
    std::fs::write(
        &config,
        format!(
            "imports:\n  - name: node\n    source: {}\n    tags: [15-alpine]\n    staging: {}\n    target: {}\n    gates:\n      - name: policy\n        policy: {{max_size: 1GB}}\n",
            served.at("upstream/node"),
            served.at("staging/node"),
            target.at("base-artifacts/node")
        ),
    )
    .unwrap();
    let file = config.to_str().unwrap();
    let stable = target.at("base-artifacts/node:15-alpine");
    let out = crate::harness::tempdir();
    // Kill runs later and later until one finishes before its kill: every phase gets a kill.
    let mut kills = 0;
    for step in 1..=80u64 {
        let mut child = airlock.spawn(&["import", "-f", file, "--force"]);
        std::thread::sleep(std::time::Duration::from_millis(step * 25));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let _ = child.kill();
        let _ = child.wait();
        kills += 1;
        // Whatever the moment, the stable tag is absent or on complete, verified content.
        let digest = airlock.run(&["digest", &stable]);
        if digest.status == 0 {
            assert_eq!(digest.stdout.trim(), image.digest);
            let copy = out.path().join(format!("check-{step}"));
            airlock.run(&["copy", &stable, &format!("ocidir://{}:check", copy.display())]).success();
        }
    }
    assert!(kills >= 3, "only {kills} runs were killed before one finished");
    airlock.run(&["import", "-f", file, "--force"]).success();
    assert_eq!(skopeo_digest(&format!("docker://{stable}")), image.digest);
    let runs = airlock.run(&["runs", "list", "-f", file, "-o", "json"]).success().json();
    let runs = runs["runs"].as_array().unwrap();
    assert_eq!(runs[0]["status"], "succeeded");
    assert!(runs.iter().all(|r| r["status"] != "running"), "killed runs are not left `Running`: {runs:?}");
}

#[test]
fn a_cosign_signature_by_the_configured_key_is_required() {
    let openssl = require("openssl", "openssl");
    let dir = crate::harness::tempdir();
    let served = Served::start(&dir.path().join("registry"));
    let airlock = Airlock::new();
    let keys = |name: &str| {
        let private = dir.path().join(format!("{name}.key"));
        let public = dir.path().join(format!("{name}.pub"));
        let mut command = Command::new(&openssl);
        command.args(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", private.to_str().unwrap()]);
        run_command(command, None).success();
        let mut command = Command::new(&openssl);
        command.args(["ec", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);
        run_command(command, None).success();
        (private, public)
    };
    let (trusted_key, trusted_pub) = keys("trusted");
    let (other_key, _) = keys("other");
    let signed = crate::harness::fixtures::image("amd64", &[crate::harness::fixtures::layer(610, 1000)]);
    let unsigned = crate::harness::fixtures::image("amd64", &[crate::harness::fixtures::layer(611, 1000)]);
    let wrongly = crate::harness::fixtures::image("amd64", &[crate::harness::fixtures::layer(612, 1000)]);
    for (tag, fixture) in [("signed", &signed), ("unsigned", &unsigned), ("wrongly", &wrongly)] {
        crate::harness::fixtures::push(&served.address, "upstream/tool", fixture, Some(tag), None);
    }
    // cosign's layout: `sha256-<hex>.sig` holding a simple-signing payload and its signature.
    let sign = |fixture: &crate::harness::Fixture, key: &Path| {
        let payload = serde_json::to_vec(&serde_json::json!({
            "critical": {"identity": {"docker-reference": served.at("upstream/tool")}, "image": {"docker-manifest-digest": fixture.digest}, "type": "cosign container image signature"},
            "optional": null,
        }))
        .unwrap();
        let payload_path = dir.path().join("payload.json");
        std::fs::write(&payload_path, &payload).unwrap();
        let mut command = Command::new(&openssl);
        command.args(["dgst", "-sha256", "-sign", key.to_str().unwrap(), payload_path.to_str().unwrap()]);
        let signature = run_command(command, None).success().stdout_bytes;
        use base64::Engine as _;
        let signature = base64::engine::general_purpose::STANDARD.encode(signature);
        let layer = crate::harness::fixtures::Blob::new("application/vnd.dev.cosign.simplesigning.v1+json", payload);
        let config = crate::harness::fixtures::Blob::new("application/vnd.oci.image.config.v1+json", b"{}".to_vec());
        let mut layer_descriptor = layer.descriptor();
        layer_descriptor["annotations"] = serde_json::json!({"dev.cosignproject.cosign/signature": signature});
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config.descriptor(), "layers": [layer_descriptor],
        }))
        .unwrap();
        let sig = crate::harness::Fixture {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: crate::harness::sha256(&manifest),
            manifest,
            blobs: vec![config, layer],
            children: vec![],
        };
        let tag = format!("sha256-{}.sig", fixture.digest.trim_start_matches("sha256:"));
        crate::harness::fixtures::push(&served.address, "upstream/tool", &sig, Some(&tag), None);
    };
    sign(&signed, &trusted_key);
    sign(&wrongly, &other_key);
    let config = dir.path().join("airlock.yaml");
    std::fs::write(
        &config,
        format!(
            "imports:\n  - name: tool\n    source: {}\n    tags: [signed, unsigned, wrongly]\n    staging: {}\n    target: {}\n    gates:\n      - name: signed\n        signature: {{key: {}}}\n",
            served.at("upstream/tool"),
            served.at("staging/tool"),
            served.at("tools/tool"),
            trusted_pub.display()
        ),
    )
    .unwrap();
    let report = airlock.run(&["import", "-f", config.to_str().unwrap(), "-o", "json"]).code(1).json();
    let by_tag = |tag: &str| report["results"].as_array().unwrap().iter().find(|r| r["tag"] == tag).cloned().unwrap();
    assert_eq!(by_tag("signed")["action"], "promoted", "{report}");
    assert_eq!(by_tag("unsigned")["action"], "failed");
    assert!(by_tag("unsigned")["reason"].as_str().unwrap().contains("unsigned"), "{report}");
    assert_eq!(by_tag("wrongly")["action"], "failed");
    assert!(by_tag("wrongly")["reason"].as_str().unwrap().contains("does not verify"), "{report}");
    assert_eq!(airlock.run(&["digest", &served.at("tools/tool:signed")]).success().stdout.trim(), signed.digest);
    airlock.run(&["digest", &served.at("tools/tool:unsigned")]).code(1);
}

#[test]
fn a_malformed_airlock_yaml_gets_a_precise_error() {
    let dir = crate::harness::tempdir();
    let config = dir.path().join("airlock.yaml");
    std::fs::write(&config, "imports:\n  - name: node\n    source: upstream/node\n    tags: [1]\n    staging: staging/node\n    target: base/node\n    gates:\n      - name: a\n        polcy: {}\n").unwrap();
    let airlock = Airlock::new();
    let file = config.to_str().unwrap();
    airlock.run(&["import", "-f", file]).code(2).stderr_has(&format!("{file}:9:9: unknown field `polcy`"));
    std::fs::write(&config, "imports:\n  - name: node\n    source: upstream/node\n    tags: [1]\n    staging: Staging/Node\n    target: base/node\n").unwrap();
    airlock.run(&["import", "-f", file]).code(2).stderr_has(&format!("{file}:5:14: imports[0].staging: invalid reference"));
    // Reading the history needs only `state`: a file whose imports are wrong still shows it.
    airlock.run(&["runs", "list", "-f", file]).success();
    airlock.run(&["import", "-f", &dir.path().join("missing.yaml").display().to_string()]).code(2).stderr_has("cannot read");
}

#[test]
fn the_demo_promotes_the_good_image_and_rejects_the_red_one() {
    let airlock = Airlock::new();
    let demo = airlock.run(&["demo", "-o", "json"]).success().json();
    assert_eq!(demo["stable_digest"], demo["good_digest"]);
    assert_ne!(demo["good_digest"], demo["bad_digest"]);
    assert_eq!(demo["rebuilds"].as_array().unwrap().len(), 1);
    let statuses: Vec<&str> = demo["runs"].as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["failed", "succeeded"]);
    let text = airlock.run(&["demo"]).success().stdout;
    assert!(text.contains("RUN ID  TASK  PLATFORM     STATUS     TRIGGER       STARTED"), "{text}");
    assert!(text.contains("BACKGROUND_COLOR=RED is forbidden"), "{text}");
}

#[test]
fn a_gate_that_cannot_run_is_an_error_and_the_digest_is_run_again_once_it_can() {
    let (dir, served, airlock, upstream) = scene();
    let podman = podman_for_gates(&airlock);
    let context = test_context(dir.path());
    let config = dir.path().join("airlock.yaml");
    let write_config = |runtime: &str| {
        let yaml = format!(
            "runtime:\n  command: {runtime}\n  args: {args}\n  run_args: {run_args}\nimports:\n  - name: node\n    source: {source}\n    tags: [15-alpine]\n    staging: {staging}\n    target: {target}\n    gates:\n      - name: validate\n        test:\n          dockerfile: {context}/Dockerfile\n",
            args = yaml_list(&podman.global_flags()),
            run_args = yaml_list(&Podman::run_flags()),
            source = served.at("upstream/node"),
            staging = served.at("staging/node"),
            target = served.at("base-artifacts/node"),
            context = context.display(),
        );
        std::fs::write(&config, yaml).unwrap();
    };
    let file = config.to_str().unwrap();
    let good = upstream.publish(&airlock, &served, "Orange");

    // The runtime is not installed: the run is an error, not a refusal, and exits non-zero.
    write_config(&dir.path().join("no-such-podman").display().to_string());
    let broken = airlock.run(&["import", "-f", file, "-o", "json"]).code(1).json();
    assert_eq!(broken["results"][0]["action"], "error", "{broken}");
    assert!(broken["results"][0]["reason"].as_str().unwrap().contains("gate `validate` could not run"), "{broken}");
    let runs = airlock.run(&["runs", "list", "-f", file, "-o", "json"]).success().json();
    assert_eq!(runs["runs"][0]["status"], "error", "{runs}");
    let text = airlock.run(&["runs", "list", "-f", file]).success().stdout;
    assert!(text.contains("Error"), "{text}");

    // The runtime is back: a plain import (no --force) runs the same digest again and promotes it.
    write_config("podman");
    let fixed = airlock.run(&["import", "-f", file, "-o", "json"]).success().json();
    assert_eq!(fixed["results"][0]["action"], "promoted", "{fixed}");
    assert_eq!(fixed["results"][0]["upstream_digest"], good);
    assert_eq!(airlock.run(&["digest", &served.at("base-artifacts/node:15-alpine")]).success().stdout.trim(), good);
}

#[test]
fn command_gates_run_without_airlocks_secrets() {
    let (dir, served, airlock, upstream) = scene();
    let config = dir.path().join("airlock.yaml");
    std::fs::write(
        &config,
        format!(
            "registries:\n  {host}:\n    username: importer\n    password_env: IMPORTER_SECRET\nimports:\n  - name: node\n    source: {source}\n    tags: [15-alpine]\n    staging: {staging}\n    target: {target}\n    gates:\n      - name: printenv\n        env: [SCANNER_TOKEN]\n        command: [sh, -c, 'env; test -n \"$SCANNER_TOKEN\" && test -n \"$AIRLOCK_DIGEST\" && test -n \"$PATH\"']\n",
            host = served.address,
            source = served.at("upstream/node"),
            staging = served.at("staging/node"),
            target = served.at("base-artifacts/node"),
        ),
    )
    .unwrap();
    let file = config.to_str().unwrap();
    upstream.publish(&airlock, &served, "Orange");
    let secret = "s3cr3t-importer-password";
    let result = airlock
        .run_env(&["import", "-f", file, "-o", "json"], &[("IMPORTER_SECRET", secret), ("UNRELATED_SECRET", "leaky-value"), ("SCANNER_TOKEN", "passed-on-purpose")])
        .success()
        .json();
    assert_eq!(result["results"][0]["action"], "promoted", "{result}");
    let run_id = result["results"][0]["run_id"].as_str().unwrap().to_owned();
    // Reading history needs no secret: IMPORTER_SECRET is not set here.
    let log = airlock.run(&["runs", "logs", &run_id, "-f", file]).success().stdout;
    assert_eq!(airlock.run(&["runs", "logs", "-f", file]).success().stdout, log, "without an id: the latest run");
    assert!(airlock.run(&["runs", "list", "-f", file]).success().stdout.contains(&run_id));
    assert!(log.contains("AIRLOCK_DIGEST=") && log.contains("SCANNER_TOKEN=passed-on-purpose"), "{log}");
    assert!(!log.contains(secret) && !log.contains("IMPORTER_SECRET") && !log.contains("leaky-value"), "{log}");
    // The database with its write-ahead log.
    for file in std::fs::read_dir(dir.path().join(".airlock")).unwrap() {
        let bytes = std::fs::read(file.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(secret) && !text.contains("leaky-value"), "a secret reached the run database");
    }
}

#[test]
fn every_command_the_demo_suggests_works_as_printed() {
    use std::io::BufRead;
    let dir = crate::harness::tempdir();
    let airlock = Airlock::new();
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["demo", "--keep", "--dir", dir.path().to_str().unwrap(), "-o", "json"])
        .env("HOME", airlock.home.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let mut document = String::new();
    let mut lines = std::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        document.push_str(&line);
        document.push('\n');
        if line == "}" {
            break;
        }
    }
    let report: serde_json::Value = serde_json::from_str(&document).unwrap();
    let config = report["config"].as_str().unwrap();
    assert!(std::fs::read_to_string(config).unwrap().contains("# airlock.yaml, written by `airlock demo`"));
    let suggestions: Vec<String> = report["try"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    assert!(suggestions.iter().any(|c| c.starts_with("airlock rollback")), "{suggestions:?}");
    for suggestion in &suggestions {
        let words: Vec<&str> = suggestion.split_whitespace().collect();
        let run = match words[0] {
            "airlock" => airlock.run(&words[1..]),
            "skopeo" => crate::harness::skopeo(&words[1..]),
            other => panic!("the demo suggests `{other}`"),
        };
        assert_eq!(run.status, 0, "`{suggestion}` failed:\n{}{}", run.stdout, run.stderr);
    }
    let _ = demo.kill();
    let _ = demo.wait();
}

#[test]
fn a_commit_to_the_gates_repository_runs_the_gates_again() {
    let (dir, served, airlock, upstream) = scene();
    let git = require("git", "git");
    let gates = dir.path().join("gates");
    std::fs::create_dir_all(&gates).unwrap();
    let in_gates = |args: &[&str]| {
        let mut command = Command::new(&git);
        command.arg("-C").arg(&gates).args(["-c", "user.name=t", "-c", "user.email=t@example.com"]).args(args);
        run_command(command, None).success();
    };
    in_gates(&["init", "-q"]);
    std::fs::write(gates.join("check.sh"), "echo checked $AIRLOCK_DIGEST\nexit 0\n").unwrap();
    in_gates(&["add", "check.sh"]);
    in_gates(&["commit", "-qm", "a gate that passes"]);
    let config = dir.path().join("airlock.yaml");
    std::fs::write(
        &config,
        format!(
            "imports:\n  - name: node\n    source: {}\n    tags: [15-alpine]\n    staging: {}\n    target: {}\n    interval: 1s\n    gate_repo: gates\n    gates:\n      - name: check\n        command: [sh, '{}']\n",
            served.at("upstream/node"),
            served.at("staging/node"),
            served.at("base-artifacts/node"),
            gates.join("check.sh").display()
        ),
    )
    .unwrap();
    let file = config.to_str().unwrap();
    let good = upstream.publish(&airlock, &served, "Orange");
    let _watch = Killed(airlock.spawn(&["watch", "-f", file]));
    let stable = served.at("base-artifacts/node:15-alpine");
    assert!(eventually(20, || airlock.run(&["digest", &stable]).stdout.trim() == good), "the first digest is promoted");
    // The gate is made stricter and committed: the promoted digest goes through it again.
    std::fs::write(gates.join("check.sh"), "echo a stricter check refuses $AIRLOCK_DIGEST\nexit 1\n").unwrap();
    in_gates(&["commit", "-qam", "a stricter gate"]);
    let commit_run = || {
        let runs = airlock.run(&["runs", "list", "-f", file, "-o", "json"]).success().json();
        runs["runs"].as_array().unwrap().iter().find(|r| r["trigger"] == "commit" && r["status"] != "running").cloned()
    };
    assert!(eventually(20, || commit_run().is_some()), "a run with trigger commit");
    let run = commit_run().unwrap();
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["upstream_digest"], good);
    // The stable tag stays where it was, and `runs` shows it in the table.
    assert_eq!(airlock.run(&["digest", &stable]).success().stdout.trim(), good);
    let table = airlock.run(&["runs", "list", "-f", file]).success().stdout;
    assert!(table.contains("Commit"), "{table}");
}
