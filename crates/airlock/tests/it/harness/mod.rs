//! The one harness of the integration tests: real `docker-registry` servers on loopback ports in
//! temp dirs (stopped on drop), a token issuer and a fault-injecting proxy in-process, fixtures
//! pushed with plain HTTP (not airlock's code), and the built `airlock` binary.
//!
//! A component that is missing fails the test with the package to install; nothing is skipped.

#![allow(dead_code)]

pub mod fixtures;
pub mod browser;
pub mod moto;
pub mod postgres;
pub mod proxy;
pub mod registry;
pub mod served;
pub mod token;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use fixtures::Fixture;
pub use proxy::{Fault, FaultProxy};
pub use registry::{Auth, Registry};
pub use served::Served;

/// Fails with the package to install when `tool` is not on PATH.
pub fn require(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(tool);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("`{tool}` is not installed; these tests need it: `apt-get install {package}` (README's test command installs it)");
}

/// The result of running a command, printed in full when an expectation fails.
pub struct Run {
    pub command: String,
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub stdout_bytes: Vec<u8>,
}

impl Run {
    fn from(command: String, output: Output) -> Run {
        Run {
            command,
            status: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            stdout_bytes: output.stdout,
        }
    }

    fn describe(&self) -> String {
        format!("command: {}\nstatus: {}\nstdout:\n{}\nstderr:\n{}", self.command, self.status, self.stdout, self.stderr)
    }

    /// Panics unless the command exited 0.
    #[track_caller]
    pub fn success(self) -> Run {
        assert_eq!(self.status, 0, "expected success\n{}", self.describe());
        self
    }

    /// Panics unless the command exited with `code`.
    #[track_caller]
    pub fn code(self, code: i32) -> Run {
        assert_eq!(self.status, code, "expected exit code {code}\n{}", self.describe());
        self
    }

    /// Panics unless stderr contains `text`.
    #[track_caller]
    pub fn stderr_has(self, text: &str) -> Run {
        assert!(self.stderr.contains(text), "expected stderr to contain {text:?}\n{}", self.describe());
        self
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", self.describe()))
    }
}

/// A sandbox for running the built binary: its own HOME and credential files.
pub struct Airlock {
    pub home: tempfile::TempDir,
}

impl Airlock {
    pub fn new() -> Airlock {
        Airlock { home: tempfile::tempdir().expect("temp dir") }
    }

    pub fn authfile(&self) -> PathBuf {
        self.home.path().join("auth.json")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.home.path().join(name)
    }

    /// Starts `airlock ARGS` in the background (output discarded), for tests that kill it or
    /// watch it run.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().expect("start airlock")
    }

    /// Starts `airlock ARGS` with more environment, its output appended to `log` (read it
    /// when the test fails).
    pub fn spawn_logged(&self, args: &[&str], env: &[(&str, &str)], log: &Path) -> std::process::Child {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("open the log");
        let mut command = self.command(args);
        command.envs(env.iter().copied()).stdout(file.try_clone().expect("log")).stderr(file);
        command.spawn().expect("start airlock")
    }

    /// Runs `airlock ARGS` with a clean environment for credentials.
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, None)
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Run {
        run_command(self.command(args), stdin)
    }

    /// Runs `airlock ARGS`, killing it and failing the test if it is not done within `limit`
    /// (for tests whose failure mode is a stall).
    pub fn run_within(&self, args: &[&str], limit: std::time::Duration) -> Run {
        let mut command = self.command(args);
        command.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let description = format!("{command:?}");
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
        let deadline = std::time::Instant::now() + limit;
        while child.try_wait().expect("wait for airlock").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let output = child.wait_with_output().expect("collect airlock's output");
                panic!("{description} stalled for {limit:?}\nstderr: {}", String::from_utf8_lossy(&output.stderr));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Run::from(description, child.wait_with_output().expect("collect airlock's output"))
    }

    /// With more environment (`PATH` with a `helm` stand-in, say).
    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut command = self.command(args);
        command.envs(env.iter().copied());
        run_command(command, None)
    }

    /// Runs airlock and returns its peak resident memory in KiB (the kernel's `ru_maxrss` of
    /// the child, read by Python's `resource`, which needs no unsafe code here).
    pub fn run_measured(&self, args: &[&str]) -> (Run, u64) {
        let inner = self.command(args);
        let python = require("python3", "python3");
        let mut command = Command::new(python);
        command.arg("-c").arg(
            "import resource, subprocess, sys\n\
             r = subprocess.run(sys.argv[1:])\n\
             sys.stderr.write('\\nmaxrss_kib=%d\\n' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
             sys.exit(r.returncode)",
        );
        command.arg(inner.get_program()).args(inner.get_args());
        for (name, value) in inner.get_envs() {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let run = run_command(command, None);
        let kib = run.stderr.lines().rev().find_map(|l| l.strip_prefix("maxrss_kib=")).and_then(|v| v.trim().parse().ok()).expect("the peak RSS line");
        (run, kib)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_airlock"));
        command
            .args(args)
            .env("HOME", self.home.path())
            .env("DOCKER_CONFIG", self.home.path().join(".docker"))
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("AIRLOCK_LOG")
            .env_remove("AIRLOCK_CACHE_DIR")
            .env_remove("XDG_CACHE_HOME")
            .env("NO_COLOR", "1");
        command
    }
}

/// Python 3 with PyPI's helm-python-sdk (the real Helm engine), or a clear failure.
fn helm_python_interpreter() -> PathBuf {
    let python = require("python3", "python3");
    let probe = Command::new(&python).args(["-c", "import helm_python"]).output().expect("run python3");
    assert!(probe.status.success(), "the Python package `helm-python-sdk` is not installed: `pip install helm-python-sdk` (README's test command installs it)");
    python
}

/// A folder holding `helm`: the stand-in under tests that renders with the real Helm engine
/// (PyPI's helm-python-sdk). Put it first on `PATH`, or pass `--helm FOLDER/helm`.
pub fn helm_bin() -> tempfile::TempDir {
    let python = helm_python_interpreter();
    let dir = tempdir();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/helm_template.py");
    let helm = dir.path().join("helm");
    std::fs::write(&helm, format!("#!/bin/sh\nexec {} {script} \"$@\"\n", python.display())).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&helm, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Runs a Python snippet against the real Helm engine (PyPI's helm-python-sdk), with `args` as
/// `sys.argv[1:]`.
fn helm_python(script: &str, args: &[&std::ffi::OsStr]) {
    let python = helm_python_interpreter();
    let mut command = Command::new(python);
    command.arg("-c").arg(format!("import sys, helm_python as h\n{script}\n")).args(args);
    run_command(command, None).success();
}

/// Packages the chart folder `chart` as `version` into `out` (`NAME-VERSION.tgz`), as
/// `helm package --version` does.
pub fn helm_package(chart: &Path, version: &str, out: &Path) {
    helm_python("h.package(sys.argv[1], destination=sys.argv[2], version=sys.argv[3])", &[chart.as_os_str(), out.as_os_str(), version.as_ref()]);
}

/// Packages the chart folder `chart` as `version` and pushes it to `remote` (`oci://HOST/PATH`,
/// plain HTTP), as `helm package --version` and `helm push` do.
pub fn helm_push(chart: &Path, version: &str, remote: &str) {
    let out = tempdir();
    helm_package(chart, version, out.path());
    let name = crate::harness::read(&chart.join("Chart.yaml")).lines().find_map(|l| l.strip_prefix("name: ").map(str::to_owned)).expect("a chart name");
    let archive = out.path().join(format!("{name}-{version}.tgz"));
    helm_python("h.push(sys.argv[1], sys.argv[2], plain_http=True)", &[archive.as_os_str(), remote.as_ref()]);
}

/// Writes `dir/index.yaml` for the charts in `dir`, as `helm repo index` does.
pub fn helm_repo_index(dir: &Path) {
    helm_python("h.repo_index_generate(sys.argv[1])", &[dir.as_os_str()]);
}

/// A folder served over plain HTTP by Python's `http.server` (`tests/it/static_http.py`) on a
/// free loopback port: a Helm chart repository in tests.
pub struct StaticHttp {
    pub url: String,
    child: std::process::Child,
}

impl StaticHttp {
    pub fn serve(dir: &Path) -> StaticHttp {
        Self::serve_with_basic_auth(dir, None)
    }

    /// The same, answering `401` to any request without `Authorization: Basic` of `user:password`.
    pub fn serve_with_basic_auth(dir: &Path, user_password: Option<&str>) -> StaticHttp {
        let port = registry::free_port();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/static_http.py");
        let mut child = Command::new(require("python3", "python3"))
            .arg(script)
            .arg(port.to_string())
            .arg(dir)
            .args(user_password)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tests/it/static_http.py");
        assert!(registry::wait_ready(port, &mut child), "tests/it/static_http.py did not start on port {port}");
        StaticHttp { url: format!("http://127.0.0.1:{port}"), child }
    }
}

impl Drop for StaticHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run_command(mut command: Command, stdin: Option<&str>) -> Run {
    use std::io::Write;
    let description = format!("{command:?}");
    command.stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() });
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot run {description}: {e}"));
    if let Some(input) = stdin {
        child.stdin.take().expect("piped stdin").write_all(input.as_bytes()).expect("write stdin");
    }
    let output = child.wait_with_output().unwrap_or_else(|e| panic!("cannot wait for {description}: {e}"));
    Run::from(description, output)
}

/// Runs skopeo (TLS off: the test registries are plain HTTP on loopback).
pub fn skopeo(args: &[&str]) -> Run {
    // skopeo reads policy.json; give it an accept-anything policy of its own.
    let policy = std::env::temp_dir().join("airlock-test-skopeo-policy.json");
    if !policy.exists() {
        std::fs::write(&policy, r#"{"default":[{"type":"insecureAcceptAnything"}]}"#).expect("write policy");
    }
    let mut full = vec!["--policy".to_owned(), policy.display().to_string()];
    full.extend(args.iter().map(|a| a.to_string()));
    let mut command = Command::new(require("skopeo", "skopeo"));
    command.args(&full);
    run_command(command, None)
}

/// `sha256:<hex>` of bytes, computed here, not by airlock.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The digest of what skopeo reads raw at `reference` (`docker://…` or `oci:…`).
pub fn skopeo_digest(reference: &str) -> String {
    let run = if reference.starts_with("docker://") {
        skopeo(&["inspect", "--raw", "--tls-verify=false", reference])
    } else {
        skopeo(&["inspect", "--raw", reference])
    };
    sha256(&run.success().stdout_bytes)
}

/// A new temp folder.
/// A plain GET: the status and the body as text.
pub fn http_get(url: &str) -> (u16, String) {
    let url = url.to_owned();
    proxy::runtime().block_on(async move {
        let response = reqwest::get(&url).await.expect("GET");
        (response.status().as_u16(), response.text().await.unwrap_or_default())
    })
}

/// A GET's body as bytes (a blob), failing on any status but 200.
pub fn http_get_bytes(url: &str) -> Vec<u8> {
    let url = url.to_owned();
    proxy::runtime().block_on(async move {
        let response = reqwest::get(&url).await.expect("GET");
        assert_eq!(response.status(), 200, "GET {url}");
        response.bytes().await.expect("a body").to_vec()
    })
}

/// Writes an htpasswd file of bcrypt entries (`htpasswd -B`) for `users`.
pub fn write_htpasswd(path: &Path, users: &[(&str, &str)]) {
    let mut lines = String::new();
    for (user, password) in users {
        let out = Command::new(require("htpasswd", "apache2-utils")).args(["-Bbn", user, password]).output().unwrap();
        lines.push_str(String::from_utf8_lossy(&out.stdout).trim());
        lines.push('\n');
    }
    std::fs::write(path, lines).unwrap();
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Runs the ORAS SDK adapter under tests (`oras_client.py`); fails with the install command
/// when the `oras` package is missing.
pub fn oras(args: &[&str]) -> Run {
    let python = require("python3", "python3");
    let probe = Command::new(&python).args(["-c", "import oras.client"]).output().expect("run python3");
    assert!(probe.status.success(), "the Python package `oras` is not installed: `pip install oras` (README's test command installs it)");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/oras_client.py");
    let mut command = Command::new(python);
    command.arg(script).args(args);
    run_command(command, None)
}

/// podman with its own storage in a temp dir. Runtime flags come from `AIRLOCK_TEST_PODMAN_FLAGS`
/// (default: `--runtime runc --cgroup-manager cgroupfs`) and run flags from
/// `AIRLOCK_TEST_PODMAN_RUN_FLAGS` (default: `--ulimit nofile=20000:20000 --ulimit nproc=1000:1000`),
/// so a machine that needs others can say so without a code change.
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    pub fn new() -> Podman {
        require("podman", "podman");
        require("runc", "runc");
        Podman { dir: tempdir() }
    }

    fn flags(variable: &str, default: &str) -> Vec<String> {
        std::env::var(variable).unwrap_or_else(|_| default.to_owned()).split_whitespace().map(str::to_owned).collect()
    }

    /// The flags before every podman subcommand: the configured ones and this storage.
    pub fn global_flags(&self) -> Vec<String> {
        let mut flags = Self::flags("AIRLOCK_TEST_PODMAN_FLAGS", "--runtime runc --cgroup-manager cgroupfs");
        flags.extend(["--root".to_owned(), self.dir.path().join("storage").display().to_string()]);
        flags.extend(["--runroot".to_owned(), self.dir.path().join("run").display().to_string()]);
        flags
    }

    /// The flags of `podman run`.
    pub fn run_flags() -> Vec<String> {
        Self::flags("AIRLOCK_TEST_PODMAN_RUN_FLAGS", "--ulimit nofile=20000:20000 --ulimit nproc=1000:1000")
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let mut command = Command::new("podman");
        command.args(self.global_flags()).args(args);
        run_command(command, None)
    }

    /// `podman run --rm` with the configured run flags.
    pub fn run_container(&self, image: &str, command: &[&str]) -> Run {
        let mut args: Vec<String> = vec!["run".into(), "--rm".into(), "--tls-verify=false".into()];
        args.extend(Self::run_flags());
        args.push(image.into());
        args.extend(command.iter().map(|c| c.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&args)
    }
}

/// An OCI layout (tag `1.0`) of a runnable image: Debian's static busybox and a greeting,
/// built with umoci.
pub fn busybox_layout(dir: &Path) -> String {
    let umoci = require("umoci", "umoci");
    let busybox = std::path::Path::new("/bin/busybox");
    assert!(busybox.is_file(), "/bin/busybox is missing: `apt-get install busybox-static` (README's test command installs it)");
    let layout = dir.join("busybox");
    let bundle = dir.join("bundle");
    let image = format!("{}:1.0", layout.display());
    let umoci_run = |args: &[&str]| {
        let mut command = Command::new(&umoci);
        command.args(args);
        run_command(command, None).success();
    };
    umoci_run(&["init", "--layout", layout.to_str().unwrap()]);
    umoci_run(&["new", "--image", &image]);
    umoci_run(&["unpack", "--rootless", "--image", &image, bundle.to_str().unwrap()]);
    std::fs::copy(busybox, bundle.join("rootfs/busybox")).expect("copy busybox");
    std::fs::write(bundle.join("rootfs/hello.txt"), "hello from a container served by airlock\n").unwrap();
    umoci_run(&["repack", "--image", &image, bundle.to_str().unwrap()]);
    umoci_run(&["config", "--image", &image, "--config.cmd", "/busybox", "--config.cmd", "cat", "--config.cmd", "/hello.txt", "--os", "linux", "--architecture", "amd64"]);
    format!("ocidir://{}:1.0", layout.display())
}
