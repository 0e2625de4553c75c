//! The import pipeline: resolve upstream, stage, gate, promote, report, notify; and rollback.
//!
//! ```text
//! upstream:tag ──HEAD──▶ digest D ── same as last run? ──▶ up to date (nothing written)
//!      │ copy by digest (platforms filtered)
//!      ▼
//! staging:<unique tag>  ── gates in order (policy, test, command, signature) ──▶ any failed: run Failed, target untouched
//!      │ copy by digest
//!      ▼
//! target@D' ── gate report attached as a referrer ── target:<unique tag> ── target:<tag> (last)
//!      │
//!      ▼ dependents (commands, webhooks), only when the stable tag moved
//! ```
//!
//! Every step is recorded in the run database. The stable tag is the last write of a
//! promotion, after the content, the report and the unique tag: a kill at any moment leaves it
//! on the old digest or the new one, and both are complete in the target.

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_copy::{CopyOptions, Copier};
use airlock_oci::{Descriptor, Digest, Manifest, ManifestKind, Reference};
use airlock_store::remote::{Access, Registries};
use airlock_store::Store;
use serde::Serialize;

use crate::config::{Config, DependentAction, Import};
use crate::gates::{self, Candidate, Verdict};
use crate::policy::ImageFacts;
use crate::runs::{status_of, GateRecord, RunEnd, Runs, Status, Trigger};

/// The artifact type of the gate report attached to a promoted digest.
pub const REPORT_ARTIFACT_TYPE: &str = "application/vnd.airlock.gate-report.v1+json";

/// What the pipeline needs: the checked file, the registries, the run database.
pub struct Pipeline {
    /// The file.
    pub config: Config,
    /// Registry clients (credentials, plain HTTP, limits from the file and the flags).
    pub registries: Registries,
    /// The run database: SQLite or PostgreSQL.
    pub runs: Runs,
    /// Copies share one budget and one record of blobs moved.
    pub copier: Copier,
}

/// What happened to one tag of an import.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The import.
    pub import: String,
    /// The upstream tag.
    pub tag: String,
    /// `promoted`, `failed` (a gate refused the digest), `error` (the run could not finish: a
    /// registry, the container runtime), `up_to_date`, `rejected_before`, `busy`, `rolled_back`
    /// (snake_case, as every enum value in airlock's JSON; tables show them with spaces).
    pub action: &'static str,
    /// The run recorded, if any.
    pub run_id: Option<String>,
    /// The upstream digest seen.
    pub upstream_digest: Option<String>,
    /// What the stable tag points at now, when this run moved it.
    pub promoted_digest: Option<String>,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// The run failed because upstream could not be asked (unreachable, 429, 5xx), not
    /// because it lacks the tag: a mirror then says upstream is down.
    #[serde(skip)]
    pub upstream_unreachable: bool,
}

impl Outcome {
    /// An `error` outcome of `import` for `reason`, before any tag was looked at.
    pub fn failure(import: &str, reason: &str) -> Outcome {
        let mut outcome = Outcome::new(import, "", "error");
        outcome.reason = Some(reason.to_owned());
        outcome
    }

    fn new(import: &str, tag: &str, action: &'static str) -> Outcome {
        Outcome {
            import: import.to_owned(),
            tag: tag.to_owned(),
            action,
            run_id: None,
            upstream_digest: None,
            promoted_digest: None,
            reason: None,
            upstream_unreachable: false,
        }
    }

    /// Whether the outcome counts as a failure for the exit code: a failed or broken run, an
    /// upstream digest a gate refused earlier (the target is still not what upstream has), or
    /// a run that could not start because another process holds the import.
    pub fn failed(&self) -> bool {
        matches!(self.action, "failed" | "error" | "rejected_before" | "busy")
    }
}

/// Opens the store a reference names: a registry, an OCI layout folder or a serve root.
pub async fn open_store(registries: &Registries, reference: &Reference, access: Access) -> Arc<dyn Store> {
    match reference {
        Reference::Registry(registry) => Arc::new(registries.store(registry, access).await),
        Reference::Layout(layout) => Arc::new(airlock_store::layout::LayoutStore::new(&layout.path)),
        // A folder, or `s3://BUCKET/PREFIX` with the `AWS_*` variables, as `serve --storage` takes it.
        Reference::Root(root) => Arc::new(airlock_registry::RootStore::new(Arc::new(airlock_registry::Storage::open_or_failing(&root.root)), &root.repository)),
    }
}

/// The lease of promoting `reference` (a tag or a digest) into `target`: named by the target
/// repository's path and the reference, without the registry's host, so that every process
/// promoting into one repository and tag takes the same lease whatever it calls the import
/// or the registry (`airlock watch` through a serve's public address, the gated mirror of that
/// serve through its private one). Two registries with one path merely take turns.
pub fn lease_key(target: &Reference, reference: &str) -> String {
    let repository = match target {
        Reference::Registry(r) => r.repository.clone(),
        Reference::Root(r) => r.repository.clone(),
        Reference::Layout(l) => l.path.clone(),
    };
    let separator = if airlock_oci::parse_digest(reference).is_ok() { '@' } else { ':' };
    format!("{repository}{separator}{reference}")
}

fn copy_options(platforms: Vec<airlock_oci::PlatformSpec>) -> CopyOptions {
    let mut options = CopyOptions::new();
    options.platforms = platforms;
    options.force = true;
    options
}

impl Pipeline {
    /// Runs `import` for each selected upstream tag. `force` runs even when upstream did not
    /// change since the last run (a timer, or a human who wants the gates again).
    ///
    /// The import's lease is held throughout and renewed every third of its length; if it
    /// cannot be renewed before it runs out (the database is unreachable, or this process
    /// stalled and another took the import over), the import stops where it is, which the
    /// promotion order makes safe: the stable tag is either untouched or complete.
    pub async fn import(&self, import: &Import, trigger: Trigger, force: bool) -> Vec<Outcome> {
        self.import_locked(import, trigger, force).await
    }

    /// Runs `import` for one upstream `reference`, a tag or a digest (a pull through the gated
    /// mirror), under its lease as [`Pipeline::import`] does. A digest is promoted under its
    /// unique tag only: no stable tag names it.
    pub async fn import_reference(&self, import: &Import, reference: &str, trigger: Trigger, force: bool) -> Outcome {
        let source = open_store(&self.registries, &import.source, Access::Pull).await;
        self.import_tag(import, source, reference, trigger, force).await
    }

    /// Runs `work` for `tag` of `import` holding its lease: `busy` when another process holds
    /// it.
    async fn holding_lease(&self, import: &Import, tag: &str, work: impl std::future::Future<Output = Outcome>) -> Outcome {
        let holder = crate::runs::this_holder();
        let lease = self.config.lease;
        let key = lease_key(&import.target, tag);
        match self.runs.lock(&key, &holder, lease).await.map_err(|e| e.to_string()) {
            Ok(Ok(())) => {}
            Ok(Err(other)) => {
                let mut outcome = Outcome::new(&import.name, tag, "busy");
                outcome.reason = Some(format!("another airlock ({other}) is promoting {key}"));
                return outcome;
            }
            Err(e) => return Outcome::failure(&import.name, &e),
        }
        // Holding the lease, any run of this tag still marked running was left by a killed
        // process.
        let _ = self.runs.reap(&import.name, tag, "interrupted: the process running it stopped").await;
        let outcome = tokio::select! {
            outcome = work => outcome,
            lost = self.keep_lease(&key, &holder, lease) => {
                tracing::warn!(import = %import.name, "{lost}");
                Outcome::failure(&import.name, &lost)
            }
        };
        let _ = self.runs.unlock(&key, &holder).await;
        outcome
    }

    /// Renews the lease `key` until it is lost; returns why.
    async fn keep_lease(&self, key: &str, holder: &str, lease: Duration) -> String {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(lease / 3).await;
            match self.runs.renew(key, holder, lease).await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => return format!("stopped: the lease of `{key}` was taken over by another airlock (this one did not renew it within {}s)", lease.as_secs()),
                Err(e) if renewed.elapsed() + lease / 3 >= lease => {
                    return format!("stopped: cannot renew the lease of `{key}` before it runs out ({e}); another airlock may take it over")
                }
                Err(e) => tracing::warn!(lease = key, "cannot renew the lease (trying again): {e}"),
            }
        }
    }

    async fn import_locked(&self, import: &Import, trigger: Trigger, force: bool) -> Vec<Outcome> {
        let source = open_store(&self.registries, &import.source, Access::Pull).await;
        let tags = if import.filter.needs_listing() {
            match source.list_tags().await {
                Ok(available) => import.filter.select(&available),
                Err(e) => {
                    let mut outcome = Outcome::new(&import.name, "", "error");
                    outcome.reason = Some(format!("cannot list the tags of {}: {e}", import.source.repository_key()));
                    return vec![outcome];
                }
            }
        } else {
            import.filter.select(&[])
        };
        let mut outcomes = Vec::new();
        for tag in tags {
            outcomes.push(self.import_tag(import, source.clone(), &tag, trigger, force).await);
        }
        outcomes
    }

    async fn import_tag(&self, import: &Import, source: Arc<dyn Store>, tag: &str, trigger: Trigger, force: bool) -> Outcome {
        self.holding_lease(import, tag, self.import_tag_leased(import, source, tag, trigger, force)).await
    }

    async fn import_tag_leased(&self, import: &Import, source: Arc<dyn Store>, tag: &str, trigger: Trigger, force: bool) -> Outcome {
        let mut outcome = Outcome::new(&import.name, tag, "error");
        let upstream = match source.resolve(tag).await {
            Ok(descriptor) => descriptor.digest().clone(),
            Err(e) => {
                outcome.upstream_unreachable = !e.is_not_found();
                let reason = format!("cannot resolve {}:{tag}: {e}", import.source.repository_key());
                // A mirror's look upstream that fails because upstream is down or refusing is a
                // run too: `runs` shows why clients get the last good digest. (A tag upstream
                // lacks is no run: clients choose the names, and would fill the table.)
                if trigger == Trigger::Pull && outcome.upstream_unreachable {
                    if let Ok(run_id) = self.runs.start(&import.name, tag, trigger, None).await {
                        let _ = self.runs.finish(&run_id, &RunEnd::not_promoted(Status::Error, &reason)).await;
                        outcome.run_id = Some(run_id);
                    }
                }
                outcome.reason = Some(reason);
                return outcome;
            }
        };
        outcome.upstream_digest = Some(upstream.to_string());
        if !force {
            match self.runs.last_import(&import.name, tag).await.map_err(|e| e.to_string()) {
                // A digest a gate refused stays refused; one whose run broke for another reason (a
                // registry error, a kill) is tried again.
                Ok(Some(last)) if last.upstream_digest.as_deref() == Some(upstream.as_ref()) => {
                    // Settled: promoted, or refused by a gate that ran (a `Failed` run of an
                    // older database may have failed for another reason: asked again).
                    let settled = match status_of(&last) {
                        Status::Succeeded => Some("up_to_date"),
                        Status::Failed if self.runs.rejected_by_gate(&last.run_id).await.map_err(|e| e.to_string()).unwrap_or(false) => Some("rejected_before"),
                        _ => None,
                    };
                    if let Some(action) = settled {
                        outcome.action = action;
                        outcome.run_id = Some(last.run_id.clone());
                        outcome.reason = (action == "rejected_before").then(|| format!("run {} rejected this digest: {}", last.run_id, last.reason.unwrap_or_default()));
                        return outcome;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    outcome.reason = Some(e);
                    return outcome;
                }
            }
        }
        let run_id = match self.runs.start(&import.name, tag, trigger, Some(upstream.as_ref())).await.map_err(|e| e.to_string()) {
            Ok(id) => id,
            Err(e) => {
                outcome.reason = Some(e);
                return outcome;
            }
        };
        outcome.run_id = Some(run_id.clone());
        let started = Instant::now();
        let result = self.gated_promotion(import, source, tag, &upstream, &run_id).await;
        let _ = match &result {
            Ok(promotion) => {
                outcome.action = "promoted";
                outcome.promoted_digest = Some(promotion.digest.to_string());
                let end = RunEnd {
                    status: Status::Succeeded,
                    promoted: Some(promotion.digest.as_ref()),
                    previous: promotion.previous.as_deref(),
                    unique_tag: Some(&promotion.unique_tag),
                    reason: None,
                };
                self.runs.finish(&run_id, &end).await
            }
            Err(stop) => {
                let (status, action, word) = match stop {
                    Stop::Refused(_) => (Status::Failed, "failed", "failed"),
                    Stop::Error(_) => (Status::Error, "error", "error"),
                };
                let reason = stop.reason();
                outcome.action = action;
                outcome.reason = Some(reason.to_owned());
                let _ = self.runs.append_log(&run_id, &format!("{word}: {reason}")).await;
                self.runs.finish(&run_id, &RunEnd::not_promoted(status, reason)).await
            }
        };
        let _ = self.runs.set_duration(&run_id, started.elapsed()).await;
        if let Ok(promotion) = &result {
            if promotion.previous.as_deref() != Some(promotion.digest.as_ref()) {
                self.notify(import, tag, &run_id, promotion.previous.as_deref(), &promotion.digest, trigger).await;
            } else {
                let _ = self.runs.append_log(&run_id, "the stable tag already pointed at this digest: dependents not notified").await;
            }
        }
        outcome
    }

    async fn log(&self, run_id: &str, text: &str) {
        tracing::info!(run = run_id, "{text}");
        let _ = self.runs.append_log(run_id, text).await;
    }

    /// Stages, gates and promotes. Only a gate's verdict refuses a digest ([`Stop::Refused`]);
    /// every other failure (`?` on a `String`) is a [`Stop::Error`].
    async fn gated_promotion(&self, import: &Import, source: Arc<dyn Store>, tag: &str, upstream: &Digest, run_id: &str) -> Result<Promotion, Stop> {
        let staging = open_store(&self.registries, &import.staging, Access::Push).await;
        let target = open_store(&self.registries, &import.target, Access::Push).await;
        // A digest reference (a mirror's pull by digest) names its unique tag by the digest and
        // writes no stable tag.
        let by_digest = airlock_oci::parse_digest(tag).ok();
        let tag_name = match &by_digest {
            Some(digest) => format!("{}-{}", digest.algorithm(), digest.digest().chars().take(12).collect::<String>()),
            None => tag.to_owned(),
        };
        let upstream_reference = match &by_digest {
            Some(digest) => import.source.with_digest(digest),
            None => import.source.with_tag(tag),
        };
        let variables = std::collections::BTreeMap::from([
            ("tag", tag_name.clone()),
            ("run_id", run_id.to_owned()),
            ("digest", upstream.digest().chars().take(12).collect::<String>()),
            ("date", airlock_oci::time::today()),
            ("import", import.name.clone()),
            ("reference", upstream_reference.to_string()),
            ("repository", import.source.repository_key()),
        ]);
        let unique_tag = gates::render(&import.unique_tag, &variables);
        airlock_oci::validate_tag(&unique_tag).map_err(|e| format!("the unique tag `{unique_tag}` from `{}` is not a valid tag: {e}", import.unique_tag))?;
        if unique_tag == tag_name {
            return Err(Stop::Error(format!("the unique tag template `{}` gives the stable tag itself", import.unique_tag)));
        }

        // 1. Stage: the candidate goes to quarantine, by digest, under the unique tag.
        self.log(run_id, &format!("staging {}@{upstream} to {}:{unique_tag}", import.source.repository_key(), import.staging.repository_key())).await;
        let staged = self
            .copier
            .copy_with(&copy_options(import.platforms.clone()), source.as_ref(), upstream.as_ref(), staging.as_ref(), std::slice::from_ref(&unique_tag))
            .await
            .map_err(|e| format!("staging failed: {e}"))?;
        let candidate_digest = staged.digest.clone();
        self.log(
            run_id,
            &format!("staged {candidate_digest}: {} blobs copied ({} bytes), {} mounted, {} already there", staged.blobs_copied, staged.bytes_copied, staged.blobs_mounted, staged.blobs_skipped),
        ).await;
        let manifest = staging.get_manifest(candidate_digest.as_ref()).await.map_err(|e| format!("cannot read the staged candidate: {e}"))?;
        let facts = image_facts(staging.as_ref(), &manifest).await?;
        let platform = facts.iter().map(|f| f.platform.clone()).collect::<Vec<_>>().join(",");
        let _ = self.runs.set_platform(run_id, &platform).await.map_err(|e| e.to_string());

        // 2. Gates, in order, each when its `when` gates passed.
        let candidate_reference = import.staging.with_digest(&candidate_digest);
        let staging_registry = match &import.staging {
            Reference::Registry(r) => Some(r.registry.clone()),
            _ => None,
        };
        let staging_credentials = staging_registry.as_ref().and_then(|host| self.config.registries.iter().find(|r| &r.registry == host)).and_then(|r| r.credentials.clone());
        let staging_insecure = staging_registry.as_ref().is_some_and(|host| {
            self.config.registries.iter().any(|r| &r.registry == host && r.plain_http) || airlock_store::remote::is_loopback(host)
        });
        let candidate = Candidate {
            import: &import.name,
            run_id,
            tag,
            reference: candidate_reference,
            digest: &candidate_digest,
            upstream: source.clone(),
            upstream_digest: upstream,
            facts: &facts,
            staging_credentials,
            staging_insecure,
        };
        let mut records: Vec<GateRecord> = Vec::new();
        for (position, gate) in import.gates.iter().enumerate() {
            let needed: Vec<&str> = if gate.when.is_empty() { records.iter().map(|r| r.name.as_str()).collect() } else { gate.when.iter().map(String::as_str).collect() };
            let blocked = needed.iter().find(|name| records.iter().any(|r| &r.name == *name && r.result != "passed"));
            let record = match blocked {
                Some(name) => GateRecord {
                    name: gate.name.clone(),
                    kind: gate.kind.as_str().to_owned(),
                    result: "skipped".into(),
                    duration_ms: 0,
                    log: format!("skipped: gate `{name}` did not pass\n"),
                },
                None => {
                    self.log(run_id, &format!("gate `{}` ({}) running", gate.name, gate.kind.as_str())).await;
                    gates::run(gate, &candidate, &self.config.runtime).await
                }
            };
            self.log(run_id, &format!("gate `{}`: {} in {} ms", record.name, record.result, record.duration_ms)).await;
            let _ = self.runs.gate(run_id, position, &record).await.map_err(|e| e.to_string());
            records.push(record);
        }
        let last_words = |record: &GateRecord| {
            record.log.lines().rev().find(|l| !l.trim().is_empty() && !l.starts_with("exit status")).unwrap_or("").trim().to_owned()
        };
        // A gate that could not run says nothing about the candidate, even when another gate
        // refused it: the run is an error, and the next look runs every gate again.
        if let Some(broken) = records.iter().find(|r| r.result == Verdict::Error.as_str()) {
            return Err(Stop::Error(format!("gate `{}` could not run: {}", broken.name, last_words(broken))));
        }
        if let Some(failed) = records.iter().find(|r| r.result == Verdict::Failed.as_str()) {
            return Err(Stop::Refused(format!("gate `{}` failed: {}", failed.name, last_words(failed))));
        }

        // 3. Promote: content, report, unique tag, stable tag (last).
        let previous = match target.resolve(tag).await {
            Ok(descriptor) => Some(descriptor.digest().to_string()),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(Stop::Error(format!("cannot read {}:{tag}: {e}", import.target.repository_key()))),
        };
        // A unique tag is a rollback point: it is never moved to other content.
        match target.resolve(&unique_tag).await {
            Ok(existing) if existing.digest() != &candidate_digest => {
                return Err(Stop::Error(format!(
                    "{}:{unique_tag} already names {}: another run database promotes into this repository; give each its own `unique_tag` template",
                    import.target.repository_key(),
                    existing.digest()
                )))
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(Stop::Error(format!("cannot read {}:{unique_tag}: {e}", import.target.repository_key()))),
        }
        self.log(run_id, &format!("promoting {candidate_digest} to {}", import.target.repository_key())).await;
        self.copier
            .copy_with(&copy_options(Vec::new()), staging.as_ref(), candidate_digest.as_ref(), target.as_ref(), &[])
            .await
            .map_err(|e| format!("promotion failed while copying: {e}"))?;
        let report = serde_json::json!({
            "import": import.name, "run_id": run_id, "tag": tag, "unique_tag": unique_tag,
            "upstream": upstream_reference.to_string(), "upstream_digest": upstream.to_string(),
            "candidate_digest": candidate_digest.to_string(), "platform": platform,
            "gates": records.iter().map(|r| serde_json::json!({"name": r.name, "kind": r.kind, "result": r.result, "duration_ms": r.duration_ms})).collect::<Vec<_>>(),
        });
        attach_report(target.as_ref(), &manifest, &report, run_id).await.map_err(|e| format!("cannot attach the gate report: {e}"))?;
        let writes: Vec<String> = if by_digest.is_some() { vec![unique_tag.clone()] } else { vec![unique_tag.clone(), tag.to_owned()] };
        for write in &writes {
            target.put_manifest(&manifest, Some(write)).await.map_err(|e| format!("cannot tag {}:{write}: {e}", import.target.repository_key()))?;
        }
        self.log(run_id, &format!("promoted {candidate_digest} as {}", writes.iter().map(|w| format!("{}:{w}", import.target.repository_key())).collect::<Vec<_>>().join(" and "))).await;
        Ok(Promotion { digest: candidate_digest, previous, unique_tag })
    }

    /// Tells the dependents of `import` that its stable tag moved.
    async fn notify(&self, import: &Import, tag: &str, run_id: &str, old: Option<&str>, new: &Digest, trigger: Trigger) {
        let target = import.target.with_tag(tag).to_string();
        let document = serde_json::json!({
            "import": import.name, "tag": tag, "target": target, "old_digest": old, "new_digest": new.to_string(), "run_id": run_id,
            "trigger": trigger.as_str(),
        });
        let env = vec![
            ("AIRLOCK_IMPORT".to_owned(), import.name.clone()),
            ("AIRLOCK_TAG".to_owned(), tag.to_owned()),
            ("AIRLOCK_TARGET".to_owned(), target.clone()),
            ("AIRLOCK_OLD_DIGEST".to_owned(), old.unwrap_or("").to_owned()),
            ("AIRLOCK_NEW_DIGEST".to_owned(), new.to_string()),
            ("AIRLOCK_RUN_ID".to_owned(), run_id.to_owned()),
        ];
        for dependent in &import.dependents {
            let (ok, log) = match &dependent.action {
                DependentAction::Command(args) => gates::run_program(args, &env, Duration::from_secs(3600)).await,
                DependentAction::Webhook(url) => post_webhook(url, &document).await,
            };
            let verdict = if ok { "notified" } else { "NOT notified" };
            self.log(run_id, &format!("dependent `{}` {verdict}\n{log}", dependent.name)).await;
        }
    }

    /// Points the stable tag of `import`/`tag` back at an earlier promoted digest: `to` is a
    /// run id or a digest; by default the promotion before the current one.
    pub async fn rollback(&self, import: &Import, tag: &str, to: Option<&str>) -> Result<Outcome, String> {
        let promotions = self.runs.promotions(&import.name, tag).await.map_err(|e| e.to_string())?;
        let target = open_store(&self.registries, &import.target, Access::Push).await;
        let current = match target.resolve(tag).await {
            Ok(descriptor) => Some(descriptor.digest().to_string()),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(format!("cannot read {}:{tag}: {e}", import.target.repository_key())),
        };
        let wanted: String = match to {
            Some(to) if to.contains(':') => to.to_owned(),
            Some(run) => {
                let run = self.runs.get(run).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("no run `{run}` in the run database"))?;
                if run.import != import.name || run.tag != tag {
                    return Err(format!("run `{}` is of {}:{}, not {}:{tag}", run.run_id, run.import, run.tag, import.name));
                }
                run.promoted_digest.ok_or_else(|| format!("run `{}` promoted nothing ({})", run.run_id, run.status))?
            }
            None => promotions
                .iter()
                .filter_map(|r| r.promoted_digest.clone())
                .find(|d| Some(d) != current.as_ref())
                .ok_or_else(|| format!("{}:{tag} has no earlier promotion to roll back to", import.name))?,
        };
        if !promotions.iter().any(|r| r.promoted_digest.as_deref() == Some(wanted.as_str())) {
            return Err(format!("{wanted} was never promoted for {}:{tag}; rollback only goes to validated digests", import.name));
        }
        let digest = airlock_oci::parse_digest(&wanted).map_err(|e| e.to_string())?;
        let manifest = target.get_manifest(&wanted).await.map_err(|e| format!("{} no longer holds {wanted}: {e}", import.target.repository_key()))?;
        let run_id = self.runs.start(&import.name, tag, Trigger::Rollback, None).await.map_err(|e| e.to_string())?;
        let started = Instant::now();
        let _ = self.runs.append_log(&run_id, &format!("rolling {}:{tag} back from {} to {wanted}", import.target.repository_key(), current.as_deref().unwrap_or("nothing"))).await;
        let result = target.put_manifest(&manifest, Some(tag)).await;
        let mut outcome = Outcome::new(&import.name, tag, "rolled_back");
        outcome.run_id = Some(run_id.clone());
        match result {
            Ok(_) => {
                self.runs
                    .finish(&run_id, &RunEnd { status: Status::Succeeded, promoted: Some(&wanted), previous: current.as_deref(), unique_tag: None, reason: None })
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = self.runs.set_duration(&run_id, started.elapsed()).await;
                outcome.promoted_digest = Some(wanted.clone());
                if current.as_deref() != Some(wanted.as_str()) {
                    self.notify(import, tag, &run_id, current.as_deref(), &digest, Trigger::Rollback).await;
                }
                Ok(outcome)
            }
            Err(e) => {
                let reason = format!("cannot tag {}:{tag}: {e}", import.target.repository_key());
                self.runs.finish(&run_id, &RunEnd::not_promoted(Status::Error, &reason)).await.map_err(|e| e.to_string())?;
                Err(reason)
            }
        }
    }
}

/// Why a run stopped short of a promotion.
enum Stop {
    /// A gate ran and refused the candidate: the upstream digest is not run again.
    Refused(String),
    /// Anything else: the digest is tried again at the next look.
    Error(String),
}

impl Stop {
    fn reason(&self) -> &str {
        match self {
            Stop::Refused(reason) | Stop::Error(reason) => reason,
        }
    }
}

impl From<String> for Stop {
    fn from(reason: String) -> Stop {
        Stop::Error(reason)
    }
}

struct Promotion {
    digest: Digest,
    previous: Option<String>,
    unique_tag: String,
}

/// POSTs the promotion to a webhook, three attempts.
async fn post_webhook(url: &str, document: &serde_json::Value) -> (bool, String) {
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(airlock_store::remote::tls::client_config(Vec::new()))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a client without custom settings");
    let mut last = String::new();
    // Webhook URLs carry their tokens in the path: the run log shows the host only.
    let shown = airlock_store::remote::redact_url(url);
    for attempt in 1..=3u32 {
        match client.post(url).json(document).send().await {
            Ok(response) if response.status().is_success() => return (true, format!("POST {shown}: {}\n", response.status())),
            Ok(response) => last = format!("POST {shown}: {}", response.status()),
            Err(e) => last = format!("POST {shown}: {}", e.without_url()),
        }
        tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
    }
    (false, format!("{last} (after 3 attempts)\n"))
}

/// Attaches the gate report to `subject` as an OCI artifact whose `subject` is it.
async fn attach_report(store: &dyn Store, subject: &Manifest, report: &serde_json::Value, run_id: &str) -> airlock_store::Result<()> {
    let empty = bytes::Bytes::from_static(b"{}");
    let body = bytes::Bytes::from(serde_json::to_vec_pretty(report).expect("JSON values serialize"));
    let empty_descriptor = blob_descriptor("application/vnd.oci.empty.v1+json", &empty);
    let report_descriptor = blob_descriptor(REPORT_ARTIFACT_TYPE, &body);
    for (descriptor, bytes) in [(&empty_descriptor, empty), (&report_descriptor, body)] {
        if !store.blob_exists(descriptor.digest()).await? {
            let stream: airlock_store::BlobStream = Box::pin(futures::stream::once(async move { Ok(bytes) }));
            store.put_blob(descriptor, stream).await?;
        }
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": REPORT_ARTIFACT_TYPE,
        "config": empty_descriptor,
        "layers": [report_descriptor],
        "subject": subject.descriptor(),
        "annotations": {"org.opencontainers.image.created": airlock_oci::time::rfc3339(airlock_oci::time::now()), "dev.airlock.run-id": run_id},
    });
    let manifest = Manifest::parse(serde_json::to_vec(&manifest).expect("JSON values serialize"), Some("application/vnd.oci.image.manifest.v1+json"))
        .expect("the report manifest is a valid image manifest");
    store.put_manifest(&manifest, None).await?;
    Ok(())
}

fn blob_descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor::new(media_type.into(), bytes.len() as u64, airlock_oci::digest_of(bytes, None))
}

/// Each platform's configuration and size: what the policy gate checks and the run table shows.
async fn image_facts(store: &dyn Store, manifest: &Manifest) -> Result<Vec<ImageFacts>, String> {
    let mut facts = Vec::new();
    let mut pending = vec![manifest.clone()];
    while let Some(manifest) = pending.pop() {
        match manifest.kind() {
            ManifestKind::Index { manifests, .. } => {
                for child in manifests {
                    // Build attestations ride in indexes as `unknown/unknown`: not a platform.
                    if child.platform().as_ref().is_some_and(|p| p.os().to_string() == "unknown") {
                        continue;
                    }
                    let child = store.get_manifest(child.digest().as_ref()).await.map_err(|e| format!("cannot read {}: {e}", child.digest()))?;
                    pending.push(child);
                }
            }
            ManifestKind::Image { config, layers, .. } => {
                let bytes = airlock_store::verify::read_small(store, config, 8 * 1024 * 1024).await.map_err(|e| format!("cannot read config {}: {e}", config.digest()))?;
                let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                let mut platform = format!("{}/{}", value["os"].as_str().unwrap_or("unknown"), value["architecture"].as_str().unwrap_or("unknown"));
                if let Some(variant) = value["variant"].as_str() {
                    platform.push('/');
                    platform.push_str(variant);
                }
                let size = config.size() + layers.iter().map(|l| l.size()).sum::<u64>();
                facts.push(ImageFacts { platform, config: value, size });
            }
        }
    }
    facts.sort_by(|a, b| a.platform.cmp(&b.platform));
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::lease_key;

    #[test]
    fn one_lease_per_target_repository_and_tag_whatever_the_host() {
        let key = |target: &str, reference: &str| lease_key(&target.parse().unwrap(), reference);
        // airlock watch through the serve's public address and the mirror through its private one.
        assert_eq!(key("registry.example.com/docker.io/library/node", "15"), key("127.0.0.1:40000/docker.io/library/node", "15"));
        assert_eq!(key("root:///srv/airlock//docker.io/library/node", "15"), "docker.io/library/node:15");
        assert_ne!(key("r.example.com/a", "1"), key("r.example.com/a", "2"));
        let digest = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b";
        assert_eq!(key("r.example.com/a", digest), format!("a@{digest}"));
    }
}
