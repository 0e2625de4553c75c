//! Discovery and onboarding (seed 001): charts rendered by the real Helm engine, sources and
//! targets on real `docker-registry` servers.

use std::path::Path;

use crate::harness::fixtures::{image, layer, push};
use crate::harness::{helm_bin, helm_package, helm_push, helm_repo_index, skopeo_digest, Airlock, Auth, Registry, StaticHttp};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The seed's worked example as a chart: `repository/release/contoso-{a,b,c}:1.0.0` and, in a
/// subchart, `repository/test-release/contoso-test:1.0.0`; a ConfigMap with an `image` key that
/// is no image.
fn contoso_chart(dir: &Path) -> std::path::PathBuf {
    let chart = dir.join("contoso");
    write(&chart.join("Chart.yaml"), "apiVersion: v2\nname: contoso\nversion: 1.0.0\n");
    write(
        &chart.join("values.yaml"),
        "global:\n  registry: repository\na:\n  image: release/contoso-a\n  tag: 1.0.0\nb:\n  image: release/contoso-b\n  tag: 1.0.0\nc:\n  repository: repository/release/contoso-c\n  tag: 1.0.0\n",
    );
    write(
        &chart.join("templates/deployment.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}-core\nspec:\n  template:\n    spec:\n      initContainers:\n        - name: init\n          image: \"{{ .Values.global.registry }}/{{ .Values.a.image }}:{{ .Values.a.tag }}\"\n      containers:\n        - name: a\n          image: \"{{ .Values.global.registry }}/{{ .Values.a.image }}:{{ .Values.a.tag }}\"\n        - name: b\n          image: \"{{ .Values.global.registry }}/{{ .Values.b.image }}:{{ .Values.b.tag }}\"\n",
    );
    write(
        &chart.join("templates/cronjob.yaml"),
        "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: {{ .Release.Name }}-c\nspec:\n  schedule: \"@daily\"\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers:\n            - name: c\n              image: \"{{ .Values.c.repository }}:{{ .Values.c.tag }}\"\n",
    );
    write(&chart.join("templates/configmap.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  image: not/an-image:1\n");
    write(&chart.join("templates/NOTES.txt"), "installed {{ .Release.Name }}\n");
    write(&chart.join("charts/contoso-test/Chart.yaml"), "apiVersion: v2\nname: contoso-test\nversion: 1.0.0\n");
    write(&chart.join("charts/contoso-test/values.yaml"), "image: repository/test-release/contoso-test:1.0.0\n");
    write(
        &chart.join("charts/contoso-test/templates/pod.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: contoso-test\nspec:\n  containers:\n    - name: test\n      image: {{ .Values.image }}\n",
    );
    chart
}

fn path_with(helm: &Path) -> String {
    format!("{}:{}", helm.display(), std::env::var("PATH").unwrap_or_default())
}

fn image_names(json: &serde_json::Value) -> Vec<String> {
    json["images"].as_array().unwrap().iter().map(|i| i["image"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn discover_renders_charts_with_subcharts_values_and_sets() {
    let dir = crate::harness::tempdir();
    let chart = contoso_chart(dir.path());
    let helm = helm_bin();
    let path = path_with(helm.path());
    let airlock = Airlock::new();
    let found = airlock.run_env(&["discover", chart.to_str().unwrap(), "-o", "json"], &[("PATH", &path)]).success().json();
    assert_eq!(
        image_names(&found),
        ["repository/test-release/contoso-test:1.0.0", "repository/release/contoso-c:1.0.0", "repository/release/contoso-a:1.0.0", "repository/release/contoso-b:1.0.0"]
    );
    let a = &found["images"][2];
    assert_eq!(a["locations"].as_array().unwrap().len(), 2, "named by a container and an init container: {a}");
    assert_eq!(a["locations"][0], "contoso/templates/deployment.yaml: Deployment/airlock-discover-core container `a`");
    assert_eq!(found["images"][0]["reference"], "docker.io/repository/test-release/contoso-test:1.0.0");

    // Values files and --set, as helm takes them.
    let values = dir.path().join("override.yaml");
    write(&values, "a:\n  tag: 2.0.0\ncontoso-test:\n  image: registry.example.com/qa/contoso-test:9\n");
    let found = airlock
        .run_env(&["discover", chart.to_str().unwrap(), "-f", values.to_str().unwrap(), "--set", "b.tag=3.0.0", "-o", "json"], &[("PATH", &path)])
        .success()
        .json();
    let names = image_names(&found);
    assert!(names.contains(&"repository/release/contoso-a:2.0.0".to_owned()), "{names:?}");
    assert!(names.contains(&"repository/release/contoso-b:3.0.0".to_owned()), "{names:?}");
    assert!(names.contains(&"registry.example.com/qa/contoso-test:9".to_owned()), "subchart values are overridden too: {names:?}");
    // A packaged chart is rendered the same way.
    let packaged = dir.path().join("contoso-1.0.0.tgz");
    let status = std::process::Command::new("tar").args(["czf", packaged.to_str().unwrap(), "-C", dir.path().to_str().unwrap(), "contoso"]).status().unwrap();
    assert!(status.success());
    let from_package = airlock.run_env(&["discover", packaged.to_str().unwrap(), "-o", "json"], &[("PATH", &path)]).success().json();
    assert_eq!(image_names(&from_package).len(), 4);
    let text = airlock.run_env(&["discover", packaged.to_str().unwrap()], &[("PATH", &path)]).success().stdout;
    assert!(text.starts_with("IMAGE"), "{text}");
    assert!(text.contains("contoso/templates/deployment.yaml: Deployment/airlock-discover-core container `a` (+1 more)"), "{text}");
}

#[test]
fn discover_reads_manifests_dockerfiles_and_compose_files() {
    let dir = crate::harness::tempdir();
    let root = dir.path().join("deploy");
    write(
        &root.join("k8s/app.yaml"),
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: agent}\nspec:\n  template:\n    spec:\n      containers: [{name: agent, image: \"nginx:1.25\"}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: debug}\nspec:\n  containers: [{name: app, image: \"docker.io/library/nginx:1.25\"}]\n  ephemeralContainers: [{name: shell, image: \"busybox:1.36\"}]\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\nspec: {image: \"not-a-container:1\"}\n",
    );
    write(&root.join("build/Dockerfile"), "ARG BASE=golang:1.22\nFROM ${BASE} AS build\nFROM gcr.io/distroless/static:nonroot\nCOPY --from=build /app /app\n");
    // Interpolated as compose does: `${VAR:-default}` and `${VAR-default}` with VAR unset.
    write(&root.join("compose.yaml"), "services:\n  cache:\n    image: redis:${REDIS_TAG:-7}\n  web:\n    image: nginx:${NGINX_TAG-1.25}\n");
    let airlock = Airlock::new();
    let found = airlock.run(&["discover", root.to_str().unwrap(), "--build-arg", "BASE=golang:1.23", "-o", "json"]).success().json();
    assert_eq!(image_names(&found), ["golang:1.23", "gcr.io/distroless/static:nonroot", "redis:7", "nginx:1.25", "busybox:1.36"]);
    let nginx = found["images"].as_array().unwrap().iter().find(|i| i["image"] == "nginx:1.25").unwrap().clone();
    assert_eq!(nginx["locations"].as_array().unwrap().len(), 3, "one image, written two ways in three places: {nginx}");
    airlock.run(&["discover", dir.path().join("nothing").to_str().unwrap()]).code(2).stderr_has("does not exist");
}

/// A JSONC config in the seed's format; without values, `"default_values": ""` as AOSM's
/// generated input files have it (none, not the config's folder).
fn cnf_input(dir: &Path, sources: &[String], chart: &Path, values: Option<&Path>) -> std::path::PathBuf {
    let path = dir.join("cnf-input.jsonc");
    let values = format!(",\n      \"default_values\": \"{}\"", values.map(|v| v.display().to_string()).unwrap_or_default());
    let sources: Vec<String> = sources.iter().map(|s| format!("\"{s}\"")).collect();
    write(
        &path,
        &format!(
            "{{\n  // List of registries from which to pull the image(s).\n  \"image_sources\": [{}],\n  \"nf_name\": \"contoso\",\n  \"helm_packages\": [\n    {{\n      \"name\": \"contoso\",\n      \"path_to_chart\": \"{}\"{values},\n      \"depends_on\": [],\n    }},\n  ],\n}}\n",
            sources.join(", "),
            chart.display()
        ),
    );
    path
}

#[test]
fn onboard_the_seed_worked_example_with_a_namespace_source() {
    let dir = crate::harness::tempdir();
    let chart = contoso_chart(dir.path());
    // Two images the seed's tool mishandles: one without `/`, one whose first part is a namespace.
    write(
        &chart.join("templates/extras.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: extras\nspec:\n  containers:\n    - name: web\n      image: nginx:1.25\n    - name: tools\n      image: library/busybox:1.36\n",
    );
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    let mut digests = std::collections::BTreeMap::new();
    for (seed, path, tag) in [
        (700, "release/contoso-a", "1.0.0"),
        (701, "release/contoso-b", "1.0.0"),
        (702, "release/contoso-c", "1.0.1"),
        (703, "test/test-release/contoso-test", "1.0.0"),
        (704, "nginx", "1.25"),
        (705, "busybox", "1.36"),
    ] {
        let img = image("amd64", &[layer(seed, 2000)]);
        push(&source.host(), path, &img, Some(tag), None);
        digests.insert(path, img.digest);
    }
    let helm = helm_bin();
    let path = path_with(helm.path());
    // The package's default values are rendered with the chart: contoso-c is at 1.0.1.
    let defaults = dir.path().join("contoso-defaults.yaml");
    write(&defaults, "c:\n  tag: 1.0.1\n");
    let config = cnf_input(dir.path(), &[source.host(), format!("{}/test", source.host())], &chart, Some(&defaults));
    let target_place = format!("{}/nf", target.host());
    let airlock = Airlock::new();

    // The plan first: nothing copied, no lock.
    let plan = airlock.run_env(&["onboard", config.to_str().unwrap(), "--target", &target_place, "--dry-run", "-o", "json"], &[("PATH", &path)]).success().json();
    assert!(plan["results"].as_array().unwrap().iter().all(|r| r["status"] == "would_onboard"), "{plan}");
    assert!(!dir.path().join("airlock-onboard.lock.json").exists());
    assert!(!target.has_manifest("nf/release/contoso-a", "1.0.0", None));

    let report = airlock.run_env(&["onboard", config.to_str().unwrap(), "--target", &target_place, "-o", "json"], &[("PATH", &path)]).success().json();
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    let by_image = |image: &str| results.iter().find(|r| r["image"] == image).unwrap_or_else(|| panic!("{image} not in {report}")).clone();
    let test = by_image("repository/test-release/contoso-test:1.0.0");
    assert_eq!(test["source"], format!("{}/test/test-release/contoso-test:1.0.0", source.host()), "found through the namespace source");
    assert_eq!(
        test["tried"],
        serde_json::json!([
            format!("{}/repository/test-release/contoso-test:1.0.0", source.host()),
            format!("{}/test-release/contoso-test:1.0.0", source.host()),
            format!("{}/test/repository/test-release/contoso-test:1.0.0", source.host()),
            format!("{}/test/test-release/contoso-test:1.0.0", source.host()),
        ])
    );
    // Digests on the target, under the path that matched.
    for (target_path, source_path, tag) in [
        ("release/contoso-a", "release/contoso-a", "1.0.0"),
        ("release/contoso-b", "release/contoso-b", "1.0.0"),
        ("release/contoso-c", "release/contoso-c", "1.0.1"),
        ("test-release/contoso-test", "test/test-release/contoso-test", "1.0.0"),
        ("nginx", "nginx", "1.25"),
        ("busybox", "busybox", "1.36"),
    ] {
        assert_eq!(skopeo_digest(&format!("docker://{}/nf/{target_path}:{tag}", target.host())), digests[source_path], "{target_path}");
    }
    // The lock maps every reference the chart uses to its digest and source.
    let lock: serde_json::Value = serde_json::from_str(&crate::harness::read(&dir.path().join("airlock-onboard.lock.json"))).unwrap();
    assert_eq!(lock["target"], target_place);
    assert_eq!(lock["images"].as_object().unwrap().len(), 6);
    let entry = &lock["images"]["repository/release/contoso-a:1.0.0"];
    assert_eq!(entry["digest"], digests["release/contoso-a"]);
    assert_eq!(entry["source"], format!("{}/release/contoso-a:1.0.0", source.host()));
    assert_eq!(entry["target"], format!("{}/nf/release/contoso-a:1.0.0", target.host()));
    assert_eq!(lock["images"]["library/busybox:1.36"]["source"], format!("{}/busybox:1.36", source.host()));
    // The chart itself followed its images, as AOSM's publish step pushes it: a Helm chart in
    // the target that airlock (and helm) read back and render to the same images.
    let pushed = &lock["pushed_charts"]["contoso"];
    assert_eq!(pushed["reference"], format!("oci://{target_place}/contoso:1.0.0"), "{lock}");
    let manifest = airlock.run(&["inspect", "--raw", &format!("{target_place}/contoso:1.0.0")]).success();
    assert_eq!(crate::harness::sha256(&manifest.stdout_bytes), pushed["digest"].as_str().unwrap());
    let from_target = airlock
        .run_env(&["discover", pushed["reference"].as_str().unwrap(), "-f", defaults.to_str().unwrap(), "-o", "json"], &[("PATH", &path)])
        .success()
        .json();
    let local = airlock.run_env(&["discover", chart.to_str().unwrap(), "-f", defaults.to_str().unwrap(), "-o", "json"], &[("PATH", &path)]).success().json();
    // The Helm engine rendered the archive airlock packaged: the same images as the folder.
    assert_eq!(image_names(&from_target), image_names(&local));

    // The values overrides point the chart at the target: rendered again, every image is there.
    let emitted = airlock.run_env(&["onboard", config.to_str().unwrap(), "--target", &target_place, "--emit-values", "-q"], &[("PATH", &path)]).success().stdout;
    let values = dir.path().join("onboarded-values.yaml");
    std::fs::write(&values, &emitted).unwrap();
    let rendered = airlock
        .run_env(&["discover", chart.to_str().unwrap(), "-f", defaults.to_str().unwrap(), "-f", values.to_str().unwrap(), "-o", "json"], &[("PATH", &path)])
        .success()
        .json();
    let names = image_names(&rendered);
    let expected_a = format!("{target_place}/release/contoso-a:1.0.0");
    let expected_test = format!("{target_place}/test-release/contoso-test:1.0.0");
    assert!(names.contains(&expected_a), "{names:?}\n{emitted}");
    assert!(names.contains(&expected_test), "{names:?}\n{emitted}");
    assert!(!names.iter().any(|n| n.starts_with("repository/")), "{names:?}\n{emitted}");
}

#[test]
fn onboard_errors_a_missing_image_a_missing_helm_and_bad_jsonc() {
    let dir = crate::harness::tempdir();
    let chart = contoso_chart(dir.path());
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    for (seed, path) in [(710, "release/contoso-a"), (711, "release/contoso-b"), (712, "release/contoso-c")] {
        push(&source.host(), path, &image("amd64", &[layer(seed, 500)]), Some("1.0.0"), None);
    }
    let helm = helm_bin();
    let path = path_with(helm.path());
    let config = cnf_input(dir.path(), &[source.host()], &chart, None);
    let airlock = Airlock::new();
    let config_arg = config.to_str().unwrap();
    let missing = airlock.run_env(&["onboard", config_arg, "--target", &target.host()], &[("PATH", &path)]).code(1);
    assert!(missing.stdout.contains("missing: `repository/test-release/contoso-test:1.0.0` was found nowhere; tried"), "{}", missing.stdout);
    assert!(missing.stdout.contains(&format!("{}/test-release/contoso-test:1.0.0", source.host())), "{}", missing.stdout);
    // The others were onboarded all the same, and --allow-missing makes that a success.
    assert!(target.has_manifest("release/contoso-a", "1.0.0", None));
    let allowed = airlock.run_env(&["onboard", config_arg, "--target", &target.host(), "--allow-missing", "-o", "json"], &[("PATH", &path)]).success().json();
    assert_eq!(allowed["results"].as_array().unwrap().iter().filter(|r| r["status"] == "missing").count(), 1);
    let lock: serde_json::Value = serde_json::from_str(&crate::harness::read(&dir.path().join("airlock-onboard.lock.json"))).unwrap();
    assert_eq!(lock["images"].as_object().unwrap().len(), 3, "the missing image is not locked");
    // `--set` (and `-f`) reach the chart as they do for `discover`: the subchart's image now
    // names one the source has, so nothing is missing.
    let set = ["onboard", config_arg, "--target", &target.host(), "--set", "contoso-test.image=repository/release/contoso-c:1.0.0", "-o", "json"];
    let report = airlock.run_env(&set, &[("PATH", &path)]).success().json();
    assert!(report["results"].as_array().unwrap().iter().all(|r| r["status"] == "onboarded"), "{report}");

    // No helm: a clear error with the fix.
    let no_helm = airlock.run(&["onboard", config_arg, "--target", &target.host(), "--helm", "/nonexistent/helm"]).code(1);
    assert!(no_helm.stderr.contains("cannot run `/nonexistent/helm` to render the chart"), "{}", no_helm.stderr);
    assert!(no_helm.stderr.contains("install Helm"), "{}", no_helm.stderr);
    // A broken JSONC file: where, and what.
    std::fs::write(&config, "{\n  \"image_sources\": [\"a.io\"\n  \"helm_packages\": []\n}\n").unwrap();
    airlock.run(&["onboard", config_arg, "--target", &target.host()]).code(2).stderr_has(&format!("{config_arg}:3:18: not valid JSONC"));
    // A chart that does not render: helm's own words.
    write(&chart.join("templates/broken.yaml"), "{{ .Values.nope.deeper }}\n");
    let broken = airlock.run_env(&["discover", chart.to_str().unwrap()], &[("PATH", &path)]).code(1);
    assert!(broken.stderr.contains("template` failed"), "{}", broken.stderr);
}

/// Charts kept in a registry (pushed by the real Helm engine, as `helm push` does): fetched by
/// airlock by version, by digest, or as the newest release, verified, then rendered; onboarding
/// locks the chart's digest beside the images'.
#[test]
fn discover_and_onboard_charts_kept_in_a_registry() {
    let dir = crate::harness::tempdir();
    let chart = contoso_chart(dir.path());
    let registry = Registry::start(Auth::None);
    let remote = format!("oci://{}/charts", registry.host());
    let values = chart.join("values.yaml");
    let written = crate::harness::read(&values);
    helm_push(&chart, "1.0.0", &remote);
    // 1.1.0 moves contoso-a on; a release candidate moves it further, but is no release.
    std::fs::write(&values, written.replacen("tag: 1.0.0", "tag: 1.1.0", 1)).unwrap();
    helm_push(&chart, "1.1.0", &remote);
    std::fs::write(&values, written.replacen("tag: 1.0.0", "tag: 2.0.0", 1)).unwrap();
    helm_push(&chart, "2.0.0-rc.1", &remote);
    let digest_1_0 = skopeo_digest(&format!("docker://{}/charts/contoso:1.0.0", registry.host()));
    let helm = helm_bin();
    let path = path_with(helm.path());
    let airlock = Airlock::new();

    let found = airlock.run_env(&["discover", &format!("{remote}/contoso:1.0.0"), "-o", "json"], &[("PATH", &path)]).success().json();
    assert_eq!(
        image_names(&found),
        ["repository/test-release/contoso-test:1.0.0", "repository/release/contoso-c:1.0.0", "repository/release/contoso-a:1.0.0", "repository/release/contoso-b:1.0.0"]
    );
    assert_eq!(found["images"][2]["locations"][0], "contoso/templates/deployment.yaml: Deployment/airlock-discover-core container `a`");
    let fetched = &found["charts"][0];
    assert_eq!((fetched["name"].as_str(), fetched["version"].as_str()), (Some("contoso"), Some("1.0.0")));
    assert_eq!(fetched["digest"], digest_1_0, "the manifest digest, as skopeo sees it");

    // No version: the newest release, as `helm pull` picks it, not the release candidate.
    let newest = airlock.run_env(&["discover", &format!("{remote}/contoso"), "-o", "json"], &[("PATH", &path)]).success().json();
    assert!(image_names(&newest).contains(&"repository/release/contoso-a:1.1.0".to_owned()), "{newest}");
    assert_eq!(newest["charts"][0]["reference"], format!("{}/charts/contoso:1.1.0", registry.host()));
    // Or the newest in a range; a reference that names its version takes no `--version`.
    let ranged = airlock.run_env(&["discover", &format!("{remote}/contoso"), "--version", "<1.1", "-o", "json"], &[("PATH", &path)]).success().json();
    assert_eq!(ranged["charts"][0]["version"], "1.0.0");
    airlock.run_env(&["discover", &format!("{remote}/contoso:1.0.0"), "--version", "1.1.0"], &[("PATH", &path)]).code(2).stderr_has("names its version");
    // By digest, with a local chart beside it; in text, the chart and its digest go to stderr.
    let other = dir.path().join("extra.yaml");
    write(&other, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n    - name: x\n      image: busybox:1.36\n");
    let text = airlock.run_env(&["discover", &format!("{remote}/contoso@{digest_1_0}"), other.to_str().unwrap()], &[("PATH", &path)]).success();
    assert!(text.stdout.contains("repository/release/contoso-a:1.0.0") && text.stdout.contains("busybox:1.36"), "{}", text.stdout);
    assert!(text.stderr.contains(&format!("contoso 1.0.0, {digest_1_0}")), "{}", text.stderr);

    // What is not a chart, and a version that is not there, are named.
    let img = image("amd64", &[layer(710, 1000)]);
    push(&registry.host(), "charts/not-a-chart", &img, Some("1.0.0"), None);
    airlock
        .run_env(&["discover", &format!("{remote}/not-a-chart:1.0.0")], &[("PATH", &path)])
        .code(2)
        .stderr_has("is not a Helm chart: its config is `application/vnd.oci.image.config.v1+json`");
    let absent = airlock.run_env(&["discover", &format!("{remote}/contoso:9.9.9")], &[("PATH", &path)]).code(1);
    assert!(absent.stderr.contains("charts/contoso") && absent.stderr.contains("9.9.9"), "{}", absent.stderr);

    // Onboarding a chart from the registry: its images are copied, its digest is locked.
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    for (seed, image_path, tag) in [(720, "release/contoso-a", "1.0.0"), (721, "release/contoso-b", "1.0.0"), (722, "release/contoso-c", "1.0.0"), (723, "test-release/contoso-test", "1.0.0")] {
        push(&source.host(), image_path, &image("amd64", &[layer(seed, 1500)]), Some(tag), None);
    }
    let chart_reference = format!("{remote}/contoso:1.0.0");
    let config = cnf_input(dir.path(), &[source.host()], Path::new(&chart_reference), None);
    let report = airlock.run_env(&["onboard", config.to_str().unwrap(), "--target", &target.host(), "-o", "json"], &[("PATH", &path)]).success().json();
    assert!(report["results"].as_array().unwrap().iter().all(|r| r["status"] == "onboarded"), "{report}");
    assert!(target.has_manifest("release/contoso-a", "1.0.0", None));
    let lock: serde_json::Value = serde_json::from_str(&crate::harness::read(&dir.path().join("airlock-onboard.lock.json"))).unwrap();
    assert_eq!(lock["charts"]["contoso"], serde_json::json!({"reference": format!("{}/charts/contoso:1.0.0", registry.host()), "digest": digest_1_0}), "{lock}");
    assert_eq!(lock["images"].as_object().unwrap().len(), 4);
    // The values overrides come from the fetched archive's values (subchart included): rendered
    // with them, the chart names only the target.
    let emitted = airlock.run_env(&["onboard", config.to_str().unwrap(), "--target", &target.host(), "--emit-values", "-q"], &[("PATH", &path)]).success().stdout;
    let overrides = dir.path().join("onboarded.yaml");
    std::fs::write(&overrides, &emitted).unwrap();
    let rendered = airlock.run_env(&["discover", &chart_reference, "-f", overrides.to_str().unwrap(), "-o", "json"], &[("PATH", &path)]).success().json();
    let names = image_names(&rendered);
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with(&target.host())), "{names:?}\n{emitted}");
}

/// Charts from a chart repository (`index.yaml` written by the real Helm engine, served over
/// HTTP): chosen by version as `helm pull --repo` chooses, checked against the index's SHA-256.
#[test]
fn discover_charts_from_a_chart_repository() {
    let dir = crate::harness::tempdir();
    let chart = contoso_chart(dir.path());
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let values = chart.join("values.yaml");
    let written = crate::harness::read(&values);
    helm_package(&chart, "1.0.0", &repo);
    std::fs::write(&values, written.replacen("tag: 1.0.0", "tag: 1.1.0", 1)).unwrap();
    helm_package(&chart, "1.1.0", &repo);
    helm_repo_index(&repo);
    let server = StaticHttp::serve(&repo);
    let helm = helm_bin();
    let path = path_with(helm.path());
    let airlock = Airlock::new();

    // The newest release, its digest the archive's.
    let found = airlock.run_env(&["discover", "--repo", &server.url, "contoso", "-o", "json"], &[("PATH", &path)]).success().json();
    assert!(image_names(&found).contains(&"repository/release/contoso-a:1.1.0".to_owned()), "{found}");
    assert_eq!(found["charts"][0]["version"], "1.1.0");
    assert_eq!(found["charts"][0]["digest"], crate::harness::sha256(&std::fs::read(repo.join("contoso-1.1.0.tgz")).unwrap()));
    assert_eq!(found["charts"][0]["reference"], format!("{}/contoso-1.1.0.tgz", server.url));
    // A range, as `--version` takes it.
    let older = airlock.run_env(&["discover", "--repo", &server.url, "contoso", "--version", "~1.0", "-o", "json"], &[("PATH", &path)]).success().json();
    assert!(image_names(&older).contains(&"repository/release/contoso-a:1.0.0".to_owned()), "{older}");
    // What is not there is named with what is.
    airlock.run_env(&["discover", "--repo", &server.url, "nope"], &[("PATH", &path)]).code(2).stderr_has("no chart `nope` in");
    airlock
        .run_env(&["discover", "--repo", &format!("{}/elsewhere", server.url), "contoso"], &[("PATH", &path)])
        .code(1)
        .stderr_has(&format!("GET {}/elsewhere/index.yaml: 404", server.url))
        .stderr_has("should be the URL `helm repo add` takes");
    airlock
        .run_env(&["discover", "--repo", &server.url, "contoso", "--version", "3.0.0"], &[("PATH", &path)])
        .code(2)
        .stderr_has("chart `contoso` in")
        .stderr_has("has no version 3.0.0; versions: 1.1.0, 1.0.0");
    // Onboarding takes the same chart sources: `repo` and `version` beside `path_to_chart`.
    let source = Registry::start(Auth::None);
    let target = Registry::start(Auth::None);
    for (seed, image_path) in [(730, "release/contoso-a"), (731, "release/contoso-b"), (732, "release/contoso-c"), (733, "test-release/contoso-test")] {
        push(&source.host(), image_path, &image("amd64", &[layer(seed, 1500)]), Some("1.0.0"), None);
    }
    let config = dir.path().join("from-repo.jsonc");
    write(
        &config,
        &format!(
            "{{\n  \"image_sources\": [\"{}\"],\n  \"helm_packages\": [\n    {{\"name\": \"contoso\", \"repo\": \"{}\", \"path_to_chart\": \"contoso\", \"version\": \"1.0.0\"}},\n  ],\n}}\n",
            source.host(),
            server.url
        ),
    );
    let report = airlock.run_env(&["onboard", config.to_str().unwrap(), "--target", &target.host(), "-o", "json"], &[("PATH", &path)]).success().json();
    assert_eq!(report["results"].as_array().unwrap().iter().filter(|r| r["status"] == "onboarded").count(), 4, "{report}");
    let lock: serde_json::Value = serde_json::from_str(&crate::harness::read(&dir.path().join("airlock-onboard.lock.json"))).unwrap();
    assert_eq!(lock["charts"]["contoso"]["reference"], format!("{}/contoso-1.0.0.tgz", server.url), "{lock}");
    assert_eq!(lock["charts"]["contoso"]["digest"], crate::harness::sha256(&std::fs::read(repo.join("contoso-1.0.0.tgz")).unwrap()));

    // An archive that is not what the index says is refused.
    std::fs::write(&values, written.replacen("tag: 1.0.0", "tag: 6.6.6", 1)).unwrap();
    helm_package(&chart, "1.1.0", &repo);
    let tampered = airlock.run_env(&["discover", "--repo", &server.url, "contoso"], &[("PATH", &path)]).code(1);
    assert!(tampered.stderr.contains("contoso-1.1.0.tgz") && tampered.stderr.contains("does not match sha256:"), "{}", tampered.stderr);
    assert!(!tampered.stdout.contains("6.6.6"), "nothing of it was rendered: {}", tampered.stdout);

    // A private repository: refused without credentials, read with the ones stored for its host.
    let private = StaticHttp::serve_with_basic_auth(&repo, Some("alice:s3cret-pw"));
    let refused = airlock.run_env(&["discover", "--repo", &private.url, "contoso", "--version", "1.0.0"], &[("PATH", &path)]).code(1);
    assert!(refused.stderr.contains("index.yaml: 401") && refused.stderr.contains("airlock sends the credentials stored for the repository's host"), "{}", refused.stderr);
    let host = private.url.trim_start_matches("http://");
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice:s3cret-pw");
    std::fs::write(airlock.authfile(), format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#)).unwrap();
    let authfile = airlock.authfile();
    let read = airlock.run_env(&["discover", "--repo", &private.url, "contoso", "--version", "1.0.0", "--authfile", authfile.to_str().unwrap(), "-v"], &[("PATH", &path)]).success();
    assert!(read.stdout.contains("repository/release/contoso-a:1.0.0"), "{}", read.stdout);
    assert!(!read.stderr.contains("s3cret-pw") && !read.stderr.contains(&auth), "the password stays out of logs: {}", read.stderr);
}
