//! One function per subcommand: build the stores, call the library, render.

use std::process::ExitCode;
use std::sync::Arc;

use airlock_copy::{CopyError, CopyOptions, Copier};
use airlock_oci::{ManifestKind, PlatformSpec, Reference, RegistryRef};
use airlock_store::remote::{Access, Credential, CredentialFiles, Registries, RegistryOptions, RetryPolicy, Secret, TagCache};
use airlock_store::Store;
use anyhow::Context as _;
use serde::Serialize;

use crate::args::{CatalogArgs, Cli, Command, CopyArgs, DeleteArgs, DigestArgs, Global, InspectArgs, LoginArgs, LogoutArgs, Output, TagsArgs};
use crate::output;

/// A failed command: the error chain, an optional fix, and the exit code.
pub struct Failure {
    pub error: anyhow::Error,
    pub hint: Option<String>,
    pub exit_code: u8,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        let error = error.into();
        let hint = hint_of(&error);
        Failure { error, hint, exit_code: 1 }
    }
}

fn hint_of(error: &anyhow::Error) -> Option<String> {
    error.chain().find_map(|cause| {
        if let Some(artifact) = cause.downcast_ref::<airlock_artifact::ArtifactError>() {
            return artifact.hint();
        }
        if let Some(discover) = cause.downcast_ref::<airlock_discover::DiscoverError>() {
            return discover.hint();
        }
        if let Some(copy) = cause.downcast_ref::<CopyError>() {
            return copy.hint();
        }
        cause.downcast_ref::<airlock_store::Error>().and_then(airlock_store::Error::hint)
    })
}

impl Failure {
    /// The same failure with another exit code.
    pub fn with_exit_code(mut self, exit_code: u8) -> Failure {
        self.exit_code = exit_code;
        self
    }
}

pub(crate) fn usage(message: String) -> Failure {
    Failure { error: anyhow::anyhow!(message), hint: Some("see `airlock --help`".into()), exit_code: 2 }
}

pub(crate) type Result<T, E = Failure> = std::result::Result<T, E>;

/// Turns a failure to read `reference` from `store` into one a person can act on: when the
/// manifest is missing, the hint lists the tags that exist (or says the repository does not),
/// and says when `latest` was assumed because no tag was given.
async fn explain_missing(error: anyhow::Error, store: &dyn Store, reference: &Reference) -> Failure {
    let missing = error.chain().any(|cause| {
        cause.downcast_ref::<airlock_store::Error>().is_some_and(airlock_store::Error::is_not_found)
            || cause.downcast_ref::<airlock_copy::CopyError>().is_some_and(|e| matches!(e, airlock_copy::CopyError::Store(s) if s.is_not_found()))
    });
    let mut failure = Failure::from(error);
    if !missing || reference.digest().is_some() {
        return failure;
    }
    let tag = reference.tag().unwrap_or(airlock_oci::DEFAULT_TAG);
    // Only when the tag itself is what is missing (not a blob or a child manifest).
    if !matches!(store.resolve(tag).await, Err(e) if e.is_not_found()) {
        return failure;
    }
    let assumed = if reference.tag().is_none() { format!("no tag was given, so `{tag}` was assumed; ") } else { String::new() };
    let listed = match store.list_tags().await {
        Ok(tags) if tags.is_empty() => "the repository has no tags".to_owned(),
        Ok(mut tags) => {
            tags.sort();
            let more = tags.len().saturating_sub(20);
            tags.truncate(20);
            format!("the tags that exist: {}{}", tags.join(", "), if more > 0 { format!(" (and {more} more: `airlock tags`)") } else { String::new() })
        }
        Err(e) if e.is_not_found() => format!("the repository {store} does not exist"),
        Err(_) => "`airlock tags` lists the tags that exist".to_owned(),
    };
    failure.hint = Some(format!("{assumed}{listed}"));
    failure
}

pub async fn run(cli: Cli) -> Result<ExitCode> {
    dispatch(&cli).await.map_err(|failure| failure.with_flags_of(&cli.command))
}

impl Failure {
    /// The hint in the words of `command`: a credential hint names the flags that command
    /// takes (`--src-creds`/`--dest-creds` for copy and sync, the config file for imports),
    /// and a failed login is not told to log in.
    fn with_flags_of(mut self, command: &Command) -> Failure {
        const GENERIC: &str = "`--creds USER:PASSWORD`";
        let Some(hint) = self.hint.take() else { return self };
        let hint = if !hint.contains(GENERIC) {
            hint
        } else {
            match command {
                Command::Copy(_) | Command::Sync(_) => hint.replace(GENERIC, "`--src-creds USER:PASSWORD` / `--dest-creds USER:PASSWORD`"),
                Command::Login(_) => "check the user name and password (`-u USER`, `--password-stdin`)".to_owned(),
                Command::Inspect(_) | Command::Tags(_) | Command::Catalog(_) | Command::Digest(_) | Command::Delete(_) | Command::Push(_) | Command::Pull(_) | Command::Artifacts(_) => hint,
                Command::Import(_) | Command::Watch(_) | Command::Rollback(_) => {
                    hint.replace(GENERIC, "the `registries:` section of airlock.yaml (`username`, `password_env`)")
                }
                _ => hint.replace(&format!(", {GENERIC},"), ","),
            }
        };
        self.hint = Some(hint);
        self
    }
}

async fn dispatch(cli: &Cli) -> Result<ExitCode> {
    let global = &cli.global();
    match &cli.command {
        Command::Copy(args) => copy(global, args).await,
        Command::Sync(args) => return crate::sync::sync(global, args).await,
        Command::Serve(args) => serve(global, args).await,
        Command::Gc(args) => gc(global, args).await,
        Command::Inspect(args) => inspect(global, args).await,
        Command::Tags(args) => tags(global, args).await,
        Command::Catalog(args) => catalog(global, args).await,
        Command::Digest(args) => digest(global, args).await,
        Command::Delete(args) => delete(global, args).await,
        Command::Login(args) => login(global, args).await,
        Command::Logout(args) => logout(global, args).await,
        Command::Completions(args) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut command, "airlock", &mut script);
            output::raw(&script);
            Ok(())
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut page).context("cannot render the manual page")?;
            output::raw(&page);
            Ok(())
        }
        Command::Import(args) => return crate::gate::import(global, args).await,
        Command::Runs(args) => crate::gate::runs(global, args).await,
        Command::Rollback(args) => crate::gate::rollback(global, args).await,
        Command::Watch(args) => crate::gate::watch(global, args).await,
        Command::Demo(args) => return crate::demo::demo(global, args).await,
        Command::Discover(args) => crate::discover::discover(global, args).await,
        Command::Onboard(args) => return crate::discover::onboard(global, args).await,
        Command::Push(args) => crate::artifact::push(global, args).await,
        Command::Pull(args) => crate::artifact::pull(global, args).await,
        Command::Artifacts(args) => crate::artifact::artifacts(global, args).await,
    }
    .map(|()| ExitCode::SUCCESS)
}

pub(crate) fn parse_reference(text: &str) -> Result<Reference> {
    // A path where a reference belongs: almost always a folder meant as an OCI layout.
    let looks_like_path = text.starts_with('/') || text.starts_with("./") || text.starts_with("../") || text.starts_with('~') || text == ".";
    let parsed = text.parse::<Reference>().map_err(|e| Failure {
        hint: Some(if looks_like_path {
            format!("for an OCI image-layout folder write `ocidir://{text}`")
        } else {
            "a reference is `[registry/]repository[:tag][@digest]`, `oci://host/repo[:tag]`, `ocidir://PATH[:tag]` or `root://PATH//repo[:tag]`".into()
        }),
        error: e.into(),
        exit_code: 2,
    })?;
    Ok(parsed)
}

/// Refuses an OCI layout source whose folder does not exist, naming it.
pub(crate) fn require_source_folder(reference: &Reference) -> Result<()> {
    if let Reference::Layout(layout) = reference {
        let path = std::path::Path::new(&layout.path);
        if !path.is_dir() {
            return Err(Failure {
                error: anyhow::anyhow!("the folder `{}` of `{reference}` does not exist", path.display()),
                hint: Some("an `ocidir://` source is an OCI image-layout folder (with `index.json`); check the path".into()),
                exit_code: 1,
            });
        }
    }
    Ok(())
}

pub(crate) fn parse_creds(text: Option<&str>) -> Result<Option<Credential>> {
    let Some(text) = text else { return Ok(None) };
    let Some((username, password)) = text.split_once(':') else {
        return Err(usage("credentials must be given as `USER:PASSWORD`".into()));
    };
    Ok(Some(Credential::Basic { username: username.to_owned(), password: Secret::new(password) }))
}

/// The registries of this command, with credentials given on the command line attached.
fn registries(global: &Global, explicit: &[(&Reference, Option<Credential>)]) -> Result<Registries> {
    registries_unverified(global, explicit, &[])
}

/// [`registries`], taking any certificate from the registries of `unverified` (the
/// `--src-tls-verify=false` / `--dest-tls-verify=false` sides).
pub(crate) fn registries_unverified(global: &Global, explicit: &[(&Reference, Option<Credential>)], unverified: &[&Reference]) -> Result<Registries> {
    let mut options = registry_options(global);
    for reference in unverified {
        if let Reference::Registry(registry) = reference {
            options.tls_unverified.push(registry.registry.clone());
        }
    }
    for (reference, credential) in explicit {
        if let (Reference::Registry(registry), Some(credential)) = (reference, credential) {
            options.explicit_credentials.insert(registry.registry.clone(), credential.clone());
        }
    }
    Ok(Registries::new(options)?)
}

/// Registry options from the global flags.
pub(crate) fn registry_options(global: &Global) -> RegistryOptions {
    let mut options = RegistryOptions::new(CredentialFiles::discover(global.authfile.as_deref()));
    options.plain_http = global.plain_http.clone();
    options.ca_certs = global.ca_certs.clone();
    options.max_requests_per_registry = global.max_requests.max(1);
    options.retry = RetryPolicy { attempts: global.retries.max(1), ..RetryPolicy::default() };
    options.read_timeout = std::time::Duration::from_secs(global.read_timeout.max(1));
    if !global.tls_verify {
        options.tls_unverified.push("*".into());
    }
    options.tag_cache = Some(tag_cache());
    options
}

/// What tags pointed at when this user's airlock last looked, shared by every registry of the
/// process; loaded on first use, written back by [`save_tag_cache`] when the command ends.
static TAG_CACHE: std::sync::OnceLock<Arc<TagCache>> = std::sync::OnceLock::new();

fn tag_cache() -> Arc<TagCache> {
    TAG_CACHE
        .get_or_init(|| {
            Arc::new(match cache_dir() {
                Some(dir) => TagCache::in_dir(dir.join("tags")),
                None => TagCache::in_memory(),
            })
        })
        .clone()
}

/// `AIRLOCK_CACHE_DIR`, else `$XDG_CACHE_HOME/airlock`, else `~/.cache/airlock`.
fn cache_dir() -> Option<std::path::PathBuf> {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    set("AIRLOCK_CACHE_DIR")
        .or_else(|| set("XDG_CACHE_HOME").map(|dir| dir.join("airlock")))
        .or_else(|| set("HOME").map(|home| home.join(".cache/airlock")))
}

/// Writes the tag cache back, if this command used it. A failure only costs the next run
/// some speed, so it is logged, not reported.
pub fn save_tag_cache() {
    if let Some(cache) = TAG_CACHE.get() {
        if let Err(error) = cache.save() {
            tracing::info!(%error, "could not save the tag cache");
        }
    }
}

pub(crate) async fn open(registries: &Registries, reference: &Reference, access: Access) -> Arc<dyn Store> {
    airlock_gate::open_store(registries, reference, access).await
}

#[derive(Serialize)]
struct CopyOutput {
    source: String,
    /// `target`, as sync, import and onboard name the place written to.
    target: String,
    digest: String,
    source_digest: String,
    media_type: String,
    size: u64,
    tags: Vec<String>,
    manifests_written: u64,
    manifests_present: u64,
    blobs_copied: u64,
    blobs_mounted: u64,
    blobs_skipped: u64,
    bytes_copied: u64,
    referrers_copied: u64,
}

async fn copy(global: &Global, args: &CopyArgs) -> Result<()> {
    let source = parse_reference(&args.source)?;
    let destination = parse_reference(&args.destination)?;
    if destination.digest().is_some() {
        return Err(usage(format!("destination `{}` names a digest; name a repository and optionally a tag", args.destination)));
    }
    let platforms = args
        .platform
        .iter()
        .map(|p| p.parse::<PlatformSpec>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| usage(e.to_string()))?;
    for tag in &args.tags {
        parse_reference(&format!("x:{tag}"))?;
    }
    let unverified: Vec<&Reference> = [(&source, args.creds.src_tls_verify), (&destination, args.creds.dest_tls_verify)]
        .into_iter()
        .filter(|(_, verify)| !verify)
        .map(|(reference, _)| reference)
        .collect();
    let registries = registries_unverified(
        global,
        &[(&source, parse_creds(args.creds.src_creds.as_deref())?), (&destination, parse_creds(args.creds.dest_creds.as_deref())?)],
        &unverified,
    )?;
    require_source_folder(&source)?;
    let source_store = open(&registries, &source, Access::Pull).await;
    let target_store = open(&registries, &destination, Access::Push).await;

    // The destination's own tag, else the source's tag, then the extra ones.
    let mut tags: Vec<String> = destination.tag().or(source.tag()).map(str::to_owned).into_iter().collect();
    if tags.is_empty() && source.digest().is_none() {
        tags.push(airlock_oci::DEFAULT_TAG.to_owned());
    }
    for tag in &args.tags {
        if !tags.contains(tag) {
            tags.push(tag.clone());
        }
    }

    let mut options = CopyOptions::new();
    options.platforms = platforms;
    options.referrers = !args.no_referrers;
    options.force = args.force;
    options.concurrency = std::num::NonZeroUsize::new(global.jobs.max(1)).expect("at least 1");
    let show_bars = !global.quiet && global.verbose == 0 && global.output == Output::Text;
    let progress = crate::progress::Bars::for_terminal(show_bars);
    let copier = Copier::new(options, progress);
    let report = match copier.copy(source_store.as_ref(), &source.tag_or_digest(), target_store.as_ref(), &tags).await {
        Ok(report) => report,
        Err(error) => {
            let error = anyhow::Error::new(error).context(format!("cannot copy `{source}` to `{target_store}`"));
            return Err(explain_missing(error, source_store.as_ref(), &source).await);
        }
    };
    drop(copier);

    let destination_name = target_store.to_string();
    match global.output {
        Output::Json => output::json(&CopyOutput {
            source: source.to_string(),
            target: destination_name,
            digest: report.digest.to_string(),
            source_digest: report.source_digest.to_string(),
            media_type: report.media_type,
            size: report.size,
            tags: report.tags,
            manifests_written: report.manifests_written,
            manifests_present: report.manifests_present,
            blobs_copied: report.blobs_copied,
            blobs_mounted: report.blobs_mounted,
            blobs_skipped: report.blobs_skipped,
            bytes_copied: report.bytes_copied,
            referrers_copied: report.referrers_copied,
        }),
        Output::Text if !global.quiet => {
            let tags = if report.tags.is_empty() { "(by digest only)".to_owned() } else { report.tags.join(", ") };
            output::data(&format!(
                "Copied {source} to {destination_name}\n  digest:    {}\n  tags:      {tags}\n  blobs:     {} copied ({}), {} mounted, {} already there\n  manifests: {} written, {} already there, {} referrers",
                report.digest,
                report.blobs_copied,
                output::bytes(report.bytes_copied),
                report.blobs_mounted,
                report.blobs_skipped,
                report.manifests_written,
                report.manifests_present,
                report.referrers_copied,
            ));
            if report.digest != report.source_digest {
                output::note(&format!("note: the platform subset is a new index; the source's digest is {}", report.source_digest));
            }
        }
        Output::Text => {}
    }
    Ok(())
}

#[derive(Serialize)]
struct InspectOutput {
    reference: String,
    digest: String,
    media_type: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    artifact_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    manifests: Vec<InspectEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<InspectEntry>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    layers: Vec<InspectEntry>,
}

#[derive(Serialize)]
struct InspectEntry {
    digest: String,
    media_type: String,
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<String>,
}

fn entry(descriptor: &airlock_oci::Descriptor) -> InspectEntry {
    InspectEntry {
        digest: descriptor.digest().to_string(),
        media_type: descriptor.media_type().to_string(),
        size: descriptor.size(),
        platform: descriptor.platform().as_ref().map(|p| {
            let mut text = format!("{}/{}", p.os(), p.architecture());
            if let Some(variant) = p.variant() {
                text.push('/');
                text.push_str(variant);
            }
            text
        }),
    }
}

async fn inspect(global: &Global, args: &InspectArgs) -> Result<()> {
    let reference = parse_reference(&args.reference)?;
    require_source_folder(&reference)?;
    let registries = registries(global, &[(&reference, parse_creds(args.creds.as_deref())?)])?;
    let store = open(&registries, &reference, Access::Pull).await;
    let manifest = match store.get_manifest(&reference.tag_or_digest()).await {
        Ok(manifest) => manifest,
        Err(error) => return Err(explain_missing(anyhow::Error::new(error).context(format!("cannot inspect `{reference}`")), store.as_ref(), &reference).await),
    };
    let manifest = match &args.platform {
        Some(platform) => {
            let spec: PlatformSpec = platform.parse().map_err(|e: airlock_oci::PlatformError| usage(e.to_string()))?;
            match manifest.kind() {
                ManifestKind::Index { manifests, .. } => {
                    let Some(entry) = manifests.iter().find(|d| d.platform().as_ref().is_some_and(|p| spec.matches(p))) else {
                        let offered: Vec<String> = manifests.iter().filter_map(|d| d.platform().as_ref()).map(|p| format!("{}/{}", p.os(), p.architecture())).collect();
                        return Err(Failure::from(anyhow::anyhow!("`{reference}` has no manifest for {platform} (it has: {})", offered.join(", "))));
                    };
                    store.get_manifest(entry.digest().as_ref()).await.with_context(|| format!("cannot inspect the {platform} manifest of `{reference}`"))?
                }
                ManifestKind::Image { .. } => manifest,
            }
        }
        None => manifest,
    };
    if args.raw {
        output::raw(manifest.bytes());
        return Ok(());
    }
    if args.config {
        let ManifestKind::Image { config, .. } = manifest.kind() else {
            return Err(usage(format!("`{reference}` is an index; inspect one of its manifests for a config")));
        };
        let bytes = airlock_store::verify::read_small(store.as_ref(), config, 64 * 1024 * 1024)
            .await
            .with_context(|| format!("cannot read the config of `{reference}`"))?;
        output::raw(&bytes);
        return Ok(());
    }
    let (manifests, config, layers, artifact_type) = match manifest.kind() {
        ManifestKind::Index { manifests, artifact_type, .. } => (manifests.iter().map(entry).collect(), None, vec![], artifact_type.clone()),
        ManifestKind::Image { config, layers, artifact_type, .. } => (vec![], Some(entry(config)), layers.iter().map(entry).collect(), artifact_type.clone()),
    };
    let report = InspectOutput {
        reference: reference.to_string(),
        digest: manifest.digest().to_string(),
        media_type: manifest.media_type().to_owned(),
        size: manifest.bytes().len() as u64,
        artifact_type,
        subject: manifest.subject().map(|s| s.digest().to_string()),
        manifests,
        config,
        layers,
    };
    match global.output {
        Output::Json => output::json(&report),
        Output::Text => {
            let mut text = format!("Name:       {}\nDigest:     {}\nMediaType:  {}\nSize:       {}\n", report.reference, report.digest, report.media_type, report.size);
            if let Some(artifact_type) = &report.artifact_type {
                text.push_str(&format!("Type:       {artifact_type}\n"));
            }
            if let Some(subject) = &report.subject {
                text.push_str(&format!("Subject:    {subject}\n"));
            }
            if !report.manifests.is_empty() {
                text.push_str("Manifests:\n");
                for m in &report.manifests {
                    text.push_str(&format!("  {:<16} {}  {}\n", m.platform.as_deref().unwrap_or("-"), m.digest, output::bytes(m.size)));
                }
            }
            if let Some(config) = &report.config {
                text.push_str(&format!("Config:     {}  {}\n", config.digest, config.media_type));
                text.push_str(&format!("Layers ({}, {} in all):\n", report.layers.len(), output::bytes(report.layers.iter().map(|l| l.size).sum())));
                for layer in &report.layers {
                    text.push_str(&format!("  {}  {:>10}  {}\n", layer.digest, output::bytes(layer.size), layer.media_type));
                }
            }
            output::data(&text);
        }
    }
    Ok(())
}

async fn tags(global: &Global, args: &TagsArgs) -> Result<()> {
    let reference = parse_reference(&args.repository)?;
    require_source_folder(&reference)?;
    let registries = registries(global, &[(&reference, parse_creds(args.creds.as_deref())?)])?;
    let store = open(&registries, &reference, Access::Pull).await;
    let tags = store.list_tags().await.with_context(|| format!("cannot list the tags of `{store}`"))?;
    match global.output {
        Output::Json => output::json(&serde_json::json!({ "repository": store.to_string(), "tags": tags })),
        Output::Text => {
            if !tags.is_empty() {
                output::data(&tags.join("\n"));
            }
        }
    }
    Ok(())
}

async fn catalog(global: &Global, args: &CatalogArgs) -> Result<()> {
    let host = args.registry.trim_start_matches("oci://").trim_start_matches("docker://").trim_end_matches('/');
    // Checked as references check a registry: `HOST[:PORT]`, nothing more.
    let Ok(Reference::Registry(probe)) = format!("oci://{host}/x").parse::<Reference>() else {
        return Err(usage(format!("`{}` is not a registry host (`HOST[:PORT]`)", args.registry)));
    };
    let reference = Reference::Registry(probe.clone());
    let registries = registries(global, &[(&reference, parse_creds(args.creds.as_deref())?)])?;
    let repositories = registries.catalog(&probe.registry).await.with_context(|| format!("cannot list the repositories of `{}`", probe.registry))?;
    match global.output {
        Output::Json => output::json(&serde_json::json!({ "registry": probe.registry, "repositories": repositories })),
        Output::Text => {
            if !repositories.is_empty() {
                output::data(&repositories.join("\n"));
            }
        }
    }
    Ok(())
}

async fn digest(global: &Global, args: &DigestArgs) -> Result<()> {
    let reference = parse_reference(&args.reference)?;
    require_source_folder(&reference)?;
    let registries = registries(global, &[(&reference, parse_creds(args.creds.as_deref())?)])?;
    let store = open(&registries, &reference, Access::Pull).await;
    let descriptor = match store.resolve(&reference.tag_or_digest()).await {
        Ok(descriptor) => descriptor,
        Err(error) => return Err(explain_missing(anyhow::Error::new(error).context(format!("cannot resolve `{reference}`")), store.as_ref(), &reference).await),
    };
    match global.output {
        Output::Json => output::json(&serde_json::json!({
            "reference": reference.to_string(),
            "digest": descriptor.digest().to_string(),
            "media_type": descriptor.media_type().to_string(),
            "size": descriptor.size(),
        })),
        Output::Text => output::data(descriptor.digest().as_ref()),
    }
    Ok(())
}

async fn delete(global: &Global, args: &DeleteArgs) -> Result<()> {
    let reference = parse_reference(&args.reference)?;
    let registries = registries(global, &[(&reference, parse_creds(args.creds.as_deref())?)])?;
    let store = open(&registries, &reference, Access::Delete).await;
    let descriptor = store.resolve(&reference.tag_or_digest()).await.with_context(|| format!("cannot resolve `{reference}`"))?;
    let digest = descriptor.digest();
    store.delete_manifest(digest).await.with_context(|| format!("cannot delete `{reference}` ({digest})"))?;
    match global.output {
        Output::Json => output::json(&serde_json::json!({
            "reference": reference.to_string(),
            "digest": digest.to_string(),
            "deleted": true,
        })),
        Output::Text => output::data(digest.as_ref()),
    }
    Ok(())
}

fn registry_host(text: &str) -> Result<String> {
    let trimmed = text.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
    let reference: RegistryRef = format!("{trimmed}/x").parse().map_err(|e: airlock_oci::ReferenceError| usage(format!("invalid registry `{text}`: {}", e.reason)))?;
    Ok(reference.registry)
}

/// Asks for a password on the terminal, without echoing it (as `docker login` and `podman
/// login` do); `stty` switches the echo off and back on.
fn prompt_password(username: &str, registry: &str) -> Result<String> {
    let stty = |setting: &str| std::process::Command::new("stty").arg(setting).stdin(std::process::Stdio::inherit()).status().is_ok_and(|s| s.success());
    output::prompt(&format!("Password for {username} at {registry}: "));
    let hidden = stty("-echo");
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line);
    if hidden {
        stty("echo");
    }
    output::note("");
    read.context("cannot read the password from the terminal")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

async fn login(global: &Global, args: &LoginArgs) -> Result<()> {
    let registry = registry_host(&args.registry)?;
    let password = match (&args.password, args.password_stdin) {
        (Some(password), false) => password.clone(),
        (None, true) => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("cannot read the password from standard input")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
        (None, false) if std::io::IsTerminal::is_terminal(&std::io::stdin()) => prompt_password(&args.username, &registry)?,
        _ => return Err(usage("give the password with `--password-stdin` (or `-p`)".into())),
    };
    let credential = Credential::Basic { username: args.username.clone(), password: Secret::new(password) };
    let files = CredentialFiles::discover(global.authfile.as_deref());
    let mut options = RegistryOptions::new(files.clone());
    options.plain_http = global.plain_http.clone();
    options.ca_certs = global.ca_certs.clone();
    options.read_timeout = std::time::Duration::from_secs(global.read_timeout.max(1));
    if !global.tls_verify {
        options.tls_unverified.push(registry.clone());
    }
    options.explicit_credentials.insert(registry.clone(), credential.clone());
    let registries = Registries::new(options)?;
    registries.check_login(&registry).await.with_context(|| format!("cannot log in to `{registry}`"))?;
    let path = files.save(&registry, &credential).await?;
    match global.output {
        Output::Json => output::json(&serde_json::json!({"registry": registry, "authfile": path.display().to_string()})),
        Output::Text if !global.quiet => output::data(&format!("Login Succeeded (credentials for {registry} stored in {})", path.display())),
        Output::Text => {}
    }
    Ok(())
}

async fn logout(global: &Global, args: &LogoutArgs) -> Result<()> {
    let registry = registry_host(&args.registry)?;
    let files = CredentialFiles::discover(global.authfile.as_deref());
    let changed = files.remove(&registry).await?;
    if changed.is_empty() {
        return Err(Failure { error: anyhow::anyhow!("not logged in to `{registry}`"), hint: None, exit_code: 1 });
    }
    match global.output {
        Output::Json => output::json(&serde_json::json!({"registry": registry, "authfiles": changed.iter().map(|p| p.display().to_string()).collect::<Vec<_>>()})),
        Output::Text if !global.quiet => output::data(&format!("Removed login credentials for {registry}")),
        Output::Text => {}
    }
    Ok(())
}

async fn serve(global: &Global, args: &crate::args::ServeArgs) -> Result<()> {
    let mut file = match &args.config {
        Some(path) => airlock_registry::config::load(path).map_err(|e| Failure { error: anyhow::anyhow!(e), hint: None, exit_code: 2 })?,
        None => airlock_registry::config::ServeFile::default(),
    };
    let root = args.root.clone().or(file.root.take()).unwrap_or_else(|| "airlock-data".into());
    let listen = args.listen.clone().or(file.listen.take()).unwrap_or_else(|| "127.0.0.1:5000".into());
    if let Some(htpasswd) = &args.htpasswd {
        let mut auth = file.auth.take().unwrap_or(airlock_registry::auth::AuthFile { htpasswd: None, token: false, rules: Vec::new(), token_key_env: None });
        auth.htpasswd = Some(htpasswd.clone());
        auth.token |= args.token;
        file.auth = Some(auth);
    }
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create `{}`", root.display()))?;
    let auth = match &file.auth {
        Some(auth) => Some(airlock_registry::auth::Auth::load(auth, &root).map_err(|e| Failure { error: anyhow::anyhow!(e), hint: None, exit_code: 2 })?),
        None => None,
    };
    let notifier = (!file.notifications.is_empty()).then(|| airlock_registry::events::Notifier::start(&file.notifications));
    let allow_delete = file.delete.unwrap_or(true);
    let storage = match args.storage.clone().or(file.storage.take()) {
        Some(location) => airlock_registry::Storage::open(&location, &file.s3.take().unwrap_or_default())
            .map_err(|e| Failure { error: anyhow::anyhow!(e), hint: Some("see `airlock serve --help`".into()), exit_code: 2 })?,
        None => airlock_registry::Storage::new(&root),
    };

    let tls_files = match (&args.tls_cert, &args.tls_key, &file.tls) {
        (Some(cert), Some(key), _) => Some((cert.clone(), key.clone())),
        (_, _, Some(tls)) => Some((tls.certificate.clone(), tls.key.clone())),
        _ => None,
    };
    let tls = match tls_files {
        Some((cert, key)) => {
            Some(airlock_registry::tls::server_config(&cert, &key).map_err(|e| Failure { error: anyhow::anyhow!(e), hint: None, exit_code: 2 })?)
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mirrors = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))?;
            airlock_gate::config::parse_mirrors(&text, path).map_err(|e| Failure { error: anyhow::anyhow!("{e}"), hint: Some("see the serve.yaml section of README.md".into()), exit_code: 2 })?
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on `{listen}`"))?;
    let address = listener.local_addr().context("cannot read the bound address")?;
    let mut mirror_pipeline = None;
    let mut mirror_repository: Option<airlock_ui::RepositoryOf> = None;
    let mirror: Option<std::sync::Arc<dyn airlock_registry::mirror::Mirror>> = match mirrors {
        Some(config) => {
            // The mirror stages and promotes through a private listener on loopback over the
            // same storage, which answers only the credential the mirror holds.
            let private = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on loopback for the mirror")?;
            let private_address = private.local_addr().context("cannot read the bound address")?.to_string();
            let mirror = airlock_gate::mirror::GatedMirror::start(config, &private_address)
                .await
                .map_err(|e| Failure { error: anyhow::anyhow!("cannot start the mirror: {e}"), hint: None, exit_code: 1 })?;
            let inner = airlock_registry::Registry {
                storage: storage.clone(),
                auth: None,
                notifier: None,
                allow_delete: false,
                mirror: None,
                private_credential: Some(mirror.credential()),
            };
            tokio::spawn(async move {
                if let Err(e) = airlock_registry::serve(private, std::sync::Arc::new(inner), None, std::future::pending()).await {
                    tracing::error!("the mirror's private listener stopped: {e}");
                }
            });
            mirror_pipeline = Some(mirror.pipeline());
            let names = mirror.clone();
            mirror_repository = Some(std::sync::Arc::new(move |import: &str| names.client_repository(import)));
            Some(std::sync::Arc::new(mirror))
        }
        None => None,
    };
    let registry = std::sync::Arc::new(airlock_registry::Registry { storage, auth, notifier, allow_delete, mirror, private_credential: None });
    if !address.ip().is_loopback() && registry.auth.is_none() {
        output::note(&format!(
            "warning: serving {address} beyond this machine without authentication: anyone who reaches it may push and delete; \
             add `auth:` to serve.yaml or `--htpasswd FILE`"
        ));
    }
    // The web page: the registry always; imports and runs of `ui.gate_file` (else the mirror's).
    let ui_pipeline = match file.ui.as_ref().and_then(|ui| ui.gate_file.as_ref()) {
        Some(path) => {
            let config = airlock_gate::config::load(path).map_err(|e| Failure { error: anyhow::anyhow!("{e}"), hint: Some("see the airlock.yaml section of README.md".into()), exit_code: 2 })?;
            Some(std::sync::Arc::new(crate::gate::pipeline(global, config, false).await?))
        }
        None => mirror_pipeline,
    };
    let ui = match file.ui.as_ref().and_then(|ui| ui.session_key_env.as_ref()) {
        Some(variable) => {
            let secret = std::env::var(variable).unwrap_or_default();
            if secret.len() < 32 {
                return Err(Failure {
                    error: anyhow::anyhow!("`ui.session_key_env` names `{variable}`, which is unset or shorter than 32 characters"),
                    hint: Some(format!("set {variable} to the same random secret on every replica (openssl rand -hex 32)")),
                    exit_code: 2,
                });
            }
            airlock_ui::Ui::with_key(Some(registry.clone()), ui_pipeline, false, secret.as_bytes())
        }
        None => airlock_ui::Ui::new(Some(registry.clone()), ui_pipeline, false),
    };
    // Runs of the mirror's imports are shown by the rules of the repositories clients name,
    // when the page shows the mirror's runs.
    let ui = match mirror_repository {
        Some(repository_of) if file.ui.as_ref().and_then(|ui| ui.gate_file.as_ref()).is_none() => ui.with_mirror(repository_of),
        _ => ui,
    };
    let page = airlock_ui::router(ui);
    let app = airlock_registry::router(registry).merge(page);
    output::data(&format!("listening on {scheme}://{address}"));
    airlock_registry::serve_router(listener, app, tls, shutdown_signal()).await.context("the registry stopped")?;
    Ok(())
}

async fn gc(global: &Global, args: &crate::args::GcArgs) -> Result<()> {
    let storage = match &args.storage {
        Some(location) => airlock_registry::Storage::open(location, &Default::default()).map_err(usage)?,
        None => {
            if !args.root.join("blobs").is_dir() {
                return Err(usage(format!("`{}` is not a serve root (no `blobs/` in it)", args.root.display())));
            }
            airlock_registry::Storage::new(&args.root)
        }
    };
    let report = storage.gc(args.dry_run, args.grace).await.with_context(|| format!("cannot collect garbage in `{}`", storage.root().display()))?;
    match global.output {
        Output::Json => output::json(&serde_json::json!({
            "dry_run": args.dry_run, "kept": report.kept, "removed": report.removed, "bytes": report.bytes, "too_young": report.too_young,
            "stale_uploads": report.stale_uploads, "abandoned_temporaries": report.abandoned_temporaries,
        })),
        Output::Text if !global.quiet => {
            let verb = if args.dry_run { "would remove" } else { "removed" };
            output::data(&format!(
                "{verb} {} blobs ({}), {} idle upload sessions and {} abandoned temporaries; kept {} reachable and {} younger than the grace period",
                report.removed,
                output::bytes(report.bytes),
                report.stale_uploads,
                report.abandoned_temporaries,
                report.kept,
                report.too_young
            ));
        }
        Output::Text => {}
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}
