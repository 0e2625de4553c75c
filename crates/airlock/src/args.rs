//! The command line, as clap derives it. `--help` is generated from the doc comments here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `--version`: the crate's version and the commit it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("AIRLOCK_COMMIT"), ")");

/// airlock: bring public OCI images and artifacts in safely: copy, mirror, gate and serve them.
///
/// References: `[registry/]repository[:tag][@digest]` (Docker Hub when no registry is named:
/// `alpine` is `docker.io/library/alpine:latest`), also `docker://REF`, `oci://HOST/REPO[:tag|@digest]`,
/// `ocidir://PATH[:tag|@digest]` for an OCI image-layout folder, and `root://PATH//REPO[:tag]` for
/// a repository in the folder of `airlock serve --root PATH` (with or without the server running).
///
/// What each tag pointed at when last seen is kept in `~/.cache/airlock/tags` (or
/// `$XDG_CACHE_HOME/airlock/tags`, `$AIRLOCK_CACHE_DIR/tags`), so the next look is a conditional
/// `HEAD`; it is only a guess the registry confirms, and deleting it is always safe.
#[derive(Debug, Parser)]
#[command(name = "airlock", version = VERSION, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, before or after its name.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct Common {
    /// Output format: `text` for people, `json` for scripts (one JSON document on stdout, errors
    /// included).
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Log more: `-v` info, `-vv` debug, `-vvv` trace (to stderr; `AIRLOCK_LOG` takes a filter).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars and no summary lines.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// Where credentials are read and written.
#[derive(Debug, Args)]
pub struct AuthFileFlag {
    /// Credentials file to read and write instead of `REGISTRY_AUTH_FILE`, podman's `auth.json` and
    /// Docker's `config.json`.
    #[arg(long, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

/// How registries are reached.
#[derive(Debug, Args)]
pub struct ConnectionFlags {
    /// Extra PEM CA certificate(s) to trust besides the system roots; repeatable.
    #[arg(long = "ca-cert", value_name = "FILE")]
    pub ca_certs: Vec<PathBuf>,
    /// Speak plain HTTP to this registry (HOST[:PORT]); loopback registries that do not answer
    /// TLS always are; repeatable.
    #[arg(long = "plain-http", value_name = "HOST")]
    pub plain_http: Vec<String>,
    /// `--tls-verify=false` takes any certificate the registries present, for people who must
    /// (prefer `--ca-cert`): the connection is encrypted, but to whoever answers.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub tls_verify: bool,
    /// Attempts per request on connection resets, 408, 429 and 5xx (with backoff and `Retry-After`).
    #[arg(long, default_value_t = DEFAULT_RETRIES, value_name = "N")]
    pub retries: u32,
    /// Seconds a registry may send nothing before a read gives up on the connection: a stalled
    /// download is then resumed (`Range`) or asked for again, up to `--retries` times.
    #[arg(long, default_value_t = DEFAULT_READ_TIMEOUT, value_name = "SECONDS", env = "AIRLOCK_READ_TIMEOUT")]
    pub read_timeout: u64,
}

/// How much moves at once.
#[derive(Debug, Args)]
pub struct TransferFlags {
    /// Blob transfers in flight at once (a sync works on twice as many tags at once).
    #[arg(long, default_value_t = DEFAULT_JOBS, value_name = "N")]
    pub jobs: usize,
    /// HTTP requests in flight at once per registry.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUESTS, value_name = "N")]
    pub max_requests: usize,
}

/// The flags of every command that talks to registries, under their own heading in `--help`.
#[derive(Debug, Args)]
pub struct RegistryFlags {
    #[command(flatten)]
    pub auth: AuthFileFlag,
    #[command(flatten)]
    pub connection: ConnectionFlags,
    #[command(flatten)]
    pub transfer: TransferFlags,
}

const DEFAULT_JOBS: usize = 8;
const DEFAULT_MAX_REQUESTS: usize = 16;
const DEFAULT_RETRIES: u32 = 5;
const DEFAULT_READ_TIMEOUT: u64 = 60;

/// What a command runs with: the global options and its registry flags (defaults for a command
/// that has none), in one place for the code below.
#[derive(Debug)]
pub struct Global {
    pub output: Output,
    pub verbose: u8,
    pub quiet: bool,
    pub authfile: Option<PathBuf>,
    pub ca_certs: Vec<PathBuf>,
    pub plain_http: Vec<String>,
    pub tls_verify: bool,
    pub jobs: usize,
    pub max_requests: usize,
    pub retries: u32,
    pub read_timeout: u64,
}

impl Cli {
    /// The options the command runs with.
    pub fn global(&self) -> Global {
        let (auth, connection, transfer) = self.command.flags();
        Global {
            output: self.common.output,
            verbose: self.common.verbose,
            quiet: self.common.quiet,
            authfile: auth.and_then(|a| a.authfile.clone()),
            ca_certs: connection.map(|c| c.ca_certs.clone()).unwrap_or_default(),
            plain_http: connection.map(|c| c.plain_http.clone()).unwrap_or_default(),
            tls_verify: connection.is_none_or(|c| c.tls_verify),
            jobs: transfer.map_or(DEFAULT_JOBS, |t| t.jobs),
            max_requests: transfer.map_or(DEFAULT_MAX_REQUESTS, |t| t.max_requests),
            retries: connection.map_or(DEFAULT_RETRIES, |c| c.retries),
            read_timeout: connection.map_or(DEFAULT_READ_TIMEOUT, |c| c.read_timeout),
        }
    }
}

impl Command {
    /// The registry flags this command takes.
    fn flags(&self) -> (Option<&AuthFileFlag>, Option<&ConnectionFlags>, Option<&TransferFlags>) {
        fn all(r: &RegistryFlags) -> (Option<&AuthFileFlag>, Option<&ConnectionFlags>, Option<&TransferFlags>) {
            (Some(&r.auth), Some(&r.connection), Some(&r.transfer))
        }
        match self {
            Command::Copy(a) => all(&a.flags),
            Command::Sync(a) => all(&a.flags),
            Command::Inspect(a) => all(&a.flags),
            Command::Tags(a) => all(&a.flags),
            Command::Catalog(a) => all(&a.flags),
            Command::Digest(a) => all(&a.flags),
            Command::Delete(a) => all(&a.flags),
            Command::Import(a) => all(&a.flags),
            Command::Watch(a) => all(&a.flags),
            Command::Rollback(a) => all(&a.flags),
            Command::Discover(a) => all(&a.flags),
            Command::Onboard(a) => all(&a.flags),
            Command::Push(a) => all(&a.flags),
            Command::Pull(a) => all(&a.flags),
            Command::Artifacts(a) => all(&a.flags),
            Command::Login(a) => (Some(&a.auth), Some(&a.connection), None),
            Command::Logout(a) => (Some(&a.auth), None, None),
            Command::Serve(_) | Command::Gc(_) | Command::Runs(_) | Command::Demo(_) | Command::Completions(_) | Command::Man => (None, None, None),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy an image, index or artifact and everything beneath it, byte for byte.
    ///
    /// Digests are preserved: the destination holds the same manifest bytes as the source.
    /// Referrers (signatures, SBOMs, attestations) come along unless `--no-referrers`.
    /// The destination tag defaults to the source's; `-t` adds more. Tags are written last, so a
    /// failed or interrupted copy never leaves a tag pointing at missing content.
    Copy(CopyArgs),
    /// Mirror repositories: copy the tags whose digest changed upstream, skip the ones in place.
    ///
    /// `airlock sync SRC_REPO DST_REPO [filters]` for one repository, `airlock sync -f sync.yaml`
    /// for many. Each tag costs one HEAD on each side when it is up to date. Mutable tags follow
    /// upstream. A failed tag does not stop the others; the exit code is 1 when any failed.
    Sync(SyncArgs),
    /// Serve an OCI registry (distribution-spec 1.1) from a folder, on 127.0.0.1:5000 by default.
    ///
    /// Binds to loopback unless told otherwise, without authentication. Prints
    /// `listening on http://ADDRESS` when ready; stops cleanly on Ctrl-C or SIGTERM, finishing
    /// requests in flight.
    Serve(ServeArgs),
    /// Remove blobs of a serve root that no manifest reaches (mark and sweep).
    ///
    /// Safe beside a running server: blobs younger than `--grace` are kept, since they may belong
    /// to a push whose manifest has not arrived, and upload sessions go only once idle for longer.
    Gc(GcArgs),
    /// Show a manifest: its digest, media type, platforms or layers.
    Inspect(InspectArgs),
    /// List the tags of a repository.
    Tags(TagsArgs),
    /// List the repositories of a registry (`/v2/_catalog`), as far as it lets the caller see.
    Catalog(CatalogArgs),
    /// Print the digest a reference resolves to.
    Digest(DigestArgs),
    /// Delete a manifest (an image, index or artifact) from a registry, a folder or a serve root.
    ///
    /// A tag is resolved to its digest first and the manifest with that digest is deleted, as
    /// `skopeo delete` and `crane delete` do: every tag pointing at it goes with it. Blobs stay
    /// until the registry collects garbage (`airlock gc` for a serve root). Prints the deleted
    /// digest. Registries often refuse deletes unless configured to allow them.
    Delete(DeleteArgs),
    /// Store credentials for a registry (in the `--authfile`, `REGISTRY_AUTH_FILE` or Docker's config.json).
    Login(LoginArgs),
    /// Remove stored credentials for a registry.
    Logout(LogoutArgs),
    /// Print a shell completion script: `airlock completions bash > /etc/bash_completion.d/airlock`.
    Completions(CompletionsArgs),
    /// Print the manual page (roff): `airlock man > airlock.1; man ./airlock.1`.
    Man,
    /// Import upstream images through their gates, as airlock.yaml describes (a manual trigger).
    ///
    /// For each selected tag: resolve the upstream digest (nothing to do when it was promoted or
    /// refused by a gate before); copy it to the staging repository under the unique tag; run the
    /// gates in order; when all pass, promote it to the target under the unique tag and then the
    /// stable tag, attach the gate report as a referrer, and notify the dependents. A failed gate
    /// leaves the target as it was. Exit code 1 when any tag failed, or when another airlock holds the import.
    Import(ImportArgs),
    /// The recorded runs: `runs list` prints the run table, `runs logs ID` one run's log.
    Runs(RunsArgs),
    /// Point an import's stable tag back at an earlier promoted digest, recorded as a run.
    Rollback(RollbackArgs),
    /// Keep running: import when upstream changes (polled with HEAD), on timers, and on registry
    /// notifications (`POST /events` on `--listen`, distribution's format).
    Watch(WatchArgs),
    /// See a gated import end to end in seconds, with nothing but this binary.
    ///
    /// Starts the embedded registry on a free port in a temporary folder, plays the public
    /// registry with a generated `node:15-alpine`-like image, imports it through a policy gate
    /// (promoted under the stable and a unique tag), then an upstream update with
    /// `BACKGROUND_COLOR=RED` (rejected: base-artifacts keeps the good digest, the dependent is
    /// not notified), and prints the run table.
    Demo(DemoArgs),
    /// List the images a deployment needs, each with where it is named.
    ///
    /// Each PATH is detected: a Helm chart (a folder with Chart.yaml, or a .tgz; rendered with
    /// `helm template`, subcharts included), Kubernetes manifests (a file or a folder of them; any
    /// workload kind, init and ephemeral containers), a Dockerfile (`FROM` of each stage and
    /// `COPY --from`, with `ARG`s), or a compose file. A chart in a registry is named
    /// `oci://HOST/REPO[:VERSION|@DIGEST]` (as `helm push` stores it), and with `--repo URL` each
    /// PATH is a chart name in that chart repository; without a version, the highest release (or
    /// the highest in `--version`) is taken, as `helm pull` picks. airlock fetches such charts
    /// itself, with its own credentials and TLS settings, checks their digest (a repository chart
    /// against its index's SHA-256), and `helm` renders the archive. Images are deduplicated by
    /// their normalised reference.
    // `--version` is the chart version here, as in `helm template`.
    #[command(disable_version_flag = true)]
    Discover(DiscoverArgs),
    /// Copy the images of Helm charts from source registries to a target, and lock their digests.
    ///
    /// CONFIG is JSONC (comments and trailing commas allowed): `image_sources` (registries or
    /// registry/namespace, searched in order), `helm_packages` (`name`, `path_to_chart`, which
    /// may be an `oci://` chart in a registry or, with `repo`, a chart name in a chart
    /// repository; `version` for those; `default_values`) and optionally `target`. Each
    /// image is looked for at SOURCE/PATH:TAG, PATH being the image without its registry host
    /// (and, when its first part is no host name, also without that part); the first found is
    /// copied by digest to TARGET/PATH:TAG. An image found nowhere is an error listing every
    /// place tried. The lock file records each image's digest and each fetched chart's.
    Onboard(OnboardArgs),
    /// Push files as an OCI artifact, as `oras push` does, or `--index` assemble pushed artifacts.
    ///
    /// Each FILE[:MEDIATYPE] becomes one layer titled with its file name
    /// (`org.opencontainers.image.title`); the config is empty, or with `--platform` a config naming
    /// the platform (as `oras push --artifact-platform`). With `--index`, each ITEM is
    /// `TAG_OR_DIGEST[;platform=OS/ARCH][;KEY=VALUE]…` of an artifact in the same repository, and
    /// the index lists them with those platforms and annotations (an artifact's own platform and
    /// `disktype` are used when not given).
    Push(PushArgs),
    /// Download the one file an `oci://` reference stands for, verified.
    ///
    /// A digest names the artifact. A tag (default `latest`, which must exist) may name an index
    /// of artifacts: the one pulled is chosen as Ironic chooses disk images: disk types ranked by
    /// `--mode` (local: qcow2, qemu, raw, applehv; http: raw, applehv, qcow2, qemu), then the
    /// first whose architecture matches `--arch` (x86_64 is amd64, aarch64 is arm64) and that is a
    /// single file. The file is written under its title, streamed through a hidden partial file
    /// that a later run resumes; size and digest are checked before it takes its name, and a file
    /// that fails is removed.
    Pull(PullArgs),
    /// What an artifact reference offers (digest, platform, disktype, size, title) and which one
    /// `pull` would choose with the same options, and why.
    Artifacts(ArtifactsArgs),
}

#[derive(Debug, Args)]
pub struct ArtifactAuthArgs {
    /// Credentials, `USER:PASSWORD` (overrides stored ones).
    #[arg(long, value_name = "USER:PASSWORD", hide_default_value = true)]
    pub creds: Option<String>,
    /// A registry token sent as `Authorization: Bearer` (a pull secret, as Ironic's
    /// `image_pull_secret`).
    #[arg(long, env = "AIRLOCK_BEARER_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub bearer_token: Option<String>,
    /// A pull secret file in Docker's `config.json` format (a Kubernetes `.dockerconfigjson`),
    /// read instead of the usual credential files.
    #[arg(long, value_name = "FILE")]
    pub pull_secret: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// The node's CPU architecture (`x86_64` and `amd64`, `aarch64` and `arm64` are the same).
    #[arg(long, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Only this disk format: qcow2 (also `qemu`) or raw (also `applehv`).
    #[arg(long, value_name = "TYPE")]
    pub disktype: Option<String>,
    /// How the image will be deployed: `local` prefers qcow2, `http` prefers raw.
    #[arg(long, value_enum, default_value_t = DeployMode::Http)]
    pub mode: DeployMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeployMode {
    Local,
    Http,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Where to push: `oci://HOST/REPO:TAG` or `HOST/REPO:TAG` (default tag `latest`).
    pub reference: String,
    /// FILE[:MEDIATYPE]… or, with `--index`, the artifacts to list.
    #[arg(required = true, value_name = "ITEM")]
    pub items: Vec<String>,
    /// Assemble an index of artifacts already pushed, instead of pushing files.
    #[arg(long)]
    pub index: bool,
    /// The manifest's `artifactType` [default: application/vnd.unknown.artifact.v1].
    #[arg(long, value_name = "TYPE", conflicts_with = "index")]
    pub artifact_type: Option<String>,
    /// A manifest annotation, KEY=VALUE (e.g. `disktype=qcow2`); repeatable.
    #[arg(short = 'a', long = "annotation", value_name = "KEY=VALUE", conflicts_with = "index")]
    pub annotations: Vec<String>,
    /// The artifact's platform, `os/arch[/variant]`, written into its config.
    #[arg(long, value_name = "PLATFORM", conflicts_with = "index")]
    pub platform: Option<String>,
    #[command(flatten)]
    pub auth: ArtifactAuthArgs,
    #[command(flatten, next_help_heading = "Registry options")]
    pub flags: RegistryFlags,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// `oci://HOST/REPO[:TAG|@DIGEST]`.
    pub reference: String,
    /// The folder to write the file into (`-o` is the output format of every command).
    #[arg(short = 'd', long = "dir", default_value = ".", value_name = "DIR")]
    pub dir: PathBuf,
    /// Decompress a zstd or gzip file (told by its magic bytes) after it verified.
    #[arg(long)]
    pub decompress: bool,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub auth: ArtifactAuthArgs,
    #[command(flatten, next_help_heading = "Registry options")]
    pub flags: RegistryFlags,
}

#[derive(Debug, Args)]
pub struct ArtifactsArgs {
    /// `oci://HOST/REPO[:TAG|@DIGEST]`.
    pub reference: String,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub auth: ArtifactAuthArgs,
    #[command(flatten, next_help_heading = "Registry options")]
    pub flags: RegistryFlags,
}

#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// Charts (folders, `.tgz` or `oci://` references), manifest files or folders, Dockerfiles,
    /// compose files.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Values files for charts, in order (as `helm template -f`).
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Values for charts on the command line (as `helm template --set`).
    #[arg(long, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Build arguments for Dockerfiles (as `docker build --build-arg`).
    #[arg(long, value_name = "NAME=VALUE")]
    pub build_arg: Vec<String>,
    /// The Helm binary that renders charts.
    #[arg(long, default_value = "helm", value_name = "PATH")]
    pub helm: String,
    /// A chart repository (the URL `helm repo add` takes, serving `index.yaml`): each PATH is
    /// then a chart name in it, as `helm template --repo`. The credentials stored for its host
    /// in the auth file are sent, over HTTPS or to a loopback host only.
    #[arg(long, value_name = "URL")]
    pub repo: Option<String>,
    /// The chart version for `--repo` charts and `oci://` charts named without one: a version
    /// (exactly that one) or a range (`^1.2`, `~1.2.3`, `>=1.0, <2`) [default: the newest release].
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
    #[command(flatten, next_help_heading = "Registry options")]
    pub flags: RegistryFlags,
}

#[derive(Debug, Args)]
pub struct OnboardArgs {
    /// The JSONC input: `image_sources`, `helm_packages`, optionally `target`.
    pub config: PathBuf,
    /// Where to copy: REGISTRY[/NAMESPACE] (overrides the config's `target`).
    #[arg(long, value_name = "REGISTRY[/NAMESPACE]")]
    pub target: Option<String>,
    /// The lock file to write [default: airlock-onboard.lock.json beside CONFIG].
    #[arg(long, value_name = "FILE")]
    pub lock: Option<PathBuf>,
    /// Go on when an image is found nowhere (it is reported, and left out of the lock).
    #[arg(long)]
    pub allow_missing: bool,
    /// Show where each image would come from and go, copy nothing, write no lock.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the values overrides that point each chart at the target (on stdout; the summary
    /// goes to stderr).
    #[arg(long)]
    pub emit_values: bool,
    /// The Helm binary that renders charts.
    #[arg(long, default_value = "helm", value_name = "PATH")]
    pub helm: String,
    /// Values files for every chart, after its `default_values` (as `discover -f`); repeatable.
    #[arg(short = 'f', long = "values", value_name = "FILE")]
    pub values: Vec<PathBuf>,
    /// Values for every chart (`key=value`, as `helm --set` and `discover --set`); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Do not push the charts themselves to the target (they are by default, once every image
    /// is there: `oci://TARGET/NAME:VERSION`, as `helm push` stores them).
    #[arg(long)]
    pub no_charts: bool,
    #[command(flatten, next_help_heading = "Registry options")]
    pub flags: RegistryFlags,
}

#[derive(Debug, Args)]
pub struct GateFileArgs {
    /// The airlock.yaml describing imports, gates and dependents.
    #[arg(short = 'f', long = "file", default_value = "airlock.yaml", value_name = "FILE")]
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    pub gate_file: GateFileArgs,
    /// The imports to run, by name [default: all].
    pub names: Vec<String>,
    /// Run even when the upstream digest was promoted or refused by a gate before (the gates run
    /// again).
    #[arg(long)]
    pub force: bool,
    #[command(flatten, next_help_heading = "Registry options")]
    pub flags: RegistryFlags,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub command: RunsCommand,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// The run table, newest first: RUN ID, TASK, PLATFORM, STATUS, TRIGGER, STARTED, DURATION.
    List(RunsListArgs),
    /// One run's log and each gate's output (the latest run when no id is given).
    Logs(RunsLogsArgs),
}

#[derive(Debug, Args)]
pub struct RunsListArgs {
    #[command(flatten)]
    pub gate_file: GateFileArgs,
    /// Only the runs of this import.
    #[arg(long, value_name = "NAME")]
    pub import: Option<String>,
    /// At most this many runs.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
}

#[derive(Debug, Args)]
pub struct RunsLogsArgs {
    #[command(flatten)]
    pub gate_file: GateFileArgs,
    /// The run id (first column of `runs list`); the latest run when omitted.
    pub run_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub gate_file: GateFileArgs,
    /// The import.
    pub name: String,
    /// The stable tag to move, when the import has several.
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,
    /// A run id or a digest that was promoted before [default: the promotion before the current].
    #[arg(long, value_name = "RUN_ID|DIGEST")]
    pub to: Option<String>,
    #[command(flatten, next_help_heading = "Registry options")]
    pub flags: RegistryFlags,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub gate_file: GateFileArgs,
    /// Accept registry notifications on this address (`POST /events`), e.g. `127.0.0.1:8787`,
    /// where `/healthz` and a read-only web page (`/ui/`) are served too; overrides
    /// `watch.listen` of the file.
    #[arg(long, value_name = "ADDRESS")]
    pub listen: Option<String>,
    /// Poll upstream this often unless an import says otherwise; overrides `watch.interval`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub interval: Option<std::time::Duration>,
    #[command(flatten, next_help_heading = "Registry options")]
    pub flags: RegistryFlags,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave the registry running (until Ctrl-C) to explore it with skopeo, podman or airlock.
    #[arg(long)]
    pub keep: bool,
    /// Work in this folder instead of a temporary one (kept afterwards).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// What to copy.
    pub source: String,
    /// Where to: a repository with an optional tag, or an `ocidir://` folder.
    pub destination: String,
    /// Extra tags to point at the copy (as `az acr import -t`); repeatable.
    #[arg(short = 't', long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Move destination tags that point at other content (refused otherwise).
    #[arg(long)]
    pub force: bool,
    /// Copy only these platforms of an index: `os/arch[/variant]`, comma separated or repeated.
    /// The copy is a new index listing only them, so its digest differs from the source's.
    #[arg(long, value_delimiter = ',', value_name = "PLATFORM")]
    pub platform: Vec<String>,
    /// Do not copy referrers (signatures, SBOMs, attestations).
    #[arg(long)]
    pub no_referrers: bool,
    #[command(flatten)]
    pub creds: CredsArgs,
    #[command(flatten, next_help_heading = "Registry options")]
    pub flags: RegistryFlags,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Source repository (a tag in it is ignored).
    #[arg(required_unless_present = "file", requires = "destination", conflicts_with = "file")]
    pub source: Option<String>,
    /// Target repository, or an `ocidir://` folder.
    pub destination: Option<String>,
    /// A sync.yaml listing repositories, filters and registry settings.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Tags that fully match this regular expression.
    #[arg(long, value_name = "REGEX")]
    pub tag_regex: Option<String>,
    /// Leave out tags that fully match this regular expression; repeatable.
    #[arg(long, value_name = "REGEX")]
    pub exclude: Vec<String>,
    /// Tags whose version satisfies this requirement, e.g. `>=1.2, <2` (a leading `v` and
    /// two-part versions like `3.20` are understood).
    #[arg(long, value_name = "REQUIREMENT")]
    pub semver: Option<String>,
    /// Only the newest N tags by version.
    #[arg(long, value_name = "N")]
    pub latest: Option<usize>,
    /// Exactly these tags, comma separated (no tag listing needed).
    #[arg(long, value_delimiter = ',', value_name = "TAG")]
    pub tags: Vec<String>,
    /// Only these platforms of multi-platform images (a new index, so a new digest).
    #[arg(long, value_delimiter = ',', value_name = "PLATFORM")]
    pub platform: Vec<String>,
    /// Do not copy referrers (signatures, SBOMs, attestations).
    #[arg(long)]
    pub no_referrers: bool,
    /// Print the plan (what would be copied, what is in place) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub creds: CredsArgs,
    #[command(flatten, next_help_heading = "Registry options")]
    pub flags: RegistryFlags,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A serve.yaml: `root`, `listen`, `auth` (htpasswd, token, per-repository rules), `storage`, and `mirrors` (a gated pull-through mirror: pulls of upstream images are served only once their gates passed).
    /// (`-f/--file` as every command names its file; `-c/--config` is kept as an alias.)
    #[arg(short = 'f', long = "file", visible_short_alias = 'c', visible_alias = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The folder that holds the registry's content (created if missing) [default: airlock-data];
    /// with `--storage`, only the token signing key.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Keep the content in an S3-compatible bucket instead: `s3://BUCKET[/PREFIX]` (endpoint and
    /// region from serve.yaml's `s3:` or `AWS_ENDPOINT_URL`/`AWS_REGION`; credentials from the
    /// `AWS_*` variables).
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
    /// Address and port to listen on; port 0 picks a free one [default: 127.0.0.1:5000].
    #[arg(long, value_name = "ADDRESS")]
    pub listen: Option<String>,
    /// Require these users (an htpasswd file of bcrypt entries) for every request.
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,
    /// With `--htpasswd`: hand out bearer tokens at `/token` (Docker token auth).
    #[arg(long, requires = "htpasswd")]
    pub token: bool,
    /// Serve HTTPS with this PEM certificate chain (with `--tls-key`).
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// The serve root.
    #[arg(long, default_value = "airlock-data", value_name = "DIR")]
    pub root: PathBuf,
    /// The storage of a serve on S3 instead: `s3://BUCKET[/PREFIX]` (as `serve --storage`;
    /// `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ALLOW_HTTP` and credentials from the environment).
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
    /// Report what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep unreachable blobs and upload sessions younger than this: `90s`, `30m`, `1h`.
    #[arg(long, default_value = "1h", value_name = "DURATION", value_parser = parse_duration)]
    pub grace: std::time::Duration,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    airlock_gate::config::parse_duration(text)
}

#[derive(Debug, Args)]
pub struct CredsArgs {
    /// Credentials for the source registry, `USER:PASSWORD` (overrides stored ones).
    #[arg(long, value_name = "USER:PASSWORD", hide_default_value = true)]
    pub src_creds: Option<String>,
    /// Credentials for the destination registry, `USER:PASSWORD`.
    #[arg(long, value_name = "USER:PASSWORD", hide_default_value = true)]
    pub dest_creds: Option<String>,
    /// `--src-tls-verify=false` takes any certificate the source registry presents.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub src_tls_verify: bool,
    /// `--dest-tls-verify=false` takes any certificate the destination registry presents.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub dest_tls_verify: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The image, index or artifact.
    pub reference: String,
    /// Print the manifest's bytes exactly as stored.
    #[arg(long, conflicts_with = "config")]
    pub raw: bool,
    /// Print the image's config blob.
    #[arg(long)]
    pub config: bool,
    /// Of an index, inspect the manifest for this platform (`os/arch[/variant]`), as
    /// `docker manifest inspect` or `crane manifest --platform` do.
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// Credentials, `USER:PASSWORD` (overrides stored ones).
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    #[command(flatten, next_help_heading = "Registry options")]
    pub flags: RegistryFlags,
}

#[derive(Debug, Args)]
pub struct TagsArgs {
    /// The repository (a tag or digest in it is ignored).
    pub repository: String,
    /// Credentials, `USER:PASSWORD`.
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    #[command(flatten, next_help_heading = "Registry options")]
    pub flags: RegistryFlags,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct CatalogArgs {
    /// The registry, `HOST[:PORT]` (an `oci://` prefix is allowed).
    pub registry: String,
    /// Credentials, `USER:PASSWORD`.
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    #[command(flatten, next_help_heading = "Registry options")]
    pub flags: RegistryFlags,
}

#[derive(Debug, Args)]
pub struct DigestArgs {
    /// The image, index or artifact.
    pub reference: String,
    /// Credentials, `USER:PASSWORD`.
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    #[command(flatten, next_help_heading = "Registry options")]
    pub flags: RegistryFlags,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The image, index or artifact, by tag or digest.
    pub reference: String,
    /// Credentials, `USER:PASSWORD`.
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    #[command(flatten, next_help_heading = "Registry options")]
    pub flags: RegistryFlags,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The registry, HOST[:PORT].
    pub registry: String,
    /// User name.
    #[arg(short, long)]
    pub username: String,
    /// Password; prefer `--password-stdin`, which keeps it out of the process list.
    #[arg(short, long, conflicts_with = "password_stdin", hide_default_value = true)]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten, next_help_heading = "Registry options")]
    pub auth: AuthFileFlag,
    #[command(flatten, next_help_heading = "Registry options")]
    pub connection: ConnectionFlags,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The registry, HOST[:PORT].
    pub registry: String,
    #[command(flatten, next_help_heading = "Registry options")]
    pub auth: AuthFileFlag,
}
