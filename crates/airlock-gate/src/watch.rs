//! `airlock watch`: runs imports when upstream changes, on timers, and when a registry says so.
//!
//! Polling costs one `HEAD` per watched tag per interval (cheap on rate-limited registries);
//! an import's `timer` runs it even when nothing changed (tests and scanners change too); and
//! `POST /events` takes notifications in distribution's format (from `airlock serve` or
//! distribution's `notifications`) and runs the imports whose source was pushed at once.
//! One import never runs twice at once, even across processes: the run database holds a lock.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Import;
use crate::pipeline::{Outcome, Pipeline};
use crate::runs::Trigger;

/// Why the watcher runs an import now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    Poll,
    Timer,
}

/// `GET /healthz`: 200 while the run database answers, 503 naming it when it does not (a
/// watch node that cannot reach it can neither take leases nor record runs).
async fn healthz(runs: crate::runs::Runs) -> (axum::http::StatusCode, String) {
    match runs.ping().await {
        Ok(()) => (axum::http::StatusCode::OK, "ok\n".into()),
        Err(e) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

/// Watches until `shutdown` resolves; each finished tag is handed to `report`. With a
/// `listener`, registry notifications (and `page`, a web page's routes) are served on it.
pub async fn watch(
    pipeline: Arc<Pipeline>,
    listener: Option<tokio::net::TcpListener>,
    page: Option<axum::Router>,
    report: impl Fn(&Outcome) + Send + Sync,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let (notified_tx, mut notified) = mpsc::channel::<String>(64);
    let server = listener.map(|listener| {
        let imports: Arc<Vec<Import>> = Arc::new(pipeline.config.imports.clone());
        let runs = pipeline.runs.clone();
        let health = axum::Router::new().route("/healthz", axum::routing::get(move || healthz(runs.clone())));
        let mut app = axum::Router::new().route("/events", axum::routing::post(receive)).with_state((imports, notified_tx.clone())).merge(health);
        // The web page, when the caller serves one beside the notifications.
        if let Some(page) = page {
            app = app.merge(page);
        }
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("the notification listener stopped: {e}");
            }
        })
    });
    let start = Instant::now();
    let mut next_poll: Vec<Instant> = pipeline.config.imports.iter().map(|_| start).collect();
    let mut next_timer: Vec<Option<Instant>> = pipeline.config.imports.iter().map(|i| i.timer.map(|t| start + t)).collect();
    // The gate repositories' commits as last seen: the first look is the baseline.
    let mut gate_commits: Vec<Option<String>> = pipeline.config.imports.iter().map(|_| None).collect();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let now = Instant::now();
        let mut due: Vec<(usize, Due)> = Vec::new();
        for (idx, import) in pipeline.config.imports.iter().enumerate() {
            if next_timer[idx].is_some_and(|t| t <= now) {
                due.push((idx, Due::Timer));
                next_timer[idx] = import.timer.map(|t| now + t);
                next_poll[idx] = now + import.interval.unwrap_or(pipeline.config.interval);
            } else if next_poll[idx] <= now {
                due.push((idx, Due::Poll));
                next_poll[idx] = now + import.interval.unwrap_or(pipeline.config.interval);
            }
        }
        // Imports looked at now whose gates live in git: their repository is looked at too (a
        // `git rev-parse` or `git ls-remote` per interval).
        let polled: Vec<usize> = due.iter().map(|(idx, _)| *idx).filter(|idx| pipeline.config.imports[*idx].gate_repo.is_some()).collect();
        // Due imports run side by side: a long test gate of one does not delay the others' looks.
        let runs = due.into_iter().map(|(idx, why)| {
            let import = &pipeline.config.imports[idx];
            let pipeline = &pipeline;
            async move {
                match why {
                    Due::Poll => pipeline.import(import, Trigger::ImageUpdate, false).await,
                    Due::Timer => pipeline.import(import, Trigger::Timer, true).await,
                }
            }
        });
        for outcomes in futures::future::join_all(runs).await {
            outcomes.iter().for_each(&report);
        }
        // A new commit of an import's gate files: the gates run again (trigger `Commit`) on
        // what upstream offers; a refusal leaves the stable tag where it is.
        for idx in polled {
            let import = &pipeline.config.imports[idx];
            let Some(repo) = &import.gate_repo else { continue };
            match crate::gate_repo::head(repo).await {
                Ok(commit) => {
                    let changed = gate_commits[idx].as_ref().is_some_and(|seen| seen != &commit);
                    gate_commits[idx] = Some(commit.clone());
                    if changed {
                        tracing::info!(import = %import.name, %commit, "the gates' repository has a new commit");
                        pipeline.import(import, Trigger::Commit, true).await.iter().for_each(&report);
                    }
                }
                Err(reason) => tracing::warn!(import = %import.name, "cannot read the gates' repository: {reason}"),
            }
        }
        // When each import is looked at next, for the web page of any process sharing the store.
        let clock = airlock_oci::time::now();
        for (idx, import) in pipeline.config.imports.iter().enumerate() {
            let next = next_timer[idx].map_or(next_poll[idx], |timer| timer.min(next_poll[idx]));
            let _ = pipeline.runs.set_next_look(&import.name, clock + next.saturating_duration_since(Instant::now()).as_secs()).await;
        }
        let wake = next_poll.iter().chain(next_timer.iter().flatten()).min().copied().unwrap_or(now + Duration::from_secs(3600));
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep_until(wake) => {}
            Some(name) = notified.recv() => {
                // Several pushes in a burst (layers, then tags) make one run.
                let mut names = HashSet::from([name]);
                while let Ok(more) = notified.try_recv() {
                    names.insert(more);
                }
                for import in pipeline.config.imports.iter().filter(|i| names.contains(&i.name)) {
                    pipeline.import(import, Trigger::ImageUpdate, false).await.iter().for_each(&report);
                }
            }
        }
    }
    if let Some(server) = server {
        server.abort();
    }
}

/// `POST /events`: a distribution notification envelope. Pushes of a tag that an import
/// watches (or of a manifest in its source repository when the event names no tag) queue it.
async fn receive(State((imports, queue)): State<(Arc<Vec<Import>>, mpsc::Sender<String>)>, body: axum::body::Bytes) -> StatusCode {
    let Ok(envelope) = serde_json::from_slice::<serde_json::Value>(&body) else { return StatusCode::BAD_REQUEST };
    let events = envelope["events"].as_array().cloned().unwrap_or_default();
    for event in events {
        if event["action"].as_str() != Some("push") {
            continue;
        }
        let repository = event["target"]["repository"].as_str().unwrap_or("");
        let tag = event["target"]["tag"].as_str();
        let media_type = event["target"]["mediaType"].as_str().unwrap_or("");
        // Blob pushes say nothing about tags; manifests do.
        if tag.is_none() && !media_type.contains("manifest") && !media_type.contains("index") {
            continue;
        }
        for import in imports.iter() {
            let airlock_oci::Reference::Registry(source) = &import.source else { continue };
            if source.repository != repository {
                continue;
            }
            if let Some(tag) = tag {
                if import.filter.select(&[tag.to_owned()]).iter().all(|t| t != tag) {
                    continue;
                }
            }
            tracing::info!(import = %import.name, repository, tag, "notified of an upstream push");
            let _ = queue.try_send(import.name.clone());
        }
    }
    StatusCode::OK
}
