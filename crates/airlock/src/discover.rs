//! `airlock discover` and `airlock onboard`.

use std::path::PathBuf;
use std::process::ExitCode;

use airlock_artifact::helm::{PulledChart, VersionWanted};
use airlock_copy::{CopyOptions, Copier};
use airlock_discover::onboard::{self, LockFile, LockedChart, Onboarded};
use airlock_discover::{DiscoverError, Image, Options};
use airlock_store::remote::{Access, Registries};

use crate::args::{DiscoverArgs, Global, OnboardArgs, Output};
use crate::commands::{parse_reference, registry_options, usage, Failure, Result};
use crate::output;

fn input_failure(error: DiscoverError) -> Failure {
    let exit_code = match error {
        DiscoverError::Input(_) => 2,
        _ => 1,
    };
    let hint = error.hint();
    Failure { error: anyhow::Error::new(error), hint, exit_code }
}

fn build_args(args: &[String]) -> Result<Vec<(String, String)>> {
    args.iter()
        .map(|a| a.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| usage(format!("`--build-arg {a}`: expected NAME=VALUE"))))
        .collect()
}

/// Charts named `oci://…`, fetched with airlock's own registry settings (credentials, TLS,
/// retries, digests checked) into a temporary folder, so that the user's `helm` only renders
/// local archives.
struct ChartFetcher {
    registries: Option<Registries>,
    dir: tempfile::TempDir,
    fetched: Vec<PulledChart>,
}

impl ChartFetcher {
    fn new() -> Result<ChartFetcher> {
        let dir = tempfile::tempdir().map_err(|e| anyhow::anyhow!("cannot create a temporary folder for charts: {e}"))?;
        Ok(ChartFetcher { registries: None, dir, fetched: Vec::new() })
    }

    fn registries(&mut self, global: &Global) -> Result<&Registries> {
        Ok(match self.registries {
            Some(ref registries) => registries,
            None => self.registries.insert(Registries::new(registry_options(global))?),
        })
    }

    /// The chart `reference` (`oci://…`) names, fetched; its `file` is the local archive.
    async fn fetch(&mut self, global: &Global, reference: &str, wanted: &VersionWanted) -> Result<&PulledChart> {
        let parsed = parse_reference(reference)?;
        if *wanted != VersionWanted::Newest && (parsed.tag().is_some() || parsed.digest().is_some()) {
            return Err(usage(format!("`{reference}` names its version; drop the tag or `--version`")));
        }
        let store = airlock_gate::open_store(self.registries(global)?, &parsed, Access::Pull).await;
        let dir = self.next_dir();
        let chart = airlock_artifact::helm::pull_chart(store.as_ref(), &parsed, wanted, &dir).await.map_err(crate::artifact::failure)?;
        Ok(self.keep(global, chart))
    }

    /// Chart `name` of the chart repository at `repo`, fetched and checked against its index.
    async fn fetch_from_repo(&mut self, global: &Global, repo: &str, name: &str, wanted: &VersionWanted) -> Result<&PulledChart> {
        let dir = self.next_dir();
        let chart = airlock_artifact::helm::pull_repo_chart(self.registries(global)?, repo, name, wanted, &dir).await.map_err(crate::artifact::failure)?;
        Ok(self.keep(global, chart))
    }

    /// One folder per chart: two registries may hold charts of the same name and version.
    fn next_dir(&self) -> PathBuf {
        self.dir.path().join(self.fetched.len().to_string())
    }

    fn keep(&mut self, global: &Global, chart: PulledChart) -> &PulledChart {
        if !global.quiet && global.output == Output::Text {
            output::note(&format!("chart {}: {} {}, {}", chart.reference, chart.name, chart.version, chart.digest));
        }
        self.fetched.push(chart);
        self.fetched.last().expect("just pushed")
    }
}

pub async fn discover(global: &Global, args: &DiscoverArgs) -> Result<()> {
    let options = Options { helm: args.helm.clone(), values: args.values.clone(), set: args.set.clone(), build_args: build_args(&args.build_arg)? };
    let wanted = VersionWanted::parse(args.version.as_deref()).map_err(crate::artifact::failure)?;
    let mut charts = ChartFetcher::new()?;
    let mut found = Vec::new();
    for input in &args.paths {
        let fetched = match (&args.repo, airlock_discover::oci_chart(input)) {
            (Some(repo), _) => {
                let name = input.to_str().ok_or_else(|| usage(format!("`{}`: not a chart name", input.display())))?;
                Some((charts.fetch_from_repo(global, repo, name, &wanted).await?, format!("{repo} {name}")))
            }
            (None, Some(reference)) => Some((charts.fetch(global, reference, &wanted).await?, reference.to_owned())),
            (None, None) => None,
        };
        match fetched {
            Some((chart, name)) => found.extend(airlock_discover::find_in_chart(&chart.file, &name, &options).map_err(input_failure)?),
            None => found.extend(airlock_discover::found_in(input, &options).map_err(input_failure)?),
        }
    }
    let images = airlock_discover::dedupe(found);
    match global.output {
        Output::Json => output::json(&serde_json::json!({ "images": images, "charts": charts.fetched })),
        Output::Text => output::data(&images_table(&images)),
    }
    Ok(())
}

fn images_table(images: &[Image]) -> String {
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|i| {
            let more = if i.locations.len() > 1 { format!(" (+{} more)", i.locations.len() - 1) } else { String::new() };
            vec![i.image.clone(), format!("{}{more}", i.locations.first().cloned().unwrap_or_default())]
        })
        .collect();
    output::table(&["IMAGE", "FOUND IN"], &rows)
}

pub async fn onboard(global: &Global, args: &OnboardArgs) -> Result<ExitCode> {
    let config = onboard::load_config(&args.config).map_err(input_failure)?;
    let target = args
        .target
        .clone()
        .or(config.target.clone())
        .ok_or_else(|| usage(format!("no target: pass `--target REGISTRY[/NAMESPACE]` or set `target` in `{}`", args.config.display())))?;
    onboard::target_reference(&target, "check", ":x").map_err(|e| usage(format!("`--target {target}`: {e}")))?;
    if config.helm_packages.is_empty() {
        return Err(usage(format!("`{}` lists no `helm_packages`", args.config.display())));
    }
    // Charts in registries are fetched first; from here on every package names a local chart.
    let mut charts = ChartFetcher::new()?;
    let mut packages = config.helm_packages.clone();
    let mut locked_charts = std::collections::BTreeMap::new();
    for package in &mut packages {
        let wanted = VersionWanted::parse(package.version.as_deref()).map_err(crate::artifact::failure)?;
        let chart = match (&package.repo, airlock_discover::oci_chart(&package.path_to_chart).map(str::to_owned)) {
            (Some(repo), _) => {
                let name = package.path_to_chart.to_string_lossy().into_owned();
                charts.fetch_from_repo(global, repo, &name, &wanted).await?
            }
            (None, Some(reference)) => charts.fetch(global, &reference, &wanted).await?,
            (None, None) => continue,
        };
        package.path_to_chart = chart.file.clone();
        locked_charts.insert(package.name.clone(), LockedChart { reference: chart.reference.clone(), digest: chart.digest.to_string() });
    }
    let mut found = Vec::new();
    for package in &packages {
        // What was discovered with `-f` and `--set` is onboarded the same way.
        let values = package.default_values.iter().chain(&args.values).cloned().collect();
        let options = Options { helm: args.helm.clone(), values, set: args.set.clone(), ..Options::default() };
        found.extend(airlock_discover::find(&package.path_to_chart, airlock_discover::Kind::HelmChart, &options).map_err(input_failure)?);
    }
    let images = airlock_discover::dedupe(found);
    // The clients that fetched charts copy the images too (their connections and tokens kept).
    let registries = match charts.registries.take() {
        Some(registries) => registries,
        None => Registries::new(registry_options(global))?,
    };
    let mut copy_options = CopyOptions::new();
    copy_options.concurrency = std::num::NonZeroUsize::new(global.jobs.max(1)).expect("at least 1");
    let show_bars = !global.quiet && global.verbose == 0 && global.output == Output::Text && !args.dry_run;
    let copier = Copier::new(copy_options, crate::progress::Bars::for_terminal(show_bars));
    let registries = &registries;
    let open = move |reference: airlock_oci::Reference, access| {
        Box::pin(async move { airlock_gate::open_store(registries, &reference, access).await }) as std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>>
    };
    let results = onboard::onboard(&images, &config.image_sources, &target, &open, &copier, args.dry_run).await;
    drop(copier);

    let lock_path = args.lock.clone().unwrap_or_else(|| args.config.parent().unwrap_or(std::path::Path::new(".")).join("airlock-onboard.lock.json"));
    // The charts themselves follow their images to the target, as AOSM's publish step does:
    // `oci://TARGET/NAME:VERSION`, pushed as `helm push` would, only once every image is there.
    let mut pushed_charts = std::collections::BTreeMap::new();
    let images_complete = !results.iter().any(|r| r.status == "failed" || (r.status == "missing" && !args.allow_missing));
    if !args.dry_run && !args.no_charts && images_complete {
        let staging = anyhow::Context::context(tempfile::tempdir(), "cannot create a temporary folder")?;
        for package in &packages {
            let archive = if package.path_to_chart.is_dir() {
                airlock_artifact::helm::package_chart(&package.path_to_chart, staging.path()).map_err(crate::artifact::failure)?
            } else {
                package.path_to_chart.clone()
            };
            let metadata = airlock_artifact::helm::archive_metadata(&archive).map_err(crate::artifact::failure)?;
            let name = metadata["name"].as_str().unwrap_or(&package.name).to_owned();
            let reference = onboard::target_reference(&target, &name, "").map_err(|e| usage(format!("chart `{name}`: {e}")))?;
            let store = airlock_gate::open_store(registries, &reference, airlock_store::remote::Access::Push).await;
            let pushed = airlock_artifact::helm::push_chart(store.as_ref(), &archive).await.map_err(crate::artifact::failure)?;
            pushed_charts.insert(package.name.clone(), LockedChart { reference: format!("oci://{}", pushed.reference), digest: pushed.digest.to_string() });
        }
    }
    if !args.dry_run {
        let mut lock = LockFile::of(&target, &results);
        lock.charts = locked_charts;
        lock.pushed_charts = pushed_charts;
        lock.write(&lock_path).map_err(|e| anyhow::anyhow!("cannot write the lock file `{}`: {e}", lock_path.display()))?;
    }
    let mut values = serde_json::Map::new();
    if args.emit_values {
        for package in &packages {
            let defaults = onboard::chart_values(&package.path_to_chart, package.default_values.as_deref()).map_err(input_failure)?;
            values.insert(package.name.clone(), onboard::values_overrides(&defaults, &results, &target));
        }
    }
    render(global, args, &results, &lock_path, &values);
    let missing = results.iter().any(|r| r.status == "missing");
    let failed = results.iter().any(|r| r.status == "failed");
    Ok(if failed || (missing && !args.allow_missing) { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn render(global: &Global, args: &OnboardArgs, results: &[Onboarded], lock: &std::path::Path, values: &serde_json::Map<String, serde_json::Value>) {
    if global.output == Output::Json {
        let mut document = serde_json::json!({ "results": results });
        if !args.dry_run {
            document["lock"] = lock.display().to_string().into();
        }
        if args.emit_values {
            document["values"] = serde_json::Value::Object(values.clone());
        }
        output::json(&document);
        return;
    }
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|r| {
            vec![
                r.image.clone(),
                r.status.replace('_', " "),
                r.source.clone().unwrap_or_else(|| "-".into()),
                r.target.clone().unwrap_or_else(|| "-".into()),
                output::short_digest(r.digest.as_deref()),
            ]
        })
        .collect();
    let mut summary = output::table(&["IMAGE", "STATUS", "SOURCE", "TARGET", "DIGEST"], &rows);
    for r in results.iter().filter(|r| r.error.is_some()) {
        summary.push_str(&format!("{}: {}\n", r.status, r.error.as_deref().unwrap_or("")));
    }
    if !args.dry_run {
        summary.push_str(&format!("lock file: {}\n", lock.display()));
    }
    if args.emit_values {
        // Values alone on stdout, so they can be redirected into a file for `helm -f`.
        if !global.quiet {
            output::note(summary.trim_end());
        }
        let documents: Vec<String> = values
            .iter()
            .map(|(name, overrides)| format!("# values for {name}: points its images at the target\n{}\n", serde_json::to_string_pretty(overrides).expect("JSON serializes")))
            .collect();
        output::data(&documents.join("---\n"));
    } else if !global.quiet {
        output::data(&summary);
    }
}
