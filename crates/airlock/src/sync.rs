//! `airlock sync`: one repository from the command line, or many from a sync.yaml.

use std::process::ExitCode;
use std::sync::Arc;

use airlock_copy::{CopyOptions, Copier};
use airlock_oci::{PlatformSpec, Reference};
use airlock_store::remote::{Access, Registries};
use airlock_store::Store;
use airlock_sync::config;
use airlock_sync::filter::{full_match, version_requirement};
use airlock_sync::{Action, SyncJob, SyncOptions, TagFilter, TagResult};
use serde::Serialize;

use crate::args::{Global, Output, SyncArgs};
use crate::commands::{open, parse_creds, parse_reference, registry_options, usage, Failure, Result};
use crate::output;

pub async fn sync(global: &Global, args: &SyncArgs) -> Result<ExitCode> {
    let mut options = registry_options(global);
    let jobs = match &args.file {
        Some(path) => {
            let (jobs, registries) = config::load(path).map_err(|e| Failure { error: e.into(), hint: None, exit_code: 2 })?;
            for registry in &registries {
                registry.apply_to(&mut options);
            }
            jobs
        }
        None => vec![job_from_flags(args)?],
    };
    if args.file.is_none() {
        let job = &jobs[0];
        for (reference, creds) in [(&job.source, &args.creds.src_creds), (&job.target, &args.creds.dest_creds)] {
            if let (Reference::Registry(registry), Some(credential)) = (reference, parse_creds(creds.as_deref())?) {
                options.explicit_credentials.insert(registry.registry.clone(), credential);
            }
        }
    }
    // Each side's `--*-tls-verify=false` applies to every job's registry on that side.
    for job in &jobs {
        for (reference, verify) in [(&job.source, args.creds.src_tls_verify), (&job.target, args.creds.dest_tls_verify)] {
            if let (Reference::Registry(registry), false) = (reference, verify) {
                options.tls_unverified.push(registry.registry.clone());
            }
        }
    }
    let registries = Registries::new(options)?;
    let open_store = |reference: &Reference, write: bool| {
        let access = if write { Access::Push } else { Access::Pull };
        let reference = reference.clone();
        let registries = &registries;
        Box::pin(async move { open(registries, &reference, access).await }) as std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn Store>> + Send + '_>>
    };

    let mut copy_options = CopyOptions::new();
    copy_options.concurrency = std::num::NonZeroUsize::new(global.jobs.max(1)).expect("at least 1");
    let show_bars = !global.quiet && global.verbose == 0 && global.output == Output::Text;
    let (copy_progress, sync_progress) = crate::progress::Bars::for_sync(show_bars);
    let copier = Copier::new(copy_options, copy_progress);
    // Tags mostly wait on small requests; blob transfers stay bounded by `--jobs`.
    let sync_options = SyncOptions { dry_run: args.dry_run, parallel_tags: (global.jobs * 2).max(1) };
    let results = airlock_sync::run(&jobs, &open_store, &copier, &sync_options, sync_progress.as_ref()).await;
    drop(sync_progress);
    drop(copier);
    render(global, &results);
    let failed = results.iter().any(|r| r.action == Action::Failed);
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn job_from_flags(args: &SyncArgs) -> Result<SyncJob> {
    let source = parse_reference(args.source.as_deref().expect("clap requires it without -f"))?;
    let target = parse_reference(args.destination.as_deref().expect("clap requires it with a source"))?;
    let bad = |e: airlock_sync::filter::FilterError| usage(e.to_string());
    let filter = TagFilter {
        tags: args.tags.clone(),
        regex: args.tag_regex.as_deref().map(full_match).transpose().map_err(bad)?,
        exclude: args.exclude.iter().map(|p| full_match(p)).collect::<std::result::Result<_, _>>().map_err(bad)?,
        semver: args.semver.as_deref().map(version_requirement).transpose().map_err(bad)?,
        latest: match args.latest {
            Some(0) => return Err(usage("`--latest` must be at least 1".into())),
            latest => latest,
        },
    };
    let platforms = args.platform.iter().map(|p| p.parse::<PlatformSpec>()).collect::<std::result::Result<_, _>>().map_err(|e| usage(e.to_string()))?;
    Ok(SyncJob { source, target, filter, platforms, referrers: !args.no_referrers })
}

#[derive(Serialize)]
struct JsonResult<'a> {
    source: &'a str,
    target: &'a str,
    tag: &'a str,
    digest: Option<String>,
    source_digest: Option<String>,
    action: &'static str,
    bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

#[derive(Serialize, Default)]
struct Summary {
    copied: usize,
    up_to_date: usize,
    would_copy: usize,
    failed: usize,
    skipped: usize,
    bytes: u64,
}

fn summarize(results: &[TagResult]) -> Summary {
    let mut summary = Summary::default();
    for result in results {
        summary.bytes += result.bytes;
        match result.action {
            Action::Copied => summary.copied += 1,
            Action::UpToDate => summary.up_to_date += 1,
            Action::WouldCopy => summary.would_copy += 1,
            Action::Failed => summary.failed += 1,
            Action::Skipped => summary.skipped += 1,
        }
    }
    summary
}

fn render(global: &Global, results: &[TagResult]) {
    let summary = summarize(results);
    if global.output == Output::Json {
        let rows: Vec<JsonResult> = results
            .iter()
            .map(|r| JsonResult {
                source: &r.source,
                target: &r.target,
                tag: &r.tag,
                digest: r.digest.as_ref().map(ToString::to_string),
                source_digest: r.source_digest.as_ref().map(ToString::to_string),
                action: r.action.as_id(),
                bytes: r.bytes,
                error: r.error.as_deref(),
            })
            .collect();
        output::json(&serde_json::json!({ "results": rows, "summary": summary }));
        return;
    }
    if global.quiet {
        for failure in results.iter().filter(|r| matches!(r.action, Action::Failed | Action::Skipped)) {
            output::note(&format!("{}: {}:{}: {}", failure.action.as_str(), failure.source, failure.tag, failure.error.as_deref().unwrap_or("")));
        }
        return;
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            let digest = r.digest.as_ref().map(ToString::to_string);
            vec![r.source.clone(), r.tag.clone(), r.action.as_str().to_owned(), output::short_digest(digest.as_deref()), output::bytes(r.bytes)]
        })
        .collect();
    let mut text = output::table(&["SOURCE", "TAG", "ACTION", "DIGEST", "MOVED"], &rows);
    text.push_str(&format!(
        "\n{} copied, {} up to date, {} would copy, {} failed{}; {} moved\n",
        summary.copied,
        summary.up_to_date,
        summary.would_copy,
        summary.failed,
        if summary.skipped > 0 { format!(", {} invalid names skipped", summary.skipped) } else { String::new() },
        output::bytes(summary.bytes)
    ));
    for failure in results.iter().filter(|r| matches!(r.action, Action::Failed | Action::Skipped)) {
        let tag = if failure.tag.is_empty() { String::new() } else { format!(":{}", failure.tag) };
        text.push_str(&format!("{}: {}{tag}: {}\n", failure.action.as_str(), failure.source, failure.error.as_deref().unwrap_or("")));
    }
    output::data(&text);
}
