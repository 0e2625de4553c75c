//! Running one gate against a staged candidate: `policy`, `test`, `command`, `signature`.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_oci::{Digest, Reference};
use airlock_store::Store;
use tokio::io::AsyncReadExt;

use crate::config::{Gate, GateKind, Runtime};
use crate::policy::{check, ImageFacts};
use crate::runs::GateRecord;

/// How much of a program's output a gate keeps (the end, where failures are said).
const LOG_LIMIT: usize = 64 * 1024;

/// What the gates know about the candidate.
pub struct Candidate<'a> {
    /// The import's name.
    pub import: &'a str,
    /// The run.
    pub run_id: &'a str,
    /// The upstream tag.
    pub tag: &'a str,
    /// The staged candidate, by digest (`host/staging/node@sha256:…`).
    pub reference: Reference,
    /// Its digest.
    pub digest: &'a Digest,
    /// The upstream repository and the digest seen there (what a signature signs).
    pub upstream: Arc<dyn Store>,
    /// The upstream digest.
    pub upstream_digest: &'a Digest,
    /// Each platform's configuration and size.
    pub facts: &'a [ImageFacts],
    /// Basic credentials for the staging registry, for the container runtime.
    pub staging_credentials: Option<(String, String)>,
    /// Whether the staging registry speaks plain HTTP (or is on loopback).
    pub staging_insecure: bool,
}

impl Candidate<'_> {
    /// The variables of argument templates.
    pub fn variables(&self) -> BTreeMap<&'static str, String> {
        let repository = self.reference.repository_key();
        BTreeMap::from([
            ("reference", self.reference.to_string()),
            ("digest", self.digest.to_string()),
            ("repository", repository),
            ("tag", self.tag.to_owned()),
            ("run_id", self.run_id.to_owned()),
            ("import", self.import.to_owned()),
            ("date", airlock_oci::time::today()),
        ])
    }
}

/// Renders a template checked by the config loader.
pub fn render(template: &str, variables: &BTreeMap<&'static str, String>) -> String {
    let env = minijinja::Environment::new();
    env.render_str(template, variables).unwrap_or_else(|_| template.to_owned())
}

/// What a gate concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The gate ran and the candidate passed.
    Passed,
    /// The gate ran and said no: the upstream digest is refused.
    Failed,
    /// The gate could not run (runtime missing or broken, registry unreachable): nothing is
    /// known about the candidate, so nothing is refused and the next look tries again.
    Error,
}

impl Verdict {
    /// As recorded in the run database (`gates.result`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Error => "error",
        }
    }
}

/// Exit codes with which podman and docker report their own failure (125) or that the
/// command could not be run (126, 127), as opposed to the tested program's answer.
const RUNTIME_FAILURE_CODES: [i32; 3] = [125, 126, 127];

/// Variables a gate's programs inherit from airlock's environment: what a shell and a
/// container runtime need to work, nothing that could carry a secret (credentials named by
/// `password_env` live in airlock's environment too). A gate gets more only by naming them in
/// its `env` list.
const INHERITED: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR", "TZ", "LANG", "LANGUAGE", "TERM",
    "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME",
    "DOCKER_HOST", "DOCKER_CONFIG", "BUILDAH_ISOLATION",
];

/// The environment of a gate's programs: [`INHERITED`], `LC_*` and `CONTAINERS_*` (podman's
/// configuration paths), the variables the gate names in `env`, then `set` (the `AIRLOCK_*`
/// variables), from an otherwise empty environment.
pub fn clean_environment(passed: &[String], set: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| {
            INHERITED.contains(&name.as_str())
                || name.starts_with("LC_")
                || name.starts_with("CONTAINERS_")
                || passed.iter().any(|p| p == name)
        })
        .collect();
    env.extend(set.iter().cloned());
    env
}

fn apply_environment(process: &mut tokio::process::Command, env: &[(String, String)]) {
    process.env_clear().envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
}

/// Runs `gate`; the record says passed, failed or error, and why.
pub async fn run(gate: &Gate, candidate: &Candidate<'_>, runtime: &Runtime) -> GateRecord {
    let started = Instant::now();
    let outcome = tokio::time::timeout(gate.timeout, run_kind(gate, candidate, runtime)).await;
    let (verdict, log) = match outcome {
        Ok(result) => result,
        Err(_) => (Verdict::Failed, format!("timed out after {}s", gate.timeout.as_secs())),
    };
    GateRecord {
        name: gate.name.clone(),
        kind: gate.kind.as_str().to_owned(),
        result: verdict.as_str().to_owned(),
        duration_ms: started.elapsed().as_millis() as u64,
        log,
    }
}

async fn run_kind(gate: &Gate, candidate: &Candidate<'_>, runtime: &Runtime) -> (Verdict, String) {
    let airlock_variables: Vec<(String, String)> =
        candidate.variables().into_iter().map(|(name, value)| (format!("AIRLOCK_{}", name.to_ascii_uppercase()), value)).collect();
    let env = clean_environment(&gate.env, &airlock_variables);
    match &gate.kind {
        GateKind::Policy(policy) => {
            let mut log = String::new();
            let mut verdict = Verdict::Passed;
            for image in candidate.facts {
                let violations = check(policy, image);
                if violations.is_empty() {
                    log.push_str(&format!("{}: policy satisfied\n", image.platform));
                } else {
                    verdict = Verdict::Failed;
                    for violation in violations {
                        log.push_str(&format!("{}: {violation}\n", image.platform));
                    }
                }
            }
            (verdict, log)
        }
        GateKind::Command(command) => {
            let variables = candidate.variables();
            let args: Vec<String> = command.iter().map(|a| render(a, &variables)).collect();
            let mut process = tokio::process::Command::new(&args[0]);
            process.args(&args[1..]);
            apply_environment(&mut process, &env);
            let (code, output) = execute(process).await;
            // Not started at all: the gate's program is missing, which says nothing of the image.
            let verdict = match code {
                Some(0) => Verdict::Passed,
                Some(_) => Verdict::Failed,
                None if output.starts_with("cannot start ") => Verdict::Error,
                None => Verdict::Failed,
            };
            (verdict, format!("$ {}\n{output}{}", args.join(" "), exit_line(code)))
        }
        GateKind::Test { dockerfile, context, command, build_args } => test(candidate, runtime, &env, dockerfile, context, command, build_args).await,
        GateKind::Signature { key } => match crate::signature::verify(candidate.upstream.as_ref(), candidate.upstream_digest, key).await {
            Ok(log) => (Verdict::Passed, log),
            Err(crate::signature::Refusal::Refused(reason)) => (Verdict::Failed, reason),
            Err(crate::signature::Refusal::CannotCheck(reason)) => (Verdict::Error, reason),
        },
    }
}

fn exit_line(code: Option<i32>) -> String {
    match code {
        Some(code) => format!("exit status {code}\n"),
        None => "killed by a signal or not started\n".to_owned(),
    }
}

/// Builds a test image `FROM` the candidate and runs it. The verdict is `Error`, not
/// `Failed`, when the runtime could not do its part: not installed, or exiting with one of
/// [`RUNTIME_FAILURE_CODES`] (its own failure, not the build's or the test's).
async fn test(
    candidate: &Candidate<'_>,
    runtime: &Runtime,
    env: &[(String, String)],
    dockerfile: &std::path::Path,
    context: &std::path::Path,
    command: &[String],
    build_args: &BTreeMap<String, String>,
) -> (Verdict, String) {
    if !matches!(candidate.reference, Reference::Registry(_)) {
        return (Verdict::Error, format!("a test gate needs the staging repository in a registry the container runtime can pull from; `{}` is not", candidate.reference));
    }
    let variables = candidate.variables();
    let image = format!("localhost/airlock-test-{}:{}", candidate.import.to_ascii_lowercase(), candidate.run_id);
    let podman = runtime.command.rsplit('/').next().unwrap_or("").starts_with("podman");
    // Credentials reach the runtime in a private file, never on its command line.
    let authfile = match &candidate.staging_credentials {
        Some((user, secret)) if podman => {
            use base64::Engine as _;
            let Reference::Registry(registry) = &candidate.reference else { unreachable!("checked above") };
            let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
            let body = serde_json::json!({"auths": {registry.registry.clone(): {"auth": auth}}});
            match tempfile::Builder::new().prefix("airlock-auth").suffix(".json").tempfile() {
                Ok(file) => {
                    if std::fs::write(file.path(), body.to_string()).is_err() {
                        return (Verdict::Error, "cannot write a credentials file for the container runtime".into());
                    }
                    Some(file)
                }
                Err(e) => return (Verdict::Error, format!("cannot create a credentials file for the container runtime: {e}")),
            }
        }
        _ => None,
    };
    let runtime_command = |subcommand: &str| {
        let mut process = tokio::process::Command::new(&runtime.command);
        process.args(&runtime.args).arg(subcommand);
        apply_environment(&mut process, env);
        process
    };
    let mut log = String::new();
    let mut build = runtime_command("build");
    build.args(&runtime.build_args);
    if podman && candidate.staging_insecure {
        build.arg("--tls-verify=false");
    }
    if let Some(file) = &authfile {
        build.arg("--authfile").arg(file.path());
    }
    build.arg("-f").arg(dockerfile).arg("-t").arg(&image).arg("--build-arg").arg(format!("AIRLOCK_CANDIDATE={}", candidate.reference));
    for (name, value) in build_args {
        build.arg("--build-arg").arg(format!("{name}={}", render(value, &variables)));
    }
    build.arg(context);
    log.push_str(&format!("$ {} build … -t {image} --build-arg AIRLOCK_CANDIDATE={} {}\n", runtime.command, candidate.reference, context.display()));
    let (code, output) = execute(build).await;
    log.push_str(&output);
    if code != Some(0) {
        let verdict = runtime_verdict(code);
        let what = if verdict == Verdict::Error { "the container runtime could not build the test image" } else { "building the test image failed" };
        log.push_str(&format!("{what}: {}", exit_line(code)));
        return (verdict, tail(log));
    }
    let mut run = runtime_command("run");
    run.arg("--rm").args(&runtime.run_args).arg(&image).args(command);
    log.push_str(&format!("$ {} run --rm {} {image} {}\n", runtime.command, runtime.run_args.join(" "), command.join(" ")));
    let (code, output) = execute(run).await;
    log.push_str(&output);
    let verdict = runtime_verdict(code);
    if verdict == Verdict::Error {
        log.push_str("the container runtime could not run the test: ");
    }
    log.push_str(&exit_line(code));
    let mut remove = runtime_command("rmi");
    remove.args(["-f", &image]);
    let _ = execute(remove).await;
    (verdict, tail(log))
}

/// What a container runtime's exit code says: 0 passed; its own failure codes, or no code at
/// all (not started, killed), an error; any other code is the build's or the test's answer.
fn runtime_verdict(code: Option<i32>) -> Verdict {
    match code {
        Some(0) => Verdict::Passed,
        Some(code) if RUNTIME_FAILURE_CODES.contains(&code) => Verdict::Error,
        Some(_) => Verdict::Failed,
        None => Verdict::Error,
    }
}

/// Keeps the end of a long log.
fn tail(log: String) -> String {
    if log.len() <= LOG_LIMIT {
        return log;
    }
    let mut start = log.len() - LOG_LIMIT;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    format!("[… {start} bytes cut]\n{}", &log[start..])
}

/// Runs a program to the end; its exit code and its output (stdout, then stderr).
async fn execute(mut command: tokio::process::Command) -> (Option<i32>, String) {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let program = format!("{:?}", command.as_std().get_program());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return (None, format!("cannot start {program}: {e}\n")),
    };
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (_, _, status) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err), child.wait());
    out.extend_from_slice(&err);
    let text = tail(String::from_utf8_lossy(&out).into_owned());
    (status.ok().and_then(|s| s.code()), text)
}

/// Runs a dependent's program with the promotion in its environment.
pub async fn run_program(args: &[String], env: &[(String, String)], timeout: Duration) -> (bool, String) {
    let mut process = tokio::process::Command::new(&args[0]);
    process.args(&args[1..]).envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    match tokio::time::timeout(timeout, execute(process)).await {
        Ok((code, output)) => (code == Some(0), format!("$ {}\n{output}{}", args.join(" "), exit_line(code))),
        Err(_) => (false, format!("$ {}\ntimed out after {}s\n", args.join(" "), timeout.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_failing_itself_is_an_error_not_a_verdict() {
        assert_eq!(runtime_verdict(Some(0)), Verdict::Passed);
        assert_eq!(runtime_verdict(Some(1)), Verdict::Failed, "a failing RUN step or test command");
        assert_eq!(runtime_verdict(Some(2)), Verdict::Failed);
        for code in [125, 126, 127] {
            assert_eq!(runtime_verdict(Some(code)), Verdict::Error, "{code}");
        }
        assert_eq!(runtime_verdict(None), Verdict::Error, "not started, or killed by a signal");
    }

    #[test]
    fn gate_programs_see_only_what_they_need_and_what_they_name() {
        let inherited: Vec<(String, String)> = vec![("AIRLOCK_DIGEST".into(), "sha256:x".into())];
        let env = clean_environment(&["CARGO".into()], &inherited);
        let names: Vec<&str> = env.iter().map(|(name, _)| name.as_str()).collect();
        assert!(names.contains(&"PATH") && names.contains(&"AIRLOCK_DIGEST"), "{names:?}");
        // cargo sets CARGO for tests: passed only because the gate named it.
        assert!(names.contains(&"CARGO"), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with("CARGO_PKG")), "{names:?}");
        let without = clean_environment(&[], &inherited);
        assert!(!without.iter().any(|(name, _)| name == "CARGO"));
    }
}
