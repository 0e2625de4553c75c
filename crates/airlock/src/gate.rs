//! `airlock import`, `runs`, `rollback` and `watch`: the gated-import commands over airlock.yaml.

use std::process::ExitCode;
use std::sync::Arc;

use airlock_copy::{CopyOptions, Copier, NoProgress};
use airlock_gate::runs::{GateRecord, Run, Runs, StateLocation};
use airlock_gate::{Outcome, Pipeline, Trigger};
use airlock_store::remote::Registries;

use crate::args::{Global, ImportArgs, Output, RollbackArgs, RunsArgs, RunsCommand, WatchArgs};
use crate::commands::{registry_options, usage, Failure, Result};
use crate::output;

fn config_failure(error: impl std::fmt::Display) -> Failure {
    Failure { error: anyhow::anyhow!("{error}"), hint: Some("see the airlock.yaml section of README.md".into()), exit_code: 2 }
}

/// The pipeline of `path`: its imports, registries (file settings over the global flags) and
/// run database.
pub(crate) async fn pipeline(global: &Global, config: airlock_gate::Config, bars: bool) -> Result<Pipeline> {
    let mut options = registry_options(global);
    for registry in &config.registries {
        registry.apply_to(&mut options);
    }
    let registries = Registries::new(options)?;
    let runs = open_runs(&config.state).await?;
    let mut copy_options = CopyOptions::new();
    copy_options.concurrency = std::num::NonZeroUsize::new(global.jobs.max(1)).expect("at least 1");
    // Bars for staging and promotion copies, only on a terminal and never under `watch` (whose
    // output is a log).
    let progress: Arc<dyn airlock_copy::Progress> = if bars { crate::progress::Bars::for_terminal(!global.quiet && global.verbose == 0 && global.output == Output::Text) } else { Arc::new(NoProgress) };
    Ok(Pipeline { config, registries, runs, copier: Copier::new(copy_options, progress) })
}

async fn load(global: &Global, file: &std::path::Path) -> Result<Pipeline> {
    let config = airlock_gate::config::load(file).map_err(config_failure)?;
    pipeline(global, config, true).await
}

/// The run database of `state`; one that cannot be opened or reached is exit code 1 with a
/// hint to check `state:`.
pub(crate) async fn open_runs(state: &StateLocation) -> Result<Runs> {
    airlock_gate::runs::open(state).await.map_err(|e| Failure {
        error: anyhow::anyhow!("{e}"),
        hint: Some(match state {
            StateLocation::Folder(_) => "check that the `state` folder of airlock.yaml is writable".into(),
            StateLocation::Postgres { .. } => "check the `state` URL of airlock.yaml, that the database answers, and its password (`state_password_env`, else PGPASSWORD)".into(),
        }),
        exit_code: 1,
    })
}

pub async fn import(global: &Global, args: &ImportArgs) -> Result<ExitCode> {
    let pipeline = load(global, &args.gate_file.file).await?;
    let imports: Vec<&airlock_gate::Import> = if args.names.is_empty() {
        pipeline.config.imports.iter().collect()
    } else {
        args.names
            .iter()
            .map(|name| {
                pipeline.config.import(name).ok_or_else(|| {
                    let known: Vec<&str> = pipeline.config.imports.iter().map(|i| i.name.as_str()).collect();
                    usage(format!("no import `{name}` in `{}` (it has: {})", args.gate_file.file.display(), known.join(", ")))
                })
            })
            .collect::<Result<_>>()?
    };
    let mut outcomes = Vec::new();
    for import in imports {
        outcomes.extend(pipeline.import(import, Trigger::Manual, args.force).await);
    }
    render_outcomes(global, &outcomes);
    Ok(if outcomes.iter().any(Outcome::failed) { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

pub(crate) fn render_outcomes(global: &Global, outcomes: &[Outcome]) {
    if global.output == Output::Json {
        output::json(&serde_json::json!({ "results": outcomes }));
        return;
    }
    if global.quiet {
        for failed in outcomes.iter().filter(|o| o.failed()) {
            output::note(&format!("failed: {}:{}: {}", failed.import, failed.tag, failed.reason.as_deref().unwrap_or("")));
        }
        return;
    }
    let rows: Vec<Vec<String>> = outcomes
        .iter()
        .map(|o| {
            vec![
                o.import.clone(),
                o.tag.clone(),
                o.action.replace('_', " "),
                o.run_id.clone().unwrap_or_else(|| "-".into()),
                output::short_digest(o.promoted_digest.as_deref().or(o.upstream_digest.as_deref())),
            ]
        })
        .collect();
    let mut text = output::table(&["IMPORT", "TAG", "ACTION", "RUN ID", "DIGEST"], &rows);
    for o in outcomes.iter().filter(|o| o.reason.is_some()) {
        text.push_str(&format!("{}{}: {}\n", o.import, if o.tag.is_empty() { String::new() } else { format!(":{}", o.tag) }, o.reason.as_deref().unwrap_or("")));
    }
    output::data(&text);
}

fn timestamp(secs: u64) -> String {
    airlock_gate::time::rfc3339(secs)
}

/// `00:00:22`.
fn duration(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => {
            let s = ms / 1000;
            format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
        }
        None => String::new(),
    }
}

/// The run table of seed 004's `az acr task list-runs`.
pub(crate) fn runs_table(runs: &[Run]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| vec![r.run_id.clone(), r.import.clone(), r.platform.clone(), r.status.clone(), r.trigger.clone(), timestamp(r.started), duration(r.duration_ms)])
        .collect();
    output::table(&["RUN ID", "TASK", "PLATFORM", "STATUS", "TRIGGER", "STARTED", "DURATION"], &rows)
}

/// `runs list` and `runs logs` read only the file's `state`: reading history needs no secrets.
pub async fn runs(global: &Global, args: &RunsArgs) -> Result<()> {
    match &args.command {
        RunsCommand::List(list) => {
            let state = airlock_gate::config::load_state(&list.gate_file.file).map_err(config_failure)?;
            let runs = open_runs(&state).await?.list(list.import.as_deref(), list.limit).await?;
            match global.output {
                Output::Json => output::json(&serde_json::json!({ "runs": runs })),
                Output::Text => output::data(&runs_table(&runs)),
            }
        }
        RunsCommand::Logs(logs) => {
            let state = airlock_gate::config::load_state(&logs.gate_file.file).map_err(config_failure)?;
            let db = open_runs(&state).await?;
            // Without an id, the latest run (as `az acr task logs` shows it).
            let run = match &logs.run_id {
                Some(id) => db.get(id).await?.ok_or_else(|| usage(format!("no run `{id}` in `{state}`")))?,
                None => db.list(None, 1).await?.into_iter().next().ok_or_else(|| usage(format!("no runs yet in `{state}`")))?,
            };
            let (log, gates) = db.logs(&run.run_id).await?;
            match global.output {
                Output::Json => output::json(&serde_json::json!({ "run": run, "log": log, "gates": gates })),
                Output::Text => output::data(&render_logs(&run, &log, &gates)),
            }
        }
    }
    Ok(())
}

pub(crate) fn render_logs(run: &Run, log: &str, gates: &[GateRecord]) -> String {
    let mut text = format!("run {}: {} {}:{} ({}, {})\n", run.run_id, run.status, run.import, run.tag, run.trigger, timestamp(run.started));
    for (label, value) in [("upstream", &run.upstream_digest), ("promoted", &run.promoted_digest), ("previous", &run.previous_digest), ("unique tag", &run.unique_tag), ("reason", &run.reason)] {
        if let Some(value) = value {
            text.push_str(&format!("{label}: {value}\n"));
        }
    }
    text.push('\n');
    text.push_str(log);
    for gate in gates {
        text.push_str(&format!("\n--- gate `{}` ({}): {} in {} ms\n{}", gate.name, gate.kind, gate.result, gate.duration_ms, gate.log));
        if !gate.log.ends_with('\n') {
            text.push('\n');
        }
    }
    text
}

pub async fn rollback(global: &Global, args: &RollbackArgs) -> Result<()> {
    let pipeline = load(global, &args.gate_file.file).await?;
    let import = pipeline.config.import(&args.name).ok_or_else(|| usage(format!("no import `{}` in `{}`", args.name, args.gate_file.file.display())))?;
    let tag = match (&args.tag, import.filter.tags.as_slice()) {
        (Some(tag), _) => tag.clone(),
        (None, [only]) => only.clone(),
        (None, _) => return Err(usage(format!("import `{}` has several tags: say which with `--tag`", import.name))),
    };
    let outcome = pipeline.rollback(import, &tag, args.to.as_deref()).await.map_err(|e| Failure { error: anyhow::anyhow!(e), hint: None, exit_code: 1 })?;
    render_outcomes(global, &[outcome]);
    Ok(())
}

pub async fn watch(global: &Global, args: &WatchArgs) -> Result<()> {
    let mut config = airlock_gate::config::load(&args.gate_file.file).map_err(config_failure)?;
    if let Some(interval) = args.interval {
        config.interval = interval;
    }
    let listen = args.listen.clone().or(config.listen.clone());
    let pipeline = Arc::new(pipeline(global, config, false).await?);
    let listener = match &listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| anyhow::anyhow!("cannot listen on `{address}`: {e}"))?;
            let bound = listener.local_addr().map_err(|e| anyhow::anyhow!("{e}"))?;
            output::data(&format!("accepting registry notifications on http://{bound}/events; the web page is http://{bound}/ui/"));
            Some(listener)
        }
        None => None,
    };
    output::data(&format!("watching {} imports every {}s", pipeline.config.imports.len(), pipeline.config.interval.as_secs()));
    let json = global.output == Output::Json;
    let report = move |outcome: &Outcome| {
        if outcome.action == "up_to_date" || outcome.action == "rejected_before" {
            tracing::debug!(import = %outcome.import, tag = %outcome.tag, "{}", outcome.action);
            return;
        }
        if json {
            output::json(outcome);
        } else {
            output::data(&format!(
                "{} {}:{} {} {}{}",
                timestamp(airlock_gate::time::now()),
                outcome.import,
                outcome.tag,
                outcome.action.replace('_', " "),
                outcome.run_id.as_deref().unwrap_or("-"),
                outcome.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            ));
        }
    };
    // The web page beside the notifications, read-only: a watch has no users to allow actions.
    let page = airlock_ui::router(airlock_ui::Ui::new(None, Some(pipeline.clone()), true));
    airlock_gate::watch::watch(pipeline, listener, Some(page), report, crate::commands::shutdown_signal()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_as_the_run_table_shows_them() {
        assert_eq!(super::timestamp(1_570_596_965), "2019-10-09T04:56:05Z");
        assert_eq!(super::duration(Some(22_400)), "00:00:22");
    }
}
