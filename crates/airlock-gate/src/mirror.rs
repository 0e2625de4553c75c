//! A gated pull-through mirror: `airlock serve` with `mirrors:` answers container runtimes that
//! use it as their registry mirror, from what the gates promoted, and brings in what is asked
//! for through the same gates.
//!
//! ```text
//! GET /v2/library/app/manifests/1 (?ns=docker.io)
//!   route: the mirror of `ns` (or of the first path component, or the first mirror)
//!          → storage repository PREFIX/library/app (allow/deny checked)
//!   promoted there? ── yes ─▶ served; if not looked at upstream within `interval`, one
//!                             background import (a HEAD when nothing changed) per tag
//!        └─ no ──▶ one import per tag (concurrent pulls wait for the same one), waited for up
//!                  to `wait`: promoted → served; refused → 404 naming the gate and the run;
//!                  still running → 404 "being checked (run N)"; upstream down → 404 saying so
//! ```
//!
//! An import is the pipeline's: upstream → staging (`airlock-staging/PREFIX/REPO` in this
//! registry, so `test` gates pull the candidate from it) → gates → PREFIX/REPO, recorded as
//! a run with trigger `Pull`, under the lease of the import `PREFIX/REPO:TAG` in the run
//! database (shared with `airlock watch` when both name it). The mirror's own pushes and reads
//! go to a private loopback listener over the same storage that answers only a credential this
//! process made ([`GatedMirror::credential`]); every other client only pulls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_copy::{CopyOptions, Copier, NoProgress};
use airlock_registry::metrics::mirror_metrics;
use airlock_registry::mirror::Answer;
use airlock_registry::Storage;
use airlock_store::remote::{CredentialFiles, Registries, RegistryOptions};
use tokio::sync::watch;

use crate::config::{glob_matches, Config, Import, Mirror, MirrorConfig, DEFAULT_UNIQUE_TAG};
use crate::pipeline::{Outcome, Pipeline};
use crate::runs::Trigger;

/// The user name of the mirror's own requests.
const INTERNAL_USER: &str = "airlock-mirror";

/// The repository, under this registry, where candidates wait for their gates.
const STAGING: &str = "airlock-staging";

/// What the mirror knows of one tag in this process.
#[derive(Default)]
struct TagState {
    /// When upstream was last asked about it.
    checked: Option<Instant>,
    /// The import running for it: its outcome once done.
    running: Option<watch::Receiver<Option<Outcome>>>,
}

/// The mirror of one `airlock serve`.
#[derive(Clone)]
pub struct GatedMirror(Arc<Shared>);

/// What the mirror's requests and its imports share.
struct Shared {
    config: MirrorConfig,
    pipeline: Arc<Pipeline>,
    /// The private listener the mirror's own pushes and reads go to (`127.0.0.1:PORT`).
    address: String,
    /// `Basic …` of the private listener's credential.
    credential: String,
    tags: Mutex<HashMap<String, TagState>>,
}

/// How many tags the mirror remembers before it forgets the ones it is done with: clients
/// choose the names, so the memory must not grow with every name they try.
const REMEMBERED: usize = 10_000;

/// Forgets, once more than [`REMEMBERED`] tags are known, those whose import is not running
/// (they are asked about upstream again at their next pull, as after a restart).
fn forget_old(tags: &mut HashMap<String, TagState>) {
    if tags.len() >= REMEMBERED {
        tags.retain(|_, state| state.running.as_ref().is_some_and(|r| r.borrow().is_none() && r.has_changed().is_ok()));
    }
}

/// 32 random hex characters.
fn random_secret() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("the system's randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Docker Hub's other names, as containerd's `ns` may give them.
fn canonical_host(host: &str) -> &str {
    match host {
        "registry-1.docker.io" | "index.docker.io" | "registry.hub.docker.com" => "docker.io",
        other => other,
    }
}

fn allowed(allow: &[String], deny: &[String], value: &str) -> bool {
    (allow.is_empty() || allow.iter().any(|p| glob_matches(p, value))) && !deny.iter().any(|p| glob_matches(p, value))
}

impl GatedMirror {
    /// The mirror of `config`, staging and promoting through the private listener at `address`
    /// (plain HTTP on loopback), which must answer only [`GatedMirror::credential`].
    pub async fn start(config: MirrorConfig, address: &str) -> Result<GatedMirror, String> {
        let secret = random_secret();
        let mut options = RegistryOptions::new(CredentialFiles::discover(None));
        // A look upstream is never retried: the next one is an interval away, so a rate-limited
        // upstream sees at most one request per tag per interval, and its failure is a run
        // at once. Blob transfers keep the copy engine's own retries.
        options.retry = airlock_store::remote::RetryPolicy { attempts: 1, ..Default::default() };
        for registry in &config.registries {
            registry.apply_to(&mut options);
        }
        let own = airlock_sync::config::RegistryConfig {
            registry: address.to_owned(),
            credentials: Some((INTERNAL_USER.to_owned(), secret.clone())),
            plain_http: true,
            concurrency: None,
            requests_per_second: None,
        };
        own.apply_to(&mut options);
        let registries = Registries::new(options).map_err(|e| e.to_string())?;
        let runs = crate::runs::open(&config.state).await.map_err(|e| e.to_string())?;
        let mut registry_configs = config.registries.clone();
        registry_configs.push(own);
        let pipeline_config = Config {
            path: config.path.clone(),
            registries: registry_configs,
            state: config.state.clone(),
            lease: config.lease,
            runtime: config.runtime.clone(),
            interval: Duration::from_secs(5 * 60),
            listen: None,
            imports: Vec::new(),
        };
        let pipeline = Pipeline { config: pipeline_config, registries, runs, copier: Copier::new(CopyOptions::new(), Arc::new(NoProgress)) };
        let credential = format!("Basic {}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{INTERNAL_USER}:{secret}")));
        Ok(GatedMirror(Arc::new(Shared { config, pipeline: Arc::new(pipeline), address: address.to_owned(), credential, tags: Mutex::new(HashMap::new()) })))
    }

    /// The pipeline the mirror imports with (its runs, for the web page).
    pub fn pipeline(&self) -> Arc<Pipeline> {
        self.0.pipeline.clone()
    }

    /// The repository a client names (`library/app`), which the registry's rules are written
    /// for, of one of the mirror's import names (`docker.io/library/app:1`); `None` for others.
    pub fn client_repository(&self, import: &str) -> Option<String> {
        let repository = import.rsplit_once('@').map_or_else(|| import.rsplit_once(':').map_or(import, |(r, _)| r), |(r, _)| r);
        let (_, path) = self.0.decode(repository)?;
        Some(path.to_owned())
    }

    /// The `Authorization` the private listener must answer (and only it).
    pub fn credential(&self) -> String {
        self.0.credential.clone()
    }
}

impl Shared {
    /// The mirror and upstream path a client's repository names.
    fn mirror_for<'a>(&self, name: &'a str, ns: Option<&str>) -> Result<(&Mirror, &'a str), String> {
        let mirrors = &self.config.mirrors;
        if let Some(ns) = ns {
            let ns = canonical_host(ns);
            return match mirrors.iter().find(|m| m.upstream == ns) {
                Some(mirror) => Ok((mirror, name)),
                None => Err(format!(
                    "this mirror serves no upstream `{ns}` (it serves {})",
                    mirrors.iter().map(|m| format!("`{}`", m.upstream)).collect::<Vec<_>>().join(", ")
                )),
            };
        }
        for mirror in mirrors {
            if let Some(path) = name.strip_prefix(mirror.prefix.as_str()).and_then(|rest| rest.strip_prefix('/')) {
                return Ok((mirror, path));
            }
        }
        Ok((&mirrors[0], name))
    }

    /// The mirror and upstream path of a storage repository `route` gave.
    fn decode<'a>(&self, repository: &'a str) -> Option<(&Mirror, &'a str)> {
        self.config.mirrors.iter().find_map(|m| repository.strip_prefix(m.prefix.as_str()).and_then(|r| r.strip_prefix('/')).map(|path| (m, path)))
    }

    /// The import that brings `path` of `mirror` in at `reference` (a tag or a digest).
    fn import_of(&self, mirror: &Mirror, path: &str, reference: &str) -> Result<Import, String> {
        let parse = |text: String| text.parse::<airlock_oci::Reference>().map_err(|e| e.to_string());
        let by_digest = airlock_oci::parse_digest(reference).is_ok();
        let tags = if by_digest { Vec::new() } else { vec![reference.to_owned()] };
        Ok(Import {
            name: format!("{}/{path}{}{reference}", mirror.prefix, if by_digest { "@" } else { ":" }),
            source: parse(format!("{}/{path}", mirror.upstream))?,
            filter: airlock_sync::config::tag_filter(&tags, None, &[], None, None).map_err(|(_, e)| e)?,
            platforms: mirror.platforms.clone(),
            staging: parse(format!("{}/{STAGING}/{}/{path}", self.address, mirror.prefix))?,
            target: parse(format!("{}/{}/{path}", self.address, mirror.prefix))?,
            unique_tag: DEFAULT_UNIQUE_TAG.to_owned(),
            gates: mirror.gates.clone(),
            dependents: Vec::new(),
            interval: None,
            timer: None,
            gate_repo: None,
        })
    }

    /// The running import of `key` (`reference` of `import`'s source), or a new one.
    ///
    /// A finished answer that could not be served (refused, upstream down) stands for one
    /// interval: pulls in between get it again instead of asking upstream again.
    /// `interval: None` (the background look at a served tag, due already) always asks again.
    fn import(self: &Arc<Self>, key: &str, import: Import, reference: &str, interval: Option<Duration>) -> watch::Receiver<Option<Outcome>> {
        let mut tags = self.tags.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        forget_old(&mut tags);
        let state = tags.entry(key.to_owned()).or_default();
        if let Some(running) = &state.running {
            let answer = running.borrow().as_ref().map(|outcome| outcome.action);
            let fresh = interval.is_some_and(|interval| state.checked.is_some_and(|at| at.elapsed() < interval));
            let standing = match answer {
                None => running.has_changed().is_ok(),
                // Another process's import says nothing lasting; a promotion is served from storage.
                Some("busy" | "promoted" | "up_to_date") => false,
                Some(_) => fresh,
            };
            if standing {
                return running.clone();
            }
        }
        state.checked = Some(Instant::now());
        let (sender, receiver) = watch::channel(None);
        state.running = Some(receiver.clone());
        mirror_metrics().imports.inc();
        let mirror = self.clone();
        let reference = reference.to_owned();
        tokio::spawn(async move {
            let outcome = mirror.pipeline.import_reference(&import, &reference, Trigger::Pull, false).await;
            if outcome.action == "error" {
                mirror_metrics().upstream_errors.inc();
                tracing::warn!(import = %import.name, "mirror import: {}", outcome.reason.as_deref().unwrap_or("failed"));
            }
            let _ = sender.send(Some(outcome));
        });
        receiver
    }

    /// Whether `key` is due a look upstream (and marks it looked at).
    fn due(&self, key: &str, interval: Duration) -> bool {
        let mut tags = self.tags.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        forget_old(&mut tags);
        let state = tags.entry(key.to_owned()).or_default();
        let running = state.running.as_ref().is_some_and(|r| r.borrow().is_none());
        let due = !running && state.checked.is_none_or(|at| at.elapsed() >= interval);
        if due {
            state.checked = Some(Instant::now());
        }
        due
    }

    /// The run an import of `name` is in, for messages.
    async fn running_run(&self, name: &str) -> Option<String> {
        let runs = self.pipeline.runs.list(Some(name), 1).await.ok()?;
        runs.into_iter().next().filter(|r| r.status == "Running").map(|r| r.run_id)
    }
}

#[async_trait::async_trait]
impl airlock_registry::mirror::Mirror for GatedMirror {
    fn route(&self, name: &str, ns: Option<&str>) -> Result<String, String> {
        let (mirror, path) = self.0.mirror_for(name, ns)?;
        if path.starts_with(&format!("{STAGING}/")) || !allowed(&mirror.allow, &mirror.deny, path) {
            return Err(format!("`{path}` is not mirrored from {}: this mirror's `allow`/`deny` leave it out", mirror.upstream));
        }
        Ok(format!("{}/{path}", mirror.prefix))
    }

    fn admits(&self, repository: &str, reference: &str) -> Result<(), String> {
        let Some((mirror, path)) = self.0.decode(repository) else { return Err(format!("`{repository}` is not a mirrored repository")) };
        if airlock_oci::parse_digest(reference).is_err() && !allowed(&mirror.allow_tags, &mirror.deny_tags, reference) {
            return Err(format!("{}/{path}:{reference} is not mirrored: this mirror's `allow_tags`/`deny_tags` leave it out", mirror.upstream));
        }
        Ok(())
    }

    fn served(&self, repository: &str, reference: &str) {
        // The last good digest was served at once; upstream is asked about a tag at most once
        // per interval, in the background, and a change goes through the gates before it is
        // served. Content by digest never changes.
        let shared = &self.0;
        let Some((mirror, path)) = shared.decode(repository) else { return };
        if airlock_oci::parse_digest(reference).is_ok() {
            return;
        }
        let key = format!("{repository}:{reference}");
        if shared.due(&key, mirror.interval) {
            if let Ok(import) = shared.import_of(mirror, path, reference) {
                drop(shared.import(&key, import, reference, None));
            }
        }
    }

    async fn missing(&self, storage: &Storage, repository: &str, reference: &str) -> Answer {
        let shared = &self.0;
        let Some((mirror, path)) = shared.decode(repository) else {
            return Answer::Unknown(format!("`{repository}` is not a mirrored repository"));
        };
        let by_digest = airlock_oci::parse_digest(reference).is_ok();
        let shown = if by_digest { format!("{}/{path}@{reference}", mirror.upstream) } else { format!("{}/{path}:{reference}", mirror.upstream) };
        let key = format!("{repository}{}{reference}", if by_digest { "@" } else { ":" });
        let import = match shared.import_of(mirror, path, reference) {
            Ok(import) => import,
            Err(e) => return Answer::Unknown(format!("{shown}: {e}")),
        };
        mirror_metrics().misses.inc();
        let name = import.name.clone();
        let mut receiver = shared.import(&key, import, reference, Some(mirror.interval));
        let finished: Option<Outcome> = match tokio::time::timeout(mirror.wait, receiver.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone(),
            _ => None,
        };
        let outcome = match finished {
            Some(outcome) => outcome,
            None => {
                let run = shared.running_run(&name).await.map(|run| format!(" (run {run})")).unwrap_or_default();
                return Answer::Unknown(format!("{shown} is being checked by airlock's gates{run}; pull again in a moment"));
            }
        };
        let run = outcome.run_id.as_deref().map(|run| format!(" (run {run})")).unwrap_or_default();
        let reason = outcome.reason.clone().unwrap_or_default();
        match outcome.action {
            "promoted" | "up_to_date" if storage.resolve(repository, reference).await.is_ok() => Answer::Serve,
            "promoted" | "up_to_date" => Answer::Unknown(format!(
                "{shown} was promoted as {}{run}: this mirror keeps only some platforms of an index, a new digest; pull that one",
                outcome.promoted_digest.as_deref().unwrap_or("another digest")
            )),
            "failed" | "rejected_before" => {
                mirror_metrics().refusals.inc();
                Answer::Unknown(format!("{shown} was refused by airlock's gates{run}: {reason}"))
            }
            "busy" => Answer::Unknown(format!("{shown} is being checked by another airlock: pull again in a moment ({reason})")),
            _ if outcome.upstream_unreachable => Answer::Unknown(format!(
                "{shown} cannot be brought in{run}: upstream {} is unreachable or failing ({reason}); what the gates promoted before is still served",
                mirror.upstream
            )),
            _ => Answer::Unknown(format!("{shown} cannot be brought in{run}: {reason}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_hosts() {
        assert!(allowed(&[], &[], "library/app"));
        assert!(allowed(&["library/*".into()], &[], "library/app"));
        assert!(!allowed(&["library/*".into()], &[], "other/app"));
        assert!(!allowed(&[], &["*/secret*".into()], "team/secret-app"));
        assert_eq!(canonical_host("registry-1.docker.io"), "docker.io");
    }

    #[test]
    fn finished_tags_are_forgotten_beyond_the_limit_running_ones_kept() {
        let mut tags: HashMap<String, TagState> = (0..REMEMBERED).map(|n| (format!("r:{n}"), TagState { checked: Some(Instant::now()), running: None })).collect();
        let (sender, running) = watch::channel(None);
        tags.insert("r:running".into(), TagState { checked: None, running: Some(running) });
        forget_old(&mut tags);
        assert_eq!(tags.keys().collect::<Vec<_>>(), ["r:running"]);
        drop(sender);
    }
}
