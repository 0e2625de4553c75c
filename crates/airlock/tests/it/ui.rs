//! The web page at `/ui/` of `airlock serve`, in Debian's headless Chromium: real runs made by
//! `airlock import` and `airlock rollback`, users and rules of the registry, a rollback clicked
//! by a user with push rights and refused to one without, a running import appearing and ending
//! without a reload, screenshots at desktop and phone widths, and a parser-based check of every
//! page's structure.

use std::path::{Path, PathBuf};

use crate::gate::{eventually, Upstream};
use crate::harness::browser::Browser;
use crate::harness::{require, run_command, Airlock, Served};

const ALICE: (&str, &str) = ("alice", "alice-Secret-1");
const BOB: (&str, &str) = ("bob", "bob-Secret-2");

/// serve.yaml with users alice (push on base/*) and bob (pull only), and the web page showing
/// the imports of `gate_file`.
fn serve_yaml(dir: &Path, gate_file: &Path) -> PathBuf {
    let htpasswd = dir.join("htpasswd");
    crate::harness::write_htpasswd(&htpasswd, &[ALICE, BOB]);
    let config = dir.join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  htpasswd: {}\n  rules:\n    - repositories: 'base/*'\n      users: {{alice: [pull, push], bob: [pull]}}\n    - repositories: '*'\n      users: {{alice: [pull, push]}}\nui:\n  gate_file: {}\n  session_key_env: AIRLOCK_TEST_UI_KEY\n",
            htpasswd.display(),
            gate_file.display()
        ),
    )
    .unwrap();
    config
}

fn sign_in(browser: &Browser, served: &Served, (user, password): (&str, &str)) {
    browser.go(&served.url("/ui/login"));
    browser.type_into("input[name=username]", user);
    browser.type_into("input[name=password]", password);
    browser.click("button[type=submit]");
    assert!(eventually(10, || browser.text().contains(&format!("signed in as {user}"))), "{}", browser.text());
}

/// Saves a screenshot of the page at desktop and phone widths, and its HTML for the check.
fn capture(browser: &Browser, out: &Path, name: &str) {
    browser.resize(1280, 900);
    browser.screenshot(&out.join(format!("{name}-desktop.png")));
    browser.resize(390, 844);
    browser.screenshot(&out.join(format!("{name}-phone.png")));
    browser.resize(1280, 900);
    std::fs::write(out.join(format!("{name}.html")), browser.source()).unwrap();
}

#[test]
fn the_web_page_shows_imports_runs_and_the_registry_and_rolls_back_for_those_allowed() {
    let dir = crate::harness::tempdir();
    let root = dir.path().join("root");
    let airlock = Airlock::new();
    let upstream = Upstream::new(dir.path());
    let at = |repository: &str| format!("root://{}//{repository}", root.display());
    let gate_file = dir.path().join("airlock.yaml");
    std::fs::write(
        &gate_file,
        format!(
            "imports:\n  - name: node\n    source: {}\n    tags: [15-alpine]\n    staging: {}\n    target: {}\n    gates:\n      - name: no-red\n        policy: {{forbid_env: {{BACKGROUND_COLOR: [red]}}}}\n      - name: slow-when-asked\n        command: [sh, -c, 'test -e {} && sleep 3; echo checked']\n",
            at("upstream/node"),
            at("staging/node"),
            at("base/node"),
            dir.path().join("slow").display()
        ),
    )
    .unwrap();
    let file = gate_file.to_str().unwrap();
    let stable = format!("{}:15-alpine", at("base/node"));
    let digest = || airlock.run(&["digest", &stable]).success().stdout.trim().to_owned();
    // Real runs: promoted, refused, promoted, rolled back.
    let orange = upstream.publish_to(&airlock, &format!("{}:15-alpine", at("upstream/node")), "Orange");
    airlock.run(&["import", "-f", file]).success();
    upstream.publish_to(&airlock, &format!("{}:15-alpine", at("upstream/node")), "RED");
    airlock.run(&["import", "-f", file]).code(1);
    let green = upstream.publish_to(&airlock, &format!("{}:15-alpine", at("upstream/node")), "Green");
    airlock.run(&["import", "-f", file]).success();
    airlock.run(&["rollback", "-f", file, "node"]).success();
    assert_eq!(digest(), orange);
    airlock.run(&["rollback", "-f", file, "node", "--to", &green]).success();
    assert_eq!(digest(), green);
    let runs = airlock.run(&["runs", "list", "-f", file, "-o", "json"]).success().json();
    let runs = runs["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 5);
    let first = runs.last().unwrap()["run_id"].as_str().unwrap().to_owned();

    let config = serve_yaml(dir.path(), &gate_file);
    let key = [("AIRLOCK_TEST_UI_KEY".to_owned(), "0123456789abcdef0123456789abcdef-shared".to_owned())];
    let served = Served::start_with_env(&root, &["-f", config.to_str().unwrap()], &key);
    // A second replica with the same key accepts the first one's sign-ins.
    let replica = Served::start_with_env(&dir.path().join("replica-root"), &["-f", config.to_str().unwrap()], &key);
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&out).unwrap();
    let browser = Browser::start();

    // Anonymous: nothing to see, a way to sign in.
    browser.go(&served.url("/ui/"));
    assert!(browser.text().contains("No import you may see."), "{}", browser.text());
    assert!(browser.find("a[href='/ui/login']").is_some());

    // bob may pull base/*: he sees the import and the runs, and may not roll back.
    sign_in(&browser, &served, BOB);
    browser.go(&served.url("/ui/"));
    let text = browser.text();
    assert!(text.contains("node") && text.contains(&green) && text.contains("Succeeded"), "{text}");
    assert!(browser.find("form[action$='/run'] button").is_none(), "bob may not run the import: {}", browser.source());
    browser.go(&served.url(&format!("/ui/runs/{first}")));
    assert!(browser.find("form[action$='/rollback']").is_none(), "bob may not roll back");
    // Asked anyway (with his own form token, from the sign-out form): refused.
    let token = browser.script("return document.querySelector('input[name=csrf]').value;").as_str().unwrap().to_owned();
    let cookie = browser.script("return document.cookie;");
    assert_eq!(cookie, "", "the session cookie is HttpOnly");
    let refused = crate::harness::proxy::runtime().block_on(async {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let login = client.post(served.url("/ui/login")).form(&[("username", BOB.0), ("password", BOB.1), ("next", "/ui/")]).send().await.unwrap();
        let session = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        let answer = client.post(served.url(&format!("/ui/runs/{first}/rollback"))).header("cookie", &session).form(&[("csrf", token.as_str())]).send().await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    });
    assert_eq!(refused.0, 403, "{}", refused.1);
    let on_replica = crate::harness::proxy::runtime().block_on(async {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let login = client.post(served.url("/ui/login")).form(&[("username", BOB.0), ("password", BOB.1), ("next", "/ui/")]).send().await.unwrap();
        let session = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
        client.get(replica.url("/ui/")).header("cookie", &session).send().await.unwrap().text().await.unwrap()
    });
    assert!(on_replica.contains("signed in as bob"), "{on_replica}");
    assert!(refused.1.contains("needs push on"), "{}", refused.1);
    assert_eq!(digest(), green, "nothing moved");

    // alice: the pages, their screenshots and their structure.
    browser.click("form[action='/ui/logout'] button");
    assert!(eventually(10, || browser.find("a[href='/ui/login']").is_some()), "signed out: {}", browser.text());
    sign_in(&browser, &served, ALICE);
    browser.go(&served.url("/ui/"));
    assert!(browser.find("svg.timeline").is_some(), "the timeline is drawn");
    assert!(browser.text().contains("rolled back"), "the legend names the marks");
    capture(&browser, &out, "imports");
    browser.go(&served.url("/ui/runs"));
    let text = browser.text();
    for word in ["RUN ID", "TASK", "PLATFORM", "STATUS", "TRIGGER", "STARTED", "DURATION", "Failed", "Rollback", "Manual", "linux/amd64"] {
        assert!(text.contains(word), "{word}: {text}");
    }
    capture(&browser, &out, "runs");
    browser.go(&served.url("/ui/runs?status=Failed"));
    assert!(browser.text().contains("1 runs"), "{}", browser.text());
    browser.click("#runs-body a");
    let refused_page = |text: &str| text.contains("no-red") && text.contains("BACKGROUND_COLOR") && text.contains("failed");
    assert!(eventually(10, || refused_page(&browser.text())), "{}", browser.text());
    capture(&browser, &out, "run-refused");
    browser.go(&served.url(&format!("/ui/runs/{first}")));
    assert!(browser.text().contains("Gate report"), "{}", browser.text());
    capture(&browser, &out, "run-promoted");
    browser.go(&served.url("/ui/registry"));
    assert!(browser.text().contains("base/node"), "{}", browser.text());
    capture(&browser, &out, "registry");
    browser.go(&served.url("/ui/registry/base/node/manifests/15-alpine"));
    let text = browser.text();
    assert!(text.contains(&green) && text.contains("Layers") && text.contains("podman pull") && text.contains("application/vnd.airlock.gate-report.v1+json"), "{text}");
    capture(&browser, &out, "manifest");

    // alice rolls back to the first promotion: the stable tag moves.
    browser.go(&served.url(&format!("/ui/runs/{first}")));
    browser.click("form[action$='/rollback'] button");
    assert!(eventually(10, || digest() == orange), "the stable tag moved back to {orange}");
    assert!(eventually(10, || browser.text().contains("Rollback")), "{}", browser.text());

    // A run started elsewhere appears and ends on the open runs page, without a reload.
    browser.go(&served.url("/ui/runs"));
    browser.script("window.airlockMarker = 'kept';");
    std::fs::write(dir.path().join("slow"), "").unwrap();
    let mut import = airlock.command(&["import", "-f", file, "--force"]);
    let importer = import.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let table = || browser.script("return document.getElementById('runs-body').innerText;").as_str().unwrap_or_default().to_owned();
    assert!(eventually(20, || table().contains("Running")), "the running import appears: {}", table());
    let output = importer.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(eventually(20, || !table().contains("Running") && table().lines().count() == 7), "and ends: {}", table());
    assert_eq!(browser.script("return window.airlockMarker;"), "kept", "the page was not reloaded");

    // "Run now" (alice may push): the import runs again (forced) and the pages follow it: the
    // imports page shows it running, then the runs table shows it done.
    browser.go(&served.url("/ui/"));
    browser.script("window.airlockMarker = 'imports';");
    std::fs::remove_file(dir.path().join("slow")).unwrap();
    airlock.run(&["import", "-f", file, "--force"]).success();
    let newest = airlock.run(&["runs", "list", "-f", file, "-o", "json"]).success().json()["runs"][0]["run_id"].as_str().unwrap().to_owned();
    let imports = || browser.script("return document.getElementById('imports').innerText;").as_str().unwrap_or_default().to_owned();
    assert!(eventually(20, || imports().contains(&newest)), "the imports page follows new runs ({newest}): {}", imports());
    assert_eq!(browser.script("return window.airlockMarker;"), "imports", "the imports page was not reloaded");
    browser.click("form[action='/ui/imports/node/run'] button");
    assert!(eventually(10, || browser.current_url().contains("/ui/runs?import=node")), "{}", browser.current_url());
    browser.script("window.airlockMarker = 'kept';");
    assert!(eventually(30, || !table().contains("Running") && table().lines().count() == 9), "the run from the page ends: {}", table());
    assert!(table().lines().next().unwrap_or_default().contains("Manual"), "{}", table());
    assert_eq!(browser.script("return window.airlockMarker;"), "kept", "the page was not reloaded");

    // Every page's structure, by a parser.
    let pages: Vec<String> = ["imports", "runs", "run-refused", "run-promoted", "registry", "manifest"].iter().map(|p| out.join(format!("{p}.html")).display().to_string()).collect();
    let mut check = std::process::Command::new(require("python3", "python3"));
    check.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/html_check.py")).args(&pages);
    run_command(check, None).success();
}
